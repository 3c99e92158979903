"""seg-serve's settings: how it listens, batches and limits requests, and how it runs the ensemble."""

from __future__ import annotations

from dataclasses import dataclass

from brainseg.errors import ConfigError
from brainseg.runtime.segmenter import SegmenterOptions


@dataclass(frozen=True)
class ServeOptions(SegmenterOptions):
    """How seg-serve listens, batches and limits requests, and how it runs the ensemble
    (`SegmenterOptions`, seg-run's defaults: backend, precision, threads, TTA...).

    `ray`: None to serve from this process (embedded, the default); "local" to start Ray here and
    deploy on Ray Serve; any other value is the address of a Ray cluster to join (`ray.init`'s).
    `batch_size`: the most slices one backend call takes, across requests (--max-batch).
    `batch_wait_ms`: how long a batch may wait for more slices (see docs/serve.md).
    `replicas`: Ray Serve replicas (Ray mode only).
    Limits (docs/security.md): `max_body_mb` on the wire, `max_pixels` / `max_voxels` declared by
    an image's or a volume's header (`SegmenterOptions`', shared with seg-run), `body_timeout_s`
    to receive a whole body, `decode_timeout_s` to read its header and decode it, `max_uploads`
    bodies received at once, `max_buffered_mb` of memory held for requests at once (their bodies
    and what decoding them holds, estimated from their headers).
    """

    batch_size: int = 16
    host: str = "127.0.0.1"
    port: int = 8000
    ray: str | None = None
    replicas: int = 1
    batch_wait_ms: float = 5.0
    max_body_mb: float = 64.0
    body_timeout_s: float = 30.0
    decode_timeout_s: float = 20.0
    max_uploads: int = 128
    max_buffered_mb: float = 2048.0

    def check(self) -> None:
        """Raise ConfigError naming the first option out of range."""
        limits = {"--port": (self.port, 1, 65535), "--replicas": (self.replicas, 1, None),
                  "--max-batch": (self.batch_size, 1, None), "--batch-wait-ms": (self.batch_wait_ms, 0, None),
                  "--max-body-mb": (self.max_body_mb, 0.001, None),
                  "--body-timeout-s": (self.body_timeout_s, 0.1, None),
                  "--decode-timeout-s": (self.decode_timeout_s, 0.1, None),
                  "--max-uploads": (self.max_uploads, 1, None),
                  "--max-buffered-mb": (self.max_buffered_mb, self.max_body_mb, None)}
        for flag, (value, low, high) in limits.items():
            if value < low or (high is not None and value > high):
                span = f"between {low} and {high}" if high is not None else f"at least {low:g}"
                raise ConfigError(f"{flag} must be {span}, got {value:g}")
        if self.replicas > 1 and self.ray is None:
            raise ConfigError("--replicas needs --ray: one process serves one model; Ray Serve runs several")
        super().check()

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    @property
    def max_buffered_bytes(self) -> int:
        return int(self.max_buffered_mb * 2**20)

    @property
    def mode(self) -> str:
        return "embedded" if self.ray is None else "ray"
