"""The training loop for one model: epochs, validation, early stopping, checkpoints, resume."""

from __future__ import annotations

import functools
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainseg.data.preprocess import Normalisation
from brainseg.data.volume import Volume
from brainseg.metrics import headline_dice, score_volumes
from brainseg.train import reports
from brainseg.train.augment import AugmentSettings, augment_batch
from brainseg.train.checkpoint import load_checkpoint, save_checkpoint
from brainseg.train.config import TrainConfig
from brainseg.train.distributed import DistContext, broadcast
from brainseg.train.evaluate import predict_volume
from brainseg.train.losses import dice_bce_loss
from brainseg.train.models.registry import build_model, model_options
from brainseg.train.network_input import standardise
from brainseg.train.slices import SliceTable, epoch_batches, to_tensors


@dataclass
class ModelJob:
    """What one model's training needs besides the config."""

    name: str
    index: int  # position in the run's model list; seeds differ per model
    train: SliceTable
    val: list[Volume]
    norm: Normalisation
    in_channels: int
    classes: int
    out_dir: Path


@dataclass
class LoopState:
    epoch: int = 0  # epochs completed
    best_dice: float = -1.0
    best_epoch: int = -1
    bad_epochs: int = 0
    finished: bool = False
    history: list[dict] = field(default_factory=list)


def resolve_amp(mode: str, device: torch.device) -> torch.dtype | None:
    """fp16 on CUDA, bf16 on CPUs with native bf16 support, else none ('auto')."""
    if mode == "off":
        return None
    if mode == "fp16" or (mode == "auto" and device.type == "cuda"):
        return torch.float16
    if mode == "bf16":
        return torch.bfloat16
    bf16_cpu = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)()
    return torch.bfloat16 if bf16_cpu else None


class Trainer:
    """Trains one registered model into `job.out_dir` (best.pt, last.pt, metrics, reports)."""

    def __init__(self, job: ModelJob, cfg: TrainConfig, ctx: DistContext) -> None:
        self.job, self.cfg, self.ctx = job, cfg, ctx
        self.augment = AugmentSettings(intensity=cfg.intensity_augment)
        torch.manual_seed(cfg.seed + 1000 * job.index)
        # oneDNN and cuDNN convolutions run faster NHWC
        self.model = self._build_model().to(ctx.device, memory_format=torch.channels_last)
        self.net = self.model
        if ctx.distributed:
            device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
        self.steps_per_epoch = len(self._batches(0))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = self._make_scheduler()
        self.amp_dtype = resolve_amp(cfg.amp, ctx.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.state = LoopState()

    def _build_model(self) -> nn.Module:
        """The network before training: freshly initialised here; a subclass may start from weights."""
        job = self.job
        return build_model(job.name, in_channels=job.in_channels, classes=job.classes,
                           options=model_options(job.name, self.cfg))

    def _make_scheduler(self):
        total = self.cfg.epochs * self.steps_per_epoch
        if self.cfg.schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, T_max=total)
        return torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=self.cfg.lr, total_steps=total)

    def _batches(self, epoch: int) -> list:
        generator = torch.Generator().manual_seed(self.cfg.seed * 100_003 + self.job.index * 1009 + epoch)
        return epoch_batches(
            self.job.train, batch_size=self.cfg.batch_size, oversample=self.cfg.oversample,
            generator=generator, rank=self.ctx.rank, world_size=self.ctx.world_size,
        )

    # -- checkpoints ------------------------------------------------------------------------

    def _payload(self, *, with_training_state: bool) -> dict:
        job = self.job
        payload = {
            "model": job.name, "model_options": model_options(job.name, self.cfg),
            "in_channels": job.in_channels, "classes": job.classes, "img_size": self.cfg.img_size,
            "normalisation": job.norm.to_dict(), "threshold": self.cfg.threshold,
            "state_dict": self.model.state_dict(), "epoch": self.state.epoch,
            "best_dice": self.state.best_dice, "best_epoch": self.state.best_epoch,
        }
        if with_training_state:
            payload.update(
                optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
                scaler=self.scaler.state_dict(), bad_epochs=self.state.bad_epochs,
                finished=self.state.finished, history=self.state.history,
            )
        return payload

    def resume(self) -> None:
        """Continue from last.pt when it exists (a run killed mid-epoch loses that epoch only)."""
        last = self.job.out_dir / "last.pt"
        if not last.exists():
            return
        payload = load_checkpoint(last, expect_model=self.job.name)
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        self.scaler.load_state_dict(payload["scaler"])
        self.state = LoopState(
            epoch=payload["epoch"], best_dice=payload["best_dice"], best_epoch=payload["best_epoch"],
            bad_epochs=payload["bad_epochs"], finished=payload["finished"], history=payload["history"],
        )

    # -- epochs -----------------------------------------------------------------------------

    def _targets(self, index: np.ndarray, masks: torch.Tensor) -> torch.Tensor:
        """What `_loss` compares the logits with, as channels that augmentation moves like masks: here the masks."""
        return masks

    def _loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return dice_bce_loss(logits, targets)

    def _inputs(self, index: np.ndarray, generator: torch.Generator,
                unit_range: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """One batch, augmented: images (B, C, S, S) and `_targets` (B, T, S, S)."""
        images, masks = to_tensors(self.job.train, index, self.job.norm, self.ctx.device)
        targets = self._targets(index, masks)
        if self.cfg.augment:
            images, targets = augment_batch(images, targets, generator, unit_range=unit_range, settings=self.augment)
        return images, targets

    def _train_epoch(self, epoch: int, on_step) -> float:
        self.net.train()
        autocast = (
            torch.autocast(self.ctx.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        )
        unit_range = self.job.norm.kind == "uint8"
        generator = torch.Generator().manual_seed(self.cfg.seed * 7919 + self.job.index * 31 + epoch)
        total = 0.0
        batches = self._batches(epoch)
        for step, index in enumerate(batches):
            images, targets = self._inputs(index, generator, unit_range)
            with autocast:
                logits = self.net(standardise(images, self.job.norm).contiguous(memory_format=torch.channels_last))
            loss = self._loss(logits, targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            total += loss.item()
            on_step(loss=total / (step + 1))
        return total / len(batches)

    def validate(self) -> dict:
        """Per-patient Dice on the validation patients (HD95 is left to the final report)."""
        probabilities = [
            predict_volume(self.model, v, img_size=self.cfg.img_size, norm=self.job.norm, device=self.ctx.device,
                           batch_size=max(self.cfg.batch_size, 8), autocast_dtype=self.amp_dtype)
            for v in self.job.val
        ]
        return score_volumes(self.job.val, probabilities, threshold=self.cfg.threshold, with_hd95=False)

    def _end_epoch(self, epoch: int, loss: float, seconds: float) -> None:
        """Rank 0: validate, keep the best, write checkpoints and metrics; all ranks: agree to stop."""
        out, state = self.job.out_dir, self.state
        if self.ctx.is_main:
            report = self.validate()
            dice = headline_dice(report)
            improved = dice > state.best_dice + 1e-4
            state.epoch = epoch + 1
            state.best_dice, state.best_epoch = (dice, epoch + 1) if improved else (state.best_dice, state.best_epoch)
            state.bad_epochs = 0 if improved else state.bad_epochs + 1
            state.history.append(reports.epoch_row(epoch + 1, loss, report, self.scheduler.get_last_lr()[0], seconds))
            state.finished = state.epoch >= self.cfg.epochs or state.bad_epochs >= self.cfg.patience
            if improved:
                save_checkpoint(out / "best.pt", self._payload(with_training_state=False))
            save_checkpoint(out / "last.pt", self._payload(with_training_state=True))
            reports.write_metrics_csv(out / "metrics.csv", state.history)
        self.state = broadcast(self.state, self.ctx)

    def fit(self, progress) -> LoopState:
        """Run the remaining epochs; `progress(advance=..., **fields)` is called per step."""
        for epoch in range(self.state.epoch, self.cfg.epochs):
            if self.state.finished:
                break
            started = time.perf_counter()
            loss = self._train_epoch(epoch, functools.partial(progress, epoch=epoch + 1))
            self._end_epoch(epoch, loss, time.perf_counter() - started)
            progress(epoch=epoch + 1, dice=self.state.best_dice, done_epoch=True)
        return self.state
