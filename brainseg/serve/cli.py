"""The `seg-serve` command: parse the options, call `serve_forever` once, print the URL when healthy.

Only typer, the standard library, brainseg.cli_support and the size limits' defaults
(`brainseg.formats.limits`) are imported at module level; uvicorn, FastAPI, Ray and the runtime are
imported when the command runs. Library errors are printed as one line and exit with code 1
(`brainseg.cli_support.command`), Typer's usage errors with 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainseg.choices import BackendName, ComponentRule, TtaMode
from brainseg.cli_support import Backend, Components, Labels, Precision, Tta, command
from brainseg.formats.limits import MAX_PIXELS, MAX_VOXELS


@command()
def serve_command(
    artifacts: Annotated[Path, typer.Option(help="An artifacts folder written by seg-export.")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port of the HTTP server.")] = 8000,
    ray: Annotated[str | None, typer.Option(
        help="Serve on Ray Serve instead of in this process: 'local' starts Ray here, any other value is the "
             "address of a Ray cluster to join.", metavar="local|ADDRESS")] = None,
    replicas: Annotated[int, typer.Option(help="Model replicas on Ray Serve (with --ray), each its own process.")] = 1,
    max_batch: Annotated[int, typer.Option(help="Most slices one backend call takes, across requests.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(
        help="How long a batch may wait for more slices: for requests still being decoded (embedded), or when the "
             "replica is busy (--ray). An idle model never waits.")]
    = 5.0,
    precision: Precision = None,
    backend: Backend = BackendName.AUTO,
    device: Annotated[int, typer.Option(help="CUDA device index.")] = 0,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime CPU threads per replica (default: per core).")]
    = None,
    tta: Tta = TtaMode.AUTO,
    components: Components = ComponentRule.AUTO,
    brats_labels: Labels = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body in MiB, as sent; bigger ones get 413.")]
    = 64.0,
    max_pixels: Annotated[int, typer.Option(
        help="Most pixels a slice's header may declare (413 beyond; default: 16384 x 16384).")] = MAX_PIXELS,
    max_voxels: Annotated[int, typer.Option(
        help="Most voxels a volume's header may declare, channels included (413 beyond; default: 512 x 512 x 320).")]
    = MAX_VOXELS,
    body_timeout_s: Annotated[float, typer.Option(help="Seconds a client has to send a whole body (408 after).")]
    = 30.0,
    decode_timeout_s: Annotated[float, typer.Option(
        help="Seconds a body may take to decode (422 after; the decoder thread finishes on its own).")] = 20.0,
    max_uploads: Annotated[int, typer.Option(help="Bodies received at once; more get 503 with Retry-After.")] = 128,
    max_buffered_mb: Annotated[float, typer.Option(
        help="MiB held for requests at once: bodies and their decoded scans (estimated from their headers); "
             "more get 503 with Retry-After.")] = 2048.0,
) -> None:
    """Serve an exported ensemble over HTTP: POST a slice or a NIfTI volume, get its mask.

    Runs in this one process unless --ray is given. Runs until Ctrl-C. Endpoints: POST /v1/segment,
    GET /healthz, GET /v1/model, GET /v1/stats, GET /docs. Limits and what to put in front of it:
    docs/security.md.
    """
    from brainseg.serve.options import ServeOptions
    from brainseg.serve.service import serve_forever

    options = ServeOptions(host=host, port=port, ray=ray, replicas=replicas, batch_size=max_batch,
                           batch_wait_ms=batch_wait_ms, precision=precision, backend=backend, device=device,
                           threads=threads, tta=tta, components=components, max_body_mb=max_body_mb,
                           max_pixels=max_pixels, max_voxels=max_voxels, body_timeout_s=body_timeout_s,
                           decode_timeout_s=decode_timeout_s,
                           max_uploads=max_uploads, max_buffered_mb=max_buffered_mb, brats_labels=brats_labels)

    def ready(url: str) -> None:
        typer.echo(f"seg-serve is ready at {url} (POST {url}/v1/segment; Ctrl-C to stop)")

    serve_forever(artifacts, options, on_ready=ready)


def serve_entry() -> None:
    """Console script `seg-serve`."""
    typer.run(serve_command)


if __name__ == "__main__":
    serve_entry()
