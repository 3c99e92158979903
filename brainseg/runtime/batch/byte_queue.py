"""A queue bounded by the bytes it holds, not by how many items: seg-run's stages pass whole scans.

A kaggle_3m patient is a few MB; a BraTS-size case is about 180 MB (its slices at their own size
and at the graph's). A queue of four scans is nothing for the first and most of a gigabyte for the
second, so the stages hand scans over through queues that hold at most `capacity` bytes and
`max_items` items: `put` waits while the queue holds something and the new item would pass either
limit. An item larger than the whole capacity still goes through, alone, so no scan is refused.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Any


class ByteQueue:
    """FIFO of (item, nbytes); `put` blocks while adding would pass `capacity` bytes or `max_items` (unless empty)."""

    def __init__(self, capacity: int, max_items: int = 4) -> None:
        if capacity < 1 or max_items < 1:
            raise ValueError(f"capacity must be at least 1 byte and max_items 1 item, got {capacity}, {max_items}")
        self.capacity, self.max_items = capacity, max_items
        self._items: deque[tuple[Any, int]] = deque()
        self._held = 0
        self._changed = threading.Condition()

    def put(self, item: Any, nbytes: int = 0, timeout: float | None = None) -> bool:
        """Add `item`, waiting (at most `timeout` seconds, when given) for room; False when it timed out."""
        with self._changed:
            room = self._changed.wait_for(lambda: not self._items or (
                self._held + nbytes <= self.capacity and len(self._items) < self.max_items), timeout)
            if not room:
                return False
            self._items.append((item, nbytes))
            self._held += nbytes
            self._changed.notify_all()
            return True

    def get(self, timeout: float | None = None) -> Any:
        """The oldest item, waiting for one (at most `timeout` seconds; then TimeoutError)."""
        with self._changed:
            if not self._changed.wait_for(lambda: bool(self._items), timeout):
                raise TimeoutError("nothing arrived in the queue")
            item, nbytes = self._items.popleft()
            self._held -= nbytes
            self._changed.notify_all()
            return item

    @property
    def held(self) -> int:
        """Bytes held now."""
        with self._changed:
            return self._held
