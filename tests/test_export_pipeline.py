"""seg-export end to end on a tiny trained run: files, manifest, gate, TensorRT-readiness, atomicity."""

import json

import pytest
from typer.testing import CliRunner

from brainseg.cli import app
from brainseg.export import manifest as mf
from brainseg.export import pipeline
from brainseg.export.pipeline import ExportOptions, export_run

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def artifacts(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("artifacts") / "tiny"
    result = export_run(tiny_run, out, ExportOptions(fp16=True, int8=True, calib_slices=16, max_dice_drop=1.0))
    return out, result


def test_every_file_is_in_the_manifest_with_its_hash(artifacts):
    out, _ = artifacts
    manifest = mf.load_manifest(out)  # verifies every sha256
    expected = {f"{m}.fp32.onnx" for m in ("unet", "fpn", "resunet")} | {
        f"ensemble.{p}.onnx" for p in ("fp32", "fp16", "int8", "int8-cpu")}
    assert set(manifest["files"]) == expected
    assert (out / "accuracy.md").read_text().startswith("# Accuracy of the exported ensemble")
    assert manifest["input"]["dtype"] == "uint8" and manifest["input"]["height"] == 64
    assert len(manifest["ensemble"]["weights"]) == 3 and sum(manifest["ensemble"]["weights"]) == pytest.approx(1)
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "staging folder left behind"


def test_accuracy_table_and_fp32_parity(artifacts):
    out, result = artifacts
    assert set(result.table) == {"pytorch-fp32", "fp32", "fp16", "int8", "int8-cpu"}
    accuracy = json.loads((out / mf.MANIFEST).read_text())["accuracy"]
    for name, value in accuracy["fp32_parity_max_abs"].items():
        assert value < 1e-4, f"{name}: ONNX Runtime FP32 differs from PyTorch by {value}"
    assert result.table["fp32"]["dice_drop"] == pytest.approx(0.0, abs=1e-3)


def test_int8_has_a_tensorrt_file_and_a_cpu_file_gated_together(artifacts):
    out, result = artifacts
    manifest = mf.load_manifest(out)
    int8 = manifest["precisions"]["int8"]
    assert int8["files"] == {"gpu": "ensemble.int8.onnx", "cpu": "ensemble.int8-cpu.onnx"}
    assert manifest["files"]["ensemble.int8.onnx"]["target"] == "tensorrt"
    assert manifest["files"]["ensemble.int8-cpu.onnx"]["target"] == "onnxruntime-cpu"
    assert manifest["graph_notes"]["ensemble.int8.onnx"]["activation_type"] == "int8_symmetric"
    assert manifest["graph_notes"]["ensemble.int8-cpu.onnx"]["activation_type"] == "uint8"
    assert int8["cpu"]["dice_mean"] == result.table["int8-cpu"]["dice_mean"]
    table = {name: dict(row) for name, row in result.table.items()}
    table["int8-cpu"]["passed"] = False
    assert pipeline._precisions(table)["int8"]["passed"] is False


def test_every_graph_is_buildable_by_tensorrt(artifacts):
    out, _ = artifacts
    checks = json.loads((out / mf.MANIFEST).read_text())["tensorrt"]
    for name, check in checks.items():
        assert check["unsupported_ops"] == {}, f"{name} has ops TensorRT's parser lacks: {check['unsupported_ops']}"
        assert check["qdq_problems"] == [], f"{name}: {check['qdq_problems']}"


def test_the_gate_fails_a_precision_beyond_the_budget(tiny_run, tmp_path):
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(tmp_path / "a"), "--max-dice-drop", "-1"])
    assert result.exit_code == 1
    assert "lost more than -1.0 Dice" in result.output
    manifest = mf.load_manifest(tmp_path / "a")
    assert manifest["precisions"]["fp32"]["passed"] is False
    assert mf.usable_precisions(manifest) == []


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
