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
    warm_up(target)
    began = time.perf_counter()
    for index in range(start, start + count):
        body = make_input(target.name, target.families, seed, index)
        bound = target.bound(body)
        if progress is not None:
            os.pwrite(progress, struct.pack("<q", index), 0)
        _one(target, body, seed, index, bound, counter, report)
    report.seconds = round(time.perf_counter() - began, 3)
    return report


@dataclass
class Call:
    """One call of a target on one body, and the contract it broke (`problems`: (kind, detail) pairs)."""

    outcome: str  # "accepted", "refused" or "escaped"
    seconds: float
    allocated: int  # peak bytes above what was live when the call started (0 when not counted)
    largest: int  # the largest single request during the call
    problems: list[tuple[str, str]]


def call(target: Target, body: bytes, bound: int, counter: Allocations | None) -> Call:
    """Call `target` on `body` and judge it: an escaped exception, a call over the deadline, an allocation
    over `bound` + SLACK (when `counter` counts), a result the target's check refuses."""
    live = counter.start() if counter else 0
    started = time.perf_counter()
    result, escaped, outcome = None, None, "accepted"
    try:
        result = target.call(body)
    except _ALLOWED:
        outcome = "refused"
    except Exception as err:  # the contract this run is here to check
        escaped, outcome = err, "escaped"
    seconds = time.perf_counter() - started
    allocated = counter.peak_above(live) if counter else 0
    largest = counter.largest() if counter else 0
    problems = []
    if escaped is not None:
        problems.append(("escape", "".join(traceback.format_exception_only(escaped)).strip()[:500]))
    if seconds > target.deadline_s:
        problems.append(("deadline", f"took {seconds:.3f} s; the deadline is {target.deadline_s} s"))
    if max(allocated, largest) > bound + SLACK:
        problems.append(("allocation", f"allocated {allocated} bytes at its peak (largest request {largest}); "
                                       f"the bound is {bound} + {SLACK}"))
    wrong = target.check(body, result) if outcome == "accepted" else None
    if wrong is not None:
        problems.append(("result", wrong))
    return Call(outcome, seconds, allocated, largest, problems)


def _one(target: Target, body: bytes, seed: int, index: int, bound: int, counter, report: Report) -> None:
    done = call(target, body, bound, counter)
    report.inputs += 1
    report.accepted += done.outcome == "accepted"
    report.refused += done.outcome == "refused"
    report.slowest_s = max(report.slowest_s, round(done.seconds, 4))
    report.largest_allocation = max(report.largest_allocation, done.allocated)
    report.largest_ratio = max(report.largest_ratio, round(done.allocated / (bound + SLACK), 4))
    for kind, detail in done.problems:
        report.failures.append(Failure(target.name, seed, index, kind, detail, round(done.seconds, 4),
                                       done.allocated, bound))


def warm_up(target: Target) -> None:
    """Call the target on its seed files once, so that lazy imports and first-use buffers are not counted."""
    from brainseg.fuzz.seeds import seeds

    for family in target.families:
        for body in seeds(family):
            try:
                target.call(body)
            except Exception:  # noqa: BLE001 - the run proper reports whatever a call raises
                pass
