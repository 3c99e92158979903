"""Facts about this machine, read in one place for seg-doctor, seg-bench and the export's manifest.

The CPU comes from /proc/cpuinfo, NVIDIA GPUs from nvidia-smi, versions from package metadata:
the standard library only, so reading them imports nothing heavy (torch in particular may be
absent where the runtime runs, and takes seconds to import where it is not).
"""

from __future__ import annotations

import importlib.metadata
import platform
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
COMMAND_TIMEOUT_S = 10.0
X86 = ("x86_64", "amd64", "i686", "x86")
# the widest first: the first whose flags the CPU has all of names it
VECTOR_ISAS = (("avx512-vnni", {"avx512f", "avx512_vnni"}), ("avx512", {"avx512f"}), ("avx2", {"avx2"}))
# nvidia-smi --query-gpu field -> the key it has in a GPU's dict
GPU_KEYS = {"name": "name", "driver_version": "driver", "memory.total": "memory_mib",
            "compute_cap": "compute_capability"}

# Distribution names that provide each library, first match wins (GPU builds, headless builds).
DISTRIBUTIONS = {
    "tensorrt": ("tensorrt", "tensorrt-cu13", "tensorrt-cu12"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
    "torch": ("torch",),
    "numpy": ("numpy",),
    "opencv": ("opencv-python", "opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"),
}


def _cpuinfo_value(keys: tuple[str, ...], path: Path) -> str | None:
    """The first non-empty value of any of `keys` in a cpuinfo file; None where there is no such file."""
    if not path.is_file():
        return None
    for line in path.read_text(errors="replace").splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys and value.strip():
            return value.strip()
    return ""


def cpu_model(path: Path = CPUINFO) -> str | None:
    """The first CPU's model name from /proc/cpuinfo, else `platform.processor()`, else None."""
    return _cpuinfo_value(("model name",), path) or platform.processor() or None


def cpu_flags(path: Path = CPUINFO) -> set[str] | None:
    """The first CPU's flags ("Features" on aarch64); an empty set where cpuinfo lists none, None without
    the file (not Linux)."""
    value = _cpuinfo_value(("flags", "Features"), path)
    return None if value is None else set(value.split())


def vector_isa(path: Path = CPUINFO) -> str | None:
    """"avx512-vnni", "avx512" or "avx2", the widest the CPU has (x86 Linux); None elsewhere.

    seg-bench names CPU results folders by it (cpu-2core-avx2), so a change here moves them."""
    flags = cpu_flags(path) or set()
    return next((isa for isa, needed in VECTOR_ISAS if needed <= flags), None)


def is_x86() -> bool:
    """Whether this CPU is x86 (OpenVINO's CPU plugin is built and tuned for it)."""
    return platform.machine().lower() in X86


def package_version(*distributions: str) -> str | None:
    """The installed version of the first of `distributions` that is installed; None when none is."""
    for name in distributions:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def nvidia_gpus(fields: Sequence[str], *, optional: Sequence[str] = ()) -> tuple[list[dict[str, str]], str]:
    """GPUs as `nvidia-smi --query-gpu` lists them, and why there are none ("" when there are some).

    Each GPU is a dict of its `fields`, keyed as GPU_KEYS names them (driver_version -> "driver"), the
    values as nvidia-smi wrote them. `optional` fields are asked too, and dropped from a second query
    when the first fails: an older driver refuses fields it does not know (compute_cap). Lines
    without one value per field (a warning nvidia-smi prints) are left out. Raises what
    `subprocess.run` raises, TimeoutExpired after COMMAND_TIMEOUT_S included.
    """
    if shutil.which("nvidia-smi") is None:
        return [], "no nvidia-smi on PATH"
    queries = [[*fields, *optional], list(fields)] if optional else [list(fields)]
    for query in queries:
        done = subprocess.run(["nvidia-smi", f"--query-gpu={','.join(query)}", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
        if done.returncode == 0:
            rows = [[cell.strip() for cell in line.split(",")] for line in done.stdout.splitlines() if line.strip()]
            keys = [GPU_KEYS.get(field, field) for field in query]
            return [dict(zip(keys, row, strict=True)) for row in rows if len(row) == len(keys)], ""
    failure = (done.stdout + done.stderr).strip().splitlines()
    return [], f"nvidia-smi failed: {failure[0] if failure else f'exit code {done.returncode}'}"


def jetson_power_mode() -> str | None:
    """The first line of `nvpmodel -q` (a Jetson's power mode); None without nvpmodel or when it fails."""
    if shutil.which("nvpmodel") is None:
        return None
    done = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, check=False)
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip()] if done.returncode == 0 else []
    return lines[0] if lines else None
