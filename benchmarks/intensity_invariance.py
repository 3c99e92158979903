"""Benchmark: does the deployed file's Dice hold when a scan is darker, brighter or gamma-shifted?

Scores the artifacts' CPU default (the int8 CPU file where it passed the gate), run as seg-run
runs it (its TTA and component rule: `Segmenter.predict`, ONNX Runtime), on the source
run's held-out test patients: each scan as it is and under every shift of
`brainseg.data.intensity_shifts.SHIFTS` (x0.3, x0.5, x1.5 clipped, gamma 0.67, gamma 1.5).
Reports per-patient foreground Dice per shift, the drop of the mean against the unshifted scans,
and the worst single-patient drop.

    python benchmarks/intensity_invariance.py ARTIFACTS \
        --out benchmarks/results/<machine>/intensity_invariance_quick.json

`--run` names the seg-train run whose split and data to use when the manifest's path is stale.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description
from brainseg.data.intensity_shifts import SHIFTS, shift_intensities
from brainseg.data.split import load_split
from brainseg.metrics import dice
from brainseg.runtime.segmenter import Segmenter, SegmenterOptions
from brainseg.train.config import TrainConfig
from brainseg.train.dataset import read_run_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--run", type=Path, help="the seg-train run (default: the manifest's source run)")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--label", default="", help="what these artifacts are, kept in the result")
    args = parser.parse_args()
    manifest = Manifest.load(args.artifacts)
    run = args.run or manifest.source_run
    config = TrainConfig.from_json(run / "config.json")
    test = set(load_split(run / "split.json").test)
    data = json.loads((run / "run.json").read_text())["data"]
    volumes = [v for v in read_run_dataset(data, config).volumes if v.patient_id in test and v.mask.any()]
    per_patient: dict[str, dict[str, float]] = {}
    with Segmenter(manifest, SegmenterOptions(backend="onnxruntime")) as segmenter:
        for volume in volumes:
            scores = {}
            for name in ("original", *SHIFTS):
                image = volume.image if name == "original" else shift_intensities(volume.image, name)
                scores[name] = dice(segmenter.predict(image).mask[..., 0], volume.mask[..., 0])
            per_patient[volume.patient_id] = scores
    choice, post = segmenter.choice, segmenter.post
    means = {name: float(np.mean([s[name] for s in per_patient.values()])) for name in ("original", *SHIFTS)}
    drops = {name: means["original"] - means[name] for name in SHIFTS}
    patient_drops = {name: max(s["original"] - s[name] for s in per_patient.values()) for name in SHIFTS}
    emit({
        "machine": cpu_description(),
        "artifacts": str(args.artifacts),
        "label": args.label,
        "manifest_sha256": manifest.sha256,
        "normalisation": manifest.input.normalisation,
        "file": choice.file, "precision": choice.precision, "backend": choice.reason,
        "postprocessing": post.describe(),
        "patients": len(per_patient),
        "conventions": "per-patient foreground Dice on the run's held-out test patients with tumour; "
                       "drop = mean Dice of the unshifted scans minus mean Dice under the shift",
        "mean_dice": means,
        "drop_of_mean": drops,
        "worst_drop_of_mean": max(drops.values()),
        "worst_patient_drop": patient_drops,
        "per_patient": per_patient,
    }, args.out)


if __name__ == "__main__":
    main()
