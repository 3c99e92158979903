"""`seg-run` as a library call: reader threads -> one inference loop -> a writer thread.

Readers decode scans and bring them to the graph's input size; the inference loop packs slices
from consecutive scans into batches of `batch_size` (so a folder of single slices still runs at
full batch), and the writer resizes each scan's outputs back and writes them. The queues between
stages hold at most `queue_scans` scans and `queue_bytes` each (`ByteQueue`): memory depends on
neither the folder's size nor its scans'. The artifacts' post-processing (flip TTA, a 3-D component
rule; `brainseg.postprocess`) applies unless the options say otherwise.

A scan that cannot be read or written is skipped with a one-line reason and the run goes on; a
scan whose outputs are complete from an earlier run is kept (unless `overwrite`), so an
interrupted run continues where it stopped. A bug in a reader or the writer stops every stage
and is raised to the caller, never left waiting. One run at a time may write an output folder.

The model is one `Segmenter`; the steps shared with `seg-run --ray` (`brainseg.runtime.batch.ray_run`)
are `RunPlan`'s (`brainseg.runtime.batch.plan`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from brainseg.data.volume import SkippedInput
from brainseg.runtime.batch.byte_queue import ByteQueue
from brainseg.runtime.batch.out_lock import OutputLock
from brainseg.runtime.batch.plan import RunOptions, RunPlan, RunSummary, plan_run
from brainseg.runtime.io.scans import ScanData
from brainseg.runtime.segmenter import Segmenter

__all__ = ["RunOptions", "RunSummary", "segment"]
log = logging.getLogger("brainseg.runtime")
_DONE = object()  # end-of-stream marker between stages


@dataclass
class _Prepared:
    data: ScanData
    image: np.ndarray  # (S, h, w, C) at the graph's input size
    outputs: dict[str, list[np.ndarray]] = field(default_factory=dict)
    filled: int = 0


class _Stats:
    """Seconds spent per stage, summed over threads, safe to add to from any of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = {"read": 0.0, "infer": 0.0, "write": 0.0}

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.seconds[stage] += seconds


def segment(paths: Sequence[str | Path], artifacts: str | Path, out: str | Path, options: RunOptions = RunOptions(),
            *, on_scan: Callable[[str, int], None] | None = None) -> RunSummary:
    """Segment every scan found under `paths` with the ensemble in `artifacts`; write under `out`.

    `on_scan(key, slices)` is called after each scan is written (the CLI's progress bar).
    Raises ArtifactError/ConfigError (usage problems, another run writing `out`) before any scan is read.
    """
    if options.ray is not None:  # the same run on Ray Data
        from brainseg.runtime.batch.ray_run import segment_on_ray

        return segment_on_ray(paths, artifacts, out, options, on_scan=on_scan)
    out, plan = Path(out), plan_run(paths, artifacts, options)
    with OutputLock(out):
        segmenter = plan.open_segmenter(options)
        summary = plan.summary(out, segmenter.describe(), segmenter.precision)
        try:
            todo = plan.todo(out, segmenter.precision)  # ConfigError: the folder holds another model's scans
        except BaseException:
            segmenter.close()
            raise
        plan.out_options = replace(plan.out_options, made_by=plan.made_by(segmenter.precision))
        summary.resumed = len(plan.scans) - len(todo)
        started = time.perf_counter()
        try:
            stats = _run_stages(todo, plan, segmenter, out, options, summary, on_scan)
        finally:
            segmenter.close()
        plan.finish(out, summary, stats.seconds, time.perf_counter() - started)
    return summary


def _run_stages(todo, plan: RunPlan, segmenter: Segmenter, out, options: RunOptions, summary, on_scan) -> _Stats:
    stats = _Stats()
    lock = threading.Lock()
    work: queue.Queue = queue.Queue()
    for scan in todo:
        work.put(scan)
    prepared, finished = (ByteQueue(options.queue_bytes, options.queue_scans) for _ in range(2))
    stop = threading.Event()
    failures: list[BaseException] = []  # unexpected errors in a reader or the writer: bugs, re-raised here

    def skip(item: SkippedInput) -> None:
        with lock:
            plan.skipped.append(item)
        log.warning("skipped %s: %s", item.path, item.reason)

    readers = [threading.Thread(target=_reader, args=(work, prepared, plan, stats, skip, stop, failures), daemon=True,
                                 name=f"brainseg-reader-{i}") for i in range(max(1, options.readers))]
    writer = threading.Thread(target=_writer, daemon=True, name="brainseg-writer",
                              args=(finished, out, plan, stats, skip, summary, on_scan, failures, stop))
    for thread in (*readers, writer):
        thread.start()
    try:
        _infer_loop(prepared, finished, segmenter, len(readers), stats, stop)
    except BaseException:
        stop.set()
        raise
    finally:
        finished.put(_DONE)
        writer.join()
    if failures:
        raise failures[0]
    return stats


def _reader(work, prepared, plan: RunPlan, stats: _Stats, skip, stop: threading.Event, failures: list) -> None:
    try:
        while not stop.is_set():
            try:
                scan = work.get_nowait()
            except queue.Empty:
                break
            started = time.perf_counter()
            read = plan.read(scan)
            stats.add("read", time.perf_counter() - started)
            skip(read) if isinstance(read, SkippedInput) else _put(prepared, _Prepared(*read), stop)
    except BaseException as err:  # a bug: stop everything and let the caller re-raise it
        failures.append(err)
        stop.set()
    finally:
        _put(prepared, _DONE, stop)


def _put(target: ByteQueue, item, stop: threading.Event) -> None:
    """Put `item`, giving up once `stop` is set (nobody will read it then)."""
    while not target.put(item, _nbytes(item), timeout=0.2) and not stop.is_set():
        pass


def _nbytes(item) -> int:  # a scan between stages holds its slices at their own size and at the graph's
    return 0 if item is _DONE else item.data.image.nbytes + item.image.nbytes


def _infer_loop(prepared, finished, segmenter: Segmenter, readers: int, stats: _Stats,
                stop: threading.Event) -> None:
    """Pack slices of consecutive scans into batches; hand each scan on once all its slices are back.
    Returns early once `stop` is set (a reader or the writer failed; the caller raises its error):
    a reader that dies may not manage to send its end marker, so it is never waited for alone."""
    batch_size = segmenter.batch_size
    pending: list[tuple[_Prepared, int, int]] = []  # (scan, first slice, end) making up the next batch
    queued = 0
    open_readers = readers
    while open_readers:
        try:
            item = prepared.get(timeout=0.1)
        except TimeoutError:
            if stop.is_set():
                return
            continue
        if item is _DONE:
            open_readers -= 1
            continue
        start = 0
        while start < item.data.num_slices:
            take = min(batch_size - queued, item.data.num_slices - start)
            pending.append((item, start, start + take))
            queued += take
            start += take
            if queued == batch_size:
                _run_batch(pending, finished, segmenter, stats)
                pending, queued = [], 0
    if pending:
        _run_batch(pending, finished, segmenter, stats)


def _run_batch(pending, finished, segmenter: Segmenter, stats: _Stats) -> None:
    batch = np.concatenate([p.image[a:b] for p, a, b in pending]) if len(pending) > 1 else \
        pending[0][0].image[pending[0][1]:pending[0][2]]
    started = time.perf_counter()
    result = segmenter.infer(batch)
    stats.add("infer", time.perf_counter() - started)
    offset = 0
    for item, a, b in pending:
        for name, array in result.items():
            item.outputs.setdefault(name, []).append(array[offset:offset + b - a])
        item.filled += b - a
        offset += b - a
        if item.filled == item.data.num_slices:
            finished.put(item, _nbytes(item))


def _writer(finished, out, plan: RunPlan, stats: _Stats, skip, summary: RunSummary, on_scan, failures: list,
            stop: threading.Event) -> None:
    """Write each finished scan; after an unexpected error stop the run, and keep draining (never block inference)."""
    while True:
        item = finished.get()
        if item is _DONE:
            return
        if failures:
            continue
        try:
            started = time.perf_counter()
            arrays = {name: np.concatenate(parts) for name, parts in item.outputs.items()}
            failed = plan.write(out, item.data, arrays)
            stats.add("write", time.perf_counter() - started)
            skip(failed) if failed else summary.count(item.data.scan.key, item.data.num_slices, on_scan)
        except BaseException as err:
            failures.append(err)
            stop.set()
