"""Tests for brainseg.data.imageio, readers and brats on tiny folders built in tmp_path."""

from __future__ import annotations

import struct
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest

from brainseg.data.imageio import read_image, read_mask, to_uint8
from brainseg.data.readers import (
    LAYOUTS,
    SkippedInputWarning,
    detect_layout,
    natural_key,
    read_dataset,
)
from brainseg.data.volume import Dataset, SkippedInput
from brainseg.errors import BrainsegError, ConfigError, DataError

nib = pytest.importorskip("nibabel")

pytestmark = pytest.mark.filterwarnings("ignore::brainseg.data.readers.SkippedInputWarning")

SIZE = 32


# ---------------------------------------------------------------- fixture builders


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    """Write an (H, W, 3) RGB array with OpenCV (which stores BGR)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise RuntimeError(f"cv2 could not write {path}")
    return path


def write_gray(path: Path, gray: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), gray):
        raise RuntimeError(f"cv2 could not write {path}")
    return path


def slice_rgb(n: int, patient: int, size: int = SIZE) -> np.ndarray:
    """RGB slice whose channels encode slice number, patient and a constant: (n, 50+p, 200)."""
    image = np.empty((size, size, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = n, 50 + patient, 200
    return image


def slice_mask(n: int, size: int = SIZE, on: int = 255) -> np.ndarray:
    """A 8x8 square of foreground on even slice numbers, empty on odd ones."""
    mask = np.zeros((size, size), np.uint8)
    if n % 2 == 0:
        mask[4:12, 4:12] = on
    return mask


def make_kaggle(root: Path, patients: dict[str, int] | None = None) -> Path:
    """ROOT/<patient>/<patient>_<N>.tif + _mask.tif, plus data.csv and README like the real set."""
    patients = patients or {"TCGA_B": 4, "TCGA_A": 12, "TCGA_C": 4}
    for index, (patient, count) in enumerate(sorted(patients.items())):
        for n in range(1, count + 1):
            write_rgb(root / patient / f"{patient}_{n}.tif", slice_rgb(n, index))
            write_gray(root / patient / f"{patient}_{n}_mask.tif", slice_mask(n))
    (root / "data.csv").write_text("Patient,RNASeqCluster\nTCGA_A,1\n")
    (root / "README.md").write_text("kaggle lgg\n")
    return root


def make_folders(root: Path) -> Path:
    """images/ + masks/ with two patients, slice numbers 1, 2, 10 and both mask naming rules."""
    for index, patient in enumerate(("P1", "P2")):
        for n in (1, 2, 10):
            write_rgb(root / "images" / f"{patient}_{n}.png", slice_rgb(n, index))
            name = f"{patient}_{n}_mask.png" if n == 2 else f"{patient}_{n}.png"
            write_gray(root / "masks" / name, slice_mask(n, on=1 if n == 10 else 255))
    return root


BRATS_SHAPE = (12, 10, 8)  # (X, Y, Z)
ZOOMS = (1.0, 1.5, 2.0)
MODALITIES = ("t1", "t1ce", "t2", "flair")
HOT = {
    "t1": (3, 3, 2),
    "t1ce": (4, 5, 3),
    "t2": (6, 4, 4),
    "flair": (8, 6, 5),
}  # one bright voxel each


def brats_arrays(seed: int = 0, et_label: int = 4) -> dict[str, np.ndarray]:
    """Modalities non-zero on a brain box (z 2..5 of 0..7) with one hot voxel each, and a seg."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for k, modality in enumerate(MODALITIES):
        data = np.zeros(BRATS_SHAPE, np.float32)
        data[2:10, 2:8, 2:6] = rng.uniform(10, 20, (8, 6, 4)) * (k + 1)
        data[HOT[modality]] = 1000.0
        arrays[modality] = data
    seg = np.zeros(BRATS_SHAPE, np.int16)
    seg[3:5, 3:5, 3] = 1  # 4 voxels necrosis
    seg[5:8, 3:5, 3] = 2  # 6 voxels oedema
    seg[3:6, 5, 4] = et_label  # 3 voxels enhancing
    arrays["seg"] = seg
    return arrays


def write_brats_case(
    root: Path,
    case: str,
    arrays: dict[str, np.ndarray],
    *,
    flip: bool = False,
    sep: str = "_",
    suffix: str = ".nii.gz",
) -> Path:
    """Write one case; flip=True stores the same anatomy in LPS order (x and y reversed)."""
    folder = root / case
    folder.mkdir(parents=True, exist_ok=True)
    affine = np.diag([*ZOOMS, 1.0])
    if flip:
        affine[0, 0], affine[1, 1] = -ZOOMS[0], -ZOOMS[1]
        affine[:2, 3] = [(BRATS_SHAPE[0] - 1) * ZOOMS[0], (BRATS_SHAPE[1] - 1) * ZOOMS[1]]
    for name, data in arrays.items():
        stored = data[::-1, ::-1] if flip else data
        nib.save(
            nib.Nifti1Image(np.ascontiguousarray(stored), affine),
            folder / f"{case}{sep}{name}{suffix}",
        )
    return folder


def make_brats(root: Path, cases: int = 2) -> Path:
    for i in range(cases):
        write_brats_case(root, f"BraTS_{i:03d}", brats_arrays(seed=i))
    (root / "name_mapping.csv").write_text("case\n")
    return root


def tiff_ifd_first(pixels: np.ndarray) -> bytes:
    """A minimal uncompressed 8-bit grayscale TIFF with its directory before the pixel strip."""
    height, width = pixels.shape
    tags = [
        (256, 3, width),
        (257, 3, height),
        (258, 3, 8),
        (259, 3, 1),
        (262, 3, 1),
        (273, 4, 0),
        (277, 3, 1),
        (278, 3, height),
        (279, 4, height * width),
    ]
    data_offset = 8 + 2 + 12 * len(tags) + 4
    entries = b"".join(
        struct.pack("<HHII", tag, kind, 1, data_offset if tag == 273 else value)
        for tag, kind, value in tags
    )
    return (
        b"II*\x00"
        + struct.pack("<I", 8)
        + struct.pack("<H", len(tags))
        + entries
        + b"\0" * 4
        + pixels.tobytes()
    )


def truncate(path: Path, fraction: float = 0.6) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def skip_for(dataset: Dataset, name: str) -> SkippedInput:
    """The one skipped entry whose path ends with `name`."""
    hits = [s for s in dataset.skipped if s.path.endswith(name)]
    assert len(hits) == 1, f"expected one skip for {name}, got {dataset.skipped}"
    return hits[0]


# ---------------------------------------------------------------- imageio


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_read_image_returns_rgb_order_and_keeps_dtype(tmp_path, suffix):
    rgb = slice_rgb(7, 1)
    image = read_image(write_rgb(tmp_path / f"a{suffix}", rgb))
    assert image.dtype == np.uint8 and image.shape == (SIZE, SIZE, 3)
    assert image[0, 0].tolist() == [7, 51, 200]


def test_read_image_gray_gets_channel_axis_alpha_is_dropped_16bit_kept(tmp_path):
    gray = read_image(write_gray(tmp_path / "g.png", np.full((4, 5), 9, np.uint8)))
    assert gray.shape == (4, 5, 1) and gray[0, 0, 0] == 9
    bgra = np.zeros((4, 5, 4), np.uint8)
    bgra[..., 0], bgra[..., 2], bgra[..., 3] = 10, 30, 128  # B=10, R=30, alpha
    rgb = read_image(write_gray(tmp_path / "rgba.png", bgra))
    assert rgb.shape == (4, 5, 3) and rgb[0, 0].tolist() == [30, 0, 10]
    deep = read_image(write_gray(tmp_path / "d.png", np.full((4, 5), 40000, np.uint16)))
    assert deep.dtype == np.uint16 and deep[0, 0, 0] == 40000


def test_to_uint8_rescales_by_peak():
    image = np.array([[0, 1000, 2000]], np.uint16)
    assert to_uint8(image).tolist() == [[0, 128, 255]]
    assert to_uint8(image, peak=4000).tolist() == [[0, 64, 128]]
    assert to_uint8(np.zeros((2, 2), np.uint16)).max() == 0
    same = np.ones((2, 2), np.uint8)
    assert to_uint8(same) is same


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_truncated_file_is_an_error_not_garbage(tmp_path, suffix):
    rng = np.random.default_rng(0)
    path = write_rgb(
        tmp_path / f"slice{suffix}", rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    )
    for fraction in (0.3, 0.95):
        truncate(path, fraction)
        with pytest.raises(DataError, match=r"slice\.\w+: .*truncated"):
            read_image(path)


def test_truncated_tiff_with_directory_first_is_caught_by_strip_table(tmp_path):
    pixels = np.arange(SIZE * SIZE, dtype=np.uint32).reshape(SIZE, SIZE).astype(np.uint8)
    path = tmp_path / "first.tif"
    path.write_bytes(tiff_ifd_first(pixels))
    assert np.array_equal(read_image(path)[..., 0], pixels)  # the hand-made TIFF is valid
    truncate(path, 0.7)
    with pytest.raises(
        DataError, match=r"first\.tif: TIFF is truncated \(\d+ bytes, its first image needs 1\d+\)"
    ):
        read_image(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "does not exist"), (b"", "empty"), (b"not an image at all" * 10, "cannot decode")],
)
def test_missing_empty_or_undecodable_file_is_an_error(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=rf"bad\.png: .*{message}"):
        read_image(path)


def test_read_mask_accepts_0_255_0_1_and_identical_channels(tmp_path):
    expected = slice_mask(2, on=1)
    assert np.array_equal(read_mask(write_gray(tmp_path / "a.png", slice_mask(2))), expected)
    assert np.array_equal(read_mask(write_gray(tmp_path / "b.png", slice_mask(2, on=1))), expected)
    three = np.repeat(slice_mask(2)[..., None], 3, axis=2)
    mask = read_mask(write_gray(tmp_path / "c.tif", three))
    assert mask.dtype == np.uint8 and mask.shape == (SIZE, SIZE) and np.array_equal(mask, expected)


def test_read_mask_rejects_other_values_and_differing_channels(tmp_path):
    values = slice_mask(2, on=128)
    values[0, 0] = 7
    with pytest.raises(
        DataError,
        match=r"m\.png: mask values \{0, 7, 128\} found; allowed are \{0, 1\} or \{0, 255\}",
    ):
        read_mask(write_gray(tmp_path / "m.png", values))
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[0, 0, 0] = 255
    with pytest.raises(DataError, match="3 channels that differ"):
        read_mask(write_gray(tmp_path / "c.png", colour))


# ---------------------------------------------------------------- layout detection, root errors


def test_detect_layout_for_each_layout(tmp_path):
    assert detect_layout(make_kaggle(tmp_path / "k")) == "kaggle_3m"
    assert detect_layout(make_brats(tmp_path / "b", cases=1)) == "brats"
    assert detect_layout(make_folders(tmp_path / "f")) == "folders"
    make_kaggle(tmp_path / "download" / "kaggle_3m", {"TCGA_A": 2})
    (tmp_path / "download" / "data.csv").write_text("x\n")
    assert detect_layout(tmp_path / "download") == "kaggle_3m"


def test_detect_layout_names_what_it_looked_for(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    with pytest.raises(DataError) as info:
        detect_layout(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    for looked_for in ("kaggle_3m", "BraTS", "images/+masks/"):
        assert looked_for in message


@pytest.mark.parametrize(
    ("setup", "message"),
    [("missing", "does not exist"), ("file", "is a file"), ("empty", "is empty")],
)
def test_missing_file_or_empty_root_raises(tmp_path, setup, message):
    root = tmp_path / "data"
    if setup == "file":
        root.write_text("x")
    elif setup == "empty":
        root.mkdir()
    with pytest.raises(DataError, match=message) as info:
        read_dataset(root)
    assert str(root) in str(info.value)


def test_unknown_layout_target_and_misplaced_options_are_config_errors(tmp_path):
    root = make_kaggle(tmp_path, {"TCGA_A": 2})
    with pytest.raises(ConfigError, match="valid layouts: auto, kaggle_3m, brats, folders"):
        read_dataset(root, layout="nifti")
    with pytest.raises(ConfigError, match="valid targets: wt, brats-regions"):
        read_dataset(root, target="et")
    with pytest.raises(ConfigError, match="use target 'wt'"):
        read_dataset(root, target="brats-regions")
    with pytest.raises(ConfigError, match="folders layout only"):
        read_dataset(root, patient_regex="(P.)")
    assert LAYOUTS == ("kaggle_3m", "brats", "folders")
    with pytest.raises(ConfigError, match="unknown layout"):  # checked before the disk is read
        read_dataset(tmp_path / "missing", layout="nifti")


# ---------------------------------------------------------------- kaggle_3m


def test_kaggle_reads_patients_in_order_and_slices_by_number(tmp_path):
    dataset = read_dataset(make_kaggle(tmp_path))
    assert dataset.layout == "kaggle_3m" and dataset.skipped == []
    assert [v.patient_id for v in dataset.volumes] == ["TCGA_A", "TCGA_B", "TCGA_C"]
    volume = dataset.volumes[0]
    assert volume.image.shape == (12, SIZE, SIZE, 3) and volume.image.dtype == np.uint8
    assert volume.mask.shape == (12, SIZE, SIZE, 1) and volume.mask.dtype == np.uint8
    assert volume.image[:, 0, 0, 0].tolist() == list(range(1, 13))  # 2 before 10
    assert volume.slice_names[:3] == ["TCGA_A_1", "TCGA_A_2", "TCGA_A_3"]
    assert volume.slice_names[-1] == "TCGA_A_12"
    assert volume.image[0, 0, 0].tolist() == [1, 50, 200]  # RGB, not BGR
    assert set(np.unique(volume.mask).tolist()) == {0, 1}
    assert volume.mask.reshape(12, -1).sum(axis=1).tolist() == [0, 64] * 6
    assert volume.source == "kaggle_3m" and volume.spacing is None
    assert dataset.in_channels == 3 and dataset.classes == 1 and dataset.num_slices == 20


def test_kaggle_accepts_parent_folder_of_kaggle_3m(tmp_path):
    make_kaggle(tmp_path / "lgg-mri-segmentation" / "kaggle_3m", {"TCGA_A": 3})
    dataset = read_dataset(tmp_path / "lgg-mri-segmentation")
    assert [v.patient_id for v in dataset.volumes] == ["TCGA_A"]


def test_kaggle_bad_slices_are_skipped_with_reasons(tmp_path):
    root = make_kaggle(tmp_path, {"TCGA_A": 8, "TCGA_B": 2})
    folder = root / "TCGA_A"
    truncate(folder / "TCGA_A_1.tif")
    (folder / "TCGA_A_2_mask.tif").write_bytes(b"")
    write_gray(folder / "TCGA_A_3_mask.tif", np.zeros((16, 16), np.uint8))
    bad_values = slice_mask(4, on=128)
    bad_values[0, 0] = 7
    write_gray(folder / "TCGA_A_4_mask.tif", bad_values)
    (folder / "TCGA_A_5_mask.tif").unlink()
    write_rgb(folder / "TCGA_A_7.tif", slice_rgb(7, 0, size=24))
    write_gray(folder / "TCGA_A_7_mask.tif", slice_mask(7, size=24))
    (folder / "TCGA_A_8.tif").write_bytes(b"\x00garbage" * 50)
    write_gray(folder / "TCGA_A_9_mask.tif", slice_mask(9))

    dataset = read_dataset(root)

    volume = dataset.volumes[0]
    assert volume.patient_id == "TCGA_A" and volume.slice_names == ["TCGA_A_6"]
    assert volume.image[:, 0, 0, 0].tolist() == [6]
    assert "truncated" in skip_for(dataset, "TCGA_A_1.tif").reason
    assert "empty" in skip_for(dataset, "TCGA_A_2_mask.tif").reason
    assert (
        skip_for(dataset, "TCGA_A_3.tif").reason
        == "image is 32x32 but its mask TCGA_A_3_mask.tif is 16x16"
    )
    assert "mask values {0, 7, 128} found" in skip_for(dataset, "TCGA_A_4_mask.tif").reason
    assert (
        "image without a mask (expected TCGA_A_5_mask.tif)"
        in skip_for(dataset, "TCGA_A_5.tif").reason
    )
    reason = skip_for(dataset, "TCGA_A_7.tif").reason
    assert reason == "24x24x3 uint8 differs from the patient's first slice TCGA_A_6 (32x32x3 uint8)"
    assert "cannot decode" in skip_for(dataset, "TCGA_A_8.tif").reason
    assert "mask without an image" in skip_for(dataset, "TCGA_A_9_mask.tif").reason
    assert len(dataset.skipped) == 8


def test_kaggle_patient_without_masks_and_all_slices_bad_are_recorded(tmp_path):
    root = make_kaggle(tmp_path, {"TCGA_A": 2, "TCGA_B": 2, "TCGA_C": 2})
    for mask in (root / "TCGA_B").glob("*_mask.tif"):
        mask.unlink()
    for image in (root / "TCGA_C").glob("TCGA_C_?.tif"):
        truncate(image)
    (root / "empty_patient").mkdir()

    dataset = read_dataset(root)

    assert [v.patient_id for v in dataset.volumes] == ["TCGA_A"]
    assert (
        skip_for(dataset, "TCGA_B").reason
        == "patient TCGA_B: 2 images but no <patient>_<N>_mask.tif masks"
    )
    assert (
        skip_for(dataset, "TCGA_C").reason == "patient TCGA_C: none of its 2 slices could be used"
    )
    assert "no <patient>_<N>.tif slices" in skip_for(dataset, "empty_patient").reason


def test_kaggle_patient_with_other_channel_count_is_skipped(tmp_path):
    root = make_kaggle(tmp_path, {"TCGA_A": 2, "TCGA_B": 2})
    for n in (1, 2):
        write_gray(root / "TCGA_C" / f"TCGA_C_{n}.tif", np.full((SIZE, SIZE), n, np.uint8))
        write_gray(root / "TCGA_C" / f"TCGA_C_{n}_mask.tif", slice_mask(n))
    dataset = read_dataset(root)
    assert [v.patient_id for v in dataset.volumes] == ["TCGA_A", "TCGA_B"]
    assert (
        skip_for(dataset, "TCGA_C").reason == "patient TCGA_C has 1 channels, the other patients 3"
    )


def test_nothing_usable_raises_naming_root_and_first_problems(tmp_path):
    root = make_kaggle(tmp_path / "data", {"TCGA_A": 2})
    for image in (root / "TCGA_A").glob("TCGA_A_?.tif"):
        truncate(image)
    with pytest.raises(DataError) as info:
        read_dataset(root)
    message = str(info.value)
    assert f"{root} (kaggle_3m layout) has no usable volume: 3 inputs skipped" in message
    assert "TCGA_A_1.tif: TIFF is truncated" in message


def test_every_skip_is_warned_with_its_file(tmp_path):
    root = make_kaggle(tmp_path, {"TCGA_A": 3})
    truncate(root / "TCGA_A" / "TCGA_A_2.tif")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dataset = read_dataset(root)
    messages = [str(w.message) for w in caught if issubclass(w.category, SkippedInputWarning)]
    assert len(messages) == len(dataset.skipped) == 1
    assert "TCGA_A_2.tif: TIFF is truncated" in messages[0]


def test_sixteen_bit_slices_are_rescaled_per_patient_with_a_warning(tmp_path):
    for n, peak in ((1, 1000), (2, 4000)):
        write_gray(tmp_path / "P" / f"P_{n}.tif", np.full((SIZE, SIZE), peak, np.uint16))
        write_gray(tmp_path / "P" / f"P_{n}_mask.tif", slice_mask(n))
    with pytest.warns(UserWarning, match="uint16 slices rescaled to uint8"):
        dataset = read_dataset(tmp_path)
    image = dataset.volumes[0].image
    assert image.dtype == np.uint8 and image[:, 0, 0, 0].tolist() == [64, 255]


# ---------------------------------------------------------------- folders


def test_folders_natural_order_patients_and_both_mask_names(tmp_path):
    dataset = read_dataset(make_folders(tmp_path))
    assert dataset.layout == "folders" and dataset.skipped == []
    assert [v.patient_id for v in dataset.volumes] == ["P1", "P2"]
    volume = dataset.volumes[1]
    assert volume.slice_names == ["P2_1", "P2_2", "P2_10"]
    assert volume.image.shape == (3, SIZE, SIZE, 3) and volume.image[:, 0, 0].tolist() == [
        [1, 51, 200],
        [2, 51, 200],
        [10, 51, 200],
    ]
    assert volume.mask.reshape(3, -1).sum(axis=1).tolist() == [0, 64, 64]
    assert volume.source == "folders"


def test_folders_patient_regex_named_group_first_group_and_no_match(tmp_path):
    for stem in ("scan-P7-s1", "scan-P7-s2", "scan-P9-s1", "other"):
        write_rgb(tmp_path / "images" / f"{stem}.png", slice_rgb(1, 0))
        write_gray(tmp_path / "masks" / f"{stem}.png", slice_mask(1))
    named = read_dataset(tmp_path, patient_regex=r"scan-(?P<patient>P\d+)-")
    assert [(v.patient_id, v.num_slices) for v in named.volumes] == [("P7", 2), ("P9", 1)]
    assert "does not match patient_regex" in skip_for(named, "other.png").reason
    first = read_dataset(tmp_path, patient_regex=r"scan-(P\d+)-s(\d+)")
    assert [(v.patient_id, v.slice_names) for v in first.volumes] == [
        ("P7", ["scan-P7-s1", "scan-P7-s2"]),
        ("P9", ["scan-P9-s1"]),
    ]
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        read_dataset(tmp_path, patient_regex="(unclosed")


def test_folders_bad_inputs_are_skipped_with_reasons(tmp_path):
    root = make_folders(tmp_path)
    write_rgb(root / "images" / "P1_3.png", slice_rgb(3, 0))  # no mask
    truncate(root / "images" / "P1_2.png")
    write_gray(root / "masks" / "P2_2_mask.png", np.zeros((16, 16), np.uint8))
    write_gray(root / "masks" / "P2_10.png", np.full((SIZE, SIZE), 7, np.uint8))
    write_gray(root / "masks" / "P9_1.png", slice_mask(1))  # no image
    for n in (1, 2):
        write_rgb(root / "images" / f"P3_{n}.png", slice_rgb(n, 2))  # patient without masks
    (root / "images" / "notes.txt").write_text("x")

    dataset = read_dataset(root)

    assert [(v.patient_id, v.slice_names) for v in dataset.volumes] == [
        ("P1", ["P1_1", "P1_10"]),
        ("P2", ["P2_1"]),
    ]
    assert "image without a mask (expected masks/P1_3.<ext>" in skip_for(dataset, "P1_3.png").reason
    assert "PNG is truncated" in skip_for(dataset, "P1_2.png").reason
    assert (
        skip_for(dataset, "P2_2.png").reason == "image is 32x32 but its mask P2_2_mask.png is 16x16"
    )
    assert "mask values {7} found" in skip_for(dataset, "P2_10.png").reason
    assert "mask without an image" in skip_for(dataset, "P9_1.png").reason
    assert skip_for(dataset, "images").reason == "patient P3: 2 images but none has a mask"
    assert "not an image file" in skip_for(dataset, "notes.txt").reason


def test_folders_missing_masks_folder_or_no_images_raise(tmp_path):
    (tmp_path / "a" / "images").mkdir(parents=True)
    write_rgb(tmp_path / "a" / "images" / "P1_1.png", slice_rgb(1, 0))
    with pytest.raises(DataError, match="has no masks/ folder"):
        read_dataset(tmp_path / "a", layout="folders")
    (tmp_path / "b" / "images").mkdir(parents=True)
    (tmp_path / "b" / "masks").mkdir()
    with pytest.raises(DataError, match=r"b \(folders layout\) holds no slices with masks"):
        read_dataset(tmp_path / "b")


def test_natural_key_orders_numbers_by_value():
    assert sorted(["s_10", "s_2", "S_1"], key=natural_key) == ["S_1", "s_2", "s_10"]


# ---------------------------------------------------------------- brats


def test_brats_volumes_are_zscored_axial_brain_slices(tmp_path):
    dataset = read_dataset(make_brats(tmp_path))
    assert dataset.layout == "brats" and dataset.skipped == []
    assert [v.patient_id for v in dataset.volumes] == ["BraTS_000", "BraTS_001"]
    volume = dataset.volumes[0]
    x, y, _ = BRATS_SHAPE
    assert volume.image.shape == (4, y, x, 4) and volume.image.dtype == np.float32
    assert volume.slice_names == ["BraTS_000:z2", "BraTS_000:z3", "BraTS_000:z4", "BraTS_000:z5"]
    assert volume.spacing == (ZOOMS[1], ZOOMS[0])
    assert volume.slice_step == ZOOMS[2]
    for c in range(4):
        channel = volume.image[..., c]
        brain = channel[channel != 0]
        assert brain.size == 8 * 6 * 4
        assert abs(brain.mean()) < 1e-5 and abs(brain.std() - 1) < 1e-4
    assert volume.mask.shape == (4, y, x, 1) and int(volume.mask.sum()) == 13


def test_brats_modality_order_and_orientation(tmp_path):
    write_brats_case(tmp_path, "ras", brats_arrays())
    write_brats_case(tmp_path, "lps", brats_arrays(), flip=True)
    dataset = read_dataset(tmp_path, modalities=("flair", "t1"))
    ras, lps = dataset.volumes[1], dataset.volumes[0]
    assert ras.image.shape[-1] == 2
    for c, modality in enumerate(("flair", "t1")):
        hx, hy, hz = HOT[modality]
        expected = (hz - 2, BRATS_SHAPE[1] - 1 - hy, hx)  # slice, row (anterior first), column
        assert np.unravel_index(np.argmax(ras.image[..., c]), ras.image.shape[:3]) == expected
    np.testing.assert_allclose(lps.image, ras.image, atol=1e-6)
    assert np.array_equal(lps.mask, ras.mask)


@pytest.mark.parametrize("et_label", [4, 3])
def test_brats_whole_tumour_and_regions(tmp_path, et_label):
    write_brats_case(tmp_path, "case", brats_arrays(et_label=et_label))
    wt = read_dataset(tmp_path, target="wt").volumes[0].mask
    regions = read_dataset(tmp_path, target="brats-regions").volumes[0].mask
    assert wt.shape[-1] == 1 and regions.shape[-1] == 3
    assert regions.reshape(-1, 3).sum(axis=0).tolist() == [13, 7, 3]  # WT, TC, ET
    assert np.array_equal(regions[..., 0], wt[..., 0])
    assert set(np.unique(regions).tolist()) == {0, 1}


def test_brats_2023_names_and_plain_nii(tmp_path):
    arrays = brats_arrays()
    renamed = dict(zip(("t1n", "t1c", "t2w", "t2f", "seg"), arrays.values(), strict=True))
    write_brats_case(tmp_path, "BraTS-GLI-00001-000", renamed, sep="-", suffix=".nii")
    dataset = read_dataset(tmp_path, modalities=("t1n", "t1c", "t2w", "t2f"))
    assert dataset.volumes[0].image.shape == (4, BRATS_SHAPE[1], BRATS_SHAPE[0], 4)


def brats_case_with(tmp_path: Path, damage) -> Dataset:
    """Two good cases and one damaged by `damage(folder)`; returns what was read."""
    make_brats(tmp_path, cases=2)
    folder = write_brats_case(tmp_path, "bad", brats_arrays())
    damage(folder)
    dataset = read_dataset(tmp_path)
    assert [v.patient_id for v in dataset.volumes] == ["BraTS_000", "BraTS_001"]
    assert len(dataset.skipped) == 1
    return dataset


def test_brats_missing_modality_or_seg_is_skipped(tmp_path):
    dataset = brats_case_with(tmp_path / "a", lambda f: (f / "bad_t1ce.nii.gz").unlink())
    assert skip_for(dataset, "bad").reason == "missing bad_t1ce.nii.gz (or .nii)"
    dataset = brats_case_with(tmp_path / "b", lambda f: (f / "bad_seg.nii.gz").unlink())
    assert skip_for(dataset, "bad").reason == "missing bad_seg.nii.gz (or .nii)"


def test_brats_truncated_or_garbage_nifti_is_skipped(tmp_path):
    dataset = brats_case_with(tmp_path / "a", lambda f: truncate(f / "bad_flair.nii.gz", 0.5))
    assert "cannot read NIfTI" in skip_for(dataset, "bad_flair.nii.gz").reason
    dataset = brats_case_with(
        tmp_path / "b", lambda f: (f / "bad_t2.nii.gz").write_bytes(b"junk" * 100)
    )
    assert "cannot read NIfTI" in skip_for(dataset, "bad_t2.nii.gz").reason


def test_brats_truncated_uncompressed_nifti_is_skipped(tmp_path):
    write_brats_case(tmp_path, "good", brats_arrays(), suffix=".nii")
    folder = write_brats_case(tmp_path, "bad", brats_arrays(), suffix=".nii")
    truncate(folder / "bad_t1.nii", 0.8)
    dataset = read_dataset(tmp_path)
    assert [v.patient_id for v in dataset.volumes] == ["good"]
    assert "cannot read NIfTI" in skip_for(dataset, "bad_t1.nii").reason


def test_brats_nan_voxels_shape_mismatch_and_unknown_labels_are_skipped(tmp_path):
    def with_nan(folder):
        data = brats_arrays()["t2"]
        data[5, 5, 3] = np.nan
        nib.save(nib.Nifti1Image(data, np.diag([*ZOOMS, 1.0])), folder / "bad_t2.nii.gz")

    def with_shape(folder):
        nib.save(
            nib.Nifti1Image(np.ones((12, 10, 7), np.float32), np.eye(4)), folder / "bad_t1.nii.gz"
        )

    def with_label(folder):
        seg = brats_arrays()["seg"]
        seg[4, 4, 4] = 5
        nib.save(nib.Nifti1Image(seg, np.diag([*ZOOMS, 1.0])), folder / "bad_seg.nii.gz")

    dataset = brats_case_with(tmp_path / "a", with_nan)
    assert skip_for(dataset, "bad_t2.nii.gz").reason == "has 1 NaN or infinite voxels"
    dataset = brats_case_with(tmp_path / "b", with_shape)
    assert (
        skip_for(dataset, "bad").reason
        == "bad_t1.nii.gz is (12, 10, 7) but bad_seg.nii.gz is (12, 10, 8)"
    )
    dataset = brats_case_with(tmp_path / "c", with_label)
    assert "segmentation labels [5] found" in skip_for(dataset, "bad_seg.nii.gz").reason


def test_brats_all_cases_skipped_raises(tmp_path):
    folder = write_brats_case(tmp_path, "only", brats_arrays())
    (folder / "only_t2.nii.gz").unlink()
    with pytest.raises(
        DataError, match=r"\(brats layout\) has no usable volume: 1 inputs skipped: .*only_t2"
    ):
        read_dataset(tmp_path)


def test_brats_without_nibabel_names_the_extra(tmp_path, monkeypatch):
    make_brats(tmp_path, cases=1)
    monkeypatch.setitem(sys.modules, "nibabel", None)
    with pytest.raises(BrainsegError, match=r"pip install 'brainseg\[nifti\]'"):
        read_dataset(tmp_path)
