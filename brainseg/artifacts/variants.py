"""Every way an export can be deployed, in one table: precision x target x runtime, and the names from it.

A variant is the ensemble in one precision, made for one target ("gpu" or "cpu"), run by one
runtime. Its ONNX file, its engine file and its row in the accuracy tables are derived here and
nowhere else; the export writes and scores variants, the manifest records them, and seg-run,
seg-bench, seg-doctor and the Triton export look them up.

- The file depends on the target only for int8: TensorRT takes symmetric int8 activations, while
  ONNX Runtime's and OpenVINO's CPU kernels are fast with uint8 ones ("ensemble.int8-cpu.onnx").
- bf16 has no file: OpenVINO computes the fp32 file's float layers in bf16 on CPUs with native
  bf16, so it is a variant of OpenVINO alone.
- OpenVINO rounds differently from ONNX Runtime, and an engine differs from its ONNX file, so
  each runtime's run of a file is scored in a row of its own ("int8-cpu@openvino", "engine-fp16").
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainseg.choices import PrecisionName

PRECISIONS = PrecisionName.values()
TARGETS = ("gpu", "cpu")
RUNTIMES = ("onnxruntime", "openvino", "tensorrt")
INT8_ACTIVATIONS = {"gpu": "int8_symmetric", "cpu": "uint8"}  # see the module docstring


@dataclass(frozen=True)
class Variant:
    precision: str
    target: str
    runtime: str

    @property
    def stem(self) -> str:
        """The file's name between "ensemble." and ".onnx": "fp32", "int8", "int8-cpu"."""
        if self.precision == "bf16":
            return "fp32"
        return "int8-cpu" if (self.precision, self.target) == ("int8", "cpu") else self.precision

    @property
    def onnx_file(self) -> str:
        """The ONNX file this variant runs: "ensemble.int8-cpu.onnx"."""
        return f"ensemble.{self.stem}.onnx"

    @property
    def engine_file(self) -> str:
        """The TensorRT engine compiled from the variant's ONNX file: "ensemble.fp16.engine"."""
        return engine_file(self.onnx_file)

    @property
    def row(self) -> str:
        """Its row in the accuracy tables: "fp32", "int8-cpu", "int8-cpu@openvino", "bf16", "engine-fp16"."""
        if self.runtime == "tensorrt":
            return f"engine-{self.precision}"
        if self.runtime == "openvino":
            return "bf16" if self.precision == "bf16" else f"{self.stem}@openvino"
        return self.stem

    @property
    def int8_activations(self) -> str | None:
        """The activation type of an int8 file ("int8_symmetric" or "uint8"); None for other precisions."""
        return INT8_ACTIVATIONS[self.target] if self.precision == "int8" else None


VARIANTS: tuple[Variant, ...] = (
    Variant("fp32", "gpu", "onnxruntime"), Variant("fp32", "cpu", "onnxruntime"),
    Variant("fp16", "gpu", "onnxruntime"), Variant("fp16", "cpu", "onnxruntime"),
    Variant("int8", "gpu", "onnxruntime"), Variant("int8", "cpu", "onnxruntime"),
    Variant("fp32", "cpu", "openvino"), Variant("int8", "cpu", "openvino"), Variant("bf16", "cpu", "openvino"),
    Variant("fp32", "gpu", "tensorrt"), Variant("fp16", "gpu", "tensorrt"), Variant("int8", "gpu", "tensorrt"),
)
# precisions that only one runtime computes, with no file of their own (bf16)
OPENVINO_ONLY = tuple(p for p in PRECISIONS if {v.runtime for v in VARIANTS if v.precision == p} == {"openvino"})
FILE_PRECISIONS = tuple(p for p in PRECISIONS if p not in OPENVINO_ONLY)  # precisions with ONNX files


def variant(precision: str, target: str, runtime: str = "onnxruntime") -> Variant:
    """The variant of `precision` on `target` run by `runtime`; ValueError listing the variants that exist."""
    found = Variant(precision, target, runtime)
    if found not in VARIANTS:
        known = ", ".join(f"{v.precision}/{v.target}/{v.runtime}" for v in VARIANTS)
        raise ValueError(f"no variant {precision}/{target}/{runtime}; the variants are {known}")
    return found


def file_variant(precision: str, target: str) -> Variant:
    """The variant that names `precision`'s file on `target`: ONNX Runtime's, or OpenVINO's for bf16."""
    return variant(precision, target, "openvino" if precision in OPENVINO_ONLY else "onnxruntime")


def engine_file(onnx_name: str) -> str:
    """The TensorRT engine compiled from an ONNX file: "ensemble.fp16.onnx" -> "ensemble.fp16.engine"."""
    return Path(onnx_name).stem + ".engine"


def member_file(model: str) -> str:
    """One model's own fp32 graph: "unet.fp32.onnx"."""
    return f"{model}.fp32.onnx"
