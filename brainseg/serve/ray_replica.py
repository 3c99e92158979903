"""One Ray Serve replica of seg-serve: the same ASGI app and service as the embedded mode, batched
with Ray Serve's `serve.batch`, and a health check Serve acts on.

Imported only inside Ray (deployed by `brainseg.serve.service` once ray[serve] is known to be installed).

How long a batch waits to fill (`serve.batch`'s `batch_wait_timeout_s`, set before each request
joins) depends on the replica, since Ray closes a batch when its wait ends even while the model is
busy and a closed batch can only queue:
- idle (nothing queued or running): no wait, so a lone client pays no batching delay;
- a batch running: until the model is expected to have run every slice handed to it so far (the
  slices in hand times the running average time per slice, from the running batch's start), and
  at least `--batch-wait-ms`;
- otherwise (slices queued, none running yet): `--batch-wait-ms`.

The model loads in the constructor, so a replica whose model cannot load never starts: Serve retries
it and then marks the deployment failed, with the reason, instead of leaving it RUNNING and taking
traffic. `check_health` raises whenever the service says it is not healthy, so Serve replaces it.
"""

from __future__ import annotations

import asyncio
import time

import numpy as np
from ray import serve

from brainseg.serve.app import build_app
from brainseg.serve.core import SegmentationService
from brainseg.serve.options import ServeOptions


@serve.ingress()
class SegmentationReplica:
    """A Serve replica holding one `SegmentationService`; its ASGI app is `brainseg.serve.app`'s."""

    def __init__(self, artifacts: str, options: ServeOptions) -> None:
        replica = serve.get_replica_context().replica_id.unique_id
        self.service = SegmentationService(artifacts, options, replica=replica)
        # loaded before the replica counts as started: a model that cannot load fails the replica's
        # start, so Serve retries it and then marks the deployment failed, with the reason
        self.service.wait_loaded()
        self.service.submit = self._submit
        self._options = options
        self._queued = 0  # slices handed to the batcher and not yet answered
        self._running_since: float | None = None  # perf_counter() when the running batch began
        self._max_batch = options.batch_size
        self._batcher = serve.batch(max_batch_size=options.batch_size,
                                    batch_wait_timeout_s=options.batch_wait_ms / 1000)(self._run_batch)

    def __serve_build_asgi_app__(self):
        return build_app(self.service, "ray")

    def check_health(self) -> None:
        """Called by Serve every few seconds: raising makes Serve replace this replica."""
        status, record = self.service.health()
        if status != 200:
            raise RuntimeError(record["error"])

    async def _submit(self, image: np.ndarray) -> list:
        if self._max_batch != self.service.max_batch:  # lowered by a TensorRT engine's profile
            self._max_batch = self.service.max_batch
            self._batcher.set_max_batch_size(self._max_batch)
        self._batcher.set_batch_wait_timeout_s(self._batch_wait_s())
        self._queued += len(image)
        try:
            return list(await asyncio.gather(*(self._batcher(image[i]) for i in range(len(image)))))
        finally:
            self._queued -= len(image)

    def _batch_wait_s(self) -> float:
        """How long a batch opened now may wait for more slices (see the module docstring)."""
        if self._queued == 0:
            return 0.0
        least = self._options.batch_wait_ms / 1000
        if self._running_since is None:
            return least
        ahead = self._queued * self.service.slice_seconds  # every slice handed over before this one
        return max(least, self._running_since + ahead - time.perf_counter())

    async def _run_batch(self, slices: list[np.ndarray]) -> list:
        """Serve's batch handler: N slices (h, w, C) -> per slice, its (K, h, w) outputs by name and
        (batch number, backend seconds); one backend call for the N."""
        self._running_since = time.perf_counter()
        try:
            outputs, seconds = await self.service.run_batch(np.stack(slices))
        finally:
            self._running_since = None
        number = self.service.stats.record_batch(len(slices))
        return [({name: array[i] for name, array in outputs.items()}, (number, seconds)) for i in range(len(slices))]

    def __del__(self) -> None:
        """Serve calls this when the replica stops: free the backend."""
        service = getattr(self, "service", None)  # absent when the constructor itself failed
        if service is not None:
            service.close()
