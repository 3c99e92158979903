"""Evaluation of trained models on whole patients, at each volume's own resolution.

Slices are resized to the training size, predicted, and the probabilities resized back to the
slice's native size before thresholding, so Dice is measured against the original masks.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch import nn

from brainseg import metrics
from brainseg.data.volume import Volume
from brainseg.train.slices import Normalisation, normalise, resize_slices

REGION_NAMES = {1: ("tumour",), 3: ("whole_tumour", "tumour_core", "enhancing_tumour")}


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    volume: Volume,
    *,
    img_size: int,
    norm: Normalisation,
    device: torch.device,
    batch_size: int = 16,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Tumour probabilities (S, H, W, K) float32 at the volume's native H, W.

    Float32 unless `autocast_dtype` is given (training validates under its own autocast).
    """
    model.eval()
    images = resize_slices(volume.image, img_size, is_mask=False)  # (S, s, s, C)
    chunks = []
    for start in range(0, len(images), batch_size):
        batch = torch.from_numpy(images[start : start + batch_size]).to(device)
        batch = batch.permute(0, 3, 1, 2).float() * norm.scale()  # (B, C, s, s)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(normalise(batch, norm))
        probs = torch.sigmoid(logits.float())  # (B, K, s, s)
        chunks.append(probs.permute(0, 2, 3, 1).cpu().numpy())
    probs = np.concatenate(chunks)  # (S, s, s, K)
    height, width = volume.image.shape[1:3]
    if (height, width) != (img_size, img_size):
        resized = [cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probs]
        probs = np.stack([r.reshape(height, width, -1) for r in resized])
    return probs.astype(np.float32)


def score_volumes(
    volumes: list[Volume], probabilities: list[np.ndarray], *, threshold: float = 0.5, with_hd95: bool = True
) -> dict:
    """The metrics report (see brainseg.metrics) per target region, from probabilities."""
    classes = volumes[0].mask.shape[-1]
    names = REGION_NAMES.get(classes, tuple(f"class_{k}" for k in range(classes)))
    report = {"threshold": threshold, "regions": {}}
    for k, name in enumerate(names):
        scores = [
            metrics.score_patient(
                volume.patient_id,
                probs[..., k] >= threshold,
                volume.mask[..., k].astype(bool),
                spacing=volume.spacing,
                slice_step=volume.slice_step,
                with_hd95=with_hd95,
            )
            for volume, probs in zip(volumes, probabilities, strict=True)
        ]
        report["regions"][name] = metrics.summarize(scores)
    return report


def headline_dice(report: dict) -> float:
    """Mean per-patient Dice over patients with tumour, averaged over the target regions."""
    values = [r["dice"]["mean"] for r in report["regions"].values() if r["dice"]["mean"] is not None]
    return float(np.mean(values)) if values else 0.0
