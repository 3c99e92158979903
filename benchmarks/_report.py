"""What every benchmark suite does with its result: print it as JSON, and keep it when asked."""

from __future__ import annotations

import json
from pathlib import Path


def emit(result: object, out: Path | None) -> None:
    text = json.dumps(result, indent=2) + "\n"
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text)
