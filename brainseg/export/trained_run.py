"""What export starts from: a finished seg-train run, its checkpoints, split and its val and test data."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from brainseg.data.preprocess import Normalisation
from brainseg.data.split import Split, load_split
from brainseg.data.volume import Volume
from brainseg.errors import CheckpointError, DataError
from brainseg.train.checkpoint import load_checkpoint, load_model
from brainseg.train.config import TrainConfig
from brainseg.train.dataset import read_run_dataset, resolve_data
from brainseg.train.distill import STUDENT
from brainseg.train.models.registry import MODELS

# the facts every member must share for them to be one ensemble graph
_SHARED = ("img_size", "in_channels", "classes", "normalisation")


@dataclass
class TrainedMember:
    name: str
    model: nn.Module  # eval mode, on the CPU
    best_epoch: int
    val_dice: float


@dataclass
class TrainedRun:
    """A finished seg-train run, ready to export."""

    run_dir: Path
    members: list[TrainedMember]
    norm: Normalisation
    img_size: int
    in_channels: int
    classes: int
    threshold: float
    split: Split
    config: TrainConfig
    data: str
    student: TrainedMember | None = None  # seg-train --distill's network, where the run has one
    brats_labels: str | None = None  # the BraTS label convention of the run's label files (run.json)

    @property
    def networks(self) -> dict[str, nn.Module]:
        """Every network a candidate can use, by its folder name: the members, then the student."""
        named = {m.name: m.model for m in self.members}
        if self.student is not None:
            named[self.student.name] = self.student.model
        return named

    @property
    def input_dtype(self) -> str:
        """The ensemble graph's input: raw uint8 slices for 8-bit sources, z-scored float32 for NIfTI."""
        return "uint8" if self.norm.kind == "uint8" else "float32"


def _member(run_dir: Path, name: str) -> tuple[TrainedMember, dict]:
    """A network by its folder name; the student's architecture is the one its checkpoint names."""
    path = run_dir / name / "best.pt"
    architecture = load_checkpoint(path).get("model", name) if name == STUDENT else name
    model, payload = load_model(path, architecture)
    return TrainedMember(name, model, payload["best_epoch"], payload["best_dice"]), payload


def load_run(run_dir: str | Path, models: list[str] | None = None) -> TrainedRun:
    """Load the best checkpoint of each model in a run folder.

    `models` defaults to every model the run trained, and the distilled student is loaded beside
    them where the run has one (`models` may name "student" as well). Raises CheckpointError naming
    the file when a checkpoint is missing, corrupt or of another architecture, and when the networks
    disagree on input size, channels, classes or normalisation.
    """
    run_dir = Path(run_dir)
    for required in ("config.json", "split.json", "run.json"):
        if not (run_dir / required).is_file():
            raise CheckpointError(f"{run_dir}: not a seg-train run folder (no {required})")
    config = TrainConfig.from_json(run_dir / "config.json")
    names = list(models or [m for m in config.models if m in MODELS])
    with_student = STUDENT in names or (not models and (run_dir / STUDENT / "best.pt").is_file())
    names = [name for name in names if name != STUDENT]
    loaded = [_member(run_dir, name) for name in names] + ([_member(run_dir, STUDENT)] if with_student else [])
    first = loaded[0][1]
    for member, payload in loaded[1:]:
        for key in _SHARED:
            if payload[key] != first[key]:
                raise CheckpointError(
                    f"{run_dir}: {member.name} has {key}={payload[key]} but {loaded[0][0].name} has {first[key]}; "
                    "members of one ensemble must be trained on the same data and size"
                )
    student = loaded.pop()[0] if with_student else None
    info = json.loads((run_dir / "run.json").read_text())
    return TrainedRun(
        run_dir=run_dir, members=[m for m, _ in loaded], student=student,
        norm=Normalisation.from_dict(first["normalisation"]),
        img_size=first["img_size"], in_channels=first["in_channels"], classes=first["classes"],
        threshold=first["threshold"], split=load_split(run_dir / "split.json"), config=config,
        data=info["data"], brats_labels=info.get("brats_labels"),
    )


def split_volumes(run: TrainedRun, which: str) -> list[Volume]:
    """The run's "val" or "test" patients, read again from the data the run was trained on."""
    wanted = set(getattr(run.split, which))
    if not wanted:
        return []
    root = resolve_data(run.data, run.config)
    if not root.exists():
        raise DataError(f"{root}: the run's data folder is gone; its validation and test patients are needed for "
                        "calibration and the accuracy tables")
    dataset = read_run_dataset(run.data, run.config, patients=wanted)
    volumes = [v for v in dataset.volumes if v.patient_id in wanted]
    if len(volumes) != len(wanted):
        missing = sorted(wanted - {v.patient_id for v in volumes})
        raise DataError(f"{root}: {which} patients missing from the data: {', '.join(missing[:5])}")
    return volumes
