"""What seg-run's `--backend auto` should take on this machine, worked out from the machine's own
facts (which packages import, ONNX Runtime's providers, the CPU's architecture) and not from
brainseg.runtime.backends.auto_backend, the function the tests check."""

from __future__ import annotations

import importlib
import importlib.util
import platform

GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}
X86 = ("x86_64", "amd64", "i386", "i686", "x86")


def expected_auto_backend() -> str:
    """TensorRT where it imports; ONNX Runtime where it has a GPU provider; OpenVINO where it is
    installed on an x86 CPU; else ONNX Runtime on the CPU (or none without it)."""
    has_ort = importlib.util.find_spec("onnxruntime") is not None
    providers = set(importlib.import_module("onnxruntime").get_available_providers()) if has_ort else set()
    if importlib.util.find_spec("tensorrt") is not None:
        return "tensorrt"
    if providers & GPU_PROVIDERS:
        return "onnxruntime"
    if importlib.util.find_spec("openvino") is not None and platform.machine().lower() in X86:
        return "openvino"
    return "onnxruntime" if has_ort else "none"
