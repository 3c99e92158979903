"""The intensity changes another scanner or export would make, applied to 8-bit slices.

Used to check that a model's masks do not depend on a scan's absolute intensities: the test
suite and `benchmarks/intensity_invariance.py` score a scan and each of its SHIFTS the same way.
"""

from __future__ import annotations

import numpy as np

from brainseg.errors import ConfigError

# name -> (kind, value): "scale" multiplies (and clips to 0-255), "gamma" maps x -> 255 (x / 255) ** value
SHIFTS: dict[str, tuple[str, float]] = {
    "x0.3": ("scale", 0.3),
    "x0.5": ("scale", 0.5),
    "x1.5 clipped": ("scale", 1.5),
    "gamma 0.67": ("gamma", 0.67),
    "gamma 1.5": ("gamma", 1.5),
}


def shift_intensities(image: np.ndarray, name: str) -> np.ndarray:
    """An 8-bit image (any shape) with the named shift applied, rounded back to uint8."""
    if name not in SHIFTS:
        raise ConfigError(f"unknown intensity shift {name!r}; known: {', '.join(SHIFTS)}")
    if image.dtype != np.uint8:
        raise ConfigError(f"intensity shifts apply to 8-bit images, got {image.dtype}")
    kind, value = SHIFTS[name]
    values = image.astype(np.float64)
    shifted = values * value if kind == "scale" else 255.0 * (values / 255.0) ** value
    return np.clip(np.rint(shifted), 0, 255).astype(np.uint8)
