"""The hostile half of benchmarks/serve_load.py: bombs, lies, stalls and a kill -9, each timed and
its cost in the server's memory measured (every process of the server's session, Ray's included)."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from _serve_clients import request

from brainseg.serve.service import wait_until_healthy


def _rss_mb(root: int) -> float:
    """Resident memory of `root` and all its descendants, in MB (from /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo.extend(children.get(pid, []))
    return total / 1e6


class PeakRss:
    """The server's peak memory above its level at the start, sampled every 20 ms while the block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.baseline = self.peak = _rss_mb(pid)
        self._stop = threading.Event()

    def __enter__(self) -> PeakRss:
        def sample() -> None:
            while not self._stop.wait(0.02):
                self.peak = max(self.peak, _rss_mb(self.pid))

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_mb(self.pid))

    @property
    def up_mb(self) -> float:
        return round(self.peak - self.baseline, 1)


def nifti_bomb(side: int) -> bytes:
    """A gzip'd NIfTI-1 header declaring side^3 uint8 voxels, and no voxels."""
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    struct.pack_into("<8h", header, 40, 3, side, side, side, 1, 1, 1, 1)
    struct.pack_into("<hh", header, 70, 2, 8)
    struct.pack_into("<f", header, 108, 352.0)
    header[344:348] = b"n+1\0"
    return gzip.compress(bytes(header))


def _real_volume_gzip(side: int) -> bytes:
    """A genuine .nii.gz of a side^3 uint8 volume of zeros (gzip shrinks it about 1000-fold)."""
    header = gzip.decompress(nifti_bomb(side))
    stream = zlib.compressobj(6, zlib.DEFLATED, 31)
    zeros = bytes(2**24)
    parts = [stream.compress(header)]
    for _ in range(side**3 // len(zeros)):
        parts.append(stream.compress(zeros))
    parts.append(stream.compress(bytes(side**3 % len(zeros))))
    parts.append(stream.flush())
    return b"".join(parts)


def _png_claiming(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))


def stalled_uploads(port: int, count: int, declared: int = 500_000, first: bytes = b"\x89PNG\r\n\x1a\n"):
    """`count` connections that send a POST's headers and `first`, then nothing."""
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    sockets = []
    for _ in range(count):
        connection = socket.create_connection(("127.0.0.1", port), timeout=30)
        connection.sendall(head + first)
        sockets.append(connection)
    return sockets


def _timed(call: Callable[[], tuple[int, dict, bytes]]) -> tuple[int, float]:
    started = time.perf_counter()
    status = call()[0]
    return status, round(time.perf_counter() - started, 4)


def hostile_suite(port: int, server_pid: int, slice_body: bytes) -> dict:
    """Every case's statuses, time and the server's memory cost; 5xx counted; health after."""
    cases: dict[str, dict] = {}
    statuses: list[int] = []

    def post(body, media: str):
        return request(port, "POST", "/v1/segment", body, {"Content-Type": media})

    def concurrent_bombs() -> dict:
        bomb, answers = nifti_bomb(1024), []
        threads = [threading.Thread(target=lambda: answers.append(_timed(lambda: post(bomb, "application/gzip"))))
                   for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return {"body_bytes": len(bomb), "statuses": [s for s, _ in answers],
                "slowest_s": max(t for _, t in answers)}

    def one(body, media: str) -> Callable[[], dict]:
        def case() -> dict:
            status, seconds = _timed(lambda: post(body, media))
            return {"body_bytes": len(body) if isinstance(body, bytes) else None, "statuses": [status],
                    "slowest_s": seconds}
        return case

    def chunked_over_limit() -> dict:
        pieces = (bytes(2**20) for _ in range(70))  # 70 MiB of zeros, no Content-Length
        status, seconds = _timed(lambda: post(pieces, "image/png"))
        return {"body_bytes": 70 * 2**20, "statuses": [status], "slowest_s": seconds}

    def stalls() -> dict:
        sockets = stalled_uploads(port, 64)
        try:
            time.sleep(0.5)
            healthz, healthz_s = _timed(lambda: request(port, "GET", "/healthz"))
            real, real_s = _timed(lambda: post(slice_body, "image/tiff"))
        finally:
            for connection in sockets:
                connection.close()
        return {"statuses": [healthz, real], "healthz_status": healthz, "healthz_s": healthz_s,
                "slice_status": real, "slice_s": real_s}

    gray = np.zeros((32, 32, 3), np.uint8)
    plan = {
        "volume_bombs_x4": concurrent_bombs,
        "real_512_cubed_gzip": one(_real_volume_gzip(512), "application/gzip"),
        "png_declaring_60000_squared": one(_png_claiming(60000, 60000), "image/png"),
        "tiff_posted_as_png": one(slice_body, "image/png"),
        "webp_posted_as_png": one(cv2.imencode(".webp", gray)[1].tobytes(), "image/png"),
        "chunked_70mib_over_limit": chunked_over_limit,
        "stalled_uploads_x64": stalls,
    }
    for name, case in plan.items():
        with PeakRss(server_pid) as memory:
            record = case()
        record["peak_rss_up_mb"] = memory.up_mb
        cases[name] = record
        statuses += record["statuses"]
    healthy = request(port, "GET", "/healthz")[0] == 200
    return {"cases": cases, "server_errors": sum(status >= 500 or status == 0 for status in statuses),
            "healthy_after": healthy}


def _replica_pids(root: int) -> list[int]:
    """Ray Serve replica processes among `root`'s descendants (by their process title)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                title = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"ServeReplica:brainseg" in title:
                found.append(int(entry))
    return found


def kill_during_upload(mode: str, port: int, server, slice_body: bytes, restart: Callable, places: list[Path]) -> dict:
    """kill -9 the serving process (embedded) or the replica (ray) while an upload is half sent, bring the
    service back, and search every file written meanwhile under `places` for the uploaded bytes."""
    marker = f"uploaded-bytes-marker-{time.time_ns()}".encode()
    began = time.time()
    upload = stalled_uploads(port, 1, declared=2 * (len(slice_body) + len(marker)), first=b"")[0]
    upload.sendall(slice_body + marker)
    time.sleep(0.5)
    started = time.perf_counter()
    if mode == "embedded":
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        killed = "the seg-serve process"
        server = restart()
    else:
        replicas = _replica_pids(server.pid)
        for pid in replicas:
            os.kill(pid, signal.SIGKILL)
        killed = f"{len(replicas)} Ray Serve replica process(es)"
        time.sleep(1)
    upload.close()
    wait_until_healthy(f"http://127.0.0.1:{port}", timeout_s=300)
    back_s = round(time.perf_counter() - started, 2)
    scanned, holding = 0, []
    for place in places:
        for path in place.rglob("*"):
            try:
                if path.is_symlink() or not path.is_file() or path.stat().st_mtime < began:
                    continue
                scanned += 1
                if marker in path.read_bytes():
                    holding.append(str(path))
            except OSError:
                continue
    return {"killed": killed, "healthy_again_s": back_s, "places": [str(p) for p in places],
            "files_written_since_scanned": scanned, "files_holding_uploaded_bytes": holding, "server": server}
