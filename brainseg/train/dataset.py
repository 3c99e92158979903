"""The dataset of a training run: read the same way by seg-train and, later, by seg-export."""

from __future__ import annotations

from pathlib import Path

from brainseg.data.readers import read_dataset
from brainseg.data.volume import Dataset
from brainseg.train.config import TrainConfig


def resolve_data(data: str, cfg: TrainConfig) -> Path:
    """The folder behind `data`: itself, or for "sample" the cached sample the config describes
    (generated on first use)."""
    if data != "sample":
        return Path(data)
    from brainseg.data.sample import SampleSpec, cached_sample_dataset

    return cached_sample_dataset(SampleSpec(patients=cfg.sample_patients, slices=cfg.sample_slices, seed=cfg.seed))


def read_run_dataset(data: str, cfg: TrainConfig) -> Dataset:
    """Every volume of the run's data, read with the run's layout, modalities, target and patient regex.

    Raises DataError naming the folder when it is missing or holds nothing usable.
    """
    return read_dataset(resolve_data(data, cfg), layout=cfg.layout, modalities=cfg.modalities, target=cfg.target,
                        patient_regex=cfg.patient_regex)
