"""Benchmark: the accuracy table of an exported ensemble, as seg-export measured and gated it.

Reads an artifacts folder (`seg-export RUN --fp16 --int8`) and keeps its accuracy tables: every
precision's per-patient Dice, scored as it deploys (the folder's TTA and component rule), on the
validation patients against PyTorch FP32 with the drop and the gate, and on the held-out test
patients (which chose nothing); the post-processing choice with its validation numbers; the FP32
parity. Writes `<name>.json` and `<name>.md` (the folder's own accuracy.md) side by side.

    python benchmarks/export_accuracy.py ARTIFACTS --out benchmarks/results/<machine>/export_accuracy_quick
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from _report import emit

from brainseg.artifacts.layout import ACCURACY_REPORT
from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--out", type=Path, required=True, help="path without suffix; .json and .md are written")
    args = parser.parse_args()
    manifest = Manifest.load(args.artifacts)
    facts = manifest.accuracy_facts
    keep = ("dice_mean", "dice_median", "dice_worst", "hd95_mean", "hd95_undefined", "empty_slice_fp_rate",
            "dice_drop", "passed", "region_dice", "region_hd95")
    result = {
        "machine": cpu_description(),
        "artifacts": str(args.artifacts),
        "manifest_sha256": manifest.sha256,
        "patients": facts["patients"],
        "max_dice_drop": facts["max_dice_drop"],
        "table": {name: {k: row[k] for k in keep if k in row} for name, row in manifest.accuracy_table.items()},
        "test_patients": facts.get("test_patients"),
        "test_table": {name: {k: row[k] for k in keep if k in row} for name, row in manifest.test_table.items()},
        "postprocessing": manifest.postprocessing_choice,
        "fp32_parity_max_abs": facts["fp32_parity_max_abs"],
        "ensemble": manifest.ensemble,
        "versions": manifest.versions,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(args.artifacts / ACCURACY_REPORT, args.out.with_suffix(".md"))
    emit(result, args.out.with_suffix(".json"))


if __name__ == "__main__":
    main()
