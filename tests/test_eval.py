"""seg-eval over the tiny exported artifacts: parity with seg-run's masks, HD95 conventions, bad data, outputs."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from no_torch import run_without_torch
from typer.testing import CliRunner

from brainseg import metrics
from brainseg.cli import app
from brainseg.data.readers import read_dataset
from brainseg.data.split import load_split
from brainseg.errors import BrainsegError, ConfigError, DataError
from brainseg.evaluation import evaluate as evaluate_module
from brainseg.evaluation import report as report_module
from brainseg.evaluation.evaluate import EvalOptions, evaluate
from brainseg.evaluation.report import hd95_line
from brainseg.runtime.batch.pipeline import RunOptions, segment

pytest.importorskip("onnxruntime")

SLICES = 6  # per patient in the tiny sample (tests/conftest.py)
UNDEFINED = "undefined: tumour in only one of truth and prediction"


def _eval_args(data: Path, artifacts: Path, out: Path, *more: str) -> list[str]:
    return ["eval", str(data), "--artifacts", str(artifacts), "--out", str(out), "--no-progress", *more]


@pytest.fixture(scope="module")
def evaluated(tiny_sample, tiny_artifacts, tmp_path_factory):
    """`brainseg eval` on every patient of the tiny sample: (out folder, CLI result, report.json)."""
    out = tmp_path_factory.mktemp("eval") / "report"
    result = CliRunner().invoke(app, _eval_args(tiny_sample, tiny_artifacts, out, "--split", "all"))
    assert result.exit_code == 0, result.output
    return out, result, json.loads((out / "report.json").read_text())


def test_per_patient_dice_equals_the_dice_of_the_masks_seg_run_writes(evaluated, tiny_sample, tiny_artifacts,
                                                                     tmp_path):
    _, _, report = evaluated
    scored = {row["patient_id"]: row["dice"] for row in report["per_patient"] if row["has_tumour"]}
    assert len(scored) >= 2, "the tiny sample should have patients with tumour"
    # batches of exactly one patient's slices, as seg-eval runs them, so both see the same batches
    segment([tiny_sample / patient for patient in scored], tiny_artifacts, tmp_path / "run",
            RunOptions(overwrite=True, batch_size=SLICES))
    written = {path.stem: path for path in (tmp_path / "run" / "masks").rglob("*.png")}
    truth = {volume.patient_id: volume for volume in read_dataset(tiny_sample).volumes}
    for patient, dice in scored.items():
        volume = truth[patient]
        predicted = np.stack([cv2.imread(str(written[name]), cv2.IMREAD_UNCHANGED) > 0 for name in volume.slice_names])
        assert metrics.dice(predicted, volume.mask[..., 0] > 0) == pytest.approx(dice, abs=1e-3), patient


def test_hd95_mean_is_over_defined_cases_with_the_undefined_count_next_to_it():
    def score(patient, dice, hd95, predicted=True):
        return metrics.PatientScore(patient, dice, dice, hd95, has_tumour=True, predicted_tumour=predicted,
                                    tumour_slices=3, empty_slices=2, detected_slices=3 if predicted else 0,
                                    false_positive_slices=0)

    summary = metrics.summarize([score("A", 0.8, 2.0), score("B", 0.6, 4.0), score("C", 0.0, math.nan, False)])
    assert summary["hd95_undefined"] == 1
    assert summary["hd95"]["mean"] == pytest.approx(3.0)
    assert hd95_line(summary, "voxels").startswith(f"HD95 mean 3.000 voxels (1 {UNDEFINED})")


def test_a_missed_tumour_is_counted_as_undefined_hd95_end_to_end(tiny_sample, tiny_artifacts, tmp_path, monkeypatch):
    real = evaluate_module.Segmenter.predict
    calls = []

    def miss_the_first_patient(segmenter, image):
        prediction = real(segmenter, image)
        calls.append(image)
        if len(calls) > 1:
            return prediction
        return dataclasses.replace(prediction, mask=np.zeros_like(prediction.mask))

    monkeypatch.setattr(evaluate_module.Segmenter, "predict", miss_the_first_patient)
    report = evaluate(tiny_sample, tiny_artifacts, tmp_path / "out", EvalOptions(split="all")).report
    rows = {row["patient_id"]: row for row in report["per_patient"]}
    missed = rows[report["patient_ids"][0]]
    assert missed["has_tumour"] and missed["dice"] == 0.0 and missed["hd95"] is None
    undefined = [row for row in rows.values() if row["has_tumour"] and row["hd95"] is None]
    defined = [row["hd95"] for row in rows.values() if row["has_tumour"] and row["hd95"] is not None]
    assert report["hd95_undefined"] == len(undefined) >= 1
    assert report["hd95"]["mean"] == (pytest.approx(float(np.mean(defined))) if defined else None)
    line = next(line for line in (tmp_path / "out" / "report.md").read_text().splitlines() if "HD95 mean" in line)
    assert f"voxels ({len(undefined)} {UNDEFINED})" in line
    assert f"HD95 mean {np.mean(defined):.3f} voxels" in line if defined else "HD95 mean n/a" in line


def test_data_without_any_masks_is_a_one_line_error_naming_the_folder(tiny_sample, tiny_artifacts, tmp_path):
    data = tmp_path / "unlabelled"
    shutil.copytree(tiny_sample, data, ignore=shutil.ignore_patterns("*_mask.tif"))
    result = CliRunner().invoke(app, _eval_args(data, tiny_artifacts, tmp_path / "out"))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(data) in errors[0] and "masks" in errors[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "report.json").exists()


def test_a_patient_without_masks_is_listed_as_unlabelled_and_not_scored(tiny_sample, tiny_artifacts, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_sample, data)
    patient = sorted(p for p in data.iterdir() if p.is_dir())[0]
    for mask in patient.glob("*_mask.tif"):
        mask.unlink()
    report = evaluate(data, tiny_artifacts, tmp_path / "out", EvalOptions(split="all")).report
    assert [entry["patient_id"] for entry in report["unlabelled"]] == [patient.name]
    assert patient.name not in report["patient_ids"]
    assert patient.name not in {row["patient_id"] for row in report["per_patient"]}
    assert report["patients"] == len(report["per_patient"]) == len([p for p in data.iterdir() if p.is_dir()]) - 1
    unlabelled_section = (tmp_path / "out" / "report.md").read_text().split("## Unlabelled patients")[1]
    assert f"- {patient.name}: " in unlabelled_section


def test_the_cli_writes_the_report_plot_and_overlays(evaluated):
    out, result, report = evaluated
    assert "Per-patient Dice" in result.output and "report.md" in result.output
    assert isinstance(report["dice_mean"], float) and report["per_patient"]
    assert all({"patient_id", "dice"} <= set(row) for row in report["per_patient"])
    assert report["conventions"] == metrics.CONVENTIONS and report["manifest_sha256"]
    assert report["postprocessing"]["description"] and report["backend"]["reason"]
    text = (out / "report.md").read_text()
    for expected in ("Per-patient Dice over patients with tumour", UNDEFINED, "Empty-slice false-positive rate",
                     "Tumour-slice detection rate", "## Per patient, worst first", "## Unlabelled patients"):
        assert expected in text
    plot = cv2.imread(str(out / "dice_per_patient.png"))
    assert plot is not None and plot.shape[0] > 100
    overlays = sorted((out / "overlays").glob("*.png"))
    assert 1 <= len(overlays) <= 3 and len(overlays) == len(report["overlays"])
    for path in overlays:
        picture = cv2.imread(str(path))  # BGR
        assert picture is not None and picture.shape == (64, 64, 3)
        assert (picture == (0, 255, 0)).all(axis=-1).any(), f"{path.name}: no truth outline in green"


def test_without_matplotlib_the_plot_is_left_out_with_a_note(tiny_sample, tiny_artifacts, tmp_path, monkeypatch):
    def missing(module, extra, **_):
        raise BrainsegError(f"{module} is not installed; install it with: pip install 'brainseg[{extra}]'")

    monkeypatch.setattr(report_module, "require", missing)
    result = evaluate(tiny_sample, tiny_artifacts, tmp_path / "out", EvalOptions(split="all"))
    assert not (tmp_path / "out" / "dice_per_patient.png").exists()
    assert result.report["plot"] is None
    assert "matplotlib is not installed" in (tmp_path / "out" / "report.md").read_text()


def test_the_default_split_is_the_source_runs_test_patients(tiny_sample, tiny_artifacts, tiny_run, tmp_path):
    report = evaluate(tiny_sample, tiny_artifacts, tmp_path / "out").report
    assert report["split"] == "test"
    assert report["patient_ids"] == load_split(tiny_run / "split.json").test


def test_the_split_and_reader_settings_come_from_the_manifest_not_the_run_folder(tiny_sample, tiny_artifacts,
                                                                                  tiny_run, tmp_path):
    moved = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["source_run"]["path"] = str(tmp_path / "elsewhere")  # the run folder is not on this machine
    (moved / "manifest.json").write_text(json.dumps(manifest))
    report = evaluate(tiny_sample, moved, tmp_path / "out", EvalOptions(split="val")).report
    assert report["patient_ids"] == load_split(tiny_run / "split.json").val
    assert report["data_settings"]["source"] == "the artifacts' manifest"
    # a folder exported before the reader settings were recorded, whose run is gone: read_dataset's defaults
    del manifest["source_run"]["reader"]
    (moved / "manifest.json").write_text(json.dumps(manifest))
    patient = sorted(p.name for p in tiny_sample.iterdir() if p.is_dir())[0]
    report = evaluate(tiny_sample, moved, tmp_path / "out2", EvalOptions(patients=(patient,))).report
    assert report["patient_ids"] == [patient] and report["split"] == "patients"
    assert "read_dataset defaults" in report["data_settings"]["source"]


def test_unknown_patients_and_a_used_out_folder_are_refused(tiny_sample, tiny_artifacts, tmp_path):
    with pytest.raises(DataError, match="2 patient.* not in .*: NOPE_1, NOPE_2"):
        evaluate(tiny_sample, tiny_artifacts, tmp_path / "a", EvalOptions(patients=("NOPE_1", "NOPE_2")))
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty; pass --overwrite"):
        evaluate(tiny_sample, tiny_artifacts, tmp_path / "used", EvalOptions(split="all"))


def test_seg_eval_never_imports_torch(tiny_sample, tiny_artifacts, tmp_path):
    done = run_without_torch("brainseg.evaluation.cli:eval_entry", [
        "seg-eval", tiny_sample, "--artifacts", tiny_artifacts, "--out", tmp_path / "o", "--split", "all",
        "--no-progress"])
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "o" / "report.json").is_file()
