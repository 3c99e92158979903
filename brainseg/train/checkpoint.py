"""Checkpoints: written atomically, loaded with `weights_only=True`, checked before use."""

from __future__ import annotations

import io
from pathlib import Path

import torch

from brainseg.errors import CheckpointError
from brainseg.fileio import write_atomic

FORMAT = "brainseg-checkpoint/1"


def save_checkpoint(path: Path, payload: dict) -> None:
    """Write `payload` to `path` so that a crash leaves either the old file or the new one."""
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **payload}, buffer)
    write_atomic(path, buffer.getbuffer())


def load_checkpoint(path: Path, *, expect_model: str | None = None) -> dict:
    """Load a checkpoint (tensors and plain Python values only) and check it is ours.

    Raises CheckpointError naming the file when it is missing, unreadable, not a brainseg
    checkpoint, or holds another architecture than `expect_model`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for corrupt or truncated files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a brainseg checkpoint (expected format {FORMAT})")
    if expect_model is not None and payload.get("model") != expect_model:
        raise CheckpointError(
            f"{path}: holds a {payload.get('model')!r} model, expected {expect_model!r}"
        )
    return payload
