"""Benchmark: how far one intensity threshold gets on a run's data, so a model's Dice means something.

For each target region, one MRI channel is z-scored per patient over its non-zero voxels (the
BraTS reader has already done so for NIfTI sources) and thresholded: FLAIR for the tumour of the
8-bit sample and for BraTS's whole tumour, T1ce (post-contrast T1) for the tumour core and the
enhancing tumour. The threshold is the one that maximises mean per-patient Dice on the run's
validation patients (a grid of z from -1 to 6 in steps of 0.05); the test patients only report.
With `--artifacts`, the deployed int8 CPU file's test Dice from its manifest is put beside it.

    python benchmarks/threshold_baseline.py RUN [--artifacts ARTIFACTS] \
        --out benchmarks/results/<machine>/threshold_baseline_quick.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.data.split import load_split
from brainseg.data.synthetic.sample import CHANNELS as SAMPLE_CHANNELS
from brainseg.metrics import REGION_NAMES, dice
from brainseg.train.config import TrainConfig
from brainseg.train.dataset import read_run_dataset

GRID = np.arange(-1.0, 6.0001, 0.05)
# the channel a radiologist would threshold for each region
CHANNEL_FOR = {"tumour": ("flair",), "whole_tumour": ("flair",), "tumour_core": ("t1ce", "t1c"),
               "enhancing_tumour": ("t1ce", "t1c")}


def _channel_names(config: TrainConfig, channels: int) -> list[str]:
    if channels == len(SAMPLE_CHANNELS):
        return ["t1", "flair", "t1ce"]  # the 8-bit sample's pre-contrast T1, FLAIR, post-contrast T1
    return [m.lower() for m in config.modalities]


def _zscored(image: np.ndarray, channel: int) -> np.ndarray:
    values = image[..., channel].astype(np.float32)
    brain = values > 0 if image.dtype == np.uint8 else values != 0
    if not brain.any():
        return np.zeros_like(values)
    mean, std = values[brain].mean(), max(float(values[brain].std()), 1e-6)
    return np.where(brain, (values - mean) / std, -np.inf)


def _mean_dice(volumes, region: int, channel: int, threshold: float) -> float:
    scores = [dice(_zscored(v.image, channel) > threshold, v.mask[..., region] > 0)
              for v in volumes if v.mask[..., region].any()]
    return float(np.mean(scores)) if scores else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    config = TrainConfig.from_json(args.run / "config.json")
    split = load_split(args.run / "split.json")
    data = json.loads((args.run / "run.json").read_text())["data"]
    volumes = read_run_dataset(data, config).volumes
    val = [v for v in volumes if v.patient_id in set(split.val)]
    test = [v for v in volumes if v.patient_id in set(split.test)]
    classes = volumes[0].mask.shape[-1]
    names = _channel_names(config, volumes[0].image.shape[-1])
    regions = {}
    for k, region in enumerate(REGION_NAMES.get(classes, tuple(f"class_{i}" for i in range(classes)))):
        channel = next(names.index(c) for c in CHANNEL_FOR.get(region, ("flair",)) if c in names)
        on_val = [_mean_dice(val, k, channel, t) for t in GRID]
        best = int(np.nanargmax(on_val))
        regions[region] = {"channel": names[channel], "threshold_z": round(float(GRID[best]), 2),
                           "val_dice": on_val[best], "test_dice": _mean_dice(test, k, channel, float(GRID[best]))}
    deployed = None
    if args.artifacts:
        row = Manifest.load(args.artifacts).test_table.get("int8-cpu", {})
        deployed = row.get("region_dice") or {next(iter(regions)): row.get("dice_mean")}
    emit({
        "run": str(args.run), "data": data, "val_patients": len(val), "test_patients": len(test),
        "conventions": "per-patient foreground Dice, mean over patients with the region; threshold on the channel "
                       "z-scored per patient over its brain voxels, chosen on the validation patients",
        "baseline": regions,
        "deployed_int8_cpu_test_dice": deployed,
        "margin": None if deployed is None else {
            region: None if deployed.get(region) is None else deployed[region] - facts["test_dice"]
            for region, facts in regions.items()},
    }, args.out)


if __name__ == "__main__":
    main()
