"""What every brainseg command shares: one-line errors with an exit code, logging, a progress bar of scans.

Only typer and the standard library are imported at module level; any CLI module (brainseg.cli,
brainseg.evaluation.cli, brainseg.deploy.triton_cli, brainseg.serve.cli) imports from here without
importing the others.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import time
import warnings
from collections.abc import Callable
from typing import Annotated

import typer

from brainseg.choices import BackendName, BratsLabels, ComponentRule, PrecisionName, TtaMode
from brainseg.errors import BrainsegError

# the options of every command that runs an artifacts folder (seg-run, seg-eval, seg-serve), worded once;
# typer lists each enum's values in the help and refuses any other
Backend = Annotated[BackendName, typer.Option(help="Runtime; auto picks (seg-doctor says which and why).")]
Precision = Annotated[PrecisionName | None, typer.Option(
    help="Precision to run; default: fp16 on a GPU, int8 on a CPU (each only if it passed the gate).")]
Tta = Annotated[TtaMode, typer.Option(help="Flip test-time augmentation; auto: the artifacts' choice.")]
Components = Annotated[ComponentRule, typer.Option(help="3-D component rule; auto: the artifacts' choice.")]
Labels = Annotated[BratsLabels | None, typer.Option(
    "--brats-labels", help="BraTS label maps' convention: 2021 (enhancing tumour 4) or 2023 (3); default: the "
                           "training labels'.")]


def command(*, error_code: int = 1) -> Callable[[Callable], Callable]:
    """Wrap a command: set up logging, and turn a BrainsegError into one red line and `error_code`."""

    def decorate(function: Callable) -> Callable:
        @functools.wraps(function)
        def run(*args, **kwargs):
            setup_logging()
            try:
                return function(*args, **kwargs)
            except BrainsegError as err:
                typer.secho(f"error: {err}", err=True, fg=typer.colors.RED)
                raise typer.Exit(code=error_code) from None

        return run

    return decorate


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    warnings.showwarning = lambda message, *args, **kwargs: logging.getLogger("brainseg").warning(str(message))


@contextlib.contextmanager
def scan_progress(*, enabled: bool):
    """A rich progress bar of slices written and slices/s, fed by `on_scan(key, slices)`."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("Segmenting"), BarColumn(), TextColumn("{task.completed:.0f} slices"),
               TextColumn("{task.fields[rate]}"), TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("run", total=None, rate="")
        started = time.perf_counter()

        def on_scan(key: str, slices: int) -> None:
            bar.advance(task, slices)
            done = bar.tasks[0].completed
            bar.update(task, rate=f"{done / max(time.perf_counter() - started, 1e-9):.1f} slices/s")

        yield on_scan
