"""The pictures seg-run writes: mask PNG values and overlays (a slice with its outlines drawn on it)."""

from __future__ import annotations

import cv2
import numpy as np

HIGH_DISAGREEMENT = 0.5  # overlays outline pixels whose member probabilities differ by more
TUMOUR_RGB, DISAGREEMENT_RGB = (255, 0, 0), (255, 255, 0)
INNER_REGION_RGB = ((0, 255, 0), (0, 128, 255))  # tumour core, enhancing tumour (K=3)


def mask_png_values(mask: np.ndarray) -> np.ndarray:
    """(H, W, K) {0, 1} mask -> (H, W) uint8: regions the pixel is in x 255 // K (0/255 for K=1)."""
    classes = mask.shape[-1]
    return ((mask > 0).sum(axis=-1) * (255 // classes)).astype(np.uint8)


def overlay_base(image: np.ndarray) -> np.ndarray:
    """(H, W, C) slice -> (H, W, 3) uint8 RGB to draw on.

    uint8 with 3 channels: the image itself; other uint8: channel 0 as gray; float sources:
    channel 0 min-max stretched to 0..255 over this slice (all zero when the slice is flat).
    """
    if image.dtype == np.uint8:
        return image.copy() if image.shape[-1] == 3 else np.repeat(image[..., :1], 3, axis=-1)
    gray = np.nan_to_num(image[..., 0].astype(np.float64))
    low, high = gray.min(), gray.max()
    scaled = (gray - low) * (255.0 / (high - low)) if high > low else np.zeros_like(gray)
    return np.repeat(np.round(scaled).astype(np.uint8)[..., None], 3, axis=-1)


def draw_overlay(image: np.ndarray, mask: np.ndarray, disagreement: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB: `overlay_base(image)` with 1-px outlines.

    Red: class 0 (tumour / whole tumour); green and orange-blue: tumour core and enhancing tumour
    when K = 3; yellow, drawn underneath: pixels of class-0 disagreement above HIGH_DISAGREEMENT.
    """
    canvas = overlay_base(image)
    outline(canvas, disagreement[..., 0] > HIGH_DISAGREEMENT, DISAGREEMENT_RGB)
    outline(canvas, mask[..., 0] > 0, TUMOUR_RGB)
    for region, colour in zip(range(1, mask.shape[-1]), INNER_REGION_RGB, strict=False):
        outline(canvas, mask[..., region] > 0, colour)
    return canvas


def outline(canvas: np.ndarray, region: np.ndarray, colour: tuple[int, int, int]) -> None:
    """Draw the 1-pixel contour of the boolean `region` onto the (H, W, 3) RGB `canvas`, in place."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    cv2.drawContours(canvas, contours, -1, colour, thickness=1)
