"""A built-in sample's name ("sample") as seg-eval's data: the very sample the source run trained on."""

from __future__ import annotations

import pytest

from brainseg.data.readers import read_dataset
from brainseg.data.synthetic.builtin import builtin_sample
from brainseg.errors import DataError
from brainseg.evaluation.evaluate import DataSettings, builtin_data
from brainseg.train.config import make_config
from brainseg.train.dataset import resolve_data


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """Reader settings as the manifest records a run that asked for a 3-patient, 4-slice sample with seed 5;
    samples cached under tmp."""
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    config = make_config("tiny", sample_patients=3, sample_slices=4, seed=5)
    return DataSettings(source="the artifacts' manifest", sample=(3, 4, 5)), config


def test_seg_eval_finds_the_sample_seg_train_trained_on(settings):
    recorded, config = settings
    found = builtin_data("sample", recorded)
    assert found == resolve_data("sample", config) == builtin_sample("sample", patients=3, slices=4, seed=5)
    patients = {volume.patient_id for volume in read_dataset(found).volumes}
    assert len(patients) == 3


def test_another_seed_is_another_sample(settings):
    recorded, _ = settings
    other = DataSettings(sample=(3, 4, 6))
    assert builtin_data("sample", other) != builtin_data("sample", recorded)


def test_a_folder_named_sample_here_is_the_users_data(settings, tmp_path, monkeypatch):
    recorded, _ = settings
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sample").mkdir()
    assert builtin_data("sample", recorded) == "sample"
    assert builtin_data(tmp_path / "data", recorded) == tmp_path / "data"


def test_without_the_recorded_sample_the_error_says_what_to_pass():
    with pytest.raises(DataError, match=r"config\.json.*pass the sample's folder"):
        builtin_data("sample", DataSettings())
