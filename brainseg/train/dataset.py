"""The dataset of a training run: read the same way by seg-train and, later, by seg-export."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from brainseg.data.readers import VolumeStream, read_dataset, stream_dataset
from brainseg.data.synthetic.builtin import BUILTIN_SAMPLES, builtin_sample
from brainseg.data.volume import Dataset
from brainseg.train.config import TrainConfig


def resolve_data(data: str, cfg: TrainConfig) -> Path:
    """The folder behind `data`: itself, or for a built-in sample's name the cached sample the config
    describes (its sample_patients, sample_slices and seed), generated on first use."""
    if data in BUILTIN_SAMPLES:
        return builtin_sample(data, patients=cfg.sample_patients, slices=cfg.sample_slices, seed=cfg.seed)
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
