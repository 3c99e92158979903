"""Where `seg-export triton` puts what it staged: a repository of its own, or models added to a shared one.

A repository of its own (`--out`): the staged folder replaces `--out` whole, which must be absent,
empty, or one seg-export triton wrote (its `brainseg-triton.json`), the last only with `--overwrite`.

Models added to a shared repository (`--add`): `--out` is an existing Triton repository that other
models live in. Only the staged model folders enter it, one by one, with the repository's README and
record under this export's `--name` (`<name>.README.md`, `<name>.brainseg-triton.json`; Triton loads
folders, not files). Nothing else in it is read, moved or deleted. A model folder of the same name is
replaced only with `--overwrite`, and only when it holds the marker every model seg-export triton
writes (`brainseg-model.json`); every collision is checked before the first folder moves in.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

from brainseg.errors import ConfigError

RECORD = "brainseg-triton.json"  # the options and sources a repository was written with
README = "README.md"
MODEL_MARKER = "brainseg-model.json"  # in every model folder seg-export triton writes


def staging_for(out: Path) -> Path:
    """A fresh folder beside `out` (same file system, so it moves into place by rename) to assemble in."""
    staging = out.parent / f".{out.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    return staging


def check_destination(out: Path, artifacts: Path, overwrite: bool, add: bool) -> None:
    """Refuse, before anything is written, a destination this export may not write into."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} is a file; --out must be a folder")
    source = artifacts.resolve()
    if out.resolve() == source or out.resolve() in source.parents:
        raise ConfigError(f"--out {out} holds the artifacts folder it reads; choose another folder")
    if add:
        if not out.is_dir():
            raise ConfigError(f"{out}: no such folder; --add writes models into an existing Triton repository")
        return
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(f"{out} is not empty; pass --overwrite to replace it, --add to write the models "
                              "beside the ones in it, or choose another --out")
        if not (out / RECORD).is_file():  # --overwrite replaces only what seg-export triton wrote
            raise ConfigError(f"{out} holds files seg-export triton did not write (no {RECORD}); --overwrite "
                              "replaces only its own repositories: pass --add to write the models beside the "
                              "ones in it, or choose another --out")


def shared_names(name: str) -> tuple[str, str]:
    """The README and record an export named `name` writes into a shared repository."""
    return f"{name}.{README}", f"{name}.{RECORD}"


def move_into_place(staging: Path, out: Path) -> None:
    """`staging` becomes `out`, replacing the repository there (checked by `check_destination`)."""
    if not out.exists():
        staging.rename(out)
        return
    old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    out.rename(old)
    staging.rename(out)
    shutil.rmtree(old)


def add_into(staging: Path, out: Path, overwrite: bool) -> None:
    """Move each entry of `staging` into the shared repository `out`, touching nothing else there.

    Every name is checked first: a folder that exists is replaced only with `overwrite` and only when
    seg-export triton wrote it (its `MODEL_MARKER`); a file (README, record) only with `overwrite`.
    """
    entries = sorted(staging.iterdir())
    for entry in entries:
        there = out / entry.name
        if not there.exists() and not there.is_symlink():
            continue
        if entry.is_dir() and not (there.is_dir() and not there.is_symlink() and (there / MODEL_MARKER).is_file()):
            raise ConfigError(f"{there} exists and seg-export triton did not write it (no {MODEL_MARKER}); "
                              "choose another --name")
        if not overwrite:
            raise ConfigError(f"{there} exists; pass --overwrite to replace it, or choose another --name")
    for entry in entries:
        there = out / entry.name
        if entry.is_dir() and there.is_dir():
            old = out.parent / f".{out.name}.{entry.name}.old-{uuid.uuid4().hex[:8]}"
            there.rename(old)  # out of the repository first, so Triton never sees a half-replaced model
            entry.rename(there)
            shutil.rmtree(old)
        else:
            entry.replace(there)
    staging.rmdir()
