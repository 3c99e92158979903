"""What happens around the graph at inference: flip test-time augmentation and 3-D component filtering.

Both are chosen per artifacts folder at export, on the validation patients only, and kept only
when they improve validation Dice (`brainseg.export.postprocess_choice`); the manifest records
the choice and the numbers behind it, and seg-run, seg-eval and seg-bench apply what it says
unless told otherwise. numpy and SciPy only: the runtime uses this module.

- TTA "flip": the graph also runs on the left-right mirrored slices; the two probability maps
  (and disagreement maps) are averaged and the mask thresholded again.
- Components, per scan and per class, in 3-D over the stacked slices (face connectivity):
  "largest" keeps the largest connected component, "min_volume" removes components smaller
  than `min_voxels` voxels (at the scan's own resolution). The probability map is left as it is.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from brainseg.errors import ConfigError

TTA_MODES = ("none", "flip")
COMPONENT_RULES = ("none", "largest", "min_volume")
DEFAULT_MIN_VOXELS = 64


@dataclass(frozen=True)
class PostProcessing:
    tta: str = "none"
    components: str = "none"
    min_voxels: int = DEFAULT_MIN_VOXELS

    def __post_init__(self) -> None:
        if self.tta not in TTA_MODES:
            raise ConfigError(f"tta must be one of {', '.join(TTA_MODES)}, got {self.tta!r}")
        if self.components not in COMPONENT_RULES:
            raise ConfigError(f"components must be one of {', '.join(COMPONENT_RULES)}, got {self.components!r}")
        if self.min_voxels < 1:
            raise ConfigError(f"min_voxels must be at least 1, got {self.min_voxels}")

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> PostProcessing:
        raw = raw or {}
        return cls(tta=raw.get("tta", "none"), components=raw.get("components", "none"),
                   min_voxels=int(raw.get("min_voxels", DEFAULT_MIN_VOXELS)))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def with_overrides(self, *, tta: str | None = None, components: str | None = None) -> PostProcessing:
        """This choice with `tta`/`components` replaced where given (None or "auto" keep it)."""
        return PostProcessing(tta=self.tta if tta in (None, "auto") else tta,
                              components=self.components if components in (None, "auto") else components,
                              min_voxels=self.min_voxels)

    def describe(self) -> str:
        parts = ["flip TTA" if self.tta == "flip" else "no TTA"]
        if self.components == "largest":
            parts.append("largest 3-D component kept")
        elif self.components == "min_volume":
            parts.append(f"3-D components under {self.min_voxels} voxels removed")
        else:
            parts.append("no component filter")
        return ", ".join(parts)

    def refine(self, mask: np.ndarray) -> np.ndarray:
        """An (S, H, W) mask of one scan and class with the component rule applied (bool)."""
        return filter_components(mask, self.components, self.min_voxels)

    def refine_classes(self, mask: np.ndarray) -> np.ndarray:
        """(S, H, W, K) uint8 masks -> the same with the component rule applied per class."""
        if self.components == "none":
            return mask
        refined = [self.refine(mask[..., k]) for k in range(mask.shape[-1])]
        return np.stack(refined, axis=-1).astype(np.uint8)


def filter_components(mask: np.ndarray, rule: str, min_voxels: int = DEFAULT_MIN_VOXELS) -> np.ndarray:
    """Apply a component rule to one binary volume (any number of dimensions); returns bool."""
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if rule == "none" or not mask.any():
        return mask
    labels, count = ndimage.label(mask)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    if rule == "largest":
        return labels == int(np.argmax(sizes))
    if rule == "min_volume":
        return (sizes >= min_voxels)[labels]
    raise ConfigError(f"unknown component rule {rule!r}; choose from {', '.join(COMPONENT_RULES)}")


def flip_slices(images: np.ndarray) -> np.ndarray:
    """(N, H, W, C) slices mirrored left-right, contiguous (what a backend wants)."""
    return np.ascontiguousarray(images[:, :, ::-1])


def unflip_maps(maps: np.ndarray) -> np.ndarray:
    """(N, K, H, W) outputs of mirrored slices, mirrored back."""
    return maps[..., ::-1]
