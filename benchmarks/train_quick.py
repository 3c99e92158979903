"""Benchmark: `seg-train --data sample --preset quick`, wall time and held-out Dice.

Targets: all three models in under 10 minutes on a 2-core CPU; each model at
per-patient Dice >= 0.80 on held-out sample patients; the mean of the three models'
probabilities better than the best single model.

    python benchmarks/train_quick.py [--out benchmarks/results/<machine>] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from brainseg.bench.environment import cpu_description, machine_name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<machine>")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--keep", type=Path, default=None, help="keep the run folder here")
    args = parser.parse_args()
    out = args.out or Path(__file__).parent / "results" / machine_name()
    out.mkdir(parents=True, exist_ok=True)
    run_dir = args.keep or Path(tempfile.mkdtemp(prefix="brainseg-bench-")) / "run"
    if run_dir.exists():
        shutil.rmtree(run_dir)
    # an empty sample cache, so the time includes generating the sample as a first-time user would
    env = {**os.environ, "BRAINSEG_CACHE": tempfile.mkdtemp(prefix="brainseg-cache-")}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "brainseg", "train", "--data", "sample", "--preset", "quick",
                    "--out", str(run_dir), "--device", args.device, "--no-progress"], check=True, env=env)
    seconds = time.perf_counter() - started
    report = json.loads((run_dir / "report.json").read_text())
    run_info = json.loads((run_dir / "run.json").read_text())
    epochs = {}
    for name in ("unet", "fpn", "resunet"):
        lines = (run_dir / name / "metrics.csv").read_text().strip().splitlines()[1:]
        epoch_seconds = [float(line.split(",")[-1]) for line in lines]
        epochs[name] = {"epochs": len(epoch_seconds), "mean_epoch_seconds": sum(epoch_seconds) / len(epoch_seconds)}
    test = {name: r["regions"]["tumour"] for name, r in report["test"].items()}
    result = {
        "command": "seg-train --data sample --preset quick",
        "machine": cpu_description(),
        "device": run_info["device"],
        "wall_seconds": round(seconds, 1),
        "sets": run_info["sets"],
        "epochs": epochs,
        "test_dice": {name: {k: r["dice"][k] for k in ("mean", "median", "min")} for name, r in test.items()},
        "test_empty_slice_fp_rate": {name: r["empty_slice_false_positive_rate"] for name, r in test.items()},
        "conventions": next(iter(test.values()))["conventions"],
    }
    (out / "train_quick.json").write_text(json.dumps(result, indent=2) + "\n")
    shutil.copy(run_dir / "report.md", out / "train_quick_report.md")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
