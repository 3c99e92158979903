"""What a benchmark ran on: CPU, GPU, operating system and library versions.

Every probe is best-effort and quick: one that fails or is not applicable reports None (or []
for the GPU list), never an exception. Versions come from package metadata, so torch is never
imported (a Jetson benchmark has none, and importing it would take seconds). The hostname is
left out on purpose: reports get shared.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from brainseg.artifacts.cuda import import_cudart

COMMAND_TIMEOUT_S = 10.0

# Distribution names that provide each library, first match wins (GPU builds, headless builds).
DISTRIBUTIONS = {
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "torch": ("torch",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"),
}


def describe_environment() -> dict:
    """The machine and software a benchmark ran on, as plain JSON-ready values.

    Keys: cpu_model, cpu_vector_isa (the widest of avx512-vnni, avx512, avx2), cpu_cores_logical,
    cpu_cores_usable (cores this process may run on), os, python, gpu (list of {"name", "driver",
    "memory_mib"} from nvidia-smi; [] without one), cuda (CUDA runtime version such as "12.6", via
    cuda-python, where a CUDA device answers), tensorrt, onnxruntime, onnxruntime_providers, torch,
    numpy, opencv (installed versions) and jetson_power_mode (first line of `nvpmodel -q`).
    Anything unknown is None.
    """
    info: dict[str, Any] = {
        "cpu_model": _probe(_cpu_model),
        "cpu_vector_isa": _probe(_vector_isa),
        "cpu_cores_logical": _probe(os.cpu_count),
        "cpu_cores_usable": _probe(lambda: len(os.sched_getaffinity(0))),
        "os": _probe(platform.platform),
        "python": platform.python_version(),
        "gpu": _probe(_nvidia_gpus) or [],
        "cuda": _probe(_cuda_runtime_version),
    }
    for key, names in DISTRIBUTIONS.items():
        info[key] = _probe(lambda names=names: _installed_version(names))
    info["onnxruntime_providers"] = _probe(_onnxruntime_providers) if info["onnxruntime"] else None
    info["jetson_power_mode"] = _probe(_jetson_power_mode)
    return info


def machine_name() -> str:
    """A folder name for this machine's results: "gpu-<first GPU's name>", else "cpu-<cores>core-<vector ISA>".

    The ISA is part of the name because it decides CPU speed more than the core count: int8
    kernels on a 2-core VM with AVX-512 VNNI ran several times faster than on one with AVX2 only.
    """
    gpus = _probe(_nvidia_gpus) or []
    if gpus:
        return gpu_folder(gpus[0]["name"])
    return f"cpu-{os.cpu_count()}core-{_probe(_vector_isa) or platform.machine()}"


def gpu_folder(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "gpu-h100-80gb-hbm3": the results folder of every benchmark run on that GPU."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return f"gpu-{slug or 'unknown'}"


def _vector_isa(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """"avx512-vnni", "avx512", "avx2" from the CPU flags (x86 Linux); None elsewhere."""
    flags: set[str] = set()
    for line in cpuinfo.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            flags = set(value.split())
            break
    for isa, needed in (("avx512-vnni", {"avx512f", "avx512_vnni"}), ("avx512", {"avx512f"}), ("avx2", {"avx2"})):
        if needed <= flags:
            return isa
    return None


def cpu_description() -> str:
    """"<CPU model>, <N> cores, <vector ISA>", for benchmark results."""
    return f"{_probe(_cpu_model) or platform.machine()}, {os.cpu_count()} cores, {_probe(_vector_isa)}"


def _probe(fn: Callable[[], Any]) -> Any:
    """fn(), or None when it raises: an environment report must never fail the benchmark it describes."""
    try:
        return fn()
    except Exception:  # any failure means "unknown" here, by design
        return None


def _cpu_model() -> str | None:
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or None


def _command_output(args: Sequence[str]) -> str | None:
    """stdout of a command, or None when the binary is absent, fails or exceeds COMMAND_TIMEOUT_S."""
    if shutil.which(args[0]) is None:
        return None
    done = subprocess.run(list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    return done.stdout if done.returncode == 0 else None


def _nvidia_gpus() -> list[dict]:
    query = ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader,nounits"]
    output = _command_output(query)
    gpus = []
    for line in (output or "").splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) != 3:
            continue
        name, driver, memory = fields
        gpus.append({"name": name, "driver": driver, "memory_mib": int(memory) if memory.isdigit() else None})
    return gpus


def _cuda_runtime_version() -> str | None:
    """The CUDA runtime's version where a CUDA device answers (cuda-python alone says nothing)."""
    runtime = import_cudart()  # raises without cuda-python: "unknown"
    error, count = runtime.cudaGetDeviceCount()
    if int(error) != 0 or not count:
        return None
    error, version = runtime.cudaRuntimeGetVersion()
    if int(error) != 0:
        return None
    return f"{version // 1000}.{version % 1000 // 10}"  # 12060 -> "12.6"


def _installed_version(names: Sequence[str]) -> str | None:
    for name in names:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _onnxruntime_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def _jetson_power_mode() -> str | None:
    output = _command_output(["nvpmodel", "-q"])
    lines = [line.strip() for line in (output or "").splitlines() if line.strip()]
    return lines[0] if lines else None
