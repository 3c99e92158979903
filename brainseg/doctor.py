"""`seg-doctor`: what this machine has for running brainseg, and which backend `--backend auto` takes.

One probe per item; a probe that fails reports its error on its own line and the others go on (a
doctor that crashes on the broken machine it was called for is no use). Ray, tritonclient and torch
are only looked up with `importlib.util.find_spec`, never imported: they take seconds to import,
and torch must not be needed where the runtime runs. `diagnose()` is the library call;
`doctor_command` prints its report as lines or as one JSON object.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import platform
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any

import typer

from brainseg import machine
from brainseg.errors import BrainsegError
from brainseg.machine import DISTRIBUTIONS

# x86 flags that decide CPU inference speed: int8 kernels (VNNI) and native bf16 (AVX512-BF16, AMX)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16")
OPENVINO_CAPABILITIES = ("FP32", "FP16", "INT8", "BF16")
JETSON_RELEASE = Path("/etc/nv_tegra_release")
ORT_HINT = ("pip install 'brainseg[export]' for the CPU; on an NVIDIA GPU install onnxruntime-gpu instead "
            "(it replaces onnxruntime: never both, they share one module)")
TENSORRT_HINT = "with an NVIDIA GPU: pip install tensorrt (NVIDIA's wheels) 'brainseg[gpu]'"
JETSON_TENSORRT_HINT = ("on a Jetson TensorRT comes with JetPack (sudo apt install nvidia-jetpack), not pip; "
                        "a virtualenv sees it only when made with --system-site-packages")
CUDA_PYTHON_HINT = "with an NVIDIA GPU: pip install 'brainseg[gpu]'"
NO_GPU_HINT = "none needed: ONNX Runtime and OpenVINO run on the CPU"


@dataclass(frozen=True)
class Probe:
    """One probe's finding: `detail` (one line), `hint` (how to install or fix), `error` (the probe failed),
    and `facts`, the same as JSON-ready values."""

    found: bool
    detail: str = ""
    hint: str = ""
    error: str = ""
    facts: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        return "error" if self.error else "found" if self.found else "absent"


@dataclass(frozen=True)
class Report:
    """The probes by name, what `--backend auto` takes on this machine, and the artifacts folder's choice."""

    probes: dict[str, Probe]
    auto: dict
    artifacts: dict | None = None

    @property
    def artifacts_error(self) -> str | None:
        return self.artifacts.get("error") if self.artifacts else None

    def to_dict(self) -> dict:
        probes = {name: {"status": p.status, "detail": p.detail, **({"hint": p.hint} if p.hint else {}),
                         **({"error": p.error} if p.error else {}), **p.facts} for name, p in self.probes.items()}
        return {"brainseg": machine.package_version("brainseg"), "probes": probes, "auto": self.auto,
                "artifacts": self.artifacts}

    def lines(self) -> list[str]:
        lines = [f"brainseg {machine.package_version('brainseg')} doctor"]
        for name, probe in self.probes.items():
            text = probe.error or probe.detail
            lines.append(f"{name:<13} {probe.status:<7} {text}" + (f"  -> {probe.hint}" if probe.hint else ""))
        lines.append(f"auto would choose: {self.auto['backend']} — {self.auto['reason']}")
        lines += [f"  passed over: {note}" for note in self.auto.get("passed_over", [])]
        if self.artifacts and not self.artifacts_error:
            a = self.artifacts
            lines.append(f"--artifacts {a['folder']}: {a['backend']}, {a['precision']}, {a['file']} — {a['reason']}")
            lines += [f"  passed over: {note}" for note in a["passed_over"]]
            lines += [f"  {note}" for note in a["export_notes"]]
        return lines


def diagnose(artifacts: Path | None = None) -> Report:
    """Run every probe, ask `auto_backend()` what it takes here and, with `artifacts`, open that
    folder as seg-run would (a `Segmenter` with its defaults) and close it. Never raises: failures are in the report."""
    probes = {name: _run_probe(probe) for name, probe in PROBES.items()}
    try:
        auto = _auto_choice()
    except Exception as err:  # reported, like any probe
        auto = {"backend": "unknown", "reason": f"auto_backend() failed: {_one_line(err)}"}
    folder = None
    if artifacts is not None:
        try:
            folder = _artifacts_choice(Path(artifacts))
        except Exception as err:  # a bad folder is the one line the command prints, whatever raised
            message = _one_line(err)
            folder = {"folder": str(artifacts),
                      "error": message if str(artifacts) in message else f"{artifacts}: {message}"}
    return Report(probes, auto, folder)


def _run_probe(probe: Callable[[], Probe]) -> Probe:
    try:
        return probe()
    except Exception as err:  # one broken probe must not hide the others
        return Probe(found=False, error=_one_line(err))


def _one_line(err: BaseException) -> str:
    first = (str(err).strip().splitlines() or [""])[0]
    return first if isinstance(err, BrainsegError) and first else f"{type(err).__name__}: {first}".rstrip(": ")


def _cause(err: BrainsegError) -> str:
    """Why a `require` failed: the ImportError or OSError underneath (a wheel without its libraries)."""
    cause = err.__cause__
    return f"does not import ({_one_line(cause)})" if cause is not None else "does not import"


def _installed(library: str) -> list[str]:
    """The distributions of `library` installed (onnxruntime and onnxruntime-gpu can both be, wrongly)."""
    return [name for name in DISTRIBUTIONS[library] if machine.package_version(name)]


def _python() -> Probe:
    facts = {"version": platform.python_version(), "platform": platform.platform(), "executable": sys.executable}
    return Probe(True, "{version} {} on {platform} ({executable})".format(platform.python_implementation(), **facts),
                 facts=facts)


def _cpu() -> Probe:
    model, flags = machine.cpu_model() or platform.machine(), machine.cpu_flags()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    isa = None if flags is None else {flag: flag in flags for flag in ISA_FLAGS}
    present = "unknown (no /proc/cpuinfo)" if isa is None else ", ".join(f for f, on in isa.items() if on) or "no AVX2"
    detail = f"{model}, {platform.machine()}, {os.cpu_count()} cores ({usable} usable); ISA: {present}"
    return Probe(True, detail, facts={"model": model, "machine": platform.machine(), "cores": os.cpu_count(),
                                      "cores_usable": usable, "isa_flags": isa})


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}"  # 12060 -> "12.6"


def _cuda_devices(cudart: Any) -> tuple[list[dict], str]:
    """CUDA devices as cuda-python sees them, and the CUDA error when it sees none."""
    from brainseg.artifacts.cuda import gpu_identity

    error, count = cudart.cudaGetDeviceCount()
    if int(error) != 0 or not count:
        return [], getattr(error, "name", str(error)) if int(error) != 0 else "no CUDA device"
    devices = [gpu_identity(index) for index in range(count)]
    return [{"name": name, "compute_capability": cc} for name, cc in devices], ""


def _nvidia_gpu() -> Probe:
    """The NVIDIA driver and GPUs: nvidia-smi where it is on PATH, else the driver through cuda-python."""
    from brainseg.artifacts.cuda import cuda_call, import_cudart

    # compute_cap is asked only of drivers that know it
    gpus, smi_note = machine.nvidia_gpus(("name", "driver_version", "memory.total"), optional=("compute_cap",))
    if gpus:
        names = ", ".join(f"{g['name']} ({g['memory_mib']} MiB, cc {g.get('compute_capability', '?')})" for g in gpus)
        return Probe(True, f"driver {gpus[0]['driver']}; {names}",
                     facts={"source": "nvidia-smi", "driver": gpus[0]["driver"], "gpus": gpus})
    try:
        cudart = import_cudart()
    except BrainsegError:
        return Probe(False, f"{smi_note}; no cuda-python to ask the driver", hint=NO_GPU_HINT)
    driver = cuda_call("cudaDriverGetVersion", cudart.cudaDriverGetVersion())
    if driver == 0:
        return Probe(False, f"{smi_note}; cuda-python finds no NVIDIA driver", hint=NO_GPU_HINT)
    gpus, why = _cuda_devices(cudart)
    names = ", ".join(f"{g['name']} (cc {g['compute_capability']})" for g in gpus) or why
    return Probe(bool(gpus), f"{smi_note}; driver supports CUDA {_cuda_version(driver)}; {names}",
                 facts={"source": "cuda-python", "driver_cuda": _cuda_version(driver), "gpus": gpus})


def _cuda_runtime() -> Probe:
    """The CUDA runtime cuda-python brings, and whether this machine's driver can run it."""
    from brainseg.artifacts.cuda import cuda_call, import_cudart

    try:
        cudart = import_cudart()
    except BrainsegError as err:
        return Probe(False, f"no cuda-python to ask: {_cause(err)}", hint=CUDA_PYTHON_HINT)
    runtime = cuda_call("cudaRuntimeGetVersion", cudart.cudaRuntimeGetVersion())
    driver = cuda_call("cudaDriverGetVersion", cudart.cudaDriverGetVersion())
    gpus, why = _cuda_devices(cudart)
    facts = {"version": _cuda_version(runtime), "driver_cuda": _cuda_version(driver) if driver else None,
             "devices": len(gpus), "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES")}
    detail = f"runtime {_cuda_version(runtime)} ({cudart.__name__})"
    if gpus:
        return Probe(True, f"{detail}; {len(gpus)} device(s) usable", facts=facts)
    if driver == 0:
        hint = NO_GPU_HINT
    elif driver < runtime:
        hint = (f"this driver runs CUDA up to {_cuda_version(driver)}: install the matching cuda-python, "
                f"pip install 'cuda-python=={driver // 1000}.*', or a newer driver")
    else:
        hint = "the driver answers but no device is usable: check nvidia-smi and CUDA_VISIBLE_DEVICES"
    return Probe(False, f"{detail}; no usable device: {why}", hint=hint, facts=facts)


def _tensorrt() -> Probe:
    from brainseg.artifacts.provenance import import_tensorrt

    try:
        trt = import_tensorrt()
    except BrainsegError as err:
        return Probe(False, _cause(err), hint=JETSON_TENSORRT_HINT if JETSON_RELEASE.is_file() else TENSORRT_HINT)
    return Probe(True, trt.__version__, facts={"version": trt.__version__, "distributions": _installed("tensorrt")})


def _onnxruntime() -> Probe:
    from brainseg.artifacts.sessions import import_onnxruntime
    from brainseg.runtime.backends.onnxruntime import available_providers

    try:
        ort = import_onnxruntime()
    except BrainsegError as err:
        return Probe(False, _cause(err), hint=ORT_HINT)
    installed = _installed("onnxruntime")
    providers, usable = list(ort.get_available_providers()), available_providers()
    hint = ""
    if len(installed) > 1:
        hint = ("onnxruntime and onnxruntime-gpu are both installed and overwrite each other: "
                "pip uninstall -y onnxruntime onnxruntime-gpu, then install one")
    elif usable == ["CPUExecutionProvider"] and shutil.which("nvidia-smi"):
        hint = "an NVIDIA GPU is here but ONNX Runtime is CPU-only: replace onnxruntime with onnxruntime-gpu"
    detail = f"{ort.__version__} ({', '.join(installed) or '?'}); providers: {', '.join(providers)}"
    return Probe(True, detail, hint=hint, facts={"version": ort.__version__, "distributions": installed,
                                                 "providers": providers, "usable_providers": usable})


def _openvino() -> Probe:
    from brainseg.runtime.backends.openvino import DEVICE, import_openvino, native_bf16

    not_x86 = "" if machine.is_x86() else " (auto never takes it on this CPU: it is not x86)"
    try:
        ov = import_openvino()
    except BrainsegError as err:
        return Probe(False, _cause(err), hint=f"pip install 'brainseg[openvino]'{not_x86}")
    core = ov.Core()
    capabilities = list(core.get_property(DEVICE, "OPTIMIZATION_CAPABILITIES"))
    shown = [c for c in OPENVINO_CAPABILITIES if c in capabilities]
    bf16 = native_bf16(core)
    version = ov.__version__.split("-")[0]
    detail = (f"{version}; {DEVICE} {core.get_property(DEVICE, 'FULL_DEVICE_NAME')}: {', '.join(shown)}"
              f"{'' if bf16 else ' (no native bf16)'}{not_x86}")
    return Probe(True, detail, facts={"version": version, "capabilities": capabilities, "native_bf16": bf16,
                                      "x86": machine.is_x86()})


def _cuda_python() -> Probe:
    from brainseg.artifacts.cuda import import_cudart

    try:
        cudart = import_cudart()
    except BrainsegError as err:
        return Probe(False, _cause(err), hint=CUDA_PYTHON_HINT)
    version = machine.package_version("cuda-python", "cuda-bindings")
    return Probe(True, f"{version} ({cudart.__name__})", facts={"version": version, "module": cudart.__name__})


def _looked_up(module: str, distribution: str, hint: str, note: str = "") -> Probe:
    """Whether `module` is installed, without importing it (find_spec reads the path, runs nothing)."""
    if importlib.util.find_spec(module) is None:
        return Probe(False, "not installed", hint=hint)
    version = machine.package_version(distribution)
    return Probe(True, f"{version or '?'}{note}", facts={"version": version})


PROBES: dict[str, Callable[[], Probe]] = {
    "python": _python,
    "cpu": _cpu,
    "nvidia-gpu": _nvidia_gpu,
    "cuda-runtime": _cuda_runtime,
    "tensorrt": _tensorrt,
    "onnxruntime": _onnxruntime,
    "openvino": _openvino,
    "cuda-python": _cuda_python,
    "ray": partial(_looked_up, "ray", "ray", "pip install 'brainseg[distributed]' (seg-run --ray, seg-serve)"),
    "tritonclient": partial(_looked_up, "tritonclient", "tritonclient",
                            "pip install 'brainseg[triton]' (seg-export triton's config check)"),
    "torch": partial(_looked_up, "torch", "torch", "only training needs it: pip install 'brainseg[train]'",
                     " (training only; seg-run does not import it)"),
}


@contextlib.contextmanager
def _passed_over() -> Iterator[list[str]]:
    """What brainseg.runtime logs while it chooses ("not using TensorRT: ..."): the backends it passed over."""
    lines: list[str] = []
    logger, handler = logging.getLogger("brainseg.runtime"), logging.Handler(logging.INFO)
    handler.emit = lambda record: lines.append(record.getMessage())
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def _auto_choice() -> dict:
    from brainseg.runtime.backends import auto_backend

    with _passed_over() as notes:
        backend, reason = auto_backend()
    return {"backend": backend, "reason": reason, "passed_over": notes}


def _artifacts_choice(folder: Path) -> dict:
    """Open `folder` as `seg-run --backend auto` would, say what it chose and why, and close it."""
    from brainseg.runtime.segmenter import Segmenter

    with _passed_over() as notes, Segmenter(folder) as segmenter:
        described = segmenter.describe()
    return {"folder": str(folder), **asdict(segmenter.choice), "passed_over": notes, "opened": described,
            "export_notes": _export_notes(segmenter.manifest)}


def _export_notes(manifest) -> list[str]:
    """What the export recorded about TensorRT for this folder: the engines it built and why, and the
    files TensorRT's parser would refuse (seg-export engine builds from those)."""
    notes = [manifest.engines.reason] if manifest.engines is not None else []
    for name, check in manifest.tensorrt_checks.items():
        problems = [*(f"op {op} x{count}" for op, count in check.unsupported_ops.items()), *check.qdq_problems]
        if problems:
            notes.append(f"TensorRT would refuse {name}: {'; '.join(problems)}")
    return notes


def doctor_command(
    artifacts: Annotated[Path | None, typer.Option(
        help="Also open this artifacts folder as seg-run would and say which file and backend it takes.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object (for bug reports).")] = False,
) -> None:
    """What this machine has (GPU, driver, CUDA, TensorRT, ONNX Runtime, OpenVINO, ...) and which
    backend `--backend auto` would take, and why. Exit code 0; 2 when --artifacts cannot be opened."""
    report = diagnose(artifacts)
    typer.echo(json.dumps(report.to_dict(), indent=2, default=str) if json_output else "\n".join(report.lines()))
    if report.artifacts_error:
        typer.secho(f"error: {report.artifacts_error}", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=2)


def doctor_entry() -> None:
    """Console script `seg-doctor`."""
    typer.run(doctor_command)


if __name__ == "__main__":
    doctor_entry()
