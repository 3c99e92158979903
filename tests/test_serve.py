"""seg-serve on real Ray Serve and real loopback HTTP, over the tiny exported artifacts.

The service under test runs one replica with a long batch wait (100 ms), so that concurrent
clients visibly share batches; every mask it returns is compared with the file seg-run writes
for the same input. The command-line checks run in fresh interpreters and need neither Ray nor
a model.
"""

from __future__ import annotations

import base64
import csv
import gzip
import http.client
import json
import logging
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from auto_choice import expected_auto_backend

from brainseg.artifacts.manifest import Manifest
from brainseg.errors import BrainsegError
from brainseg.runtime.batch.pipeline import RunOptions, segment
from brainseg.serve.options import ServeOptions
from brainseg.serve.service import build_application, running_service, wait_until_healthy

nib = pytest.importorskip("nibabel")
REPO = Path(__file__).parents[1]
MAX_BODY_MB = 1.0
slow = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def service(tiny_artifacts):
    """(host, port) of seg-serve on the tiny artifacts: one replica, batches of up to 8, 100 ms batch wait."""
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'brainseg[distributed]')")
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    options = ServeOptions(port=_free_port(), batch_size=8, batch_wait_ms=100, max_body_mb=MAX_BODY_MB)
    try:
        with running_service(tiny_artifacts, options, startup_timeout_s=180):
            yield "127.0.0.1", options.port
    finally:
        ray.shutdown()


def _request(service, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """(status, headers, body) of one request on a fresh connection."""
    connection = http.client.HTTPConnection(*service, timeout=60)
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
def test_health_model_and_stats(service, tiny_artifacts):
    assert _healthy(service)
    status, _, body = _request(service, "GET", "/v1/model")
    assert status == 200
    model = json.loads(body)
    manifest = Manifest.load(tiny_artifacts)
    assert model["manifest_sha256"] == manifest.sha256
    assert model["deployed"] == manifest.deployed == model["backend"]["deployed"]  # which candidate it serves
    assert model["threshold"] == manifest.threshold
    assert model["precision"] in manifest.usable_precisions()
    assert model["backend"]["backend"] == expected_auto_backend()  # no TensorRT here: OpenVINO or ONNX Runtime
    assert (model["input"]["height"], model["input"]["width"], model["input"]["dtype"]) == (64, 64, "uint8")
    assert model["batching"] == {"max_batch": 8, "batch_wait_ms": 100, "replicas": 1}
    status, _, body = _request(service, "GET", "/v1/stats")
    assert status == 200 and {"batch_sizes", "largest_batch", "requests", "replica"} <= json.loads(body).keys()


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
                                  "text content type", "no content type", "bad format", "wrong method", "no route"])
def test_bad_requests_get_a_4xx_json_line_and_the_service_stays_healthy(service, tiny_sample, tmp_path, case):
    good = _tumour_slices(tiny_sample, 1)[0].read_bytes()
    two_channels = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 3, 2), np.float32), np.eye(4)), str(two_channels))
    expected, request = {
        "empty": (400, ("POST", "/v1/segment", b"", {"Content-Type": "image/png"})),
        "not an image": (422, ("POST", "/v1/segment", b"hello, not a PNG", {"Content-Type": "image/png"})),
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
    }[case]
    status, headers, body = _request(service, *request)
    assert status == expected, body
    assert headers["content-type"] == "application/json"
    assert body.count(b"\n") == 0 and list(json.loads(body)) == ["error"] and json.loads(body)["error"]
    assert _healthy(service)


def _post_chunked(service, body: bytes, content_type: str, piece: int = 64 * 2**10):
    """(status, headers, body) of a POST whose body goes out chunked, with no Content-Length: the
    server learns its size only by reading it. The server may answer and close before all is sent."""
    connection = http.client.HTTPConnection(*service, timeout=60)
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
    # bytes as they arrive stops it (a body of zeros read to the end would get 422, not an image)
    status, headers, body = _post_chunked(service, b"\0" * int(1.5 * MAX_BODY_MB * 2**20), "image/png")
    assert status == 413, body
    assert headers["content-type"] == "application/json"
    assert "over the limit" in json.loads(body)["error"]
    assert _healthy(service)
    small = _post_chunked(service, b"hello, not a PNG", "image/png")  # chunked under the limit: read, then judged
    assert small[0] == 422, small[2]
    assert _healthy(service)


@slow
def test_a_model_that_cannot_load_says_503_and_why(service, tiny_artifacts, tmp_path):
    from ray import serve

    broken = tmp_path / "broken"
    shutil.copytree(tiny_artifacts, broken)
    graph = next(broken.glob("ensemble.*.onnx"))
    graph.write_bytes(graph.read_bytes() + b"tampered")
    serve.run(build_application(broken, ServeOptions(batch_size=2)), name="broken", route_prefix="/broken")
    try:
        with pytest.raises(BrainsegError, match="sha256"):
            wait_until_healthy(f"http://{service[0]}:{service[1]}/broken", timeout_s=120)
        status, _, body = _request(service, "GET", "/broken/healthz")
        assert status == 503 and json.loads(body)["status"] == "failed"
        status, _, body = _segment(service, b"anything", "image/png", "/broken/v1/segment")
        assert status == 503 and "sha256" in json.loads(body)["error"]
    finally:
        serve.delete("broken")
    assert _healthy(service)


def _run_cli(argv: list[str], *, block: tuple[str, ...] = ("torch",)) -> subprocess.CompletedProcess:
    """`seg-serve argv` in a fresh interpreter in which importing any of `block` fails."""
    script = (f"import sys\nfor name in {list(block)!r}: sys.modules[name] = None\n"
              f"from brainseg.serve.cli import serve_entry\nsys.argv = {['seg-serve', *argv]!r}\nserve_entry()\n")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_refuses_a_missing_artifacts_folder_in_one_line(tmp_path):
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (pip install 'brainseg[distributed]')")
    result = _run_cli(["--artifacts", str(tmp_path / "missing"), "--port", str(_free_port())])
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and "manifest.json" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_without_ray_names_the_extra(tmp_path):
    result = _run_cli(["--artifacts", str(tmp_path)], block=("torch", "ray"))
    assert result.returncode == 1
    assert result.stderr.strip() == ("error: ray[serve] is not installed; install it with: "
                                     "pip install 'brainseg[distributed]'")


def test_cli_rejects_bad_options_before_starting_anything(tmp_path):
    result = _run_cli(["--artifacts", str(tmp_path), "--max-batch", "0"], block=("torch", "ray"))
    assert result.returncode == 1 and "--max-batch must be at least 1, got 0" in result.stderr


def test_serve_modules_import_without_ray_torch_export_or_train():
    pytest.importorskip("starlette", reason="the deployment module needs Starlette, which ray[serve] brings")
    script = ("import sys\nimport brainseg.serve.app, brainseg.serve.cli, brainseg.serve.payloads, "
              "brainseg.serve.service\n"
              "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('ray', 'torch') "
              "or m.startswith(('brainseg.export', 'brainseg.train')))\nprint(bad)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
