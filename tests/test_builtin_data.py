"""A built-in sample's name ("sample") as seg-eval's data: the very sample the source run trained on."""

from __future__ import annotations

import dataclasses

import pytest

from brainseg.data.builtin import builtin_sample
from brainseg.data.readers import read_dataset
from brainseg.errors import DataError
from brainseg.evaluation.evaluate import builtin_data
from brainseg.train.config import make_config
from brainseg.train.dataset import resolve_data


@pytest.fixture
def run(tmp_path, monkeypatch):
    """A run folder whose config asks for a 3-patient, 4-slice sample with seed 5; samples cached under tmp."""
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "run"
    folder.mkdir()
    config = make_config("tiny", sample_patients=3, sample_slices=4, seed=5)
    (folder / "config.json").write_text(config.to_json())
    return folder, config


def test_seg_eval_finds_the_sample_seg_train_trained_on(run):
    folder, config = run
    found = builtin_data("sample", folder)
    assert found == resolve_data("sample", config) == builtin_sample("sample", patients=3, slices=4, seed=5)
    patients = {volume.patient_id for volume in read_dataset(found).volumes}
    assert len(patients) == 3


def test_another_seed_is_another_sample(run):
    folder, config = run
    (folder / "config.json").write_text(dataclasses.replace(config, seed=6).to_json())
    assert builtin_data("sample", folder) != builtin_sample("sample", patients=3, slices=4, seed=5)


def test_a_folder_named_sample_here_is_the_users_data(run, tmp_path, monkeypatch):
    folder, _ = run
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample").mkdir()
    assert builtin_data("sample", folder) == "sample"
    assert builtin_data(tmp_path / "data", folder) == tmp_path / "data"


def test_without_the_runs_config_the_error_says_what_to_pass(run, tmp_path):
    with pytest.raises(DataError, match=r"config\.json.*pass the sample's folder"):
        builtin_data("sample", tmp_path / "gone")
