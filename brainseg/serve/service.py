"""seg-serve's life: start Ray Serve, wait until healthy, stop (its settings: `brainseg.serve.options`).

`running_service` is the library call behind `seg-serve`: it checks the options and the artifacts
in this process (so a usage problem is one line, before Ray starts), starts Ray when it is not
running (or joins the one `ray.init` already set up), starts Serve's HTTP proxy on the host and
port asked for, deploys `SegmentationService`, waits until `GET /healthz` says 200, and yields the
service's URL; leaving the block shuts Serve down (and Ray, when it started it). Ray and Starlette
are imported only once `import_serve` has found ray[serve].
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

from brainseg.artifacts.manifest import Manifest
from brainseg.errors import BrainsegError, ConfigError, require
from brainseg.serve.options import ServeOptions

log = logging.getLogger("brainseg.serve")
APP_NAME = "brainseg"
CPUS_PER_REPLICA = 1  # Ray's bookkeeping: at most one replica per CPU Ray was given
# no access log line per request: writing one costs CPU time a 2-core machine needs for inference
SERVE_LOGGING = {"enable_access_log": False}


def import_serve() -> ModuleType:
    """`ray.serve`, or a BrainsegError naming the extra that installs it."""
    return require("ray.serve", "distributed", package="ray[serve]")


def build_application(artifacts: str | Path, options: ServeOptions):
    """The Ray Serve application (a `serve.Application`) serving `artifacts` with `options`.

    `max_ongoing_requests` is twice the batch size, so a replica can hold one full batch running
    and gather the next one; more concurrent requests wait in Serve's own queue.
    """
    serve = import_serve()
    from brainseg.serve.app import SegmentationService  # Starlette, which comes with ray[serve]

    deployment = serve.deployment(
        SegmentationService, name="SegmentationService", num_replicas=options.replicas,
        max_ongoing_requests=2 * options.batch_size, ray_actor_options={"num_cpus": CPUS_PER_REPLICA})
    return deployment.bind(str(Path(artifacts).resolve()), options)


@contextmanager
def running_service(artifacts: str | Path, options: ServeOptions = ServeOptions(), *,
                    startup_timeout_s: float = 600.0) -> Iterator[str]:
    """Serve `artifacts` over HTTP while the block runs; yields the base URL, e.g. "http://127.0.0.1:8000".

    Raises ConfigError/ArtifactError before Ray starts (bad options, a folder that is not valid
    artifacts, a precision it cannot run, a port in use), and BrainsegError when ray[serve] is
    missing or the replicas fail to load the model or are not healthy within `startup_timeout_s`.
    """
    options.check()
    serve = import_serve()
    import ray

    manifest = Manifest.load(artifacts)
    usable = manifest.usable_precisions()
    if options.precision is not None and options.precision not in usable:
        raise ConfigError(f"precision {options.precision} is not usable in {manifest.folder}; usable: "
                          f"{', '.join(usable) or 'none'}")
    _check_port_free(options.host, options.port)
    started_ray = not ray.is_initialized()
    if started_ray:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
    try:
        _check_cpus(ray, options.replicas)
        serve.start(http_options={"host": options.host, "port": options.port})
        serve.run(build_application(artifacts, options), name=APP_NAME, route_prefix="/",
                  logging_config=SERVE_LOGGING)
        url = f"http://{_url_host(options.host)}:{options.port}"
        wait_until_healthy(url, timeout_s=startup_timeout_s)
        yield url
    finally:
        serve.shutdown()
        if started_ray:
            ray.shutdown()


def serve_forever(artifacts: str | Path, options: ServeOptions = ServeOptions(), *, on_ready=None) -> None:
    """Run the service until Ctrl-C or SIGTERM; `on_ready(url)` is called once it answers /healthz with 200.

    SIGTERM (a service manager stopping it) is handled as Ctrl-C, so Serve and Ray are shut down.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)
    with running_service(artifacts, options) as url:
        if on_ready is not None:
            on_ready(url)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            log.info("stopping seg-serve")


def _interrupt(signum: int, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def wait_until_healthy(url: str, *, timeout_s: float = 600.0, poll_s: float = 0.2) -> None:
    """Poll `url`/healthz until it answers 200; BrainsegError when the model failed to load or on timeout."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while True:
        status, record = _get_json(f"{url}/healthz")
        if status == 200:
            return
        if status == 503 and record.get("status") == "failed":
            raise BrainsegError(f"seg-serve could not start: {record.get('error')}")
        last = f"HTTP {status}: {record.get('error', record)}" if status else "no answer"
        if time.monotonic() > deadline:
            raise BrainsegError(f"seg-serve at {url} was not healthy after {timeout_s:.0f} s (last: {last})")
        time.sleep(poll_s)


def _get_json(url: str) -> tuple[int | None, dict]:
    """(status, parsed JSON body) of a GET; (None, {}) when nothing answers yet."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, _parse(response.read())
    except urllib.error.HTTPError as err:
        return err.code, _parse(err.read())
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None, {}


def _parse(body: bytes) -> dict:
    try:
        record = json.loads(body)
    except ValueError:
        return {"error": body[:200].decode(errors="replace")}
    return record if isinstance(record, dict) else {"error": str(record)}


def _check_port_free(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(f"cannot listen on {host}:{port} ({err.strerror or err}); pick another --port "
                              "or --host") from None


def _check_cpus(ray: ModuleType, replicas: int) -> None:
    cpus = ray.cluster_resources().get("CPU", 0)
    if replicas * CPUS_PER_REPLICA > cpus:
        raise ConfigError(f"--replicas {replicas} needs {replicas * CPUS_PER_REPLICA} CPUs in Ray; it has {cpus:g}")


def _url_host(host: str) -> str:
    """The host to reach a server bound to `host` from this machine, as written in a URL."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host
