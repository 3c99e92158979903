"""The `seg-serve` command: parse the options, call `serve_forever` once, print the URL when healthy.

Only typer, the standard library and brainseg.cli_support are imported at module level; Ray and
the runtime are imported when the command runs. Library errors are printed as one line and exit
with code 1 (`brainseg.cli_support.command`), Typer's usage errors with 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainseg.choices import BackendName, ComponentRule, TtaMode
from brainseg.cli_support import Backend, Components, Precision, Tta, command


@command()
def serve_command(
    artifacts: Annotated[Path, typer.Option(help="An artifacts folder written by seg-export.")],
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port of the HTTP server.")] = 8000,
    replicas: Annotated[int, typer.Option(help="Model replicas (processes), each with its own backend.")] = 1,
    max_batch: Annotated[int, typer.Option(help="Most slices one backend call takes, across requests.")] = 16,
    batch_wait_ms: Annotated[float, typer.Option(
        help="Least time a batch waits for more slices when the replica is busy (it also waits out a running batch; "
             "an idle replica never waits).")]
    = 5.0,
    precision: Precision = None,
    backend: Backend = BackendName.AUTO,
    device: Annotated[int, typer.Option(help="CUDA device index.")] = 0,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime CPU threads per replica (default: per core).")]
    = None,
    tta: Tta = TtaMode.AUTO,
    components: Components = ComponentRule.AUTO,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body in MiB; bigger ones get 413.")] = 64.0,
) -> None:
    """Serve an exported ensemble over HTTP on Ray Serve: POST a slice or a NIfTI volume, get its mask.

    Runs until Ctrl-C. Endpoints: POST /v1/segment, GET /healthz, GET /v1/model, GET /v1/stats.
    """
    from brainseg.serve.options import ServeOptions
    from brainseg.serve.service import serve_forever

    options = ServeOptions(host=host, port=port, replicas=replicas, batch_size=max_batch, batch_wait_ms=batch_wait_ms,
                           precision=precision, backend=backend, device=device, threads=threads, tta=tta,
                           components=components, max_body_mb=max_body_mb)

    def ready(url: str) -> None:
        typer.echo(f"seg-serve is ready at {url} (POST {url}/v1/segment; Ctrl-C to stop)")

    serve_forever(artifacts, options, on_ready=ready)


def serve_entry() -> None:
    """Console script `seg-serve`."""
    typer.run(serve_command)


if __name__ == "__main__":
    serve_entry()
