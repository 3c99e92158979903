"""Patient-level splits: every slice of a patient lands in exactly one of train, val and test."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from brainseg.errors import ConfigError, DataError


@dataclass(frozen=True)
class Split:
    """Patient ids per set, with the settings that produced them."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int
    folds: int = 0
    fold: int = 0

    def check_disjoint(self) -> None:
        """Raise if any patient is in two sets (a leak that would inflate every metric)."""
        sets = {"train": set(self.train), "val": set(self.val), "test": set(self.test)}
        for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
            shared = sets[a] & sets[b]
            if shared:
                raise DataError(f"patients in both {a} and {b}: {', '.join(sorted(shared))}")


def _count(n: int, fraction: float, name: str) -> int:
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {fraction}")
    return 0 if fraction == 0 else max(1, round(n * fraction))


def split_patients(
    patient_ids: list[str],
    *,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    folds: int = 0,
    fold: int = 0,
) -> Split:
    """Split patients into train/val/test with a seeded shuffle.

    The test patients are drawn first and do not depend on `folds`/`fold`, so every fold of a
    k-fold run reports on the same held-out patients. With `folds` >= 2 the remaining patients
    are cut into `folds` near-equal folds and fold `fold` is the validation set; otherwise
    `val_fraction` of all patients go to validation.
    """
    ids = sorted(set(patient_ids))
    if len(ids) != len(patient_ids):
        raise DataError("patient ids are not unique; each volume must be one patient")
    n_test = _count(len(ids), test_fraction, "test fraction")
    order = [ids[i] for i in np.random.default_rng(seed).permutation(len(ids))]
    test, rest = sorted(order[:n_test]), order[n_test:]
    if folds >= 2:
        if not 0 <= fold < folds:
            raise ConfigError(f"fold must be in 0..{folds - 1}, got {fold}")
        if len(rest) < folds:
            raise DataError(f"{len(rest)} non-test patients cannot make {folds} folds")
        chunks = np.array_split(np.array(rest, dtype=object), folds)
        val = sorted(chunks[fold].tolist())
    else:
        val = sorted(rest[: _count(len(ids), val_fraction, "val fraction")])
    train = sorted(p for p in rest if p not in set(val))
    if not train or (val_fraction > 0 and not val) or (test_fraction > 0 and not test):
        raise DataError(
            f"{len(ids)} patients are too few for a train/val/test split "
            f"(val {val_fraction}, test {test_fraction}); add patients or lower the fractions"
        )
    split = Split(train=train, val=val, test=test, seed=seed, folds=folds, fold=fold)
    split.check_disjoint()
    return split


def save_split(split: Split, path: Path) -> None:
    path.write_text(json.dumps(asdict(split), indent=2) + "\n")


def load_split(path: Path) -> Split:
    try:
        split = Split(**json.loads(Path(path).read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise DataError(f"{path}: not a readable split file ({err})") from err
    split.check_disjoint()
    return split
