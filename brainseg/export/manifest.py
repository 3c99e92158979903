"""manifest.json: what an artifacts folder holds, how to feed it, and how accurate each file is.

Read by seg-run and seg-bench (no torch here). Every file is listed with its sha256; a file that
no longer matches is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from brainseg.errors import ArtifactError
from brainseg.fileio import sha256_file, write_atomic

FORMAT = "brainseg-artifacts/1"
MANIFEST = "manifest.json"
PRECISIONS = ("fp32", "fp16", "int8")
_REQUIRED = {
    "format": str, "input": dict, "outputs": dict, "threshold": float, "ensemble": dict,
    "files": dict, "precisions": dict, "versions": dict, "source_run": dict,
}
_INPUT_KEYS = ("name", "dtype", "layout", "channels", "height", "width", "normalisation")


def file_entry(folder: Path, name: str, **facts) -> dict:
    """A `files` entry: sha256 and size of `folder/name`, plus facts such as kind and precision."""
    path = folder / name
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, **facts}


def validate(manifest: dict) -> list[str]:
    """Schema problems of a manifest, as readable lines; empty when it is well formed."""
    problems = []
    for key, kind in _REQUIRED.items():
        if key not in manifest:
            problems.append(f"missing key {key!r}")
        elif not isinstance(manifest[key], kind) and not (kind is float and isinstance(manifest[key], int)):
            problems.append(f"{key!r} should be {kind.__name__}, is {type(manifest[key]).__name__}")
    if problems:
        return problems
    if manifest["format"] != FORMAT:
        problems.append(f"format is {manifest['format']!r}, expected {FORMAT!r}")
    problems += [f"input lacks {k!r}" for k in _INPUT_KEYS if k not in manifest["input"]]
    for precision, entry in manifest["precisions"].items():
        if precision not in PRECISIONS:
            problems.append(f"unknown precision {precision!r}")
        elif entry.get("file") not in manifest["files"]:
            problems.append(f"precision {precision} names {entry.get('file')!r}, which is not in 'files'")
    return problems


def verify_files(folder: Path, manifest: dict) -> list[str]:
    """Files that are missing or whose sha256 differs from the manifest's."""
    problems = []
    for name, entry in manifest["files"].items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{name}: sha256 differs from the manifest (modified or corrupt)")
    return problems


def write_manifest(folder: Path, manifest: dict) -> Path:
    problems = validate(manifest)
    if problems:
        raise ValueError(f"refusing to write an invalid manifest: {'; '.join(problems)}")
    path = Path(folder) / MANIFEST
    write_atomic(path, json.dumps(manifest, indent=2) + "\n")
    return path


def load_manifest(folder: str | Path, *, verify: bool = True) -> dict:
    """Read and check an artifacts folder's manifest; raise ArtifactError naming what is wrong."""
    path = Path(folder) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{folder}: no {MANIFEST}; is this a seg-export artifacts folder?") from None
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{path}: unreadable ({err})") from err
    problems = validate(manifest) + (verify_files(Path(folder), manifest) if verify else [])
    if problems:
        raise ArtifactError(f"{path}: " + "; ".join(problems))
    return manifest


def usable_precisions(manifest: dict) -> list[str]:
    """The precisions that passed the export's accuracy gate, in PRECISIONS order."""
    return [p for p in PRECISIONS if manifest["precisions"].get(p, {}).get("passed")]
