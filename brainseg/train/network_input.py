"""Raw slices -> network input, in torch: the one arithmetic of training, evaluation and the exported graphs.

Two steps, kept apart because training augments between them: `to_unit` casts to float32 and
divides 8-bit values by 255 (float sources pass unchanged), `standardise` subtracts the
per-channel mean and divides by the per-channel std that training fitted. `Preprocess` chains
both for a graph whose input is the reader's raw (B, H, W, C) slices.
"""

from __future__ import annotations

import torch
from torch import nn

from brainseg.data.preprocess import Normalisation
from brainseg.errors import ConfigError

INPUT_DTYPES = {"uint8": torch.uint8, "float32": torch.float32}


def to_unit(images: torch.Tensor, norm: Normalisation) -> torch.Tensor:
    """(B, C, H, W) raw slices of any dtype -> float32, divided by `norm.divisor` (255 for 8-bit sources)."""
    images = images.to(torch.float32)
    return images / norm.divisor if norm.divisor != 1.0 else images


def standardise(images: torch.Tensor, norm: Normalisation) -> torch.Tensor:
    """(B, C, H, W) float32 from `to_unit` -> network input: (x - mean) / std per channel."""
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
        if len(norm.mean) != len(norm.std):
            raise ConfigError(f"normalisation has {len(norm.mean)} means but {len(norm.std)} stds")
        self.norm = norm

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        # cast first: TensorRT accepts uint8 tensors only at the network edge and in Cast
        x = image.to(torch.float32).permute(0, 3, 1, 2)  # (B, C, H, W)
        return standardise(to_unit(x, self.norm), self.norm).contiguous()
