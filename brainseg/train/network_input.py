"""Raw slices -> network input, in torch: the one arithmetic of training, evaluation and the exported graphs.

Two steps, kept apart because training augments between them: `to_unit` casts to float32 and
divides 8-bit values by 255 (float sources pass unchanged), `standardise` applies the run's
normalisation scheme (see `brainseg.data.preprocess.Normalisation`). `Preprocess` chains both
for a graph whose input is the reader's raw (B, H, W, C) slices.
"""

from __future__ import annotations

import torch
from torch import nn

from brainseg.data.preprocess import (
    FOREGROUND_FRACTION,
    IQR_TO_STD,
    QUANTILE_GRID,
    STD_FLOOR,
    Z_CLIP,
    Normalisation,
)
from brainseg.errors import ConfigError

INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}
_PLANE = (2, 3)


def to_unit(images: torch.Tensor, norm: Normalisation) -> torch.Tensor:
    """(B, C, H, W) raw slices of any dtype -> float32, divided by `norm.divisor` (255 for 8-bit sources)."""
    images = images.to(torch.float32)
    return images / norm.divisor if norm.divisor != 1.0 else images


def slice_foreground_zscore(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float32 -> each slice and channel z-scored over its own foreground.

    Foreground: pixels above min + FOREGROUND_FRACTION x (max - min) of that slice and channel.
    Multiplying a slice by any positive factor (or adding an offset) gives the same result; a
    uniform slice gives zeros.
    """
    low = images.amin(dim=_PLANE, keepdim=True)
    span = images.amax(dim=_PLANE, keepdim=True) - low  # (B, C, 1, 1)
    foreground = (images > low + FOREGROUND_FRACTION * span).to(images.dtype)
    count = foreground.sum(dim=_PLANE, keepdim=True).clamp_min(1.0)
    mean = (images * foreground).sum(dim=_PLANE, keepdim=True) / count
    centred = images - mean
    std = torch.sqrt((centred * centred * foreground).sum(dim=_PLANE, keepdim=True) / count)
    std = torch.maximum(std, STD_FLOOR * span + 1e-6)
    return torch.clamp(centred / std, -Z_CLIP, Z_CLIP)


def slice_foreground_quartiles(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) float32 in [0, 1] -> each slice and channel centred on its foreground's median
    and divided by its interquartile range / IQR_TO_STD (the "slice_quartiles" scheme).

    The quantiles are counted, not sorted (TensorRT's TopK stops at 3840 elements): on every k-th
    pixel (k = W // QUANTILE_GRID), the number of foreground pixels at or above each 8-bit level;
    the q-quantile is the highest level that more than (1 - q) of them reach. Only elementwise ops
    and sums, so every backend computes the same.
    """
    low = images.amin(dim=_PLANE, keepdim=True)
    span = images.amax(dim=_PLANE, keepdim=True) - low  # (B, C, 1, 1)
    step = max(1, images.shape[-1] // QUANTILE_GRID)
    grid = images[:, :, ::step, ::step]  # (B, C, h, w)
    foreground = (grid > low + FOREGROUND_FRACTION * span).to(images.dtype)
    count = foreground.sum(dim=_PLANE)  # (B, C)
    levels = (torch.arange(1, 256, dtype=images.dtype, device=images.device) - 0.5) / 255.0  # (255,)
    at_or_above = (grid.unsqueeze(-1) >= levels).to(images.dtype)  # (B, C, h, w, 255)
    reached = (at_or_above * foreground.unsqueeze(-1)).sum(dim=_PLANE)  # (B, C, 255)

    def quantile(q: float) -> torch.Tensor:  # (B, C, 1, 1)
        above = (reached > (1.0 - q) * count.unsqueeze(-1)).to(images.dtype).sum(dim=-1)
        return (above / 255.0).view(*count.shape, 1, 1)

    median, spread = quantile(0.5), (quantile(0.75) - quantile(0.25)) / IQR_TO_STD
    scale = torch.maximum(spread, STD_FLOOR * span + 1e-6)
    return torch.clamp((images - median) / scale, -Z_CLIP, Z_CLIP)


def standardise(images: torch.Tensor, norm: Normalisation) -> torch.Tensor:
    """(B, C, H, W) float32 from `to_unit` -> network input, by `norm.scheme`."""
    if norm.scheme == "slice_foreground":
        return slice_foreground_zscore(images)
    if norm.scheme == "slice_quartiles":
        return slice_foreground_quartiles(images)
    mean = torch.tensor(norm.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    std = torch.tensor(norm.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (images - mean) / std


class Preprocess(nn.Module):
    """Raw slices (B, H, W, C) uint8 or float32 -> network input (B, C, H, W) float32."""

    def __init__(self, norm: Normalisation, input_dtype: str) -> None:
        super().__init__()
        if input_dtype not in INPUT_DTYPES:
            raise ConfigError(f"input_dtype {input_dtype!r} is not supported; choose from: {', '.join(INPUT_DTYPES)}")
        if input_dtype == "uint8" and norm.kind != "uint8":
            raise ConfigError(
                f"uint8 input needs a uint8 normalisation, got kind {norm.kind!r}; "
                "export float32 input for sources the reader z-scores (NIfTI)"
            )
        self.norm = norm

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # cast first: TensorRT accepts uint8 tensors only at the network edge and in Cast
        x = image.to(torch.float32).permute(0, 3, 1, 2)  # (B, C, H, W)
        return standardise(to_unit(x, self.norm), self.norm).contiguous()
