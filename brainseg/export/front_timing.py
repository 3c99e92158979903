"""What each candidate of the front costs: its graph timed as seg-run would run it on this machine.

Each candidate's fused graph (brainseg.export.graphs.EnsembleGraph of its networks and weights) is
written once to a scratch folder in fp32 and, where seg-run would run int8 here, quantized as the
export quantizes the shipped file (same code, same activation type; a small calibration set, since
the values it picks change no timing). Each is opened with the runtime's own backend (`open_file`) on
the backend seg-run's `auto` takes on this machine, wrapped in the runtime's FlipTTA for "/flip"
candidates, and called at batch 1 on a real validation slice. PyTorch eager FP32 of the three-model
ensemble runs in the same rounds: the baseline of each candidate's speed-up.

Rounds are interleaved (every candidate in turn, round after round) so that a slow spell of a noisy
machine falls on all of them alike; a candidate's time is the median of its rounds' medians, with
the slowest and fastest round beside it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from brainseg.artifacts.layout import ENSEMBLE_OUTPUTS, INPUT_NAME
from brainseg.artifacts.variants import variant
from brainseg.bench import flops, stats
from brainseg.export import onnx_io, precision
from brainseg.export.front import Candidate
from brainseg.export.graphs import EnsembleGraph, example_input
from brainseg.export.trained_run import TrainedRun
from brainseg.runtime.backends import auto_backend
from brainseg.runtime.segmenter import open_graph

log = logging.getLogger("brainseg.export")
EAGER = "pytorch eager ensemble"


@dataclass(frozen=True)
class TimingPlan:
    """Where and how the front is timed."""

    backend: str  # "openvino" or "onnxruntime" (on the CPU)
    precision: str  # what seg-run would run here: "int8" where the export makes a CPU int8 file, else "fp32"
    note: str
    rounds: int = 5
    seconds: float = 1.0  # timed calls per candidate, over all rounds

    def describe(self) -> str:
        return (f"batch 1, {self.precision} on {self.backend} ({self.note}); {self.rounds} interleaved rounds, "
                f"median of the rounds' medians")


def timing_plan(*, cpu_int8: bool, rounds: int = 5, seconds: float = 1.0) -> TimingPlan:
    """seg-run's default here: its `auto` backend (OpenVINO on an x86 CPU with the extra, else ONNX Runtime)
    and its CPU precision (int8 where the export writes the CPU's int8 file, else fp32). A GPU's runtime is
    not timed here: the front is timed on this machine's CPU and says so."""
    backend, why = auto_backend()
    note = why
    if backend not in ("openvino", "onnxruntime"):
        note = f"seg-run's auto would take {backend} here ({why}); the front is timed on the CPU with ONNX Runtime"
        backend = "onnxruntime"
    return TimingPlan(backend, "int8" if cpu_int8 else "fp32", note, rounds, seconds)


@dataclass
class GraphSource:
    """What a candidate's graph is built from: the run's networks (eval mode, CPU) and the graph's facts."""

    networks: dict[str, torch.nn.Module]
    norm: object
    input_dtype: str
    threshold: float
    channels: int
    img_size: int
    simplify: bool = True

    def graph(self, candidate: Candidate) -> EnsembleGraph:
        return EnsembleGraph([self.networks[name] for name in candidate.networks], weights=candidate.weights,
                             norm=self.norm, input_dtype=self.input_dtype, threshold=self.threshold)

    def write(self, candidate: Candidate, folder: Path, plan: TimingPlan,
              calibration: Callable[[], Iterator[dict]]) -> tuple[Path, float]:
        """The candidate's graph in `plan.precision` under `folder`, and its fp32 GFLOP per slice."""
        fp32 = folder / f"{candidate.graph}.fp32.onnx"
        example = example_input(batch=2, size=self.img_size, channels=self.channels, input_dtype=self.input_dtype)
        onnx_io.export_onnx(self.graph(candidate), fp32, example=example, input_names=[INPUT_NAME],
                            output_names=list(ENSEMBLE_OUTPUTS))
        if self.simplify:
            onnx_io.simplify(fp32)
        gflop = flops.flops_per_slice(fp32) / 1e9
        if plan.precision != "int8":
            return fp32, gflop
        int8 = folder / f"{candidate.graph}.int8.onnx"
        precision.quantize_int8(fp32, int8, calibration=calibration(),
                                activation_type=variant("int8", "cpu").int8_activations)
        return int8, gflop


def time_front(candidates: list[Candidate], source: GraphSource, plan: TimingPlan, *, image: np.ndarray,
               eager: torch.nn.Module, calibration: Callable[[], Iterator[dict]],
               progress: Callable[[str], None] = log.info) -> dict:
    """Fill each candidate's ms, ms_range, speedup and gflop; returns the eager baseline's {"ms", "ms_range"}."""
    with tempfile.TemporaryDirectory(prefix="brainseg-front-") as scratch, ExitStack() as opened:
        runners, gflops = {}, {}  # per graph, one session serving both TTA modes
        for candidate in candidates:
            if candidate.graph in runners:
                continue
            progress(f"the front: writing {candidate.graph}'s graph in {plan.precision}")
            path, gflops[candidate.graph] = source.write(candidate, Path(scratch), plan, calibration)
            runners[candidate.graph] = open_graph(path, plan.backend, plan.precision, threshold=source.threshold)
            opened.callback(runners[candidate.graph]["none"].close)
        calls = {EAGER: _eager_call(eager, image)}
        for candidate in candidates:
            runner = runners[candidate.graph][candidate.tta]
            calls[candidate.name] = lambda runner=runner: runner.infer(image)
        medians = _rounds(calls, plan, progress)
    baseline = medians[EAGER]
    for candidate in candidates:
        own = medians[candidate.name]
        ratios = [b / c for b, c in zip(baseline, own, strict=True)]
        candidate.ms, candidate.ms_range, candidate.round_ms = float(np.median(own)), (min(own), max(own)), own
        candidate.speedup, candidate.speedup_range = float(np.median(ratios)), (min(ratios), max(ratios))
        candidate.gflop = gflops[candidate.graph] * (2 if candidate.tta == "flip" else 1)
    return {"ms": float(np.median(baseline)), "ms_range": [min(baseline), max(baseline)]}


def _eager_call(module: torch.nn.Module, image: np.ndarray) -> Callable[[], object]:
    tensor = torch.from_numpy(image)

    def call() -> object:
        with torch.inference_mode():
            return module(tensor)

    return call


def _rounds(calls: dict[str, Callable[[], object]], plan: TimingPlan,
            progress: Callable[[str], None]) -> dict[str, list[float]]:
    """Each call's median ms per round, the calls interleaved round after round."""
    medians: dict[str, list[float]] = {name: [] for name in calls}
    for turn in range(plan.rounds):
        progress(f"the front: timing round {turn + 1} of {plan.rounds} ({len(calls)} rows)")
        for name, call in calls.items():
            timed = stats.time_calls(call, warmup=2 if turn == 0 else 1, seconds=plan.seconds / plan.rounds)
            medians[name].append(float(np.median(timed)))
    return medians



def time_run_front(run: TrainedRun, candidates: list[Candidate], plan: TimingPlan, slices: np.ndarray, *,
                   simplify: bool = True, progress: Callable[[str], None] = log.info) -> dict:
    """`time_front` for a trained run's candidates: `slices` (real, in the graph's input form) calibrate the int8
    graphs and the first is timed; the baseline is PyTorch eager FP32 of the run's members mixed with the
    weights the front fitted for them (equal where it has no such candidate)."""
    members = [m.name for m in run.members]
    everything = next((c for c in candidates if c.networks == tuple(members) and c.tta == "none"), None)
    eager = EnsembleGraph([m.model for m in run.members], weights=everything.weights if everything else
                          [1.0] * len(members), norm=run.norm, input_dtype=run.input_dtype, threshold=run.threshold)
    source = GraphSource(run.networks, run.norm, run.input_dtype, run.threshold, run.in_channels, run.img_size,
                         simplify)

    def calibration() -> Iterator[dict]:
        yield {INPUT_NAME: slices}

    return time_front(candidates, source, plan, image=np.ascontiguousarray(slices[:1]), eager=eager,
                      calibration=calibration, progress=progress)
