"""The one exception family the library raises for problems a user can fix.

The CLI prints these as a single line and exits non-zero; anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class BrainsegError(Exception):
    """A problem with the user's input, data or configuration, with a message that says how to fix it."""


class DataError(BrainsegError):
    """A data folder, file or value is missing, unreadable or malformed."""


class ConfigError(BrainsegError):
    """An option or a combination of options is invalid."""


class CheckpointError(BrainsegError):
    """A checkpoint is missing, corrupt or does not belong to the model asked for."""


def missing_extra(module: str, extra: str) -> BrainsegError:
    """The error to raise when an optional dependency is absent, naming the extra that installs it."""
    return BrainsegError(
        f"{module} is not installed; install it with: pip install 'brainseg[{extra}]'"
    )


class ArtifactError(BrainsegError):
    """An artifacts folder is incomplete, tampered with, or does not match this machine."""
