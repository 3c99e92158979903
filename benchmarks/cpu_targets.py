"""Benchmark: issue 13's CPU targets from one seg-bench run, ratios round by round.

One `seg-bench` run (library call, interleaved rounds) times on this CPU, at batch 1 and 8, in
compute and end-to-end modes: PyTorch eager FP32, ONNX Runtime and OpenVINO with each gated
precision (fp32, int8, and bf16 where the folder has it), and the peer, OpenVINO's default run of
the plain fp32 file. From its rows:

- the best gated CPU path at batch 1 (the fastest ensemble row in compute mode whose file passed
  the export's gate, run as seg-run runs it) against PyTorch eager FP32, compute and end to end
  (target >= 5x each);
- the same path against OpenVINO's default run of the fp32 file (target >= 1.2x);
- batch 8: int8 slices/s against eager's (target >= 4x), and int8's share of the measured
  u8 x s8 MatMulInteger peak (target >= 0.75);
- the Dice of that path on the held-out test patients (seg-eval with the same backend and
  precision) against the fp32 file's test Dice from the manifest (target: within 0.005).

Each ratio is the median over rounds of the ratio of the two rows' medians in that round, with
the lowest and highest round: the report's own convention. A target met by less than the
machine's noise (10-15% between runs) is reported as such ("within noise").

    python benchmarks/cpu_targets.py ARTIFACTS [--rounds 5] [--seconds 10] [--threads 2] [--out DIR]
                                             [--data DATA] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.report import round_ratio
from brainseg.bench.runner import BenchOptions, row_id
from brainseg.bench.suite import bench_artifacts
from brainseg.evaluation.evaluate import EvalOptions, evaluate

NOISE = 0.15
TARGETS = {"compute_b1_vs_eager": 5.0, "end_to_end_b1_vs_eager": 5.0, "b1_vs_openvino_default": 1.2,
           "int8_b8_vs_eager": 4.0, "int8_b8_share_of_peak": 0.75, "test_dice_below_fp32": 0.005}


def _row(rows: list[dict], backend: str, precision: str, mode: str, batch: int) -> dict | None:
    return next((r for r in rows if (r["backend"], r["precision"], r["model"], r["mode"], r["batch"])
                 == (backend, precision, "ensemble", mode, batch)), None)


def _verdict(value: float | None, target: float, *, at_most: bool = False) -> str:
    if value is None:
        return "not measured"
    met = value <= target if at_most else value >= target
    if not met:
        return "not met"
    margin = (target - value) / max(target, 1e-9) if at_most else value / target - 1
    return "met" if at_most or margin > NOISE else "within noise"


def _ratio(rows: list[dict], base: tuple, row: dict | None) -> dict | None:
    other = _row(rows, *base)
    return round_ratio(other, row) if other is not None and row is not None else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=10.0, help="timed seconds per row over all rounds")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="folder for report.md/json and targets.json")
    parser.add_argument("--data", type=Path, default=None, help="the labelled data (default: the source run's)")
    parser.add_argument("--reuse", action="store_true",
                        help="take the rows from the report.json an earlier run left in --out instead of timing again")
    args = parser.parse_args()

    manifest = Manifest.load(args.artifacts)
    gated = [p for p in ("fp32", "int8", "bf16") if p in manifest.usable_precisions("cpu")]
    options = BenchOptions(backends=("pytorch", "onnxruntime", "openvino", "openvino-default"),
                           precisions=tuple(gated), batch_sizes=(1, 8), seconds=args.seconds, rounds=args.rounds,
                           modes=("compute", "end-to-end"), members=False, threads=args.threads,
                           tta=(manifest.postprocessing.tta,))
    out = args.out or Path(tempfile.mkdtemp(prefix="cpu-targets-"))
    if args.reuse:
        report = json.loads((out / "report.json").read_text())
    else:
        report, _ = bench_artifacts(args.artifacts, out, options, progress=print)
    rows = report["rows"]

    candidates = [r for r in rows if r["model"] == "ensemble" and r["mode"] == "compute" and r["batch"] == 1
                  and r["backend"] in ("onnxruntime", "openvino")]
    eager = ("pytorch", "fp32", "compute", 1)
    best = max(candidates, key=lambda r: _ratio(rows, eager, r)["median"])
    path = (best["backend"], best["precision"])
    compute = _ratio(rows, eager, best)
    end_to_end = _ratio(rows, ("pytorch", "fp32", "end-to-end", 1), _row(rows, *path, "end-to-end", 1))
    peer = _ratio(rows, ("openvino-default", "fp32", "compute", 1), best)
    int8_b8 = max((r for r in rows if r["precision"] == "int8" and r["model"] == "ensemble"
                   and r["mode"] == "compute" and r["batch"] == 8), key=lambda r: r["stats"]["throughput_per_s"],
                  default=None)
    batch8 = _ratio(rows, ("pytorch", "fp32", "compute", 8), int8_b8)

    with tempfile.TemporaryDirectory() as scratch:
        data = args.data or manifest.source.data  # "sample": seg-eval finds it
        scored = evaluate(data, args.artifacts, Path(scratch) / "eval",
                          EvalOptions(split="test", backend=best["backend"], precision=best["precision"],
                                      threads=args.threads))
    fp32_test = manifest.dice("fp32", "cpu", "test")
    below = None if fp32_test is None or scored.dice_mean is None else round(fp32_test - scored.dice_mean, 4)

    measured = {
        "compute_b1_vs_eager": compute, "end_to_end_b1_vs_eager": end_to_end, "b1_vs_openvino_default": peer,
        "int8_b8_vs_eager": batch8,
    }
    targets = {name: {**(value or {}), "target": TARGETS[name],
                      "verdict": _verdict(value and value["median"], TARGETS[name])}
               for name, value in measured.items()}
    share = int8_b8["share_of_peak"] if int8_b8 else None
    targets["int8_b8_share_of_peak"] = {"value": share, "row": int8_b8 and row_id(int8_b8),
                                        "target": TARGETS["int8_b8_share_of_peak"],
                                        "verdict": _verdict(share, TARGETS["int8_b8_share_of_peak"])}
    targets["test_dice_below_fp32"] = {"value": below, "target": TARGETS["test_dice_below_fp32"],
                                       "verdict": _verdict(below, TARGETS["test_dice_below_fp32"], at_most=True)}
    emit({
        "artifacts": str(args.artifacts), "report": str(out / "report.json"),
        "cpu": report["environment"].get("cpu_model"), "isa": report["environment"].get("cpu_vector_isa"),
        "peaks_gflops": {k: v["gflops"] for k, v in report["peaks"].items()},
        "rounds": args.rounds, "seconds_per_row": args.seconds, "threads": args.threads or "per core",
        "best_gated_cpu_path": {"backend": best["backend"], "precision": best["precision"], "file": best["file"],
                                "compute": best.get("compute")},
        "openvino_default_compute": (_row(rows, "openvino-default", "fp32", "compute", 1) or {}).get("compute"),
        "test_dice": {"best_path": scored.dice_mean, "fp32_file": fp32_test, "patients": len(
            scored.report.get("per_patient", []))},
        "targets": targets,
        "row_p50_ms": {row_id(r): r["stats"]["p50_ms"] for r in rows},
    }, out / "targets.json")


if __name__ == "__main__":
    main()
