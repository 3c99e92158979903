"""PyTorch eager FP32: the shipped graph as a user without this toolkit would run it, for comparison.

The same module seg-export traced (normalisation, the shipped candidate's networks, sigmoid,
weighted mean, threshold, disagreement), rebuilt from the source run's checkpoints and run eagerly
on the CPU in float32 under `torch.inference_mode`. Needs the `train` extra; imported only when asked for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from brainseg.artifacts.layout import ENSEMBLE_OUTPUTS
from brainseg.artifacts.manifest import Manifest
from brainseg.errors import DataError
from brainseg.export.graphs import EnsembleGraph
from brainseg.export.trained_run import load_run


class EagerEnsemble:
    """`infer(batch)` with the exported ensemble's weights, threshold and test-time augmentation."""

    def __init__(self, manifest: Manifest, *, threads: int | None = None) -> None:
        run_dir = manifest.source_run
        if not Path(run_dir).is_dir():
            raise DataError(f"the source run {run_dir} is not on this machine; PyTorch eager needs its checkpoints")
        shipped = manifest.ensemble["members"]
        run = load_run(run_dir, models=shipped)
        self.graph = EnsembleGraph([run.networks[name] for name in shipped], weights=manifest.ensemble["weights"],
                                   norm=run.norm, input_dtype=run.input_dtype, threshold=manifest.threshold).eval()
        self.threads = threads
        self.precision = "fp32"

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if self.threads is not None:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            outputs = self.graph(torch.from_numpy(batch))
        return {name: tensor.numpy() for name, tensor in zip(ENSEMBLE_OUTPUTS, outputs, strict=True)}

    def close(self) -> None:
        self.graph = None
