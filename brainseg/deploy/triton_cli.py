"""The `seg-export triton` command: parse the options, call `export_triton` once, print what was written.

Only typer, the standard library and brainseg.cli_support are imported here; the export code is imported when the
command runs. `triton_main(argv)` runs the command on an argument list and returns its exit code,
for `seg-export triton ...` to dispatch to: 0 written; 1 a problem with the artifacts, the options
or the destination, printed as one line; 2 a usage error (typer's).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from brainseg.choices import TritonKind
from brainseg.cli_support import command

app = typer.Typer(add_completion=False, help="Write an NVIDIA Triton model repository from an artifacts folder.")


def _batch_sizes(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    from brainseg.errors import ConfigError

    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--preferred-batch must be comma-separated integers, e.g. 8,32; got {text!r}") from None


@app.command()
@command()
def triton_command(
    artifacts: Annotated[Path, typer.Argument(help="An artifacts folder written by seg-export.")],
    out: Annotated[Path, typer.Option(
        help="Model repository folder to write (empty or absent; with --add, an existing one).")],
    precision: Annotated[str | None, typer.Option(
        help="Comma-separated fp32, fp16, int8; default: every precision that passed the accuracy gate.")] = None,
    kind: Annotated[TritonKind, typer.Option(help="Where model instances run (cpu writes no TensorRT models).")]
    = TritonKind.GPU,
    instances: Annotated[int, typer.Option(help="Instances of each model per device.")] = 1,
    max_batch: Annotated[int, typer.Option(help="max_batch_size of ONNX models whose batch axis is dynamic.")] = 32,
    preferred_batch: Annotated[str | None, typer.Option(
        help="Dynamic batcher's preferred batch sizes, e.g. 8,32; default: 8 and --max-batch (an engine: its "
             "profile's opt and max).")] = None,
    max_queue_delay_us: Annotated[int, typer.Option(
        help="Microseconds the dynamic batcher waits to fill a preferred batch.")] = 100,
    name: Annotated[str, typer.Option(help="Model name prefix: <name>-<precision>, <name>-<precision>-trt.")]
    = "brainseg",
    hardlink: Annotated[bool, typer.Option(help="Hard-link model files instead of copying them.")] = False,
    overwrite: Annotated[bool, typer.Option(
        help="Replace a repository seg-export triton wrote (with --add: its models of these names).")] = False,
    add: Annotated[bool, typer.Option(
        help="Write the models into the existing repository --out, beside the models already there.")] = False,
) -> None:
    """Write an NVIDIA Triton model repository: ONNX Runtime models, and TensorRT plans for matching engines."""
    from brainseg.deploy.triton import TritonOptions, export_triton
    from brainseg.deploy.triton_place import README, shared_names

    precisions = None if precision is None else tuple(p.strip() for p in precision.split(",") if p.strip())
    options = TritonOptions(precisions=precisions, kind=kind, instances=instances, max_batch=max_batch,
                            preferred_batch=_batch_sizes(preferred_batch), max_queue_delay_us=max_queue_delay_us,
                            name=name, hardlink=hardlink, overwrite=overwrite, add=add)
    repo = export_triton(artifacts, out, options)
    typer.echo(f"Wrote into the Triton model repository {repo.path}:" if add else
               f"Wrote the Triton model repository {repo.path}:")
    for model in repo.models:
        typer.echo(f"  {model.name:<24} {model.runtime:<12} {model.source}  max_batch_size {model.max_batch}")
    readme = shared_names(name)[0] if add else README
    for note in repo.notes:
        typer.echo(f"note: {note}")
    typer.echo(f"Start it with: tritonserver --model-repository {repo.path.resolve()} (see {repo.path / readme})")


def triton_main(argv: Sequence[str]) -> int:
    """Run `seg-export triton` on `argv` (the arguments after "triton"); return its exit code."""
    command = typer.main.get_command(app)
    try:
        command.main(args=list(argv), prog_name="seg-export triton", standalone_mode=True)
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    return 0
