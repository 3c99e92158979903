"""Feed a target its inputs and check its contract on every call (`brainseg.fuzz.targets`).

`fuzz` runs inputs start .. start + count - 1 of (target, seed) in this process. Before each call
it writes the input's number to `progress` (when given) so that a parent can name the input of a
call that never returns; after it, it checks the outcome, the time taken and, when this process
counts its allocations (`brainseg.fuzz.allocations`), the peak and the largest request against
the target's bound. The report counts inputs by outcome and keeps each broken contract with what
it takes to make the input again.
"""

from __future__ import annotations

import os
import struct
import time
import traceback
from dataclasses import asdict, dataclass, field

from brainseg.errors import BrainsegError
from brainseg.fuzz.allocations import Allocations
from brainseg.fuzz.mutate import make_input
from brainseg.fuzz.targets import SLACK, TARGETS, Target
from brainseg.serve.errors import RequestError

_ALLOWED = (BrainsegError, RequestError)


@dataclass
class Failure:
    """One broken contract: which input, what kind (escape, deadline, allocation, result, hang), what happened."""

    target: str
    seed: int
    index: int
    kind: str
    detail: str
    seconds: float = 0.0
    allocated: int = 0
    bound: int = 0


@dataclass
class Report:
    """What one target did over a run of inputs."""

    target: str
    seed: int
    start: int
    inputs: int = 0
    accepted: int = 0
    refused: int = 0
    seconds: float = 0.0
    slowest_s: float = 0.0
    counted_allocations: bool = False
    largest_allocation: int = 0  # the largest peak above the call's start, over every input
    largest_ratio: float = 0.0  # the largest peak / (bound + SLACK)
    failures: list[Failure] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def fuzz(target: Target | str, *, seed: int, start: int = 0, count: int, progress: int | None = None) -> Report:
    """Run inputs start .. start + count - 1 of `target` with `seed`; `progress`: a file descriptor that
    gets each input's number (8 bytes at offset 0) before its call."""
    target = TARGETS[target] if isinstance(target, str) else target
    counter = Allocations() if Allocations.available() else None
    report = Report(target.name, seed, start, counted_allocations=counter is not None)
    _warm_up(target)
    began = time.perf_counter()
    for index in range(start, start + count):
        body = make_input(target.name, target.families, seed, index)
        bound = target.bound(body)
        if progress is not None:
            os.pwrite(progress, struct.pack("<q", index), 0)
        _one(target, body, seed, index, bound, counter, report)
    report.seconds = round(time.perf_counter() - began, 3)
    return report


def _one(target: Target, body: bytes, seed: int, index: int, bound: int, counter, report: Report) -> None:
    live = counter.start() if counter else 0
    started = time.perf_counter()
    result, escaped = None, None
    try:
        result = target.call(body)
        report.accepted += 1
    except _ALLOWED:
        report.refused += 1
    except Exception as err:  # the contract this run is here to check
        escaped = err
    seconds = time.perf_counter() - started
    allocated = counter.peak_above(live) if counter else 0
    largest = counter.largest() if counter else 0
    wrong = target.check(body, result) if result is not None else None
    del result
    report.inputs += 1
    report.slowest_s = max(report.slowest_s, round(seconds, 4))
    report.largest_allocation = max(report.largest_allocation, allocated)
    report.largest_ratio = max(report.largest_ratio, round(allocated / (bound + SLACK), 4))

    def fail(kind: str, detail: str) -> None:
        report.failures.append(Failure(target.name, seed, index, kind, detail, round(seconds, 4), allocated, bound))

    if escaped is not None:
        fail("escape", "".join(traceback.format_exception_only(escaped)).strip()[:500])
    if seconds > target.deadline_s:
        fail("deadline", f"took {seconds:.3f} s; the deadline is {target.deadline_s} s")
    if max(allocated, largest) > bound + SLACK:
        fail("allocation", f"allocated {allocated} bytes at its peak (largest request {largest}); the bound is "
                           f"{bound} + {SLACK}")
    if wrong is not None:
        fail("result", wrong)


def _warm_up(target: Target) -> None:
    """Call the target on its seed files once, so that lazy imports and first-use buffers are not counted."""
    from brainseg.fuzz.seeds import seeds

    for family in target.families:
        for body in seeds(family):
            try:
                target.call(body)
            except Exception:  # noqa: BLE001 - the run proper reports whatever a call raises
                pass
