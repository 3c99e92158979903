"""Benchmark: the BraTS sample through the whole chain, quick preset, three regions.

Runs, each as its own process with its wall time and peak memory kept:

    seg-train --data sample-brats --preset quick --target brats-regions --out WORK/run
    seg-export WORK/run --out WORK/artifacts --fp16 --int8
    benchmarks/export_accuracy.py WORK/artifacts --out RESULTS/export_accuracy_brats_quick
    benchmarks/threshold_baseline.py WORK/run --artifacts WORK/artifacts
        --out RESULTS/threshold_baseline_brats_quick.json

and writes RESULTS/brats_quick.json with the targets of issue 11, on the held-out test cases,
per-patient Dice per region, of the file seg-run uses on a CPU (`ensemble.int8-cpu.onnx`) as it
deploys: whole tumour >= 0.85, tumour core >= 0.75, enhancing tumour >= 0.65; within 0.01 of the
fp32 file per region; at least 0.1 above the best single-threshold baseline per region.

    python benchmarks/brats_quick.py --work /tmp/brats_quick --results benchmarks/results/<machine>

WORK keeps the run and the artifacts (benchmarks/brats_run.py measures seg-run with them).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from _process import console_script, run_measured
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description

TARGETS = {"whole_tumour": 0.85, "tumour_core": 0.75, "enhancing_tumour": 0.65}
WITHIN_FP32, ABOVE_BASELINE = 0.01, 0.1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/brats_quick"), help="replaced")
    parser.add_argument("--results", type=Path, required=True, help="folder for the result files")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    run, artifacts, here = args.work / "run", args.work / "artifacts", Path(__file__).parent
    stages = {
        "seg-train": [console_script("seg-train"), "--data", "sample-brats", "--preset", "quick",
                      "--target", "brats-regions", "--out", str(run), "--no-progress"],
        "seg-export": [console_script("seg-export"), str(run), "--out", str(artifacts), "--fp16", "--int8"],
        "export_accuracy": [sys.executable, str(here / "export_accuracy.py"), str(artifacts),
                            "--out", str(args.results / "export_accuracy_brats_quick")],
        "threshold_baseline": [sys.executable, str(here / "threshold_baseline.py"), str(run),
                               "--artifacts", str(artifacts),
                               "--out", str(args.results / "threshold_baseline_brats_quick.json")],
    }
    measured = {}
    for name, command in stages.items():
        print(f"{name} ...", file=sys.stderr)
        measured[name] = run_measured(command)
    manifest = Manifest.load(artifacts)
    deployed = manifest.test_table["int8-cpu"]["region_dice"]
    fp32 = manifest.test_table["fp32"]["region_dice"]
    baseline = json.loads((args.results / "threshold_baseline_brats_quick.json").read_text())["baseline"]
    emit({
        "machine": cpu_description(),
        "commands": {name: " ".join(Path(part).name if i == 0 else part for i, part in enumerate(command))
                     for name, command in stages.items()},
        "stages": measured,
        "sets": json.loads((run / "run.json").read_text())["sets"],
        "conventions": "held-out test cases; per-patient Dice per region, mean over the cases with the region; "
                       "each file scored as it deploys (the folder's TTA and component rule)",
        "postprocessing": manifest.postprocessing_choice,
        "test_region_dice": {name: row.get("region_dice") for name, row in manifest.test_table.items()},
        "val_region_dice": {name: row.get("region_dice") for name, row in manifest.accuracy_table.items()},
        "threshold_baseline_test_dice": {region: facts["test_dice"] for region, facts in baseline.items()},
        "targets": {
            region: {
                "int8_cpu": deployed[region], "target": target, "met": deployed[region] >= target,
                "below_fp32": round(fp32[region] - deployed[region], 4),
                "within_fp32": fp32[region] - deployed[region] <= WITHIN_FP32,
                "above_baseline": round(deployed[region] - baseline[region]["test_dice"], 4),
                "beats_baseline": deployed[region] - baseline[region]["test_dice"] >= ABOVE_BASELINE,
            }
            for region, target in TARGETS.items()
        },
    }, args.results / "brats_quick.json")


if __name__ == "__main__":
    main()
