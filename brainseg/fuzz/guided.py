"""Coverage-guided fuzzing of one target with atheris (libFuzzer for Python), under the same contract.

`python -m brainseg.fuzz.guided TARGET CORPUS_DIR [libFuzzer flags]`: the corpus folder is seeded
with the target's seed files, every Python module loaded is instrumented for coverage, and each
input libFuzzer makes is judged by `brainseg.fuzz.run.call` (its exceptions, deadline, allocation
bound, result). A broken contract raises `ContractBroken`, so libFuzzer stops and writes the input
(`-artifact_prefix`); `-timeout` names one that never returns. atheris is not a brainseg extra:
`pip install atheris` (Linux, CPython 3.8 to 3.12 wheels). benchmarks/fuzz.py --guided-s runs it.
"""

from __future__ import annotations

import sys
from pathlib import Path

from brainseg.errors import missing_extra
from brainseg.fuzz.allocations import Allocations
from brainseg.fuzz.run import call, warm_up
from brainseg.fuzz.seeds import seeds
from brainseg.fuzz.targets import TARGETS


class ContractBroken(AssertionError):
    """A call that broke its target's contract (the message says how)."""


def main(argv: list[str]) -> None:
    try:
        import atheris
    except ImportError as err:
        raise SystemExit(str(missing_extra("atheris", "dev", hint="atheris is no extra: pip install atheris"))) from err
    name, corpus, flags = argv[0], Path(argv[1]), argv[2:]
    target = TARGETS[name]
    corpus.mkdir(parents=True, exist_ok=True)
    for family in target.families:
        for index, body in enumerate(seeds(family)):
            (corpus / f"seed-{family}-{index}").write_bytes(body)
    counter = Allocations() if Allocations.available() else None
    warm_up(target)
    atheris.instrument_all()

    def one(body: bytes) -> None:
        done = call(target, body, target.bound(body), counter)
        if done.problems:
            raise ContractBroken("; ".join(f"{kind}: {detail}" for kind, detail in done.problems))

    atheris.Setup([sys.argv[0], str(corpus), *flags], one)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv[1:])
