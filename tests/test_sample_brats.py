"""The built-in BraTS-layout sample: files, labels and their nesting, affines, contrasts, determinism."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi
from typer.testing import CliRunner

from brainseg.cli import app
from brainseg.data.names import BRATS_2023_MODALITIES
from brainseg.data.readers import detect_layout, read_dataset
from brainseg.data.synthetic import sample_brats
from brainseg.data.synthetic.sample import INFO_FILE
from brainseg.data.synthetic.sample_brats import (
    BratsSampleSpec,
    cached_brats_sample,
    generate_case,
    write_brats_sample,
    write_sample,
)
from brainseg.errors import ConfigError
from brainseg.train.config import TrainConfig
from brainseg.train.dataset import resolve_data

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("nilearn") is None or importlib.util.find_spec("nibabel") is None,
    reason="the sample extra (nilearn, nibabel) is not installed",
)

TINY = BratsSampleSpec(cases=3, slices=8, size=48, seed=1)
TINY_2023 = replace(TINY, year=2023)
FILES = ("t1", "t1ce", "t2", "flair", "seg")
FILES_2023 = dict(zip(FILES, (*BRATS_2023_MODALITIES, "seg"), strict=True))  # 2021 name -> 2023 name


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_brats_sample(tmp_path_factory.mktemp("brats") / "data", TINY)


@pytest.fixture(scope="module")
def tiny_2023_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_brats_sample(tmp_path_factory.mktemp("brats2023") / "data", TINY_2023)


def case_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def load(folder: Path, name: str, separator: str = "_") -> tuple[np.ndarray, np.ndarray, np.dtype]:
    """A file's RAS-reoriented array, its affine as stored, and its on-disk dtype."""
    import nibabel

    image = nibabel.load(folder / f"{folder.name}{separator}{name}.nii.gz")
    canonical = nibabel.as_closest_canonical(image)
    return np.asarray(canonical.dataobj), image.affine, image.get_data_dtype()


def test_every_case_has_five_files_and_reads_as_brats(tiny_root: Path) -> None:
    folders = case_folders(tiny_root)
    assert [p.name for p in folders] == ["SAMPLE_BRATS_001", "SAMPLE_BRATS_002", "SAMPLE_BRATS_003"]
    for folder in folders:
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{folder.name}_{n}.nii.gz" for n in FILES)
    assert detect_layout(tiny_root) == "brats"
    whole = read_dataset(tiny_root)
    regions = read_dataset(tiny_root, target="brats-regions")
    for dataset, channels in ((whole, 1), (regions, 3)):
        assert dataset.layout == "brats" and dataset.skipped == []
        assert [v.patient_id for v in dataset.volumes] == [p.name for p in folders]
        for volume in dataset.volumes:
            assert volume.image.shape[1:] == (TINY.size, TINY.size, 4)
            assert volume.mask.shape[-1] == channels
    info = json.loads((tiny_root / INFO_FILE).read_text())
    assert info["spec"] == {"cases": 3, "slices": 8, "size": 48, "seed": 1} and info["layout"] == "brats"


def test_labels_are_brats_labels_nested_as_brats_defines_them(tiny_root: Path) -> None:
    core_volumes = []
    for folder in case_folders(tiny_root):
        seg, _, dtype = load(folder, "seg")
        brain = load(folder, "t1")[0] > 0
        assert dtype == np.uint8
        assert set(np.unique(seg).tolist()) == {0, 1, 2, 4}, folder.name
        assert not (seg[~brain]).any(), "tumour labels outside the brain"
        necrosis, enhancing = seg == 1, seg == 4
        core = necrosis | enhancing
        assert (ndi.binary_dilation(necrosis) & enhancing).any(), "the enhancing rim does not touch the core"
        depth = ndi.distance_transform_edt(core)
        assert depth[enhancing].mean() < depth[necrosis].mean(), f"{folder.name}: the enhancing rim is not a shell"
        ring = ndi.binary_dilation(core) & ~core & brain
        assert (seg[ring] == 2).mean() > 0.7, f"{folder.name}: oedema does not surround the core"
        assert (seg == 2).sum() > 0.5 * core.sum(), f"{folder.name}: too little oedema"
        core_volumes.append(int(core.sum()))
    assert max(core_volumes) > 3 * min(core_volumes), f"tumour sizes hardly vary: {core_volumes}"


def test_affines_are_scanner_like_and_the_reader_returns_ras_slices(tiny_root: Path) -> None:
    import nibabel

    folders = case_folders(tiny_root)
    affines = [load(folder, "t1")[1] for folder in folders]
    assert not any(np.allclose(a, np.eye(4)) for a in affines)
    codes = [nibabel.aff2axcodes(a) for a in affines]
    assert len(set(codes)) >= 2, codes
    dataset = read_dataset(tiny_root, target="brats-regions")
    for index, (volume, affine) in enumerate(zip(dataset.volumes, affines, strict=True)):
        case = generate_case(TINY, index)  # (S, H, W): slice 0 inferior, row 0 anterior, column 0 left
        keep = np.flatnonzero(case.images["t1"].any(axis=(1, 2)))
        np.testing.assert_array_equal(volume.mask[..., 0], case.seg[keep] > 0)
        np.testing.assert_array_equal(volume.mask[..., 2], case.seg[keep] == 4)
        np.testing.assert_array_equal(volume.image[..., 0] != 0, case.images["t1"][keep] > 0)
        zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
        assert volume.spacing == pytest.approx((zooms[1], zooms[0])) and volume.slice_step == pytest.approx(zooms[2])


def test_intensities_are_scanner_units_with_each_sequence_s_contrast(tiny_root: Path) -> None:
    ratios: dict[str, list[float]] = {"flair": [], "t1ce": [], "t1": [], "t2": []}
    for folder in case_folders(tiny_root):
        seg = load(folder, "seg")[0]
        volumes = {}
        for name in FILES[:4]:
            volumes[name], _, dtype = load(folder, name)
            assert dtype == np.float32 and volumes[name].max() > 300, (folder.name, name)
        brain = volumes["t1"] > 0
        assert (~brain).any() and brain.any()
        for name, volume in volumes.items():
            np.testing.assert_array_equal(volume > 0, brain, err_msg=f"{name}: background is not exactly 0")
            assert (volume >= 0).all()
        normal = brain & (seg == 0)
        oedema, necrosis, enhancing = seg == 2, seg == 1, seg == 4
        ratios["flair"].append(volumes["flair"][oedema].mean() / volumes["flair"][normal].mean())
        ratios["t1ce"].append(volumes["t1ce"][enhancing].mean() / volumes["t1ce"][necrosis].mean())
        ratios["t1"].append(volumes["t1"][necrosis | enhancing].mean() / volumes["t1"][normal].mean())
        ratios["t2"].append(volumes["t2"][oedema].mean() / volumes["t2"][normal].mean())
    assert np.mean(ratios["flair"]) > 1.3, ratios  # oedema bright on FLAIR
    assert np.mean(ratios["t1ce"]) > 1.3, ratios  # rim enhances, necrosis dark
    assert np.mean(ratios["t1"]) < 0.85, ratios  # tumour hypo-intense on T1
    assert np.mean(ratios["t2"]) > 1.1, ratios  # oedema bright on T2


def test_the_2023_sample_has_2023_names_labels_and_info(tiny_2023_root: Path) -> None:
    folders = case_folders(tiny_2023_root)
    assert [p.name for p in folders] == ["BraTS-GLI-00001-000", "BraTS-GLI-00002-000", "BraTS-GLI-00003-000"]
    for folder in folders:
        expected = sorted(f"{folder.name}-{n}.nii.gz" for n in FILES_2023.values())
        assert sorted(p.name for p in folder.iterdir()) == expected
        seg, _, dtype = load(folder, "seg", "-")
        assert dtype == np.uint8 and set(np.unique(seg).tolist()) == {0, 1, 2, 3}, folder.name
    assert detect_layout(tiny_2023_root) == "brats"
    info = json.loads((tiny_2023_root / INFO_FILE).read_text())
    assert info["spec"] == {"cases": 3, "slices": 8, "size": 48, "seed": 1, "year": 2023}
    assert info["modalities"] == ["t1n", "t1c", "t2w", "t2f"]
    assert info["labels"] == {"1": "necrotic / non-enhancing core", "2": "oedema", "3": "enhancing tumour"}
    assert [case["folder"] for case in info["cases"]] == [p.name for p in folders]


def test_the_2023_sample_is_the_2021_sample_with_enhancing_tumour_relabelled(
    tiny_root: Path, tiny_2023_root: Path
) -> None:
    for old, new in zip(case_folders(tiny_root), case_folders(tiny_2023_root), strict=True):
        for name, name_2023 in FILES_2023.items():
            first, first_affine, first_dtype = load(old, name)
            second, second_affine, second_dtype = load(new, name_2023, "-")
            expected = np.where(first == 4, 3, first) if name == "seg" else first
            np.testing.assert_array_equal(second, expected, err_msg=f"{new.name} {name_2023}")
            np.testing.assert_array_equal(second_affine, first_affine)
            assert second_dtype == first_dtype
        assert (load(old, "seg")[0] == 4).any()


def test_the_2023_sample_reads_as_the_2021_sample_under_either_year_s_names(
    tiny_root: Path, tiny_2023_root: Path
) -> None:
    reference = read_dataset(tiny_root, target="brats-regions")  # the default, 2021, modality names
    for root, modalities in ((tiny_2023_root, None), (tiny_2023_root, BRATS_2023_MODALITIES),
                             (tiny_root, BRATS_2023_MODALITIES)):
        names = {"modalities": modalities} if modalities else {}
        dataset = read_dataset(root, target="brats-regions", **names)
        assert dataset.skipped == [] and len(dataset.volumes) == len(reference.volumes), (root, modalities)
        for volume, expected in zip(dataset.volumes, reference.volumes, strict=True):
            np.testing.assert_array_equal(volume.image, expected.image, err_msg=f"{volume.patient_id} {modalities}")
            np.testing.assert_array_equal(volume.mask, expected.mask, err_msg=f"{volume.patient_id} {modalities}")
            assert (volume.spacing, volume.slice_step) == (expected.spacing, expected.slice_step)


def test_write_sample_passes_the_brats_year_and_years_never_share_a_cache(
    tmp_path: Path, tiny_2023_root: Path
) -> None:
    out = write_sample(tmp_path / "one", "brats", patients=1, slices=8, size=48, seed=1, brats_year=2023)
    [folder] = case_folders(out)
    assert folder.name == "BraTS-GLI-00001-000"
    for path in sorted(folder.iterdir()):  # case 1 of 1 is case 1 of 3, file for file
        assert path.read_bytes() == (tiny_2023_root / folder.name / path.name).read_bytes(), path.name
    with pytest.raises(ConfigError, match="brats layout only"):
        write_sample(tmp_path / "kaggle", "kaggle_3m", brats_year=2023)
    assert not (tmp_path / "kaggle").exists()
    assert TINY.cache_name == f"sample-brats-v{sample_brats.VERSION}-3x8-48-seed1"  # as before years
    assert TINY_2023.cache_name == f"sample-brats-2023-v{sample_brats.VERSION}-3x8-48-seed1"


def test_same_spec_same_arrays_other_seed_other_data(tmp_path: Path, tiny_root: Path) -> None:
    again = write_brats_sample(tmp_path / "again", TINY)
    other = write_brats_sample(tmp_path / "other", BratsSampleSpec(cases=1, slices=8, size=48, seed=2))
    for folder in case_folders(tiny_root):
        for name in FILES:
            first, first_affine, _ = load(folder, name)
            second, second_affine, _ = load(again / folder.name, name)
            np.testing.assert_array_equal(first, second)
            np.testing.assert_array_equal(first_affine, second_affine)
    first, other_case = load(case_folders(tiny_root)[0], "t1")[0], load(case_folders(other)[0], "t1")[0]
    assert first.shape != other_case.shape or not np.array_equal(first, other_case)


def test_cache_is_reused_and_resolve_data_knows_sample_brats(tmp_path: Path, monkeypatch) -> None:
    first = cached_brats_sample(TINY, cache_dir=tmp_path)
    stamp = (first / INFO_FILE).stat().st_mtime_ns
    assert first == tmp_path / TINY.cache_name and first.name.startswith(f"sample-brats-v{sample_brats.VERSION}-")
    assert cached_brats_sample(TINY, cache_dir=tmp_path) == first
    assert (first / INFO_FILE).stat().st_mtime_ns == stamp, "the cached sample was generated again"
    asked = []
    monkeypatch.setattr(sample_brats, "cached_brats_sample", lambda spec: asked.append(spec) or first)
    assert resolve_data("sample-brats", TrainConfig(seed=7)) == first
    assert asked == [BratsSampleSpec(seed=7)]


def test_spec_is_validated() -> None:
    with pytest.raises(ConfigError, match="cases"):
        BratsSampleSpec(cases=0)
    with pytest.raises(ConfigError, match="seed"):
        BratsSampleSpec(seed=-1)
    for year in (2022, 2024, "2023", True):
        with pytest.raises(ConfigError, match=rf"BraTS sample year must be one of 2021, 2023, got {year!r}"):
            BratsSampleSpec(year=year)


def test_seg_sample_writes_the_brats_layout_and_rejects_an_unknown_one(tmp_path: Path) -> None:
    out = tmp_path / "brats"
    args = ["sample-data", str(out), "--layout", "brats", "--patients", "2", "--slices", "8", "--size", "48"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert [p.name for p in case_folders(out)] == ["SAMPLE_BRATS_001", "SAMPLE_BRATS_002"]
    assert len(list((out / "SAMPLE_BRATS_002").glob("*.nii.gz"))) == 5
    bad = CliRunner().invoke(app, ["sample-data", str(tmp_path / "bad"), "--layout", "nifti"])
    lines = [line for line in bad.output.splitlines() if line.strip()]
    assert bad.exit_code == 1 and len(lines) == 1, bad.output
    assert "unknown sample layout 'nifti'" in lines[0] and "kaggle_3m, brats" in lines[0]
    assert not (tmp_path / "bad").exists()
