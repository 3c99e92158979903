"""The OpenVINO backend, run for real on this CPU: parity with ONNX Runtime, bf16's refusal, `auto`'s choice."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from brainseg.artifacts.manifest import Manifest
from brainseg.errors import ArtifactError, BrainsegError, ConfigError
from brainseg.runtime import backends
from brainseg.runtime.backends import auto_backend
from brainseg.runtime.segmenter import Segmenter, SegmenterOptions

pytest.importorskip("onnxruntime")
pytest.importorskip("openvino", reason="needs the openvino extra")

from brainseg.runtime.backends.onnxruntime import OnnxRuntimeBackend  # noqa: E402
from brainseg.runtime.backends.openvino import OpenVinoBackend, is_x86, native_bf16  # noqa: E402

# Stated tolerances against ONNX Runtime on the same file. fp32: both compute in f32, summing in
# different orders. int8: the two runtimes requantise between Q/DQ pairs differently (ORT fuses
# into integer kernels, OpenVINO's low-precision transformations choose their own), so a pixel at
# the threshold may flip. Measured on the tiny fixture: fp32 max 6e-7. int8 on sample version 1's
# fixture (a two-network graph): max 0.035, mean 0.002, masks 0.9998 alike; on version 2's (the
# front ships the tiny U-Net alone, whose activations sit closer to the quantisation steps, on these
# noise slices): max 0.148, mean 0.021, masks 0.968 alike. The int8 bounds are those, rounded up; the
# Dice of each runtime's run is gated separately by the export (int8-cpu@openvino).
PARITY = {"fp32": {"max_abs": 1e-4, "mean_abs": 1e-6, "masks_agree": 0.9999},
          "int8": {"max_abs": 0.2, "mean_abs": 0.03, "masks_agree": 0.95}}


def _slices(manifest: Manifest, count: int = 6) -> np.ndarray:
    spec = manifest.input
    rng = np.random.default_rng(3)
    noise = rng.normal(0, 1, (count, spec.height // 4, spec.width // 4, spec.channels)).astype(np.float32)
    smooth = np.stack([np.kron(n, np.ones((4, 4, 1), np.float32)) for n in noise])
    return np.clip(110 + 60 * smooth, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_openvino_matches_onnxruntime_on_the_same_file(tiny_artifacts, precision):
    manifest = Manifest.load(tiny_artifacts)
    path = manifest.path_for(precision, "cpu")
    batch = _slices(manifest)
    with OpenVinoBackend(path, precision, threads=2) as ov, \
            OnnxRuntimeBackend(path, precision, provider="CPUExecutionProvider", threads=2,
                               spinning=False) as ort:
        ours, reference = ov.infer(batch), ort.infer(batch)
        one = ov.infer(batch[:1])  # the batch dimension is dynamic: another size, same graph
        described = ov.describe()
    assert set(ours) == set(reference) == {"probability", "mask", "disagreement"}
    for name in ours:
        assert ours[name].shape == reference[name].shape and ours[name].dtype == reference[name].dtype
    limits = PARITY[precision]
    difference = np.abs(ours["probability"] - reference["probability"])
    assert difference.max() <= limits["max_abs"] and difference.mean() <= limits["mean_abs"]
    assert (ours["mask"] == reference["mask"]).mean() >= limits["masks_agree"]
    np.testing.assert_array_equal(one["mask"], ours["mask"][:1])
    assert described["compute"] == "f32" and described["threads"] == 2 and described["file"] == path.name


def test_a_second_call_does_not_overwrite_the_first_calls_results(tiny_artifacts):
    # OpenVINO can hand back views of the request's own output buffers, which its next call fills
    # again: the first results must stay what they were when they were returned
    manifest = Manifest.load(tiny_artifacts)
    first_batch = _slices(manifest, 4)
    second_batch = (255 - first_batch).copy()  # another input of the same shape: other outputs
    with OpenVinoBackend(manifest.path_for("fp32", "cpu"), "fp32", threads=1) as ov:
        first = ov.infer(first_batch)
        kept = {name: array.copy() for name, array in first.items()}
        second = ov.infer(second_batch)
    assert not np.array_equal(second["probability"], kept["probability"]), "the two inputs gave the same outputs"
    for name in first:
        np.testing.assert_array_equal(first[name], kept[name], err_msg=f"{name} changed under the second call")


def test_a_batch_of_the_wrong_form_is_refused(tiny_artifacts):
    manifest = Manifest.load(tiny_artifacts)
    with OpenVinoBackend(manifest.path_for("fp32", "cpu"), "fp32") as ov:
        with pytest.raises(ValueError, match="the graph takes uint8"):
            ov.infer(np.zeros((1, 4, 4, 3), np.uint8))


def test_a_file_that_is_not_onnx_is_an_error_naming_it(tmp_path):
    broken = tmp_path / "ensemble.fp32.onnx"
    broken.write_bytes(b"not a graph")
    with pytest.raises(ArtifactError, match="ensemble.fp32.onnx: OpenVINO cannot compile it"):
        OpenVinoBackend(broken, "fp32")
    with pytest.raises(BrainsegError, match="not found"):
        OpenVinoBackend(tmp_path / "absent.onnx", "fp32")


@pytest.mark.skipif(native_bf16(), reason="this CPU has native bf16: the refusal cannot happen here")
def test_bf16_is_refused_on_a_cpu_without_native_bf16(tiny_artifacts):
    # OpenVINO itself would quietly compute in f32 here; the backend says so instead of mislabelling
    manifest = Manifest.load(tiny_artifacts)
    with pytest.raises(ConfigError, match="bf16 needs a CPU with native bf16"):
        OpenVinoBackend(manifest.path_for("fp32", "cpu"), "bf16")


@pytest.mark.skipif(not native_bf16(), reason="this CPU has no native bf16 (AVX512-BF16 or AMX)")
def test_bf16_runs_in_bf16_where_the_cpu_has_it(tiny_artifacts):
    manifest = Manifest.load(tiny_artifacts)
    with OpenVinoBackend(manifest.path_for("fp32", "cpu"), "bf16") as ov:
        assert ov.describe()["compute"] == "bf16"
        assert ov.infer(_slices(manifest))["mask"].dtype == np.uint8


def test_the_export_scores_the_cpu_files_as_openvino_runs_them(tiny_artifacts):
    manifest = Manifest.load(tiny_artifacts)  # exported here, where the openvino extra is installed
    for precision, row in (("fp32", "fp32@openvino"), ("int8", "int8-cpu@openvino")):
        assert row in manifest.accuracy_table and row in manifest.test_table
        assert manifest.openvino_passed(precision) is manifest.accuracy_table[row]["passed"]
        assert manifest.dice(precision, "cpu", "test", runtime="openvino") == manifest.test_table[row]["dice_mean"]
    assert manifest.dice("int8", "cpu", "test") == manifest.test_table["int8-cpu"]["dice_mean"]  # ONNX Runtime's


def test_auto_takes_openvino_on_an_x86_cpu_where_its_run_passed_the_gate(tiny_artifacts, monkeypatch):
    monkeypatch.setattr(backends, "tensorrt_present", lambda: False)
    manifest = Manifest.load(tiny_artifacts)
    with Segmenter(manifest, SegmenterOptions(threads=1)) as segmenter:
        choice = segmenter.choice
        assert (choice.precision, choice.file) == ("int8", "ensemble.int8-cpu.onnx")
        if is_x86() and manifest.openvino_passed("int8"):
            assert choice.backend == "openvino" and "x86 CPU" in choice.reason
            assert segmenter.describe()["threads"] == 1 and auto_backend()[0] == "openvino"
        else:
            assert choice.backend == "onnxruntime"
    with Segmenter(manifest, SegmenterOptions(backend="onnxruntime")) as segmenter:
        assert segmenter.choice.backend == "onnxruntime"
    if manifest.openvino_passed("fp32"):
        with Segmenter(manifest, SegmenterOptions(backend="openvino", precision="fp32")) as segmenter:
            choice = segmenter.choice
            assert (choice.backend, choice.file, choice.reason) == ("openvino", "ensemble.fp32.onnx",
                                                                    "OpenVINO, as asked")
    if manifest.openvino_passed("fp32") or manifest.openvino_passed("int8"):
        with pytest.raises(ConfigError, match="fp16 was not exported"):  # the fixture exports fp32 and int8
            Segmenter(manifest, SegmenterOptions(backend="openvino", precision="fp16"))


def test_a_folder_whose_files_were_not_scored_on_openvino_runs_on_onnxruntime(tiny_artifacts, tmp_path, monkeypatch):
    # as a folder exported where OpenVINO was not installed: no OpenVINO rows
    shutil.copytree(tiny_artifacts, tmp_path / "art")
    raw = json.loads((tmp_path / "art" / "manifest.json").read_text())
    for entry in raw["precisions"].values():
        entry["targets"].get("cpu", {}).pop("openvino_row", None)
    (tmp_path / "art" / "manifest.json").write_text(json.dumps(raw))
    monkeypatch.setattr(backends, "tensorrt_present", lambda: False)
    manifest = Manifest.load(tmp_path / "art")
    with Segmenter(manifest) as segmenter:
        assert segmenter.choice.backend == "onnxruntime"
    with pytest.raises(ConfigError, match="no file was scored as OpenVINO runs it"):
        Segmenter(manifest, SegmenterOptions(backend="openvino"))


def test_without_the_extra_auto_uses_onnxruntime_and_openvino_alone_names_the_extra(tiny_artifacts):
    # a fresh interpreter in which `import openvino` fails, as on a machine without the extra
    script = f"""
import sys
sys.modules["openvino"] = None
from brainseg.artifacts.manifest import Manifest
from brainseg.errors import BrainsegError
from brainseg.runtime import backends
from brainseg.runtime.segmenter import Segmenter, SegmenterOptions
backends.tensorrt_present = lambda: False
manifest = Manifest.load({str(tiny_artifacts)!r})
print(Segmenter(manifest).choice.backend)
try:
    Segmenter(manifest, SegmenterOptions(backend="openvino"))
except BrainsegError as err:
    print(err)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert lines[0] == "onnxruntime"
    assert "openvino" in lines[1] and "brainseg[openvino]" in lines[1]
