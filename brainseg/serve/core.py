"""One seg-serve model holder, the same in both modes: load, admit, decode, batch, answer.

`SegmentationService` holds one `Segmenter` (loaded on its inference thread after the service
starts, so `/healthz` can say "loading"), the request counters, and the admission gate that keeps
slow or many clients from starving it. `brainseg.serve.app` puts its routes on an ASGI app; the
embedded mode (`brainseg.serve.embedded`) runs that app under uvicorn with a `LocalBatcher`, Ray
mode (`brainseg.serve.ray_replica`) runs it in each Serve replica with `serve.batch`.

What a `POST /v1/segment` goes through, in order, each step able to refuse it with a 4xx:
1. the model is loaded (503 otherwise), the Content-Type is one we take (415), the declared
   Content-Length is within `--max-body-mb` (413);
2. an upload slot: at most `--max-uploads` bodies are being received at once, and at most
   `--max-buffered-mb` of memory is held for requests: their bodies (a declared Content-Length
   is reserved up front) and, from step 4 on, what decoding them will hold (503 with Retry-After
   beyond either: a client that can wait retries, a flood is refused at once);
3. the body, read within `--body-timeout-s` (408) and counted as it arrives (413);
4. its header, read on a worker thread within `HEADER_DEADLINE_S` (`formats.inspect`): magic
   bytes against the Content-Type (415), declared pixels or voxels against `--max-pixels` /
   `--max-voxels` (413), a structure the readers would refuse (422); then the memory its header
   says decoding and answering will take, reserved (413 if more than the whole budget, 503 while
   others hold it); then decoding from memory on a worker thread, at most `DECODERS` bodies at a
   time, by the runtime's readers (422), answered 422 when it takes longer than
   `--decode-timeout-s` (the thread runs on, holding its decoder slot and its memory reservation
   until it ends);
5. the batcher and the backend; 6. the answer, built off the event loop. Everything held is
   released when the request is answered.

`/healthz`, `/v1/model` and `/v1/stats` never wait on any of it: they read state the event loop
owns, and nothing that reads a body's bytes runs on the event loop. numpy and the runtime only at
module level; Starlette types are used, not imported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from brainseg.runtime.io.scans import ScanData
from brainseg.runtime.segmenter import Segmenter
from brainseg.serve import formats, payloads
from brainseg.serve.errors import RequestError
from brainseg.serve.options import ServeOptions

log = logging.getLogger("brainseg.serve")
DECODERS = 2  # bodies decoded at once: bounds the CPU that decoding takes from inference
HEADER_DEADLINE_S = 2.0  # to read a body's header and walk its structure (linear in its bytes)
RETRY_AFTER_S = "1"
Submit = Callable[[np.ndarray], Awaitable[list]]


@dataclass(frozen=True)
class _Model:
    segmenter: Segmenter
    sha256: str  # of the manifest as loaded: names the model in every answer
    brats_labels: str  # the convention label maps are answered in


class Stats:
    """Requests by HTTP status and the sizes (in slices) of the batches run, for /v1/stats."""

    def __init__(self) -> None:
        self.statuses: Counter[int] = Counter()
        self.batch_sizes: Counter[int] = Counter()

    def record_batch(self, size: int) -> int:
        """Count one batch of `size` slices; its number (1, 2, ...)."""
        self.batch_sizes[size] += 1
        return sum(self.batch_sizes.values())

    def report(self, replica: str) -> dict:
        return {"replica": replica, "requests": {str(k): v for k, v in sorted(self.statuses.items())},
                "batches": sum(self.batch_sizes.values()),
                "slices": sum(size * count for size, count in self.batch_sizes.items()),
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "largest_batch": max(self.batch_sizes, default=0)}


class Admission:
    """How many bodies are being received and how many body bytes are held; 503 beyond the limits.

    Touched only from the event loop, so plain counters suffice.
    """

    def __init__(self, max_uploads: int, max_buffered_bytes: int) -> None:
        self.max_uploads = max_uploads
        self.max_buffered_bytes = max_buffered_bytes
        self.uploads = 0
        self.buffered = 0

    def enter(self) -> None:
        if self.uploads >= self.max_uploads:
            raise RequestError(503, f"{self.uploads} uploads are in progress, the most this service takes "
                                    "(seg-serve --max-uploads); retry shortly", headers={"Retry-After": RETRY_AFTER_S})
        self.uploads += 1

    def leave(self) -> None:
        self.uploads -= 1

    def hold(self, size: int) -> None:
        """Count `size` more body bytes held in memory, or 503 when that passes the budget."""
        if self.buffered + size > self.max_buffered_bytes:
            raise RequestError(503, f"the service holds {self.buffered} bytes of request bodies, near its budget of "
                                    f"{self.max_buffered_bytes} (seg-serve --max-buffered-mb); retry shortly",
                               headers={"Retry-After": RETRY_AFTER_S})
        self.buffered += size

    def release(self, size: int) -> None:
        self.buffered -= size


class SegmentationService:
    """The model, its batching and the request pipeline behind every route (see the module docstring).

    `submit` (given by the mode, or set later with `use_batcher`) takes (S, h, w, C) slices and
    returns, per slice, its outputs by name and (batch number, backend seconds of its batch).
    """

    def __init__(self, artifacts: str | Path, options: ServeOptions, *, replica: str = "embedded") -> None:
        self.artifacts = Path(artifacts)
        self.options = options
        self.replica = replica  # tells Ray replicas apart in /v1/stats
        self.stats = Stats()
        self.admission = Admission(options.max_uploads, options.max_buffered_bytes)
        self.max_batch = options.batch_size
        self.slice_seconds = 0.0  # the backend's time per slice: a running average (Ray mode's batch waits)
        self.submit: Submit | None = None
        self.decoding = 0  # requests past their upload whose slices have not reached the batcher
        self._decoders: asyncio.Semaphore | None = None  # made on the serving loop
        # one thread loads the backend and runs every batch: inference is serial, and a CUDA
        # context made while loading stays current on the thread that uses it
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="brainseg-infer")
        self._loading: Future[_Model] = self._executor.submit(self._load)
        self._loading.add_done_callback(_log_load_failure)

    # --- the model ---------------------------------------------------------------------------------

    def _load(self) -> _Model:
        segmenter = Segmenter(self.artifacts, self.options)
        self.max_batch = min(self.max_batch, segmenter.batch_size)  # a TensorRT engine's profile
        spec = segmenter.spec
        warm_up = np.zeros((1, spec.height, spec.width, spec.channels), spec.dtype)
        segmenter.infer(warm_up)
        started = time.perf_counter()
        segmenter.infer(warm_up)
        self.slice_seconds = time.perf_counter() - started
        log.info("serving artifacts with manifest sha256 %s (ships %s): %s %s (%s); %s", segmenter.manifest.sha256[:12],
                 segmenter.deployed, segmenter.choice.backend, segmenter.precision, segmenter.choice.reason,
                 segmenter.post.describe())
        return _Model(segmenter, segmenter.manifest.sha256, self.options.labels_for(segmenter.manifest))

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until the model has loaded; raise what loading raised."""
        self._loading.result(timeout)

    @property
    def load_failed(self) -> bool:
        return self._loading.done() and self._loading.exception() is not None

    def model(self) -> _Model:
        """The loaded model, or RequestError 503 while it loads or after it failed to."""
        if not self._loading.done():
            raise RequestError(503, "the model is still loading; poll /healthz", headers={"Retry-After": RETRY_AFTER_S})
        if self._loading.exception() is not None:
            raise RequestError(503, _load_error(self._loading))
        return self._loading.result()

    async def run_batch(self, batch: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """(n, h, w, C) -> (outputs by name, each (n, K, h, w), backend seconds), on the inference thread."""
        started = time.perf_counter()
        outputs = await asyncio.get_running_loop().run_in_executor(self._executor, self._infer_now, batch)
        seconds = time.perf_counter() - started
        self.slice_seconds = 0.7 * self.slice_seconds + 0.3 * seconds / len(batch)
        return outputs, seconds

    def _infer_now(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        return self._loading.result().segmenter.infer(batch)  # arrays of our own (Segmenter.infer)

    def close(self) -> None:
        """Free the backend (on the thread that made it) and stop the inference thread."""
        if self._loading.done() and self._loading.exception() is None:
            self._executor.submit(self._loading.result().segmenter.close)
        self._executor.shutdown(wait=True)

    # --- the routes' answers ------------------------------------------------------------------------

    def health(self) -> tuple[int, dict]:
        if not self._loading.done():
            return 503, {"status": "loading", "error": "the model is still loading"}
        if self._loading.exception() is not None:
            return 503, {"status": "failed", "error": _load_error(self._loading)}
        return 200, {"status": "ok"}

    def describe(self, mode: str) -> dict:
        """What is served: named by the manifest's sha256, never by a path on this machine."""
        model, o = self.model(), self.options
        segmenter = model.segmenter
        return {
            "manifest_sha256": model.sha256, "deployed": segmenter.deployed, "precision": segmenter.precision,
            "backend": _without_paths({**segmenter.describe(), "file": Path(segmenter.choice.file).name}),
            "input": asdict(segmenter.spec), "classes": segmenter.manifest.classes, "threshold": segmenter.threshold,
            "postprocessing": {**segmenter.post.to_dict(), "description": segmenter.post.describe()},
            "mode": mode,
            "batching": {"max_batch": self.max_batch, "batch_wait_ms": o.batch_wait_ms, "replicas": o.replicas},
            "limits": {"max_body_bytes": o.max_body_bytes, "max_pixels": o.max_pixels, "max_voxels": o.max_voxels,
                       "body_timeout_s": o.body_timeout_s, "decode_timeout_s": o.decode_timeout_s,
                       "max_uploads": o.max_uploads,
                       "max_buffered_bytes": o.max_buffered_bytes},
            "media_types": list(formats.MEDIA_TYPES),
        }

    async def segment(self, request) -> payloads.Answer:
        """POST /v1/segment on a Starlette `Request`: the mask answer, or RequestError (module docstring)."""
        model = self.model()
        media = formats.media_type(request.headers.get("content-type"))
        as_json = payloads.wants_json(request.query_params.get("format"), request.headers.get("accept"))
        marks = [time.perf_counter()]
        held = _Held(self.admission)
        try:
            body, held.body = await self._receive(request)
            marks.append(time.perf_counter())
            inspected = await self._off_loop(formats.inspect, body, media, model.segmenter.steps,
                                             deadline=HEADER_DEADLINE_S, what="reading its header")
            held.decoded = self._hold_decoded(inspected.estimate)
            self.decoding += 1
            try:
                data, image = await self._decode(body, media, model, held)
            finally:
                self.decoding -= 1
            del body
            marks.append(time.perf_counter())
            arrays, backend_seconds = await self._infer(image)
            marks.append(time.perf_counter())
            result = await asyncio.to_thread(_answer, model, data, arrays, as_json)
            marks.append(time.perf_counter())
        finally:
            held.release()
        result.headers["Server-Timing"] = _server_timing(marks, backend_seconds)
        return result

    async def _receive(self, request) -> tuple[bytes, int]:
        """(the body, the bytes of it counted as held); see steps 2 and 3 of the module docstring."""
        limit, admission = self.options.max_body_bytes, self.admission
        declared = request.headers.get("content-length")
        payloads.check_declared_size(declared, limit)
        admission.enter()
        held = 0
        try:
            if declared:
                admission.hold(int(declared))
                held = int(declared)
            chunks: list[bytes] = []
            received = 0
            async with asyncio.timeout(self.options.body_timeout_s):
                async for chunk in request.stream():
                    received += len(chunk)
                    if received > limit:
                        raise RequestError(413, f"body is over the limit of {limit} bytes (seg-serve --max-body-mb)",
                                           headers={"Connection": "close"})
                    if received > held:
                        admission.hold(received - held)
                        held = received
                    chunks.append(chunk)
        except TimeoutError:
            admission.release(held)
            raise RequestError(408, f"the body did not arrive within {self.options.body_timeout_s:g} s "
                                    "(seg-serve --body-timeout-s)", headers={"Connection": "close"}) from None
        except RequestError:
            admission.release(held)
            raise
        except Exception as err:  # the client went away mid-body (Starlette's ClientDisconnect, Ray's own)
            admission.release(held)
            if type(err).__name__ != "ClientDisconnect":
                raise
            raise RequestError(400, "the client closed the connection before the whole body arrived") from None
        finally:
            admission.leave()
        return b"".join(chunks), held

    def _hold_decoded(self, estimate: int) -> int:
        """Count the memory decoding and answering a body will hold (its header's estimate) against
        the buffer budget: 413 when it could never fit, 503 while other requests hold too much."""
        budget = self.admission.max_buffered_bytes
        if estimate > budget:
            raise RequestError(413, f"decoding this body would hold about {estimate // 2**20} MiB, more than the "
                                    f"{budget // 2**20} MiB budget (seg-serve --max-buffered-mb)")
        self.admission.hold(estimate)
        return estimate

    async def _off_loop(self, function, *args, deadline: float, what: str):
        """`function(*args)` on a worker thread; 422 when it has not returned within `deadline` s (the
        thread cannot be stopped: it runs on, its outcome dropped)."""
        work = asyncio.get_running_loop().run_in_executor(None, function, *args)
        try:
            return await asyncio.wait_for(asyncio.shield(work), deadline)
        except TimeoutError:
            work.add_done_callback(_retrieve)
            raise RequestError(422, f"{what} took longer than {deadline:g} s") from None

    async def _decode(self, body: bytes, media: str, model: _Model, held: _Held) -> tuple[ScanData, np.ndarray]:
        """Decode on a worker thread within --decode-timeout-s, at most DECODERS at a time. A decode
        that is late, or whose client went away, keeps its slot and its memory reservation until
        its thread ends."""
        if self._decoders is None:
            self._decoders = asyncio.Semaphore(DECODERS)
        await self._decoders.acquire()
        work = asyncio.get_running_loop().run_in_executor(None, payloads.read_body, body, media,
                                                          model.segmenter.steps)
        late = False
        try:
            return await asyncio.wait_for(asyncio.shield(work), self.options.decode_timeout_s)
        except (TimeoutError, asyncio.CancelledError) as err:
            late = True
            estimate, held.decoded = held.decoded, 0

            def settle(done: asyncio.Future) -> None:
                _retrieve(done)
                self._decoders.release()
                self.admission.release(estimate)

            work.add_done_callback(settle)
            if isinstance(err, TimeoutError):
                raise RequestError(422, f"decoding it took longer than {self.options.decode_timeout_s:g} s "
                                        "(seg-serve --decode-timeout-s)") from None
            raise
        finally:
            if not late:  # the decode ended, with its slices or its refusal
                self._decoders.release()

    async def _infer(self, image: np.ndarray) -> tuple[dict[str, np.ndarray], float]:
        """(S, h, w, C) slices at the graph's size -> (outputs by name, each (S, K, h, w), seconds the
        backend spent on the batches they rode in). Every slice joins the batch queue on its own."""
        per_slice = await self.submit(image)
        arrays = {name: np.stack([outputs[name] for outputs, _ in per_slice]) for name in per_slice[0][0]}
        return arrays, sum(dict(batch for _, batch in per_slice).values())


class _Held:
    """The bytes one request holds in the admission budget: its body, and what decoding it will take."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.body = 0
        self.decoded = 0

    def release(self) -> None:
        self.admission.release(self.body + self.decoded)
        self.body = self.decoded = 0


def _retrieve(work: asyncio.Future) -> None:
    """Take a late thread's outcome, so that asyncio does not log it as never retrieved."""
    if not work.cancelled():
        work.exception()


def _answer(model: _Model, data: ScanData, arrays: dict[str, np.ndarray], as_json: bool) -> payloads.Answer:
    prediction = model.segmenter.steps.finish_scan(data, arrays)
    return payloads.answer(data, prediction, as_json=as_json, manifest_sha256=model.sha256,
                           brats_labels=model.brats_labels)


def _server_timing(marks: list[float], backend_seconds: float) -> str:
    """Server-Timing (W3C) in ms: body, read, queue, backend, answer, total; the rest of a client's
    latency is HTTP (and, in Ray mode, Serve's proxy)."""
    body, read, infer, answer = (float(ms) for ms in np.diff(marks) * 1000)
    backend = backend_seconds * 1000
    phases = {"body": body, "read": read, "queue": infer - backend, "backend": backend, "answer": answer,
              "total": (marks[-1] - marks[0]) * 1000}
    return ", ".join(f"{name};dur={ms:.2f}" for name, ms in phases.items())


def _without_paths(record: dict) -> dict:
    """`record` with every absolute path in its string values cut to the file's name."""
    return {key: Path(value).name if isinstance(value, str) and Path(value).is_absolute() else value
            for key, value in record.items()}


def _load_error(loading: Future) -> str:
    """Why the model did not load, without paths of this machine: the error's type and the file's name."""
    err = loading.exception()
    message = str(err)
    for word in message.split():
        stripped = word.strip("'\",;:()")
        if stripped.startswith("/") and len(stripped) > 1:
            message = message.replace(stripped, Path(stripped).name)
    return f"the model failed to load: {type(err).__name__}: {message}"


def _log_load_failure(loading: Future) -> None:
    if loading.exception() is not None:
        log.error("%s", _load_error(loading), exc_info=loading.exception())
