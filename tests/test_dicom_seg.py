"""seg-run's DICOM SEG for DICOM inputs: segments, algorithm, references, and frames on the source grid."""

import io
import sys
from dataclasses import replace

import numpy as np
import pytest

from brainseg.errors import DataError
from brainseg.runtime.io.loading import load
from brainseg.runtime.io.scans import Prediction
from brainseg.runtime.outputs import OutputOptions, write_scan
from brainseg.runtime.outputs.dicom_seg import DicomSegError, segmentation_bytes

hd = pytest.importorskip("highdicom", reason="highdicom (the dicom extra) is not installed")
pydicom = pytest.importorskip("pydicom", reason="pydicom (the dicom extra) is not installed")
from scan_files import U8_GRAY, one  # noqa: E402  (it skips itself without nibabel)

SHA = "0123456789abcdef" * 4
SAGITTAL = [0, 1, 0, 0, 0, -1]  # rows run posterior, columns inferior: reoriented on reading
AXIAL = [1, 0, 0, 0, 1, 0]


def _write_series(folder, planes, positions, orientation, *, frame_of_reference=True):
    """One MR series with a study, patient ID and frame of reference (other Type 2 attributes left out);
    returns (SeriesInstanceUID, [SOPInstanceUID per plane])."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    uids = []
    for index, (plane, position) in enumerate(zip(planes, positions, strict=True)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.TransferSyntaxUID = MRImageStorage, ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.Modality, ds.PatientID, ds.StudyInstanceUID, ds.SeriesInstanceUID = "MR", "anon", study, series
        if frame_of_reference:
            ds.FrameOfReferenceUID = frame
        ds.SeriesNumber, ds.InstanceNumber = 5, index + 1
        ds.Rows, ds.Columns = plane.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.PixelData = plane.astype(np.uint16).tobytes()
        ds.ImagePositionPatient, ds.ImageOrientationPatient, ds.PixelSpacing = position, orientation, [0.8, 0.6]
        pydicom.dcmwrite(folder / f"im{index}.dcm", ds, enforce_file_format=True)
        uids.append(ds.SOPInstanceUID)
    return series, uids


def _planes(levels=(300,)):
    """4 planes of 6 x 7 with blobs in one corner of slices 1 and 2 (nested levels, outermost first) and
    one pixel in the opposite corner of slice 3: no flip or reordering of slices maps them onto themselves."""
    planes = np.zeros((4, 6, 7), np.uint16)
    for depth, level in enumerate(levels):
        planes[1:3, : 3 - depth, : 4 - depth] = level
    planes[3, 5, 6] = levels[0]
    return planes


def _segment(tmp_path, planes, orientation, regions, sha=SHA, brats_labels="2021"):
    """Write the series, read it with the runtime, predict `regions(image)` and write the scan's outputs."""
    positions = [[-3.0 * i, -10.0, 20.0] if orientation == SAGITTAL else [0.0, 0.0, 2.5 * i] for i in range(4)]
    series, uids = _write_series(tmp_path / "dcm", planes, positions, orientation)
    data = load(one([tmp_path / "dcm"], U8_GRAY), U8_GRAY)
    mask = regions(data.image[..., 0]).astype(np.uint8)  # (S, H, W, K) in the runtime's axial slices
    pred = Prediction(probability=mask.astype(np.float32), mask=mask, disagreement=np.zeros(mask.shape, np.float32))
    write_scan(tmp_path / "out", data, pred, OutputOptions(manifest_sha256=sha, brats_labels=brats_labels))
    return data, series, uids


def _read_seg(tmp_path, data):
    return hd.seg.segread(tmp_path / "out" / "volumes" / f"{data.scan.key}_seg.dcm")


def _frames(seg, uids, segments):
    """(instances, rows, columns, K) in the order of `uids`, empty where a frame was left out."""
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=segments,
                                             assert_missing_frames_are_empty=True)


def test_a_one_class_seg_has_the_source_geometry_and_names_brainseg(tmp_path):
    planes = _planes()
    data, series, uids = _segment(tmp_path, planes, SAGITTAL, lambda image: image[..., None] > 0)
    seg = _read_seg(tmp_path, data)
    assert seg.SegmentationType == "BINARY" and seg.number_of_segments == 1
    assert seg.get_segment_description(1).segment_label == "tumour"
    algorithm = seg.get_segment_description(1).algorithm_identification[0]
    assert algorithm.AlgorithmName == "brainseg" and SHA in algorithm.AlgorithmParameters
    assert seg.SegmentSequence[0].SegmentAlgorithmType == "AUTOMATIC"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series
    assert {uid for _, _, uid in seg.get_source_image_uids()} == set(uids)
    frames = _frames(seg, uids, [1])
    expected = (planes > 0)[..., None]  # each source image's own rows and columns
    assert np.array_equal(frames, expected)
    for wrong in (expected[:, ::-1], expected[:, :, ::-1], expected[::-1]):
        assert not np.array_equal(frames, wrong)
    assert (tmp_path / "out" / "volumes" / f"{data.scan.key}.nii.gz").is_file()


@pytest.mark.parametrize(("convention", "expected_labels"), [
    ("2021", ["whole tumour (BraTS 2021 labels 1, 2, 4)", "tumour core (BraTS 2021 labels 1, 4)",
              "enhancing tumour (BraTS 2021 label 4)"]),
    ("2023", ["whole tumour (BraTS 2023 labels 1, 2, 3)", "tumour core (BraTS 2023 labels 1, 3)",
              "enhancing tumour (BraTS 2023 label 3)"]),
])
def test_a_three_region_seg_has_one_segment_per_brats_region_named_in_the_label_convention(
        tmp_path, convention, expected_labels):
    planes = _planes(levels=(100, 200, 300))

    def regions(image):  # the three uint8 levels the runtime made of 100, 200, 300: WT, TC, ET
        levels = np.unique(image[image > 0])
        assert len(levels) == 3, levels
        return np.stack([image >= level for level in levels], axis=-1)

    data, _, uids = _segment(tmp_path, planes, AXIAL, regions, brats_labels=convention)
    seg = _read_seg(tmp_path, data)
    labels = [seg.get_segment_description(n).segment_label for n in (1, 2, 3)]
    assert seg.number_of_segments == 3 and labels == expected_labels
    frames = _frames(seg, uids, [1, 2, 3])
    expected = np.stack([planes >= level for level in (100, 200, 300)], axis=-1)
    assert np.array_equal(frames, expected)
    assert not np.array_equal(frames, expected[:, ::-1]) and not np.array_equal(frames, expected[:, :, ::-1])


def test_source_images_are_put_in_slice_order_whatever_the_order_of_the_scans_paths(tmp_path):
    planes = _planes()
    data, _, uids = _segment(tmp_path, planes, SAGITTAL, lambda image: image[..., None] > 0)
    shuffled = replace(data, scan=replace(data.scan, paths=data.scan.paths[::-1]))
    mask = (data.image[..., :1] > 0).astype(np.uint8)
    pred = Prediction(probability=mask.astype(np.float32), mask=mask, disagreement=np.zeros(mask.shape, np.float32))
    seg = hd.seg.segread(io.BytesIO(segmentation_bytes(shuffled, pred, manifest_sha256=SHA)))
    assert np.array_equal(_frames(seg, uids, [1]), (planes > 0)[..., None])


def test_an_empty_mask_still_gets_a_seg_with_every_frame_empty(tmp_path):
    data, _, uids = _segment(tmp_path, _planes(), AXIAL, lambda image: np.zeros((*image.shape, 1), bool))
    seg = _read_seg(tmp_path, data)
    assert seg.NumberOfFrames == len(uids)
    assert not _frames(seg, uids, [1]).any()


def test_no_seg_without_a_manifest_sha256(tmp_path):
    data, _, _ = _segment(tmp_path, _planes(), AXIAL, lambda image: image[..., None] > 0, sha=None)
    assert not (tmp_path / "out" / "volumes" / f"{data.scan.key}_seg.dcm").exists()
    assert (tmp_path / "out" / "volumes" / f"{data.scan.key}.nii.gz").is_file()


def test_a_series_without_a_frame_of_reference_keeps_its_other_outputs(tmp_path):
    _write_series(tmp_path / "dcm", _planes(), [[0.0, 0.0, 2.5 * i] for i in range(4)], AXIAL,
                  frame_of_reference=False)
    data = load(one([tmp_path / "dcm"], U8_GRAY), U8_GRAY)
    mask = (data.image[..., :1] > 0).astype(np.uint8)
    pred = Prediction(probability=mask.astype(np.float32), mask=mask, disagreement=np.zeros(mask.shape, np.float32))
    with pytest.raises(DicomSegError, match="no FrameOfReferenceUID") as info:
        write_scan(tmp_path / "out", data, pred, OutputOptions(manifest_sha256=SHA))
    assert isinstance(info.value, DataError) and "\n" not in str(info.value)
    volumes = tmp_path / "out" / "volumes"
    assert (volumes / f"{data.scan.key}.nii.gz").is_file() and not (volumes / f"{data.scan.key}_seg.dcm").exists()
    assert (tmp_path / "out" / "overlays" / f"{data.scan.key}.png").is_file()
    assert not (tmp_path / "out" / ".rows").exists()  # not done: the pipeline skips it with the reason


def test_without_highdicom_the_scan_fails_as_data_naming_the_extra(tmp_path, monkeypatch):
    data, _, _ = _segment(tmp_path, _planes(), AXIAL, lambda image: image[..., None] > 0, sha=None)
    monkeypatch.setitem(sys.modules, "highdicom", None)
    mask = np.zeros((*data.image.shape[:3], 1), np.uint8)
    pred = Prediction(probability=mask.astype(np.float32), mask=mask, disagreement=mask.astype(np.float32))
    with pytest.raises(DicomSegError, match=r"brainseg\[dicom\]"):
        segmentation_bytes(data, pred, manifest_sha256=SHA)
