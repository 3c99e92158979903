"""The model registry: one name per architecture, built the same way for training and export."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from brainseg.errors import ConfigError

if TYPE_CHECKING:
    from brainseg.train.config import TrainConfig


class PadToMultiple(nn.Module):
    """Zero-pads H and W up to a multiple of `multiple` before the network and crops after.

    Encoders that down-sample five times need sides divisible by 32; this lets any slice size
    through. When the size already fits, no padding op is traced into an exported graph.
    """

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pad_h, pad_w = -height % self.multiple, -width % self.multiple
        if pad_h == 0 and pad_w == 0:
            return self.net(x)
        logits = self.net(F.pad(x, (0, pad_w, 0, pad_h)))
        return logits[..., :height, :width]


def _build_unet(in_channels: int, classes: int, options: dict) -> nn.Module:
    from brainseg.train.models.unet import UNet

    depth = options.get("depth", 4)
    net = UNet(in_channels, classes, base_channels=options.get("base_channels", 32), depth=depth)
    return PadToMultiple(net, 2**depth)


def _build_smp(architecture: str) -> Callable[[int, int, dict], nn.Module]:
    def build(in_channels: int, classes: int, options: dict) -> nn.Module:
        import segmentation_models_pytorch as smp

        extra = {"decoder_channels": tuple(options["decoder_channels"])} if options.get("decoder_channels") else {}
        net = getattr(smp, architecture)(
            encoder_name=options.get("encoder", "resnet34"),
            encoder_weights=options.get("encoder_weights"),
            in_channels=in_channels,
            classes=classes,
            **extra,
        )
        return PadToMultiple(net, 32)

    return build


def _unet_options(cfg: TrainConfig) -> dict:
    return {"base_channels": cfg.unet_base_channels}


def _encoder_options(cfg: TrainConfig) -> dict:
    return {"encoder": cfg.encoder, "encoder_weights": cfg.encoder_weights}


def _resunet_options(cfg: TrainConfig) -> dict:
    options = _encoder_options(cfg)
    if cfg.decoder_channels:
        options["decoder_channels"] = list(cfg.decoder_channels)
    return options


@dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: how to build it, and which training options it takes."""

    name: str
    description: str
    build: Callable[[int, int, dict], nn.Module]
    options: Callable[[TrainConfig], dict]


_ENTRIES = [
    ModelEntry("unet", "classic U-Net (Ronneberger et al.), written in brainseg", _build_unet, _unet_options),
    ModelEntry("fpn", "Feature Pyramid Network, smp FPN with a ResNet-34 encoder", _build_smp("FPN"),
               _encoder_options),
    ModelEntry("resunet", "U-Net with a ResNet-34 encoder, smp Unet", _build_smp("Unet"), _resunet_options),
]
MODELS: dict[str, ModelEntry] = {entry.name: entry for entry in _ENTRIES}


def check_model_names(names: list[str]) -> list[str]:
    """Return `names` if all are registered, else raise naming the valid choices."""
    unknown = [name for name in names if name not in MODELS]
    if unknown or not names:
        raise ConfigError(
            f"unknown model {', '.join(unknown) or '(none given)'}; choose from: {', '.join(MODELS)}"
        )
    return names


def model_options(name: str, cfg: TrainConfig) -> dict:
    """The build options of model `name` taken from a training config (saved in its checkpoints)."""
    check_model_names([name])
    return MODELS[name].options(cfg)


def build_model(name: str, *, in_channels: int, classes: int, options: dict | None = None) -> nn.Module:
    """Build a registered model that maps (B, in_channels, H, W) to (B, classes, H, W) logits.

    `options` are per-architecture: `base_channels`/`depth` for unet, `encoder` and
    `encoder_weights` for fpn/resunet (None by default: nothing is downloaded), and
    `decoder_channels` (five widths, smp's default when absent) for resunet.
    """
    check_model_names([name])
    return MODELS[name].build(in_channels, classes, dict(options or {}))
