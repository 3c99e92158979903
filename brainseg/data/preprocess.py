"""Host-side preprocessing shared by training, export and the runtime (numpy and OpenCV only).

The normalisation described here is the one the exported graph applies, and the resizing is the
one every consumer uses to bring slices to the model's size and back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

from brainseg.errors import ConfigError

SCHEMES = ("slice_foreground", "slice_quartiles", "volume_nonzero", "fixed")
SLICE_SCHEMES = ("slice_foreground", "slice_quartiles")  # the 8-bit schemes a new run may choose
# slice_foreground constants: the share of a slice's range below which pixels count as background
# (noise of an MRI background stays under it), the floor of the std (a slice with almost no
# foreground would otherwise blow up) and the clip of the result
FOREGROUND_FRACTION = 0.05
STD_FLOOR = 0.01
Z_CLIP = 10.0
# slice_quartiles: quantiles are counted on a grid of about QUANTILE_GRID x QUANTILE_GRID pixels of
# the slice (every k-th row and column) at the 255 levels of an 8-bit value; IQR / IQR_TO_STD is
# the std of a normal distribution with that interquartile range
QUANTILE_GRID = 32
IQR_TO_STD = 1.349


@dataclass(frozen=True)
class Normalisation:
    """How raw slices become network input; the graph exported with a model applies the same.

    `scheme` says what decides the scale, so that a brighter or darker scan gives the same input:
    - "slice_foreground" (8-bit sources, kind "uint8"): each slice and channel is z-scored over
      its own foreground, the pixels above min + FOREGROUND_FRACTION x (max - min) of that slice
      and channel; a uniform change of scale leaves the network input as it was. The unit is the
      slice because 8-bit sources arrive as slices (a kaggle_3m patient is a folder of files, and
      a folder of single slices has no volume at all), and because the graph computes it, every
      backend and every batch (slices of different patients mixed) sees the same thing.
    - "slice_quartiles" (8-bit sources): the same foreground, but centred on its median and divided
      by its interquartile range / 1.349, so that saturating the brightest quarter of the brain
      (an over-bright window) moves neither; the quantiles are counted on a grid of every k-th pixel
      (about QUANTILE_GRID x QUANTILE_GRID) at the 8-bit levels, with the graph's elementwise ops.
    - "volume_nonzero" (NIfTI sources, kind "float"): the reader z-scores each volume over its
      non-zero (brain) voxels before slicing (nnU-Net's MRI rule); the graph passes values on.
    - "fixed": one mean and std per channel fitted on the training slices, applied after /255.
      Runs trained before scale-free normalisation existed use it; new runs never do.
    The torch arithmetic is `brainseg.train.network_input`.
    """

    kind: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    scheme: str = ""  # "" = the kind's own: slice_foreground (fixed when constants are given) or volume_nonzero

    def __post_init__(self) -> None:
        if not self.scheme:
            own = "volume_nonzero" if self.kind == "float" else "fixed" if self.mean else "slice_foreground"
            object.__setattr__(self, "scheme", own)
        if self.scheme not in SCHEMES:
            raise ConfigError(f"unknown normalisation scheme {self.scheme!r}; known: {', '.join(SCHEMES)}")
        if len(self.mean) != len(self.std):
            raise ConfigError(f"normalisation has {len(self.mean)} means but {len(self.std)} stds")

    def to_dict(self) -> dict:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "rule": self.rule}

    @classmethod
    def from_dict(cls, raw: dict) -> Normalisation:
        # files written before `scheme` existed normalised with fitted constants (or the reader's z-score)
        scheme = raw.get("scheme", "fixed" if raw["kind"] == "uint8" else "volume_nonzero")
        return cls(kind=raw["kind"], mean=tuple(raw.get("mean", ())), std=tuple(raw.get("std", ())), scheme=scheme)

    @property
    def divisor(self) -> float:
        """What raw values are divided by before the mean and std apply: 255 for 8-bit sources."""
        return 255.0 if self.kind == "uint8" else 1.0

    @property
    def rule(self) -> str:
        """One line for manifests and reports."""
        if self.scheme == "slice_foreground":
            return (f"per slice and channel: z-score over pixels above min + {FOREGROUND_FRACTION} x (max - min), "
                    f"std floored at {STD_FLOOR} x (max - min), clipped to +-{Z_CLIP}")
        if self.scheme == "slice_quartiles":
            return (f"per slice and channel: (x - median) / (IQR / {IQR_TO_STD}) over pixels above min + "
                    f"{FOREGROUND_FRACTION} x (max - min), quantiles on a ~{QUANTILE_GRID}x{QUANTILE_GRID} "
                    f"pixel grid at 8-bit levels, scale floored at {STD_FLOOR} x (max - min), clipped to +-{Z_CLIP}")
        if self.scheme == "volume_nonzero":
            return "per volume and channel: z-score over non-zero voxels, by the reader"
        return "x / 255, then (x - mean) / std per channel with constants fitted on the training slices"


def normalisation_for(dtype: str, channels: int, slice_scheme: str = "slice_foreground") -> Normalisation:
    """The normalisation of new runs on slices of `dtype` ("uint8" or "float32") with `channels` channels.

    `slice_scheme` (one of SLICE_SCHEMES) for 8-bit sources, the reader's per-volume z-score for
    NIfTI. Nothing is fitted: none depends on the training scans' scale.
    """
    if dtype == "uint8":
        if slice_scheme not in SLICE_SCHEMES:
            raise ConfigError(f"unknown slice normalisation {slice_scheme!r}; choose from: {', '.join(SLICE_SCHEMES)}")
        return Normalisation("uint8", scheme=slice_scheme)
    return Normalisation("float", (0.0,) * channels, (1.0,) * channels, scheme="volume_nonzero")


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
    out = np.empty((len(probabilities), height, width, probabilities.shape[-1]), probabilities.dtype)
    for source, target in zip(probabilities, out, strict=True):  # written in place: no list, no stacking copy
        cv2.resize(source, (width, height), dst=target if target.shape[-1] > 1 else target[..., 0],
                   interpolation=cv2.INTER_LINEAR)
    return out
