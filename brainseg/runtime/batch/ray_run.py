"""`seg-run --ray`: the run `brainseg.runtime.batch.pipeline.segment` makes, distributed with Ray Data.

What runs where:

- the driver (this process): discovery, the output folder's lock, which scans an earlier run did
  (resume), and at the end results.csv, summary.json and report.html from the row records: the
  same `RunPlan` steps as `segment`;
- one Ray task with an actor's resources, before any scan is read: it opens the Segmenter as an
  actor will and describes it for summary.json, so that bad artifacts or a precision that is not
  there stop the run as the BrainsegError they are (an actor that fails to start says it in text);
- Ray tasks (`TASK_CPUS` each): each scan read and brought to the graph's input size (`RunPlan.read`);
- an actor pool (`ScanSegmenter`, `ray_actors` of them): one `Segmenter` per actor, opened once; each
  call takes about one batch of slices' worth of read scans (`_scans_per_call`: one volume or
  series, or `batch_size` single slices) and runs their slices in batches of `batch_size`.
  An actor asks for one GPU where the cluster has GPUs (Ray then shows it only that GPU, so
  `device` is always 0 there), else for `threads` CPUs (1 when unset);
- Ray tasks (`TASK_CPUS` each): each scan's outputs resized back, post-processed and written
  (`RunPlan.write`); the driver counts the scan (`on_scan`) as its write task ends.

Retries and exactly once: Ray runs a read or write task again when its worker process dies, and
an inference call again on a restarted actor when the actor dies, at most `max_attempts` times in
all (Ray Data's own defaults retry without end, so one file whose decoder kills its process, a
segfault or an OOM kill, hung the run forever). A scan whose task still fails is dropped from the
stream (Ray Data's `max_errored_blocks`, one scan per block) and skipped with the reason, and the
run goes on: the other scans, and the inference actor's last partial batch, are written. An error
raised on a scan (a reader, the model or a writer choking on it) is never retried: each stage
catches it and skips the scan with the stage and the error as the reason, so one bad scan costs one
attempt. Ray still restarts a dead actor without limit (`max_restarts=-1`): the pool stays whole
while each call on it is tried at most `max_attempts` times. Only the outputs of the attempt that
finishes reach the write tasks. Every file is written atomically and the row record last
(`outputs.write_scan`); a retried write of a scan whose row record exists keeps it (with
`overwrite`: one whose row record is newer than this run's lock), so each scan is written once
and has one row in results.csv. The retry limits go to Ray Data as remote arguments of `map` and
`map_batches`, which Ray 2.64 removes (hence the `<2.64` pin of the `distributed` extra).

Between stages a scan travels as pickled bytes (its `ScanData`, its graph-size slices, its graph
outputs), which Ray Data's Arrow blocks hold as they are. Every node needs brainseg installed and
the artifacts, the scans and the output folder at the same paths (a shared file system).
`ray` is imported only here, inside `segment_on_ray` (`pip install 'brainseg[distributed]'`).
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np

from brainseg.data.volume import SkippedInput
from brainseg.errors import BrainsegError, ConfigError, require
from brainseg.runtime import outputs
from brainseg.runtime.batch.out_lock import LOCK_NAME, OutputLock
from brainseg.runtime.batch.plan import RunOptions, RunPlan, RunSummary, plan_run
from brainseg.runtime.io.scans import Scan

if TYPE_CHECKING:
    from ray.data import Dataset

log = logging.getLogger("brainseg.runtime")
EXTRA = "distributed"
LOCAL = "local"
# Reading or writing a scan is file I/O and codec work in short bursts, so two such tasks share a
# CPU. Asking for other resources than the actors also keeps Ray Data from fusing the reads into
# the actors (it fuses a task map into the actor map after it when both ask for the same).
TASK_CPUS = 0.5
MAX_READ_TASKS = 1000  # one scan per read task up to this many; beyond, a task reads several in turn
NOTHING_RAN = {"backend": "none", "reason": "no scan needed segmenting: every one was done by an earlier run"}
STAGES = ("read", "infer", "write")


def segment_on_ray(paths: Sequence[str | Path], artifacts: str | Path, out: str | Path,
                   options: RunOptions = RunOptions(ray=LOCAL), *,
                   on_scan: Callable[[str, int], None] | None = None) -> RunSummary:
    """`segment(paths, artifacts, out, options)` on Ray: the same outputs, skips, resume and summary.

    `options.ray` is "local" (start Ray in this process with one CPU per core, and stop it after)
    or the address of a running cluster (`ray start --head` prints it; "auto" finds a local one);
    a Ray session this process already holds is used as it is. `options.ray_actors` actors run
    inference. `on_scan(key, slices)` is called here, on the driver, after each scan is written.
    Raises BrainsegError when ray[data] is missing, ArtifactError/ConfigError before any scan is
    read (options the cluster cannot run, a backend that cannot open), and any other error of a
    task or an actor as Ray reports it (a bug: it stops the run).
    """
    require("ray.data", EXTRA, package="ray[data]")
    import ray

    if options.ray_actors < 1:
        raise ConfigError(f"--ray-actors must be at least 1, got {options.ray_actors}")
    if options.max_attempts < 1:
        raise ConfigError(f"--max-attempts must be at least 1, got {options.max_attempts}")
    out, plan = Path(out), plan_run(paths, artifacts, options)
    with OutputLock(out):
        todo = plan.todo(out)
        summary = plan.summary(out, dict(NOTHING_RAN), "none")
        summary.resumed = len(plan.scans) - len(todo)
        seconds = dict.fromkeys(STAGES, 0.0)
        started = time.perf_counter()
        if todo:
            with _ray_session(ray, options.ray or LOCAL):
                started = _run(ray, todo, plan, out, options, summary, seconds, on_scan)
        plan.finish(out, summary, seconds, time.perf_counter() - started)
    return summary


@contextmanager
def _ray_session(ray: ModuleType, address: str) -> Iterator[None]:
    """The Ray session this process holds, else one started here ("local") or joined (an address),
    shut down afterwards."""
    if ray.is_initialized():
        log.info("ray: using this process's Ray session")
        yield
        return
    try:
        if address == LOCAL:  # workers at seg-run's own priority (Ray starts them at niceness 15)
            # address="local": always a new instance here, never a cluster that RAY_ADDRESS or a
            # stale /tmp/ray/ray_current_cluster names
            ray.init(address=LOCAL, num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                     _system_config={"worker_niceness": 0})
        else:
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise ConfigError(f"--ray {address}: cannot start or reach Ray ({err}); start a cluster with "
                          "`ray start --head` and pass the address it prints, or use --ray local") from err
    try:
        yield
    finally:
        ray.shutdown()


def _run(ray: ModuleType, todo: list[Scan], plan: RunPlan, out: Path, options: RunOptions, summary: RunSummary,
         seconds: dict[str, float], on_scan: Callable[[str, int], None] | None) -> float:
    """Check the backend, then run the dataset and count each scan as its write task ends; returns
    the time (perf_counter) the scans started."""
    shared = replace(plan, scans=[], skipped=[])  # what the workers need: manifest, scan steps, outputs
    actor_options = replace(options, device=0)  # Ray shows an actor only the GPU it gave it
    resources = _actor_resources(ray, options)
    described = _checked_backend(ray, shared, actor_options, resources)
    summary.precision = described.pop("precision")
    summary.backend = described
    # the scans done earlier were checked for artifacts and post-processing; now the precision is known
    if not options.overwrite:
        done = [scan for scan in plan.scans if scan not in todo and outputs.is_done(out, scan)]
        plan.check_made_by(out, done, summary.precision)
    shared.out_options = replace(shared.out_options, made_by=plan.made_by(summary.precision))
    started = time.perf_counter()
    answered = set()
    for row in _dataset(ray, todo, shared, out, actor_options, resources).iter_rows():
        answered.add(row["key"])
        for stage in STAGES:
            seconds[stage] += float(row[f"{stage}_s"])
        if row["skip_reason"]:
            plan.skipped.append(SkippedInput(row["skip_path"], row["skip_reason"]))
            log.warning("skipped %s: %s", row["skip_path"], row["skip_reason"])
        else:
            summary.count(row["key"], int(row["slices"]), on_scan)
    for scan in todo:  # dropped by Ray Data after its last attempt: never a row
        if scan.key not in answered:
            reason = (f"its Ray worker process died {options.max_attempts} time(s) (killed by the OS, crashed "
                      "in a decoder or the model, or lost with its node); Ray's worker logs say which")
            plan.skipped.append(SkippedInput(str(scan.paths[0]), reason))
            log.warning("skipped %s: %s", scan.paths[0], reason)
    # Ray Data leaves reference cycles that hold object refs and actor handles: free them while Ray
    # still runs, not in whatever allocation (or interpreter exit) next wakes the garbage collector
    gc.collect()
    return started


def _actor_resources(ray: ModuleType, options: RunOptions) -> dict[str, float]:
    """What each actor asks Ray for: a GPU where the cluster has any, CPUs for its backend's threads.

    Refuses more actors than GPUs (they would wait forever), and actors that leave less than
    `TASK_CPUS` for the read and write tasks.
    """
    cluster = ray.cluster_resources()
    gpus, cpus = int(cluster.get("GPU", 0)), cluster.get("CPU", 0)
    wanted = {"num_cpus": options.threads or 1, "num_gpus": 1 if gpus else 0}
    if gpus and options.ray_actors > gpus:
        raise ConfigError(f"--ray-actors {options.ray_actors}: the Ray cluster has {gpus} GPU(s), one per actor")
    if options.ray_actors * wanted["num_cpus"] + TASK_CPUS > cpus:
        raise ConfigError(f"--ray-actors {options.ray_actors} x {wanted['num_cpus']} CPU(s) leave less than "
                          f"{TASK_CPUS:g} of the Ray cluster's {cpus:g} CPU(s) to read and write scans; "
                          "use fewer actors or fewer --threads")
    log.info("ray: %d actor(s), each with %s", options.ray_actors, wanted)
    return wanted


def _checked_backend(ray: ModuleType, plan: RunPlan, options: RunOptions, resources: dict[str, float]) -> dict:
    """The backend's description, from a Ray task that opens it where an actor would; its
    BrainsegError (bad artifacts, a precision or backend not there) is raised here as itself."""
    try:
        return ray.get(ray.remote(describe_backend).options(**resources).remote(plan, options))
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, BrainsegError):
            raise err.cause from None
        raise


def describe_backend(plan: RunPlan, options: RunOptions) -> dict:
    """Open the run's Segmenter and close it again: what it runs, why it was chosen, its precision."""
    with plan.open_segmenter(options) as segmenter:
        return {**segmenter.describe(), "precision": segmenter.precision}


def _dataset(ray: ModuleType, todo: list[Scan], plan: RunPlan, out: Path, options: RunOptions,
             resources: dict[str, float]) -> Dataset:
    """read tasks -> the inference actor pool -> write tasks, one row per scan (nothing runs yet)."""
    items = [{"scan": pickle.dumps(scan)} for scan in todo]
    since_ns = (out / LOCK_NAME).stat().st_mtime_ns  # this run's lock was taken then
    context = ray.data.DataContext.get_current()
    shown, context.enable_progress_bars = context.enable_progress_bars, False  # `on_scan` shows the progress
    # a scan whose task fails `max_attempts` times is dropped, not the run: the driver skips it
    errored, context.max_errored_blocks = context.max_errored_blocks, len(items)
    try:  # a dataset keeps a copy of the context it was made in
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), MAX_READ_TASKS))
    finally:
        context.enable_progress_bars, context.max_errored_blocks = shown, errored
    retries = {"max_retries": options.max_attempts - 1}
    return (dataset.map(_read, fn_kwargs={"plan": plan}, num_cpus=TASK_CPUS, **retries)
            .map_batches(ScanSegmenter, batch_size=_scans_per_call(todo, options.batch_size),
                         fn_constructor_kwargs={"plan": plan, "options": options},
                         compute=ray.data.ActorPoolStrategy(size=options.ray_actors),
                         max_restarts=-1, max_task_retries=options.max_attempts - 1, **resources)
            .map(_write, fn_kwargs={"plan": plan, "out": str(out), "since_ns": since_ns}, num_cpus=TASK_CPUS,
                 **retries))


def _scans_per_call(todo: list[Scan], batch_size: int) -> int:
    """Scans per actor call: about one batch of slices. A call's scans reach the write tasks together,
    so one scan per call when scans fill a batch (volumes, kaggle_3m series), more for single slices."""
    slices = sorted(len(scan.paths) if scan.kind in ("slice", "kaggle_3m", "dicom") else batch_size for scan in todo)
    return max(1, batch_size // slices[len(slices) // 2])  # a typical scan's slices: one per file, volumes many


def _read(row: dict, *, plan: RunPlan) -> dict:
    """Ray task: read one scan and bring it to the graph's input size, or say why it is skipped."""
    started = time.perf_counter()
    scan: Scan = pickle.loads(row["scan"])
    read = plan.read(scan)
    skipped = read if isinstance(read, SkippedInput) else SkippedInput("", "")
    data, image = (b"", b"") if skipped.reason else (pickle.dumps(part, protocol=5) for part in read)
    return {"key": scan.key, "data": data, "image": image, "skip_path": skipped.path,
            "skip_reason": skipped.reason, "read_s": time.perf_counter() - started}


class ScanSegmenter:
    """Ray Data actor: opens the run's Segmenter once, then segments batches of read scans.

    Each call gets a few scans (`_scans_per_call`), runs all their slices through the Segmenter in
    batches of `batch_size` (slices of consecutive scans share a batch, as in `segment`) and gives
    each scan its graph outputs; skipped scans pass through. When the Segmenter raises, each scan of
    the call is skipped with the error as the reason (a retry would raise again).
    """

    def __init__(self, plan: RunPlan, options: RunOptions) -> None:
        self.segmenter = plan.open_segmenter(options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images = {i: pickle.loads(payload) for i, payload in enumerate(batch["image"]) if payload}
        slices = sum(len(image) for image in images.values())
        started = time.perf_counter()
        kept = {name: batch[name] for name in ("key", "data", "skip_path", "skip_reason", "read_s")}
        try:
            arrays = self.segmenter.infer_all(np.concatenate(list(images.values()))) if images else {}
        except Exception as err:  # noqa: BLE001 - reported as the scans' skip reason, on the driver
            log.debug("inference failed", exc_info=True)
            return _skip_all(kept, images, f"inference failed on it ({type(err).__name__}: {err})")
        seconds = time.perf_counter() - started
        per_scan, infer_s, offset = [], [], 0
        for i in range(len(batch["image"])):
            count = len(images[i]) if i in images else 0
            part = {name: array[offset:offset + count] for name, array in arrays.items()}
            per_scan.append(pickle.dumps(part, protocol=5) if count else b"")
            infer_s.append(seconds * count / slices if slices else 0.0)
            offset += count
        return {**kept, "arrays": np.array(per_scan, dtype=object), "infer_s": np.array(infer_s)}


def _skip_all(kept: dict[str, np.ndarray], images: dict[int, np.ndarray], reason: str) -> dict[str, np.ndarray]:
    """The call's rows with every read scan (those in `images`) skipped for `reason`."""
    paths, reasons = list(kept["skip_path"]), list(kept["skip_reason"])
    for i in images:
        paths[i] = str(pickle.loads(kept["data"][i]).scan.paths[0])
        reasons[i] = reason
    count = len(paths)
    return {**kept, "skip_path": np.array(paths, dtype=object), "skip_reason": np.array(reasons, dtype=object),
            "arrays": np.array([b""] * count, dtype=object), "infer_s": np.zeros(count)}


def _write(row: dict, *, plan: RunPlan, out: str, since_ns: int) -> dict:
    """Ray task: bring one scan's outputs to its size, post-process and write them, once."""
    result = {name: row[name] for name in ("key", "skip_path", "skip_reason", "read_s", "infer_s")}
    result.update(slices=0, write_s=0.0)
    if row["skip_reason"]:
        return result
    started = time.perf_counter()
    data = pickle.loads(row["data"])
    if not _written_this_run(Path(out), data.scan, plan.out_options.overwrite, since_ns):
        try:
            failed = plan.write(Path(out), data, pickle.loads(row["arrays"]))
        except Exception as err:  # noqa: BLE001 - a writer choking on this scan: skip it, never retry it
            log.debug("writing %s failed", data.scan.key, exc_info=True)
            failed = SkippedInput(str(data.scan.paths[0]), f"could not be written ({type(err).__name__}: {err})")
        if failed is not None:
            result.update(skip_path=failed.path, skip_reason=failed.reason)
    result.update(slices=data.num_slices, write_s=time.perf_counter() - started)
    return result


def _written_this_run(out: Path, scan: Scan, overwrite: bool, since_ns: int) -> bool:
    """With `overwrite`, whether an earlier attempt of this write (a retry's) already wrote the scan:
    its row record is newer than this run's lock. Without it, `write_scan` keeps a done scan itself."""
    if not overwrite:
        return False
    try:
        return outputs.safe_output_path(out, f".rows/{scan.key}.json").stat().st_mtime_ns > since_ns
    except (OSError, outputs.ScanOutputError):
        return False
