"""Dice + binary cross-entropy on logits, per target channel."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, *, smooth: float = 1.0) -> torch.Tensor:
    """BCE plus soft Dice loss for (B, K, H, W) logits and {0, 1} targets.

    The soft Dice is taken over the whole batch per channel, so a batch of mostly empty slices
    still gives a well-defined, non-degenerate Dice term.
    """
    logits = logits.float()
    bce = F.binary_cross_entropy_with_logits(logits, target)
    probs = torch.sigmoid(logits)
    dims = (0, 2, 3)
    overlap = (probs * target).sum(dims)
    total = probs.sum(dims) + target.sum(dims)
    soft_dice = (2 * overlap + smooth) / (total + smooth)  # (K,)
    return bce + (1 - soft_dice).mean()
