"""Benchmark: seg-run over BraTS-size cases: peak memory, and speed per voxel against 8-bit slices.

Targets (issue 11): over 20 BraTS cases (four float32 NIfTI sequences of 240 x 240 x 155 each),
seg-run's peak resident memory is at most 2 GB, and its throughput in in-plane voxels per second
is within 20% of seg-run's on 8-bit slices (the kaggle_3m sample: 256 x 256 RGB TIFF slices).

The BraTS cases are the built-in BraTS sample at BraTS's own size (`BratsSampleSpec(cases, 155,
240)`, generated once and cached); the 8-bit slices are the built-in kaggle_3m sample. Each seg-run
is a fresh `seg-run` process with its default options (ONNX Runtime, the CPU file, batch 8, two
reader threads, every output written: BraTS label maps and report.html; masks and overlays for
slices). Its peak RSS is the process's own `ru_maxrss` (from `wait4`); its speed is from its
summary.json. The two kinds alternate, `--repeats` times each, so drift on a noisy machine hits
both; the ratio is taken per repeat and reported with its spread.

Per voxel: the two artifacts folders should hold the same architecture at the same input size
(the quick preset's, 128 x 128), so the graph costs the same per slice and what differs is
reading, resizing and writing: 240 x 240 float NIfTI voxels against 256 x 256 8-bit pixels.

    python benchmarks/brats_run.py BRATS_ARTIFACTS SLICE_ARTIFACTS [--cases 20] [--slices 1000]
        [--repeats 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from _process import console_script, run_measured
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description
from brainseg.data.synthetic.sample import SampleSpec, cached_sample_dataset
from brainseg.data.synthetic.sample_brats import BratsSampleSpec, cached_brats_sample

BRATS_SIZE, BRATS_SLICES = 240, 155
RSS_TARGET_GB, RATIO_TARGET = 2.0, 0.8


def run_once(scans: Path, artifacts: Path, out: Path) -> dict:
    """One `seg-run` process over `scans`: its summary, and its peak RSS in GB."""
    command = [console_script("seg-run"), str(scans), "--artifacts", str(artifacts), "--out", str(out),
               "--backend", "onnxruntime", "--no-progress"]
    measured = run_measured(command, ok_codes=(0, 1))  # 1: some input skipped (the sample's sample_info.json)
    summary = json.loads((out / "summary.json").read_text())
    return {
        "scans": summary["done"], "skipped": [entry["path"] for entry in summary["skipped"]],
        "slices": summary["slices"], "wall_s": summary["timings_s"]["wall"], "timings_s": summary["timings_s"],
        "slices_per_s": round(summary["slices"] / summary["timings_s"]["wall"], 2),
        "peak_rss_gb": measured["peak_rss_gb"],
    }


def _describe(artifacts: Path) -> dict:
    manifest = Manifest.load(artifacts)
    spec = manifest.input
    return {"folder": str(artifacts), "sha256": manifest.sha256,
            "input": f"{spec.channels} x {spec.height}x{spec.width} {spec.dtype}"}


def summarise(runs: dict[str, list[dict]]) -> dict:
    """Peak memory and the BraTS-to-8-bit ratios per repeat: slices/s, in-plane voxels/s (the target's
    unit), and input values/s (voxels x channels: 4 sequences against 3 RGB channels)."""
    def ratio(key: str, scale: float = 1.0) -> dict:
        each = [scale * b[key] / s[key] for b, s in zip(runs["brats"], runs["slices_8bit"], strict=True)]
        return {"each": [round(r, 3) for r in each], "median": round(statistics.median(each), 3)}

    voxels = ratio("voxels_per_s")
    peak = max(run["peak_rss_gb"] for run in runs["brats"])
    return {
        "brats_peak_rss_gb": peak,
        "slices_per_s_ratio_brats_to_8bit": ratio("slices_per_s"),
        "voxels_per_s_ratio_brats_to_8bit": voxels,
        "input_values_per_s_ratio_brats_to_8bit": ratio("voxels_per_s", 4 / 3),
        "targets": {
            f"peak RSS <= {RSS_TARGET_GB} GB": peak <= RSS_TARGET_GB,
            f"voxels/s within 20% of 8-bit (every repeat >= {RATIO_TARGET})": min(voxels["each"]) >= RATIO_TARGET,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("brats_artifacts", type=Path, help="artifacts of a brats-regions run (float32, 4 sequences)")
    parser.add_argument("slice_artifacts", type=Path, help="artifacts of an 8-bit run (the demo's)")
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--slices", type=int, default=1000, help="8-bit slices to segment")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--summarise", type=Path, default=None,
                        help="recompute the summary of a result file this script wrote (its runs are kept)")
    args = parser.parse_args()
    if args.summarise:
        saved = json.loads(args.summarise.read_text())
        emit({key: value for key, value in saved.items() if key in ("machine", "what", "artifacts", "runs")}
             | summarise(saved["runs"]), args.out or args.summarise)
        return
    brats = cached_brats_sample(BratsSampleSpec(cases=args.cases, slices=BRATS_SLICES, size=BRATS_SIZE, seed=7))
    per_patient = 16
    slices = cached_sample_dataset(SampleSpec(patients=-(-args.slices // per_patient), slices=per_patient))
    kinds = {"brats": (brats, args.brats_artifacts, BRATS_SIZE * BRATS_SIZE),
             "slices_8bit": (slices, args.slice_artifacts, 256 * 256)}
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for kind, (scans, artifacts, pixels) in kinds.items():
                run = run_once(scans, artifacts, Path(tmp) / f"{kind}{repeat}")
                run["voxels_per_s"] = round(run["slices"] * pixels / run["wall_s"])
                runs[kind].append(run)
                print(f"{kind} #{repeat + 1}: {run['slices_per_s']} slices/s, peak RSS {run['peak_rss_gb']} GB",
                      file=sys.stderr)
    result = {
        "machine": cpu_description(),
        "what": f"seg-run over {args.cases} BraTS-size cases (4 x {BRATS_SIZE}x{BRATS_SIZE}x{BRATS_SLICES} float "
                f"NIfTI) and over {args.slices} 8-bit 256x256 slices, alternating, {args.repeats} repeats",
        "artifacts": {kind: _describe(artifacts) for kind, (_, artifacts, _) in kinds.items()},
        "runs": runs,
        **summarise(runs),
    }
    emit(result, args.out)


if __name__ == "__main__":
    main()
