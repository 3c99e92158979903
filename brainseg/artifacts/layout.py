"""The fixed names inside an artifacts folder: the manifest, reports, caches and graph tensors.

The names of the deployable files (ONNX files per precision and target, engines) and of their
accuracy rows come from the variant table, `brainseg.artifacts.variants`.
"""

from __future__ import annotations

from pathlib import Path

MANIFEST = "manifest.json"
ACCURACY_REPORT = "accuracy.md"
FRONT_PLOT = "front.png"  # the Dice-latency front: validation Dice against ms/slice, the shipped candidate marked
TIMING_CACHE = "tensorrt.timing-cache"  # kernel timings TensorRT reuses between builds on one GPU
ORT_TENSORRT_CACHE = ".ort-tensorrt-cache"  # engines ONNX Runtime's TensorRT provider keeps

REFERENCE = "pytorch-fp32"  # the accuracy table's row every exported file is compared with

INPUT_NAME = "image"
PROBABILITY, MASK, DISAGREEMENT = "probability", "mask", "disagreement"
MEMBER_OUTPUTS = (PROBABILITY, MASK)
ENSEMBLE_OUTPUTS = (PROBABILITY, MASK, DISAGREEMENT)


def provenance_file(engine_path: Path) -> Path:
    """Where the provenance of `engine_path` lives: `<engine>.provenance.json` beside it."""
    engine_path = Path(engine_path)
    return engine_path.with_name(engine_path.name + ".provenance.json")
