"""Training slices: resizing, a disk-backed table, and batch sampling.

Volumes are resized once to the training size, kept as uint8 (8-bit sources) or float32 (NIfTI
sources), and written one patient at a time to `.npy` files under the run (`cache_slices`); the
training set's table is then one memory-mapped array (`SliceCache.table`), so memory does not grow
with the number of patients: a BraTS case is read, resized, written and dropped before the next.
Batches are gathered with numpy indexing, so no DataLoader workers are needed.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Collection, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from brainseg.data.preprocess import Normalisation, resize_slices
from brainseg.data.volume import Volume
from brainseg.train.network_input import to_unit


@dataclass
class SliceTable:
    """All training slices of a set of volumes at the training size."""

    images: np.ndarray  # (N, S, S, C) uint8 or float32
    masks: np.ndarray  # (N, S, S, K) uint8 {0, 1}
    has_tumour: np.ndarray  # (N,) bool

    def __len__(self) -> int:
        return len(self.images)


@dataclass(frozen=True)
class PatientSlices:
    """What the cache holds for one patient: counts for run.json, and the array shapes."""

    patient_id: str
    slices: int
    tumour_slices: int
    channels: int
    classes: int
    dtype: str
    file: str  # "<n>" of <n>.images.npy and <n>.masks.npy


class SliceCache:
    """Every patient's slices at the training size, one pair of `.npy` files per patient, in `folder`."""

    INDEX = "index.json"

    def __init__(self, folder: Path, size: int, patients: list[PatientSlices]) -> None:
        self.folder, self.size, self.patients = Path(folder), size, patients

    @classmethod
    def build(cls, volumes: Iterable[Volume], folder: Path, size: int) -> SliceCache:
        """Resize and write each volume as it arrives (only one is held at a time); `folder` is emptied first."""
        folder = Path(folder)
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        patients = []
        for number, volume in enumerate(volumes):
            images = resize_slices(volume.image, size, is_mask=False)
            masks = resize_slices(volume.mask, size, is_mask=True)
            np.save(folder / f"{number}.images.npy", images)
            np.save(folder / f"{number}.masks.npy", masks)
            patients.append(PatientSlices(
                volume.patient_id, volume.num_slices, int(volume.tumour_slices.sum()), volume.image.shape[-1],
                volume.mask.shape[-1], volume.image.dtype.name, str(number),
            ))
        (folder / cls.INDEX).write_text(json.dumps({"size": size, "patients": [asdict(p) for p in patients]}))
        return cls(folder, size, patients)

    @classmethod
    def open(cls, folder: Path) -> SliceCache:
        """The cache another process built (under torchrun, rank 0 builds it and the others open it)."""
        raw = json.loads((Path(folder) / cls.INDEX).read_text())
        return cls(Path(folder), raw["size"], [PatientSlices(**p) for p in raw["patients"]])

    @property
    def ids(self) -> list[str]:
        return [p.patient_id for p in self.patients]

    def write_table(self, ids: Collection[str], name: str = "train") -> None:
        """Concatenate the patients in `ids` (cache order) into `<name>.images.npy`/`.masks.npy`, patient by patient."""
        chosen = [p for p in self.patients if p.patient_id in set(ids)]
        first, total = self.patients[0], sum(p.slices for p in chosen)
        shape = (total, self.size, self.size)
        images = np.lib.format.open_memmap(self.folder / f"{name}.images.npy", mode="w+", dtype=first.dtype,
                                           shape=(*shape, first.channels))
        masks = np.lib.format.open_memmap(self.folder / f"{name}.masks.npy", mode="w+", dtype=np.uint8,
                                          shape=(*shape, first.classes))
        row = 0
        for patient in chosen:
            images[row : row + patient.slices] = np.load(self.folder / f"{patient.file}.images.npy")
            masks[row : row + patient.slices] = np.load(self.folder / f"{patient.file}.masks.npy")
            row += patient.slices
        images.flush()
        masks.flush()
        del images, masks
        for patient in self.patients:  # the table holds what training needs; the rest is read again when used
            for kind in ("images", "masks"):
                (self.folder / f"{patient.file}.{kind}.npy").unlink(missing_ok=True)

    def table(self, name: str = "train") -> SliceTable:
        """The table `write_table` wrote, memory-mapped read-only: batches read only their own slices."""
        images = np.load(self.folder / f"{name}.images.npy", mmap_mode="r")
        masks = np.load(self.folder / f"{name}.masks.npy", mmap_mode="r")
        has_tumour = np.concatenate([
            np.asarray(masks[i : i + 4096]).reshape(len(masks[i : i + 4096]), -1).any(axis=1)
            for i in range(0, len(masks), 4096)
        ]) if len(masks) else np.zeros(0, bool)
        return SliceTable(images=images, masks=masks, has_tumour=has_tumour)

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def epoch_batches(
    table: SliceTable,
    *,
    batch_size: int,
    oversample: float,
    generator: torch.Generator,
    rank: int = 0,
    world_size: int = 1,
) -> list[np.ndarray]:
    """This process's batches of slice indices for one epoch.

    One epoch draws as many slices as the table holds. With `oversample` > 0, tumour slices
    make up that share of the draw (with replacement); otherwise it is a plain permutation.
    Every rank draws the same sequence from the same seed and keeps its own stride of it.
    """
    n = len(table)
    if oversample > 0 and table.has_tumour.any() and (~table.has_tumour).any():
        weights = np.where(table.has_tumour, oversample / table.has_tumour.sum(),
                           (1 - oversample) / (~table.has_tumour).sum())
        order = torch.multinomial(torch.from_numpy(weights), n, replacement=True, generator=generator)
    else:
        order = torch.randperm(n, generator=generator)
    # every rank must run the same number of steps, or DDP's gradient all-reduce waits forever
    order = order.numpy()[: n - n % world_size][rank::world_size]
    return [order[i : i + batch_size] for i in range(0, len(order) - batch_size + 1, batch_size)] or [order]


def to_tensors(
    table: SliceTable, index: np.ndarray, norm: Normalisation, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather slices as float tensors: images (B, C, S, S) through `to_unit` (8-bit -> [0, 1]), masks (B, K, S, S)."""
    images = to_unit(torch.from_numpy(table.images[index]).to(device).permute(0, 3, 1, 2), norm)
    masks = torch.from_numpy(table.masks[index]).to(device).permute(0, 3, 1, 2).float()
    return images.contiguous(), masks.contiguous()
