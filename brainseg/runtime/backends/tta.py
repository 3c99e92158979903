"""Flip test-time augmentation around any backend: two passes, probabilities averaged, mask again.

It wraps a `Backend` and is one itself; `Segmenter` wraps its backend in it when the folder's (or
the options') TTA is "flip", so seg-run, seg-eval, seg-serve and seg-bench run it alike (and
seg-bench times what it costs). See `brainseg.postprocess` for when it is used.
"""

from __future__ import annotations

import numpy as np

from brainseg.artifacts.layout import DISAGREEMENT, MASK, PROBABILITY
from brainseg.postprocess import flip_slices, unflip_maps
from brainseg.runtime.backends import Backend


class FlipTTA:
    """`backend` run on each batch and on its left-right mirror; outputs averaged, mask re-thresholded."""

    def __init__(self, backend: Backend, threshold: float) -> None:
        self.backend = backend
        self.threshold = threshold
        self.name = backend.name
        self.precision = backend.precision
        self.max_batch = backend.max_batch

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        plain = self.backend.infer(batch)  # the caller's own arrays (Backend), so the second call leaves them be
        mirrored = self.backend.infer(flip_slices(batch))
        probability = 0.5 * (plain[PROBABILITY] + unflip_maps(mirrored[PROBABILITY]))
        result = {PROBABILITY: probability.astype(np.float32), MASK: (probability >= self.threshold).astype(np.uint8)}
        if DISAGREEMENT in plain:
            disagreement = 0.5 * (plain[DISAGREEMENT] + unflip_maps(mirrored[DISAGREEMENT]))
            result[DISAGREEMENT] = disagreement.astype(np.float32)
        return result

    def describe(self) -> dict:
        return {**self.backend.describe(), "tta": "flip"}

    def close(self) -> None:
        self.backend.close()
