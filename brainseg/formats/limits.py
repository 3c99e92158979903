"""The size limits that every reader applies before it allocates, and their one-line refusals.

seg-run, seg-eval and seg-serve share these defaults and these reasons, so a file that seg-serve
refuses (413) is skipped by seg-run with the same words. Standard library only, so that the CLI
can show the defaults without importing the runtime.
"""

from __future__ import annotations

from dataclasses import dataclass

from brainseg.errors import LimitExceeded

MAX_PIXELS = 16384 * 16384  # a 16k x 16k slice
MAX_VOXELS = 512 * 512 * 320  # a 512 x 512 x 320 volume (channels count as voxels)


@dataclass(frozen=True)
class SizeLimits:
    """The most pixels a 2-D image and voxels a volume may declare (--max-pixels, --max-voxels)."""

    max_pixels: int = MAX_PIXELS
    max_voxels: int = MAX_VOXELS


def check_pixels(width: int, height: int, limit: int) -> None:
    """LimitExceeded when a `width` x `height` image is more than `limit` pixels."""
    if width * height > limit:
        raise LimitExceeded(f"declares {width}x{height} = {width * height} pixels; the limit is {limit} (--max-pixels)")


def check_voxels(dims: tuple[int, ...], limit: int) -> None:
    """LimitExceeded when a volume of `dims` (channels included) is more than `limit` voxels."""
    voxels = 1
    for n in dims:
        voxels *= n
    if voxels > limit:
        shape = "x".join(str(n) for n in dims)
        raise LimitExceeded(f"declares {shape} = {voxels} voxels; the limit is {limit} (--max-voxels)")
