"""Benchmark: ONNX Runtime CPU latency of exported graphs, batch 1.

Targets: the fused ensemble graph faster than its three member graphs run one after
another (each on its own session, then the weighted mean, mask and disagreement in numpy, so both
sides produce the same outputs); INT8 at least 2.5x faster than FP32. Every session is created
up front and timed after warm-up on random uint8 slices of the graph's input size. Each graph's
own session lets its threads spin between ops (one session called back to back, as in the
runtime); the fused graph is also timed with sleeping threads, and the members in turn both ways
(sleeping is their better setting: three sessions' spinning threads get in each other's way).

    python benchmarks/export_latency.py ARTIFACTS [ARTIFACTS ...] [--rounds 6] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
from _report import emit

from brainseg.artifacts.layout import INPUT_NAME
from brainseg.artifacts.manifest import Manifest
from brainseg.artifacts.sessions import ort_session, run
from brainseg.artifacts.variants import variant


def _time_interleaved(calls: dict, rounds: int, block: int = 20, settle: int = 5) -> dict:
    """Time the candidates in rounds, in rotating order, so that drift in the machine's speed
    (10-15% here between minutes) falls on all alike. In each round a candidate is called `block`
    times back to back and the first `settle` calls are not kept: spinning threads of the
    candidate before it keep a core busy for a while after their last call. Stats in ms."""
    samples = {name: [] for name in calls}
    names = list(calls)
    for round_index in range(rounds):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            for repeat in range(block):
                started = time.perf_counter()
                calls[name]()
                if repeat >= settle:
                    samples[name].append((time.perf_counter() - started) * 1000)
    return {name: {"median_ms": round(statistics.median(v), 2), "min_ms": round(min(v), 2),
                   "p90_ms": round(sorted(v)[int(0.9 * (len(v) - 1))], 2), "samples": len(v)}
            for name, v in samples.items()}


def _members_in_turn(sessions, image: np.ndarray, weights: np.ndarray, threshold: float) -> tuple:
    """What a user without the fused graph runs: each member, then the ensemble outputs in numpy."""
    probs = np.stack([run(s, {INPUT_NAME: image})["probability"] for s in sessions])
    probability = np.tensordot(weights / weights.sum(), probs, axes=1)
    return probability, (probability >= threshold).astype(np.uint8), probs.max(0) - probs.min(0)


def bench(folder: Path, rounds: int, threads: int) -> dict:
    manifest = Manifest.load(folder)
    spec = manifest.input
    image = np.random.default_rng(0).integers(0, 256, (1, spec.height, spec.width, spec.channels), dtype=np.uint8)
    call = lambda session: run(session, {INPUT_NAME: image})  # noqa: E731
    # one session called back to back: its threads spin between ops (what the runtime's loop does)
    sessions = {name: ort_session(folder / name, threads=threads, spinning=True) for name in manifest.files}
    calls = {name: (lambda s=session: call(s)) for name, session in sessions.items()}
    fp32_file = variant("fp32", "cpu").onnx_file
    fused_asleep = ort_session(folder / fp32_file, threads=threads)
    calls[f"{fp32_file}, threads asleep between ops"] = lambda: call(fused_asleep)
    members = list(manifest.member_files().values())
    weights = np.asarray(manifest.ensemble["weights"], np.float32)
    for label, spinning in (("threads asleep between ops", False), ("spinning", True)):
        turn = [ort_session(folder / n, threads=threads, spinning=spinning) for n in members]
        calls[f"members in turn (fp32), {label}"] = lambda turn=turn: _members_in_turn(
            turn, image, weights, manifest.threshold)
    rows = _time_interleaved(calls, rounds)
    fp32 = rows[fp32_file]["median_ms"]
    int8 = {name: note["activation_type"] for name, note in manifest.graph_notes.items() if "activation_type" in note}
    shape = f"1x{spec.height}x{spec.width}x{spec.channels} {spec.dtype}"
    return {"artifacts": str(folder), "int8_activations": int8, "input": shape,
            "threads": threads, "rounds": rounds, "latency": rows,
            "speedup_vs_fp32": {n: round(fp32 / r["median_ms"], 2) for n, r in rows.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--rounds", type=int, default=6, help="rounds of 20 calls per graph (5 not kept)")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    results = [bench(folder, args.rounds, args.threads) for folder in args.artifacts]
    emit(results, args.out)


if __name__ == "__main__":
    main()
