"""seg-run's stage queues hold at most a number of bytes, whatever the size of each scan."""

import threading
import time

import pytest

from brainseg.runtime.batch.byte_queue import ByteQueue


def test_put_waits_while_the_bytes_would_pass_the_capacity():
    queue = ByteQueue(100)
    assert queue.put("a", 60) and queue.held == 60
    assert not queue.put("b", 60, timeout=0.05)  # 120 > 100: no room until "a" leaves
    assert queue.put("c", 40, timeout=0.05) and queue.held == 100
    assert queue.get() == "a" and queue.held == 40
    assert queue.put("b", 60, timeout=0.05)
    assert [queue.get(), queue.get()] == ["c", "b"] and queue.held == 0


def test_an_item_larger_than_the_capacity_goes_through_alone():
    queue = ByteQueue(10)
    assert queue.put("huge", 1000, timeout=0.05)
    assert not queue.put("tiny", 1, timeout=0.05)
    assert queue.get() == "huge"
    assert queue.put("tiny", 1, timeout=0.05)


def test_a_blocked_put_resumes_when_a_consumer_takes_an_item():
    queue = ByteQueue(10)
    queue.put("first", 10)
    done = []
    producer = threading.Thread(target=lambda: done.append(queue.put("second", 10)))
    producer.start()
    time.sleep(0.1)
    assert not done  # still waiting for room
    assert queue.get(timeout=1) == "first"
    producer.join(timeout=2)
    assert done == [True] and queue.get(timeout=1) == "second"


def test_get_times_out_on_an_empty_queue_and_capacity_must_be_positive():
    with pytest.raises(TimeoutError):
        ByteQueue(1).get(timeout=0.05)
    with pytest.raises(ValueError, match="at least 1 byte"):
        ByteQueue(0)


def test_put_also_waits_for_the_item_limit():
    queue = ByteQueue(10**9, max_items=2)
    assert queue.put("a", 1) and queue.put("b", 1)
    assert not queue.put("c", 1, timeout=0.05)
    queue.get()
    assert queue.put("c", 1, timeout=0.05)
