"""What a benchmark ran on: CPU, GPU, operating system and library versions.

Every probe is best-effort and quick: one that fails or is not applicable reports None (or []
for the GPU list), never an exception. Versions come from package metadata, so torch is never
imported (a Jetson benchmark has none, and importing it would take seconds). The hostname is
left out on purpose: reports get shared.
"""

from __future__ import annotations

import os
import platform
import re
from collections.abc import Callable
from typing import Any

from brainseg import machine
from brainseg.artifacts.cuda import import_cudart
from brainseg.machine import DISTRIBUTIONS


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
        "cpu_model": _probe(machine.cpu_model),
        "cpu_vector_isa": _probe(machine.vector_isa),
        "cpu_cores_logical": _probe(os.cpu_count),
        "cpu_cores_usable": _probe(lambda: len(os.sched_getaffinity(0))),
        "os": _probe(platform.platform),
        "python": platform.python_version(),
        "gpu": _probe(_nvidia_gpus) or [],
        "cuda": _probe(_cuda_runtime_version),
    }
    for key, names in DISTRIBUTIONS.items():
        info[key] = _probe(lambda names=names: machine.package_version(*names))
    info["onnxruntime_providers"] = _probe(_onnxruntime_providers) if info["onnxruntime"] else None
    info["jetson_power_mode"] = _probe(machine.jetson_power_mode)
    return info


def machine_name() -> str:
    """A folder name for this machine's results: "gpu-<first GPU's name>", else "cpu-<cores>core-<vector ISA>".

    The ISA is part of the name because it decides CPU speed more than the core count: int8
    kernels on a 2-core VM with AVX-512 VNNI ran several times faster than on one with AVX2 only.
    """
    gpus = _probe(_nvidia_gpus) or []
    if gpus:
        return gpu_folder(gpus[0]["name"])
    return f"cpu-{os.cpu_count()}core-{_probe(machine.vector_isa) or platform.machine()}"


def gpu_folder(name: str) -> str:
    """"NVIDIA H100 80GB HBM3" -> "gpu-h100-80gb-hbm3": the results folder of every benchmark run on that GPU."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower().replace("nvidia", "")).strip("-")
    return f"gpu-{slug or 'unknown'}"


def cpu_description() -> str:
    """"<CPU model>, <N> cores, <vector ISA>", for benchmark results."""
    return f"{_probe(machine.cpu_model) or platform.machine()}, {os.cpu_count()} cores, {_probe(machine.vector_isa)}"


def _probe(fn: Callable[[], Any]) -> Any:
    """fn(), or None when it raises: an environment report must never fail the benchmark it describes."""
    try:
        return fn()
    except Exception:  # any failure means "unknown" here, by design
        return None


def _nvidia_gpus() -> list[dict]:
    """{"name", "driver", "memory_mib"} per GPU nvidia-smi lists, the memory as an int where it says one."""
    gpus, _ = machine.nvidia_gpus(("name", "driver_version", "memory.total"))
    return [gpu | {"memory_mib": int(gpu["memory_mib"]) if gpu["memory_mib"].isdigit() else None} for gpu in gpus]


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


def _onnxruntime_providers() -> list[str]:
    import onnxruntime

    return list(onnxruntime.get_available_providers())
