"""Run one brainseg command as its own process and measure it: wall seconds and peak resident memory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def console_script(name: str) -> str:
    """The path of a brainseg console script (seg-run, seg-train, ...) installed beside this Python."""
    return str(Path(sys.executable).with_name(name))


def run_measured(command: list[str], *, ok_codes: tuple[int, ...] = (0,)) -> dict:
    """Run `command`; {"seconds", "peak_rss_gb", "exit_code"}. Peak RSS is the process's own
    `ru_maxrss` from `wait4`, so other processes on the machine do not count. Raises SystemExit with
    the command's last error lines when its exit code is not in `ok_codes`."""
    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    errors = process.stderr.read()  # drained while it runs: a full pipe would block it
    process.stderr.close()
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - started
    if process.returncode not in ok_codes:
        tail = "\n".join(errors.strip().splitlines()[-5:])
        raise SystemExit(f"{' '.join(command)} failed ({process.returncode}):\n{tail}")
    return {"seconds": round(seconds, 1), "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3),  # KiB on Linux
            "exit_code": process.returncode}
