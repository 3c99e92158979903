"""`seg-bench` as a library call: every backend, precision, model, mode and batch size, timed alike.

A row is one (backend, precision, model, mode, batch) combination:
- compute: the backend's inference call on slices already in memory, in the graph's input form;
- end-to-end: file to mask, i.e. decode the slice files, resize to the graph, infer, resize the
  probabilities back, threshold, encode and write the mask PNGs (what `seg-run` does per batch);
- idle: compute at batch 1 with an idle gap before each request (threads asleep, caches cold),
  which is what a scanner sending one slice at a time sees.

Backends: PyTorch eager FP32 (the same ensemble module seg-export traced, from the source run;
needs the `train` extra), ONNX Runtime with every exported precision that passed the gate, and
TensorRT engines where TensorRT and an engine are present. What cannot run here is listed with
the reason instead of a row.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from brainseg.bench import flops, stats
from brainseg.data.preprocess import resize_back, resize_slices
from brainseg.errors import BrainsegError, ConfigError
from brainseg.export.manifest import load_manifest, usable_precisions
from brainseg.fileio import write_atomic
from brainseg.runtime.backends import precision_file

log = logging.getLogger("brainseg.bench")
BACKENDS = ("pytorch", "onnxruntime", "tensorrt")
MODES = ("compute", "end-to-end", "idle")


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    batch_sizes: tuple[int, ...] = (1, 8)
    iterations: int | None = None
    seconds: float | None = 3.0
    modes: tuple[str, ...] = ("compute", "end-to-end")
    members: bool = True
    threads: int | None = None
    idle_gap_s: float = 0.1
    warmup: int = 3

    def check(self) -> None:
        for name, values, allowed in (("backend", self.backends, BACKENDS), ("mode", self.modes, MODES),
                                      ("precision", self.precisions, ("fp32", "fp16", "int8"))):
            unknown = sorted(set(values) - set(allowed))
            if unknown:
                raise ConfigError(f"unknown {name} {', '.join(unknown)}; choose from {', '.join(allowed)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError("--batch-sizes must be positive integers, e.g. 1,2,4,8")
        if (self.iterations is None) == (self.seconds is None):
            raise ConfigError("give either --iterations or --seconds")


@dataclass
class Candidate:
    """Something to time: a backend object with `infer(batch) -> {name: array}` and its facts."""

    backend: str
    provider: str
    precision: str
    model: str
    file: str
    runner: object
    dice: float | None
    flops_per_slice: int | None


@dataclass
class BenchResult:
    rows: list[dict] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)


def row_id(row: dict) -> str:
    return f"{row['backend']}/{row['precision']}/{row['model']}/{row['mode']}/b{row['batch']}"


def run_bench(artifacts: str | Path, options: BenchOptions, *, peaks: dict,
              progress: Callable[[str], None] = log.info) -> BenchResult:
    """Time every candidate in `artifacts` as `options` asks; `peaks` maps "fp32"/"int8" to GFLOP/s."""
    options.check()
    artifacts = Path(artifacts)
    manifest = load_manifest(artifacts)
    result = BenchResult()
    spec = manifest["input"]
    with tempfile.TemporaryDirectory(prefix="brainseg-bench-") as tmp:
        files = _slice_files(Path(tmp) / "slices", spec, max(options.batch_sizes))
        for candidate in _candidates(artifacts, manifest, options, result.skipped):
            try:
                progress(f"timing {candidate.backend} {candidate.precision} {candidate.model}")
                _time_candidate(candidate, spec, manifest["threshold"], options, files, Path(tmp) / "masks",
                                peaks, result)
            finally:
                close = getattr(candidate.runner, "close", None)
                if close is not None:
                    close()
    return result


def _time_candidate(candidate: Candidate, spec: dict, threshold: float, options: BenchOptions,
                    files: list[Path], mask_dir: Path, peaks: dict, result: BenchResult) -> None:
    images = _graph_batch(files, spec, max(options.batch_sizes))
    for mode in options.modes:
        for batch in ((1,) if mode == "idle" else options.batch_sizes):
            if mode == "compute" or mode == "idle":
                inputs = images[:batch]
                call = lambda inputs=inputs: candidate.runner.infer(inputs)  # noqa: E731
            else:
                call = _end_to_end(candidate.runner, files[:batch], spec, threshold, mask_dir)
            samples = stats.time_calls(call, warmup=options.warmup, iterations=options.iterations,
                                       seconds=options.seconds, gap_s=options.idle_gap_s if mode == "idle" else 0.0)
            summary = stats.summarize(samples, batch=batch)
            row = _row(candidate, mode, batch, summary, peaks)
            if mode == "compute" and hasattr(candidate.runner, "infer_stages"):
                row["gpu_stages_ms"] = _gpu_stages(candidate.runner, images[:batch], len(samples))
            result.rows.append(row)
            result.samples[row_id(row)] = [round(s, 4) for s in samples]


def _gpu_stages(runner, batch: np.ndarray, calls: int) -> dict[str, float]:
    """Median host-to-device, compute and device-to-host ms over up to 20 calls, from CUDA events."""
    timed = [runner.infer_stages(batch)[1] for _ in range(max(1, min(calls, 20)))]
    return {stage: round(float(np.median([t[stage] for t in timed])), 3) for stage in timed[0]}


def _row(candidate: Candidate, mode: str, batch: int, summary: stats.LatencyStats, peaks: dict) -> dict:
    achieved = peak = share = None
    if candidate.flops_per_slice:
        achieved = candidate.flops_per_slice * summary.throughput_per_s / 1e9
        peak_kind = "int8" if candidate.precision == "int8" else "fp32"
        peak = peaks.get(peak_kind) if candidate.provider == "CPUExecutionProvider" or \
            candidate.backend == "pytorch" else None
        share = achieved / peak if peak else None
    return {
        "backend": candidate.backend, "provider": candidate.provider, "precision": candidate.precision,
        "model": candidate.model, "file": candidate.file, "mode": mode, "batch": batch,
        "stats": summary.to_dict(), "noisy": summary.noisy, "dice": candidate.dice,
        "gflop_per_slice": round(candidate.flops_per_slice / 1e9, 3) if candidate.flops_per_slice else None,
        "gflops_achieved": round(achieved, 2) if achieved is not None else None,
        "share_of_peak": round(share, 3) if share is not None else None,
    }


def _candidates(artifacts: Path, manifest: dict, options: BenchOptions, skipped: list) -> Iterator[Candidate]:
    usable = usable_precisions(manifest)
    dice = {name: row["dice_mean"] for name, row in manifest["accuracy"]["table"].items()}
    ensemble_flops = _flops(artifacts / "ensemble.fp32.onnx")
    if "pytorch" in options.backends and "fp32" in options.precisions:
        yield from _pytorch(manifest, options, dice.get("pytorch-fp32"), ensemble_flops, skipped)
    if "onnxruntime" in options.backends:
        yield from _onnxruntime(artifacts, manifest, options, usable, dice, ensemble_flops, skipped)
    if "tensorrt" in options.backends:
        yield from _tensorrt(artifacts, manifest, options, usable, dice, ensemble_flops, skipped)


def _flops(path: Path) -> int | None:
    try:
        return flops.flops_per_slice(path)
    except Exception as err:  # a count is a nicety; the timing still stands without it
        log.warning("could not count the FLOPs of %s: %s", path.name, err)
        return None


def _pytorch(manifest, options, dice, ensemble_flops, skipped) -> Iterator[Candidate]:
    try:
        from brainseg.bench.torch_eager import EagerEnsemble
    except ImportError as err:
        reason = f"torch is not installed ({err}); pip install 'brainseg[train]'"
        skipped.append({"backend": "pytorch", "reason": reason})
        return
    try:
        runner = EagerEnsemble(Path(manifest["source_run"]["path"]), manifest, threads=options.threads)
    except BrainsegError as err:
        skipped.append({"backend": "pytorch", "reason": str(err)})
        return
    yield Candidate("pytorch", "eager", "fp32", "ensemble", "(source run checkpoints)", runner, dice, ensemble_flops)


def _onnxruntime(artifacts, manifest, options, usable, dice, ensemble_flops, skipped) -> Iterator[Candidate]:
    from brainseg.runtime.onnxruntime_backend import OnnxRuntimeBackend, available_providers

    provider = available_providers()[0]
    target = "cpu" if provider == "CPUExecutionProvider" else "gpu"
    for precision in options.precisions:
        if precision not in usable:
            why = "failed the export's accuracy gate" if precision in manifest["precisions"] else "was not exported"
            skipped.append({"backend": "onnxruntime", "precision": precision, "reason": f"{precision} {why}"})
            continue
        name = precision_file(manifest, precision, target=target)
        runner = OnnxRuntimeBackend(artifacts / name, precision, provider=provider, threads=options.threads)
        row_dice = manifest["precisions"][precision].get(target, {}).get("dice_mean", dice.get(precision))
        yield Candidate("onnxruntime", provider, precision, "ensemble", name, runner, row_dice, ensemble_flops)
    if options.members and "fp32" in options.precisions:
        for name, entry in manifest["files"].items():
            if entry.get("kind") == "member":
                runner = OnnxRuntimeBackend(artifacts / name, "fp32", provider=provider, threads=options.threads)
                yield Candidate("onnxruntime", provider, "fp32", entry["model"], name, runner, None,
                                _flops(artifacts / name))


def _tensorrt(artifacts, manifest, options, usable, dice, ensemble_flops, skipped) -> Iterator[Candidate]:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        skipped.append({"backend": "tensorrt", "reason": "TensorRT is not installed on this machine"})
        return
    from brainseg.runtime.tensorrt_backend import TensorRTBackend

    for precision in options.precisions:
        onnx_name = precision_file(manifest, precision, target="gpu") if precision in usable else None
        engine = artifacts / (Path(onnx_name).stem + ".engine") if onnx_name else None
        if engine is None or not engine.is_file():
            skipped.append({"backend": "tensorrt", "precision": precision,
                            "reason": f"no {precision} engine (seg-export engine {artifacts} --precision {precision})"})
            continue
        try:
            runner = TensorRTBackend(engine, artifacts / onnx_name, precision)
        except BrainsegError as err:
            skipped.append({"backend": "tensorrt", "precision": precision, "reason": str(err)})
            continue
        yield Candidate("tensorrt", runner.describe().get("device", "gpu"), precision, "ensemble", engine.name,
                        runner, dice.get(precision), ensemble_flops)


def _slice_files(folder: Path, spec: dict, count: int) -> list[Path]:
    """`count` brain-like test slices on disk at twice the graph's size (so reading includes a resize):
    smooth blobs over a dark background, as PNG for 8-bit graphs and NumPy files for float32 ones."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    height, width, channels = 2 * spec["height"], 2 * spec["width"], spec["channels"]
    files = []
    for index in range(count):
        noise = rng.normal(0, 1, (height // 8, width // 8, channels)).astype(np.float32)
        smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)
        if spec["dtype"] == "uint8":
            image = np.clip(110 + 40 * smooth, 0, 255).astype(np.uint8)
            path = folder / f"slice_{index:03d}.png"
            write_atomic(path, cv2.imencode(".png", image[..., ::-1] if channels == 3 else image)[1].tobytes())
        else:
            path = folder / f"slice_{index:03d}.npy"
            np.save(path, smooth)
        files.append(path)
    return files


def _read(path: Path) -> np.ndarray:
    if path.suffix == ".npy":
        return np.load(path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return image[..., ::-1] if image.ndim == 3 else image[..., None]


def _graph_batch(files: Sequence[Path], spec: dict, count: int) -> np.ndarray:
    images = np.stack([_read(p) for p in files[:count]])
    return np.ascontiguousarray(resize_slices(images, spec["height"], is_mask=False))


def _end_to_end(runner, files: Sequence[Path], spec: dict, threshold: float, mask_dir: Path) -> Callable[[], None]:
    mask_dir.mkdir(parents=True, exist_ok=True)

    def call() -> None:
        images = np.stack([_read(p) for p in files])
        batch = np.ascontiguousarray(resize_slices(images, spec["height"], is_mask=False))
        probability = runner.infer(batch)["probability"].transpose(0, 2, 3, 1)
        probability = resize_back(np.ascontiguousarray(probability), images.shape[1], images.shape[2])
        for path, slice_probability in zip(files, probability, strict=True):
            mask = ((slice_probability[..., 0] >= threshold) * 255).astype(np.uint8)
            write_atomic(mask_dir / f"{path.stem}.png", cv2.imencode(".png", mask)[1].tobytes())

    return call
