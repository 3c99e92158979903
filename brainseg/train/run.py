"""`seg-train` as a library call: data -> patient split -> each model -> reports and ensemble."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from brainseg.data.preprocess import Normalisation, normalisation_for
from brainseg.data.split import Split, load_split, save_split, split_patients
from brainseg.data.volume import Volume
from brainseg.errors import BrainsegError, ConfigError
from brainseg.fileio import write_atomic
from brainseg.metrics import headline_dice, score_volumes
from brainseg.train import reports
from brainseg.train.checkpoint import load_model
from brainseg.train.config import TrainConfig
from brainseg.train.dataset import read_run_dataset, resolve_data, stream_run_dataset
from brainseg.train.distill import STUDENT, TEACHER_FILE, StudentTrainer, student_architecture
from brainseg.train.distributed import DistContext, barrier, broadcast, init_distributed, shutdown
from brainseg.train.evaluate import predict_volume
from brainseg.train.loop import LoopState, ModelJob, Trainer
from brainseg.train.models.registry import check_model_names
from brainseg.train.progress import TrainProgress
from brainseg.train.slices import SliceCache

log = logging.getLogger("brainseg.train")
SLICE_CACHE = ".slices"  # under the run folder while it trains; removed when it finishes


@dataclass
class RunResult:
    """What `train_run` returns: where things are and the headline numbers."""

    run_dir: Path
    test_dice: dict[str, float]  # model name (and "ensemble (mean)", "student") -> mean per-patient Dice on test
    skipped: int
    seconds: float


def _prepare_run_dir(out: Path, resume: bool, cfg: TrainConfig, data: str) -> tuple[TrainConfig, str]:
    """Fresh run: refuse a used folder. Resume: the saved config and data win over the options."""
    if resume:
        if not (out / "config.json").exists():
            raise ConfigError(f"{out}: nothing to resume (no config.json); start it without --resume")
        saved = json.loads((out / "run.json").read_text())
        return TrainConfig.from_json(out / "config.json"), saved["data"]
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    return cfg, data


def _cache_slices(data: str, cfg: TrainConfig, out: Path,
                  ctx: DistContext) -> tuple[SliceCache, str, list, str | None]:
    """Read the data one volume at a time into the slice cache (rank 0; the others open it).

    Returns the cache, the layout, what was skipped, and the BraTS label convention the label files
    used (`brats_convention`); a folder with nothing usable raises the same DataError on every rank.
    """
    folder = out / SLICE_CACHE
    answer: tuple = ()
    if ctx.is_main:
        try:
            stream, found = stream_run_dataset(data, cfg), set()
            seen = (volume for volume in stream if not found.add(volume.label_convention))
            cache = SliceCache.build(seen, folder, cfg.img_size)
            stream.check_read(len(cache.patients))
            answer = ("ok", stream.layout, [asdict(s) for s in stream.skipped], brats_convention(found))
        except BrainsegError as exc:
            answer = ("error", type(exc), str(exc))
    answer = broadcast(answer, ctx)
    if answer[0] == "error":
        raise answer[1](answer[2])
    return (cache if ctx.is_main else SliceCache.open(folder)), answer[1], answer[2], answer[3]


def brats_convention(found: set[str | None]) -> str | None:
    """The one label convention the volumes' label files showed ("2021" or "2023"), None when they
    showed none (not BraTS, or no enhancing tumour anywhere) or both (a warning: seg-run then writes
    the 2021 labels unless told otherwise with --brats-labels)."""
    years = sorted(year for year in found if year)
    if len(years) > 1:
        log.warning("the label files use both BraTS conventions (enhancing tumour 4 and 3); the run records "
                    "none, so seg-run writes enhancing tumour as 4 unless given --brats-labels")
    return years[0] if len(years) == 1 else None


def _split_for(ids: list[str], out: Path, cfg: TrainConfig, resume: bool, ctx: DistContext) -> Split:
    path = out / "split.json"
    if resume and path.exists():
        split = load_split(path)
    else:
        split = split_patients(
            ids, val_fraction=cfg.val_fraction,
            test_fraction=cfg.test_fraction, seed=cfg.seed, folds=cfg.folds, fold=cfg.fold,
        )
        if ctx.is_main:
            save_split(split, path)
    known = set(ids)
    missing = sorted(set(split.train + split.val + split.test) - known)
    if missing:
        raise ConfigError(f"{path}: patients no longer in the data: {', '.join(missing[:5])}")
    return split


def _predict(model, volumes, cfg: TrainConfig, norm: Normalisation, device) -> list[np.ndarray]:
    return [predict_volume(model, v, img_size=cfg.img_size, norm=norm, device=device) for v in volumes]


def _finish_model(job: ModelJob, label: str, cfg: TrainConfig, test: list[Volume], device,
                  history) -> tuple[dict, dict]:
    """Score best.pt on val and test and write the reports of the model the run calls `label`.

    Returns its probabilities and its reports per split, for the run's report and ensemble.
    """
    model, payload = load_model(job.out_dir / "best.pt", job.name)
    model = model.to(device)
    probs = {"val": _predict(model, job.val, cfg, job.norm, device),
             "test": _predict(model, test, cfg, job.norm, device)}
    scored = {}
    for split_name, volumes in (("val", job.val), ("test", test)):
        if volumes:
            report = score_volumes(volumes, probs[split_name], threshold=cfg.threshold)
            report.update(model=label, best_epoch=payload["best_epoch"], split=split_name)
            reports.write_json(job.out_dir / f"{split_name}_report.json", report)
            scored[split_name] = report
    if history:
        reports.plot_curves(job.out_dir / "training_curve.png", history, label)
    return probs, scored


def _write_run_reports(out: Path, cfg: TrainConfig, val: list[Volume], test: list[Volume],
                       probs: dict[str, dict], scored: dict[str, dict]) -> dict[str, float]:
    """The run's table: each model's reports (already scored), the ensemble's, then the student's if any.

    `probs` holds the members' probabilities only: the ensemble is their mean, never the student's.
    """
    table_rows: dict[str, dict[str, dict]] = {"val": {}, "test": {}}
    for split_name, volumes in (("val", val), ("test", test)):
        if not volumes:
            continue
        for name in probs:
            table_rows[split_name][name] = scored[name][split_name]
        if len(probs) > 1:
            mean = [np.mean(stack, axis=0) for stack in zip(*(p[split_name] for p in probs.values()), strict=True)]
            table_rows[split_name]["ensemble (mean)"] = score_volumes(volumes, mean, threshold=cfg.threshold)
        if STUDENT in scored:
            table_rows[split_name][STUDENT] = scored[STUDENT][split_name]
    reports.write_json(out / "report.json", table_rows)
    text = "# Training report\n\n" + "".join(
        f"## {split_name}\n\n" + reports.summary_table(rows, split_name)
        for split_name, rows in table_rows.items() if rows
    )
    write_atomic(out / "report.md", text)
    final = table_rows["test"] or table_rows["val"]
    return {name: headline_dice(report) for name, report in final.items()}


def train_run(
    *, data: str, out: str | Path, cfg: TrainConfig, resume: bool = False,
    device: str = "auto", progress: bool = True,
) -> RunResult:
    """Train every model in `cfg.models` on `data` into `out`/<model>/, then evaluate the ensemble.

    With `cfg.trains_student`, a student distilled from the members follows in `out`/student/.

    `data` is a folder in a supported layout or "sample" for the built-in sample data. Under
    torchrun each process calls this; rank 0 writes every file.
    """
    started = time.perf_counter()
    out = Path(out)
    check_model_names(list(cfg.models))
    ctx = init_distributed(device)
    try:
        cfg, data = _prepare_run_dir(out, resume, cfg, data)
        barrier(ctx)
        if ctx.is_main:
            resolve_data(data, cfg)  # generates the sample once, before the other processes read it
        barrier(ctx)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_atomic(out / "config.json", cfg.to_json())
        cache, layout, skipped, convention = _cache_slices(data, cfg, out, ctx)
        split = _split_for(cache.ids, out, cfg, resume, ctx)
        if ctx.is_main:
            _write_run_info(out, data, cache, layout, skipped, split, ctx, convention)
            cache.write_table(split.train)
        barrier(ctx)
        table = cache.table()
        val = _read(data, cfg, split.val)
        first = cache.patients[0]
        norm = normalisation_for(first.dtype, first.channels, cfg.normalisation)
        probs, scored = {}, {}
        test: list[Volume] = []
        with TrainProgress(enabled=progress and ctx.is_main, epochs=cfg.epochs) as bar:
            for index, name in enumerate(cfg.models):
                job = ModelJob(name, index, table, val, norm, first.channels, first.classes, out / name)
                state = _fit(Trainer(job, cfg, ctx), name, bar, resume)
                if ctx.is_main:
                    write_atomic(job.out_dir / "config.json", cfg.to_json())
                    test = test or _read(data, cfg, split.test)  # read once the models need it
                    probs[name], scored[name] = _finish_model(job, name, cfg, test, ctx.device, state.history)
            if cfg.trains_student:
                job = ModelJob(student_architecture(cfg, first.channels, first.classes), len(cfg.models), table, val,
                               norm, first.channels, first.classes, out / STUDENT)
                student = StudentTrainer(job, cfg, ctx, run_dir=out, teacher_file=cache.folder / TEACHER_FILE)
                state = _fit(student, STUDENT, bar, resume)
                if ctx.is_main:
                    write_atomic(job.out_dir / "config.json", student.cfg.to_json())
                    _, scored[STUDENT] = _finish_model(job, STUDENT, cfg, test, ctx.device, state.history)
                del student  # it maps the teacher's file, which goes with the cache
        test_dice = _write_run_reports(out, cfg, val, test, probs, scored) if ctx.is_main else {}
        del table
        barrier(ctx)
        if ctx.is_main:
            cache.remove()
        return RunResult(out, test_dice, len(skipped), time.perf_counter() - started)
    finally:
        shutdown(ctx)


def _fit(trainer: Trainer, label: str, bar: TrainProgress, resume: bool) -> LoopState:
    """Train what is left of one model (all of it unless resuming), with its own line in the progress bar."""
    if resume:
        trainer.resume()
    return trainer.fit(bar.for_model(label, trainer.steps_per_epoch, trainer.state.epoch, trainer.cfg.epochs))


def _read(data: str, cfg: TrainConfig, ids: list[str]) -> list[Volume]:
    """The volumes of `ids` at their own size (validation and test are scored there), sorted by id."""
    return read_run_dataset(data, cfg, patients=ids).volumes if ids else []


def _write_run_info(out: Path, data: str, cache: SliceCache, layout: str, skipped: list[dict], split: Split,
                    ctx: DistContext, convention: str | None) -> None:
    """run.json: where the data came from, its BraTS label convention, what was skipped and why, and the
    split's sizes."""
    def count(ids: list[str]) -> dict:
        chosen = [p for p in cache.patients if p.patient_id in set(ids)]
        return {"patients": len(chosen), "slices": sum(p.slices for p in chosen),
                "tumour_slices": sum(p.tumour_slices for p in chosen)}

    for entry in skipped:
        log.warning("skipped %s: %s", entry["path"], entry["reason"])
    first = cache.patients[0]
    reports.write_json(out / "run.json", {
        "data": data, "layout": layout, "brats_labels": convention, "in_channels": first.channels,
        "classes": first.classes, "world_size": ctx.world_size, "device": str(ctx.device),
        "torch": torch.__version__,
        "sets": {name: count(getattr(split, name)) for name in ("train", "val", "test")},
        "skipped": skipped,
    })
