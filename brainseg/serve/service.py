"""seg-serve's life: start the service, wait until healthy, stop it (its settings: `brainseg.serve.options`).

`running_service` is the library call behind `seg-serve`: it checks the options and the artifacts
in this process (so a usage problem is one line, before anything starts), then

- embedded (the default): builds the service and its uvicorn server in this process
  (`brainseg.serve.embedded`) and runs the server on a thread;
- Ray (`ServeOptions.ray`): starts Ray ("local") or joins the cluster at that address, starts
  Serve's HTTP proxy on the host and port asked for unless Serve already runs there (on the same
  host and port, or it refuses), deploys the replicas (`brainseg.serve.ray_replica`) as the
  application "brainseg", and on the way out deletes that application only (and stops Ray when
  it started it);

waits until `GET /healthz` says 200 and yields the service's URL. uvicorn and FastAPI are imported
only in embedded mode, Ray only in Ray mode, each with an install hint when absent.
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
# no access log line per request from Serve: the app logs its own (request id, route, status, size)
SERVE_LOGGING = {"enable_access_log": False}
HEALTH_CHECK_PERIOD_S = 5.0


def import_serve() -> ModuleType:
    """`ray.serve`, or a BrainsegError naming the extra that installs it."""
    return require("ray.serve", "distributed", package="ray[serve]")


def import_embedded() -> None:
    """Check that the embedded mode's web stack is installed, or raise a BrainsegError naming the extra."""
    require("fastapi", "serve")
    require("uvicorn", "serve")


def build_application(artifacts: str | Path, options: ServeOptions):
    """The Ray Serve application (a `serve.Application`) serving `artifacts` with `options`.

    A replica takes up to `--max-uploads` bodies plus two full batches at once (Serve's
    `max_ongoing_requests`): the app's own admission answers 503 beyond `--max-uploads`, and the
    margin keeps `/healthz` from queueing behind stalled uploads.
    """
    serve = import_serve()
    import_embedded()
    from brainseg.serve.ray_replica import SegmentationReplica

    deployment = serve.deployment(
        SegmentationReplica, name="SegmentationService", num_replicas=options.replicas,
        max_ongoing_requests=options.max_uploads + 2 * options.batch_size + 16,
        health_check_period_s=HEALTH_CHECK_PERIOD_S, ray_actor_options={"num_cpus": CPUS_PER_REPLICA})
    return deployment.bind(str(Path(artifacts).resolve()), options)


@contextmanager
def running_service(artifacts: str | Path, options: ServeOptions = ServeOptions(), *,
                    startup_timeout_s: float = 600.0) -> Iterator[str]:
    """Serve `artifacts` over HTTP while the block runs; yields the base URL, e.g. "http://127.0.0.1:8000".

    Raises ConfigError/ArtifactError before anything starts (bad options, a folder that is not valid
    artifacts, a precision it cannot run, a port in use), and BrainsegError when a needed extra is
    missing or the model fails to load or is not healthy within `startup_timeout_s`.
    """
    options.check()
    if options.ray is None:
        import_embedded()
    else:
        import_serve()
        import_embedded()  # the replicas run the same FastAPI app
    manifest = Manifest.load(artifacts)
    usable = manifest.usable_precisions()
    if options.precision is not None and options.precision not in usable:
        raise ConfigError(f"precision {options.precision} is not usable in {manifest.folder}; usable: "
                          f"{', '.join(usable) or 'none'}")
    runner = _embedded if options.ray is None else _on_ray
    with runner(artifacts, options, startup_timeout_s) as url:
        yield url


@contextmanager
def _embedded(artifacts: str | Path, options: ServeOptions, startup_timeout_s: float) -> Iterator[str]:
    from brainseg.serve.embedded import embedded_server, embedded_service

    _check_port_free(options.host, options.port)
    service = embedded_service(artifacts, options)
    server = embedded_server(service, options)
    thread = threading.Thread(target=server.run, name="seg-serve-http", daemon=True)
    thread.start()
    try:
        url = f"http://{_url_host(options.host)}:{options.port}"
        deadline = time.monotonic() + 30
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise BrainsegError(f"seg-serve could not listen on {options.host}:{options.port}")
            time.sleep(0.02)
        wait_until_healthy(url, timeout_s=startup_timeout_s)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        service.close()


@contextmanager
def _on_ray(artifacts: str | Path, options: ServeOptions, startup_timeout_s: float) -> Iterator[str]:
    serve = import_serve()
    import ray

    started_ray = not ray.is_initialized()
    if started_ray:
        if options.ray == "local":  # always a new instance here, never one RAY_ADDRESS or a stale file names
            _check_port_free(options.host, options.port)
        ray.init(address=options.ray, include_dashboard=False, logging_level=logging.WARNING)
    deployed = False
    try:
        _check_cpus(ray, options.replicas)
        listening = serve_http_address(ray)
        if listening is None:
            serve.start(http_options={"host": options.host, "port": options.port})
        elif listening != (options.host, options.port):
            raise ConfigError(f"Ray Serve already runs on this cluster and listens on {listening[0]}:{listening[1]}; "
                              f"give --host {listening[0]} --port {listening[1]}, or use another cluster")
        if APP_NAME in serve.status().applications:
            raise ConfigError(f"an application named {APP_NAME!r} already runs on this cluster's Serve (another "
                              "seg-serve?); stop it first")
        deployed = True
        try:
            serve.run(build_application(artifacts, options), name=APP_NAME, route_prefix="/",
                      logging_config=SERVE_LOGGING)
        except RuntimeError as err:  # Serve gave up starting the replicas: say why in one line
            raise BrainsegError(f"seg-serve could not start on Ray Serve: {deploy_failure(serve, str(err))}") from None
        url = f"http://{_url_host(options.host)}:{options.port}"
        wait_until_healthy(url, timeout_s=startup_timeout_s)
        yield url
    finally:
        if deployed:
            serve.delete(APP_NAME)  # ours only: other applications on a shared cluster keep running
        if started_ray:
            if options.ray == "local":
                serve.shutdown()
            ray.shutdown()


def deploy_failure(serve: ModuleType, message: str, app: str = APP_NAME) -> str:
    """Why Serve could not deploy `app`, in one line: the replica's error from the deployment's
    status (Serve's own exception names only the deployment) when it says, else `message`."""
    statuses = serve.status().applications.get(app)
    details = [d.message for d in statuses.deployments.values() if d.message] if statuses else []
    lines = [line.strip() for text in (*details, message) for line in text.splitlines() if line.strip()]
    for line in reversed(lines):  # a traceback's last error line says what went wrong
        if "Error: " in line and not line.startswith("File ") and "Traceback" not in line:
            return line
    return lines[0] if lines else "the deployment failed"


def serve_http_address(ray: ModuleType) -> tuple[str, int] | None:
    """(host, port) Serve's HTTP proxies listen on in the connected cluster, or None when Serve is not running."""
    try:
        from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE
    except ImportError:  # the names Ray has used since 2.0
        SERVE_CONTROLLER_NAME, SERVE_NAMESPACE = "SERVE_CONTROLLER_ACTOR", "serve"
    try:
        controller = ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return None
    config = ray.get(controller.get_http_config.remote(), timeout=60)
    return config.host, int(config.port)


def serve_forever(artifacts: str | Path, options: ServeOptions = ServeOptions(), *, on_ready=None) -> None:
    """Run the service until Ctrl-C or SIGTERM; `on_ready(url)` is called once it answers /healthz with 200.

    SIGTERM (a service manager stopping it) is handled as Ctrl-C, so the server (and in Ray mode,
    the application and the Ray it started) is shut down.
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
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: TIME_WAIT is no conflict
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
