"""The built-in sample dataset: layout, channel order, determinism, atomic writes and the cache."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from brainseg.data.synthetic import phantom, sample
from brainseg.data.synthetic.sample import SampleSpec, cached_sample_dataset, write_sample_dataset
from brainseg.errors import BrainsegError, ConfigError, DataError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None or importlib.util.find_spec("nibabel") is None,
    reason="the sample extra (nilearn, nibabel) is not installed",
)

TINY = SampleSpec(patients=4, slices=6, size=64, seed=3)
PATIENT_DIR = re.compile(r"^SAMPLE_P\d{3}_\d{8}$")


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample_dataset(tmp_path_factory.mktemp("tiny") / "data", TINY)


def read_rgb(path: Path) -> np.ndarray:
    bgr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_patient(folder: Path, slices: int) -> tuple[np.ndarray, np.ndarray]:
    """(S, H, W, 3) RGB and (S, H, W) masks of one patient folder."""
    name = folder.name
    images = np.stack([read_rgb(folder / f"{name}_{n}.tif") for n in range(1, slices + 1)])
    masks = np.stack(
        [cv2.imread(str(folder / f"{name}_{n}_mask.tif"), cv2.IMREAD_UNCHANGED) for n in range(1, slices + 1)]
    )
    return images, masks


def all_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_names_numbering_dtypes_and_mask_values(tiny_root: Path) -> None:
    folders = sorted(p for p in tiny_root.iterdir() if p.is_dir())
    assert [p.name[:11] for p in folders] == [f"SAMPLE_P{i:03d}" for i in range(1, TINY.patients + 1)]
    assert sorted(p.name for p in tiny_root.iterdir() if p.is_file()) == [sample.INFO_FILE]
    for folder in folders:
        assert PATIENT_DIR.match(folder.name), folder.name
        expected = {f"{folder.name}_{n}{suffix}.tif" for n in range(1, TINY.slices + 1) for suffix in ("", "_mask")}
        assert {p.name for p in folder.iterdir()} == expected
        for n in range(1, TINY.slices + 1):
            image = cv2.imread(str(folder / f"{folder.name}_{n}.tif"), cv2.IMREAD_UNCHANGED)
            mask = cv2.imread(str(folder / f"{folder.name}_{n}_mask.tif"), cv2.IMREAD_UNCHANGED)
            assert image.dtype == np.uint8 and image.shape == (TINY.size, TINY.size, 3)
            assert mask.dtype == np.uint8 and mask.shape == (TINY.size, TINY.size)
            assert set(np.unique(mask)) <= {0, 255}
    info = json.loads((tiny_root / sample.INFO_FILE).read_text())
    assert info["spec"] == {"patients": 4, "slices": 6, "size": 64, "seed": 3}
    assert info["version"] == sample.VERSION
    assert "ICBM152" in info["anatomy"]


def test_every_patient_has_a_tumour_inside_the_brain(tiny_root: Path) -> None:
    for folder in sorted(p for p in tiny_root.iterdir() if p.is_dir()):
        images, masks = read_patient(folder, TINY.slices)
        tumour = masks > 0
        assert tumour.any(axis=(1, 2)).sum() >= 2, folder.name
        assert (images[tumour].max(axis=-1) > 0).all(), "tumour pixels outside the brain"
        assert (images[~tumour] == 0).any(), "no skull-stripped background"


def test_channel_order_read_back_as_rgb(tiny_root: Path) -> None:
    """Channel 0 pre-contrast T1 (tumour dark), 1 FLAIR (tumour bright), 2 post-contrast T1."""
    flair_ratio, t1_ratio, enhancement = [], [], []
    for folder in sorted(p for p in tiny_root.iterdir() if p.is_dir()):
        images, masks = read_patient(folder, TINY.slices)
        tumour = masks > 0
        brain = (images.max(axis=-1) > 0) & ~tumour
        pixels = images.astype(np.float64)
        flair_ratio.append(pixels[..., 1][tumour].mean() / pixels[..., 1][brain].mean())
        t1_ratio.append(pixels[..., 0][tumour].mean() / pixels[..., 0][brain].mean())
        post_over_pre = pixels[..., 2] / np.maximum(pixels[..., 0], 1)
        enhancement.append(np.median(post_over_pre[tumour]) / np.median(post_over_pre[brain]))
    assert min(flair_ratio) > 1.2, flair_ratio
    assert max(t1_ratio) < 0.9, t1_ratio
    assert np.mean(enhancement) > 1.02, enhancement


def test_files_hold_the_generated_rgb_in_rgb_order(tiny_root: Path) -> None:
    """A reader that loads RGB (Pillow) sees exactly the generator's channel order."""
    pil_image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng([TINY.seed, 0])
    name = sample.patient_name(0, rng)
    patient = sample.synthesize_patient(rng, TINY.slices, TINY.size)
    for n in (1, TINY.slices):
        with pil_image.open(tiny_root / name / f"{name}_{n}.tif") as image:
            assert image.mode == "RGB"
            np.testing.assert_array_equal(np.asarray(image), patient.image[n - 1])
        with pil_image.open(tiny_root / name / f"{name}_{n}_mask.tif") as mask:
            np.testing.assert_array_equal(np.asarray(mask), patient.mask[n - 1])


def test_same_seed_same_bytes_other_seed_other_data(tmp_path: Path, tiny_root: Path) -> None:
    again = write_sample_dataset(tmp_path / "again", TINY)
    assert all_bytes(again) == all_bytes(tiny_root)
    other = write_sample_dataset(tmp_path / "other", SampleSpec(patients=4, slices=6, size=64, seed=4))
    first, second = all_bytes(tiny_root), all_bytes(other)
    images = [k for k in first if k.endswith(".tif") and not k.endswith("_mask.tif")]
    assert images and not any(first[k] == second.get(k) for k in images)
    assert first[sample.INFO_FILE] != second[sample.INFO_FILE]


def test_default_slice_count_gives_mostly_tumour_free_slices(tmp_path: Path) -> None:
    spec = SampleSpec(patients=12, slices=20, size=64, seed=0)
    info = json.loads((write_sample_dataset(tmp_path / "d", spec) / sample.INFO_FILE).read_text())
    per_patient = [len(p["tumour_slices"]) for p in info["patients"]]
    assert min(per_patient) >= 2
    assert 0.25 <= sum(per_patient) / (spec.patients * spec.slices) <= 0.55, per_patient
    for p in info["patients"]:  # tumour presence is contiguous in z
        assert p["tumour_slices"] == list(range(p["tumour_slices"][0], p["tumour_slices"][-1] + 1))
    assert {p["hemisphere"] for p in info["patients"]} == {"left", "right"}


def test_refuses_a_non_empty_folder_and_a_file(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="not empty"):
        write_sample_dataset(busy, TINY)
    assert [p.name for p in busy.iterdir()] == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        write_sample_dataset(tmp_path / "file", TINY)


def test_writes_into_an_empty_folder_and_leaves_no_temporary(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    out = write_sample_dataset(tmp_path / "empty", SampleSpec(patients=1, slices=3, size=32))
    assert (out / sample.INFO_FILE).is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_interrupted_run_leaves_nothing_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = sample._write_slices

    def fail_on_second(*args):
        calls.append(args[1])
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(*args)

    monkeypatch.setattr(sample, "_write_slices", fail_on_second)
    with pytest.raises(KeyboardInterrupt):
        write_sample_dataset(tmp_path / "out", SampleSpec(patients=3, slices=3, size=32))
    assert list(tmp_path.iterdir()) == []


def test_cache_returns_the_same_path_without_regenerating(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SampleSpec(patients=2, slices=3, size=32, seed=1)
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "env-cache"))
    first = cached_sample_dataset(spec)
    assert first == tmp_path / "env-cache" / f"sample-v{sample.VERSION}-2x3-32-seed1"
    before = all_bytes(first)

    def no_regeneration(*args, **kwargs):
        raise AssertionError("the cached dataset was generated again")

    monkeypatch.setattr(sample, "_write_patients", no_regeneration)
    assert cached_sample_dataset(spec) == first
    assert all_bytes(first) == before
    assert cached_sample_dataset(spec, cache_dir=tmp_path / "env-cache") == first


def test_cache_uses_the_copy_another_process_finished_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SampleSpec(patients=1, slices=3, size=32, seed=2)
    target = tmp_path / spec.cache_name
    real = sample._write_patients

    def racing(root: Path, spec: SampleSpec, *, progress: bool) -> None:
        real(root, spec, progress=progress)
        monkeypatch.setattr(sample, "_write_patients", real)
        write_sample_dataset(target, spec)  # the other process renames its copy into place first

    monkeypatch.setattr(sample, "_write_patients", racing)
    assert cached_sample_dataset(spec, cache_dir=tmp_path) == target
    assert sample.is_sample_dataset(target)
    assert [p.name for p in tmp_path.iterdir()] == [target.name]


@pytest.mark.parametrize("fields", [{"patients": 0}, {"slices": 1}, {"size": 8}, {"seed": -1}, {"patients": 2.5}])
def test_spec_rejects_bad_values(fields: dict) -> None:
    with pytest.raises(ConfigError):
        SampleSpec(**fields)


def test_missing_nilearn_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "nilearn" else real_find_spec(name, *a)
    )
    phantom.load_template.cache_clear()
    try:
        with pytest.raises(BrainsegError, match=r"brainseg\[sample\]"):
            phantom.load_template()
    finally:
        monkeypatch.undo()
        phantom.load_template.cache_clear()
