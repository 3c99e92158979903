"""The `seg-run` command: parse the options, call `segment` once, print what was done and skipped.

Only typer, the standard library, brainseg.cli_support and the size limits' defaults
(`brainseg.formats.limits`) are imported at module level; the run itself is imported when the
command runs. Library errors are printed as one line and exit with
code 2, since 1 means "some inputs were skipped" (`brainseg.cli_support.command`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from brainseg.choices import BackendName, ComponentRule, TtaMode
from brainseg.cli_support import Backend, Components, Labels, Precision, Tta, command, scan_progress
from brainseg.formats.limits import MAX_PIXELS, MAX_VOXELS


@command(error_code=2)
def run_command(
    scans: Annotated[list[Path], typer.Argument(help="Files or folders of scans (searched recursively).")],
    artifacts: Annotated[Path, typer.Option(help="An artifacts folder written by seg-export.")],
    out: Annotated[Path, typer.Option(help="Output folder: masks/, overlays/, volumes/, results.csv.")] = Path("out"),
    backend: Backend = BackendName.AUTO,
    precision: Precision = None,
    device: Annotated[int, typer.Option(help="CUDA device index.")] = 0,
    batch_size: Annotated[int, typer.Option(help="Slices per inference call.")] = 8,
    readers: Annotated[int, typer.Option(help="Reader threads decoding scans.")] = 2,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime CPU threads (default: one per core).")] = None,
    save_probability: Annotated[bool, typer.Option(help="Also write probability maps for volumes.")] = False,
    overlays: Annotated[bool, typer.Option(help="Write overlay PNGs (contour on the image).")] = True,
    qc_threshold: Annotated[float, typer.Option(help="Mean model disagreement above which a scan is flagged.")]
    = 0.25,
    overwrite: Annotated[bool, typer.Option(help="Redo scans whose outputs already exist.")] = False,
    cuda_graph: Annotated[bool, typer.Option(help="TensorRT: capture a CUDA graph for --batch-size batches.")]
    = False,
    spin: Annotated[bool, typer.Option(help="ONNX Runtime CPU threads spin between ops: lower latency per call, "
                                            "but they compete with the reader and writer threads.")] = False,
    tta: Tta = TtaMode.AUTO,
    components: Components = ComponentRule.AUTO,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    ray: Annotated[str | None, typer.Option(
        help="Run on Ray Data: 'local', or a cluster's address (HOST:6379, auto, ray://HOST:10001).")] = None,
    ray_actors: Annotated[int, typer.Option(help="With --ray: inference actors, one backend (and GPU) each.")] = 1,
    max_attempts: Annotated[int, typer.Option(help="With --ray: tries of a scan's dying task, then skip it.")] = 3,
    max_pixels: Annotated[int, typer.Option(help="Skip an image declaring more pixels (16384 x 16384).")]
    = MAX_PIXELS,
    max_voxels: Annotated[int, typer.Option(help="Skip a volume declaring more voxels (512 x 512 x 320).")]
    = MAX_VOXELS,
    brats_labels: Labels = None,
    submission: Annotated[Path | None, typer.Option(
        help="BraTS: also write each case's label map as DIR/<case>.nii.gz, a challenge submission folder.")]
    = None,
) -> None:
    """Segment a folder of scans with an exported ensemble (no torch needed).

    Exit code 0: every scan done; 1: some inputs were skipped (reasons in summary.json);
    2: a usage or artifacts problem, nothing segmented.
    """
    from brainseg.runtime.batch.pipeline import RunOptions, segment

    options = RunOptions(backend=backend, precision=precision, device=device, batch_size=batch_size,
                         readers=readers, threads=threads, overwrite=overwrite, save_probability=save_probability,
                         overlays=overlays, qc_threshold=qc_threshold, cuda_graph=cuda_graph, spinning=spin,
                         tta=tta, components=components, ray=ray, ray_actors=ray_actors, max_pixels=max_pixels,
                         max_voxels=max_voxels,
                         max_attempts=max_attempts, brats_labels=brats_labels,
                         submission=submission)
    with scan_progress(enabled=progress) as on_scan:
        summary = segment(scans, artifacts, out, options, on_scan=on_scan)
    typer.echo(f"{summary.done} scan(s), {summary.slices} slice(s) in {summary.timings_s['wall']:.1f} s "
               f"({summary.slices_per_s:.1f} slices/s) with {summary.backend.get('deployed') or 'ensemble'} on "
               f"{summary.backend['backend']} {summary.precision}; "
               f"{summary.resumed} already done; {summary.postprocessing['description']}")
    typer.echo(f"Results: {out / 'results.csv'}, summary: {out / 'summary.json'}")
    if summary.skipped:
        typer.secho(f"{len(summary.skipped)} input(s) skipped:", err=True, fg=typer.colors.YELLOW)
        for item in summary.skipped:
            typer.echo(f"  {item['path']}: {item['reason']}", err=True)
    raise typer.Exit(code=summary.exit_code)
