"""Benchmark: the BraTS sample in the 2023 convention, scored as the challenge scores it.

Runs, each as its own process with its wall time and peak memory kept:

    seg-sample WORK/data --layout brats --brats-year 2023
    seg-train --data WORK/data --layout brats --target brats-regions --preset quick --out WORK/run
    seg-export WORK/run --out WORK/artifacts --int8
    seg-eval WORK/data --artifacts WORK/artifacts --out WORK/eval          (the run's test cases)
    seg-run <the test cases> --artifacts WORK/artifacts --out WORK/out --submission WORK/submission

and writes RESULTS/brats_official.json: seg-eval's lesion-wise and global figures per region (WT,
TC, ET; `brainseg.evaluation.brats_metrics`, panoptica) over the held-out test cases, for the file
seg-run uses on a CPU as it deploys, next to seg-eval's per-patient Dice; the label convention
seg-train recorded and the labels seg-run wrote (enhancing tumour 3, not 4); and what the
submission folder holds.

    python benchmarks/brats_official.py --work /tmp/brats_official --results benchmarks/results/<machine>
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from _process import console_script, run_measured
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description
from brainseg.evaluation.brats_metrics import CONVENTIONS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (emptied first)")
    parser.add_argument("--results", type=Path, help="folder to keep brats_official.json in")
    args = parser.parse_args()
    work = args.work
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    commands = {
        "seg-sample": [console_script("seg-sample"), str(work / "data"), "--layout", "brats", "--brats-year", "2023"],
        "seg-train": [console_script("seg-train"), "--data", str(work / "data"), "--layout", "brats",
                      "--target", "brats-regions", "--preset", "quick", "--out", str(work / "run"), "--no-progress"],
        "seg-export": [console_script("seg-export"), str(work / "run"), "--out", str(work / "artifacts"), "--int8"],
        "seg-eval": [console_script("seg-eval"), str(work / "data"), "--artifacts", str(work / "artifacts"),
                     "--out", str(work / "eval"), "--no-progress"],
    }
    stages = {}
    for name, command in commands.items():
        stages[name] = run_measured(command)
    manifest = Manifest.load(work / "artifacts")
    test = manifest.split_ids("test")
    cases = [str(work / "data" / case) for case in test]
    commands["seg-run"] = [console_script("seg-run"), *cases, "--artifacts", str(work / "artifacts"),
                           "--out", str(work / "out"), "--submission", str(work / "submission"), "--no-progress"]
    stages["seg-run"] = run_measured(commands["seg-run"])
    report = json.loads((work / "eval" / "report.json").read_text())
    result = {
        "machine": cpu_description(),
        "commands": {name: " ".join(command) for name, command in commands.items()},
        "stages": stages,
        "manifest_sha256": manifest.sha256,
        "recorded_brats_labels": manifest.brats_labels,
        "test_cases": test,
        "scored": {"file": report["file"], "precision": report["precision"], "backend": report["backend"]["chosen"],
                   "postprocessing": report["postprocessing"]["description"], "split": report["split"]},
        "brats": report["brats"],
        "conventions": CONVENTIONS,
        "per_patient_dice": {name: summary["dice"]["mean"] for name, summary in report["regions"].items()},
        "per_case": {entry["patient_id"]: entry["brats"] for entry in report["per_patient"]},
        "written_labels": _written_labels(work / "out"),
        "submission": sorted(p.name for p in (work / "submission").iterdir()),
    }
    emit(result, args.results / "brats_official.json" if args.results else None)


def _written_labels(out: Path) -> list[int]:
    """Every label value seg-run wrote into the label maps."""
    nib = __import__("nibabel")
    found: set[int] = set()
    for path in sorted((out / "volumes").glob("*_seg.nii.gz")):
        found |= set(np.unique(np.asarray(nib.load(str(path)).dataobj)).astype(int).tolist())
    return sorted(found)


if __name__ == "__main__":
    main()
