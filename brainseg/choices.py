"""The fixed sets of values an option may take, one enum each: typer lists and validates them in
every command's help, and the library checks against the same members.

Each member is a `str` whose str() and format() are its value, so it can be stored, compared,
written to JSON and printed exactly as the plain string would be.
"""

from __future__ import annotations

from enum import Enum


class StrChoice(str, Enum):
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class BackendName(StrChoice):
    """Which runtime runs an artifacts folder: `auto` picks (brainseg.runtime.backends)."""

    AUTO, TENSORRT, ONNXRUNTIME, OPENVINO = "auto", "tensorrt", "onnxruntime", "openvino"


class PrecisionName(StrChoice):
    """A precision of an exported file; bf16 is OpenVINO computing the fp32 file in bf16."""

    FP32, FP16, INT8, BF16 = "fp32", "fp16", "int8", "bf16"


class TtaMode(StrChoice):
    """Flip test-time augmentation; `auto` keeps the artifacts' choice."""

    AUTO, NONE, FLIP = "auto", "none", "flip"


class ComponentRule(StrChoice):
    """The 3-D component rule applied to each scan's mask; `auto` keeps the artifacts' choice."""

    AUTO, NONE, LARGEST, MIN_VOLUME = "auto", "none", "largest", "min_volume"


class TritonKind(StrChoice):
    """Where a Triton model's instances run."""

    GPU, CPU = "gpu", "cpu"


class BratsLabels(StrChoice):
    """The BraTS label convention of a label map: enhancing tumour 4 (up to 2021) or 3 (from 2023)."""

    Y2021, Y2023 = "2021", "2023"
