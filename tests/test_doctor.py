"""seg-doctor: the real command on this machine, its probes' facts, --artifacts, and failures kept to one line."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from auto_choice import expected_auto_backend
from no_torch import run_without_torch
from typer.testing import CliRunner

from brainseg import doctor
from brainseg.artifacts.manifest import FORMAT, ManifestData, file_entry, write_manifest
from brainseg.cli import app
from brainseg.errors import is_installed

pytest.importorskip("onnxruntime")
ROOT = Path(__file__).parents[1]
PROBES = {"python", "cpu", "nvidia-gpu", "cuda-runtime", "tensorrt", "onnxruntime", "openvino", "cuda-python",
          "ray", "tritonclient", "torch"}


def _doctor(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "brainseg.doctor", *map(str, args)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def _tiny_artifacts(folder: Path) -> Path:
    """An artifacts folder with one fp32 ensemble graph: (N, 8, 8, 3) uint8 -> probability, mask, disagreement."""
    from onnx import TensorProto, helper, numpy_helper
    from onnx_models import make_model, tensor

    folder.mkdir()
    consts = [numpy_helper.from_array(np.array([1], np.int64), "axes"),
              numpy_helper.from_array(np.array(1 / 255, np.float32), "scale"),
              numpy_helper.from_array(np.array(0.5, np.float32), "half")]
    nodes = [helper.make_node("Cast", ["image"], ["f"], to=TensorProto.FLOAT),
             helper.make_node("Transpose", ["f"], ["nchw"], perm=[0, 3, 1, 2]),
             helper.make_node("ReduceMean", ["nchw", "axes"], ["mean"], keepdims=1),
             helper.make_node("Mul", ["mean", "scale"], ["probability"]),
             helper.make_node("Greater", ["probability", "half"], ["above"]),
             helper.make_node("Cast", ["above"], ["mask"], to=TensorProto.UINT8),
             helper.make_node("Sub", ["probability", "probability"], ["disagreement"])]
    outputs = [tensor("probability", TensorProto.FLOAT, ["N", 1, 8, 8]),
               tensor("mask", TensorProto.UINT8, ["N", 1, 8, 8]),
               tensor("disagreement", TensorProto.FLOAT, ["N", 1, 8, 8])]
    model = make_model(nodes, [tensor("image", TensorProto.UINT8, ["N", 8, 8, 3])], outputs, consts)
    name = "ensemble.fp32.onnx"
    (folder / name).write_bytes(model.SerializeToString())
    use = {"file": name, "row": "fp32"}
    cpu = {**use, "openvino_row": "fp32@openvino"}  # as the export writes where OpenVINO is installed
    raw = {"format": FORMAT, "input": {"name": "image", "dtype": "uint8", "layout": "NHWC", "channels": 3,
                                       "height": 8, "width": 8, "normalisation": {}},
           "outputs": {"probability": {"classes": 1}}, "threshold": 0.5, "ensemble": {},
           "files": {name: file_entry(folder, name, kind="ensemble", precision="fp32").to_dict()},
           "precisions": {"fp32": {"passed": True, "targets": {"gpu": use, "cpu": cpu}}},
           "accuracy": {"table": {"fp32": {"passed": True}, "fp32@openvino": {"passed": True}}}, "versions": {},
           "source_run": {}}
    write_manifest(folder, ManifestData.from_dict(raw))
    return folder


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def test_the_json_report_states_this_machines_facts():
    done = _doctor("--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    probes = report["probes"]
    assert set(probes) == PROBES
    assert "Traceback" not in done.stderr and not [name for name, p in probes.items() if p["status"] == "error"]
    assert probes["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    ort = probes["onnxruntime"]
    assert ort["status"] == "found" and "CPUExecutionProvider" in ort["providers"]
    assert ort["version"] == importlib.metadata.version("onnxruntime")
    for module in ("openvino", "tensorrt", "torch", "ray", "tritonclient"):
        expected = "found" if importlib.util.find_spec(module) is not None else "absent"
        assert probes[module]["status"] == expected, (module, probes[module])
        if expected == "absent":
            assert "pip install" in probes[module]["hint"] or "JetPack" in probes[module]["hint"]
    if Path("/proc/cpuinfo").is_file():
        assert probes["cpu"]["isa_flags"]["avx2"] == ("avx2" in _cpu_flags())
    assert report["auto"]["backend"] == expected_auto_backend() and report["auto"]["reason"]


def test_the_openvino_probe_reads_the_cpu_capabilities():
    if not is_installed("openvino"):
        pytest.skip("the openvino extra is not installed")
    import openvino

    probe = doctor.PROBES["openvino"]()
    capabilities = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert probe.found and probe.facts["capabilities"] == list(capabilities)
    assert probe.facts["native_bf16"] == ("BF16" in capabilities)
    assert "FP32" in probe.detail


def test_the_console_scripts_print_one_line_per_probe_and_the_auto_choice():
    entry = {ep.name: ep for ep in importlib.metadata.distribution("brainseg").entry_points}.get("seg-doctor")
    assert entry is not None and entry.value == "brainseg.doctor:doctor_entry", "pip install -e . --no-deps"
    script = Path(sys.executable).parent / "seg-doctor"
    if not script.is_file():
        pytest.skip(f"{script} is not installed (pip install -e . --no-deps)")
    done = subprocess.run([script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert {line.split()[0] for line in lines[1:len(PROBES) + 1]} == PROBES
    chosen = [line for line in lines if line.startswith("auto would choose: ")]
    assert len(chosen) == 1 and chosen[0].startswith(f"auto would choose: {expected_auto_backend()} — "), lines
    assert CliRunner().invoke(app, ["doctor", "--help"]).exit_code == 0


def test_seg_doctor_needs_no_torch_and_imports_none_of_the_heavy_packages():
    done = run_without_torch("brainseg.doctor:doctor_entry", ["seg-doctor", "--json"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["probes"]["torch"]["status"] == "absent"
    code = ("import sys; from brainseg.doctor import diagnose; diagnose()\n"
            "print(sorted(m for m in ('torch', 'ray', 'tritonclient') if m in sys.modules))")
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip().splitlines()[-1] == "[]"


def test_a_failing_probe_prints_its_error_on_its_line_and_the_others_go_on(monkeypatch):
    def broken():
        raise RuntimeError("driver exploded\nsecond line")

    monkeypatch.setitem(doctor.PROBES, "tensorrt", broken)
    result = CliRunner().invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("tensorrt"))
    assert line.split()[1] == "error" and line.endswith("RuntimeError: driver exploded")
    assert "second line" not in result.output and "Traceback" not in result.output
    assert [line.split()[1] for line in result.output.splitlines() if line.startswith("onnxruntime")] == ["found"]


def test_the_artifacts_folder_is_opened_as_seg_run_would(tmp_path):
    pytest.importorskip("onnx")
    folder = _tiny_artifacts(tmp_path / "tiny")
    done = _doctor("--artifacts", folder, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    chosen = report["artifacts"]
    expected = report["auto"]["backend"] if report["auto"]["backend"] != "tensorrt" else chosen["backend"]
    assert (chosen["backend"], chosen["precision"], chosen["file"]) == (expected, "fp32", "ensemble.fp32.onnx")
    assert chosen["folder"] == str(folder) and chosen["reason"] and chosen["opened"]["file"] == "ensemble.fp32.onnx"
    if not is_installed("tensorrt"):
        assert "not using TensorRT: TensorRT is not installed" in chosen["passed_over"]
    text = _doctor("--artifacts", folder)
    assert f"--artifacts {folder}: {chosen['backend']}, fp32, ensemble.fp32.onnx — {chosen['reason']}" in text.stdout


@pytest.mark.parametrize("damage", ["missing", "not json", "modified file"])
def test_a_bad_artifacts_folder_is_one_line_naming_it_and_exit_2(tmp_path, damage):
    folder = tmp_path / "bad"
    if damage == "missing":
        pass
    elif damage == "not json":
        folder.mkdir()
        (folder / "manifest.json").write_text("{not json")
    else:
        pytest.importorskip("onnx")
        _tiny_artifacts(folder)
        with open(folder / "ensemble.fp32.onnx", "ab") as graph:
            graph.write(b"\0")
    done = _doctor("--artifacts", folder)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and str(folder) in done.stderr, done.stderr
    assert "auto would choose:" in done.stdout


# answers --query-gpu like nvidia-smi; with OLD set, like a driver that does not know the compute_cap field
FAKE_SMI = """#!/bin/sh
case "$1" in
  *compute_cap*) [ -n "$OLD" ] && { echo 'Field "compute_cap" is not a valid field to query.'; exit 2; }
                 echo 'NVIDIA H200, 570.86.15, 143771, 9.0' ;;
  *) echo 'NVIDIA H200, 570.86.15, 143771' ;;
esac
"""


def test_nvidia_smi_is_read_where_it_is_on_path(tmp_path, monkeypatch):
    fake = tmp_path / "nvidia-smi"
    fake.write_text(FAKE_SMI)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    probe = doctor.PROBES["nvidia-gpu"]()
    assert probe.found and probe.facts["driver"] == "570.86.15"
    h200 = {"name": "NVIDIA H200", "driver": "570.86.15", "memory_mib": "143771"}
    assert probe.facts["gpus"] == [h200 | {"compute_capability": "9.0"}]
    monkeypatch.setenv("OLD", "1")
    assert doctor.PROBES["nvidia-gpu"]().facts["gpus"] == [h200]
    fake.write_text("#!/bin/sh\necho \"NVIDIA-SMI has failed because it couldn't communicate with the driver\"\n"
                    "exit 9\n")
    assert "nvidia-smi failed: NVIDIA-SMI has failed" in doctor.PROBES["nvidia-gpu"]().detail


def test_a_cuda_python_newer_than_the_driver_is_named_with_the_fix(monkeypatch):
    class FakeRuntime:  # cuda-python's (error, value) tuples; 35 is cudaErrorInsufficientDriver
        __name__ = "cuda.bindings.runtime"

        def cudaRuntimeGetVersion(self):
            return 0, 13000

        def cudaDriverGetVersion(self):
            return 0, 12060

        def cudaGetDeviceCount(self):
            return 35, None

    monkeypatch.setattr("brainseg.artifacts.cuda.import_cudart", FakeRuntime)
    probe = doctor.PROBES["cuda-runtime"]()
    assert not probe.found and probe.facts["version"] == "13.0" and probe.facts["driver_cuda"] == "12.6"
    assert "pip install 'cuda-python==12.*'" in probe.hint
