"""Training slices in memory: resizing and batch sampling.

Volumes are resized once to the training size and kept as uint8 (8-bit sources) or float32
(NIfTI sources); batches are gathered with numpy indexing, so no DataLoader workers are needed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from brainseg.data.preprocess import Normalisation, resize_slices
from brainseg.data.volume import Volume
from brainseg.train.network_input import to_unit


@dataclass
class SliceTable:
    """All training slices of a set of volumes at the training size."""

    images: np.ndarray  # (N, S, S, C) uint8 or float32
    masks: np.ndarray  # (N, S, S, K) uint8 {0, 1}
    has_tumour: np.ndarray  # (N,) bool

    @classmethod
    def from_volumes(cls, volumes: list[Volume], size: int) -> SliceTable:
        images = np.concatenate([resize_slices(v.image, size, is_mask=False) for v in volumes])
        masks = np.concatenate([resize_slices(v.mask, size, is_mask=True) for v in volumes])
        has_tumour = masks.reshape(len(masks), -1).any(axis=1)
        return cls(images=images, masks=masks, has_tumour=has_tumour)

    def __len__(self) -> int:
        return len(self.images)


def epoch_batches(
    table: SliceTable,
    *,
    batch_size: int,
    oversample: float,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> list[np.ndarray]:
    """This process's batches of slice indices for one epoch.

    One epoch draws as many slices as the table holds. With `oversample` > 0, tumour slices
    make up that share of the draw (with replacement); otherwise it is a plain permutation.
    Every rank draws the same sequence from the same seed and keeps its own stride of it.
    """
    n = len(table)
    if oversample > 0 and table.has_tumour.any() and (~table.has_tumour).any():
        weights = np.where(table.has_tumour, oversample / table.has_tumour.sum(),
                           (1 - oversample) / (~table.has_tumour).sum())
        order = torch.multinomial(torch.from_numpy(weights), n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    # every rank must run the same number of steps, or DDP's gradient all-reduce waits forever
    order = order.numpy()[: n - n % world_size][rank::world_size]
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)] or [order]


def to_tensors(
    table: SliceTable, index: np.ndarray, norm: Normalisation, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather slices as float tensors: images (B, C, S, S) through `to_unit` (8-bit -> [0, 1]), masks (B, K, S, S)."""
    images = to_unit(torch.from_numpy(table.images[index]).to(device).permute(0, 3, 1, 2), norm)
    masks = torch.from_numpy(table.masks[index]).to(device).permute(0, 3, 1, 2).float()
    return images.contiguous(), masks.contiguous()
