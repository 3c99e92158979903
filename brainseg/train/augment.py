"""Batch augmentation on tensors: flips, small rotation and scale, intensity and gamma jitter.

Everything is drawn from one torch.Generator, so a resumed epoch sees the same augmentation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentSettings:
    flip: float = 0.5  # left-right flip probability (axial slices are near-symmetric)
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    affine: float = 0.5  # probability of a rotation/scale
    brightness: float = 0.1
    contrast: float = 0.15
    gamma_range: tuple[float, float] = (0.8, 1.25)  # only for [0, 1] images from 8-bit sources


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=g) * (high - low) + low).to(device)


def _affine(images, masks, s: AugmentSettings, g: torch.Generator):
    n, device = images.shape[0], images.device
    angle = _uniform(n, -s.max_rotation_deg, s.max_rotation_deg, g, device) * math.pi / 180
    scale = _uniform(n, *s.scale_range, g, device)
    apply = (torch.rand(n, generator=g) < s.affine).to(device)
    angle, scale = torch.where(apply, angle, 0.0), torch.where(apply, scale, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    zero = torch.zeros_like(cos)
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)  # (B, H, W, 2)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    masks = F.grid_sample(masks, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return images, masks


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    *,
    unit_range: bool,
    settings: AugmentSettings = AugmentSettings(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (B, C, H, W) images and (B, K, H, W) masks consistently.

    `unit_range` says images are in [0, 1] (8-bit sources), which enables gamma jitter;
    z-scored images get only brightness and contrast jitter.
    """
    n, device = images.shape[0], images.device
    flip = (torch.rand(n, generator=generator) < settings.flip).to(device).view(n, 1, 1, 1)
    images = torch.where(flip, images.flip(-1), images)
    masks = torch.where(flip, masks.flip(-1), masks)
    images, masks = _affine(images, masks, settings, generator)
    if unit_range:
        gamma = _uniform(n, *settings.gamma_range, generator, device).view(n, 1, 1, 1)
        images = images.clamp(0, 1) ** gamma
    # per channel: scanners and sequences shift each contrast on its own
    shape = (n, images.shape[1], 1, 1)
    contrast = _uniform(n * shape[1], 1 - settings.contrast, 1 + settings.contrast, generator, device)
    brightness = _uniform(n * shape[1], -settings.brightness, settings.brightness, generator, device)
    images = images * contrast.view(shape) + brightness.view(shape)
    return images, masks
