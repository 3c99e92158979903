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

`read_for_graph` and `prediction_at_scan_size` are the per-scan steps around inference, shared with
seg-bench's end-to-end timing; `seg-run --ray` (`brainseg.runtime.ray_run`) runs `RunPlan`'s steps on Ray.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, astuple, dataclass, field
from pathlib import Path

import numpy as np

from brainseg.artifacts.layout import DISAGREEMENT, MASK, PROBABILITY
from brainseg.artifacts.manifest import InputSpec, Manifest
from brainseg.data.preprocess import resize_back, resize_slices
from brainseg.data.volume import SkippedInput
from brainseg.errors import ConfigError, DataError
from brainseg.postprocess import PostProcessing
from brainseg.runtime import discovery, loading, outputs, report_html
from brainseg.runtime.backends import Backend, Choice, open_backend
from brainseg.runtime.byte_queue import ByteQueue
from brainseg.runtime.out_lock import OutputLock
from brainseg.runtime.scans import Prediction, Scan, ScanData
from brainseg.runtime.tta import with_tta

log = logging.getLogger("brainseg.runtime")
_DONE = object()  # end-of-stream marker between stages


@dataclass(frozen=True)
class RunOptions:
    backend: str = "auto"
    precision: str | None = None
    device: int = 0
    batch_size: int = 8
    readers: int = 2
    threads: int | None = None
    queue_scans: int = 4  # each queue between stages: at most this many scans and queue_bytes (~1 BraTS case)
    queue_bytes: int = 192 * 2**20
    overwrite: bool = False
    save_probability: bool = False
    overlays: bool = True
    qc_threshold: float = 0.25
    cuda_graph: bool = False  # TensorRT: replay a CUDA graph for full batches
    tta: str = "auto"  # auto (the artifacts' choice), none or flip
    components: str = "auto"  # auto (the artifacts' choice), none, largest or min_volume
    # ONNX Runtime CPU threads spinning between ops: 20% lower latency per call at batch 1, but
    # they compete with the reader and writer threads (-10% slices/s at batch 8 on 2 cores)
    spinning: bool = False
    ray: str | None = None  # "local" or a Ray cluster's address: run on Ray Data (brainseg.runtime.ray_run)
    ray_actors: int = 1  # Ray: inference actors, one backend (and one GPU where the cluster has GPUs) each


@dataclass
class RunSummary:
    """What summary.json holds; `exit_code` is 0 when every input was done, 1 when some were skipped."""

    out: str
    backend: dict
    precision: str
    manifest_sha256: str
    postprocessing: dict = field(default_factory=dict)
    scans: int = 0
    done: int = 0
    resumed: int = 0
    slices: int = 0
    skipped: list[dict] = field(default_factory=list)
    timings_s: dict = field(default_factory=dict)
    slices_per_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return 1 if self.skipped else 0

    def count(self, key: str, slices: int, on_scan: Callable[[str, int], None] | None) -> None:
        """One more scan written: add it up and tell `on_scan`."""
        self.done, self.slices = self.done + 1, self.slices + slices
        if on_scan is not None:
            on_scan(key, slices)


@dataclass
class RunPlan:
    """What a run works on (see `plan_run`) and the steps both seg-run and seg-run --ray take with it."""
    manifest: Manifest
    scans: list[Scan]
    skipped: list[SkippedInput]  # inputs left out so far, with reasons; the run adds to it
    post: PostProcessing
    out_options: outputs.OutputOptions

    def todo(self, out: Path) -> list[Scan]:
        """Every scan with `overwrite`, else those an earlier run has not done."""
        return self.scans if self.out_options.overwrite else [s for s in self.scans if not outputs.is_done(out, s)]

    def summary(self, out: Path, backend: dict, precision: str) -> RunSummary:
        post = {**self.post.to_dict(), "description": self.post.describe()}
        return RunSummary(str(out), backend, precision, self.manifest.sha256, post, scans=len(self.scans))

    def open_backend(self, options: RunOptions) -> tuple[Backend, Choice]:
        """The backend `options` ask for, wrapped in the plan's TTA."""
        backend, choice = open_backend(self.manifest, backend=options.backend, precision=options.precision,
                                       device=options.device, threads=options.threads, spinning=options.spinning,
                                       cuda_graph_batch=options.batch_size if options.cuda_graph else None)
        log.info("backend: %s, precision %s, %s (%s); %s", *astuple(choice), self.post.describe())
        return with_tta(backend, self.post.tta, self.manifest.threshold), choice

    def read(self, scan: Scan) -> tuple[ScanData, np.ndarray] | SkippedInput:
        """`read_for_graph`, or why the scan is skipped: unreadable, malformed, no slices."""
        try:
            data, image = read_for_graph(scan, self.manifest.input)
        except DataError as err:  # an InputSkipped names the file at fault and the reason
            return SkippedInput(getattr(err, "path", str(scan.paths[0])), getattr(err, "reason", str(err)))
        except Exception as err:  # a reader library choking on a file it should have refused: skip, keep going
            log.debug("reading %s failed", scan.paths[0], exc_info=True)
            return SkippedInput(str(scan.paths[0]), f"could not be read ({type(err).__name__}: {err})")
        return SkippedInput(str(scan.paths[0]), "has no slices") if data.num_slices == 0 else (data, image)

    def write(self, out: Path, data: ScanData, arrays: dict[str, np.ndarray]) -> SkippedInput | None:
        """`prediction_at_scan_size`, then `outputs.write_scan`; None once written, else why the scan is skipped."""
        try:
            prediction = prediction_at_scan_size(data, arrays, self.manifest.threshold, self.post)
            outputs.write_scan(out, data, prediction, self.out_options)
        except DataError as err:
            return SkippedInput(str(data.scan.paths[0]), getattr(err, "reason", str(err)))
        return None

    def finish(self, out: Path, summary: RunSummary, seconds: dict[str, float], wall: float) -> None:
        """Complete `summary`, then write results.csv, summary.json and report.html (every scan done, ever)."""
        summary.skipped = [{"path": s.path, "reason": s.reason} for s in self.skipped]
        summary.timings_s = {**{k: round(v, 3) for k, v in seconds.items()}, "wall": round(wall, 3)}
        summary.slices_per_s = round(summary.slices / wall, 2) if wall > 0 and summary.slices else 0.0
        outputs.write_results_csv(out, rows := outputs.collect_rows(out, self.scans))
        outputs.write_summary(out, record := {**asdict(summary), "exit_code": summary.exit_code})
        report_html.write_report_html(out, record, rows)


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
        from brainseg.runtime.ray_run import segment_on_ray

        return segment_on_ray(paths, artifacts, out, options, on_scan=on_scan)
    out, plan = Path(out), plan_run(paths, artifacts, options)
    with OutputLock(out):
        backend, choice = plan.open_backend(options)
        summary = plan.summary(out, {**backend.describe(), "reason": choice.reason}, choice.precision)
        todo = plan.todo(out)
        summary.resumed = len(plan.scans) - len(todo)
        started = time.perf_counter()
        try:
            stats = _run_stages(todo, plan, backend, out, options, summary, on_scan)
        finally:
            backend.close()
        plan.finish(out, summary, stats.seconds, time.perf_counter() - started)
    return summary


def plan_run(paths: Sequence[str | Path], artifacts: str | Path, options: RunOptions) -> RunPlan:
    """Check the options, load the manifest and find the scans (DataError when there are none)."""
    if options.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {options.batch_size}")
    manifest = Manifest.load(artifacts)
    scans, skipped = discovery.discover([Path(p) for p in paths], manifest.input.modalities)
    if not scans and not skipped:
        raise DataError(f"no scans found under {', '.join(map(str, paths))}")
    post = manifest.postprocessing.with_overrides(tta=options.tta, components=options.components)
    return RunPlan(manifest, scans, skipped, post, outputs.OutputOptions(
        overwrite=options.overwrite, save_probability=options.save_probability, overlays=options.overlays,
        qc_threshold=options.qc_threshold, manifest_sha256=manifest.sha256))  # the sha256 names the model in DICOM SEGs


def read_for_graph(scan: Scan, spec: InputSpec) -> tuple[ScanData, np.ndarray]:
    """Read `scan` and bring its slices to the graph's input size: (data, (S, h, w, C) array)."""
    data = loading.load(scan, spec)
    return data, _to_graph_size(data.image, spec.size)


def predict_image(backend: Backend, image: np.ndarray, spec: InputSpec, threshold: float,
                  post: PostProcessing | None = None, *, batch_size: int = 8) -> Prediction:
    """One scan's slices (S, H, W, C), as a reader gives them, -> its Prediction at (H, W): seg-run's steps,
    one scan at a time (resize to the graph, `backend`, resize back, threshold, `post`'s component rule);
    TTA is the backend's (wrap it with `with_tta`)."""
    arrays = infer_in_batches(backend, _to_graph_size(image, spec.size), batch_size)
    return _at_size(arrays, image.shape[1:3], threshold, post)


def infer_in_batches(backend: Backend, images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
    """(N, h, w, C) slices at the graph's size -> each output (N, K, h, w), `batch_size` slices per call."""
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), batch_size):
        for name, array in backend.infer(images[start:start + batch_size]).items():
            parts.setdefault(name, []).append(np.array(array, copy=True))  # a backend may reuse its buffers
    return {name: np.concatenate(chunks) for name, chunks in parts.items()}


def prediction_at_scan_size(data: ScanData, arrays: dict[str, np.ndarray], threshold: float,
                            post: PostProcessing | None = None) -> Prediction:
    """Graph outputs for one scan, each (S, K, h, w) -> a Prediction (S, H, W, K) at the scan's own size.
    The mask is thresholded again after resizing, then `post`'s component rule is applied to it
    (in 3-D over the scan's slices); a member graph, which has no disagreement output, gets a zero one."""
    return _at_size(arrays, data.image.shape[1:3], threshold, post)


def _at_size(arrays: dict[str, np.ndarray], size: tuple[int, int], threshold: float,
             post: PostProcessing | None) -> Prediction:
    arrays = {name: array.transpose(0, 2, 3, 1) for name, array in arrays.items()}  # views, no copy
    probability = arrays[PROBABILITY]
    disagreement = arrays.get(DISAGREEMENT, np.zeros_like(probability))
    height, width = size
    if probability.shape[1:3] == (height, width):
        mask = arrays[MASK].astype(np.uint8)
    else:
        probability = resize_back(np.ascontiguousarray(probability), height, width)
        disagreement = resize_back(np.ascontiguousarray(disagreement), height, width)
        mask = (probability >= threshold).astype(np.uint8)
    if post is not None:
        mask = post.refine_classes(mask)
    return Prediction(probability, mask, disagreement)


def _run_stages(todo, plan: RunPlan, backend: Backend, out, options: RunOptions, summary, on_scan) -> _Stats:
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
        _infer_loop(prepared, finished, backend, options.batch_size, len(readers), stats, stop)
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


def _to_graph_size(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if image.shape[1:3] == size:
        return np.ascontiguousarray(image)
    if size[0] != size[1]:
        raise ConfigError(f"the graph's input is {size[0]}x{size[1]}; only square inputs are resized")
    return resize_slices(image, size[0], is_mask=False)


def _infer_loop(prepared, finished, backend: Backend, batch_size: int, readers: int, stats: _Stats,
                stop: threading.Event) -> None:
    """Pack slices of consecutive scans into batches; hand each scan on once all its slices are back.
    Returns early once `stop` is set (a reader or the writer failed; the caller raises its error):
    a reader that dies may not manage to send its end marker, so it is never waited for alone."""
    if backend.max_batch is not None:
        batch_size = min(batch_size, backend.max_batch)
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
                _run_batch(pending, finished, backend, stats)
                pending, queued = [], 0
    if pending:
        _run_batch(pending, finished, backend, stats)


def _run_batch(pending, finished, backend: Backend, stats: _Stats) -> None:
    batch = np.concatenate([p.image[a:b] for p, a, b in pending]) if len(pending) > 1 else \
        pending[0][0].image[pending[0][1]:pending[0][2]]
    started = time.perf_counter()
    result = backend.infer(batch)
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
