"""Checkpoints: written atomically, loaded with `weights_only=True`, checked before use."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from torch import nn

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


def load_model(path: Path, name: str) -> tuple[nn.Module, dict]:
    """The registered model `name` with the weights of the checkpoint at `path`, in eval mode on the CPU.

    Returns (model, payload). Raises CheckpointError naming the file when the checkpoint cannot
    be loaded or its weights do not fit the architecture its options describe.
    """
    from brainseg.train.models.registry import build_model

    payload = load_checkpoint(path, expect_model=name)
    model = build_model(name, in_channels=payload["in_channels"], classes=payload["classes"],
                        options=payload["model_options"])
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit a {name} model with its saved options ({first})") from err
    return model.eval(), payload
