"""Patient-level splits: no patient in two sets, seeded, k-fold with a fixed test set."""

import pytest

from brainseg.data.split import Split, load_split, save_split, split_patients
from brainseg.errors import DataError

PATIENTS = [f"P{i:03d}" for i in range(20)]


def test_sets_are_disjoint_and_cover_every_patient():
    split = split_patients(PATIENTS, val_fraction=0.2, test_fraction=0.2, seed=3)
    sets = [set(split.train), set(split.val), set(split.test)]
    assert sum(len(s) for s in sets) == len(PATIENTS)
    assert set.union(*sets) == set(PATIENTS)
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert (len(split.val), len(split.test)) == (4, 4)


def test_seeded():
    assert split_patients(PATIENTS, seed=1) == split_patients(PATIENTS, seed=1)
    assert split_patients(PATIENTS, seed=1).test != split_patients(PATIENTS, seed=2).test


def test_kfold_rotates_val_and_keeps_test():
    splits = [split_patients(PATIENTS, test_fraction=0.2, folds=4, fold=k, seed=0) for k in range(4)]
    assert len({tuple(s.test) for s in splits}) == 1
    vals = [set(s.val) for s in splits]
    assert set.union(*vals) == set(PATIENTS) - set(splits[0].test)
    assert sum(len(v) for v in vals) == len(PATIENTS) - len(splits[0].test)


def test_leak_is_detected(tmp_path):
    leaky = Split(train=["a", "b"], val=["b"], test=["c"], seed=0)
    with pytest.raises(DataError, match="patients in both train and val: b"):
        leaky.check_disjoint()
    save_split(leaky, tmp_path / "split.json")
    with pytest.raises(DataError):
        load_split(tmp_path / "split.json")


def test_too_few_patients():
    with pytest.raises(DataError, match="too few"):
        split_patients(["a", "b"], val_fraction=0.3, test_fraction=0.3)


def test_roundtrip(tmp_path):
    split = split_patients(PATIENTS, seed=5)
    save_split(split, tmp_path / "split.json")
    assert load_split(tmp_path / "split.json") == split
