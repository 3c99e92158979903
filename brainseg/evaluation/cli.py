"""The `seg-eval` command (also `brainseg eval`): parse the options, call `evaluate` once, print the headline.

Only typer, the standard library and brainseg.cli_support are imported here; the evaluation code is imported when the
command runs, so registering it on brainseg's app costs nothing.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from brainseg.choices import BackendName, ComponentRule, TtaMode
from brainseg.cli_support import Backend, Components, Precision, Tta, command


@command(error_code=2)
def eval_command(
    data: Annotated[Path, typer.Argument(
        help="Labelled data: a kaggle_3m, BraTS or images/+masks/ folder, or 'sample' / 'sample-brats' for the "
             "built-in sample the source run trained on.")],
    artifacts: Annotated[Path, typer.Option(help="An artifacts folder written by seg-export.")],
    out: Annotated[Path, typer.Option(help="Report folder: report.md, report.json, dice_per_patient.png, overlays/.")],
    split: Annotated[str, typer.Option(help="test or val (the source run's split.json), or all labelled patients.")]
    = "test",
    patients: Annotated[str | None, typer.Option(help="Comma-separated patient ids to score instead of --split.")]
    = None,
    backend: Backend = BackendName.AUTO,
    precision: Precision = None,
    tta: Tta = TtaMode.AUTO,
    components: Components = ComponentRule.AUTO,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime CPU threads (default: one per core).")] = None,
    batch_size: Annotated[int, typer.Option(help="Slices per inference call.")] = 8,
    overwrite: Annotated[bool, typer.Option(help="Write into an --out folder that is not empty.")] = False,
    progress: Annotated[bool | None, typer.Option(
        "--progress/--no-progress", help="Progress bar over patients (default: when stdout is a terminal).")] = None,
) -> None:
    """Score exported artifacts on labelled data, run exactly as seg-run runs them (no torch needed).

    Exit code 0: the report was written; 2: a usage, data or artifacts problem, nothing scored.
    """
    from brainseg.errors import ConfigError
    from brainseg.evaluation.evaluate import EvalOptions, evaluate

    chosen = None if patients is None else tuple(p.strip() for p in patients.split(",") if p.strip())
    if chosen is not None and not chosen:
        raise ConfigError("--patients names no patient; give comma-separated ids, e.g. --patients ID1,ID2")
    options = EvalOptions(split=split, patients=chosen, backend=backend, precision=precision, tta=tta,
                          components=components, threads=threads, batch_size=batch_size, overwrite=overwrite)
    with _patient_progress(enabled=sys.stdout.isatty() if progress is None else progress) as on_patient:
        result = evaluate(data, artifacts, out, options, on_patient=on_patient)
    _print_headline(result.report)
    typer.echo(f"Report: {result.out / 'report.md'} (and report.json, {len(result.report['overlays'])} overlay(s))")


def _print_headline(report: dict) -> None:
    dice = report["dice"]
    worst = report["worst_patient"]
    typer.echo(f"{report['patients']} patient(s) scored ({report['patients_with_tumour']} with tumour) with "
               f"{report['backend'].get('deployed') or 'ensemble'} on {report['backend']['chosen']} "
               f"{report['precision']}; {report['postprocessing']['description']}")
    if dice["mean"] is None:
        typer.echo(f"No scored patient has tumour in the truth; Dice is not defined ({report['region']}).")
    else:
        typer.echo(f"Per-patient Dice ({report['region']}): mean {dice['mean']:.4f}, median {dice['median']:.4f}, "
                   f"worst {worst['dice']:.4f} ({worst['id']}); HD95 undefined for {report['hd95_undefined']}")
    if report["unlabelled"]:
        typer.echo(f"{len(report['unlabelled'])} unlabelled patient(s) not scored (listed in report.md)")


@contextlib.contextmanager
def _patient_progress(*, enabled: bool):
    """A rich progress bar of patients scored, fed by `on_patient(patient_id, done, total)`."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    columns = (TextColumn("Scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[patient]}"),
               TimeElapsedColumn())
    with Progress(*columns, transient=True) as bar:
        task = bar.add_task("eval", total=None, patient="")

        def on_patient(patient_id: str, done: int, total: int) -> None:
            bar.update(task, completed=done, total=total, patient=patient_id)

        yield on_patient


def eval_entry() -> None:
    """Console script `seg-eval`."""
    typer.run(eval_command)
