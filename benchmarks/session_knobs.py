"""Benchmark: the session-level levers on the int8 CPU file, each against seg-run's own settings.

Issue 13 asks for threads, spinning, arena and memory patterns to be measured and the winner made
seg-run's default. This times, in one run, the int8 CPU ensemble file as seg-run compiles it (the
baseline of each runtime) and with one setting changed at a time:

- OpenVINO (seg-run's default CPU runtime): a static batch shape instead of the dynamic one,
  denormals flushed to zero, threads not pinned to cores;
- ONNX Runtime: threads spinning between ops, no memory arena, no memory pattern, a static batch
  dimension, and the graph optimised offline (saved after ONNX Runtime's portable "extended"
  optimisations, as an export could ship it, then opened as usual). What the offline file is
  meant to save is the time to open a session, so that is timed too (median of 3 opens each).

Every variant is timed at batch 1 and 8 in `--rounds` interleaved rounds (variants in turn, each
round starting at a different one, a short pause between them so that spinning threads go idle),
on random slices of the graph's input. A variant's speed-up is the median over rounds of the
baseline's median over its own in the same round, with the lowest and highest round. A change is
"faster" (or "slower") only when its median moves by more than this machine's noise (15%) and
every round agrees; anything else is "within noise" and not worth a default.

    python benchmarks/session_knobs.py ARTIFACTS [--threads 2] [--rounds 5] [--seconds 4] [--out FILE]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.artifacts.sessions import import_onnxruntime, ort_session, session_options
from brainseg.bench.environment import cpu_description
from brainseg.bench.report import round_ratio
from brainseg.runtime.backends.openvino import OpenVinoBackend, import_openvino

NOISE = 0.15
PAUSE_S = 0.3
Runner = Callable[[np.ndarray], object]


def _openvino(path: Path, threads: int, batch: int, change: dict, *, static: bool) -> Runner:
    """A compiled OpenVINO request built as OpenVinoBackend builds it, with `change` on top of its settings."""
    ov = import_openvino()
    seg_run = OpenVinoBackend(path, "int8", threads=threads)
    if not change and not static:
        return seg_run.infer
    config = {key: seg_run.compiled.get_property(key) for key in
              ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "INFERENCE_NUM_THREADS")}
    config.update(change)
    core = ov.Core()
    model = core.read_model(str(path))
    if static:
        shape = model.inputs[0].get_partial_shape()
        shape[0] = batch
        model.reshape({model.inputs[0]: shape})
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda images: request.infer({0: images})


def _preoptimised(path: Path, folder: Path) -> Path:
    """`path` as ONNX Runtime's portable ("extended") graph optimisations leave it, saved in `folder`."""
    ort = import_onnxruntime()
    saved = folder / f"{path.stem}.ort-extended.onnx"
    if not saved.exists():
        options = session_options()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(saved)
        ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return saved


def _open_ms(path: Path, threads: int) -> float:
    times = []
    for _ in range(3):
        started = time.perf_counter()
        ort_session(path, threads=threads)
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def _onnxruntime(path: Path, threads: int, batch: int, change: str, scratch: Path) -> Runner:
    """An ONNX Runtime session as seg-run opens it (threads sleeping between calls), with one change."""
    if change in ("", "spinning", "pre-optimised file"):
        file = _preoptimised(path, scratch) if change == "pre-optimised file" else path
        session = ort_session(file, threads=threads, spinning=change == "spinning")
    else:
        ort = import_onnxruntime()
        options = session_options(threads=threads)
        if change == "no arena":
            options.enable_cpu_mem_arena = False
        elif change == "no memory pattern":
            options.enable_mem_pattern = False
        elif change == "static batch":
            probe = ort_session(path, threads=1)
            dim = probe.get_inputs()[0].shape[0]
            if not isinstance(dim, str):
                raise SystemExit(f"{path}: the batch dimension is already fixed ({dim})")
            options.add_free_dimension_override_by_name(dim, batch)
        session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda images: session.run(None, {name: images})


def _variants(path: Path, threads: int, batch: int, scratch: Path) -> dict[str, Runner]:
    ov = {
        "openvino seg-run": _openvino(path, threads, batch, {}, static=False),
        "openvino static batch": _openvino(path, threads, batch, {}, static=True),
        "openvino denormals flushed": _openvino(path, threads, batch, {"CPU_DENORMALS_OPTIMIZATION": True},
                                                static=False),
        "openvino threads not pinned": _openvino(path, threads, batch, {"ENABLE_CPU_PINNING": False}, static=False),
    }
    ort = {f"onnxruntime {change or 'seg-run'}": _onnxruntime(path, threads, batch, change, scratch)
           for change in ("", "spinning", "no arena", "no memory pattern", "static batch", "pre-optimised file")}
    return {**ov, **ort}


def _time(run: Runner, images: np.ndarray, seconds: float) -> float:
    """Median ms of calls over `seconds` (at least 3 calls)."""
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < 3 or time.perf_counter() - started < seconds:
        tick = time.perf_counter()
        run(images)
        times.append((time.perf_counter() - tick) * 1000)
    return statistics.median(times)


def _verdict(ratio: dict) -> str:
    """"faster" only when the median gains more than the noise and no round was slower; "slower" alike."""
    if ratio["median"] > 1 + NOISE and ratio["min"] > 1:
        return "faster"
    if ratio["median"] < 1 - NOISE and ratio["max"] < 1:
        return "slower"
    return "within noise"


def _measure(path: Path, images: np.ndarray, threads: int, rounds: int, seconds: float, scratch: Path) -> dict:
    variants = _variants(path, threads, len(images), scratch)
    for run in variants.values():  # warm-up: first calls allocate and pick kernels
        for _ in range(2):
            run(images)
    per_round: dict[str, list[float]] = {name: [] for name in variants}
    names = list(variants)
    for index in range(rounds):
        shift = index * len(names) // rounds  # each round starts elsewhere: no variant always follows the same one
        for name in names[shift:] + names[:shift]:
            per_round[name].append(round(_time(variants[name], images, seconds / rounds), 3))
            time.sleep(PAUSE_S)
    rows = {}
    for name, p50s in per_round.items():
        runtime = name.split()[0]
        base = {"round_p50_ms": per_round[f"{runtime} seg-run"]}
        ratio = round_ratio(base, {"round_p50_ms": p50s})
        rows[name] = {"round_p50_ms": p50s, "p50_ms": round(statistics.median(p50s), 3),
                      "speedup_vs_seg_run": ratio, "verdict": _verdict(ratio)}
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0, help="timed seconds per variant over all rounds")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    manifest = Manifest.load(args.artifacts)
    path = manifest.path_for("int8", "cpu")
    spec = manifest.input
    rng = np.random.default_rng(0)
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        opens = {"as exported": _open_ms(path, args.threads),
                 "pre-optimised file": _open_ms(_preoptimised(path, scratch), args.threads)}
        for batch in (int(b) for b in args.batches.split(",")):
            images = rng.integers(0, 256, (batch, spec.height, spec.width, spec.channels)).astype(spec.dtype)
            results[f"batch {batch}"] = _measure(path, images, args.threads, args.rounds, args.seconds, scratch)
            print(f"batch {batch} done", flush=True)
    ov = import_openvino()
    emit({"machine": cpu_description(), "openvino": ov.__version__.split("-")[0],
          "onnxruntime": import_onnxruntime().__version__, "file": path.name, "img_size": spec.height,
          "threads": args.threads, "rounds": args.rounds, "seconds_per_variant": args.seconds,
          "noise": NOISE, "onnxruntime_session_open_ms": opens, "results": results}, args.out)


if __name__ == "__main__":
    main()
