"""seg-run --ray on a real Ray (2 CPUs) over tiny exported artifacts: the masks, rows, skipped inputs and
resume of seg-run without Ray; a killed inference actor's scans segmented again and written once; refusals
before any scan is read; the missing extra."""

from __future__ import annotations

import csv
import json
import logging
import os
import pickle
import shutil
import signal
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from brainseg.errors import BrainsegError, ConfigError
from brainseg.fileio import write_atomic
from brainseg.runtime.batch import ray_run
from brainseg.runtime.batch.out_lock import OutputLock
from brainseg.runtime.batch.pipeline import RunOptions, segment
from brainseg.runtime.batch.plan import plan_run
from brainseg.runtime.io.scans import Scan

ray = pytest.importorskip("ray", reason="seg-run --ray needs ray[data]: pip install 'brainseg[distributed]'")
pytest.importorskip("ray.data", reason="seg-run --ray needs ray[data]: pip install 'brainseg[distributed]'")
pytest.importorskip("onnxruntime")

SEGMENTER = "ScanSegmenter"  # in the process title of every inference actor, "ray::MapWorker(MapBatches(...))"


def _slices(tiny_sample: Path) -> list[Path]:
    return sorted(p for p in tiny_sample.rglob("*.tif") if not p.stem.endswith("_mask"))


@pytest.fixture(scope="module")
def scans(tiny_sample, tmp_path_factory) -> Path:
    """Two single slices, one kaggle_3m patient, and a truncated PNG and a text file to skip."""
    root = tmp_path_factory.mktemp("ray_scans")
    slices = _slices(tiny_sample)
    (root / "slices").mkdir()
    for name, source in (("a", slices[3]), ("b", slices[10])):
        assert cv2.imwrite(str(root / "slices" / f"{name}.png"), cv2.imread(str(source)))
    shutil.copytree(slices[0].parent, root / "patient")
    (root / "bad").mkdir()
    png = (root / "slices" / "a.png").read_bytes()
    (root / "bad" / "truncated.png").write_bytes(png[: len(png) // 2])
    (root / "bad" / "notes.txt").write_text("not a scan")
    return root


@pytest.fixture(scope="module")
def local_run(scans, tiny_artifacts, tmp_path_factory):
    out = tmp_path_factory.mktemp("ray_local") / "out"
    return out, segment([scans], tiny_artifacts, out, RunOptions(batch_size=4))


@pytest.fixture(scope="module")
def ray_session():
    """One Ray for the tests that use it: seg-run --ray runs on the session its process holds."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()


def _rows(out: Path) -> list[dict]:
    return list(csv.DictReader((out / "results.csv").open()))


def _masks(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted((out / "masks").rglob("*.png"))}


def _skipped(summary) -> set[tuple[str, str]]:
    return {(item["path"], item["reason"]) for item in summary.skipped}


@pytest.mark.slow
def test_ray_local_writes_what_seg_run_writes_and_stops_the_ray_it_started(
        scans, local_run, tiny_artifacts, tmp_path, monkeypatch):
    local_out, local = local_run
    started_here = not ray.is_initialized()
    monkeypatch.setattr(ray_run.os, "cpu_count", lambda: 2)  # "local" starts Ray with one CPU per core
    # an earlier Ray killed without cleaning up leaves the address of a cluster that is gone: "local"
    # must start its own instance rather than try to join it
    stale = Path(os.environ.get("RAY_TMPDIR", "/tmp/ray")) / "ray_current_cluster"
    kept = stale.read_bytes() if stale.is_file() else None
    stale.parent.mkdir(parents=True, exist_ok=True)
    stale.write_text("127.0.0.1:9\n")  # the discard port: nothing answers there
    written = []
    try:
        summary = segment([scans], tiny_artifacts, tmp_path / "out", RunOptions(batch_size=4, ray="local"),
                          on_scan=lambda key, slices: written.append((key, slices)))
    finally:
        if kept is None:
            stale.unlink(missing_ok=True)
        else:
            stale.write_bytes(kept)
    out = tmp_path / "out"
    if started_here:
        assert not ray.is_initialized(), "--ray local must stop the Ray it started"
    assert _rows(out) == _rows(local_out) and len(_rows(out)) == 3
    masks = _masks(out)
    assert masks == _masks(local_out) and len(masks) == 2 + 6  # two slices, a patient of six
    assert sorted(written) == sorted((row["key"], int(row["slices"])) for row in _rows(out))
    assert _skipped(summary) == _skipped(local) and {Path(p).name for p, _ in _skipped(summary)} == {
        "truncated.png", "notes.txt"}
    assert (summary.done, summary.slices, summary.resumed, summary.exit_code) == (3, 8, 0, 1)
    assert (summary.backend["backend"], summary.precision) == (local.backend["backend"], local.precision)
    stored = json.loads((out / "summary.json").read_text())
    assert stored["exit_code"] == 1 and set(stored["timings_s"]) == {"read", "infer", "write", "wall"}
    assert stored["timings_s"]["infer"] > 0 and (out / "report.html").is_file()


# Loaded by every Python process started with this folder on PYTHONPATH: Ray's workers, in the test below.
# A process that opens the dying file dies at once, as one whose decoder segfaults or is OOM-killed; one
# that opens the raising file gets an error, as from a reader library choking on it. Each opening is logged.
_FAULTS_ON_OPEN = """import os, sys
_die, _raise, _log = (os.environ.get(k) for k in ("BRAINSEG_TEST_DIE_ON", "BRAINSEG_TEST_RAISE_ON",
                                                  "BRAINSEG_TEST_OPEN_LOG"))
if _log:
    def _fault_on_open(event, args):
        if event != "open" or not args or not isinstance(args[0], str):
            return
        for target in (_die, _raise):
            if args[0].endswith(target):
                fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                os.write(fd, (target + "\\n").encode())
                os.close(fd)
                if target == _die:
                    os._exit(137)
                raise RuntimeError("injected by the test")
    sys.addaudithook(_fault_on_open)
"""


@pytest.mark.slow
def test_a_scan_whose_worker_dies_or_raises_is_skipped_and_every_other_scan_is_written(
        tiny_sample, tiny_artifacts, tmp_path, monkeypatch):
    if ray.is_initialized():
        pytest.skip("needs a Ray of its own, started with the hook in its workers' environment")
    inputs = tmp_path / "in"
    inputs.mkdir()
    slices = _slices(tiny_sample)
    for i in range(6):
        assert cv2.imwrite(str(inputs / f"s{i}.png"), cv2.imread(str(slices[i])))
    shutil.copyfile(inputs / "s0.png", inputs / "poison.png")
    shutil.copyfile(inputs / "s1.png", inputs / "raising.png")
    hook, opened = tmp_path / "hook", tmp_path / "opened.log"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(_FAULTS_ON_OPEN)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("BRAINSEG_TEST_DIE_ON", "poison.png")
    monkeypatch.setenv("BRAINSEG_TEST_RAISE_ON", "raising.png")
    monkeypatch.setenv("BRAINSEG_TEST_OPEN_LOG", str(opened))
    monkeypatch.setattr(ray_run.os, "cpu_count", lambda: 2)
    started, ended = time.perf_counter(), []
    options = RunOptions(batch_size=8, ray="local", overlays=False)
    run = threading.Thread(target=lambda: ended.append(segment([inputs], tiny_artifacts, tmp_path / "out", options)),
                           daemon=True)
    run.start()
    run.join(timeout=300)  # a run that retries without end must fail this test, not hang the suite
    assert ended, "seg-run --ray did not end: the dying scan is retried forever"
    assert time.perf_counter() - started < 120
    (summary,) = ended
    assert (summary.done, summary.exit_code) == (6, 1)
    reasons = {Path(item["path"]).name: item["reason"] for item in summary.skipped}
    assert set(reasons) == {"poison.png", "raising.png"}
    assert "died 3 time(s)" in reasons["poison.png"]
    assert reasons["raising.png"] == "could not be read (RuntimeError: injected by the test)"
    # the dying scan was tried --max-attempts times, the raising one once: an error is not retried
    assert sorted(opened.read_text().split()) == ["poison.png"] * 3 + ["raising.png"]
    assert sorted(p.name for p in (tmp_path / "out" / "masks").rglob("*.png")) == [f"s{i}.png" for i in range(6)]
    assert len(_rows(tmp_path / "out")) == 6


def test_an_error_in_inference_or_writing_skips_the_scan_with_the_error(scans, tiny_artifacts, tmp_path):
    """In the actor's and the write task's own code (run here, in this process): a scan the model or a
    writer chokes on is skipped with the error as its reason, and the other scans of the call go on."""
    plan = plan_run([scans / "slices"], tiny_artifacts, RunOptions(batch_size=4))
    (first, second) = [plan.read(scan) for scan in plan.scans]
    row = {"key": np.array([s.scan.key for s, _ in (first, second)], dtype=object),
           "data": np.array([pickle.dumps(s) for s, _ in (first, second)], dtype=object),
           "skip_path": np.array(["", ""], dtype=object), "skip_reason": np.array(["", ""], dtype=object),
           "read_s": np.zeros(2)}
    actor = ray_run.ScanSegmenter(plan, RunOptions(batch_size=4))
    wrong = {**row, "image": np.array([pickle.dumps(first[1]), pickle.dumps(second[1][..., :-3])], dtype=object)}
    answered = actor(wrong)  # slices of two sizes cannot form one batch: the Segmenter's own error
    assert [Path(p).name for p in answered["skip_path"]] == ["a.png", "b.png"]
    assert all(r.startswith("inference failed on it (ValueError: ") for r in answered["skip_reason"])
    fine = actor({**row, "image": np.array([pickle.dumps(image) for _, image in (first, second)], dtype=object)})
    assert list(fine["skip_reason"]) == ["", ""]

    out = tmp_path / "out"
    out.mkdir()
    written = {name: fine[name][0] for name in ("key", "data", "skip_path", "skip_reason", "read_s", "infer_s")}
    cut = {name: array[:0] for name, array in pickle.loads(fine["arrays"][0]).items()}  # outputs of no slice
    result = ray_run._write({**written, "arrays": pickle.dumps(cut)}, plan=plan, out=str(out), since_ns=0)
    assert Path(result["skip_path"]).name == "a.png"
    assert result["skip_reason"].startswith("could not be written (ValueError: ") and not any(out.iterdir())
    result = ray_run._write({**written, "arrays": fine["arrays"][0]}, plan=plan, out=str(out), since_ns=0)
    assert result["skip_reason"] == "" and [p.name for p in (out / "masks").rglob("*.png")] == ["a.png"]


@pytest.mark.slow
def test_a_second_run_does_only_what_is_missing(ray_session, scans, local_run, tiny_artifacts, tmp_path):
    local_out, _ = local_run
    out = tmp_path / "out"
    shutil.copytree(local_out, out)
    (out / ".rows" / "slices" / "b.json").unlink()  # as if the first run had stopped before b was done
    kept = (out / "masks" / "slices" / "a.png").stat().st_mtime_ns
    summary = segment([scans], tiny_artifacts, out, RunOptions(batch_size=4, ray="local"))
    assert (summary.resumed, summary.done, summary.slices) == (2, 1, 1)
    assert (out / "masks" / "slices" / "a.png").stat().st_mtime_ns == kept
    assert _rows(out) == _rows(local_out) and _masks(out) == _masks(local_out)
    again = segment([scans], tiny_artifacts, out, RunOptions(batch_size=4, ray="local"))
    assert (again.resumed, again.done, again.slices) == (3, 0, 0) and _skipped(again) == _skipped(summary)
    assert _rows(out) == _rows(local_out) and (out / "masks" / "slices" / "a.png").stat().st_mtime_ns == kept


def test_with_nothing_left_to_do_ray_is_not_started(scans, tiny_artifacts, tmp_path, monkeypatch):
    segment([scans / "slices" / "a.png"], tiny_artifacts, tmp_path / "out", RunOptions())
    monkeypatch.setattr(ray_run, "_ray_session", None)  # calling it would fail the test
    summary = segment([scans / "slices" / "a.png"], tiny_artifacts, tmp_path / "out", RunOptions(ray="local"))
    assert (summary.resumed, summary.done, summary.exit_code) == (1, 0, 0)
    assert (summary.backend["backend"], summary.precision) == ("none", "none")
    assert len(_rows(tmp_path / "out")) == 1


@pytest.fixture(scope="module")
def series(tiny_sample, tmp_path_factory) -> Path:
    """Twelve kaggle_3m scans of 30 slices each: enough work that the actor is busy after one is written."""
    root = tmp_path_factory.mktemp("ray_series")
    slices = _slices(tiny_sample)
    for scan in range(12):
        (root / f"series{scan:02d}").mkdir()
        for index in range(30):
            shutil.copy(slices[(7 * scan + index) % len(slices)], root / f"series{scan:02d}" / f"s_{index + 1}.tif")
    return root


def _segmenter_pids(busy: bool = False) -> set[int]:
    """Inference actors' processes (only those running a batch when `busy`), from their titles."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and SEGMENTER in title and (not busy or ".submit" in title):
            found.add(int(entry.name))
    return found


def _kill_a_busy_segmenter(timeout_s: float = 30.0) -> int | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for pid in _segmenter_pids(busy=True):
            os.kill(pid, signal.SIGKILL)
            return pid
        time.sleep(0.02)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").is_file(), reason="finds the actor's process through /proc")
def test_a_killed_actor_is_replaced_and_every_scan_is_written_once(ray_session, series, tiny_artifacts, tmp_path):
    killed, later, reported = [], set(), []

    def on_scan(key: str, slices: int) -> None:  # on the driver, after each scan is written
        reported.append(key)
        if not killed:
            killed.append(_kill_a_busy_segmenter())
        else:
            later.update(_segmenter_pids())

    summary = segment([series], tiny_artifacts, tmp_path / "ray", RunOptions(batch_size=1, ray="local"),
                      on_scan=on_scan)
    assert killed and killed[0] is not None, "no actor was running a batch after the first scan was written"
    assert later - {killed[0]}, "no new actor took over from the killed one"
    # results.csv is rebuilt from the row records, one per discovered scan, so its keys are unique
    # whatever happened: check the things a scan written or counted twice would change instead
    expected = sorted(folder.name for folder in series.iterdir())  # one scan per series folder
    records = sorted(str(p.relative_to(tmp_path / "ray" / ".rows"))[: -len(".json")]
                     for p in (tmp_path / "ray" / ".rows").rglob("*.json"))
    assert len(expected) == 12 and records == expected, records  # one row record per scan, no stray one
    assert sorted(row["key"] for row in _rows(tmp_path / "ray")) == expected  # one results.csv row each
    assert sorted(reported) == expected, reported  # each scan counted once, as its one write ended
    assert summary.done == 12 and summary.slices == 360
    local = segment([series], tiny_artifacts, tmp_path / "local", RunOptions(batch_size=1))
    assert local.done == 12
    assert _rows(tmp_path / "ray") == _rows(tmp_path / "local")
    assert _masks(tmp_path / "ray") == _masks(tmp_path / "local")


@pytest.mark.slow
def test_what_the_cluster_cannot_run_is_refused_before_any_scan_is_read(
        ray_session, scans, tiny_artifacts, tmp_path):
    with pytest.raises(ConfigError, match="leave less than 0.5 of the Ray cluster's 2 CPU"):
        segment([scans], tiny_artifacts, tmp_path / "a", RunOptions(ray="local", ray_actors=2))
    with pytest.raises(ConfigError, match="precision fp16 was not exported"):  # raised in a Ray task, as itself
        segment([scans], tiny_artifacts, tmp_path / "b", RunOptions(ray="local", precision="fp16"))
    assert not (tmp_path / "a" / "results.csv").exists() and not (tmp_path / "b" / "masks").exists()


def test_a_retried_write_in_an_overwrite_run_keeps_what_this_run_wrote(tmp_path):
    scan = Scan("x/y", "slice", (tmp_path / "y.png",), tmp_path)
    marker = tmp_path / "out" / ".rows" / "x" / "y.json"  # the scan's row record (brainseg.runtime.outputs)
    for overwrite, marker_first, expected in ((True, True, False), (True, False, True), (False, False, False)):
        shutil.rmtree(tmp_path / "out", ignore_errors=True)
        if marker_first:  # a row record from an earlier run
            write_atomic(marker, "{}")
            time.sleep(0.02)
        with OutputLock(tmp_path / "out"):
            since_ns = (tmp_path / "out" / ".lock").stat().st_mtime_ns
            if not marker_first:  # written by this run's first attempt
                time.sleep(0.02)
                write_atomic(marker, "{}")
            assert ray_run._written_this_run(tmp_path / "out", scan, overwrite, since_ns) is expected


def test_without_ray_the_error_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    with pytest.raises(BrainsegError, match=r"ray\[data\] is not installed.*pip install 'brainseg\[distributed\]'"):
        segment([tmp_path], tmp_path / "no-artifacts", tmp_path / "out", RunOptions(ray="local"))
