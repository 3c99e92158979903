"""seg-run end to end over tiny exported artifacts: mixed inputs, bad inputs, resume, refusal, no torch."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import cv2
import numpy as np
import pytest
from no_torch import run_without_torch
from typer.testing import CliRunner

from brainseg.artifacts.manifest import Manifest
from brainseg.cli import app
from brainseg.errors import ConfigError
from brainseg.runtime import outputs
from brainseg.runtime.backends import auto_backend
from brainseg.runtime.batch.pipeline import RunOptions, segment
from brainseg.runtime.io import loading
from brainseg.runtime.segmenter import Segmenter, SegmenterOptions

nib = pytest.importorskip("nibabel")
pytest.importorskip("onnxruntime")

AFFINE = np.array([[0.0, -0.9, 0.0, 12.0], [0.0, 0.0, -1.3, 40.0], [2.5, 0.0, 0.0, -30.0], [0.0, 0.0, 0.0, 1.0]])


def _png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return path


def _sample_slices(tiny_sample: Path) -> list[np.ndarray]:
    files = sorted(p for p in tiny_sample.rglob("*.tif") if not p.stem.endswith("_mask"))
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files]


@pytest.fixture(scope="module")
def scans(tiny_sample, tmp_path_factory) -> Path:
    """A folder with good slices, a kaggle_3m patient, a NIfTI volume, and one of each bad case."""
    root = tmp_path_factory.mktemp("scans")
    slices = _sample_slices(tiny_sample)
    _png(root / "slices" / "a.png", slices[3])
    _png(root / "slices" / "big.png", cv2.resize(slices[4], (80, 80)))  # not the graph size: resized
    assert cv2.imwrite(str(root / "slices" / "c.tif"), cv2.cvtColor(slices[5], cv2.COLOR_RGB2BGR))
    patient = next(p for p in sorted(tiny_sample.iterdir()) if p.is_dir())
    shutil.copytree(patient, root / "patient")
    volume = np.stack([s[..., 1] for s in slices[:6]], axis=-1).transpose(1, 0, 2).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, AFFINE), str(root / "vol.nii.gz"))
    bad = root / "bad"
    bad.mkdir()
    good = (root / "slices" / "a.png").read_bytes()
    (bad / "truncated.png").write_bytes(good[: len(good) // 2])
    (bad / "empty.png").write_bytes(b"")
    (bad / "notes.txt").write_text("not a scan")
    nan = volume.copy()
    nan[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(nan, AFFINE), str(bad / "nan.nii.gz"))
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3, 4), np.float32), AFFINE), str(bad / "fourchannel.nii.gz"))
    return root


@pytest.fixture(scope="module")
def result(scans, tiny_artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    summary = segment([scans], tiny_artifacts, out, RunOptions(batch_size=4, readers=2))
    return out, summary


def test_good_scans_are_written_and_bad_ones_skipped_with_reasons(result):
    out, summary = result
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {r["key"] for r in rows} == {"slices/a", "slices/big", "slices/c", "patient", "vol"}
    assert summary.exit_code == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in summary.skipped}
    assert set(reasons) == {"truncated.png", "empty.png", "notes.txt", "nan.nii.gz", "fourchannel.nii.gz"}
    assert "unsupported file type" in reasons["notes.txt"]
    assert "NaN" in reasons["nan.nii.gz"] and "channels" in reasons["fourchannel.nii.gz"]
    stored = json.loads((out / "summary.json").read_text())
    assert stored["exit_code"] == 1 and len(stored["skipped"]) == 5
    assert stored["backend"]["backend"] == auto_backend()[0] and stored["precision"] == "int8"  # no TensorRT here
    assert set(stored["timings_s"]) == {"read", "infer", "write", "wall"}
    assert (out / "masks" / "slices" / "big.png").is_file() and (out / "overlays" / "patient").is_dir()
    assert cv2.imread(str(out / "masks" / "slices" / "big.png"), cv2.IMREAD_UNCHANGED).shape == (80, 80)


def test_masks_equal_the_ensemble_graphs_own_output_with_the_folders_post_processing(result, scans, tiny_artifacts):
    out, summary = result
    manifest = Manifest.load(tiny_artifacts)
    post = manifest.postprocessing
    assert summary.postprocessing["tta"] == post.tta and summary.postprocessing["components"] == post.components
    # the graph as the backend seg-run chose runs it (ONNX Runtime and OpenVINO differ in int8 rounding)
    image = cv2.cvtColor(cv2.imread(str(scans / "slices" / "a.png")), cv2.COLOR_BGR2RGB)[None]
    options = SegmenterOptions(backend=summary.backend["backend"], precision="int8", tta="none", components="none")
    with Segmenter(manifest, options) as plain:  # the graph alone; TTA and the component rule done here
        backend = plain.backend
        probability = backend.infer(image)["probability"][0, 0]
        if post.tta == "flip":
            mirrored = backend.infer(np.ascontiguousarray(image[:, :, ::-1]))["probability"][0, 0]
            probability = 0.5 * (probability + mirrored[:, ::-1])
    expected = post.refine((probability >= manifest.threshold)[None])[0]
    written = cv2.imread(str(out / "masks" / "slices" / "a.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written > 0, expected > 0)
    patient_masks = sorted((out / "masks" / "patient").glob("*.png"))
    assert len(patient_masks) == len([p for p in (scans / "patient").glob("*.tif") if "_mask" not in p.name])


def test_nifti_mask_keeps_the_inputs_affine_and_grid(result, scans):
    out, _ = result
    written = nib.load(str(out / "volumes" / "vol.nii.gz"))
    source = nib.load(str(scans / "vol.nii.gz"))
    np.testing.assert_allclose(written.affine, source.affine)
    assert written.shape == source.shape
    assert written.get_data_dtype() == np.uint8


def test_an_interrupted_run_continues_where_it_stopped(result, scans, tiny_artifacts, tmp_path):
    out, _ = result
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    (copy / ".rows" / "slices" / "c.json").unlink()  # as if killed before c was finished
    kept = (copy / "masks" / "slices" / "a.png").stat().st_mtime_ns
    summary = segment([scans], tiny_artifacts, copy, RunOptions(batch_size=4))
    assert summary.resumed == 4 and summary.done == 1
    assert (copy / "masks" / "slices" / "a.png").stat().st_mtime_ns == kept
    assert len(list(csv.DictReader((copy / "results.csv").open()))) == 5


def _other_threshold(tiny_artifacts: Path, folder: Path) -> Path:
    """A copy of the artifacts with another threshold: another model as far as the masks go, and
    another manifest sha256."""
    shutil.copytree(tiny_artifacts, folder)
    raw = json.loads((folder / "manifest.json").read_text())
    raw["threshold"] = round(raw["threshold"] * 0.5, 6)
    (folder / "manifest.json").write_text(json.dumps(raw, indent=2))
    return folder


def test_every_row_names_the_model_that_made_it(result, tiny_artifacts):
    out, summary = result
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert {row["manifest_sha256"] for row in rows} == {Manifest.load(tiny_artifacts).sha256}
    assert {row["precision"] for row in rows} == {summary.precision}
    assert {row["postprocessing"] for row in rows} == {summary.postprocessing["description"]}


def test_resuming_with_other_artifacts_or_post_processing_is_refused_and_overwrite_redoes_all(
        result, scans, tiny_artifacts, tmp_path):
    out, first = result
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    before = {p: p.read_bytes() for p in sorted((copy / "masks").rglob("*.png"))}
    other = _other_threshold(tiny_artifacts, tmp_path / "other")
    old_sha, other_sha = Manifest.load(tiny_artifacts).sha256, Manifest.load(other).sha256
    refused = f"other artifacts \\(manifest sha256\\): .* has {old_sha}, this run {other_sha}"
    with pytest.raises(ConfigError, match=refused):
        segment([scans], other, copy, RunOptions(batch_size=4))
    other_tta = "none" if "flip" in first.postprocessing["description"] else "flip"
    with pytest.raises(ConfigError, match="other post-processing"):
        segment([scans], tiny_artifacts, copy, RunOptions(batch_size=4, tta=other_tta))
    assert {p: p.read_bytes() for p in sorted((copy / "masks").rglob("*.png"))} == before  # nothing touched
    redone = segment([scans], other, copy, RunOptions(batch_size=4, overwrite=True))
    assert redone.resumed == 0 and redone.done == first.done
    rows = list(csv.DictReader((copy / "results.csv").open()))
    assert {row["manifest_sha256"] for row in rows} == {other_sha}
    again = segment([scans], other, copy, RunOptions(batch_size=4))  # the same model again: a plain resume
    assert again.done == 0 and again.resumed == redone.done


def test_rows_of_an_older_brainseg_that_name_no_model_are_not_resumed(result, scans, tiny_artifacts, tmp_path):
    out, _ = result
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    for record in (copy / ".rows").rglob("*.json"):
        row = json.loads(record.read_text())
        for name in outputs.MADE_BY:
            row.pop(name)
        record.write_text(json.dumps(row))
    with pytest.raises(ConfigError, match="not recorded \\(an older brainseg\\)"):
        segment([scans], tiny_artifacts, copy, RunOptions(batch_size=4))


def test_tampered_artifacts_are_refused_with_exit_code_2(scans, tiny_artifacts, tmp_path):
    art = tmp_path / "art"
    shutil.copytree(tiny_artifacts, art)
    with (art / "ensemble.fp32.onnx").open("ab") as handle:
        handle.write(b"\0")
    result = CliRunner().invoke(app, ["run", str(scans / "slices"), "--artifacts", str(art), "--out",
                                      str(tmp_path / "o"), "--no-progress"])
    assert result.exit_code == 2
    assert "sha256 differs" in result.output and "Traceback" not in result.output


def test_cli_exit_codes_zero_when_all_done_and_failed_precision_not_offered(scans, tiny_artifacts, tmp_path):
    args = ["run", str(scans / "slices"), "--artifacts", str(tiny_artifacts), "--out", str(tmp_path / "o"),
            "--no-progress", "--precision", "fp32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 scan(s)" in result.output
    result = CliRunner().invoke(app, [*args[:-1], "fp16"])
    assert result.exit_code == 2 and "fp16 was not exported" in result.output


def test_seg_run_never_imports_torch(scans, tiny_artifacts, tmp_path):
    done = run_without_torch("brainseg.cli:run_entry", [
        "seg-run", scans / "slices", "--artifacts", tiny_artifacts, "--out", tmp_path / "o", "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "results.csv").is_file()


def test_memory_stays_flat_over_thousands_of_slices(tiny_sample, tiny_artifacts, tmp_path, monkeypatch):
    """Peak Python-side memory over 2,000 slices stays within that of 200: the stages stream."""
    slice_ = _sample_slices(tiny_sample)[3]
    root = tmp_path / "many"
    first = _png(root / "s0.png", slice_).read_bytes()
    for index in range(1, 2000):
        (root / f"s{index}.png").write_bytes(first)
    monkeypatch.setattr(outputs, "write_scan", lambda out, data, pred, options: None)  # no disk I/O
    monkeypatch.setattr(outputs, "collect_rows", lambda out, scans: [])

    def peak(paths: list[Path]) -> int:
        tracemalloc.start()
        segment(paths, tiny_artifacts, tmp_path / "out", RunOptions(batch_size=8, overlays=False))
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    few = tmp_path / "few"
    few.mkdir()
    for path in sorted(root.iterdir())[:200]:
        shutil.copy(path, few / path.name)
    small, large = peak([few]), peak([root])
    assert large < 1.5 * small + 2_000_000, f"peak {large / 1e6:.1f} MB over 2,000 slices vs {small / 1e6:.1f} MB"


def test_a_dicom_series_is_segmented_into_a_nifti_on_the_scanners_grid(tiny_sample, tiny_artifacts, tmp_path):
    from scan_files import write_dicom

    slices = _sample_slices(tiny_sample)
    for index in range(3):  # stored values; the series' slope 2 and intercept -10 are applied on reading
        write_dicom(tmp_path / "dcm" / f"im{index}.dcm", slices[index][..., 1].astype(np.uint16) * 4, 5.0 * index,
                    "1.2.826.0.1.3680043.1", 9)
    summary = segment([tmp_path / "dcm"], tiny_artifacts, tmp_path / "out", RunOptions(batch_size=2))
    assert summary.exit_code == 0 and summary.done == 1
    written = nib.load(str(tmp_path / "out" / "volumes" / "dcm.nii.gz"))
    assert written.shape == (64, 64, 3) and written.get_data_dtype() == np.uint8  # (columns, rows, slices)
    # LPS position, orientation and spacing tags as RAS: columns 0.7 mm to the patient's left, rows 0.5 mm
    # posterior, slices 5 mm superior, first voxel at the origin
    np.testing.assert_allclose(written.affine, np.diag([-0.7, -0.5, 5.0, 1.0]), atol=1e-6)
    assert set(np.unique(np.asarray(written.dataobj))) <= {0, 1}
    row = next(csv.DictReader((tmp_path / "out" / "results.csv").open()))
    assert row["kind"] == "dicom" and float(row["tumour_volume_ml"] or 0) >= 0
    assert int(row["tumour_pixels"]) == int(np.asarray(written.dataobj).sum())
    # and the DICOM SEG beside it names the artifacts and points at the three source instances
    pydicom = pytest.importorskip("pydicom")
    seg = pydicom.dcmread(tmp_path / "out" / "volumes" / "dcm_seg.dcm")
    assert seg.Modality == "SEG" and Manifest.load(tiny_artifacts).sha256[:12] in seg.ContentDescription
    referenced = {item.ReferencedSOPInstanceUID for series in seg.ReferencedSeriesSequence
                  for item in series.ReferencedInstanceSequence}
    assert len(referenced) == 3


class _ReaderCrash(BaseException):
    """Not an Exception: what no reader may turn into a skipped scan."""


def test_a_reader_dying_while_the_queue_is_full_stops_the_run_instead_of_hanging(
        scans, tiny_artifacts, tmp_path, monkeypatch):
    real_load, real_infer = loading.load, Segmenter.infer

    def load(scan, spec, **limits):
        if scan.key == "c":  # keys are relative to the root given, scans/slices
            raise _ReaderCrash(f"reader crashed on {scan.key}")
        return real_load(scan, spec, **limits)

    def slow_infer(segmenter, batch):  # inference slower than reading keeps the queue full
        time.sleep(0.5)
        return real_infer(segmenter, batch)

    monkeypatch.setattr(loading, "load", load)
    monkeypatch.setattr(Segmenter, "infer", slow_infer)
    outcome = []

    def run_segment():
        try:
            segment([scans / "slices"], tiny_artifacts, tmp_path / "o",
                    RunOptions(batch_size=1, readers=1, queue_scans=1))
        except BaseException as err:  # noqa: BLE001 - the test inspects whatever ended the run
            outcome.append(err)

    thread = threading.Thread(target=run_segment, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "seg-run waited forever for a dead reader's end marker"
    assert len(outcome) == 1 and isinstance(outcome[0], _ReaderCrash)


def test_a_second_run_on_the_same_output_folder_is_refused_naming_the_first(scans, tiny_artifacts, tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from brainseg.runtime.batch.out_lock import OutputLock\n"
         f"with OutputLock({str(tmp_path / 'o')!r}):\n"
         "    print('locked', flush=True)\n"
         "    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(app, ["run", str(scans / "slices"), "--artifacts", str(tiny_artifacts),
                                          "--out", str(tmp_path / "o"), "--no-progress"])
        assert result.exit_code == 2
        assert "being written by another seg-run" in result.output and f"pid {holder.pid}" in result.output
        assert not (tmp_path / "o" / "results.csv").exists()
    finally:
        holder.kill()
        holder.wait()
    again = CliRunner().invoke(app, ["run", str(scans / "slices"), "--artifacts", str(tiny_artifacts),
                                     "--out", str(tmp_path / "o"), "--no-progress"])
    assert again.exit_code == 0, again.output  # the kernel dropped the killed holder's lock
