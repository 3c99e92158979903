"""Benchmark: seg-serve under a bounded loopback load, against bare inference of the same backend.

Targets, on the machine it runs on:
- at concurrency 1, p50 latency within 5 ms of bare inference's batch-1 p50;
- at concurrency 32, requests/s at least 1.5x those at concurrency 1;
- no failed request.

seg-serve runs as its own process (the `seg-serve` command, stopped with Ctrl-C at the end) on
a free loopback port. Clients are threads of this process, each with its own keep-alive
connection, sending built-in sample slices (256x256 RGB TIFF) in a closed loop: a fixed number
of requests per concurrency level, a request counted as failed unless it returns 200. "Bare" is
the same backend (and precision, threads and flip TTA when the artifacts use it) opened in this
process, `infer` on one slice already resized to the graph's input, timed back to back while
the server idles, just before the concurrency-1 run (and again after the last run, to show how
much the machine drifted). The replica's own share of each request comes from its Server-Timing
header; the rest is HTTP, Ray Serve's proxy and the client. Client, proxy and replica share the
machine.

    python benchmarks/serve_load.py ARTIFACTS [--requests 200] [--concurrency 1,8,32] [--out FILE]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from _report import emit

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import cpu_description
from brainseg.bench.stats import summarize, time_calls
from brainseg.data.synthetic.sample import SampleSpec, cached_sample_dataset
from brainseg.runtime.io import discovery
from brainseg.runtime.segmenter import Segmenter, SegmenterOptions
from brainseg.serve.service import wait_until_healthy

TARGET_OVERHEAD_MS = 5.0
TARGET_SCALING = 1.5


def _slices(count: int) -> list[Path]:
    sample = cached_sample_dataset(SampleSpec(patients=max(1, -(-count // 16)), slices=16))
    return sorted(p for p in sample.rglob("*.tif") if not p.stem.endswith("_mask"))[:count]


def _bare(args: argparse.Namespace, files: list[Path]) -> dict:
    manifest = Manifest.load(args.artifacts)
    scans, _ = discovery.discover(files, manifest.input.modalities)
    options = SegmenterOptions(backend=args.backend, precision=args.precision, threads=args.threads)
    with Segmenter(manifest, options) as segmenter:  # what each seg-serve replica opens
        images = [segmenter.steps.read(scan)[1] for scan in scans]  # (1, h, w, C) each
        turn = iter(range(10**9))
        samples = time_calls(lambda: segmenter.infer(images[next(turn) % len(images)]), warmup=5,
                             iterations=args.bare_calls)
    stats, choice = summarize(samples), segmenter.choice
    return {"backend": choice.backend, "precision": choice.precision, "file": choice.file, "tta": segmenter.post.tta,
            "threads": args.threads or "per core", "calls": stats.count, "p50_ms": round(stats.p50_ms, 3),
            "p99_ms": round(stats.p99_ms, 3)}


def _start_server(args: argparse.Namespace, port: int, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "brainseg.serve.cli", "--artifacts", str(args.artifacts), "--port", str(port),
               "--backend", args.backend, "--max-batch", str(args.max_batch), "--batch-wait-ms",
               str(args.batch_wait_ms)]
    command += ["--precision", args.precision] if args.precision else []
    command += ["--threads", str(args.threads)] if args.threads else []
    with open(log, "w") as stream:
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, start_new_session=True)


def _stop_server(server: subprocess.Popen) -> int:
    """Ctrl-C, as a person would; the exit code (killed after 60 s, as -9)."""
    server.send_signal(signal.SIGINT)
    try:
        return server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        return server.wait()


class _Client:
    """One keep-alive connection; `post` returns (ok, milliseconds, the replica's Server-Timing phases in ms)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def post(self, body: bytes) -> tuple[bool, float, dict[str, float]]:
        started = time.perf_counter()
        try:
            self.connection.request("POST", "/v1/segment", body=body, headers={"Content-Type": "image/tiff"})
            response = self.connection.getresponse()
            response.read()
            ok, timing = response.status == 200, response.getheader("Server-Timing", "")
        except (OSError, http.client.HTTPException):
            self.connection.close()
            self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            ok, timing = False, ""
        elapsed = (time.perf_counter() - started) * 1000
        return ok, elapsed, _phases(timing)


def _phases(server_timing: str) -> dict[str, float]:
    """'body;dur=2.1, backend;dur=20.3, ...' -> {"body": 2.1, "backend": 20.3, ...}."""
    phases = {}
    for part in server_timing.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            phases[name] = float(duration)
    return phases


def _load(port: int, bodies: list[bytes], concurrency: int, requests: int) -> dict:
    """`requests` POSTs from `concurrency` closed-loop clients; latency, throughput, failures, batches."""
    before = _stats(port)
    counter = iter(range(requests))
    lock = threading.Lock()
    results: list[tuple[bool, float, dict[str, float]]] = []

    def client() -> None:
        connection = _Client(port)
        while True:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            outcome = connection.post(bodies[index % len(bodies)])
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    after = _stats(port)
    latencies = np.array([ms for ok, ms, _ in results if ok]) if results else np.zeros(0)
    phases = [p for ok, _, p in results if ok and p]
    batches = {size: n - before["batch_sizes"].get(size, 0) for size, n in after["batch_sizes"].items()}
    return {
        "concurrency": concurrency, "requests": len(results), "failed": sum(not ok for ok, _, _ in results),
        "p50_ms": _round(np.percentile(latencies, 50)) if latencies.size else None,
        "p99_ms": _round(np.percentile(latencies, 99)) if latencies.size else None,
        "requests_per_s": round(len(latencies) / wall, 2), "wall_s": round(wall, 3),
        "replica_p50_ms": {name: _round(np.percentile([p[name] for p in phases], 50)) for name in phases[0]}
        if phases else None,
        "batch_sizes": {size: n for size, n in sorted(batches.items(), key=lambda kv: int(kv[0])) if n},
    }


def _stats(port: int) -> dict:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", "/v1/stats")
    return json.loads(connection.getresponse().read())


def _round(value: float) -> float:
    return round(float(value), 3)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _targets(bare: dict, levels: list[dict]) -> dict:
    by_concurrency = {level["concurrency"]: level for level in levels}
    one, most = by_concurrency.get(1), by_concurrency.get(max(by_concurrency))
    overhead = one["p50_ms"] - bare["p50_ms"] if one and one["p50_ms"] is not None else None
    scaling = most["requests_per_s"] / one["requests_per_s"] if one and one["requests_per_s"] else None
    failed = sum(level["failed"] for level in levels)
    phases = one["replica_p50_ms"] if one else None
    return {
        "batch1_p50_over_bare_ms": None if overhead is None else round(overhead, 3),
        # the same overhead against the replica's own backend time, immune to drift between the runs
        "batch1_p50_over_replica_backend_ms": round(one["p50_ms"] - phases["backend"], 3) if phases else None,
        "batch1_p50_within_5ms_of_bare": overhead is not None and overhead <= TARGET_OVERHEAD_MS,
        f"requests_per_s_c{most['concurrency']}_over_c1": None if scaling is None else round(scaling, 3),
        "scaling_at_least_1.5x": scaling is not None and scaling >= TARGET_SCALING,
        "failed_requests": failed, "no_failed_requests": failed == 0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path)
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    parser.add_argument("--slices", type=int, default=32, help="distinct sample slices sent in turn")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bare-calls", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    files = _slices(args.slices)
    bodies = [path.read_bytes() for path in files]
    port = _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "seg-serve.log"
        server = _start_server(args, port, log)
        try:
            wait_until_healthy(f"http://127.0.0.1:{port}", timeout_s=300)
            model = json.loads(_get(port, "/v1/model"))
            _load(port, bodies, 1, 10)  # warm-up: first requests through the proxy and the replica
            bare = _bare(args, files)  # while the server idles, next to the concurrency-1 run in time
            levels = [_load(port, bodies, int(c), args.requests) for c in args.concurrency.split(",")]
            bare_after = _bare(args, files)  # how much the machine drifted during the run
        finally:
            exit_code = _stop_server(server)
            server_log = log.read_text()[-2000:]
    result = {
        "machine": cpu_description(), "artifacts": str(args.artifacts),
        "load_average_1min": {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)},
        "input": f"{len(bodies)} sample slices, 256x256 RGB TIFF, resized to the graph's "
                 f"{model['input']['height']}x{model['input']['width']}",
        "server": {"backend": model["backend"], "precision": model["precision"], "batching": model["batching"],
                   "exit_code_after_ctrl_c": exit_code},
        "bare_inference_batch1": bare,
        "bare_inference_batch1_after_the_load": {"p50_ms": bare_after["p50_ms"], "p99_ms": bare_after["p99_ms"]},
        "load": levels,
        "targets": _targets(bare, levels),
    }
    if exit_code != 0:
        result["server_log_tail"] = server_log
    emit(result, args.out)


def _get(port: int, path: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path)
    return connection.getresponse().read()


if __name__ == "__main__":
    main()
