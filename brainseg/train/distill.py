"""The distilled student: one more network, trained on the members' mean probabilities and the labels.

The ensemble is the run's most accurate model and its slowest; the student is meant to give its
answers at the cost of one network. It has the architecture and options of the cheapest member
(`unet` when the run trains it: the fewest FLOPs per slice), starts from that member's best
weights, and is fine-tuned for `distill_epochs` at `distill_lr_factor` x `lr` on a cosine
schedule: a one-cycle warm-up to the members' full rate would throw the trained weights away.

The teacher is the equal-weight mean of the members' sigmoid probabilities (as in the run's
"ensemble (mean)" row) on the un-augmented training slices, computed once after the members and
kept as uint8 (round(p x 255)) beside the slice table. Each step stacks the teacher's
probabilities under the masks, so augmentation moves both with the same geometry while the
intensity changes touch the images only: the student learns the teacher's answer on the clean
slice from the shifted one. Split, batches, oversampling and augmentation are the members'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainseg.data.preprocess import Normalisation
from brainseg.errors import CheckpointError
from brainseg.train.checkpoint import load_checkpoint, load_model
from brainseg.train.config import TrainConfig
from brainseg.train.distributed import DistContext, barrier
from brainseg.train.loop import LoopState, ModelJob, Trainer
from brainseg.train.losses import dice_bce_loss
from brainseg.train.models.registry import build_model, model_options
from brainseg.train.network_input import standardise
from brainseg.train.slices import SliceTable, to_tensors

STUDENT = "student"  # the student's folder in a run and its row in the run's reports
TEACHER_FILE = "teacher.npy"  # in the run's slice cache: (N, S, S, K) uint8, row for row with the training table
TEACHER_WEIGHTS = "equal mean"


def student_architecture(cfg: TrainConfig, in_channels: int, classes: int) -> str:
    """`unet` when the run trains it, else the member with the fewest parameters."""
    if "unet" in cfg.models:
        return "unet"

    def parameters(name: str) -> int:
        model = build_model(name, in_channels=in_channels, classes=classes, options=model_options(name, cfg))
        return sum(p.numel() for p in model.parameters())

    return min(cfg.models, key=parameters)


def distill_loss(logits: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """`alpha` x BCE against the teacher's probabilities + (1 - `alpha`) x the members' Dice + BCE on the labels.

    All (B, K, H, W); `teacher` in [0, 1], `labels` in {0, 1}. The soft term carries what the
    ensemble adds to one network: its graded answer at uncertain borders and its agreement on
    what is not tumour. The label term keeps the Dice loss the members were trained with (a
    pixel-wise BCE alone is dominated by background and under-weights small tumours) and pulls
    the student back where the ensemble is wrong. alpha = 0.5 weighs them equally: the target is
    the ensemble's Dice, and the ensemble itself is scored against the labels.
    """
    soft = F.binary_cross_entropy_with_logits(logits.float(), teacher.float())
    return alpha * soft + (1 - alpha) * dice_bce_loss(logits, labels)


@torch.inference_mode()
def write_teacher_probabilities(models: Sequence[nn.Module], table: SliceTable, norm: Normalisation, path: Path, *,
                                device: torch.device, batch_size: int, autocast_dtype: torch.dtype | None) -> None:
    """The mean sigmoid probability of `models` on every slice of `table`, as uint8 (N, S, S, K) at `path`."""
    for model in models:
        model.eval()
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=table.masks.shape)
    for start in range(0, len(table), batch_size):
        index = np.arange(start, min(start + batch_size, len(table)))
        images, _ = to_tensors(table, index, norm, device)  # (B, C, S, S)
        inputs = standardise(images, norm).contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            mean = torch.stack([torch.sigmoid(model(inputs).float()) for model in models]).mean(dim=0)  # (B, K, S, S)
        out[index[0] : index[-1] + 1] = torch.round(mean * 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    out.flush()
    del out


def student_config(cfg: TrainConfig) -> TrainConfig:
    """The run's config as the student's loop reads it: its epochs, its learning rate, a cosine schedule."""
    return replace(cfg, epochs=cfg.distill_epochs, lr=cfg.lr * cfg.distill_lr_factor, schedule="cosine")


class StudentTrainer(Trainer):
    """Trains the student into `run_dir`/student/ with the member loop; only its start, targets and loss differ.

    `job.name` is the student's architecture (a member's name), so its checkpoints load with
    `load_model(path, job.name)` like that member's; they also say that they are the student.
    """

    def __init__(self, job: ModelJob, cfg: TrainConfig, ctx: DistContext, *, run_dir: Path,
                 teacher_file: Path) -> None:
        self.run_dir, self.teacher_file = Path(run_dir), Path(teacher_file)
        self.members = tuple(cfg.models)
        self.teacher: np.ndarray | None = None  # (N, S, S, K) uint8, opened by `fit` when epochs are left
        super().__init__(job, student_config(cfg), ctx)

    def _build_model(self) -> nn.Module:
        """The member `job.name`'s best weights, checked to be of the same options."""
        path = self.run_dir / self.job.name / "best.pt"
        payload = load_checkpoint(path, expect_model=self.job.name)
        expected = model_options(self.job.name, self.cfg)
        if payload["model_options"] != expected:
            raise CheckpointError(f"{path}: options {payload['model_options']} differ from the run's {expected}; "
                                  "the student starts from this member and needs the same")
        model = super()._build_model()
        model.load_state_dict(payload["state_dict"])
        return model

    def _teacher(self) -> np.ndarray:
        """Rank 0 writes the teacher's probabilities; every rank then maps the file read-only."""
        if self.ctx.is_main:
            members = [load_model(self.run_dir / name / "best.pt", name)[0].to(self.ctx.device)
                       for name in self.members]
            write_teacher_probabilities(
                members, self.job.train, self.job.norm, self.teacher_file, device=self.ctx.device,
                batch_size=max(self.cfg.batch_size, 8), autocast_dtype=self.amp_dtype,
            )
        barrier(self.ctx)
        return np.load(self.teacher_file, mmap_mode="r")

    def fit(self, progress) -> LoopState:
        if not self.state.finished and self.state.epoch < self.cfg.epochs:
            self.teacher = self._teacher()
        return super().fit(progress)

    def _targets(self, index: np.ndarray, masks: torch.Tensor) -> torch.Tensor:
        """The masks (B, K, S, S) with the teacher's probabilities under them: (B, 2K, S, S)."""
        teacher = torch.from_numpy(self.teacher[index]).to(self.ctx.device).permute(0, 3, 1, 2).float() / 255
        return torch.cat([masks, teacher], dim=1)

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labels, teacher = targets.split(self.job.classes, dim=1)
        return distill_loss(logits, teacher, labels, alpha=self.cfg.distill_alpha)

    def _payload(self, *, with_training_state: bool) -> dict:
        return {
            **super()._payload(with_training_state=with_training_state),
            "role": STUDENT, "teacher": {"members": list(self.members), "weights": TEACHER_WEIGHTS},
            "distill_alpha": self.cfg.distill_alpha, "init_from": self.job.name,
        }
