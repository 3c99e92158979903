"""The one exception family the library raises for problems a user can fix, and optional imports.

The CLI prints these as a single line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType


class BrainsegError(Exception):
    """A problem with the user's input, data or configuration, with a message that says how to fix it."""


class DataError(BrainsegError):
    """A data folder, file or value is missing, unreadable or malformed."""


class ConfigError(BrainsegError):
    """An option or a combination of options is invalid."""


class CheckpointError(BrainsegError):
    """A checkpoint is missing, corrupt or does not belong to the model asked for."""


class ArtifactError(BrainsegError):
    """An artifacts folder is incomplete, tampered with, or does not match this machine."""


class InputSkipped(DataError):
    """One input (a file, a case, a scan) that cannot be used, and a one-line reason.

    Readers raise it for the input at fault; whoever walks a folder catches it, records
    `(path, reason)` among the skipped inputs and goes on with the next one.

    Attributes:
        path: the file or folder at fault.
        reason: what is wrong with it, without the path.
    """

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


class InputTooLarge(InputSkipped):
    """An input whose header declares more than a size limit allows (--max-pixels, --max-voxels);
    seg-serve answers it with 413 where other skipped inputs get 422."""


class FormatError(DataError):
    """Bytes from outside that are not what their format requires, or declare something impossible.

    Raised by the parsers of `brainseg.formats`, which see bytes, not files: `reason` says what
    is wrong without a path, and `at(path)` makes the `InputSkipped` a reader raises for the file.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def at(self, path: Path | str) -> InputSkipped:
        return InputSkipped(path, self.reason)


class LimitExceeded(FormatError):
    """Bytes whose header declares more than a size limit allows (pixels, voxels)."""

    def at(self, path: Path | str) -> InputSkipped:
        return InputTooLarge(path, self.reason)


def one_line(exc: BaseException) -> str:
    """An exception as "Type: message" on one line (some libraries' messages span several)."""
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def require(module: str, extra: str, *, package: str | None = None, hint: str = "") -> ModuleType:
    """Import `module`, or raise a BrainsegError naming the extra that installs it.

    `package` is the name users know it by when that differs from the module's (cuda-python);
    `hint` is appended to the message, for packages that no extra can install (TensorRT).
    OSError counts as missing too: a wheel whose shared libraries are absent fails that way.
    """
    try:
        return importlib.import_module(module)
    except (ImportError, OSError) as err:
        raise missing_extra(package or module.split(".")[0], extra, hint=hint) from err


def missing_extra(package: str, extra: str, *, hint: str = "") -> BrainsegError:
    """The error for an absent optional dependency, naming the extra that installs it."""
    message = f"{package} is not installed; install it with: pip install 'brainseg[{extra}]'"
    return BrainsegError(f"{message}{'; ' + hint if hint else ''}")


def is_installed(module: str) -> bool:
    """Whether `module` imports (without raising anything)."""
    try:
        importlib.import_module(module)
    except (ImportError, OSError):
        return False
    return True
