"""Engine provenance: what a TensorRT engine was built from and for, checked before it is ever loaded.

An engine is tied to one ONNX file (by sha256), one precision, one TensorRT version and one GPU
(name and compute capability). Its record, `<engine>.provenance.json`, is written beside it by
the build and compared with this machine before anything deserialises the engine, so an engine
copied from another machine is refused with a message naming both sides instead of crashing.

TensorRT and cuda-python are imported inside the functions that use them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from brainseg.artifacts import cuda
from brainseg.artifacts.layout import provenance_file
from brainseg.errors import ArtifactError, DataError, require
from brainseg.fileio import sha256_file

DEFAULT_BATCH = (1, 8, 32)
_MATCHED = ("onnx_sha256", "precision", "tensorrt_version", "gpu_name", "compute_capability", "strongly_typed")
_TENSORRT_HINT = "TensorRT itself comes from NVIDIA (NVIDIA's wheels on a workstation, JetPack on a Jetson)"


def import_tensorrt() -> Any:
    """The tensorrt module, or the error naming the `gpu` extra and where TensorRT comes from."""
    return require("tensorrt", "gpu", hint=_TENSORRT_HINT)


@dataclass(frozen=True)
class EngineProvenance:
    """What an engine was built from and for; `stored.mismatches(current)` says why it cannot run here."""

    onnx_sha256: str
    precision: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "major.minor", e.g. "8.7" for Jetson Orin
    profile: tuple[int, int, int]  # (min, opt, max) batch of the optimisation profile
    strongly_typed: bool
    built_at: str  # ISO 8601, UTC

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> EngineProvenance:
        """Parse `to_json` output; raises DataError when a field is missing or malformed."""
        try:
            data = json.loads(text)
            missing = [f.name for f in fields(cls) if f.name not in data]
            if missing:
                raise DataError(f"engine provenance lacks {', '.join(missing)}")
            profile = tuple(int(b) for b in data["profile"])
            if len(profile) != 3:
                raise DataError(f"engine provenance profile {data['profile']} is not (min, opt, max)")
        except (ValueError, TypeError) as exc:
            raise DataError(f"engine provenance is not valid: {exc}") from exc
        return cls(**{**{f.name: data[f.name] for f in fields(cls)}, "profile": profile})

    def mismatches(self, current: EngineProvenance) -> list[str]:
        """Each reason this (stored) engine cannot serve `current`, naming both sides.

        `built_at` never counts. The profile counts only when the requested batch range
        (`current.profile` min..max) is not inside the engine's: another opt batch changes which
        batch runs fastest, not which batches run, so it is no reason to rebuild.
        """
        found = [
            f"{name}: engine {getattr(self, name)}, this machine {getattr(current, name)}"
            for name in _MATCHED
            if getattr(self, name) != getattr(current, name)
        ]
        (low, _, high), (want_low, _, want_high) = self.profile, current.profile
        if want_low < low or want_high > high:
            found.append(f"profile: engine serves batch {low}-{high}, requested {want_low}-{want_high}")
        return found


def current_provenance(onnx_path: Path, precision: str, profile: tuple[int, ...] = DEFAULT_BATCH) -> EngineProvenance:
    """The provenance an engine built now, on this machine's current CUDA device, would have."""
    trt = import_tensorrt()
    gpu_name, compute_capability = cuda.gpu_identity()
    if not Path(onnx_path).is_file():
        raise DataError(f"{onnx_path}: ONNX file not found")
    return EngineProvenance(
        onnx_sha256=sha256_file(onnx_path),  # external-data files, if any, are not included
        precision=precision,
        tensorrt_version=trt.__version__,
        gpu_name=gpu_name,
        compute_capability=compute_capability,
        profile=tuple(profile),
        strongly_typed=True,  # brainseg builds nothing else
        built_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def stored_provenance(engine_path: Path) -> EngineProvenance:
    """The record beside `engine_path`; DataError when it is missing or malformed."""
    record = provenance_file(engine_path)
    try:
        return EngineProvenance.from_json(record.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read the provenance file {record.name} ({exc.strerror})") from exc


def engine_problems(engine_path: Path, current: EngineProvenance) -> list[str]:
    """Why the engine at `engine_path` cannot serve `current`; empty when it can."""
    if not Path(engine_path).is_file():
        return [f"no engine at {engine_path}"]
    if not provenance_file(engine_path).is_file():
        return [f"no provenance file {provenance_file(engine_path).name} beside the engine"]
    try:
        stored = stored_provenance(engine_path)
    except DataError as exc:
        return [f"{provenance_file(engine_path).name}: {exc}"]
    return stored.mismatches(current)


def check_engine(engine_path: Path, onnx_path: Path, precision: str,
                 batch: tuple[int, int, int] | None = None) -> None:
    """Refuse an engine built for another ONNX file, precision, TensorRT or GPU, without deserialising it.

    `batch` is the (min, opt, max) range the caller will send; None: whatever the engine's own
    profile serves. Raises ArtifactError naming both sides of each mismatch.
    """
    if batch is None:
        try:
            batch = stored_provenance(engine_path).profile
        except DataError:
            batch = DEFAULT_BATCH  # engine_problems reports the missing or broken record
    problems = engine_problems(Path(engine_path), current_provenance(onnx_path, precision, batch))
    if problems:
        raise ArtifactError(
            f"{engine_path} was not built for this machine and request: {'; '.join(problems)}. "
            "Rebuild it here (seg-export engine)."
        )
