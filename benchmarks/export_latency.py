"""Benchmark: ONNX Runtime CPU latency of exported graphs, batch 1.

Targets (issue 3): the fused ensemble graph faster than its three member graphs run one after
another (each on its own session, then the weighted mean, mask and disagreement in numpy, so both
sides produce the same outputs); INT8 at least 2.5x faster than FP32. Every session is created up front with the
project's own options (threads sleep between calls) and timed in turn, after warm-up, on real
validation-sized input (random uint8 slices of the graph's input size).

    python benchmarks/export_latency.py ARTIFACTS [ARTIFACTS ...] [--runs 30] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from _report import emit

from brainseg.export import onnx_io
from brainseg.export.manifest import load_manifest


def _time_interleaved(calls: dict, runs: int, warmup: int = 5) -> dict:
    """Time every call once per round, in rotating order, so that drift in the machine's speed
    (10-15% here between minutes) falls on all candidates alike; stats per call in ms."""
    for call in calls.values():
        for _ in range(warmup):
            call()
    samples = {name: [] for name in calls}
    names = list(calls)
    for round_index in range(runs):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            started = time.perf_counter()
            calls[name]()
            samples[name].append((time.perf_counter() - started) * 1000)
    return {name: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2),
                   "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 2)} for name, v in samples.items()}


def _members_in_turn(sessions, image: np.ndarray, weights: np.ndarray, threshold: float) -> tuple:
    """What a user without the fused graph runs: each member, then the ensemble outputs in numpy."""
    probs = np.stack([onnx_io.run(s, {"image": image})["probability"] for s in sessions])
    probability = np.tensordot(weights / weights.sum(), probs, axes=1)
    return probability, (probability >= threshold).astype(np.uint8), probs.max(0) - probs.min(0)


def bench(folder: Path, runs: int, threads: int) -> dict:
    manifest = load_manifest(folder)
    spec = manifest["input"]
    image = np.random.default_rng(0).integers(0, 256, (1, spec["height"], spec["width"], spec["channels"]),
                                              dtype=np.uint8)
    sessions = {name: onnx_io.ort_session(folder / name, threads=threads) for name in manifest["files"]}
    calls = {name: (lambda s=session: onnx_io.run(s, {"image": image})) for name, session in sessions.items()}
    members = [n for n, e in manifest["files"].items() if e["kind"] == "member"]
    weights = np.asarray(manifest["ensemble"]["weights"], np.float32)
    calls["members in turn (fp32)"] = lambda: _members_in_turn([sessions[n] for n in members], image, weights,
                                                               manifest["threshold"])
    rows = _time_interleaved(calls, runs)
    fp32 = rows["ensemble.fp32.onnx"]["median_ms"]
    notes = manifest["graph_notes"].items()
    int8 = {name: note["activation_type"] for name, note in notes if "activation_type" in note}
    shape = f"1x{spec['height']}x{spec['width']}x{spec['channels']} {spec['dtype']}"
    return {"artifacts": str(folder), "int8_activations": int8, "input": shape,
            "threads": threads, "runs": runs, "latency": rows,
            "speedup_vs_fp32": {n: round(fp32 / r["median_ms"], 2) for n, r in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = [bench(folder, args.runs, args.threads) for folder in args.artifacts]
    emit(results, args.out)


if __name__ == "__main__":
    main()
