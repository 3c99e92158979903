"""Run a console script in a fresh interpreter where `import torch` fails: the torch-free promise, checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_without_torch(entry: str, argv: list[str]) -> subprocess.CompletedProcess:
    """Call `entry` ("package.module:function") with `argv` as sys.argv, torch blocked; returns the finished process."""
    module, function = entry.split(":")
    script = (
        "import sys; sys.modules['torch'] = None\n"
        f"from {module} import {function}\n"
        f"sys.argv = {[str(arg) for arg in argv]!r}\n"
        f"{function}()\n"
    )
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=Path(__file__).parents[1])
