"""The dataset of a training run: read the same way by seg-train and, later, by seg-export."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from brainseg.data.readers import VolumeStream, read_dataset, stream_dataset
from brainseg.data.volume import Dataset
from brainseg.train.config import TrainConfig


def resolve_data(data: str, cfg: TrainConfig) -> Path:
    """The folder behind `data`, generated on first use for the built-in samples: itself; for
    "sample" the cached kaggle_3m sample the config describes; for "sample-brats" the cached BraTS
    sample with the config's seed and `BratsSampleSpec`'s default sizes."""
    if data == "sample":
        from brainseg.data.sample import SampleSpec, cached_sample_dataset

        return cached_sample_dataset(SampleSpec(patients=cfg.sample_patients, slices=cfg.sample_slices, seed=cfg.seed))
    if data == "sample-brats":
        from brainseg.data.sample_brats import BratsSampleSpec, cached_brats_sample

        return cached_brats_sample(BratsSampleSpec(seed=cfg.seed))
    return Path(data)


def read_run_dataset(data: str, cfg: TrainConfig, patients: Collection[str] | None = None) -> Dataset:
    """The run's data (only `patients`, when given), read with the run's layout, modalities, target
    and patient regex.

    Raises DataError naming the folder when it is missing or holds nothing usable.
    """
    return read_dataset(resolve_data(data, cfg), layout=cfg.layout, modalities=cfg.modalities, target=cfg.target,
                        patient_regex=cfg.patient_regex, patients=patients)


def stream_run_dataset(data: str, cfg: TrainConfig) -> VolumeStream:
    """`read_run_dataset`, one volume at a time (see `stream_dataset`)."""
    return stream_dataset(resolve_data(data, cfg), layout=cfg.layout, modalities=cfg.modalities, target=cfg.target,
                          patient_regex=cfg.patient_regex)
