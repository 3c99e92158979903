"""seg-export end to end on a tiny trained run: files, manifest, gate, TensorRT-readiness, atomicity."""

import copy
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from brainseg.artifacts.manifest import Manifest
from brainseg.artifacts.sessions import ort_session, run
from brainseg.cli import app
from brainseg.errors import is_installed
from brainseg.export import accuracy, pipeline, precision, record
from brainseg.export.pipeline import ExportOptions, export_run
from brainseg.export.trained_run import load_run, split_volumes

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def artifacts(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    # --deploy ensemble: every member, as before the front (tiny_artifacts ships what the front picks).
    # Gated at 0.01 as tiny_artifacts is (conftest.py says why): with numpy 2.2, which panoptica's pin
    # brings, the tiny run's int8 files move its one validation patient by 0.0065; the default gate's
    # failing path is test_the_gate_fails_a_precision_beyond_the_budget's
    result = export_run(tiny_run, out, ExportOptions(fp16=True, int8=True, calib_slices=16, deploy="ensemble",
                                                     max_dice_drop=0.01))
    return out, result


def test_every_file_is_in_the_manifest_with_its_hash(artifacts):
    out, _ = artifacts
    manifest = Manifest.load(out)  # verifies every sha256
    expected = {f"{m}.fp32.onnx" for m in ("unet", "fpn", "resunet", "student")} | {
        f"ensemble.{p}.onnx" for p in ("fp32", "fp16", "int8", "int8-cpu")}
    assert set(manifest.files) == expected
    assert (out / "accuracy.md").read_text().startswith("# Accuracy of the shipped graph")
    assert manifest.input.dtype == "uint8" and manifest.input.size == (64, 64)
    weights = manifest.ensemble["weights"]
    assert len(weights) == 3 and sum(weights) == pytest.approx(1)
    deployment = manifest.deployment
    assert deployment.candidate in ("ensemble", "ensemble/flip") and deployment.networks == ["unet", "fpn", "resunet"]
    assert deployment.timed == "" and all(row["ms_per_slice"] is None for row in deployment.front)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"
    from brainseg.fileio import FILE_MODE

    modes = {path.name: path.stat().st_mode & 0o777 for path in out.iterdir() if path.is_file()}
    assert modes == dict.fromkeys(modes, FILE_MODE)  # graphs too: a server running as another user must read them


def test_accuracy_table_and_fp32_parity(artifacts):
    out, result = artifacts
    openvino = {"fp32@openvino", "int8-cpu@openvino"} if is_installed("openvino") else set()  # as it runs there
    assert set(result.table) == {"pytorch-fp32", "fp32", "fp16", "int8", "int8-cpu"} | openvino
    accuracy = json.loads(Manifest.load(out).path.read_text())["accuracy"]
    for name, value in accuracy["fp32_parity_max_abs"].items():
        assert value < 1e-4, f"{name}: ONNX Runtime FP32 differs from PyTorch by {value}"
    assert result.table["fp32"]["dice_drop"] == pytest.approx(0.0, abs=1e-3)


def test_the_shipped_files_are_scored_on_the_test_patients_too(artifacts, tiny_run):
    out, result = artifacts
    manifest = Manifest.load(out)
    run_ = load_run(tiny_run)
    assert run_.split.test and not set(run_.split.test) & set(run_.split.val)
    assert set(manifest.test_table) == set(manifest.accuracy_table) == set(result.test_table)
    assert all("passed" not in row for row in manifest.test_table.values()), "the gate belongs to validation"
    assert manifest.accuracy_facts["test_patients"] == len(run_.split.test)
    report = (out / "accuracy.md").read_text()
    assert "## Validation patients" in report and "## Held-out test patients" in report
    # the test row of the file seg-run uses on a CPU is that file run as seg-run runs it
    from brainseg.metrics import headline_dice, score_volumes
    from brainseg.runtime.segmenter import Segmenter, SegmenterOptions

    with Segmenter(manifest, SegmenterOptions(threads=1)) as segmenter:
        assert segmenter.choice.file == "ensemble.int8-cpu.onnx"
        runtime = "openvino" if segmenter.choice.backend == "openvino" else None  # auto's runtime: its own row
        volumes = pipeline.split_volumes(run_, "test")
        masks = [segmenter.predict(v.image).mask for v in volumes]
    expected = headline_dice(score_volumes(volumes, [m.astype(np.float32) for m in masks], threshold=0.5))
    assert manifest.dice("int8", "cpu", split="test", runtime=runtime) == pytest.approx(expected, abs=1e-3)
    assert manifest.postprocessing_choice["decided_on"].startswith("validation Dice")


def test_int8_has_a_tensorrt_file_and_a_cpu_file_gated_together(artifacts):
    out, result = artifacts
    manifest = Manifest.load(out)
    assert (manifest.file_for("int8", "gpu"), manifest.file_for("int8", "cpu")) == (
        "ensemble.int8.onnx", "ensemble.int8-cpu.onnx")
    assert manifest.files["ensemble.int8.onnx"].target == "gpu"
    assert manifest.files["ensemble.int8-cpu.onnx"].target == "cpu"
    assert manifest.graph_notes["ensemble.int8.onnx"]["activation_type"] == "int8_symmetric"
    assert manifest.graph_notes["ensemble.int8-cpu.onnx"]["activation_type"] == "uint8"
    assert manifest.dice("int8", "cpu") == result.table["int8-cpu"]["dice_mean"]
    table = {name: dict(row) for name, row in result.table.items()}
    table["int8-cpu"]["passed"] = False
    assert record.gated_precisions(table, ("gpu", "cpu"))["int8"].passed is False


def test_every_graph_is_buildable_by_tensorrt(artifacts):
    out, _ = artifacts
    checks = json.loads(Manifest.load(out).path.read_text())["tensorrt"]
    for name, check in checks.items():
        assert check["unsupported_ops"] == {}, f"{name} has ops TensorRT's parser lacks: {check['unsupported_ops']}"
        assert check["qdq_problems"] == [], f"{name}: {check['qdq_problems']}"


def test_the_gate_fails_a_precision_beyond_the_budget(tiny_run, tmp_path):
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(tmp_path / "a"), "--max-dice-drop", "-1",
                                      "--deploy", "ensemble"])
    assert result.exit_code == 1
    assert "lost more than -1.0 Dice" in result.output
    manifest = Manifest.load(tmp_path / "a")
    assert manifest.passed("fp32") is False
    assert manifest.usable_precisions() == []


def test_an_interrupted_export_leaves_nothing_that_looks_valid(tiny_run, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed during quantization")

    monkeypatch.setattr(pipeline.precision, "quantize_int8", crash)
    with pytest.raises(KeyboardInterrupt):
        export_run(tiny_run, tmp_path / "art", ExportOptions(int8=True, simplify=False))
    assert list(tmp_path.iterdir()) == []


def test_bad_run_folder_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(tmp_path / "a")])
    assert result.exit_code == 1
    assert "not a seg-train run folder" in result.output and "Traceback" not in result.output


def test_existing_artifacts_are_not_replaced_without_overwrite(artifacts, tiny_run):
    out, _ = artifacts
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(out)])
    assert result.exit_code == 1 and "pass --overwrite" in result.output


class _Silenced(torch.nn.Module):
    """A member whose logits are pushed far below zero: it finds no tumour anywhere."""

    def __init__(self, member: torch.nn.Module) -> None:
        super().__init__()
        self.member = member

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.member(x) - 30.0


@pytest.fixture(scope="module")
def broken_fp16(tiny_run, tmp_path_factory):
    """An export whose fp16 file really loses Dice (its members were silenced before tracing), and
    whose int8 was asked for the CPU alone (--int8-activations uint8)."""
    real_export_fp16 = precision.export_fp16

    def export_silenced_fp16(graph, path, **kwargs):
        broken = copy.deepcopy(graph)
        broken.members = torch.nn.ModuleList(_Silenced(m) for m in broken.members)
        return real_export_fp16(broken, path, **kwargs)

    out = tmp_path_factory.mktemp("broken") / "art"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline.precision, "export_fp16", export_silenced_fp16)
        result = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(out), "--fp16", "--int8",
                                          "--int8-activations", "uint8", "--calib-slices", "16",
                                          "--deploy", "ensemble"])  # no front to time: not what it tests
    return out, result


def test_a_precision_that_loses_dice_fails_the_gate_and_is_refused_downstream(broken_fp16, tiny_sample, tmp_path):
    out, result = broken_fp16
    manifest = Manifest.load(out)
    table = manifest.accuracy_table
    assert table["pytorch-fp32"]["dice_mean"] > 0.1, "the tiny model must find tumours for this test to mean much"
    assert table["fp16"]["dice_mean"] < 0.01 and not table["fp16"]["passed"]
    (error,) = [line for line in result.output.splitlines() if line.startswith("error: ")]
    # fp16 is named among what failed (int8 for the CPU may join it: the tiny run is a borderline int8 case)
    assert result.exit_code == 1 and "lost more than 0.005 Dice" in error and "fp16" in error.split(" lost")[0]
    assert not manifest.passed("fp16") and "fp16" not in manifest.usable_precisions()
    assert manifest.passed("fp32")
    patient = next(p for p in sorted(tiny_sample.iterdir()) if p.is_dir())
    run = CliRunner().invoke(app, ["run", str(patient), "--artifacts", str(out), "--out", str(tmp_path / "o"),
                                   "--precision", "fp16", "--no-progress"])
    assert run.exit_code == 2 and "fp16 failed the export's accuracy gate" in run.output


def test_int8_for_the_cpu_alone_has_no_gpu_file_and_no_engine(broken_fp16):
    out, _ = broken_fp16
    manifest = Manifest.load(out)
    assert manifest.file_for("int8", "cpu") == "ensemble.int8-cpu.onnx"
    assert not manifest.has_file("int8", "gpu") and not (out / "ensemble.int8.onnx").exists()
    assert manifest.graph_notes["ensemble.int8-cpu.onnx"]["activation_type"] == "uint8"
    engine = CliRunner().invoke(app, ["export-engine", str(out), "--precision", "int8"])
    assert engine.exit_code == 1 and "int8 has no GPU file" in engine.output


def test_int8_segments_like_fp32_on_the_validation_patients(artifacts, tiny_run):
    """Independently of the gate: the CPU int8 file's masks agree with fp32's, and its Dice is close."""
    out, _ = artifacts
    manifest = Manifest.load(out)
    volumes = split_volumes(load_run(tiny_run), "val")
    probabilities = {}
    for precision_name in ("fp32", "int8"):
        session = ort_session(manifest.path_for(precision_name, "cpu"))
        predict = lambda images, s=session: run(s, {"image": images})["probability"]  # noqa: E731
        probabilities[precision_name] = accuracy.predict_volumes(predict, volumes, img_size=manifest.input.height)
    masks = {name: np.concatenate([p >= manifest.threshold for p in probs]) for name, probs in probabilities.items()}
    assert 0.001 < masks["fp32"].mean() < 0.5, "fp32 must find some tumour and not everything"
    assert (masks["int8"] == masks["fp32"]).mean() >= 0.99
    dice = {name: accuracy.accuracy_row(volumes, probs, threshold=manifest.threshold)["dice_mean"]
            for name, probs in probabilities.items()}
    # one validation patient at 64 px: on sample version 2 int8 cost it 0.013 with 99% of pixels agreeing
    assert dice["fp32"] - dice["int8"] <= 0.02, dice
