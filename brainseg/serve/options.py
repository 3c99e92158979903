"""seg-serve's settings: how it listens and batches, and how each replica runs the ensemble."""

from __future__ import annotations

from dataclasses import dataclass

from brainseg.errors import ConfigError
from brainseg.runtime.segmenter import SegmenterOptions


@dataclass(frozen=True)
class ServeOptions(SegmenterOptions):
    """How seg-serve listens and batches, and how each replica runs the ensemble (`SegmenterOptions`,
    seg-run's defaults: backend, precision, threads per replica, TTA...).

    `batch_size`: the most slices one backend call takes, across requests (--max-batch).
    `batch_wait_ms`: how long a batch may wait for more slices while the replica is busy.
    """

    batch_size: int = 16
    host: str = "127.0.0.1"
    port: int = 8000
    replicas: int = 1
    batch_wait_ms: float = 5.0
    max_body_mb: float = 64.0

    def check(self) -> None:
        """Raise ConfigError naming the first option out of range."""
        limits = {"--port": (self.port, 1, 65535), "--replicas": (self.replicas, 1, None),
                  "--max-batch": (self.batch_size, 1, None), "--batch-wait-ms": (self.batch_wait_ms, 0, None),
                  "--max-body-mb": (self.max_body_mb, 0.001, None)}
        for flag, (value, low, high) in limits.items():
            if value < low or (high is not None and value > high):
                span = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise ConfigError(f"{flag} must be {span}, got {value}")
        super().check()

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)
