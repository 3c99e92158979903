"""Pick the backend and precision `seg-run` uses, and say why.

`auto` takes a TensorRT engine whose provenance matches this machine, else ONNX Runtime with
the best execution provider present (TensorRT, CUDA, CPU). Only precisions that passed the
export's accuracy gate are offered. Without `--precision`, GPUs get fp16 and the CPU gets int8
(the file made for it), each falling back to fp32 when that precision is not usable.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from brainseg.errors import ArtifactError, BrainsegError, ConfigError
from brainseg.export.manifest import usable_precisions

log = logging.getLogger("brainseg.runtime")
BACKENDS = ("auto", "tensorrt", "onnxruntime")
CPU_PROVIDER = "CPUExecutionProvider"


class Backend(Protocol):
    name: str
    precision: str
    max_batch: int | None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class Choice:
    backend: str
    precision: str
    file: str
    reason: str


def precision_file(manifest: dict, precision: str, *, target: str) -> str:
    """The ONNX file of `precision` made for `target` ("cpu" or "gpu")."""
    entry = manifest["precisions"][precision]
    return entry.get("files", {}).get(target, entry["file"])


def choose_precision(manifest: dict, asked: str | None, *, on_gpu: bool) -> str:
    usable = usable_precisions(manifest)
    if not usable:
        raise ArtifactError("no precision in this artifacts folder passed the export's accuracy gate")
    if asked is not None:
        if asked not in manifest["precisions"]:
            raise ConfigError(f"precision {asked} was not exported; this folder has {', '.join(usable)}")
        if asked not in usable:
            raise ConfigError(f"precision {asked} failed the export's accuracy gate; usable: {', '.join(usable)}")
        return asked
    for preferred in ("fp16", "fp32") if on_gpu else ("int8", "fp32"):
        if preferred in usable:
            return preferred
    return usable[0]


def _engine_for(folder: Path, manifest: dict, precision: str) -> Path | None:
    onnx_name = precision_file(manifest, precision, target="gpu")
    engine = folder / (Path(onnx_name).stem + ".engine")
    return engine if engine.is_file() else None


def _tensorrt_present() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    return True


def open_backend(folder: Path, manifest: dict, *, backend: str = "auto", precision: str | None = None,
                 device: int = 0, threads: int | None = None, cuda_graph_batch: int | None = None,
                 spinning: bool = True) -> tuple[Backend, Choice]:
    """The backend to run with, and a Choice saying what was picked and why.

    `cuda_graph_batch`: with TensorRT, capture a CUDA graph for batches of this size.
    `spinning`: ONNX Runtime CPU threads spin between ops (see OnnxRuntimeBackend).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend in ("auto", "tensorrt"):
        opened = _try_tensorrt(folder, manifest, precision, device, cuda_graph_batch,
                               required=backend == "tensorrt")
        if opened is not None:
            return opened
    return _open_onnxruntime(folder, manifest, precision, device, threads, spinning)


def _try_tensorrt(folder, manifest, asked, device, cuda_graph_batch, *, required: bool):
    from brainseg.runtime.tensorrt_backend import TensorRTBackend

    precision = choose_precision(manifest, asked, on_gpu=True)
    engine = _engine_for(folder, manifest, precision)
    why = None
    if not _tensorrt_present():
        why = "TensorRT is not installed"
    elif engine is None:
        why = f"no {precision} engine in {folder} (build one with: seg-export engine {folder} --precision {precision})"
    if why is not None:
        if required:
            raise ArtifactError(f"--backend tensorrt: {why}")
        log.info("not using TensorRT: %s", why)
        return None
    onnx_name = precision_file(manifest, precision, target="gpu")
    try:
        runner = TensorRTBackend(engine, folder / onnx_name, precision, device=device,
                                 cuda_graph=cuda_graph_batch is not None, graph_batch=cuda_graph_batch)
    except BrainsegError as err:
        if required:
            raise
        log.warning("not using the TensorRT engine: %s", err)
        return None
    return runner, Choice("tensorrt", precision, engine.name, "a TensorRT engine built for this GPU")


def _open_onnxruntime(folder, manifest, asked, device, threads, spinning):
    from brainseg.runtime.onnxruntime_backend import OnnxRuntimeBackend, available_providers

    provider = available_providers()[0]
    on_gpu = provider != CPU_PROVIDER
    precision = choose_precision(manifest, asked, on_gpu=on_gpu)
    name = precision_file(manifest, precision, target="gpu" if on_gpu else "cpu")
    runner = OnnxRuntimeBackend(folder / name, precision, provider=provider, device=device, threads=threads,
                                spinning=spinning, cache_dir=folder / ".ort-tensorrt-cache")
    return runner, Choice("onnxruntime", precision, name, f"ONNX Runtime with {provider}")
