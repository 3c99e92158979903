"""Reading labelled folders (kaggle_3m, images/+masks/) into patient volumes, with every bad input."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from data_files import (
    SIZE,
    make_brats,
    make_folders,
    make_kaggle,
    skip_for,
    slice_mask,
    slice_rgb,
    truncate,
    write_gray,
    write_rgb,
)

from brainseg.data.names import natural_key
from brainseg.data.readers import LAYOUTS, SkippedInputWarning, detect_layout, read_dataset
from brainseg.errors import ConfigError, DataError

pytestmark = pytest.mark.filterwarnings("ignore::brainseg.data.readers.SkippedInputWarning")


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
    assert "is not a PNG, JPEG, TIFF or BMP image" in skip_for(dataset, "TCGA_A_8.tif").reason
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


