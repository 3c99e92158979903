"""Scanners that differ: the sample's per-patient profiles, the "curves" augmentation and the
"slice_quartiles" normalisation, each checked against what it promises."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from brainseg.data.intensity_shifts import shift_intensities
from brainseg.data.preprocess import IQR_TO_STD, Normalisation, normalisation_for
from brainseg.data.synthetic.scanner import CURVES, ScannerProfile, random_profile
from brainseg.errors import ConfigError
from brainseg.train.augment import AugmentSettings, _monotone_curve, augment_batch, foreground_quantile
from brainseg.train.config import make_config
from brainseg.train.network_input import slice_foreground_quartiles, slice_foreground_zscore


@pytest.mark.parametrize("curve", CURVES)
def test_every_profile_curve_is_monotone_and_fixes_the_ends(curve):
    profile = ScannerProfile(white=1.0, black=0.0, curve=curve, curve_value={"linear": 1.0, "gamma": 0.6,
                             "log": 6.0, "s-curve": 6.0}[curve], gains=(1.0,), bias=0.1, noise=0.01)
    unit = np.linspace(0, 1, 1001, dtype=np.float32)
    mapped = profile.curve_of(unit)
    assert mapped[0] == pytest.approx(0, abs=1e-6) and mapped[-1] == pytest.approx(1, abs=1e-6)
    assert np.all(np.diff(mapped) >= 0)
    if curve != "linear":
        assert np.abs(mapped - unit).max() > 0.05, "the curve changes nothing"


def test_a_bright_window_saturates_and_a_dark_one_does_not():
    signal = np.linspace(0, 1.0, 101, dtype=np.float32)
    bright = ScannerProfile(0.8, 0.0, "linear", 1.0, (1.0,), 0.1, 0.01).to_8bit(signal)
    dark = ScannerProfile(1.5, 0.0, "linear", 1.0, (1.0,), 0.1, 0.01).to_8bit(signal)
    assert (bright == 255).sum() == 21 and dark.max() == 170


def test_profiles_vary_between_draws_and_repeat_for_a_seed():
    draws = [random_profile(np.random.default_rng([0, i]), 3) for i in range(200)]
    assert draws[0] == random_profile(np.random.default_rng([0, 0]), 3)
    whites = np.array([d.white for d in draws])
    assert 0.15 < (whites < 1.1).mean() < 0.4, "about a quarter of patients should saturate some brain"
    assert {d.curve for d in draws} == set(CURVES)
    assert np.ptp([d.noise for d in draws]) > 0.02 and np.ptp([d.bias for d in draws]) > 0.1


@pytest.mark.skipif(importlib.util.find_spec("nilearn") is None, reason="the sample extra (nilearn) is not installed")
def test_sample_patients_each_have_their_own_profile(tmp_path):
    from brainseg.data.synthetic.sample import SampleSpec, write_sample_dataset

    root = write_sample_dataset(tmp_path / "data", SampleSpec(patients=4, slices=4, size=64, seed=5))
    patients = json.loads((root / "sample_info.json").read_text())["patients"]
    profiles = [p["scanner"] for p in patients]
    assert len({(p["white"], p["curve"], p["noise"]) for p in profiles}) == 4
    assert all(len(p["gains"]) == 3 for p in profiles)


def test_augmentation_curves_are_monotone_per_channel():
    g = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 256).view(1, 1, 1, 256).repeat(64, 3, 1, 1)
    curved = _monotone_curve(ramp, AugmentSettings(), g)
    assert torch.all(curved[..., 1:] - curved[..., :-1] >= -1e-6)
    assert torch.allclose(curved[..., 0], torch.zeros(1), atol=1e-5)
    assert torch.allclose(curved[..., -1], torch.ones(1), atol=1e-5)
    assert (curved - ramp).abs().amax(dim=(2, 3)).median() > 0.05, "most curves should bend"


def test_foreground_quantile_matches_numpy():
    rng = np.random.default_rng(0)
    images = np.zeros((2, 3, 16, 16), np.float32)
    images[:, :, 4:12, 4:12] = rng.uniform(0.2, 0.9, (2, 3, 8, 8))
    quantile = torch.tensor([[0.5, 0.7, 1.0], [0.0, 0.25, 0.9]])
    got = foreground_quantile(torch.from_numpy(images), quantile)[..., 0, 0].numpy()
    for b in range(2):
        for c in range(3):
            foreground = np.sort(images[b, c][images[b, c] > 0.05 * images[b, c].max()])
            expected = foreground[int(np.floor(float(quantile[b, c]) * (len(foreground) - 1)))]
            assert got[b, c] == pytest.approx(expected)


def test_curves_recipe_saturates_some_slices_at_the_top_of_the_range():
    images = torch.zeros(64, 3, 32, 32)
    images[:, :, 8:24, 8:24] = torch.linspace(0.1, 0.6, 256).view(16, 16)
    masks = torch.zeros(64, 1, 32, 32)
    out, _ = augment_batch(images, masks, torch.Generator().manual_seed(1), unit_range=True,
                           settings=AugmentSettings(intensity="curves", noise=0.0, blur=0.0, affine=0.0, flip=0.0))
    saturated = (out[:, :, 8:24, 8:24] >= 1.0).float().mean(dim=(2, 3))  # (B, C)
    assert 0.1 < (saturated > 0.05).float().mean() < 0.7, saturated
    old, _ = augment_batch(images, masks, torch.Generator().manual_seed(1), unit_range=True,
                           settings=AugmentSettings(intensity="scale-gamma", noise=0.0, blur=0.0, affine=0.0, flip=0.0))
    assert ((old[:, :, 8:24, 8:24] >= 1.0).float().mean(dim=(2, 3)) > 0.05).sum() == 0, \
        "scale-gamma never saturates a slice that peaks at 0.6"


def test_unknown_recipes_and_schemes_are_refused():
    with pytest.raises(ConfigError, match="scale-gamma"):
        AugmentSettings(intensity="histogram")
    with pytest.raises(ConfigError, match="intensity_augment"):
        make_config("tiny", intensity_augment="histogram")
    with pytest.raises(ConfigError, match="slice_quartiles"):
        make_config("tiny", normalisation="median")
    with pytest.raises(ConfigError, match="slice_foreground"):
        normalisation_for("uint8", 3, "volume_nonzero")
    assert normalisation_for("float32", 4, "slice_quartiles").scheme == "volume_nonzero"


def _brain_slices(seed: int) -> np.ndarray:
    """(2, 64, 64, 3) uint8: a dark background and a disc of tissue from 40 to 200."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 32) ** 2 + (xx - 32) ** 2 < 26**2
    images = np.zeros((2, 64, 64, 3), np.uint8)
    images[:, disc] = rng.integers(40, 201, (2, int(disc.sum()), 3))
    return images


def _normalised(fn, images: np.ndarray) -> torch.Tensor:
    return fn(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)


def test_quartiles_match_numpy_on_the_counting_grid():
    images = _brain_slices(0)
    out = _normalised(slice_foreground_quartiles, images).numpy()
    x = images.transpose(0, 3, 1, 2).astype(np.float64)
    for b in range(2):
        for c in range(3):
            grid = x[b, c, ::2, ::2]  # 64 // QUANTILE_GRID = 2
            values = np.sort(grid[grid > x[b, c].min() + 0.05 * np.ptp(x[b, c])])
            q25, q50, q75 = (values[int(np.ceil(q * len(values))) - 1] for q in (0.25, 0.5, 0.75))
            expected = np.clip((x[b, c] - q50) / ((q75 - q25) / IQR_TO_STD), -10, 10)
            np.testing.assert_allclose(out[b, c], expected, atol=1e-4)


def test_quartiles_ignore_saturation_of_the_brightest_fifth_and_mean_std_does_not():
    images = _brain_slices(1)
    shifted = shift_intensities(images, "x1.5 clipped")  # values above 170 (a fifth of the tissue) saturate
    below = torch.from_numpy((images < 165).transpose(0, 3, 1, 2) & (images > 0).transpose(0, 3, 1, 2))
    robust = (_normalised(slice_foreground_quartiles, shifted) - _normalised(slice_foreground_quartiles, images))
    plain = (_normalised(slice_foreground_zscore, shifted) - _normalised(slice_foreground_zscore, images))
    assert robust.abs()[below].max() < 0.05
    assert plain.abs()[below].mean() > 0.05


def test_quartiles_scheme_is_recorded_and_survives_the_manifest_round_trip():
    norm = Normalisation("uint8", scheme="slice_quartiles")
    assert Normalisation.from_dict(norm.to_dict()) == norm
    assert "median" in norm.rule
