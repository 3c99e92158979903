"""The embedded service's dynamic batcher: slices from concurrent requests, stacked into one backend call.

One `LocalBatcher` per process, on the event loop that serves HTTP. Every slice of a request
joins one queue; a single worker task takes up to `max_batch()` of them, runs them with one call of
`run` (which runs the backend on the inference thread) and hands each request its own outputs.
The model runs one batch at a time, so the batches form themselves:

- an idle model starts a lone slice at once: a single client pays no batching delay;
- while a batch runs, new slices queue, and the next batch takes every one of them, up to
  `max_batch`, the moment the model is free;
- when the model comes free with fewer than `max_batch` slices queued while more are expected,
  it waits up to `wait_s` for them rather than run a batch they would have filled. More are
  expected while admitted requests are still decoding, or while fewer slices are queued than the
  last batch took: under load, the clients of that batch are sending their next requests. A lone
  client's batches hold one slice, so it never waits.

asyncio and numpy only (Ray mode batches with Ray Serve's `serve.batch` instead:
`brainseg.serve.ray_replica`).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable

import numpy as np

Outputs = dict[str, np.ndarray]
# (n, h, w, C) slices -> (the graph's outputs by name, each (n, K, h, w), seconds the backend took)
RunBatch = Callable[[np.ndarray], Awaitable[tuple[Outputs, float]]]


class LocalBatcher:
    """Slices in, one backend call per batch, each slice's outputs out; see the module docstring."""

    def __init__(self, run: RunBatch, *, max_batch: Callable[[], int], wait_s: float,
                 on_batch: Callable[[int], int] | None = None, decoding: Callable[[], int] = lambda: 0) -> None:
        self._run = run
        self._max_batch = max_batch  # read at each batch: loading may lower it (a TensorRT profile)
        self._wait_s = wait_s
        self._on_batch = on_batch  # called with each batch's size; returns the batch's number
        self._queue: deque[tuple[np.ndarray, asyncio.Future]] = deque()
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None
        self._last_size = 1  # slices in the last batch run
        self._decoding = decoding  # how many admitted requests are still decoding (their slices will join)

    async def submit(self, image: np.ndarray) -> list[tuple[Outputs, tuple[int, float]]]:
        """(S, h, w, C) slices -> per slice, its outputs (K, h, w) by name and (batch number, backend
        seconds of that batch). The slices may ride in several batches, shared with other requests."""
        loop = asyncio.get_running_loop()
        if self._worker is None or self._worker.done():
            self._arrived = asyncio.Event()
            self._worker = loop.create_task(self._work(), name="brainseg-batcher")
        futures = []
        for index in range(len(image)):
            future = loop.create_future()
            self._queue.append((image[index], future))
            futures.append(future)
        self._arrived.set()
        return list(await asyncio.gather(*futures))

    async def _work(self) -> None:
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            while self._queue:
                await self._wait_for_decoding()
                taken = [self._queue.popleft() for _ in range(min(self._max_batch(), len(self._queue)))]
                live = [(array, future) for array, future in taken if not future.cancelled()]
                if live:
                    await self._run_one(live)

    def _more_expected(self) -> bool:
        """Whether more slices are about to join: requests still decoding, or fewer queued than the
        last batch took (under load, its clients are sending their next requests)."""
        return self._decoding() > 0 or len(self._queue) < self._last_size

    async def _wait_for_decoding(self) -> None:
        """Wait up to `wait_s` while more slices are expected and the queue cannot fill a batch."""
        deadline = time.perf_counter() + self._wait_s
        while self._more_expected() and len(self._queue) < self._max_batch():
            left = deadline - time.perf_counter()
            if left <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                return

    async def _run_one(self, live: list[tuple[np.ndarray, asyncio.Future]]) -> None:
        try:
            outputs, seconds = await self._run(np.stack([array for array, _ in live]))
        except Exception as err:  # the backend failed: every request in the batch gets the error
            for _, future in live:
                if not future.done():
                    future.set_exception(err)
            return
        self._last_size = len(live)
        number = self._on_batch(len(live)) if self._on_batch is not None else 0
        for index, (_, future) in enumerate(live):
            if not future.done():
                future.set_result(({name: array[index] for name, array in outputs.items()}, (number, seconds)))
