"""Latency samples: timing a call repeatedly and summarising the milliseconds it took.

Torch-free and numpy-only, so the same code times ONNX Runtime on a Jetson and TensorRT on a
workstation.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from brainseg.errors import ConfigError

# Above this coefficient of variation (std / mean) a latency series is flagged as noisy:
# something else was competing for the machine, or the clock governor was still ramping.
CV_WARNING = 0.025


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-call latencies; one call processes `batch` items (slices)."""

    count: int
    min_ms: float
    mean_ms: float
    std_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    cv: float
    throughput_per_s: float
    batch: int

    @property
    def noisy(self) -> bool:
        """True when the coefficient of variation exceeds CV_WARNING."""
        return self.cv > CV_WARNING

    def to_dict(self) -> dict:
        """Plain values for JSON: milliseconds to 1 µs, cv to 4 decimals, throughput to 0.01 items/s."""
        out = asdict(self)
        for key, value in out.items():
            if key.endswith("_ms"):
                out[key] = round(value, 3)
        out["cv"] = round(self.cv, 4)
        out["throughput_per_s"] = round(self.throughput_per_s, 2)
        out["noisy"] = self.noisy
        return out


def summarize(samples_ms: Sequence[float], *, batch: int = 1) -> LatencyStats:
    """Summarise per-call latencies in milliseconds.

    Conventions: `std_ms` is the sample standard deviation (ddof=1; 0 for a single sample);
    `cv` = std / mean; percentiles interpolate linearly between the closest ranks (numpy's
    default `np.percentile` method, so p50 of [1, 2, 3, 4] is 2.5); throughput is
    batch * 1000 / mean_ms items per second.
    """
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"need a non-empty 1-D sequence of latencies in ms, got shape {values.shape}")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    mean = float(values.mean())
    std = float(values.std(ddof=1)) if values.size > 1 else 0.0
    p50, p90, p95, p99 = (float(p) for p in np.percentile(values, [50, 90, 95, 99]))
    return LatencyStats(
        count=int(values.size), min_ms=float(values.min()), mean_ms=mean, std_ms=std,
        p50_ms=p50, p90_ms=p90, p95_ms=p95, p99_ms=p99, max_ms=float(values.max()),
        cv=std / mean if mean > 0 else math.nan,
        throughput_per_s=batch * 1000.0 / mean if mean > 0 else math.inf,
        batch=batch,
    )


def time_calls(
    call: Callable[[], object],
    *,
    warmup: int = 3,
    iterations: int | None = None,
    seconds: float | None = None,
    gap_s: float = 0.0,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], object] = time.sleep,
) -> list[float]:
    """Time `call()` and return one latency in milliseconds per timed call.

    Runs `warmup` untimed calls, then either exactly `iterations` timed calls or timed calls
    until `seconds` of wall-clock time have passed since the first timed call started (at
    least 2, so a standard deviation exists). Give exactly one of `iterations` and `seconds`.

    With `gap_s` > 0 ("idle gaps" mode) every timed call is preceded by `sleep(gap_s)`, which
    is not part of the sample: it measures latency after the device has been idle, as a
    scanner sending one slice at a time would see it, rather than back-to-back throughput.
    The gaps do count towards `seconds`, except the one before the first timed call.
    """
    _check_timing_options(warmup, iterations, seconds, gap_s)
    for _ in range(warmup):
        call()
    samples: list[float] = []
    start = None
    while True:
        if gap_s > 0:
            sleep(gap_s)
        begin = clock()
        call()
        end = clock()
        samples.append((end - begin) * 1000.0)
        start = begin if start is None else start
        if iterations is not None and len(samples) >= iterations:
            return samples
        if seconds is not None and len(samples) >= 2 and end - start >= seconds:
            return samples


def _check_timing_options(warmup: int, iterations: int | None, seconds: float | None, gap_s: float) -> None:
    if (iterations is None) == (seconds is None):
        raise ConfigError(
            f"give exactly one of iterations and seconds (got iterations={iterations}, seconds={seconds})"
        )
    if iterations is not None and iterations < 1:
        raise ConfigError(f"iterations must be >= 1, got {iterations}")
    if seconds is not None and not seconds > 0:
        raise ConfigError(f"seconds must be > 0, got {seconds}")
    if warmup < 0:
        raise ConfigError(f"warmup must be >= 0, got {warmup}")
    if not gap_s >= 0:
        raise ConfigError(f"gap_s must be >= 0, got {gap_s}")
