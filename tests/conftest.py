import pytest


@pytest.fixture(scope="session")
def tiny_sample(tmp_path_factory):
    """A tiny sample dataset in the kaggle_3m layout: 6 patients x 6 slices of 64x64."""
    from brainseg.data.sample import SampleSpec, write_sample_dataset

    return write_sample_dataset(tmp_path_factory.mktemp("data") / "sample", SampleSpec(patients=6, slices=6, size=64))
