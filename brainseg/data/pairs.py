"""One patient of a 2-D layout (kaggle_3m, image/mask folders): its (image, mask) file pairs stacked
into a `Volume`, each unusable slice skipped with a reason."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np

from brainseg.data.imageio import read_image, read_mask, to_uint8
from brainseg.data.volume import Volume
from brainseg.errors import InputSkipped

SkipFn = Callable[[Path, str], None]


class SlicePair(NamedTuple):
    name: str
    image: Path
    mask: Path


def read_patient(
    patient: str, folder: Path, pairs: list[SlicePair], source: str, skip: SkipFn
) -> Volume | None:
    """Stack a patient's readable slices; skip those unlike the first (size, channels, dtype)."""
    images, masks, names = [], [], []
    for pair in pairs:
        loaded = load_pair(pair, skip)
        if loaded is None:
            continue
        image, mask = loaded
        if images and (image.shape, image.dtype) != (images[0].shape, images[0].dtype):
            skip(
                pair.image,
                f"{describe(image)} differs from the patient's first slice "
                f"{names[0]} ({describe(images[0])})",
            )
            continue
        images.append(image)
        masks.append(mask)
        names.append(pair.name)
    if not images:
        skip(folder, f"patient {patient}: none of its {len(pairs)} slices could be used")
        return None
    stack = np.stack(images)  # (S, H, W, C)
    if stack.dtype != np.uint8:
        warnings.warn(
            f"patient {patient}: {stack.dtype} slices rescaled to uint8 by the patient's maximum",
            stacklevel=2,
        )
        stack = to_uint8(stack)
    return Volume(patient, stack, np.stack(masks)[..., None], names, spacing=None, source=source)


def load_pair(pair: SlicePair, skip: SkipFn) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        image = read_image(pair.image)
        mask = read_mask(pair.mask)
    except InputSkipped as exc:
        skip(Path(exc.path), exc.reason)
        return None
    if mask.shape != image.shape[:2]:
        skip(
            pair.image,
            f"image is {image.shape[0]}x{image.shape[1]} but its mask {pair.mask.name} "
            f"is {mask.shape[0]}x{mask.shape[1]}",
        )
        return None
    return image, mask


def describe(image: np.ndarray) -> str:
    height, width, channels = image.shape
    return f"{height}x{width}x{channels} {image.dtype}"
