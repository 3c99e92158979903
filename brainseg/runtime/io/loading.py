"""Read a discovered scan into the artifacts' input form: (S, H, W, C) slices of the graph's dtype.

Normalisation is split between this module and the graph, by the manifest's scheme
(`brainseg.data.preprocess.Normalisation`):
- float32 artifacts (NIfTI-trained, "volume_nonzero"): this module z-scores each volume and
  channel over its non-zero voxels (`zscore_nonzero`, as training does), since that statistic
  needs the whole volume; the graph passes the values on.
- uint8 artifacts: this module only brings pixels to 8-bit (16-bit images by the scan's maximum,
  volumes per channel by `volume_to_input`'s percentile stretch); the graph divides by 255 and
  z-scores each slice and channel over its own foreground ("slice_foreground"; runs older than
  it: fixed mean and std).
Besides, this module decodes files, reads volumes in RAS+ and cuts them into axial slices, and
matches the channel count and dtype the manifest names. The layout change to (B, C, H, W), the
models and the post-processing happen inside the graph (`brainseg.export.graphs`); sizes are
left as they are (the pipeline resizes to the graph's input).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from brainseg.artifacts.manifest import InputSpec
from brainseg.data.brats import axial_view, same_grid, zscore_nonzero
from brainseg.data.imageio import read_image, to_uint8
from brainseg.errors import BrainsegError, InputSkipped
from brainseg.formats.limits import SizeLimits
from brainseg.runtime.io.dicom import read_dicom
from brainseg.runtime.io.nifti import read_nifti
from brainseg.runtime.io.scans import Scan, ScanData


def load(scan: Scan, spec: InputSpec, *, limits: SizeLimits = SizeLimits()) -> ScanData:
    """Read `scan` as (S, H, W, C) slices in the artifacts' input dtype and channel count.

    - 2-D images: uint8 RGB (as `read_image` gives). 16-bit pixels are rescaled to 8-bit with one
      peak per scan (its maximum -> 255; a series shares it). Float32 artifacts (trained on NIfTI)
      refuse 2-D images: 8-bit slices lack the volume statistics those models were trained with.
    - Volumes (NIfTI, BraTS, DICOM): reoriented to RAS+ and cut into ALL axial slices as in
      training, so outputs align with the input; z-scored per channel for float32 artifacts,
      0 -> 0 and 99.5th percentile -> 255 for uint8 ones (`volume_to_input`).
    - Channels: a 1-channel source for 3-channel uint8 artifacts is replicated, a 3-channel one
      with identical channels for 1-channel artifacts is reduced, both with a note; any other
      mismatch skips the scan.

    Raises:
        InputSkipped: a file is empty, truncated, unreadable or has NaN/infinite voxels; the
            channel count does not fit; the slices of a series or the modalities of a case
            differ in size; a modality is empty (float32); nibabel or pydicom is missing.
            `InputTooLarge` when an image's header declares more pixels or a volume's more voxels
            than `limits` (checked before anything is decoded).
    """
    readers = {"slice": _load_images, "kaggle_3m": _load_images, "nifti": _load_volume, "brats": _load_brats,
               "dicom": _load_volume}
    try:
        return readers[scan.kind](scan, spec, limits)
    except InputSkipped:
        raise
    except BrainsegError as exc:  # nibabel or pydicom is not installed
        raise InputSkipped(scan.paths[0], str(exc)) from exc


def _load_images(scan: Scan, spec: InputSpec, limits: SizeLimits) -> ScanData:
    if spec.dtype != "uint8":
        needed = ", ".join(spec.modalities or ()) or "float32"
        raise InputSkipped(
            scan.paths[0],
            f"is a 2-D image, but these artifacts take volumes ({needed}) z-scored per scan; give NIfTI or DICOM",
        )
    images = [read_image(path, scan.content, max_pixels=limits.max_pixels) for path in scan.paths]  # (H, W, C) each
    for path, image in zip(scan.paths[1:], images[1:], strict=True):
        if (image.shape, image.dtype) != (images[0].shape, images[0].dtype):
            raise InputSkipped(path, f"is {image.shape} {image.dtype} but {scan.paths[0].name} is "
                                    f"{images[0].shape} {images[0].dtype}; the slices of one scan must match")
    stack = np.stack(images)  # (S, H, W, C)
    notes = []
    if stack.dtype != np.uint8:
        peak = int(stack.max())
        stack = to_uint8(stack, peak)
        notes.append(f"16-bit pixels rescaled to 8-bit by the scan's maximum ({peak} -> 255)")
    stack = _match_channels(stack, spec.channels, scan.paths[0], notes, replicate=True)
    return ScanData(scan, stack, [path.stem for path in scan.paths], notes=notes)


def _load_volume(scan: Scan, spec: InputSpec, limits: SizeLimits) -> ScanData:
    if scan.kind == "nifti":
        data, info = read_nifti(scan.paths[0], scan.content, max_voxels=limits.max_voxels)
    else:
        data, info = read_dicom(scan.paths, max_voxels=limits.max_voxels)
    return _volume_data(scan, data, info, spec)


def _load_brats(scan: Scan, spec: InputSpec, limits: SizeLimits) -> ScanData:
    """One (X, Y, Z) array per modality file, kept apart: each is z-scored and laid out once, never stacked."""
    channels, info = [], None
    for path in scan.paths:
        data, read_info = read_nifti(path, max_voxels=limits.max_voxels)  # (X, Y, Z, 1) in RAS+
        if data.shape[3] != 1:
            raise InputSkipped(path, f"is 4-D {data.shape}; a BraTS modality must be one 3-D volume")
        if channels and data.shape[:3] != channels[0].shape:
            raise InputSkipped(path, f"is {data.shape[:3]} but {scan.paths[0].name} is {channels[0].shape}")
        if info is not None and not same_grid(read_info["affine"], info["affine"]):
            raise InputSkipped(path, f"has a different affine from {scan.paths[0].name} (not one voxel grid)")
        channels.append(data[..., 0])
        info = info or read_info
    notes: list[str] = []
    return _scan_data(scan, volume_to_input(channels, info, spec.dtype, scan.paths, notes), info, notes)


def _volume_data(scan: Scan, data: np.ndarray, info: dict, spec: InputSpec) -> ScanData:
    """RAS+ (X, Y, Z, C) float32 -> ScanData of all its axial slices in the artifacts' form."""
    notes: list[str] = []
    try:
        data = _match_channels(data, spec.channels, scan.paths[0], notes, replicate=spec.dtype == "uint8")
    except InputSkipped as exc:
        if "series" not in info:
            raise
        needed = f" ({', '.join(spec.modalities)})" if spec.modalities else ""
        raise InputSkipped(exc.path, f"DICOM {info['series']} is one {data.shape[-1]}-channel sequence; the "
                                     f"artifacts need {spec.channels} channels{needed}") from exc
    sources = scan.paths if len(scan.paths) == data.shape[-1] else [scan.paths[0]] * data.shape[-1]
    channels = [data[..., c] for c in range(data.shape[-1])]
    return _scan_data(scan, volume_to_input(channels, info, spec.dtype, sources, notes), info, notes)


def _scan_data(scan: Scan, image: np.ndarray, info: dict, notes: list[str]) -> ScanData:
    zx, zy, zz = info["zooms"]
    return ScanData(scan, image, [f"z{z}" for z in range(image.shape[0])], spacing=(zy, zx), slice_step=zz,
                    nifti=info, notes=notes)


def _match_channels(image: np.ndarray, channels: int, path: Path, notes: list[str], *, replicate: bool) -> np.ndarray:
    """(..., C) -> (..., channels): replicate grayscale to 3 (uint8 only), reduce identical RGB, else skip."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1 and channels == 3 and replicate:
        notes.append("grayscale replicated to 3 channels")
        return np.repeat(image, 3, axis=-1)
    if have == 3 and channels == 1 and (image == image[..., :1]).all():
        notes.append("3 identical channels taken as grayscale")
        return np.ascontiguousarray(image[..., :1])
    raise InputSkipped(path, f"has {have} channel{'s' if have != 1 else ''}; the artifacts expect {channels}")


def volume_to_input(
    channels: Sequence[np.ndarray], info: dict, dtype: str, sources: Sequence[Path], notes: list[str]
) -> np.ndarray:
    """C RAS+ (X, Y, Z) float32 channels -> (Z, H, W, C) axial slices, all of them, in `dtype`.

    float32: each channel z-scored over its non-zero voxels, zeros kept at 0 (training's
    `zscore_nonzero`; an all-zero or constant channel raises `InputSkipped` naming
    `sources[c]`). uint8: a volume stored as 8-bit passes unchanged; otherwise each channel is
    rescaled so that 0 -> 0 and the 99.5th percentile of its non-zero voxels -> 255, clipped (a
    channel with negative values maps the 0.5th percentile of its non-zero voxels to 0 instead),
    and a note says so.
    """
    stretch = dtype == "uint8" and not (info["source_dtype"] == "uint8" and all(
        c.min() >= 0 and c.max() <= 255 and np.array_equal(c, np.rint(c)) for c in channels))
    if stretch:
        notes.append("rescaled to 8-bit per channel (99.5th percentile of non-zero voxels -> 255)")
    x, y, z = channels[0].shape
    out = np.empty((z, y, x, len(channels)), dtype)
    for c, channel in enumerate(channels):
        if dtype == "float32":
            channel = zscore_nonzero(sources[c], channel)
        elif stretch:
            channel = _stretch(channel)
        out[..., c] = axial_view(channel)
    return out


def _stretch(values: np.ndarray) -> np.ndarray:
    nonzero = values[values != 0]
    if nonzero.size == 0:
        return np.zeros(values.shape, np.uint8)
    low = min(0.0, float(np.percentile(nonzero, 0.5)))
    high = float(np.percentile(nonzero, 99.5))
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.clip(np.rint((values - low) * scale), 0, 255).astype(np.uint8)
