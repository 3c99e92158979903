"""Command-line interface: each command parses options and calls one library function.

Library errors (BrainsegError) are printed as one line, with no traceback, and end the command
with its error exit code (1; seg-run uses 2, since its 1 means "some inputs were skipped").
Typer's own usage errors exit 2.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from brainseg.choices import ComponentRule, PrecisionName, TtaMode
from brainseg.cli_support import command as _command
from brainseg.errors import ConfigError
from brainseg.runtime.batch.cli import run_command

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Brain-MRI tumour segmentation toolkit.")


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [item.strip() for item in value.split(",") if item.strip()]


@app.command("train")
@_command()
def train_command(
    data: Annotated[str, typer.Option(help="kaggle_3m, BraTS or images/+masks/ folder, or 'sample' / 'sample-brats'.")],
    out: Annotated[Path, typer.Option(help="Run folder; one sub-folder per model.")] = Path("runs/default"),
    models: Annotated[str, typer.Option(help="Comma-separated: unet, fpn, resunet.")] = "unet,fpn,resunet",
    preset: Annotated[str, typer.Option(help="quick (small, minutes on a CPU) or full.")] = "full",
    epochs: Annotated[int | None, typer.Option(help="Maximum epochs (early stopping may end sooner).")] = None,
    img_size: Annotated[int | None, typer.Option(help="Training slice size, a multiple of 32.")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Slices per batch per process.")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate (AdamW).")] = None,
    patience: Annotated[int | None, typer.Option(help="Epochs without better val Dice before stopping.")] = None,
    oversample: Annotated[float | None, typer.Option(help="Share of tumour slices per batch; 0 = natural.")] = None,
    augment: Annotated[bool, typer.Option(help="Flips, small rotation/scale, intensity curves, noise, blur.")] = True,
    intensity_augment: Annotated[str | None, typer.Option(
        help="8-bit sources: scale-gamma (default) or curves (adds saturating windows, S-shaped curves).")] = None,
    normalisation: Annotated[str | None, typer.Option(
        help="8-bit sources, per slice: slice_foreground (mean/std; default) or slice_quartiles (median/IQR).")] = None,
    amp: Annotated[str | None, typer.Option(help="auto (fp16 on CUDA, bf16 on capable CPUs), off, bf16, fp16.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    layout: Annotated[str | None, typer.Option(help="auto, kaggle_3m, brats or folders.")] = None,
    modalities: Annotated[str | None, typer.Option(help="BraTS channels in order, e.g. t1,t1ce,t2,flair.")] = None,
    target: Annotated[str | None, typer.Option(help="BraTS: wt (whole tumour) or brats-regions (WT/TC/ET).")] = None,
    patient_regex: Annotated[str | None, typer.Option(help="Regex whose 'patient' group is the patient id.")] = None,
    val_fraction: Annotated[float | None, typer.Option(help="Share of patients for validation.")] = None,
    test_fraction: Annotated[float | None, typer.Option(help="Share of patients held out for the report.")] = None,
    folds: Annotated[int | None, typer.Option(help="k for k-fold cross-validation (0 = off).")] = None,
    fold: Annotated[int | None, typer.Option(help="Which fold is validation (0-based).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for the split, sampling and augmentation.")] = None,
    encoder_weights: Annotated[str | None, typer.Option(help="e.g. imagenet (needs network); default none.")] = None,
    distill: Annotated[bool, typer.Option(
        help="After two or more models, distil their mean into a student (the U-Net, from its weights).")] = True,
    distill_epochs: Annotated[int | None, typer.Option(help="The student's epochs (quick 3, full 15).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its last checkpoints.")] = False,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train U-Net, FPN and ResNet-UNet with patient-level validation."""
    from brainseg.train.config import make_config
    from brainseg.train.run import train_run

    cfg = make_config(
        preset, models=_csv(models), epochs=epochs, img_size=img_size, batch_size=batch_size, lr=lr,
        patience=patience, oversample=oversample, augment=augment, amp=amp, layout=layout,
        intensity_augment=intensity_augment, normalisation=normalisation, modalities=_csv(modalities),
        target=target, patient_regex=patient_regex,
        val_fraction=val_fraction, test_fraction=test_fraction, folds=folds, fold=fold, seed=seed,
        encoder_weights=encoder_weights, distill=distill, distill_epochs=distill_epochs,
    )
    result = train_run(data=data, out=out, cfg=cfg, resume=resume, device=device, progress=progress)
    if result.test_dice:
        typer.echo(f"Trained in {result.seconds:.0f} s; mean per-patient Dice on held-out patients:")
        for name, value in result.test_dice.items():
            typer.echo(f"  {name:<16} {value:.4f}")
        typer.echo(f"Reports: {result.run_dir / 'report.md'}")
    if result.skipped:
        typer.echo(f"{result.skipped} input(s) skipped; reasons in {result.run_dir / 'run.json'}")


@app.command("sample-data")
@_command()
def sample_data_command(
    out: Annotated[Path, typer.Argument(help="Folder to write (must be empty or absent).")],
    layout: Annotated[str, typer.Option(help="kaggle_3m (RGB TIFF slices) or brats (NIfTI, labels 1/2/4 or 1/2/3).")]
    = "kaggle_3m",
    patients: Annotated[int | None, typer.Option(help="Number of patients (default 32; brats 24).")] = None,
    slices: Annotated[int | None, typer.Option(help="Axial slices per patient (default 16; brats 24).")] = None,
    size: Annotated[int | None, typer.Option(help="Slice size in pixels (default 256; brats 128).")] = None,
    seed: Annotated[int, typer.Option(help="Seed; the same seed gives the same files.")] = 0,
    brats_year: Annotated[int | None, typer.Option(
        help="brats: 2021 (<case>_t1.nii.gz, enhancing tumour 4; the default) or 2023 (BraTS-GLI-xxxxx-000-t1n.nii.gz, "
             "enhancing tumour 3).")] = None,
) -> None:
    """Write the built-in synthetic brain-MRI sample in the kaggle_3m or the BraTS layout."""
    from brainseg.data.synthetic.sample_brats import write_sample

    root = write_sample(out, layout, patients=patients, slices=slices, size=size, seed=seed, brats_year=brats_year,
                        progress=True)
    typer.echo(f"Wrote the {layout} sample to {root}")


@app.command("export")
@_command()
def export_command(
    run: Annotated[Path, typer.Argument(help="A seg-train run folder (runs/NAME).")],
    out: Annotated[Path | None, typer.Option(help="Artifacts folder; default artifacts/<run name>.")] = None,
    fp16: Annotated[bool, typer.Option("--fp16", help="Also write the float16 ensemble graph.")] = False,
    int8: Annotated[bool, typer.Option("--int8", help="Also write the INT8 (Q/DQ) ensemble graph.")] = False,
    bf16: Annotated[bool, typer.Option(
        "--bf16", help="Also score the fp32 file computed in bf16 by OpenVINO (needs a CPU with native bf16).")]
    = False,
    max_dice_drop: Annotated[float, typer.Option(help="Largest per-patient Dice drop against PyTorch FP32.")] = 0.005,
    calib_slices: Annotated[int, typer.Option(help="Validation slices for INT8 calibration.")] = 256,
    calib_method: Annotated[str, typer.Option(help="minmax, entropy or percentile.")] = "minmax",
    int8_activations: Annotated[str, typer.Option(
        help="both (a TensorRT file and a CPU file), int8_symmetric (TensorRT) or uint8 (ONNX Runtime CPU).")]
    = "both",
    tta: Annotated[TtaMode, typer.Option(
        help="Flip test-time augmentation by default; auto: only if it raises validation Dice.")] = TtaMode.AUTO,
    components: Annotated[ComponentRule, typer.Option(
        help="3-D component rule by default; auto: only if it raises validation Dice.")] = ComponentRule.AUTO,
    min_voxels: Annotated[int, typer.Option(help="min_volume: smallest component kept, in voxels.")] = 64,
    weights: Annotated[str, typer.Option(help="Ensemble weights: auto (fitted on validation), equal, or a,b,c.")]
    = "auto",
    engine: Annotated[str, typer.Option(
        help="TensorRT engines for --fp16/--int8, scored through the same gate: auto (where TensorRT and a CUDA GPU "
             "are), yes (fail if they are not) or no (build them later with seg-export engine).")]
    = "auto",
    deploy: Annotated[str, typer.Option(
        help="What to ship: auto (the fastest candidate within --dice-tolerance of the best validation Dice), "
             "ensemble (every member, as before the front), or a candidate's name (unet, unet+resunet, student, "
             "resunet/flip...).")] = "auto",
    dice_tolerance: Annotated[float, typer.Option(
        help="auto ships the fastest candidate whose validation Dice is within this of the best's.")] = 0.005,
    max_shift_drop: Annotated[float | None, typer.Option(
        help="Fail the export when an intensity shift (x0.3 ... gamma 1.5) drops the shipped candidate's "
             "validation Dice by more than this (default: reported, not gated).")] = None,
    allow_failed: Annotated[bool, typer.Option(help="Exit 0 even when a precision fails the accuracy gate.")] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing artifacts folder.")] = False,
) -> None:
    """Export a trained run to ONNX (fp32, and fp16/int8 on request), gated on validation Dice, shipping the
    candidate the Dice-latency front picks; with TensorRT and a GPU here, also the fp16/int8 TensorRT engines,
    gated the same way."""
    from brainseg.export.pipeline import ExportOptions, export_run

    options = ExportOptions(fp16=fp16, int8=int8, bf16=bf16, max_dice_drop=max_dice_drop, calib_slices=calib_slices,
                            calib_method=calib_method, int8_activations=int8_activations, tta=tta,
                            components=components, min_voxels=min_voxels, weights=weights, engine=engine,
                            overwrite=overwrite, deploy=deploy, dice_tolerance=dice_tolerance,
                            max_shift_drop=max_shift_drop)
    result = export_run(run, out or Path("artifacts") / run.name, options)
    typer.echo(f"Ships {result.deployed}: {result.deployed_reason}")
    typer.echo(f"Scored as deployed: {result.postprocessing}")
    for name, row in result.table.items():
        verdict = "pass" if row["passed"] else "FAILED"
        test = result.test_table.get(name)
        test_text = f"  test Dice {test['dice_mean']:.4f}" if test else ""
        typer.echo(f"  {name:<17} val Dice {row['dice_mean']:.4f}  drop {row['dice_drop']:+.4f}  {verdict}{test_text}")
    typer.echo(result.engines)
    typer.echo(f"Artifacts: {result.out} (accuracy table in {result.out / 'accuracy.md'})")
    if result.failed and not allow_failed:
        because = next((row["failed_because"] for row in result.table.values() if "failed_because" in row), None)
        typer.secho(f"error: {because or ', '.join(result.failed) + f' lost more than {max_dice_drop} Dice'}; "
                    "not offered to seg-run", err=True, fg=typer.colors.RED)
        raise typer.Exit(code=1)


@app.command("export-engine")
@_command()
def engine_command(
    artifacts: Annotated[Path, typer.Argument(help="An artifacts folder written by seg-export.")],
    precision: Annotated[PrecisionName, typer.Option(help="Precision of the engine (must have passed the gate).")]
    = PrecisionName.FP16,
    batch: Annotated[str, typer.Option(help="Batch profile min:opt:max.")] = "1:8:32",
    workspace_gib: Annotated[float, typer.Option(help="Builder workspace limit in GiB.")] = 4.0,
) -> None:
    """Build a TensorRT engine on this machine from an exported graph (needs TensorRT, not torch)."""
    from brainseg.artifacts.layout import TIMING_CACHE
    from brainseg.artifacts.manifest import Manifest
    from brainseg.deploy.tensorrt_build import build_engine

    manifest = Manifest.load(artifacts)
    usable = manifest.usable_precisions("gpu")
    if precision not in usable:
        raise ConfigError(f"{artifacts}: precision {precision} has no GPU file that passed the accuracy gate; "
                          f"usable: {', '.join(usable) or 'none'}")
    engine = manifest.engine_path(precision)
    provenance = build_engine(manifest.path_for(precision, "gpu"), engine, precision=precision,
                              batch=_batch_profile(batch), timing_cache=artifacts / TIMING_CACHE,
                              workspace_gib=workspace_gib)
    typer.echo(f"Built {engine} for {provenance.gpu_name} (TensorRT {provenance.tensorrt_version})")


@app.command("bench")
@_command()
def bench_command(
    artifacts: Annotated[Path, typer.Option(help="An artifacts folder written by seg-export.")],
    out: Annotated[Path | None, typer.Option(help="Report folder; default benchmarks/results/<machine>.")] = None,
    backends: Annotated[str, typer.Option(
        help="Comma-separated: pytorch, onnxruntime, openvino, openvino-default (the peer: OpenVINO's own "
             "settings on the fp32 file), tensorrt.")]
    = "pytorch,onnxruntime,openvino,openvino-default,tensorrt",
    precisions: Annotated[str, typer.Option(help="Comma-separated: fp32, fp16, int8, bf16.")] = "fp32,fp16,int8",
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,2,4,8,16",
    iterations: Annotated[int | None, typer.Option(help="Timed calls per row in each round (instead of --seconds).")]
    = None,
    seconds: Annotated[float | None, typer.Option(help="Seconds of timed calls per row, over all rounds (default 3).")]
    = None,
    rounds: Annotated[int, typer.Option(help="Interleaved rounds: every row is timed once per round, in turn.")] = 5,
    mode: Annotated[str, typer.Option(help="compute, end-to-end, idle, or all.")] = "all",
    members: Annotated[bool, typer.Option(help="Also time each member model's graph.")] = True,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: one per core).")] = None,
    tta: Annotated[str, typer.Option(help="Comma-separated flip TTA modes to time: none, flip.")] = "none,flip",
    front: Annotated[bool, typer.Option(
        help="Also time every candidate of the export's Dice-latency front against PyTorch eager of the "
             "three-model ensemble (needs the train extra and the source run).")] = True,
) -> None:
    """Latency and accuracy report of every backend and precision: report.md, report.json, plots."""
    from brainseg.bench.environment import machine_name
    from brainseg.bench.runner import MODES, BenchOptions
    from brainseg.bench.suite import bench_artifacts

    options = BenchOptions(
        backends=tuple(_csv(backends)), precisions=tuple(_csv(precisions)),
        batch_sizes=tuple(_ints(batch_sizes, "--batch-sizes")), iterations=iterations,
        seconds=None if iterations is not None else (seconds or 3.0), rounds=rounds,
        modes=MODES if mode == "all" else tuple(_csv(mode)), members=members, threads=threads,
        tta=tuple(_csv(tta)), front=front)
    report, written = bench_artifacts(artifacts, out or Path("benchmarks/results") / machine_name(), options)
    typer.echo(f"{len(report['rows'])} rows timed; report: {written[1]} ({', '.join(p.name for p in written)})")
    for skipped in report["skipped"]:
        typer.echo(f"  not measured: {skipped['backend']} {skipped.get('precision', '')}: {skipped['reason']}")
    if report.get("front") and "skipped" in report["front"]:
        typer.echo(f"  front not timed: {report['front']['skipped']}")


@app.command("demo")
@_command()
def demo_command(
    out: Annotated[Path, typer.Option(help="Folder for the run, artifacts, segmentation and report.")] = Path("demo"),
    preset: Annotated[str, typer.Option(help="quick (the README's demo) or tiny (a one-minute smoke run).")]
    = "quick",
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier demo in --out.")] = False,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """The whole pipeline on the built-in sample, offline: train, export, run, bench."""
    from brainseg.demo import run_demo

    if preset not in ("quick", "tiny"):
        raise ConfigError(f"--preset must be quick or tiny, got {preset!r}")
    result = run_demo(out, preset=preset, progress=progress, overwrite=overwrite, say=typer.echo)
    typer.echo("\nHeld-out test patients, mean per-patient Dice of each trained model (PyTorch):")
    for name, value in result.test_dice.items():
        typer.echo(f"  {name:<16} {value:.4f}")
    typer.echo(f"\nThe export ships {result.deployed}: {result.deployed_reason}.")
    typer.echo(f"It as it deploys ({result.postprocessing}), ONNX Runtime on the CPU; "
               "gated on validation, scored on the test patients:")
    for name, row in result.export_table.items():
        test = result.export_test_table.get(name, {}).get("dice_mean")
        typer.echo(f"  {name:<17} val Dice {row['dice_mean']:.4f}  drop {row['dice_drop']:+.4f}  "
                   f"{'pass' if row['passed'] else 'FAILED'}  test Dice {'n/a' if test is None else f'{test:.4f}'}")
    typer.echo(f"\nseg-run segmented {result.segmented} scan(s), skipped {result.skipped}.")
    typer.echo(f"Stage seconds: {result.seconds}")
    typer.echo("Where to look:")
    places = (("training report", "run/report.md"), ("the front, each precision", "artifacts/accuracy.md"),
              ("the front as a plot", "artifacts/front.png"),
              ("masks and overlays", "segmentation/overlays/"), ("per-scan table", "segmentation/results.csv"),
              ("benchmark report", "bench/report.md"))
    for label, path in places:
        typer.echo(f"  {label:<28} {result.out / path}")


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(part) for part in _csv(text) or []]
    except ValueError:
        raise ConfigError(f"{option} must be comma-separated integers, got {text!r}") from None


def _batch_profile(text: str) -> tuple[int, int, int]:
    try:
        low, opt, high = (int(part) for part in text.split(":"))
    except ValueError:
        raise ConfigError(f"--batch must be min:opt:max, e.g. 1:8:32; got {text!r}") from None
    if not 1 <= low <= opt <= high:
        raise ConfigError(f"--batch needs 1 <= min <= opt <= max, got {text!r}")
    return low, opt, high


def train_entry() -> None:
    """Console script `seg-train`."""
    typer.run(train_command)


def sample_entry() -> None:
    """Console script `seg-sample`."""
    typer.run(sample_data_command)


def export_entry() -> None:
    """Console script `seg-export`: `seg-export RUN ...`, `seg-export engine ARTIFACTS ...`, or
    `seg-export triton ARTIFACTS --out REPO ...`."""
    if len(sys.argv) > 1 and sys.argv[1] == "triton":
        from brainseg.deploy.triton_cli import triton_main

        raise SystemExit(triton_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "engine":
        sys.argv = [f"{sys.argv[0]} engine", *sys.argv[2:]]
        typer.run(engine_command)
    else:
        typer.run(export_command)


def run_entry() -> None:
    """Console script `seg-run`."""
    typer.run(run_command)


def bench_entry() -> None:
    """Console script `seg-bench`."""
    typer.run(bench_command)


def demo_entry() -> None:
    """Console script `seg-demo`."""
    typer.run(demo_command)


def _register() -> None:
    """`brainseg run` (seg-run), `brainseg eval` (seg-eval), `brainseg serve` (seg-serve) and `brainseg
    doctor` (seg-doctor): their bodies live with their code."""
    from brainseg.doctor import doctor_command
    from brainseg.evaluation.cli import eval_command
    from brainseg.serve.cli import serve_command

    app.command("run")(run_command)
    app.command("eval")(eval_command)
    app.command("serve")(serve_command)
    app.command("doctor")(doctor_command)


_register()
