"""brainseg.machine: the CPU, GPU and package facts seg-doctor and seg-bench report, read from fakes."""

import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest

from brainseg import machine


def _cpuinfo(tmp_path, text: str):
    path = tmp_path / "cpuinfo"
    path.write_text(text)
    return path


@pytest.mark.parametrize(("flags", "isa"), [("fpu avx2 avx512f avx512_vnni", "avx512-vnni"),
                                            ("avx2 avx512f", "avx512"), ("sse4_2 avx avx2", "avx2"), ("neon", None)])
def test_the_vector_isa_names_the_widest_set_the_cpu_has(tmp_path, flags, isa):
    cpuinfo = _cpuinfo(tmp_path, f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n")
    assert machine.vector_isa(cpuinfo) == isa
    assert machine.cpu_flags(cpuinfo) == set(flags.split())


def test_the_first_cpus_model_and_flags_are_read(tmp_path):
    cpuinfo = _cpuinfo(tmp_path, "processor\t: 0\nmodel name\t: First CPU\nflags\t\t: fpu avx2\n\n"
                                 "processor\t: 1\nmodel name\t: Second CPU\nflags\t\t: fpu avx512f\n")
    assert machine.cpu_model(cpuinfo) == "First CPU"
    assert machine.cpu_flags(cpuinfo) == {"fpu", "avx2"} and machine.vector_isa(cpuinfo) == "avx2"


def test_aarch64_features_are_its_flags_and_have_no_vector_isa(tmp_path):
    cpuinfo = _cpuinfo(tmp_path, "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\n")
    assert machine.cpu_flags(cpuinfo) == {"fp", "asimd", "sve"}
    assert machine.vector_isa(cpuinfo) is None
    assert machine.cpu_model(cpuinfo) == (platform.processor() or None)  # no "model name" line


def test_without_a_cpuinfo_file_flags_and_isa_are_unknown(tmp_path):
    missing = tmp_path / "no-cpuinfo"
    assert machine.cpu_flags(missing) is None and machine.vector_isa(missing) is None
    assert machine.cpu_model(missing) == (platform.processor() or None)


def test_is_x86_follows_the_machine_name(monkeypatch):
    for name, x86 in (("x86_64", True), ("AMD64", True), ("aarch64", False), ("arm64", False)):
        monkeypatch.setattr(platform, "machine", lambda name=name: name)
        assert machine.is_x86() is x86, name


def test_package_version_of_installed_and_missing_distributions():
    assert machine.package_version("numpy") == np.__version__
    assert machine.package_version("no-such-distribution-brainseg") is None
    assert machine.package_version("no-such-distribution-brainseg", "numpy") == np.__version__  # first installed
    assert machine.package_version() is None


def _fake_smi(monkeypatch, answer):
    """nvidia-smi on PATH, answering each call with answer(args) -> (returncode, stdout, stderr)."""
    calls = []

    def run(args, **kwargs):
        calls.append(args)
        assert kwargs["timeout"] == machine.COMMAND_TIMEOUT_S
        return subprocess.CompletedProcess(args, *answer(args))

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(subprocess, "run", run)
    return calls


def test_nvidia_gpus_keys_rows_by_field_and_skips_other_lines(monkeypatch):
    output = "NVIDIA H100 80GB HBM3, 550.54.15, 81559\nWARNING: infoROM is corrupted\nNVIDIA A2, 550.54.15, [N/A]\n"
    _fake_smi(monkeypatch, lambda args: (0, output, ""))
    gpus, why = machine.nvidia_gpus(("name", "driver_version", "memory.total"))
    assert why == "" and gpus == [{"name": "NVIDIA H100 80GB HBM3", "driver": "550.54.15", "memory_mib": "81559"},
                                  {"name": "NVIDIA A2", "driver": "550.54.15", "memory_mib": "[N/A]"}]


def test_nvidia_gpus_drops_optional_fields_an_old_driver_refuses(monkeypatch):
    def answer(args):
        if "compute_cap" in args[1]:
            return 2, 'Field "compute_cap" is not a valid field to query.\n', ""
        return 0, "NVIDIA T4, 470.1, 15360\n", ""

    calls = _fake_smi(monkeypatch, answer)
    gpus, why = machine.nvidia_gpus(("name", "driver_version", "memory.total"), optional=("compute_cap",))
    assert gpus == [{"name": "NVIDIA T4", "driver": "470.1", "memory_mib": "15360"}] and why == ""
    assert [call[1] for call in calls] == ["--query-gpu=name,driver_version,memory.total,compute_cap",
                                           "--query-gpu=name,driver_version,memory.total"]


def test_nvidia_gpus_says_why_there_are_none(monkeypatch):
    _fake_smi(monkeypatch, lambda args: (9, "NVIDIA-SMI has failed because it couldn't communicate\n", ""))
    assert machine.nvidia_gpus(("name",)) == ([], "nvidia-smi failed: NVIDIA-SMI has failed because it couldn't "
                                                  "communicate")
    _fake_smi(monkeypatch, lambda args: (4, "", ""))
    assert machine.nvidia_gpus(("name",)) == ([], "nvidia-smi failed: exit code 4")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert machine.nvidia_gpus(("name",)) == ([], "no nvidia-smi on PATH")


def test_machine_imports_nothing_heavy():
    code = ("import sys; import brainseg.machine\n"
            "heavy = {'torch', 'numpy', 'onnxruntime', 'openvino', 'tensorrt'} & set(sys.modules)\n"
            "assert not heavy, heavy\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
