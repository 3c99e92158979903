"""Evaluation of trained models on whole patients, at each volume's own resolution.

Slices are resized to the training size, predicted, and the probabilities resized back to the
slice's native size before thresholding, so Dice is measured against the original masks.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from brainseg.data.preprocess import Normalisation, resize_back, resize_slices
from brainseg.data.volume import Volume
from brainseg.train.network_input import standardise, to_unit


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
        batch = torch.from_numpy(images[start : start + batch_size]).to(device).permute(0, 3, 1, 2)  # (B, C, s, s)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(standardise(to_unit(batch, norm), norm))
        probs = torch.sigmoid(logits.float())  # (B, K, s, s)
        chunks.append(probs.permute(0, 2, 3, 1).cpu().numpy())
    probs = np.concatenate(chunks)  # (S, s, s, K)
    return resize_back(probs, *volume.image.shape[1:3]).astype(np.float32)
