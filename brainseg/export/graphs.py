"""Torch modules that become the exported ONNX graphs, pre- and post-processing included.

Raw slices go in as the reader produces them, (B, H, W, C) uint8 or float32; cast, scaling,
per-channel normalisation and the layout change happen inside the graph, and so do sigmoid,
the ensemble mean, the threshold and the disagreement map. A runtime (TensorRT or ONNX Runtime)
then only moves slices in and masks out, and every backend computes the same thing.

Only the members run in `compute_dtype`: the float16 graph keeps normalisation, sigmoid, mean
and threshold in float32, where float16 would lose the small differences that decide a mask.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from brainseg.data.preprocess import Normalisation
from brainseg.errors import ConfigError
from brainseg.train.network_input import Preprocess

COMPUTE_DTYPES = (torch.float32, torch.float16)


class _SegmentationGraph(nn.Module):
    """Shared body: preprocessing, members in `compute_dtype`, per-member probabilities in float32.

    Graphs are inference modules and start in eval mode; float32 members are held, not copied,
    so the models passed in are put in eval mode too.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        *,
        norm: Normalisation,
        input_dtype: str,
        threshold: float,
        compute_dtype: torch.dtype,
    ) -> None:
        super().__init__()
        if not members:
            raise ConfigError("a graph needs at least one model")
        if compute_dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute_dtype {compute_dtype} is not supported; choose from: {COMPUTE_DTYPES}")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"threshold must lie strictly between 0 and 1, got {threshold}")
        if compute_dtype != torch.float32:  # convert copies: the caller's float32 models stay as they are
            members = [copy.deepcopy(member).to(compute_dtype) for member in members]
        self.preprocess = Preprocess(norm, input_dtype)
        self.members = nn.ModuleList(members)
        self.threshold = float(threshold)
        self.compute_dtype = compute_dtype
        self.eval()

    def with_compute_dtype(self, dtype: torch.dtype) -> _SegmentationGraph:
        """A copy of this graph whose members run in `dtype`; pre- and post-processing stay float32."""
        if dtype not in COMPUTE_DTYPES:
            raise ConfigError(f"compute_dtype {dtype} is not supported; choose from: {COMPUTE_DTYPES}")
        other = copy.deepcopy(self)
        other.members.to(dtype)
        other.compute_dtype = dtype
        return other

    def member_probabilities(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Raw slices (B, H, W, C) -> one (B, K, H, W) float32 probability map per member."""
        x = self.preprocess(image).to(self.compute_dtype)  # (B, C, H, W)
        return [torch.sigmoid(member(x).float()) for member in self.members]

    def _mask(self, probability: torch.Tensor) -> torch.Tensor:
        return (probability >= self.threshold).to(torch.uint8)  # (B, K, H, W) {0, 1}


class MemberGraph(_SegmentationGraph):
    """One model with the graph's pre- and post-processing.

    forward(image (B, H, W, C)) -> (probability (B, K, H, W) float32, mask (B, K, H, W) uint8).
    """

    def __init__(
        self,
        member: nn.Module,
        *,
        norm: Normalisation,
        input_dtype: str,
        threshold: float = 0.5,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(
            [member], norm=norm, input_dtype=input_dtype, threshold=threshold, compute_dtype=compute_dtype
        )

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probability = self.member_probabilities(image)[0]  # (B, K, H, W)
        return probability, self._mask(probability)


class EnsembleGraph(_SegmentationGraph):
    """Several models fused into one graph: weighted mean of their sigmoids, mask and disagreement.

    forward(image (B, H, W, C) of `input_dtype`) -> (probability, mask, disagreement), each
    (B, K, H, W): probability float32 is the weighted mean of the members' sigmoids (weights
    normalised to sum 1), mask uint8 is probability >= threshold, disagreement float32 is the
    largest minus the smallest member probability at each pixel.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        *,
        weights: Sequence[float],
        norm: Normalisation,
        input_dtype: str,
        threshold: float = 0.5,
        compute_dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(
            members, norm=norm, input_dtype=input_dtype, threshold=threshold, compute_dtype=compute_dtype
        )
        self.register_buffer("weights", normalised_weights(weights, len(members)).view(-1, 1, 1, 1, 1))  # (M,1,1,1,1)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        stacked = torch.stack(self.member_probabilities(image))  # (M, B, K, H, W)
        probability = (stacked * self.weights).sum(dim=0)  # (B, K, H, W)
        disagreement = stacked.amax(dim=0) - stacked.amin(dim=0)  # (B, K, H, W)
        return probability, self._mask(probability), disagreement


def normalised_weights(weights: Sequence[float], count: int) -> torch.Tensor:
    """Ensemble weights as a float32 tensor (count,) summing to 1; raises on a wrong length or sign."""
    values = [float(w) for w in weights]
    if len(values) != count:
        raise ConfigError(f"got {len(values)} ensemble weights for {count} models; give one weight per model")
    if any(w < 0 for w in values) or sum(values) <= 0:
        raise ConfigError(f"ensemble weights must be >= 0 with a positive sum, got {values}")
    total = sum(values)
    return torch.tensor([w / total for w in values], dtype=torch.float32)


def example_input(*, batch: int, size: int, channels: int, input_dtype: str, seed: int = 0) -> torch.Tensor:
    """A (batch, size, size, channels) tensor of `input_dtype` to trace an export with."""
    generator = torch.Generator().manual_seed(seed)
    if input_dtype == "uint8":
        return torch.randint(0, 256, (batch, size, size, channels), generator=generator, dtype=torch.uint8)
    return torch.randn(batch, size, size, channels, generator=generator)
