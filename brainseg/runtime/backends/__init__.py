"""Which backend and precision run an artifacts folder, and why: decided once, then opened.

`auto` takes a TensorRT engine whose provenance matches this machine, else ONNX Runtime with a
GPU execution provider (TensorRT, CUDA) where it has one, else, on an x86 CPU with the `openvino`
extra installed, OpenVINO (faster than ONNX Runtime on the same files on the CPUs measured:
docs/benchmarks.md) where the export scored the file as OpenVINO runs it and that row passed the
gate, else ONNX Runtime on the CPU. Only precisions that passed the export's accuracy gate are
offered; bf16 only on OpenVINO with native bf16. Without `--precision`, GPUs get fp16 and the CPU
gets int8 (the file made for it), each falling back to fp32 when that precision is not usable.

`brainseg.runtime.segmenter.Segmenter` is the one caller of `open_backend`: every command holds a
Segmenter, never a backend of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from brainseg.artifacts.layout import ORT_TENSORRT_CACHE
from brainseg.artifacts.manifest import Manifest
from brainseg.artifacts.variants import OPENVINO_ONLY
from brainseg.choices import BackendName
from brainseg.errors import ArtifactError, BrainsegError, ConfigError, is_installed

log = logging.getLogger("brainseg.runtime")
BACKENDS = tuple(name.value for name in BackendName)
CPU_PROVIDER = "CPUExecutionProvider"


class Backend(Protocol):
    """What every backend offers. `infer(batch)` takes (n, H, W, C) slices in the graph's input dtype
    and returns the graph's outputs by name, each (n, K, H, W), as arrays the caller owns: no backend
    hands out a view of a buffer it reuses on its next call, so nobody copies them "in case"."""

    name: str
    precision: str
    max_batch: int | None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Choice:
    """What runs: the backend, the precision and its file in the artifacts folder, and why."""

    backend: str
    precision: str
    file: str
    reason: str


@dataclass(frozen=True)
class BackendSettings:
    """What opening a backend needs beyond the choice; the values come from `SegmenterOptions`."""

    device: int
    threads: int | None
    spinning: bool
    cuda_graph_batch: int | None  # TensorRT: capture a CUDA graph for batches of this size


def choose_precision(manifest: Manifest, asked: str | None, *, target: str, bf16: bool = False,
                     openvino: bool = False) -> str:
    """The precision to run on `target` ("gpu" or "cpu"): `asked` if it is usable there, else the
    target's preferred one (fp16 on a GPU; int8, then bf16, on a CPU), else fp32, else any that
    passed the gate. bf16 only where `bf16` says the backend runs it (OpenVINO on a CPU with native bf16).
    `openvino`: only precisions whose CPU file the export also scored as OpenVINO runs it, and passed.

    Raises ConfigError when `asked` was not exported, failed the gate, has no file for `target` or
    is bf16 where it cannot run, and ArtifactError when nothing is usable at all.
    """
    if asked in OPENVINO_ONLY and not bf16:
        raise ConfigError(f"precision {asked} runs only on OpenVINO (--backend openvino) on a CPU with native "
                          "bf16 (AVX512-BF16 or AMX)")
    usable = [p for p in manifest.usable_precisions(target) if (bf16 or p not in OPENVINO_ONLY)
              and (not openvino or manifest.openvino_passed(p))]
    if openvino and asked is not None and asked in manifest.usable_precisions(target) and asked not in usable:
        raise ConfigError(f"precision {asked} was not scored as OpenVINO runs it, or failed the gate there (export "
                          f"again with the openvino extra installed); on OpenVINO: {', '.join(usable) or 'none'}")
    if openvino and not usable and manifest.usable_precisions(target):
        raise ConfigError(f"{manifest.folder}: no file was scored as OpenVINO runs it and passed the gate (export "
                          "again with the openvino extra installed, or use --backend onnxruntime)")
    if not usable:
        raise ArtifactError(f"{manifest.folder}: no precision with a {target} file passed the export's accuracy gate")
    if asked is not None:
        if asked not in manifest.exported_precisions:
            raise ConfigError(f"precision {asked} was not exported; this folder has {', '.join(usable)}")
        if not manifest.passed(asked):
            raise ConfigError(f"precision {asked} failed the export's accuracy gate; usable: {', '.join(usable)}")
        if asked not in usable:
            raise ConfigError(f"precision {asked} has no {target} file in {manifest.folder}; usable here: "
                              f"{', '.join(usable)}")
        return asked
    for preferred in ("fp16", "fp32") if target == "gpu" else ("int8", "bf16", "fp32"):
        if preferred in usable:
            return preferred
    return usable[0]


def tensorrt_present() -> bool:
    return is_installed("tensorrt")


def openvino_present() -> bool:
    return is_installed("openvino")


def open_backend(manifest: Manifest, backend: str, precision: str | None,
                 settings: BackendSettings) -> tuple[Backend, Choice]:
    """The backend to run with, and a Choice saying what was picked and why (see the module docstring).
    Each candidate backend resolves the precision once, for its own target."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend in ("auto", "tensorrt"):
        opened = _try_tensorrt(manifest, precision, settings, required=backend == "tensorrt")
        if opened is not None:
            return opened
    if backend == "openvino":
        return _open_openvino(manifest, precision, settings, "OpenVINO, as asked", openvino_only=True)
    if backend == "auto" and _openvino_preferred():
        return _open_openvino(manifest, precision, settings,
                              "OpenVINO on this x86 CPU (faster than ONNX Runtime on the same files: "
                              "docs/benchmarks.md), its run of the file gated by the export", openvino_only=False)
    return _open_onnxruntime(manifest, precision, settings)


def open_file(path: Path, backend: str, precision: str, *, threads: int | None, spinning: bool,
              defaults: bool = False) -> Backend:
    """One named ONNX file on the CPU, outside the gated choice: a member's own graph on ONNX Runtime,
    or OpenVINO with its own defaults (`defaults`; seg-bench's peer row). For comparisons, not for seg-run."""
    if backend == "onnxruntime":
        from brainseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, precision, provider=CPU_PROVIDER, threads=threads, spinning=spinning)
    if backend == "openvino":
        from brainseg.runtime.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(path, precision, threads=threads, defaults=defaults)
    raise ConfigError(f"a single file runs on onnxruntime or openvino, not {backend!r}")


def auto_backend() -> tuple[str, str]:
    """What `--backend auto` takes on this machine before it looks at an artifacts folder, and why:
    ("tensorrt", ...) where TensorRT imports (used when the folder has an engine built here), else
    ONNX Runtime's best provider, or OpenVINO on an x86 CPU (see the module docstring)."""
    from brainseg.runtime.backends.onnxruntime import available_providers

    ort = available_providers()[0] if is_installed("onnxruntime") else None
    if tensorrt_present():
        return "tensorrt", ("TensorRT imports: a folder's engine is used where its provenance matches this GPU; "
                            f"otherwise the next choice ({ort or 'none'})")
    if ort is not None and ort != CPU_PROVIDER:
        return "onnxruntime", f"ONNX Runtime has {ort}"
    if _openvino_preferred():
        return "openvino", "no GPU provider; OpenVINO is installed and this is an x86 CPU"
    if ort is None:
        return "none", "neither ONNX Runtime nor OpenVINO is installed (pip install 'brainseg[export]')"
    return "onnxruntime", "no GPU provider and no OpenVINO for this CPU: ONNX Runtime on the CPU"


def _openvino_preferred() -> bool:
    """`auto` on a CPU-only ONNX Runtime: OpenVINO where it is installed and this is an x86 CPU."""
    from brainseg.runtime.backends.onnxruntime import available_providers
    from brainseg.runtime.backends.openvino import is_x86

    if is_installed("onnxruntime") and available_providers()[0] != CPU_PROVIDER:
        return False
    why = None if is_x86() else "this CPU is not x86"
    if why is None and not openvino_present():
        why = "the openvino extra is not installed (pip install 'brainseg[openvino]')"
    if why is not None:
        log.info("not using OpenVINO: %s", why)
    return why is None


def _open_openvino(manifest: Manifest, asked: str | None, settings: BackendSettings, reason: str, *,
                   openvino_only: bool):
    """OpenVINO with the CPU precision chosen once. With `openvino_only` (--backend openvino) only
    precisions OpenVINO's rows passed are offered; under auto a precision whose OpenVINO row did not
    pass runs on ONNX Runtime instead (a folder exported without OpenVINO has no such rows)."""
    from brainseg.runtime.backends.openvino import OpenVinoBackend, import_openvino, native_bf16

    import_openvino()  # a missing extra is its one-line error, before any precision question
    precision = choose_precision(manifest, asked, target="cpu", bf16=native_bf16(), openvino=openvino_only)
    if not openvino_only and precision not in OPENVINO_ONLY and not manifest.openvino_passed(precision):
        log.info("not using OpenVINO: the export did not score %s as OpenVINO runs it, or it failed the gate "
                 "there (export again with the openvino extra installed)", precision)
        return _onnxruntime(manifest, precision, "cpu", CPU_PROVIDER, settings)
    path = manifest.path_for(precision, "cpu")
    runner = OpenVinoBackend(path, precision, threads=settings.threads)
    return runner, Choice("openvino", precision, path.name, reason)


def _try_tensorrt(manifest: Manifest, asked: str | None, settings: BackendSettings, *, required: bool):
    """TensorRT with the engine of the GPU precision, or None (auto) saying why not: TensorRT is
    checked first, so a folder without a GPU file for `asked` runs elsewhere on a machine without it."""
    if not tensorrt_present():
        return _not_tensorrt("TensorRT is not installed", required)
    try:
        precision = choose_precision(manifest, asked, target="gpu")
    except BrainsegError as err:
        if required:
            raise
        return _not_tensorrt(str(err), required)
    engine = manifest.engine_path(precision)
    if not engine.is_file():
        return _not_tensorrt(f"no {precision} engine in {manifest.folder} (build one with: "
                             f"seg-export engine {manifest.folder} --precision {precision})", required)
    from brainseg.runtime.backends.tensorrt import TensorRTBackend

    try:
        runner = TensorRTBackend(engine, manifest.path_for(precision, "gpu"), precision, device=settings.device,
                                 cuda_graph=settings.cuda_graph_batch is not None,
                                 graph_batch=settings.cuda_graph_batch)
    except BrainsegError as err:
        if required:
            raise
        log.warning("not using the TensorRT engine: %s", err)
        return None
    return runner, Choice("tensorrt", precision, engine.name, "a TensorRT engine built for this GPU")


def _not_tensorrt(why: str, required: bool) -> None:
    if required:
        raise ArtifactError(f"--backend tensorrt: {why}")
    log.info("not using TensorRT: %s", why)
    return None


def _open_onnxruntime(manifest: Manifest, asked: str | None, settings: BackendSettings):
    from brainseg.runtime.backends.onnxruntime import available_providers

    provider = available_providers()[0]
    target = "cpu" if provider == CPU_PROVIDER else "gpu"
    return _onnxruntime(manifest, choose_precision(manifest, asked, target=target), target, provider, settings)


def _onnxruntime(manifest: Manifest, precision: str, target: str, provider: str, settings: BackendSettings):
    from brainseg.runtime.backends.onnxruntime import OnnxRuntimeBackend

    path = manifest.path_for(precision, target)
    runner = OnnxRuntimeBackend(path, precision, provider=provider, device=settings.device, threads=settings.threads,
                                spinning=settings.spinning, cache_dir=manifest.folder / ORT_TENSORRT_CACHE)
    return runner, Choice("onnxruntime", precision, path.name, f"ONNX Runtime with {provider}")
