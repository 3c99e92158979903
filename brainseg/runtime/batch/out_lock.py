"""One seg-run per output folder: an exclusive lock on `<out>/.lock`, released when the process ends.

Two runs writing one folder would each redo every scan (their outputs stay consistent, since
every write is atomic, but the work is doubled), so the second is refused with a message naming
the holder. The lock is `fcntl.flock` on an open file: the kernel drops it when the holder exits,
even when it is killed, so a crash never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from brainseg.errors import ConfigError

LOCK_NAME = ".lock"


class OutputLock:
    """Context manager holding the exclusive lock on an output folder (created if missing)."""

    def __init__(self, out: Path) -> None:
        self.path = Path(out) / LOCK_NAME
        self._handle = None

    def __enter__(self) -> OutputLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for as long as the lock
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_holder(handle)
            handle.close()
            raise ConfigError(f"{self.path.parent} is being written by another seg-run ({holder}); "
                              "wait for it to finish or choose another --out") from None
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                 "since": datetime.now(timezone.utc).isoformat(timespec="seconds")}))
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None


def _describe_holder(handle) -> str:
    handle.seek(0)
    try:
        holder = json.loads(handle.read() or "{}")
    except ValueError:
        holder = {}
    if "pid" not in holder:
        return "holder unknown"
    return f"pid {holder['pid']} on {holder.get('host', '?')} since {holder.get('since', '?')}"
