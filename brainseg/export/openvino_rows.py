"""The export's OpenVINO rows: the CPU files as OpenVINO runs them, and bf16, each through the gate.

seg-run's `auto` prefers OpenVINO on x86 CPUs, and OpenVINO rounds differently from ONNX Runtime
(int8 most of all), so what OpenVINO computes from a file is scored on its own: where the
`openvino` extra is installed, the export runs the fp32 file and the int8 CPU file through the
runtime's OpenVINO backend on the validation and test patients (rows "fp32@openvino",
"int8-cpu@openvino") and gates them like every other row. The manifest names each row beside the
file's ONNX Runtime row (`targets.cpu.openvino_row`); seg-run runs a precision on OpenVINO only
where that row passed, and a folder exported without OpenVINO runs on ONNX Runtime.

bf16 is a precision like fp16 without a file of its own: OpenVINO computes the fp32 file's float
layers in bf16 on CPUs with native bf16 (AVX512-BF16 or AMX). `--bf16` scores it so (row "bf16",
its OpenVINO row too) and records it as a CPU precision whose file is the fp32 file. On a machine
that cannot run bf16, `--bf16` is refused before any work: what cannot run here cannot be scored here.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from brainseg.artifacts.layout import PROBABILITY
from brainseg.artifacts.sections import PrecisionEntry, TargetUse
from brainseg.artifacts.variants import VARIANTS, Variant, variant
from brainseg.errors import BrainsegError, ConfigError, is_installed

BF16 = variant("bf16", "cpu", "openvino")


def openvino_row(precision: str) -> str:
    """The accuracy row of `precision`'s CPU file run by OpenVINO (the variant table's): "int8-cpu@openvino"."""
    return variant(precision, "cpu", "openvino").row


def check_request(asked: bool) -> None:
    """With --bf16, refuse (ConfigError) a machine that cannot run, hence cannot score, bf16."""
    if not asked:
        return
    if not is_installed("openvino"):
        raise ConfigError("--bf16 runs the fp32 file on OpenVINO, which is not installed here; "
                          "pip install 'brainseg[openvino]', or leave out --bf16")
    from brainseg.runtime.backends.openvino import native_bf16

    if not native_bf16():
        raise ConfigError("--bf16 needs a CPU with native bf16 (AVX512-BF16 or AMX), which this one lacks; "
                          "export on the CPU that will run it, or leave out --bf16")


def predictor(path: Path, precision: str):
    """The file at `path` as seg-run's OpenVINO backend runs it in `precision`: images -> probabilities."""
    from brainseg.runtime.backends.openvino import OpenVinoBackend

    try:
        backend = OpenVinoBackend(Path(path), precision)
    except BrainsegError as err:
        raise BrainsegError(f"scoring {precision} on OpenVINO: {err}") from err
    return lambda images: backend.infer(np.ascontiguousarray(images))[PROBABILITY]


def score(scorer, folder: Path, *, bf16: bool) -> None:
    """Score on OpenVINO, where it is installed, each CPU file already scored on ONNX Runtime (fp32,
    int8 CPU), and bf16 when asked (check_request has passed). `scorer` is the export's _Scorer."""
    if not (bf16 or is_installed("openvino")):
        return
    for precision in ("fp32", "int8"):
        path = Path(folder) / variant(precision, "cpu").onnx_file
        if variant(precision, "cpu").row in scorer.val_table and path.is_file():
            scorer.score(openvino_row(precision), predictor(path, precision))
    if bf16:
        scorer.score(BF16.row, predictor(Path(folder) / BF16.onnx_file, BF16.precision))


def add_to_precisions(precisions: dict[str, PrecisionEntry], table: dict) -> dict[str, PrecisionEntry]:
    """The manifest's `precisions` with each CPU file's OpenVINO row named, and bf16 where it was scored."""
    added = {}
    for precision, entry in precisions.items():
        cpu = entry.targets.get("cpu")
        if cpu is not None and Variant(precision, "cpu", "openvino") in VARIANTS and openvino_row(precision) in table:
            entry = replace(entry, targets={**entry.targets, "cpu": replace(cpu, openvino_row=openvino_row(precision))})
        added[precision] = entry
    if BF16.row in table:
        added[BF16.precision] = PrecisionEntry(passed=bool(table[BF16.row]["passed"]), compute="bf16", targets={
            "cpu": TargetUse(file=BF16.onnx_file, row=BF16.row, openvino_row=BF16.row)})
    return added
