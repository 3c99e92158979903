"""A gpu_check part's JSON record, kept apart so that every part's module imports it without the others."""

from __future__ import annotations

import json
import os
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path


def _write_json(path: Path, data: dict) -> None:
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(partial, path)


class PartRecord:
    """One part's JSON file (config, rows, skipped parts with reasons, status), saved after every change."""

    def __init__(self, out: Path, part: str, config: dict, budget_s: float) -> None:
        out.mkdir(parents=True, exist_ok=True)
        self.path, self.deadline, self._started = out / f"{part}.json", time.monotonic() + budget_s, time.perf_counter()
        self.data = {"part": part, "status": "running", "error": None, "config": config, "skipped": {}, "rows": [],
                     "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.save()

    def add(self, row: dict) -> None:
        self.data["rows"].append(row)
        self.save()

    def skip(self, what: str, reason: str) -> None:
        self.data["skipped"][what] = reason
        self.save()

    def out_of_time(self, what: str) -> bool:
        if time.monotonic() > self.deadline:
            self.skip(what, "the part's time budget (--budget-s) ran out first")
            return True
        return False

    def finish(self, error: BaseException | None) -> int:
        """Status: failed (an error, or no row), partial (a row's error or a skip), else ok; exit code 1 on errors."""
        if error is not None:
            self.data.update(error=f"{type(error).__name__}: {error}",
                             traceback=traceback.format_exception(error)[-12:])
        elif not self.data["rows"]:
            self.data["error"] = "nothing was measured; see skipped"
        row_errors = any("error" in row for row in self.data["rows"])
        failed = self.data["error"] is not None
        self.data["status"] = "failed" if failed else "partial" if row_errors or self.data["skipped"] else "ok"
        self.data["seconds"] = round(time.perf_counter() - self._started, 1)
        self.save()
        return 1 if failed or row_errors else 0

    def save(self) -> None:
        _write_json(self.path, self.data)


def mark_unfinished(out: Path, part: str, exit_code: int) -> None:
    """After a part's process died (time limit, crash): keep its rows, and say so in its status."""
    path = out / f"{part}.json"
    data = json.loads(path.read_text()) if path.is_file() else {"part": part, "rows": [], "skipped": {}}
    if data.get("status") in ("ok", "partial", "failed"):
        return  # it finished, and its JSON says why it exited non-zero
    timed_out = exit_code in (124, 137)
    data["status"] = "timed_out" if timed_out else "crashed"
    data["error"] = (f"stopped by gpu_check.sh's time limit (exit {exit_code})" if timed_out
                     else f"the process exited with {exit_code} before finishing; see {part}.log")
    out.mkdir(parents=True, exist_ok=True)
    _write_json(path, data)
