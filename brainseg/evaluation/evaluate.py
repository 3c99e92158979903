"""`seg-eval` as a library call: an artifacts folder's ensemble, run as seg-run runs it, scored on labelled data.

DATA is read with the training readers, with the source run's layout, modalities, target and
patient regex as the manifest records them (for folders exported before that: the run's
config.json where it is still here, else read_dataset's defaults). The patients are the source
run's test or val set (the manifest's split), every labelled patient, or a list.
The ensemble is opened as seg-run opens it (one `Segmenter`: backend, precision, TTA and component
rule), each patient's volume goes through `Segmenter.predict`, and the masks are scored with `brainseg.metrics`
per target region (the first region is the headline). Patients without masks are listed as
unlabelled, never scored; data without any masks is a DataError. Never imports torch.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from brainseg.artifacts.manifest import Manifest
from brainseg.data.names import BRATS_LABEL, BRATS_MODALITIES
from brainseg.data.readers import read_dataset
from brainseg.data.synthetic.builtin import BUILTIN_SAMPLES, builtin_sample
from brainseg.data.volume import Dataset, SkippedInput, Volume
from brainseg.errors import ConfigError, DataError
from brainseg.evaluation import brats_metrics
from brainseg.evaluation import report as report_files
from brainseg.evaluation.report import OverlaySlice
from brainseg.metrics import REGION_NAMES, PatientScore, score_patient, summarize
from brainseg.postprocess import PostProcessing
from brainseg.runtime.backends import Choice
from brainseg.runtime.io.scans import Prediction
from brainseg.runtime.segmenter import Segmenter, SegmenterOptions

SPLITS = ("test", "val", "all")
FORMAT = "brainseg-eval/1"
_SHOWN = 5  # patient ids named in an error before "and N more"
# the readers' reasons for a whole patient without masks (kaggle_3m and folders layouts)
_NO_MASKS = re.compile(r"^patient (?P<id>.+?): \d+ images but (no .*masks|none has a mask)$")

OnPatient = Callable[[str, int, int], None]  # (patient id, patients done, patients in all)


@dataclass(frozen=True)
class EvalOptions(SegmenterOptions):
    """How `evaluate` picks patients, and how it runs the ensemble (`SegmenterOptions`, seg-run's defaults).

    Attributes:
        split: "test" or "val" (the source run's split.json) or "all" (every labelled patient).
        patients: patient ids to score instead of `split`.
        overwrite: write into an `out` that is not empty.
    """

    split: str = "test"
    patients: tuple[str, ...] | None = None
    overwrite: bool = False


@dataclass(frozen=True)
class DataSettings:
    """How DATA is read: the source run's reader settings, or read_dataset's defaults."""

    layout: str = "auto"
    modalities: tuple[str, ...] = BRATS_MODALITIES
    target: str = "wt"
    patient_regex: str | None = None
    source: str = "read_dataset defaults (the source run's config.json is not on this machine)"
    sample: tuple[int, int, int] | None = None  # the built-in sample's patients, slices and seed


@dataclass
class EvalResult:
    """What `evaluate` wrote: `report` is report.json's content, `files` every file written."""

    out: Path
    report: dict
    files: list[Path]

    @property
    def dice_mean(self) -> float | None:
        """Mean per-patient Dice of the headline region over patients with tumour (None: no such patient)."""
        return self.report["dice_mean"]


@dataclass
class _Scored:
    regions: dict[str, list[PatientScore]]  # region name -> one score per patient, in patient order
    overlays: list[OverlaySlice]
    backend: dict
    choice: Choice
    post: PostProcessing
    brats: list[dict] | None = None  # a BraTS-regions model: the challenge's figures per patient (brats_metrics)


def evaluate(data: str | Path, artifacts: str | Path, out: str | Path, options: EvalOptions = EvalOptions(),
             *, on_patient: OnPatient | None = None) -> EvalResult:
    """Score the ensemble in `artifacts` on labelled patients of `data`; write the report under `out`.

    `on_patient(patient_id, done, total)` is called after each patient is scored (the CLI's progress
    bar). Raises, before any inference: ConfigError (options, an `out` that is not empty, data that
    does not fit the artifacts), ArtifactError (the artifacts folder), DataError (no masks in
    `data`, patients not in it, a split that is not on this machine).
    """
    _check_options(options)
    out = Path(out)
    check_out(out, overwrite=options.overwrite)
    manifest = Manifest.load(artifacts)
    settings = data_settings(manifest)
    data = builtin_data(data, settings)
    dataset = read_labelled(data, settings, asked_patients(manifest, options))
    split, volumes = select_patients(data, dataset, manifest, options)
    check_fits(data, volumes, manifest)
    scored = score_ensemble(volumes, manifest, options, on_patient=on_patient)
    report = build_report(data, dataset, settings, split, volumes, manifest, scored)
    report, files = report_files.write_outputs(out, report, scored.overlays)
    return EvalResult(out, report, files)


def _check_options(options: EvalOptions) -> None:
    if options.split not in SPLITS:
        raise ConfigError(f"--split must be one of {', '.join(SPLITS)}, got {options.split!r}")
    options.check()


def check_out(out: Path, *, overwrite: bool) -> None:
    """Refuse an `out` that is a file, or a folder that is not empty unless `overwrite`."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"--out {out} is not empty; pass --overwrite to replace the report in it")


def builtin_data(data: str | Path, settings: DataSettings) -> str | Path:
    """`data`; or, where it is a built-in sample's name and no folder of that name is here, the sample
    the source run trained on (its size and seed as the reader settings record them)."""
    if str(data) not in BUILTIN_SAMPLES or Path(data).is_dir():
        return data
    if settings.sample is None:
        raise DataError(f"{data} stands for the built-in sample the source run trained on, but neither the manifest "
                        "nor the source run's config.json is here to say its size and seed: pass the sample's folder")
    patients, slices, seed = settings.sample
    return builtin_sample(str(data), patients=patients, slices=slices, seed=seed)


def data_settings(manifest: Manifest) -> DataSettings:
    """The source run's reader settings: from the manifest, or for a folder exported before they were
    recorded from the run's config.json where it is still here, else read_dataset's defaults."""
    reader = manifest.reader
    if reader is not None:
        return DataSettings(reader.layout, tuple(reader.modalities), reader.target, reader.patient_regex,
                            "the artifacts' manifest", _sample(vars(reader)))
    path = manifest.source_run / "config.json"
    if not path.is_file():
        return DataSettings()
    try:
        config = json.loads(path.read_text())
        return DataSettings(config.get("layout", "auto"), tuple(config.get("modalities", BRATS_MODALITIES)),
                            config.get("target", "wt"), config.get("patient_regex"), str(path), _sample(config))
    except (OSError, ValueError, TypeError, AttributeError) as err:
        raise DataError(f"{path}: the source run's config is unreadable ({err})") from err


def _sample(settings: dict) -> tuple[int, int, int] | None:
    values = tuple(settings.get(key) for key in ("sample_patients", "sample_slices", "seed"))
    return None if None in values else values


def asked_patients(manifest: Manifest, options: EvalOptions) -> list[str] | None:
    """The patient ids to score (--patients, or the source run's --split set), or None for all of them."""
    if options.patients:
        return list(dict.fromkeys(options.patients))
    return None if options.split == "all" else split_ids(manifest, options.split)


def read_labelled(data: str | Path, settings: DataSettings, patients: list[str] | None = None) -> Dataset:
    """Read `data` (only `patients`, when given: the others' files are never opened) with the training
    readers; a DataError when none of them is there with masks."""
    try:
        return read_dataset(data, layout=settings.layout, modalities=settings.modalities, target=settings.target,
                            patient_regex=settings.patient_regex, patients=patients)
    except DataError as err:
        if patients is not None and "holds no slices with masks" in str(err):
            raise DataError(f"{len(patients)} patient(s) asked for are not in {data}: {_first(patients)}"
                            " (is it the data the run was split on? score it with --split all)") from err
        raise DataError(f"no labelled patients (images with ground-truth masks) to score: {err}") from err


def unlabelled_patients(skipped: list[SkippedInput]) -> list[dict]:
    """The patients a reader left out because they have no masks at all: [{patient_id, path, reason}]."""
    found = []
    for entry in skipped:
        match = _NO_MASKS.match(entry.reason)
        if match:
            found.append({"patient_id": match["id"], "path": entry.path, "reason": entry.reason})
        elif entry.reason.startswith("missing ") and f"{Path(entry.path).name}_{BRATS_LABEL}." in entry.reason:
            found.append({"patient_id": Path(entry.path).name, "path": entry.path, "reason": entry.reason})
    return found


def select_patients(data: str | Path, dataset: Dataset, manifest: Manifest,
                    options: EvalOptions) -> tuple[str, list[Volume]]:
    """(what was asked: test, val, all or patients; the labelled volumes to score, in that order).

    Patients asked for who are in `data` without masks are left out (the report lists them as
    unlabelled); patients asked for who are not in `data` at all are a DataError.
    """
    asked = asked_patients(manifest, options)
    if asked is None:
        return "all", list(dataset.volumes)
    split = "patients" if options.patients else options.split
    labelled = {volume.patient_id: volume for volume in dataset.volumes}
    unlabelled = {entry["patient_id"] for entry in unlabelled_patients(dataset.skipped)}
    missing = [patient for patient in asked if patient not in labelled and patient not in unlabelled]
    if missing:
        hint = "" if split == "patients" else " (is it the data the run was split on? score it with --split all)"
        raise DataError(f"{len(missing)} patient(s) of the {split} set are not in {data}: {_first(missing)}{hint}")
    chosen = [labelled[patient] for patient in asked if patient in labelled]
    if not chosen:
        raise DataError(f"none of the {split} patients has masks in {data}: {_first(asked)}")
    return split, chosen


def split_ids(manifest: Manifest, split: str) -> list[str]:
    """The source run's `split` ("test" or "val") patient ids, as the manifest records them."""
    ids = manifest.split_ids(split)
    if not ids:
        raise DataError(f"the source run's {split} set is empty ({manifest.path}); use --split all or "
                        "--patients ID,ID")
    return ids


def _first(ids: list[str]) -> str:
    more = f" and {len(ids) - _SHOWN} more" if len(ids) > _SHOWN else ""
    return ", ".join(ids[:_SHOWN]) + more


def check_fits(data: str | Path, volumes: list[Volume], manifest: Manifest) -> None:
    """Refuse volumes whose dtype, channels or mask classes differ from what the artifacts take and predict."""
    spec = manifest.input
    expected = (spec.dtype, spec.channels, manifest.classes)
    for volume in volumes:
        got = (volume.image.dtype.name, volume.image.shape[-1], volume.mask.shape[-1])
        if got != expected:
            raise ConfigError(
                f"patient {volume.patient_id} in {data} reads as {got[1]} {got[0]} channel(s) with {got[2]} mask "
                f"class(es); the artifacts take {spec.channels} {spec.dtype} channel(s) and predict "
                f"{manifest.classes} class(es): is it the kind of data the run was trained on?")


def region_names(classes: int) -> tuple[str, ...]:
    """The target regions' names, as brainseg.metrics names them (the first is the headline)."""
    return REGION_NAMES.get(classes, tuple(f"class_{k}" for k in range(classes)))


def score_ensemble(volumes: list[Volume], manifest: Manifest, options: EvalOptions, *,
                   on_patient: OnPatient | None = None) -> _Scored:
    """Predict each volume with the Segmenter seg-run would open (backend, TTA, component rule), and score it."""
    regions: dict[str, list[PatientScore]] = {name: [] for name in region_names(manifest.classes)}
    overlays = []
    # a BraTS-regions model is also scored as the challenge scores it (needs panoptica: checked before inference)
    challenge = brats_metrics.evaluator() if manifest.classes == len(brats_metrics.REGION_LABELS) else None
    brats = [] if challenge is not None else None
    with Segmenter(manifest, options) as segmenter:
        for done, volume in enumerate(volumes, start=1):
            prediction = segmenter.predict(volume.image)
            for k, scores in enumerate(regions.values()):
                scores.append(score_patient(volume.patient_id, prediction.mask[..., k] > 0, volume.mask[..., k] > 0,
                                            spacing=volume.spacing, slice_step=volume.slice_step))
            if challenge is not None:
                in_mm = volume.spacing is not None and volume.slice_step is not None
                spacing = (volume.slice_step, *volume.spacing) if in_mm else None
                brats.append(brats_metrics.score_case(prediction.mask, volume.mask, spacing, challenge))
            worst = worst_slice(volume, prediction)
            if worst is not None:
                overlays.append(worst)
            if on_patient is not None:
                on_patient(volume.patient_id, done, len(volumes))
        return _Scored(regions, overlays, segmenter.describe(), segmenter.choice, segmenter.post, brats)


def worst_slice(volume: Volume, prediction: Prediction) -> OverlaySlice | None:
    """The headline region's slice most worth a look, or None when there is nothing to show.

    A patient with tumour: the tumour slice with the lowest per-slice Dice. Without tumour: the
    slice with the most predicted pixels (a false positive); None when nothing was predicted.
    """
    truth = volume.mask[..., 0] > 0  # (S, H, W)
    predicted = prediction.mask[..., 0] > 0
    truth_pixels = truth.sum(axis=(1, 2))
    predicted_pixels = predicted.sum(axis=(1, 2))
    if truth_pixels.any():
        overlap = (truth & predicted).sum(axis=(1, 2))
        slice_dice = 2.0 * overlap / np.maximum(truth_pixels + predicted_pixels, 1)
        index = int(np.argmin(np.where(truth_pixels > 0, slice_dice, np.inf)))
        why = f"tumour slice with the lowest Dice ({slice_dice[index]:.3f})"
    elif predicted_pixels.any():
        index = int(np.argmax(predicted_pixels))
        why = f"false positive: {int(predicted_pixels[index])} pixels predicted, no tumour in the truth"
    else:
        return None
    return OverlaySlice(patient_id=volume.patient_id, slice_name=volume.slice_names[index], why=why,
                        image=volume.image[index].copy(), truth=truth[index].copy(),
                        mask=prediction.mask[index, ..., :1].copy(),
                        disagreement=prediction.disagreement[index, ..., :1].copy())


def build_report(data: str | Path, dataset: Dataset, settings: DataSettings, split: str, volumes: list[Volume],
                 manifest: Manifest, scored: _Scored) -> dict:
    """report.json's content: the headline region's summary at the top level, every region under "regions"."""
    summaries = {name: summarize(scores) for name, scores in scored.regions.items()}
    headline_region = next(iter(summaries))
    headline = summaries[headline_region]
    unlabelled = unlabelled_patients(dataset.skipped)
    unlabelled_inputs = {(entry["path"], entry["reason"]) for entry in unlabelled}
    in_mm = all(v.spacing is not None and v.slice_step is not None for v in volumes)
    challenge = {}
    if scored.brats is not None:  # each patient's entry gets its figures, the report their means
        for entry, figures in zip(headline["per_patient"], scored.brats, strict=True):
            entry["brats"] = figures
        challenge = {"brats": {"means": brats_metrics.means(scored.brats), "hd95_unit": "mm" if in_mm else "voxels",
                               "conventions": brats_metrics.CONVENTIONS}}
    return json_safe({
        "format": FORMAT,
        "data": str(Path(data).resolve()),
        "layout": dataset.layout,
        "data_settings": asdict(settings),
        "artifacts": str(manifest.folder.resolve()),
        "manifest_sha256": manifest.sha256,
        "backend": {**scored.backend, "chosen": scored.choice.backend, "reason": scored.choice.reason},
        "precision": scored.choice.precision,
        "file": scored.choice.file,
        "threshold": manifest.threshold,
        "postprocessing": {**scored.post.to_dict(), "description": scored.post.describe()},
        "split": split,
        "patient_ids": [volume.patient_id for volume in volumes],
        "unlabelled": unlabelled,
        "skipped": [{"path": s.path, "reason": s.reason} for s in dataset.skipped
                    if (s.path, s.reason) not in unlabelled_inputs],
        "region": headline_region,
        "hd95_unit": "mm" if in_mm else "voxels",
        "dice_mean": headline["dice"]["mean"],
        **headline,
        "regions": summaries,
        **challenge,
    })


def json_safe(value):
    """`value` with NaN and infinite floats as None (undefined HD95), so report.json is strict JSON."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value
