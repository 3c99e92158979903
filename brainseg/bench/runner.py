"""`seg-bench` as a library call: every backend, precision, model, mode and batch size, timed alike.

A row is one (backend, precision, model, mode, batch) combination:
- compute: the backend's inference call on slices already in memory, in the graph's input form;
- end-to-end: file to mask through seg-run's own per-scan steps: read the slice files with the
  runtime's readers, resize to the graph, infer, resize the probabilities back, threshold, and
  apply the folder's component rule and write the masks and row records with the runtime's
  writer (what `seg-run` does per batch);
- idle: compute at batch 1 with an idle gap before each request (threads asleep, caches cold),
  which is what a scanner sending one slice at a time sees.

Backends: PyTorch eager FP32 (the same ensemble module seg-export traced, from the source run;
needs the `train` extra), ONNX Runtime and OpenVINO with every exported precision that passed the
gate, and TensorRT engines where TensorRT and an engine are present, each opened through the
runtime's own backend choice, each with and without flip TTA (rows "ensemble+flip"), so the report
shows what TTA costs; and the peer a CPU user would otherwise pick, "openvino-default": OpenVINO's
default run of the plain fp32 file (its own threads unless --threads, and its own compute type,
which is bf16 on CPUs with native bf16). What cannot run here is listed with the reason instead of a row.

Rounds: every candidate is opened first, then timed in `rounds` interleaved rounds (each row in
turn, round after round), so that a slow spell of a noisy machine falls on every row alike. A row's
statistics pool all its samples; `round_p50_ms` keeps each round's median, from which the report's
ratios are taken round by round (median and spread).
"""

from __future__ import annotations

import itertools
import logging
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from brainseg.artifacts.manifest import InputSpec, Manifest
from brainseg.artifacts.variants import PRECISIONS, variant
from brainseg.bench import flops, stats
from brainseg.bench import front as bench_front
from brainseg.errors import BrainsegError, ConfigError, require
from brainseg.fileio import write_atomic
from brainseg.postprocess import TTA_MODES, PostProcessing
from brainseg.runtime import outputs
from brainseg.runtime.backends import CPU_PROVIDER
from brainseg.runtime.io import discovery
from brainseg.runtime.io.scans import Scan
from brainseg.runtime.segmenter import ScanSteps, Segmenter, SegmenterOptions

log = logging.getLogger("brainseg.bench")
BACKENDS = ("pytorch", "onnxruntime", "openvino", "openvino-default", "tensorrt")
CPU_DEVICES = (CPU_PROVIDER, "CPU")  # ONNX Runtime's and OpenVINO's names for the CPU
MODES = ("compute", "end-to-end", "idle")


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[str, ...] = BACKENDS
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8")
    batch_sizes: tuple[int, ...] = (1, 8)
    iterations: int | None = None  # timed calls per row in each round
    seconds: float | None = 3.0  # or seconds of timed calls per row, over all rounds
    rounds: int = 5
    modes: tuple[str, ...] = ("compute", "end-to-end")
    members: bool = True
    threads: int | None = None
    idle_gap_s: float = 0.1
    warmup: int = 3
    tta: tuple[str, ...] = ("none", "flip")  # runtime ensemble rows with and without flip TTA: its cost
    front: bool = True  # also time every candidate of the export's front (brainseg.bench.front)
    front_seconds: float = 1.0  # timed calls per front candidate, over all rounds

    def check(self) -> None:
        for name, values, allowed in (("backend", self.backends, BACKENDS), ("mode", self.modes, MODES),
                                      ("precision", self.precisions, PRECISIONS)):
            unknown = sorted(set(values) - set(allowed))
            if unknown:
                raise ConfigError(f"unknown {name} {', '.join(unknown)}; choose from {', '.join(allowed)}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ConfigError("--batch-sizes must be positive integers, e.g. 1,2,4,8")
        unknown_tta = sorted(set(self.tta) - set(TTA_MODES))
        if unknown_tta or not self.tta:
            raise ConfigError(f"tta modes must be among {', '.join(TTA_MODES)}, got {', '.join(self.tta) or 'none'}")
        if (self.iterations is None) == (self.seconds is None):
            raise ConfigError("give either --iterations or --seconds")
        if self.rounds < 1:
            raise ConfigError(f"--rounds must be at least 1, got {self.rounds}")


@dataclass
class Candidate:
    """Something to time: a `Segmenter` (or PyTorch's eager ensemble) with `infer(batch) -> {name: array}`,
    the per-scan steps its end-to-end rows take around it, and its facts."""

    backend: str
    provider: str
    precision: str
    model: str
    file: str
    runner: object
    dice: float | None
    flops_per_slice: int | None
    steps: ScanSteps


@dataclass
class BenchResult:
    rows: list[dict] = field(default_factory=list)
    samples: dict[str, list[float]] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)
    front: dict | None = None  # brainseg.bench.front.time_front's, when asked


def row_id(row: dict) -> str:
    return f"{row['backend']}/{row['precision']}/{row['model']}/{row['mode']}/b{row['batch']}"


def run_bench(manifest: Manifest, options: BenchOptions, *, peaks: dict,
              progress: Callable[[str], None] = log.info) -> BenchResult:
    """Time every candidate of an artifacts folder as `options` asks; `peaks` maps "fp32"/"int8" to GFLOP/s."""
    options.check()
    result = BenchResult()
    with tempfile.TemporaryDirectory(prefix="brainseg-bench-") as tmp, ExitStack() as opened:
        scans = _slice_scans(Path(tmp) / "slices", manifest.input, max(options.batch_sizes))
        images = np.concatenate([_plain_steps(manifest).read(scan)[1] for scan in scans])  # compute mode's input
        cells = []
        for candidate in _candidates(manifest, options, result.skipped):
            close = getattr(candidate.runner, "close", None)
            if close is not None:
                opened.callback(close)
            cells += _cells(candidate, options, scans, images, Path(tmp) / "out")
        _time_cells(cells, options, images, peaks, result, progress)
    if options.front:
        progress("timing the export's front: every candidate beside PyTorch eager of the three-model ensemble")
        result.front = bench_front.time_front(manifest, images, rounds=options.rounds, seconds=options.front_seconds,
                                              progress=progress)
    return result


def _time_cells(cells: list[_Cell], options: BenchOptions, images: np.ndarray, peaks: dict, result: BenchResult,
                progress: Callable[[str], None]) -> None:
    """Time every cell once per round, in turn, round after round; one row per cell into `result`."""
    samples: list[list[float]] = [[] for _ in cells]
    round_p50: list[list[float]] = [[] for _ in cells]
    seconds = options.seconds / options.rounds if options.seconds is not None else None
    for turn in range(options.rounds):
        progress(f"round {turn + 1} of {options.rounds}: {len(cells)} rows")
        for index, cell in enumerate(cells):
            timed = stats.time_calls(cell.call, warmup=options.warmup if turn == 0 else 1,
                                     iterations=options.iterations, seconds=seconds,
                                     gap_s=options.idle_gap_s if cell.mode == "idle" else 0.0)
            samples[index] += timed
            round_p50[index].append(float(np.median(timed)))
    for cell, timed, medians in zip(cells, samples, round_p50, strict=True):
        row = _row(cell.candidate, cell.mode, cell.batch, stats.summarize(timed, batch=cell.batch), peaks)
        row["round_p50_ms"] = [round(m, 3) for m in medians]
        backend = getattr(cell.candidate.runner, "backend", None)  # a Segmenter's: TensorRT's has stages
        if cell.mode == "compute" and cell.candidate.model == "ensemble" and hasattr(backend, "infer_stages"):
            row["gpu_stages_ms"] = _gpu_stages(backend, images[:cell.batch], len(timed))
        result.rows.append(row)
        result.samples[row_id(row)] = [round(s, 4) for s in timed]


@dataclass(frozen=True)
class _Cell:
    candidate: Candidate
    mode: str
    batch: int
    call: Callable[[], object]


def _cells(candidate: Candidate, options: BenchOptions, scans: list[Scan], images: np.ndarray,
           out: Path) -> list[_Cell]:
    """`candidate`'s calls in every mode and batch size; `images` are `scans` read into the graph's input form."""
    cells = []
    for mode in options.modes:
        for batch in ((1,) if mode == "idle" else options.batch_sizes):
            if mode == "compute" or mode == "idle":
                inputs = images[:batch]
                call = lambda inputs=inputs: candidate.runner.infer(inputs)  # noqa: E731
            else:
                call = _end_to_end(candidate.runner, scans[:batch], candidate.steps, out)
            cells.append(_Cell(candidate, mode, batch, call))
    return cells


def _gpu_stages(runner, batch: np.ndarray, calls: int) -> dict[str, float]:
    """Median host-to-device, compute and device-to-host ms over up to 20 calls, from CUDA events."""
    timed = [runner.infer_stages(batch)[1] for _ in range(max(1, min(calls, 20)))]
    return {stage: round(float(np.median([t[stage] for t in timed])), 3) for stage in timed[0]}


def _row(candidate: Candidate, mode: str, batch: int, summary: stats.LatencyStats, peaks: dict) -> dict:
    achieved = peak = share = None
    if candidate.flops_per_slice:
        achieved = candidate.flops_per_slice * summary.throughput_per_s / 1e9
        peak_kind = "int8" if candidate.precision == "int8" else "fp32"
        peak = peaks.get(peak_kind) if candidate.provider in CPU_DEVICES or candidate.backend == "pytorch" else None
        share = achieved / peak if peak else None
    return {
        "backend": candidate.backend, "provider": candidate.provider, "precision": candidate.precision,
        "model": candidate.model, "file": candidate.file, "mode": mode, "batch": batch,
        "stats": summary.to_dict(), "noisy": summary.noisy, "dice": candidate.dice,
        "gflop_per_slice": round(candidate.flops_per_slice / 1e9, 3) if candidate.flops_per_slice else None,
        "gflops_achieved": round(achieved, 2) if achieved is not None else None,
        "share_of_peak": round(share, 3) if share is not None else None,
        "compute": getattr(getattr(candidate.runner, "backend", candidate.runner), "compute", None),  # OpenVINO's
    }


def _candidates(manifest: Manifest, options: BenchOptions, skipped: list) -> Iterator[Candidate]:
    ensemble_flops = _flops(manifest.folder / variant("fp32", "cpu").onnx_file)
    if "pytorch" in options.backends and "fp32" in options.precisions:
        yield from _pytorch(manifest, options, ensemble_flops, skipped)
    for backend in ("onnxruntime", "openvino", "tensorrt"):
        if backend in options.backends:
            yield from _runtime_backends(manifest, backend, options, ensemble_flops, skipped)
    if "openvino-default" in options.backends:
        yield from _openvino_default(manifest, options, ensemble_flops, skipped)
    if "onnxruntime" in options.backends and options.members and "fp32" in options.precisions:
        yield from _members(manifest, options)


def _flops(path: Path) -> int | None:
    try:
        return flops.flops_per_slice(path)
    except Exception as err:  # a count is a nicety; the timing still stands without it
        log.warning("could not count the FLOPs of %s: %s", path.name, err)
        return None


def _pytorch(manifest: Manifest, options: BenchOptions, ensemble_flops, skipped) -> Iterator[Candidate]:
    try:
        require("torch", "train")
        from brainseg.bench.torch_eager import EagerEnsemble

        runner = EagerEnsemble(manifest, threads=options.threads)
    except BrainsegError as err:
        skipped.append({"backend": "pytorch", "reason": str(err)})
        return
    yield Candidate("pytorch", "eager", "fp32", "ensemble", "(source run checkpoints)", runner,
                    manifest.reference_dice, ensemble_flops, _plain_steps(manifest))


def _runtime_backends(manifest: Manifest, backend: str, options: BenchOptions, ensemble_flops,
                      skipped: list) -> Iterator[Candidate]:
    """The ensemble in each asked precision, opened as seg-run opens it (a Segmenter with seg-run's
    defaults), with the folder's component rule and each asked TTA mode ("ensemble+flip" rows: what
    TTA costs); what cannot be opened is listed with the reason. Dice is the export's, which used the
    folder's TTA."""
    for precision, tta in itertools.product(options.precisions, options.tta):
        try:
            segmenter = Segmenter(manifest, SegmenterOptions(backend=backend, precision=precision,
                                                             threads=options.threads, tta=tta))
        except BrainsegError as err:
            if tta == options.tta[0]:
                skipped.append({"backend": backend, "precision": precision, "reason": str(err)})
            continue
        described = segmenter.describe()
        provider = described.get("provider") or described.get("device", "gpu")
        target = "cpu" if provider in CPU_DEVICES else "gpu"
        dice = manifest.dice(precision, target) if tta == manifest.postprocessing.tta else None
        yield Candidate(backend, provider, precision, "ensemble" if tta == "none" else "ensemble+flip",
                        segmenter.choice.file, segmenter, dice, ensemble_flops, segmenter.steps)


def _openvino_default(manifest: Manifest, options: BenchOptions, ensemble_flops, skipped) -> Iterator[Candidate]:
    """The peer: OpenVINO as a new user runs the plain fp32 file, with its defaults (not gated, so no Dice)."""
    file = manifest.file_for("fp32", "cpu")
    try:
        runner = Segmenter(manifest, SegmenterOptions(backend="openvino", precision="fp32", threads=options.threads),
                           file=file, openvino_defaults=True)
    except BrainsegError as err:
        skipped.append({"backend": "openvino-default", "precision": "fp32", "reason": str(err)})
        return
    yield Candidate("openvino-default", "CPU", "fp32", "ensemble", file, runner, None, ensemble_flops, runner.steps)


def _members(manifest: Manifest, options: BenchOptions) -> Iterator[Candidate]:
    for model, name in manifest.member_files().items():
        runner = Segmenter(manifest, SegmenterOptions(backend="onnxruntime", precision="fp32", threads=options.threads),
                           file=name)
        yield Candidate("onnxruntime", runner.describe()["provider"], "fp32", model, name, runner, None,
                        _flops(manifest.folder / name), runner.steps)


def _plain_steps(manifest: Manifest) -> ScanSteps:
    """The runtime's per-scan steps with no TTA and no component rule (the compute rows' input, the eager row)."""
    return ScanSteps(manifest.input, manifest.threshold, PostProcessing())


def _slice_scans(folder: Path, spec: InputSpec, count: int) -> list[Scan]:
    """`count` brain-like test slices on disk at twice the graph's size (so reading includes a resize),
    one scan each: smooth blobs over a dark background, as PNG for 8-bit graphs and single-slice
    NIfTI volumes for float32 ones, found by seg-run's own discovery."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    height, width, channels = 2 * spec.height, 2 * spec.width, spec.channels
    for index in range(count):
        noise = rng.normal(0, 1, (height // 8, width // 8, channels)).astype(np.float32)
        smooth = cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC).reshape(height, width, channels)
        name = f"slice-{index:03d}"  # no _<N> suffix: each file is a scan of its own, not one series
        if spec.dtype == "uint8":
            image = np.clip(110 + 40 * smooth, 0, 255).astype(np.uint8)
            write_atomic(folder / f"{name}.png",
                         cv2.imencode(".png", image[..., ::-1] if channels == 3 else image)[1].tobytes())
        else:
            nib = require("nibabel", "nifti")
            volume = (10.0 + smooth).transpose(1, 0, 2)[:, ::-1, None, :]  # (X, Y, 1, C) in RAS+
            nib.save(nib.Nifti1Image(np.ascontiguousarray(volume), np.eye(4)), str(folder / f"{name}.nii.gz"))
    scans, skipped = discovery.discover([folder], spec.modalities)
    if skipped or len(scans) != count:
        raise RuntimeError(f"the benchmark's own slices were not all found as scans: {skipped}")
    return scans


def _end_to_end(runner, scans: Sequence[Scan], steps: ScanSteps, out: Path) -> Callable[[], None]:
    """One call of what seg-run does per batch: read, infer, finish and write each scan."""
    options = outputs.OutputOptions(overwrite=True, overlays=False)

    def call() -> None:
        read = [steps.read(scan) for scan in scans]
        result = runner.infer(np.concatenate([image for _, image in read]))
        offset = 0
        for data, image in read:
            arrays = {name: array[offset:offset + len(image)] for name, array in result.items()}
            outputs.write_scan(out, data, steps.finish_scan(data, arrays), options)
            offset += len(image)

    return call
