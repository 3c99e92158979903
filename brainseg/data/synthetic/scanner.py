"""Each sample patient's scanner: how its tissue signal becomes stored intensities.

Real collections mix institutions: one exports dark 8-bit slices, another windows them so bright
that part of the brain sits at 255, a third applies a contrast curve; bias fields and noise differ
too. A sample in which every patient shares one profile hides all of this (a model trained on it
lost 0.11-0.24 Dice on real-looking contrast changes that cost it nothing on the sample), so every
patient draws its own `ScannerProfile`, validation and test patients from the same distribution
as training patients, independently.

What varies, per patient:
- `white`: the signal stored as 255. Signal 1.0 is about the brightest tissue (FLAIR-bright tumour
  and lesions, T1 white matter); `white` below ~1.1 saturates part of the brain, as an over-bright
  window does, and 1.4-1.6 is a dark export that uses two thirds of the range.
- `black`: the signal stored as 0 (a window's level cuts off the dark end; background stays 0).
- `curve` and `curve_value`: a smooth monotone map of the windowed signal in [0, 1] onto [0, 1]:
  identity, a gamma, a logarithmic compression or an S-shaped contrast (`curve_value` is the
  gamma, the compression strength or the S-curve's steepness).
- `gains`: per channel, as receive chains and sequence parameters differ.
- `bias`: the strength of the smooth multiplicative bias field (log-amplitude std).
- `noise`: the Rician noise sigma, in units of the signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CURVES = ("linear", "gamma", "log", "s-curve")
_CURVE_ODDS = (0.35, 0.35, 0.15, 0.15)


@dataclass(frozen=True)
class ScannerProfile:
    """One patient's acquisition and export; `to_8bit` applies the window and curve."""

    white: float
    black: float
    curve: str
    curve_value: float
    gains: tuple[float, ...]
    bias: float
    noise: float

    def curve_of(self, unit: np.ndarray) -> np.ndarray:
        """Signal windowed to [0, 1] -> [0, 1], monotone increasing, 0 -> 0 and 1 -> 1."""
        if self.curve == "gamma":
            return unit ** np.float32(self.curve_value)
        if self.curve == "log":
            k = np.float32(self.curve_value)
            return np.log1p(k * unit) / np.log1p(k)
        if self.curve == "s-curve":
            k = np.float32(self.curve_value)
            low, high = _sigmoid(-0.5 * k), _sigmoid(0.5 * k)
            return (_sigmoid(k * (unit - 0.5)) - low) / (high - low)
        return unit

    def to_8bit(self, signal: np.ndarray) -> np.ndarray:
        """Signal (any shape, float32) -> uint8 through the window [black, white] and the curve."""
        unit = np.clip((signal - np.float32(self.black)) / np.float32(self.white - self.black), 0.0, 1.0)
        return np.clip(np.rint(255.0 * self.curve_of(unit)), 0, 255).astype(np.uint8)

    def summary(self) -> dict:
        """The profile for sample_info.json, rounded."""
        return {"white": round(self.white, 3), "black": round(self.black, 3), "curve": self.curve,
                "curve_value": round(self.curve_value, 3), "gains": [round(g, 3) for g in self.gains],
                "bias": round(self.bias, 3), "noise": round(self.noise, 4)}


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def random_profile(rng: np.random.Generator, channels: int) -> ScannerProfile:
    """A profile from the sample's distribution of scanners (see the module docstring).

    About a quarter of patients are windowed bright enough to saturate some brain (white < 1.1);
    about two thirds get a non-identity curve.
    """
    curve = str(rng.choice(CURVES, p=_CURVE_ODDS))
    value = {"linear": 1.0, "gamma": float(np.exp(rng.uniform(np.log(0.6), np.log(1.7)))),
             "log": float(rng.uniform(2.0, 8.0)), "s-curve": float(rng.uniform(3.0, 7.0))}[curve]
    return ScannerProfile(
        white=float(np.exp(rng.uniform(np.log(0.95), np.log(1.6)))),
        black=float(rng.uniform(0.0, 0.06)),
        curve=curve,
        curve_value=value,
        gains=tuple(float(g) for g in rng.uniform(0.8, 1.2, channels)),
        bias=float(rng.uniform(0.03, 0.25)),
        noise=float(rng.uniform(0.008, 0.045)),
    )
