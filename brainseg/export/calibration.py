"""INT8 calibration slices: real validation slices, stratified to hold tumour and empty slices."""

from __future__ import annotations

import numpy as np

from brainseg.data.preprocess import resize_slices
from brainseg.data.volume import Volume
from brainseg.errors import DataError


def calibration_slices(
    volumes: list[Volume], *, img_size: int, count: int = 256, tumour_share: float = 0.5, seed: int = 0
) -> np.ndarray:
    """Up to `count` slices (N, img_size, img_size, C) in the graph's input dtype.

    About `tumour_share` of them have tumour (fewer if the volumes hold fewer), the rest are
    empty slices; both are needed so activation ranges cover what inference will see. Raises
    DataError when there is no tumour slice at all: calibrating on empty slices alone would
    clip exactly the activations that find tumours.
    """
    # (volume, slice) pairs: volumes may differ in native size, so slices are resized one by one
    pairs = [(v, s) for v in volumes for s in range(v.num_slices)]
    has_tumour = np.concatenate([v.tumour_slices for v in volumes])
    tumour, empty = np.flatnonzero(has_tumour), np.flatnonzero(~has_tumour)
    if tumour.size == 0:
        raise DataError(
            f"the calibration set ({len(volumes)} validation patients, {len(pairs)} slices) has no tumour "
            "slices; INT8 calibration needs both tumour and empty slices"
        )
    rng = np.random.default_rng(seed)
    n_tumour = min(tumour.size, max(1, round(count * tumour_share)))
    n_empty = min(empty.size, count - n_tumour)
    chosen = np.sort(np.concatenate([rng.choice(tumour, n_tumour, replace=False),
                                     rng.choice(empty, n_empty, replace=False)]))
    slices = [resize_slices(pairs[i][0].image[pairs[i][1]][None], img_size, is_mask=False) for i in chosen]
    return np.concatenate(slices)  # (N, img_size, img_size, C)
