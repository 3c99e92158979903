"""Host-side preprocessing shared by training, export and the runtime (numpy and OpenCV only).

The normalisation constants fitted here are the ones the exported graph applies, and the
resizing is the one every consumer uses to bring slices to the model's size and back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from brainseg.data.volume import Volume


@dataclass(frozen=True)
class Normalisation:
    """How raw slices become network input; the same constants go into the exported graph.

    kind "uint8": x / 255, then (x - mean) / std per channel. kind "float": (x - mean) / std on
    values the reader already z-scored (mean 0, std 1 unless fitted otherwise). The torch
    arithmetic is `brainseg.train.network_input`.
    """

    kind: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, raw: dict) -> Normalisation:
        return cls(kind=raw["kind"], mean=tuple(raw["mean"]), std=tuple(raw["std"]))

    @property
    def divisor(self) -> float:
        """What raw values are divided by before the mean and std apply: 255 for 8-bit sources."""
        return 255.0 if self.kind == "uint8" else 1.0


def fit_normalisation(volumes: list[Volume]) -> Normalisation:
    """Per-channel mean and std of the training slices (after /255 for 8-bit sources)."""
    kind = "uint8" if volumes[0].image.dtype == np.uint8 else "float"
    if kind == "float":
        channels = volumes[0].image.shape[-1]
        return Normalisation("float", (0.0,) * channels, (1.0,) * channels)
    total = sum_sq = count = 0.0
    for volume in volumes:
        pixels = volume.image.reshape(-1, volume.image.shape[-1]).astype(np.float64) / 255.0
        total = total + pixels.sum(axis=0)
        sum_sq = sum_sq + (pixels**2).sum(axis=0)
        count += len(pixels)
    mean = total / count
    std = np.sqrt(np.maximum(sum_sq / count - mean**2, 1e-12))
    return Normalisation("uint8", tuple(mean.round(6).tolist()), tuple(std.round(6).tolist()))


def resize_slices(array: np.ndarray, size: int, *, is_mask: bool) -> np.ndarray:
    """(S, H, W, C) -> (S, size, size, C): area for shrinking images, linear for growing, nearest for masks."""
    height, width = array.shape[1:3]
    if (height, width) == (size, size):
        return array
    if is_mask:
        interpolation = cv2.INTER_NEAREST
    else:
        interpolation = cv2.INTER_AREA if size < min(height, width) else cv2.INTER_LINEAR
    out = [cv2.resize(s, (size, size), interpolation=interpolation) for s in array]
    return np.stack([o.reshape(size, size, -1) for o in out])


def resize_back(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """(S, s, s, K) probabilities at the model size -> (S, height, width, K), bilinear."""
    if probabilities.shape[1:3] == (height, width):
        return probabilities
    resized = [cv2.resize(p, (width, height), interpolation=cv2.INTER_LINEAR) for p in probabilities]
    return np.stack([r.reshape(height, width, -1) for r in resized])
