"""Where an export writes: a hidden staging folder beside the target, renamed into place only when complete,
so an interrupted export never leaves a folder that looks like valid artifacts; and the files it holds."""

from __future__ import annotations

import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from brainseg.artifacts.manifest import file_entry
from brainseg.artifacts.sections import FileEntry
from brainseg.errors import ConfigError


@dataclass
class Writer:
    """Collects files in the staging folder with their facts for the manifest."""

    folder: Path
    files: dict[str, dict] = field(default_factory=dict)
    notes: dict[str, dict] = field(default_factory=dict)

    def add(self, name: str, **facts) -> Path:
        self.files[name] = facts
        return self.folder / name

    def finalise(self) -> dict[str, FileEntry]:
        return {name: file_entry(self.folder, name, **facts) for name, facts in self.files.items()}


def staging_folder(out: Path, overwrite: bool) -> Path:
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    return staging


def move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        out.rename(old)
        staging.rename(out)
        shutil.rmtree(old)
    else:
        staging.rename(out)


