"""Typed training configuration and presets; the config actually used is saved with the run."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from brainseg.data.names import BRATS_MODALITIES
from brainseg.data.preprocess import SLICE_SCHEMES
from brainseg.errors import ConfigError

DEFAULT_MODELS = ("unet", "fpn", "resunet")
AMP_MODES = ("auto", "off", "bf16", "fp16")
SCHEDULES = ("onecycle", "cosine")
INTENSITY_RECIPES = ("scale-gamma", "curves")  # brainseg.train.augment's, kept here so config imports no torch


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run does.

    `batch_size` is per process; under torchrun the global batch is batch_size x world size.
    `distill*` describe the student trained on the members' mean probabilities after them
    (brainseg/train/distill.py); it is trained only when `distill` is on and there are two or more
    members.
    """

    models: tuple[str, ...] = DEFAULT_MODELS
    epochs: int = 60
    img_size: int = 256
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "onecycle"
    patience: int = 12
    oversample: float = 0.5
    augment: bool = True
    intensity_augment: str = "scale-gamma"  # 8-bit sources: INTENSITY_RECIPES (docs/data.md says why this one)
    normalisation: str = "slice_foreground"  # 8-bit sources: brainseg.data.preprocess.SLICE_SCHEMES
    amp: str = "auto"
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    folds: int = 0
    fold: int = 0
    seed: int = 0
    threshold: float = 0.5
    unet_base_channels: int = 32
    encoder: str = "resnet34"
    encoder_weights: str | None = None
    decoder_channels: tuple[int, ...] = ()  # resunet's five decoder widths; () = smp's (256, 128, 64, 32, 16)
    layout: str = "auto"
    modalities: tuple[str, ...] = BRATS_MODALITIES
    target: str = "wt"
    patient_regex: str | None = None
    sample_patients: int = 32
    sample_slices: int = 16
    distill: bool = True
    distill_epochs: int = 15
    distill_alpha: float = 0.5  # weight of the soft-target BCE against the teacher; the rest is Dice + BCE on labels
    distill_lr_factor: float = 0.5  # the student's peak lr as a share of `lr` (it starts from trained weights)
    preset: str = "full"
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.amp not in AMP_MODES:
            raise ConfigError(f"amp must be one of {', '.join(AMP_MODES)}, got {self.amp!r}")
        if self.schedule not in SCHEDULES:
            raise ConfigError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.img_size < 32 or self.img_size % 32:
            raise ConfigError(f"img_size must be a multiple of 32 (>= 32), got {self.img_size}")
        for name in ("epochs", "batch_size", "distill_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.intensity_augment not in INTENSITY_RECIPES:
            raise ConfigError(f"intensity_augment must be one of {', '.join(INTENSITY_RECIPES)}, "
                              f"got {self.intensity_augment!r}")
        if self.normalisation not in SLICE_SCHEMES:
            raise ConfigError(f"normalisation must be one of {', '.join(SLICE_SCHEMES)}, got {self.normalisation!r}")
        if self.decoder_channels and (len(self.decoder_channels) != 5 or min(self.decoder_channels) < 1):
            raise ConfigError(f"decoder_channels takes five positive widths, got {self.decoder_channels}")
        if not 0.0 <= self.oversample < 1.0:
            raise ConfigError(f"oversample is the share of tumour slices per batch, in [0, 1), got {self.oversample}")
        if not 0.0 <= self.distill_alpha <= 1.0:
            raise ConfigError(f"distill_alpha weighs the teacher's term against the labels', in [0, 1], "
                              f"got {self.distill_alpha}")
        if self.distill_lr_factor <= 0:
            raise ConfigError(f"distill_lr_factor must be > 0, got {self.distill_lr_factor}")

    @property
    def trains_student(self) -> bool:
        """A student is distilled when asked for and there is an ensemble (two or more members) to learn from."""
        return self.distill and len(self.models) >= 2

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, path: Path) -> TrainConfig:
        raw = json.loads(Path(path).read_text())
        known = {f.name for f in fields(cls)}
        for key in ("models", "modalities", "decoder_channels"):
            if key in raw:
                raw[key] = tuple(raw[key])
        return cls(**{k: v for k, v in raw.items() if k in known})


# quick: sized so that the three models and the student train on the built-in sample in about ten
# minutes on two AVX2 cores (smaller slices, a narrower classic U-Net, ResNet-18 encoders, a narrower
# ResNet-UNet decoder; 6 epochs each, one fewer than before the student, whose 3 epochs from the
# trained U-Net took that time back: benchmarks/results/cpu-2core-avx2/demo_quick.json); its schedule
# is too short for early stopping to help (the last, low-learning-rate epochs are usually the best),
# so patience = epochs.
# full: the settings for real data.
PRESETS: dict[str, dict] = {
    "quick": {"epochs": 6, "img_size": 128, "batch_size": 8, "lr": 2e-3, "unet_base_channels": 16, "patience": 6,
              "encoder": "resnet18", "decoder_channels": (128, 64, 32, 16, 16), "distill_epochs": 3},
    "full": {},
    # seconds on a CPU, for smoke tests and `seg-demo --preset tiny`; its scores mean nothing
    "tiny": {"epochs": 1, "img_size": 64, "batch_size": 4, "lr": 2e-3, "unet_base_channels": 8, "encoder": "resnet18",
             "patience": 1, "distill_epochs": 1},
}


def make_config(preset: str = "full", **overrides) -> TrainConfig:
    """A config from a preset, with any option given explicitly (not None) taking precedence."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose from: {', '.join(PRESETS)}")
    settings = {**PRESETS[preset], **{k: v for k, v in overrides.items() if v is not None}}
    for key in ("models", "modalities", "decoder_channels"):
        if key in settings:
            settings[key] = tuple(settings[key])
    return replace(TrainConfig(), preset=preset, **settings)
