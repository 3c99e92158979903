"""Benchmark: `make demo` (seg-demo, quick preset) end to end: its time and what it ships.

Runs the demo in this process on the built-in sample and records:
- the wall time and each stage's seconds (target: the whole demo in 15 minutes on 2 CPU cores);
- each trained model's and the equal-weight PyTorch mean's held-out test Dice (seg-train's report);
- the candidate the export's front shipped and why (benchmarks/front.py reads the front itself);
- the shipped graph as it deploys (its weights, the chosen TTA and component rule): every
  precision's validation Dice (the gate) and test Dice (nothing was chosen on those patients),
  with the post-processing candidates' validation numbers.
Targets: the int8 CPU file's test Dice >= 0.90 and >= the best single model's.

    python benchmarks/demo_quick.py --keep demo --out benchmarks/results/<machine>/demo_quick.json

The kept folder is what the other suites measure (`benchmarks/*.py demo/artifacts`).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description
from brainseg.demo import run_demo

ROW_KEYS = ("dice_mean", "dice_median", "dice_worst", "hd95_mean", "hd95_undefined", "empty_slice_fp_rate",
            "dice_drop")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, default=Path("demo"), help="the demo folder (replaced)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.perf_counter()
    result = run_demo(args.keep, preset="quick", progress=False, overwrite=True)
    wall = time.perf_counter() - started
    manifest = Manifest.load(args.keep / "artifacts")
    members = {name: dice for name, dice in result.test_dice.items() if name not in ("ensemble (mean)", "student")}
    best_name = max(members, key=members.get)
    deployed = manifest.dice("int8", "cpu", split="test")
    emit({
        "command": "seg-demo --out demo --overwrite (make demo)",
        "machine": cpu_description(),
        "wall_seconds": round(wall, 1),
        "stage_seconds": result.seconds,
        "sets": json.loads((args.keep / "run" / "run.json").read_text())["sets"],
        "test_patients": manifest.accuracy_facts.get("test_patients"),
        "val_patients": manifest.accuracy_facts.get("patients"),
        "trained_test_dice_pytorch": result.test_dice,
        "deployed": {"candidate": manifest.deployed, "reason": result.deployed_reason,
                     "networks": manifest.ensemble["members"], "weights": manifest.ensemble["weights"]},
        "ensemble_weights": manifest.ensemble["weights"],
        "postprocessing": manifest.postprocessing_choice,
        "deployed_val": {name: {k: row.get(k) for k in (*ROW_KEYS, "passed")}
                         for name, row in manifest.accuracy_table.items()},
        "deployed_test": {name: {k: row.get(k) for k in ROW_KEYS} for name, row in manifest.test_table.items()},
        "targets": {
            "demo_under_15_minutes": wall <= 900,
            "int8_cpu_test_dice": deployed,
            "int8_cpu_test_dice_at_least_0.90": deployed is not None and deployed >= 0.90,
            "best_single_model": best_name,
            "best_single_model_test_dice": members[best_name],
            "int8_cpu_at_least_best_single": deployed is not None and deployed >= members[best_name],
        },
        "conventions": "per-patient foreground Dice, mean over patients with tumour; single models are seg-train's "
                       "PyTorch scores without TTA or post-processing, the deployed rows are scored as they deploy",
    }, args.out)


if __name__ == "__main__":
    main()
