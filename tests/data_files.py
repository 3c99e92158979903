"""Tiny labelled data folders for the readers' tests: kaggle_3m patients, images/+masks/ folders, BraTS cases."""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
import pytest

from brainseg.data.volume import Dataset, SkippedInput

nib = pytest.importorskip("nibabel")

SIZE = 32


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) RGB array with OpenCV (which stores BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise RuntimeError(f"cv2 could not write {path}")
    return path


def write_gray(path: Path, gray: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), gray):
        raise RuntimeError(f"cv2 could not write {path}")
    return path


def slice_rgb(n: int, patient: int, size: int = SIZE) -> np.ndarray:
    """RGB slice whose channels encode slice number, patient and a constant: (n, 50+p, 200)."""
    image = np.empty((size, size, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = n, 50 + patient, 200
    return image


def slice_mask(n: int, size: int = SIZE, on: int = 255) -> np.ndarray:
    """A 8x8 square of foreground on even slice numbers, empty on odd ones."""
    mask = np.zeros((size, size), np.uint8)
    if n % 2 == 0:
        mask[4:12, 4:12] = on
    return mask


def make_kaggle(root: Path, patients: dict[str, int] | None = None) -> Path:
    """ROOT/<patient>/<patient>_<N>.tif + _mask.tif, plus data.csv and README like the real set."""
    patients = patients or {"TCGA_B": 4, "TCGA_A": 12, "TCGA_C": 4}
    for index, (patient, count) in enumerate(sorted(patients.items())):
        for n in range(1, count + 1):
            write_rgb(root / patient / f"{patient}_{n}.tif", slice_rgb(n, index))
            write_gray(root / patient / f"{patient}_{n}_mask.tif", slice_mask(n))
    (root / "data.csv").write_text("Patient,RNASeqCluster\nTCGA_A,1\n")
    (root / "README.md").write_text("kaggle lgg\n")
    return root


def make_folders(root: Path) -> Path:
    """images/ + masks/ with two patients, slice numbers 1, 2, 10 and both mask naming rules."""
    for index, patient in enumerate(("P1", "P2")):
        for n in (1, 2, 10):
            write_rgb(root / "images" / f"{patient}_{n}.png", slice_rgb(n, index))
            name = f"{patient}_{n}_mask.png" if n == 2 else f"{patient}_{n}.png"
            write_gray(root / "masks" / name, slice_mask(n, on=1 if n == 10 else 255))
    return root


BRATS_SHAPE = (12, 10, 8)  # (X, Y, Z)
ZOOMS = (1.0, 1.5, 2.0)
MODALITIES = ("t1", "t1ce", "t2", "flair")
HOT = {
    "t1": (3, 3, 2),
    "t1ce": (4, 5, 3),
    "t2": (6, 4, 4),
    "flair": (8, 6, 5),
}  # one bright voxel each


def brats_arrays(seed: int = 0, et_label: int = 4) -> dict[str, np.ndarray]:
    """Modalities non-zero on a brain box (z 2..5 of 0..7) with one hot voxel each, and a seg."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for k, modality in enumerate(MODALITIES):
        data = np.zeros(BRATS_SHAPE, np.float32)
        data[2:10, 2:8, 2:6] = rng.uniform(10, 20, (8, 6, 4)) * (k + 1)
        data[HOT[modality]] = 1000.0
        arrays[modality] = data
    seg = np.zeros(BRATS_SHAPE, np.int16)
    seg[3:5, 3:5, 3] = 1  # 4 voxels necrosis
    seg[5:8, 3:5, 3] = 2  # 6 voxels oedema
    seg[3:6, 5, 4] = et_label  # 3 voxels enhancing
    arrays["seg"] = seg
    return arrays


def write_brats_case(
    root: Path,
    case: str,
    arrays: dict[str, np.ndarray],
    *,
    flip: bool = False,
    sep: str = "_",
    suffix: str = ".nii.gz",
) -> Path:
    """Write one case; flip=True stores the same anatomy in LPS order (x and y reversed)."""
    folder = root / case
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*ZOOMS, 1.0])
    if flip:
        affine[0, 0], affine[1, 1] = -ZOOMS[0], -ZOOMS[1]
        affine[:2, 3] = [(BRATS_SHAPE[0] - 1) * ZOOMS[0], (BRATS_SHAPE[1] - 1) * ZOOMS[1]]
    for name, data in arrays.items():
        stored = data[::-1, ::-1] if flip else data
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(stored), affine),
            folder / f"{case}{sep}{name}{suffix}",
        )
    return folder


def make_brats(root: Path, cases: int = 2) -> Path:
    for i in range(cases):
        write_brats_case(root, f"BraTS_{i:03d}", brats_arrays(seed=i))
    (root / "name_mapping.csv").write_text("case\n")
    return root


def tiff_ifd_first(pixels: np.ndarray) -> bytes:
    """A minimal uncompressed 8-bit grayscale TIFF with its directory before the pixel strip."""
    height, width = pixels.shape
    tags = [
        (256, 3, width),
        (257, 3, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 3, height),
        (279, 4, height * width),
    ]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(
        struct.pack("<HHII", tag, kind, 1, data_offset if tag == 273 else value)
        for tag, kind, value in tags
    )
    return (
        b"II*\x00"
        + struct.pack("<I", 8)
        + struct.pack("<H", len(tags))
        + entries
        + b"\0" * 4
        + pixels.tobytes()
    )


def truncate(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def skip_for(dataset: Dataset, name: str) -> SkippedInput:
    """The one skipped entry whose path ends with `name`."""
    hits = [s for s in dataset.skipped if s.path.endswith(name)]
    assert len(hits) == 1, f"expected one skip for {name}, got {dataset.skipped}"
    return hits[0]


