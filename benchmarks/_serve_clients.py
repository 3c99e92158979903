"""Loopback HTTP clients for benchmarks/serve_load.py: a closed-loop load and single requests."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time

import numpy as np


class Client:
    """One keep-alive connection; `post` returns (ok, milliseconds, the server's Server-Timing phases in ms)."""

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
        return ok, elapsed, phases_of(timing)


def phases_of(server_timing: str) -> dict[str, float]:
    """'body;dur=2.1, backend;dur=20.3, ...' -> {"body": 2.1, "backend": 20.3, ...}."""
    phases = {}
    for part in server_timing.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if duration:
            phases[name] = float(duration)
    return phases


def load(port: int, bodies: list[bytes], concurrency: int, requests: int) -> dict:
    """`requests` POSTs from `concurrency` closed-loop clients; latency, throughput, failures, batches."""
    before = json.loads(get(port, "/v1/stats"))
    counter = iter(range(requests))
    lock = threading.Lock()
    results: list[tuple[bool, float, dict[str, float]]] = []

    def client() -> None:
        connection = Client(port)
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
    after = json.loads(get(port, "/v1/stats"))
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


def request(port: int, method: str, path: str, body=None, headers: dict | None = None,
            timeout: float = 60) -> tuple[int, dict, bytes]:
    """(status, lower-cased headers, body) of one request on a fresh connection; status 0 when it failed."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        chunked = body is not None and not isinstance(body, bytes)
        try:
            connection.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body went out
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    except (OSError, http.client.HTTPException):
        return 0, {}, b""
    finally:
        connection.close()


def get(port: int, path: str) -> bytes:
    return request(port, "GET", path, timeout=30)[2]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _round(value: float) -> float:
    return round(float(value), 3)
