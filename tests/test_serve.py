"""seg-serve on real loopback HTTP over the tiny exported artifacts, in both modes: embedded (uvicorn
in this process, the default) and on a real Ray Serve (`--ray local`).

Each module-scoped service runs with a long batch wait (100 ms), so that concurrent clients
visibly share batches; every mask it returns is compared with the file seg-run writes for the
same input. Tests written once run against both modes; the hostile ones (stalled uploads, bombs,
leaks) too, and where the modes differ a test says so. The command-line checks run in fresh
interpreters and need neither Ray nor a model.
"""

from __future__ import annotations

import base64
import csv
import gzip
import http.client
import json
import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import pytest
from auto_choice import expected_auto_backend
from lying_headers import nifti_claiming, png_claiming, png_of_zeros

from brainseg.artifacts.manifest import Manifest
from brainseg.errors import BrainsegError, ConfigError
from brainseg.runtime.batch.pipeline import RunOptions, segment
from brainseg.serve.options import ServeOptions
from brainseg.serve.service import running_service, wait_until_healthy

nib = pytest.importorskip("nibabel")
pytest.importorskip("fastapi", reason="seg-serve needs FastAPI and uvicorn (pip install 'brainseg[serve]')")
REPO = Path(__file__).parents[1]
MAX_BODY_MB = 1.0
BODY_TIMEOUT_S = 6.0
MAX_UPLOADS = 80
slow = pytest.mark.slow


class Server(NamedTuple):
    host: str
    port: int
    mode: str  # "embedded" or "ray"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _options(**changes) -> ServeOptions:
    settings = {"port": _free_port(), "batch_size": 8, "batch_wait_ms": 100, "max_body_mb": MAX_BODY_MB,
                "body_timeout_s": BODY_TIMEOUT_S, "max_uploads": MAX_UPLOADS, **changes}
    return ServeOptions(**settings)


@pytest.fixture(scope="module", params=["embedded", "ray"])
def service(request, tiny_artifacts):
    """seg-serve on the tiny artifacts: batches of up to 8, 100 ms batch wait, 1 MiB bodies, 6 s body timeout.

    In Ray mode a neighbour application is deployed on the same Serve first; stopping seg-serve must
    leave it running (seg-serve deletes its own application only).
    """
    if request.param == "embedded":
        options = _options()
        with running_service(tiny_artifacts, options, startup_timeout_s=180):
            yield Server("127.0.0.1", options.port, "embedded")
        return
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'brainseg[distributed]')")
    import ray
    from ray import cloudpickle, serve

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # Ray's workers cannot import this test module
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    options = _options(ray="local")
    try:
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(serve.deployment(_Neighbour, ray_actor_options={"num_cpus": 0}).bind(), name="neighbour",
                  route_prefix="/neighbour")  # no CPU of the two: seg-serve and the broken app take one each
        with running_service(tiny_artifacts, options, startup_timeout_s=180):
            yield Server("127.0.0.1", options.port, "ray")
        assert "neighbour" in serve.status().applications, "seg-serve deleted another application"
        assert "brainseg" not in serve.status().applications
    finally:
        ray.shutdown()


class _Neighbour:
    """Another team's application on the same Ray Serve."""

    async def __call__(self, request) -> str:
        return "neighbour"


def _request(service, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request on a fresh connection."""
    connection = http.client.HTTPConnection(service.host, service.port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _segment(service, body: bytes, content_type: str, path: str = "/v1/segment", **headers):
    return _request(service, "POST", path, body, {"Content-Type": content_type, **headers})


def _healthy(service) -> bool:
    status, _, body = _request(service, "GET", "/healthz")
    return status == 200 and json.loads(body) == {"status": "ok"}


def _is_error(status: int, headers: dict, body: bytes) -> dict:
    """The JSON error body, after checking its shape: one line, exactly error and request_id, the
    request id that the X-Request-ID header carries."""
    assert headers["content-type"] == "application/json"
    assert body.count(b"\n") == 0
    record = json.loads(body)
    assert list(record) == ["error", "request_id"] and record["error"], record
    assert record["request_id"] == headers["x-request-id"]
    return record


def _tumour_slices(tiny_sample: Path, count: int) -> list[Path]:
    """The `count` slices of the sample with the largest labelled tumours (so the masks are not all empty)."""
    masks = sorted(tiny_sample.rglob("*_mask.tif"), key=lambda p: -int((cv2.imread(str(p), 0) > 0).sum()))
    return [p.with_name(p.name.replace("_mask", "")) for p in masks[:count]]


def _seg_run(inputs: list[Path], artifacts: Path, out: Path) -> dict[str, dict]:
    """seg-run (batch 1, as the served requests here run) on `inputs`; results.csv rows by key."""
    summary = segment(inputs, artifacts, out, RunOptions(batch_size=1, overlays=False))
    assert summary.done == len(inputs), summary.skipped
    with open(out / "results.csv", newline="") as rows:
        return {row["key"]: row for row in csv.DictReader(rows)}


@slow
def test_png_mask_is_the_mask_seg_run_writes(service, tiny_sample, tiny_artifacts, tmp_path):
    slices = _tumour_slices(tiny_sample, 3)
    rows = _seg_run(slices, tiny_artifacts, tmp_path / "out")
    served_pixels = []
    for path in slices:
        status, headers, body = _segment(service, path.read_bytes(), "image/tiff")
        assert status == 200, body
        assert headers["content-type"] == "image/png"
        served = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_UNCHANGED)
        written = cv2.imread(str(tmp_path / "out" / "masks" / f"{path.stem}.png"), cv2.IMREAD_UNCHANGED)
        assert served.shape == written.shape == cv2.imread(str(path)).shape[:2]
        np.testing.assert_array_equal(served, written)
        assert set(np.unique(served)) <= {0, 255}
        row = rows[path.stem]
        assert int(headers["x-tumour-pixels"]) == int(row["tumour_pixels"]) == int((served > 0).sum())
        assert float(headers["x-max-probability"]) == pytest.approx(float(row["max_probability"]), abs=1e-6)
        assert float(headers["x-disagreement"]) == pytest.approx(float(row["mean_disagreement"]), abs=1e-6)
        timing = dict(part.strip().split(";dur=") for part in headers["server-timing"].split(","))
        assert 0 < float(timing["backend"]) <= float(timing["total"])
        served_pixels.append(int(headers["x-tumour-pixels"]))
    assert max(served_pixels) > 0, "the tiny model found no tumour on the largest labelled ones: nothing compared"


@slow
def test_json_variant_carries_the_same_mask_and_numbers(service, tiny_sample):
    path = _tumour_slices(tiny_sample, 1)[0]
    body, shape = path.read_bytes(), cv2.imread(str(path)).shape[:2]
    _, headers, png = _segment(service, body, "image/tiff")
    for route, extra in (("/v1/segment?format=json", {}), ("/v1/segment", {"Accept": "application/json"})):
        status, json_headers, raw = _segment(service, body, "image/tiff", route, **extra)
        assert status == 200 and json_headers["content-type"] == "application/json"
        record = json.loads(raw)
        assert base64.b64decode(record["mask"]) == png
        assert record["mask_media_type"] == "image/png"
        assert record["tumour_pixels"] == int(headers["x-tumour-pixels"])
        assert record["max_probability"] == pytest.approx(float(headers["x-max-probability"]), abs=1e-6)
        assert record["mean_disagreement"] == pytest.approx(float(headers["x-disagreement"]), abs=1e-6)
        assert (record["slices"], record["height"], record["width"]) == (1, *shape)
        assert record["manifest_sha256"] == headers["x-manifest-sha256"]


@slow
def test_nifti_volume_gets_the_nifti_mask_seg_run_writes(service, tiny_sample, tiny_artifacts, tmp_path):
    patient = sorted(tiny_sample.rglob("*_1.tif"))[0].parent
    slices = [cv2.imread(str(p))[..., 1] for p in sorted(patient.glob("*.tif")) if not p.stem.endswith("_mask")]
    volume = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (X, Y, Z) uint8
    affine = np.diag([0.9, 0.9, 2.5, 1.0])
    source = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), str(source))
    _seg_run([source], tiny_artifacts, tmp_path / "out")
    written = nib.load(str(tmp_path / "out" / "volumes" / "vol.nii.gz"))
    for content_type, body in (("application/gzip", source.read_bytes()),
                               ("application/x-nifti", gzip.decompress(source.read_bytes()))):
        status, headers, raw = _segment(service, body, content_type)
        assert status == 200, raw
        assert headers["content-type"] == "application/gzip"
        served = nib.Nifti1Image.from_bytes(gzip.decompress(raw))
        np.testing.assert_array_equal(np.asarray(served.dataobj), np.asarray(written.dataobj))
        np.testing.assert_allclose(served.affine, affine)
        assert int(headers["x-slices"]) == volume.shape[2]


@slow
def test_health_model_and_stats_name_no_path_of_the_server(service, tiny_artifacts):
    assert _healthy(service)
    status, headers, body = _request(service, "GET", "/v1/model")
    assert status == 200
    model = json.loads(body)
    manifest = Manifest.load(tiny_artifacts)
    assert model["manifest_sha256"] == manifest.sha256
    assert model["deployed"] == manifest.deployed == model["backend"]["deployed"]  # which candidate it serves
    assert model["threshold"] == manifest.threshold
    assert model["precision"] in manifest.usable_precisions()
    assert model["backend"]["backend"] == expected_auto_backend()  # no TensorRT here: OpenVINO or ONNX Runtime
    assert (model["input"]["height"], model["input"]["width"], model["input"]["dtype"]) == (64, 64, "uint8")
    assert model["mode"] == service.mode
    assert model["batching"] == {"max_batch": 8, "batch_wait_ms": 100, "replicas": 1}
    assert model["limits"]["max_body_bytes"] == int(MAX_BODY_MB * 2**20)
    assert model["limits"]["body_timeout_s"] == BODY_TIMEOUT_S and model["limits"]["max_uploads"] == MAX_UPLOADS
    assert model["media_types"] == ["image/png", "image/tiff", "image/jpeg", "application/gzip", "application/x-nifti"]
    assert "artifacts" not in model and str(tiny_artifacts) not in body.decode()
    assert not re.search(r'"/[^"]*/', body.decode()), "an absolute path in /v1/model"
    status, _, body = _request(service, "GET", "/v1/stats")
    assert status == 200 and {"batch_sizes", "largest_batch", "requests", "replica", "uploads_in_progress",
                              "buffered_bytes"} <= json.loads(body).keys()
    status, _, body = _request(service, "GET", "/openapi.json")
    assert status == 200 and "/v1/segment" in json.loads(body)["paths"]


@slow
def test_concurrent_clients_share_batches(service, tiny_sample):
    body = _tumour_slices(tiny_sample, 1)[0].read_bytes()
    before = json.loads(_request(service, "GET", "/v1/stats")[2])
    start = threading.Barrier(8)
    statuses = []

    def client() -> None:
        start.wait()
        statuses.append(_segment(service, body, "image/tiff")[0])

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert statuses == [200] * 8
    after = json.loads(_request(service, "GET", "/v1/stats")[2])
    assert after["slices"] - before["slices"] == 8
    ran = {int(size): count - before["batch_sizes"].get(size, 0) for size, count in after["batch_sizes"].items()}
    assert max(size for size, count in ran.items() if count > 0) > 1, after


@slow
@pytest.mark.parametrize("case", ["empty", "not an image", "truncated", "wrong channels", "too large",
                                  "text content type", "no content type", "bad format", "wrong method", "no route",
                                  "tiff sent as png", "webp", "bmp", "pixels over the limit", "voxels over the limit",
                                  "nifti shorter than declared", "bad content length", "decoded size over the budget"])
def test_bad_requests_get_a_4xx_json_line_and_the_service_stays_healthy(service, tiny_sample, tmp_path, case):
    good = _tumour_slices(tiny_sample, 1)[0].read_bytes()
    two_channels = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3, 2), np.float32), np.eye(4)), str(two_channels))
    gray = np.zeros((16, 16, 3), np.uint8)
    expected, request = {
        "empty": (400, ("POST", "/v1/segment", b"", {"Content-Type": "image/png"})),
        "not an image": (415, ("POST", "/v1/segment", b"hello, not a PNG", {"Content-Type": "image/png"})),
        "truncated": (422, ("POST", "/v1/segment", good[: len(good) // 2], {"Content-Type": "image/tiff"})),
        "wrong channels": (422, ("POST", "/v1/segment", two_channels.read_bytes(),
                                 {"Content-Type": "application/gzip"})),
        "too large": (413, ("POST", "/v1/segment", b"\0" * int(1.5 * MAX_BODY_MB * 2**20),
                            {"Content-Type": "image/png"})),
        "text content type": (415, ("POST", "/v1/segment", good, {"Content-Type": "text/plain"})),
        "no content type": (415, ("POST", "/v1/segment", good, {})),
        "bad format": (400, ("POST", "/v1/segment?format=xml", good, {"Content-Type": "image/tiff"})),
        "wrong method": (405, ("GET", "/v1/segment", None, {})),
        "no route": (404, ("GET", "/v2/segment", None, {})),
        "tiff sent as png": (415, ("POST", "/v1/segment", good, {"Content-Type": "image/png"})),
        "webp": (415, ("POST", "/v1/segment", cv2.imencode(".webp", gray)[1].tobytes(), {"Content-Type": "image/png"})),
        "bmp": (415, ("POST", "/v1/segment", cv2.imencode(".bmp", gray)[1].tobytes(), {"Content-Type": "image/tiff"})),
        "pixels over the limit": (413, ("POST", "/v1/segment", png_claiming(20000, 20000),
                                        {"Content-Type": "image/png"})),
        "voxels over the limit": (413, ("POST", "/v1/segment", nifti_claiming(1024, 1024, 1024),
                                        {"Content-Type": "application/gzip"})),
        "nifti shorter than declared": (422, ("POST", "/v1/segment", nifti_claiming(128, 128, 128),
                                              {"Content-Type": "application/gzip"})),
        "bad content length": (400, ("POST", "/v1/segment", None, {"Content-Type": "image/png",
                                                                   "Content-Length": "12abc"})),
        "decoded size over the budget": (413, ("POST", "/v1/segment", png_of_zeros(16000, 16000),
                                               {"Content-Type": "image/png"})),
    }[case]
    status, headers, body = _request(service, *request)
    if case == "bad content length":  # refused by the HTTP server before the app sees it, in its own words
        assert 400 <= status < 500, body
    else:
        assert status == expected, body
        record = _is_error(status, headers, body)
        assert "/tmp" not in record["error"] and "Traceback" not in record["error"]
    assert _healthy(service)


def test_a_client_request_id_is_kept_when_well_formed_and_replaced_otherwise(service):
    status, headers, _ = _request(service, "GET", "/healthz", headers={"X-Request-ID": "scanner-7.run_42"})
    assert status == 200 and headers["x-request-id"] == "scanner-7.run_42"
    hostile = "<script>" + "x" * 80
    status, headers, body = _request(service, "GET", "/nowhere", headers={"X-Request-ID": hostile})
    assert status == 404
    record = json.loads(body)
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", record["request_id"]), record
    if service.mode == "embedded":
        assert headers["x-request-id"] == record["request_id"]
    # in Ray mode Serve's proxy sets the header itself, to the client's value (docs/security.md)


def test_every_answer_is_marked_no_store(service):
    for method, route in (("GET", "/healthz"), ("GET", "/v1/model"), ("GET", "/nowhere")):
        assert _request(service, method, route)[1]["cache-control"] == "no-store"


def test_headers_over_the_limit_get_431_and_the_connection_closed(service):
    if service.mode == "ray":
        pytest.skip("in Ray mode Serve's own proxy reads the headers (docs/security.md)")
    from brainseg.serve.embedded import MAX_HEADER_BYTES

    padding = b"".join(b"X-Padding-%d: %s\r\n" % (i, b"a" * 990) for i in range(MAX_HEADER_BYTES // 1000 + 2))
    with socket.create_connection((service.host, service.port), timeout=30) as client:
        client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + padding)  # one write, read whole by the server
        reply = b""
        while piece := client.recv(4096):
            reply += piece
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ") and "over 16384 bytes" in json.loads(body)["error"]
    assert _healthy(service)


def _post_chunked(service, body: bytes, content_type: str, piece: int = 64 * 2**10):
    """(status, headers, body) of a POST whose body goes out chunked, with no Content-Length: the
    server learns its size only by reading it. The server may answer and close before all is sent."""
    connection = http.client.HTTPConnection(service.host, service.port, timeout=60)
    try:
        pieces = (body[start:start + piece] for start in range(0, len(body), piece))
        try:
            connection.request("POST", "/v1/segment", body=pieces, headers={"Content-Type": content_type},
                               encode_chunked=True)
        except (BrokenPipeError, ConnectionResetError):
            pass  # it stopped reading at the limit; its answer is still there to read
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


@slow
def test_a_chunked_body_over_the_limit_gets_413_and_the_service_stays_healthy(service):
    # no Content-Length, so the declared-size check has nothing to go on: only the count of the
    # bytes as they arrive stops it
    status, headers, body = _post_chunked(service, b"\0" * int(1.5 * MAX_BODY_MB * 2**20), "image/png")
    assert status == 413, body
    assert "over the limit" in _is_error(status, headers, body)["error"]
    assert _healthy(service)
    small = _post_chunked(service, b"hello, not a PNG", "image/png")  # chunked under the limit: read, then judged
    assert small[0] == 415, small[2]
    assert _healthy(service)


@slow
def test_four_concurrent_volume_bombs_are_each_refused_within_a_second(service):
    bomb = nifti_claiming(1024, 1024, 1024)
    assert len(bomb) < 100
    answers = []

    def client() -> None:
        started = time.perf_counter()
        status, headers, body = _segment(service, bomb, "application/gzip")
        answers.append((status, time.perf_counter() - started, _is_error(status, headers, body)["error"]))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert [status for status, _, _ in answers] == [413] * 4
    assert max(seconds for _, seconds, _ in answers) < 1.0, answers
    assert all("1024x1024x1024" in error for _, _, error in answers)
    assert _healthy(service)


def _stalled_uploads(service, count: int, declared: int = 500_000) -> list[socket.socket]:
    """`count` connections that each send a POST's headers and the first 8 bytes of a PNG, then nothing."""
    head = (f"POST /v1/segment HTTP/1.1\r\nHost: {service.host}\r\nContent-Type: image/png\r\n"
            f"Content-Length: {declared}\r\n\r\n").encode()
    sockets = []
    for _ in range(count):
        stalled = socket.create_connection((service.host, service.port), timeout=30)
        stalled.sendall(head + b"\x89PNG\r\n\x1a\n")
        sockets.append(stalled)
    return sockets


def _uploads_reach(service, count: int, timeout_s: float) -> int:
    """Poll /v1/stats until `count` uploads (at least; none for 0) are in progress; the last count seen.

    In Ray mode Serve's proxy hands connections to the replica at its own pace, and cancels
    those whose client left only after a while, so the tests wait for the gauge, not a clock.
    """
    deadline, seen = time.monotonic() + timeout_s, -1
    while time.monotonic() < deadline:
        seen = json.loads(_request(service, "GET", "/v1/stats")[2])["uploads_in_progress"]
        if seen == count or (count and seen > count):
            break
        time.sleep(0.05)
    return seen


def _answer_on(stalled: socket.socket) -> int:
    """The status of the answer that arrives on a stalled connection."""
    reply = b""
    while b"\r\n" not in reply:
        piece = stalled.recv(4096)
        if not piece:
            break
        reply += piece
    return int(reply.split(b" ")[1])


@slow
def test_64_stalled_uploads_do_not_starve_health_or_a_real_slice(service, tiny_sample):
    assert _uploads_reach(service, 0, BODY_TIMEOUT_S + 5) == 0
    stalled = _stalled_uploads(service, 64)
    try:
        assert _uploads_reach(service, 64, BODY_TIMEOUT_S - 1) >= 64  # the server holds them all
        started = time.perf_counter()
        assert _healthy(service)
        assert time.perf_counter() - started < 1.0
        started = time.perf_counter()
        status, _, body = _segment(service, _tumour_slices(tiny_sample, 1)[0].read_bytes(), "image/tiff")
        assert status == 200, body
        assert time.perf_counter() - started < 5.0
    finally:
        for connection in stalled:
            connection.close()
    assert _healthy(service)
    assert _uploads_reach(service, 0, BODY_TIMEOUT_S + 5) == 0  # the closed ones are let go, at the latest on timeout


@slow
def test_uploads_past_the_limit_get_503_and_a_stalled_body_gets_408(service, tiny_sample):
    assert _uploads_reach(service, 0, BODY_TIMEOUT_S + 5) == 0
    stalled = _stalled_uploads(service, MAX_UPLOADS)
    try:
        assert _uploads_reach(service, MAX_UPLOADS, BODY_TIMEOUT_S - 1) == MAX_UPLOADS
        held = json.loads(_request(service, "GET", "/v1/stats")[2])["buffered_bytes"]
        assert held >= MAX_UPLOADS * 500_000  # each declared 500 kB, reserved up front
        status, headers, body = _segment(service, _tumour_slices(tiny_sample, 1)[0].read_bytes(), "image/tiff")
        assert status == 503, body
        assert headers["retry-after"] == "1" and "--max-uploads" in _is_error(status, headers, body)["error"]
        assert _healthy(service)
        started = time.perf_counter()
        assert _answer_on(stalled[0]) == 408
        assert time.perf_counter() - started < BODY_TIMEOUT_S + 2
    finally:
        for connection in stalled:
            connection.close()
    time.sleep(0.5)
    status, _, body = _segment(service, _tumour_slices(tiny_sample, 1)[0].read_bytes(), "image/tiff")
    assert status == 200, body


@slow
def test_a_connection_that_never_finishes_its_headers_is_closed(service):
    if service.mode == "ray":
        pytest.skip("in Ray mode Serve's own proxy reads the headers; its timeouts are Ray's (docs/security.md)")
    from brainseg.serve.embedded import HEADER_TIMEOUT_S

    slow_headers = socket.create_connection((service.host, service.port), timeout=HEADER_TIMEOUT_S + 10)
    try:
        slow_headers.sendall(b"POST /v1/segment HTTP/1.1\r\nHost: x\r\nContent-Ty")
        started = time.perf_counter()
        assert slow_headers.recv(1024) == b""  # closed by the server, no answer
        assert HEADER_TIMEOUT_S - 1 < time.perf_counter() - started < HEADER_TIMEOUT_S + 5
    finally:
        slow_headers.close()


@contextmanager
def _embedded_without_checks(artifacts: Path, options: ServeOptions, submit=None) -> Iterator[Server]:
    """An embedded server built straight from its parts, skipping seg-serve's checks of the artifacts
    (so that a model failing to load is seen by the server, as it is when files change under it);
    `submit` replaces its batcher."""
    from brainseg.serve.embedded import embedded_server, embedded_service

    service = embedded_service(artifacts, options)
    if submit is not None:
        service.submit = submit
    server = embedded_server(service, options)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield Server("127.0.0.1", options.port, "embedded")
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        service.close()


@slow
def test_a_failing_backend_gets_a_json_500_without_its_message_and_the_service_stays_up(tiny_artifacts, tiny_sample):
    """A real embedded server whose batcher raises, as a crashing backend would: the client gets
    the documented JSON with a request id, not the exception's text."""
    async def crash(image):
        raise RuntimeError("backend exploded reading /srv/secret/patient-0042.nii.gz")

    options = _options()
    with _embedded_without_checks(tiny_artifacts, options, submit=crash) as here:
        wait_until_healthy(f"http://127.0.0.1:{options.port}", timeout_s=120)
        status, headers, body = _segment(here, _tumour_slices(tiny_sample, 1)[0].read_bytes(), "image/tiff")
        assert status == 500
        record = _is_error(status, headers, body)
        assert "secret" not in body.decode() and "exploded" not in body.decode() and "internal error" in record["error"]
        assert _healthy(here)


@slow
def test_a_model_that_cannot_load_says_503_and_why_without_the_server_paths(service, tiny_artifacts, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifacts, broken)
    graph = next(broken.glob("ensemble.*.onnx"))
    graph.write_bytes(graph.read_bytes() + b"tampered")
    with pytest.raises(BrainsegError, match="sha256"):  # seg-serve checks the files before it serves them
        with running_service(broken, _options(ray=None if service.mode == "embedded" else "local")):
            pass
    if service.mode == "embedded":
        with _embedded_without_checks(broken, _options()) as here:
            with pytest.raises(BrainsegError, match="sha256"):
                wait_until_healthy(f"http://127.0.0.1:{here.port}", timeout_s=120)
            for route, method in (("/healthz", "GET"), ("/v1/segment", "POST")):
                status, headers, body = _request(here, method, route, b"x" if method == "POST" else None,
                                                 {"Content-Type": "image/png"})
                assert status == 503 and "sha256" in body.decode() and str(tmp_path) not in body.decode(), body
        return
    from ray import serve

    from brainseg.serve.service import build_application, deploy_failure

    try:
        # the replica loads the model before it counts as started, so Serve retries it and gives up
        with pytest.raises(RuntimeError) as failed:
            serve.run(build_application(broken, _options(batch_size=2)), name="broken", route_prefix="/broken")
        assert serve.status().applications["broken"].status == "DEPLOY_FAILED"
        assert "sha256 differs" in deploy_failure(serve, str(failed.value), "broken")  # what seg-serve prints
        status, _, body = _segment(service, b"anything", "image/png", "/broken/v1/segment")
        assert status != 200, body  # nothing of it serves
    finally:
        serve.delete("broken")
    assert _healthy(service)


@slow
def test_on_a_shared_cluster_seg_serve_refuses_a_serve_listening_elsewhere_or_its_own_name_taken(service,
                                                                                               tiny_artifacts):
    if service.mode != "ray":
        pytest.skip("a Ray cluster's Serve is a Ray-mode matter")
    with pytest.raises(ConfigError, match=f"listens on 127.0.0.1:{service.port}"):
        with running_service(tiny_artifacts, _options(ray="local")):
            pass
    with pytest.raises(ConfigError, match="already runs"):
        with running_service(tiny_artifacts, _options(ray="local", port=service.port)):
            pass
    assert _healthy(service)  # refusing touched nothing that runs


@slow
def test_no_uploaded_bytes_on_disk_after_a_kill_9_during_an_upload(tiny_artifacts, tiny_sample, tmp_path):
    """seg-serve as its own process, with its own TMPDIR and working folder: one full upload answered,
    one cut short by kill -9, a restart; then no file it could have written holds either body."""
    tmpdir, workdir = tmp_path / "tmp", tmp_path / "work"
    tmpdir.mkdir()
    workdir.mkdir()
    markers = [f"patient-marker-{i}-{time.time_ns()}".encode() for i in range(2)]
    slice_bytes = _tumour_slices(tiny_sample, 1)[0].read_bytes()
    began = time.time()

    def start() -> tuple[subprocess.Popen, Server]:
        port = _free_port()
        command = [sys.executable, "-m", "brainseg.serve.cli", "--artifacts", str(tiny_artifacts), "--port", str(port)]
        env = {**_environ(), "TMPDIR": str(tmpdir)}
        process = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        wait_until_healthy(f"http://127.0.0.1:{port}", timeout_s=120)
        return process, Server("127.0.0.1", port, "embedded")

    process, here = start()
    try:
        status, _, body = _segment(here, slice_bytes + markers[0], "image/tiff")  # TIFF readers ignore the tail
        assert status == 200, body
        cut = _stalled_uploads(here, 1, declared=len(slice_bytes) * 2)[0]
        cut.sendall(slice_bytes + markers[1])
        time.sleep(0.5)
        process.kill()
        process.wait(timeout=30)
        cut.close()
    finally:
        if process.poll() is None:
            process.kill()
    process, here = start()
    process.terminate()
    process.wait(timeout=60)
    places = [tmpdir, workdir, tiny_artifacts, Path("/tmp"), Path("/dev/shm")]
    for place in places:
        for path in place.rglob("*") if place.exists() else []:
            try:
                if not path.is_file() or path.is_symlink():
                    continue
                if path.stat().st_mtime < began or path.stat().st_size > 2**28:
                    continue
                content = path.read_bytes()
            except OSError:
                continue
            assert not any(marker in content for marker in markers), f"uploaded bytes found in {path}"


def _environ() -> dict:
    import os

    return dict(os.environ)


def _run_cli(argv: list[str], *, block: tuple[str, ...] = ("torch",)) -> subprocess.CompletedProcess:
    """`seg-serve argv` in a fresh interpreter in which importing any of `block` fails."""
    script = (f"import sys\nfor name in {list(block)!r}: sys.modules[name] = None\n"
              f"from brainseg.serve.cli import serve_entry\nsys.argv = {['seg-serve', *argv]!r}\nserve_entry()\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_refuses_a_missing_artifacts_folder_in_one_line(tmp_path):
    result = _run_cli(["--artifacts", str(tmp_path / "missing"), "--port", str(_free_port())])
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "manifest.json" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("argv", "block", "extra"), [([], ("torch", "uvicorn"), "serve"),
                                                      ([], ("torch", "fastapi"), "serve"),
                                                      (["--ray", "local"], ("torch", "ray"), "distributed")])
def test_cli_without_its_web_stack_names_the_extra(tmp_path, argv, block, extra):
    result = _run_cli(["--artifacts", str(tmp_path), *argv], block=block)
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: ") and f"pip install 'brainseg[{extra}]'" in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.parametrize(("argv", "message"), [(["--max-batch", "0"], "--max-batch must be at least 1, got 0"),
                                               (["--replicas", "2"], "--replicas needs --ray"),
                                               (["--max-voxels", "0"], "--max-voxels must be at least 1, got 0"),
                                               (["--max-buffered-mb", "8"], "--max-buffered-mb must be at least 64")])
def test_cli_rejects_bad_options_before_starting_anything(tmp_path, argv, message):
    result = _run_cli(["--artifacts", str(tmp_path), *argv], block=("torch", "ray", "uvicorn"))
    assert result.returncode == 1 and message in result.stderr


def test_cli_defaults_are_serve_options_defaults():
    import inspect

    from brainseg.serve.cli import serve_command

    defaults = {name: parameter.default for name, parameter in inspect.signature(serve_command).parameters.items()}
    options = ServeOptions()
    for flag, field in (("max_batch", "batch_size"), ("batch_wait_ms", "batch_wait_ms"), ("max_body_mb", "max_body_mb"),
                        ("max_pixels", "max_pixels"), ("max_voxels", "max_voxels"),
                        ("body_timeout_s", "body_timeout_s"), ("max_uploads", "max_uploads"),
                        ("max_buffered_mb", "max_buffered_mb"), ("ray", "ray"), ("replicas", "replicas")):
        assert defaults[flag] == getattr(options, field), flag


def test_serve_modules_import_without_ray_torch_export_or_train():
    script = ("import sys\nimport brainseg.serve.app, brainseg.serve.cli, brainseg.serve.payloads, "
              "brainseg.serve.service, brainseg.serve.core, brainseg.serve.embedded, brainseg.serve.formats, "
              "brainseg.serve.batching\n"
              "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch') "
              "or m.startswith(('brainseg.export', 'brainseg.train')))\nprint(bad)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
