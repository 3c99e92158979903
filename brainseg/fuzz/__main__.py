"""`python -m brainseg.fuzz TARGET... --seed S --start I --count N [--progress FILE] [--out FILE]`:
each target's run in turn in this process, their reports as a JSON list (on stdout, or in --out).
Started by tests/test_fuzz.py and benchmarks/fuzz.py with the allocation shim preloaded
(`brainseg.fuzz.allocations`); without it, allocations are not checked and the reports say so."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from brainseg.fuzz.run import fuzz
from brainseg.fuzz.targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m brainseg.fuzz", description=__doc__)
    parser.add_argument("targets", nargs="+", choices=sorted(TARGETS), metavar="TARGET",
                        help=f"one or more of {', '.join(TARGETS)}")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--progress", type=Path, help="a file that gets each input's number before its call")
    parser.add_argument("--out", type=Path, help="write the report here instead of stdout")
    args = parser.parse_args(argv)
    _quiet_decoders()
    progress = os.open(args.progress, os.O_RDWR | os.O_CREAT, 0o600) if args.progress else None
    reports = [fuzz(target, seed=args.seed, start=args.start, count=args.count, progress=progress).to_dict()
               for target in args.targets]
    text = json.dumps(reports, indent=1)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text + "\n")
    return 0


def _quiet_decoders() -> None:
    """OpenCV logs a warning line for every odd TIFF tag and libpng error it meets: thousands per run."""
    import logging

    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    logging.getLogger("nibabel").setLevel(logging.ERROR)


if __name__ == "__main__":
    raise SystemExit(main())
