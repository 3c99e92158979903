"""seg-export's own TensorRT engines (--engine auto|yes|no): which are built and the line saying why, and an
engine built by the export scored through the same accuracy gate as the ONNX files.

The decision is pure and tested for every case. TensorRT cannot be installed here, so the export's
build-and-score step runs against the project's stand-ins: test_tensorrt_build's builder and
tensorrt_standins' runtime and CUDA, whose engine here computes what the ONNX file it was built
from computes (ONNX Runtime), or, for the int8 engine, the opposite, so that it must fail the gate.
"""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import tensorrt_standins as standins
from test_tensorrt_build import fake_tensorrt as fake_builder
from typer.testing import CliRunner

from brainseg.artifacts import cuda
from brainseg.artifacts.layout import provenance_file
from brainseg.artifacts.manifest import Manifest
from brainseg.artifacts.provenance import DEFAULT_BATCH
from brainseg.artifacts.sessions import ort_session, run
from brainseg.cli import app
from brainseg.deploy.engine_choice import (
    EngineChoice,
    Host,
    check_request,
    choose_engines,
    probe_host,
    with_outcome,
)
from brainseg.errors import ArtifactError, ConfigError
from brainseg.export.pipeline import ExportOptions
from brainseg.export.trained_run import load_run

BOTH = ("fp16", "int8")
HERE = Host(tensorrt=True, gpu=True)
NO_TRT = Host(tensorrt=False, gpu=True)
NO_GPU = Host(tensorrt=True, gpu=False, gpu_detail="cudaGetDeviceCount: cudaErrorNoDevice")
NEITHER = Host(tensorrt=False, gpu=False)

# --- the decision ---------------------------------------------------------------------------------


def test_auto_builds_every_gpu_precision_that_passed_where_tensorrt_and_a_gpu_are():
    choice = choose_engines("auto", HERE, BOTH, passed=("fp32", "fp16", "int8"))
    assert choice.build == ("fp16", "int8")
    assert choice.reason == ("engines: built here for fp16 and int8 (TensorRT and a CUDA GPU are present), "
                             "each scored through the same accuracy gate")


def test_auto_builds_none_for_a_precision_that_failed_the_onnx_gate():
    choice = choose_engines("auto", HERE, BOTH, passed=("fp32", "fp16"))
    assert choice.build == ("fp16",)
    assert choice.reason.endswith("; none for int8, which failed the ONNX accuracy gate")
    nothing = choose_engines("yes", HERE, ("int8", "fp16"), passed=("fp32",))
    assert nothing == EngineChoice((), "engines: not built: fp16 and int8 failed the ONNX accuracy gate")


@pytest.mark.parametrize(("host", "missing"), [
    (NO_TRT, "TensorRT is not installed here"),
    (NO_GPU, "no CUDA GPU is visible (cudaGetDeviceCount: cudaErrorNoDevice) here"),
    (NEITHER, "TensorRT is not installed and no CUDA GPU is visible here"),
])
def test_auto_without_tensorrt_or_a_gpu_says_what_is_missing_and_how_to_build_on_the_target(host, missing):
    choice = choose_engines("auto", host, BOTH, passed=BOTH, artifacts="artifacts/x")
    assert choice.build == ()
    assert choice.reason == (f"engines: not built: {missing}; build them on the target with "
                             "`seg-export engine artifacts/x --precision fp16` and "
                             "`seg-export engine artifacts/x --precision int8`")


@pytest.mark.parametrize(("host", "missing"), [
    (NO_TRT, "TensorRT is not installed here"),
    (NO_GPU, "no CUDA GPU is visible (cudaGetDeviceCount: cudaErrorNoDevice) here"),
    (NEITHER, "TensorRT is not installed and no CUDA GPU is visible here"),
])
def test_yes_without_tensorrt_or_a_gpu_is_an_error_naming_what_is_missing(host, missing):
    with pytest.raises(ConfigError, match=rf"^--engine yes, but {re.escape(missing)}; use --engine auto") as caught:
        check_request("yes", host, ("fp16",))
    assert "`seg-export engine ARTIFACTS --precision fp16`" in str(caught.value)
    with pytest.raises(ConfigError, match=re.escape(missing)):
        choose_engines("yes", host, ("fp16",), passed=("fp16",))


def test_yes_where_everything_is_present_builds_like_auto():
    check_request("yes", HERE, ("int8",))
    assert choose_engines("yes", HERE, ("int8",), passed=("int8",)).build == ("int8",)


def test_yes_without_a_gpu_precision_asked_is_an_error():
    with pytest.raises(ConfigError, match=r"--engine yes builds engines for --fp16 and for --int8's GPU file"):
        check_request("yes", HERE, ())


def test_no_builds_nothing_and_says_it_was_told_not_to_without_looking_at_the_machine():
    choice = choose_engines("no", None, ("fp16",), passed=("fp16",), artifacts="a")
    assert choice == EngineChoice((), "engines: not built (--engine no); build them on the target with "
                                      "`seg-export engine a --precision fp16`")
    with pytest.raises(ValueError, match="probed"):
        choose_engines("auto", None, ("fp16",), passed=("fp16",))


def test_fp32_alone_gets_no_engine_and_the_line_says_how_to_build_one():
    for asked, host in (("auto", HERE), ("auto", NEITHER), ("no", None)):
        choice = choose_engines(asked, host, (), passed=("fp32",), artifacts="a")
        assert choice.build == () and "`seg-export engine a --precision fp32`" in choice.reason


def test_an_unknown_choice_lists_the_valid_ones():
    with pytest.raises(ConfigError, match=r"--engine must be one of auto, yes, no; got 'maybe'"):
        choose_engines("maybe", HERE, BOTH, passed=BOTH)
    with pytest.raises(ConfigError, match="auto, yes, no"):
        ExportOptions(engine="maybe")


def test_gpu_precisions_follow_the_int8_files_asked_for():
    assert ExportOptions(fp16=True, int8=True).gpu_precisions == BOTH
    assert ExportOptions(int8=True, int8_activations="int8_symmetric").gpu_precisions == ("int8",)
    assert ExportOptions(fp16=True, int8=True, int8_activations="uint8").gpu_precisions == ("fp16",)
    assert ExportOptions().gpu_precisions == ()


def test_the_outcome_names_engines_that_failed_the_gate():
    choice = EngineChoice(BOTH, "engines: built")
    assert with_outcome(choice, {"fp16": True, "int8": True}) == "engines: built"
    assert with_outcome(choice, {"fp16": True, "int8": False}) == (
        "engines: built; engine-int8 failed it and was removed (seg-run never sees it)")
    assert with_outcome(choice, {"fp16": False, "int8": False}).endswith(
        "engine-fp16 and engine-int8 failed it and were removed (seg-run never sees them)")


# --- looking at the machine -------------------------------------------------------------------------


class GpuCudart(standins.FakeCudart):
    """The CUDA stand-in with one visible device (or the error a machine without a driver gives)."""

    current_device = 0

    def __init__(self, error=standins.CudaError.cudaSuccess, count=1):
        super().__init__()
        self.answer = (error, count)

    def cudaGetDeviceCount(self):
        return self.answer


def test_probe_sees_tensorrt_by_importing_it_and_the_gpu_through_cuda_python(monkeypatch):
    monkeypatch.setattr(cuda, "import_cudart", lambda: GpuCudart())
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(__version__="10.3.0"))
    assert probe_host() == HERE
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    assert probe_host() == NO_TRT


def test_probe_says_why_no_gpu_is_visible(monkeypatch):
    monkeypatch.setattr(cuda, "import_cudart", lambda: GpuCudart(standins.CudaError.cudaErrorMemoryAllocation, None))
    assert probe_host().gpu_detail == "cudaGetDeviceCount: cudaErrorMemoryAllocation"
    monkeypatch.setattr(cuda, "import_cudart", lambda: GpuCudart(count=0))
    assert probe_host().gpu_detail == "cudaGetDeviceCount: 0 devices"
    monkeypatch.undo()
    for module in ("cuda.bindings", "cuda.cudart"):  # both places cuda-python's runtime module is looked for
        monkeypatch.setitem(sys.modules, module, None)
    assert probe_host().gpu_detail == "cuda-python is not installed"


def test_engine_yes_that_cannot_be_met_stops_before_any_work(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    out = tmp_path / "artifacts"
    # the run folder does not exist: reading it would be the first work, and it is never reached
    result = CliRunner().invoke(app, ["export", str(tmp_path / "no-run"), "--out", str(out), "--fp16",
                                      "--engine", "yes"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: --engine yes, but TensorRT is not installed" in result.output
    assert f"`seg-export engine {out} --precision fp16`" in result.output.replace("\n", "")
    assert list(tmp_path.iterdir()) == []


def test_the_export_here_records_why_it_built_no_engine(tiny_artifacts):
    host = probe_host()
    if not host.missing():
        pytest.skip("TensorRT and a CUDA GPU are here, so this export built its engines")
    engines = json.loads(Manifest.load(tiny_artifacts).path.read_text())["engines"]
    assert engines["asked"] == "auto" and engines["built"] == {}
    assert engines["reason"] == (f"engines: not built: {' and '.join(host.missing())} here; build them on the "
                                 f"target with `seg-export engine {tiny_artifacts} --precision int8`")
    assert not list(tiny_artifacts.glob("*.engine"))


# --- an export that builds engines, against the stand-ins --------------------------------------------


@pytest.fixture
def tensorrt_here(tiny_run, monkeypatch):
    """TensorRT and one GPU, as stand-ins sized for the tiny run; its engines compute what their ONNX
    file computes, except the int8 engine, whose probabilities are turned upside down."""
    spec = load_run(tiny_run)
    cudart = GpuCudart()
    monkeypatch.setattr(cuda, "import_cudart", lambda: cudart)
    for name, value in {"H": spec.img_size, "W": spec.img_size, "C": spec.in_channels, "K": spec.classes}.items():
        monkeypatch.setattr(standins, name, value)
    runtime, _ = standins.fake_tensorrt(cudart, profile=DEFAULT_BATCH)
    builder, built = fake_builder(input_shape=(-1, spec.img_size, spec.img_size, spec.in_channels))

    class Builder(builder.Builder):
        def build_serialized_network(self, network, config):
            return b"fake engine"  # what the stand-in runtime deserialises

    sessions = {}

    def engine_outputs(image: np.ndarray) -> dict[str, np.ndarray]:
        path = Path(built["parsed"])  # the ONNX file of the engine built last, the one being scored
        outputs = run(sessions.setdefault(path, ort_session(path)), {"image": image})
        if path.name == "ensemble.int8.onnx":
            outputs["probability"] = 1 - outputs["probability"]
        return outputs

    monkeypatch.setattr(standins, "reference", engine_outputs)
    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(**{**vars(runtime), **vars(builder),
                                                                          "Builder": Builder}))


def test_engines_are_scored_through_the_gate_and_an_engine_that_is_off_is_removed(tiny_run, tmp_path,
                                                                                     tensorrt_here):
    out = tmp_path / "art"
    result = CliRunner().invoke(app, ["export", str(tiny_run), "--out", str(out), "--fp16", "--int8",
                                      "--int8-activations", "int8_symmetric", "--calib-slices", "16",
                                      "--max-dice-drop", "0.05", "--deploy", "ensemble"])  # front untimed
    assert result.exit_code == 1, result.output  # the int8 engine failed the gate
    assert ("engines: built here for fp16 and int8 (TensorRT and a CUDA GPU are present), each scored through "
            "the same accuracy gate; engine-int8 failed it and was removed (seg-run never sees it)") in result.output
    assert "error: engine-int8 lost more than 0.05 Dice" in result.output
    manifest = Manifest.load(out)
    table, test_table = manifest.accuracy_table, manifest.test_table
    assert table["engine-fp16"]["passed"] and table["fp16"]["passed"] and table["int8"]["passed"]
    assert table["engine-fp16"]["dice_mean"] == pytest.approx(table["fp16"]["dice_mean"], abs=1e-6)
    assert not table["engine-int8"]["passed"] and table["engine-int8"]["dice_drop"] > 0.05
    assert {"engine-fp16", "engine-int8"} <= set(test_table)
    assert "| engine-fp16 |" in (out / "accuracy.md").read_text()
    engines = json.loads(manifest.path.read_text())["engines"]
    assert engines["built"]["fp16"]["file"] == "ensemble.fp16.engine" and engines["built"]["fp16"]["passed"]
    assert engines["built"]["fp16"]["provenance"]["gpu_name"] == "Fake GPU"
    assert engines["built"]["int8"]["file"] is None and not engines["built"]["int8"]["passed"]
    assert provenance_file(out / "ensemble.fp16.engine").is_file()
    assert not (out / "ensemble.int8.engine").exists() and not provenance_file(out / "ensemble.int8.engine").exists()
    # seg-run's choice: the engine that passed runs, the one that failed is not there to be picked
    from brainseg.runtime.segmenter import Segmenter, SegmenterOptions

    with Segmenter(manifest, SegmenterOptions(backend="tensorrt", precision="fp16")) as segmenter:
        assert (segmenter.choice.backend, segmenter.choice.file) == ("tensorrt", "ensemble.fp16.engine")
    with pytest.raises(ArtifactError, match="no int8 engine"):
        Segmenter(manifest, SegmenterOptions(backend="tensorrt", precision="int8"))

