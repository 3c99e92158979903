"""Batch augmentation on tensors: flips, small rotation and scale, and the intensities of other scanners.

Everything is drawn from one torch.Generator, so a resumed epoch sees the same augmentation.

8-bit sources get one of two intensity recipes (`AugmentSettings.intensity`, seg-train
`--intensity-augment`):
- "curves": per channel, a window whose white point is either a plain scale or, for a fifth of
  slices, a random quantile of the slice's own foreground (so up to half of the brain saturates at
  255, as an over-bright export does), a raised black point now and then, and a random smooth
  monotone curve (a gamma, blended with an S-shaped contrast curve for 30% of channels). Another
  scanner's contrast is such a curve; the normalisation removes only scale, so the curve has to be
  learned.
- "scale-gamma" (the default): a scale of 0.5-1.5 then clipping, and a gamma. On a development set
  of 32 varied-sample patients it lost less Dice under the benchmark's shifts than "curves", which
  scored higher on unshifted scans (benchmarks/results/cpu-2core-avx2/intensity_recipes_quick.json;
  docs/data.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from brainseg.data.preprocess import FOREGROUND_FRACTION
from brainseg.errors import ConfigError
from brainseg.train.config import INTENSITY_RECIPES


@dataclass(frozen=True)
class AugmentSettings:
    """What training varies. Intensity ranges follow what scanners produce (nnU-Net's are similar):
    a per-channel scale of 0.5-1.5 (then clipped, as an over-exposed 8-bit export would be), a gamma
    of 0.6-1.6, noise, blur and, for 8-bit sources, the rounding of a darker export to 8 bits."""

    flip: float = 0.5  # left-right flip probability (axial slices are near-symmetric)
    max_rotation_deg: float = 10.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    affine: float = 0.5  # probability of a rotation/scale
    intensity_scale: tuple[float, float] = (0.5, 1.5)  # per channel, 8-bit sources: clipped to [0, 1] after
    gamma_range: tuple[float, float] = (0.6, 1.6)  # per channel, log-uniform; 8-bit sources only
    gamma: float = 0.8  # per slice; scale vanishes in the normalisation, gamma has to be learned
    noise_std: tuple[float, float] = (0.0, 0.03)  # Gaussian, in units of the 8-bit range (or of z for NIfTI)
    noise: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)  # pixels
    blur: float = 0.2
    brightness: float = 0.1  # z-scored (NIfTI) sources: per-channel shift and contrast instead of scale and gamma
    contrast: float = 0.15
    intensity: str = "scale-gamma"  # 8-bit recipe: "scale-gamma" or "curves" (see the module docstring)
    saturate: float = 0.2  # per slice: the white point is a foreground quantile instead of a scale
    saturate_quantile: tuple[float, float] = (0.5, 1.0)  # of the channel's foreground; 1.0 saturates nothing
    black_point: tuple[float, float] = (0.0, 0.05)  # raised with probability `black`, per channel
    black: float = 0.15
    curve: float = 0.8  # per slice
    curve_gamma: tuple[float, float] = (0.6, 1.6)  # log-uniform, as the scale-gamma recipe's
    s_curve: float = 0.3  # per channel: the gamma is blended with an S-curve
    curve_steepness: tuple[float, float] = (3.0, 10.0)  # of the S-curve, centred in `curve_centre`
    curve_centre: tuple[float, float] = (0.3, 0.7)

    def __post_init__(self) -> None:
        if self.intensity not in INTENSITY_RECIPES:
            raise ConfigError(f"unknown intensity augmentation {self.intensity!r}; "
                              f"choose from: {', '.join(INTENSITY_RECIPES)}")


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


def _gaussian_blur(images: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each (C, H, W) image of the batch with its own Gaussian `sigma` (B,), separably."""
    n, channels = images.shape[:2]
    radius = 2
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernels = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)  # (B, 2r+1)
    kernels = (kernels / kernels.sum(dim=1, keepdim=True)).repeat_interleave(channels, dim=0)  # (B*C, 2r+1)
    flat = images.reshape(1, n * channels, *images.shape[2:])
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernels.view(-1, 1, 1, 2 * radius + 1),
                    groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernels.view(-1, 1, 2 * radius + 1, 1),
                    groups=n * channels)
    return flat.view_as(images)


def _chosen(n: int, probability: float, g: torch.Generator, device) -> torch.Tensor:
    return (torch.rand(n, generator=g) < probability).to(device).view(n, 1, 1, 1)


def _scanner_intensities(images: torch.Tensor, s: AugmentSettings, g: torch.Generator) -> torch.Tensor:
    """The "scale-gamma" recipe on 8-bit sources in [0, 1]: per-channel scale then clip, and a gamma."""
    n, channels, device = images.shape[0], images.shape[1], images.device
    per_channel = (n, channels, 1, 1)
    scale = _uniform(n * channels, *s.intensity_scale, g, device).view(per_channel)
    images = (images * scale).clamp(0, 1)
    low, high = math.log(s.gamma_range[0]), math.log(s.gamma_range[1])
    gamma = torch.exp(_uniform(n * channels, low, high, g, device)).view(per_channel)
    images = torch.where(_chosen(n, s.gamma, g, device), images ** gamma, images)
    return images


def _curved_intensities(images: torch.Tensor, s: AugmentSettings, g: torch.Generator) -> torch.Tensor:
    """8-bit sources in [0, 1]: per channel, a window (white point by scale or by foreground
    quantile, black point), then a smooth monotone curve; see the module docstring."""
    n, channels, device = images.shape[0], images.shape[1], images.device
    per_channel = (n, channels, 1, 1)
    scale = _uniform(n * channels, *s.intensity_scale, g, device).view(per_channel)
    quantile = _uniform(n * channels, *s.saturate_quantile, g, device).view(n, channels)
    white = torch.where(_chosen(n, s.saturate, g, device), foreground_quantile(images, quantile), 1.0 / scale)
    black = torch.where(_chosen(n * channels, s.black, g, device).view(per_channel),
                        _uniform(n * channels, *s.black_point, g, device).view(per_channel), 0.0)
    black = torch.minimum(black, 0.5 * white)
    images = ((images - black) / (white - black).clamp_min(1e-3)).clamp(0, 1)
    return torch.where(_chosen(n, s.curve, g, device), _monotone_curve(images, s, g), images)


def foreground_quantile(images: torch.Tensor, quantile: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) and (B, C) quantiles in [0, 1] -> (B, C, 1, 1): that quantile of each channel's
    foreground (pixels above min + FOREGROUND_FRACTION x range, as the normalisation counts them)."""
    flat = images.flatten(2)  # (B, C, N)
    low, high = flat.amin(-1, keepdim=True), flat.amax(-1, keepdim=True)
    count = (flat > low + FOREGROUND_FRACTION * (high - low)).sum(-1)  # (B, C)
    total = flat.shape[-1]
    index = (total - count) + torch.floor(quantile * (count - 1).clamp_min(0)).long()
    ordered = flat.sort(dim=-1).values
    value = ordered.gather(-1, index.clamp(0, total - 1).unsqueeze(-1))  # (B, C, 1)
    return value.clamp_min(1e-3).unsqueeze(-1)


def _monotone_curve(images: torch.Tensor, s: AugmentSettings, g: torch.Generator) -> torch.Tensor:
    """[0, 1] -> [0, 1] per channel: (1 - a) x^gamma + a S(x), S an S-curve through (0, 0) and (1, 1);
    a is 0 except for a share `s_curve` of channels, where it is uniform in [0, 1]. Monotone and
    smooth, with 0 and 1 fixed."""
    n, channels, device = images.shape[0], images.shape[1], images.device
    per_channel = (n, channels, 1, 1)
    low, high = math.log(s.curve_gamma[0]), math.log(s.curve_gamma[1])
    gamma = torch.exp(_uniform(n * channels, low, high, g, device)).view(per_channel)
    blend = _uniform(n * channels, 0.0, 1.0, g, device).view(per_channel)
    blend = torch.where(_chosen(n * channels, s.s_curve, g, device).view(per_channel), blend, 0.0)
    steep = _uniform(n * channels, *s.curve_steepness, g, device).view(per_channel)
    centre = _uniform(n * channels, *s.curve_centre, g, device).view(per_channel)
    at_zero, at_one = torch.sigmoid(-steep * centre), torch.sigmoid(steep * (1 - centre))
    s_curve = (torch.sigmoid(steep * (images - centre)) - at_zero) / (at_one - at_zero)
    return (1 - blend) * images.clamp_min(0) ** gamma + blend * s_curve


def _z_intensities(images: torch.Tensor, s: AugmentSettings, g: torch.Generator) -> torch.Tensor:
    """Z-scored sources: per-channel contrast and shift (scale is already gone after the reader)."""
    n, channels, device = images.shape[0], images.shape[1], images.device
    per_channel = (n, channels, 1, 1)
    contrast = _uniform(n * channels, 1 - s.contrast, 1 + s.contrast, g, device).view(per_channel)
    brightness = _uniform(n * channels, -s.brightness, s.brightness, g, device).view(per_channel)
    return images * contrast + brightness


def augment_batch(
    images: torch.Tensor,
    masks: torch.Tensor,
    generator: torch.Generator,
    *,
    unit_range: bool,
    settings: AugmentSettings = AugmentSettings(),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Augment (B, C, H, W) images and (B, K, H, W) masks consistently, before normalisation.

    `unit_range` says images are 8-bit sources divided by 255: they get `settings.intensity`'s
    recipe and 8-bit rounding; z-scored images get contrast and shift. Both get noise and blur.
    """
    n, device = images.shape[0], images.device
    flip = _chosen(n, settings.flip, generator, device)
    images = torch.where(flip, images.flip(-1), images)
    masks = torch.where(flip, masks.flip(-1), masks)
    images, masks = _affine(images, masks, settings, generator)
    if unit_range and settings.intensity == "curves":
        images = _curved_intensities(images, settings, generator)
    elif unit_range:
        images = _scanner_intensities(images, settings, generator)
    else:
        images = _z_intensities(images, settings, generator)
    noise_std = _uniform(n, *settings.noise_std, generator, device).view(n, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator).to(device) * noise_std
    images = torch.where(_chosen(n, settings.noise, generator, device), images + noise, images)
    sigma = _uniform(n, *settings.blur_sigma, generator, device)
    images = torch.where(_chosen(n, settings.blur, generator, device), _gaussian_blur(images, sigma), images)
    if unit_range:  # what an 8-bit file can hold
        images = torch.round(images.clamp(0, 1) * 255) / 255
    return images, masks
