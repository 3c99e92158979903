"""The names inside an artifacts folder: files, graph tensors, precisions and targets, derived once.

A precision's file depends on the target that runs it: fp32 and fp16 have one file for both,
int8 has one file per target, because TensorRT takes only symmetric int8 activations while
ONNX Runtime's CPU kernels are fast only with uint8 activations.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
ACCURACY_REPORT = "accuracy.md"
TIMING_CACHE = "tensorrt.timing-cache"  # kernel timings TensorRT reuses between builds on one GPU
ORT_TENSORRT_CACHE = ".ort-tensorrt-cache"  # engines ONNX Runtime's TensorRT provider keeps

PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# bf16 is a compute type, not a file: OpenVINO runs the fp32 file in bf16 on CPUs with native bf16
# (AVX512-BF16, AMX). It is exported (scored and gated) only on such a CPU, and only OpenVINO runs it.
OPENVINO_ONLY = ("bf16",)
TARGETS = ("gpu", "cpu")
REFERENCE = "pytorch-fp32"  # the accuracy table's row every exported file is compared with

INPUT_NAME = "image"
PROBABILITY, MASK, DISAGREEMENT = "probability", "mask", "disagreement"
MEMBER_OUTPUTS = (PROBABILITY, MASK)
ENSEMBLE_OUTPUTS = (PROBABILITY, MASK, DISAGREEMENT)

# int8 activation type each target needs (see the module docstring)
INT8_ACTIVATIONS = {"gpu": "int8_symmetric", "cpu": "uint8"}


def ensemble_file(precision: str, target: str = "gpu") -> str:
    """"ensemble.fp16.onnx"; the int8 CPU file is "ensemble.int8-cpu.onnx"; bf16 runs the fp32 file."""
    return "ensemble.fp32.onnx" if precision in OPENVINO_ONLY else f"ensemble.{accuracy_row(precision, target)}.onnx"


def accuracy_row(precision: str, target: str = "gpu") -> str:
    """The accuracy table's row for the file of `precision` on `target`: "fp32", "int8", "int8-cpu"."""
    return "int8-cpu" if (precision, target) == ("int8", "cpu") else precision


def member_file(model: str) -> str:
    """One model's own fp32 graph: "unet.fp32.onnx"."""
    return f"{model}.fp32.onnx"


def engine_file(onnx_name: str) -> str:
    """The TensorRT engine compiled from an ONNX file: "ensemble.fp16.onnx" -> "ensemble.fp16.engine"."""
    return Path(onnx_name).stem + ".engine"


def provenance_file(engine_path: Path) -> Path:
    """Where the provenance of `engine_path` lives: `<engine>.provenance.json` beside it."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".provenance.json")
