"""`seg-demo`: the whole toolkit on the built-in sample, offline, in one command.

sample data -> seg-train (three models) -> seg-export fp32/fp16/int8 with the accuracy gate ->
seg-run over the held-out test patients -> seg-bench -> where to look. The `quick` preset is the
README's demo (target: 15 minutes on 2 CPU cores; its measured time is in
benchmarks/results/cpu-2core-avx2/demo_quick.json); `tiny` is a far smaller run, for CI.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from brainseg.bench.runner import BenchOptions
from brainseg.bench.suite import bench_artifacts
from brainseg.data.split import load_split
from brainseg.data.synthetic.sample import SampleSpec, cached_sample_dataset
from brainseg.errors import ConfigError
from brainseg.export.pipeline import ExportOptions, export_run
from brainseg.runtime.batch.pipeline import RunOptions, segment
from brainseg.train.config import make_config
from brainseg.train.run import train_run

log = logging.getLogger("brainseg.demo")
SAMPLES = {"quick": SampleSpec(), "tiny": SampleSpec(patients=6, slices=6, size=64)}
BENCH = {
    # the export has timed every candidate already (accuracy.md); the demo's bench compares the shipped
    # graph's runtimes with PyTorch eager, compute only, at batch 1 and 8, without the flip rows
    "quick": BenchOptions(backends=("pytorch", "onnxruntime", "openvino"), precisions=("fp32", "int8"),
                          batch_sizes=(1, 8), seconds=1.0, tta=("none",), modes=("compute",), members=False,
                          front=False),
    "tiny": BenchOptions(batch_sizes=(1, 2), iterations=2, seconds=None, rounds=2, modes=("compute", "end-to-end"),
                         members=False, front=False),
}


def _prepare(out: Path, overwrite: bool) -> None:
    """Refuse to mix with an earlier demo unless asked; then remove only the demo's own folders."""
    existing = [out / name for name in STAGES if (out / name).exists()]
    if existing and not overwrite:
        raise ConfigError(f"{out} already holds a demo ({', '.join(p.name for p in existing)}); "
                          "pass --overwrite to redo it or choose another --out")
    for path in existing:
        shutil.rmtree(path)


@dataclass
class DemoResult:
    out: Path
    test_dice: dict[str, float]
    export_table: dict[str, dict]
    export_test_table: dict[str, dict]
    postprocessing: str
    deployed: str
    deployed_reason: str
    segmented: int
    skipped: int
    report: Path
    seconds: dict[str, float]


STAGES = ("run", "artifacts", "segmentation", "bench")


def run_demo(out: str | Path = "demo", *, preset: str = "quick", progress: bool = True, overwrite: bool = False,
             say: Callable[[str], None] = print) -> DemoResult:
    out = Path(out)
    _prepare(out, overwrite)
    seconds: dict[str, float] = {}
    started = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal started
        seconds[stage] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()

    say(f"[1/5] sample data ({preset})")
    sample = cached_sample_dataset(SAMPLES[preset])
    lap("sample")
    say("[2/5] seg-train: U-Net, FPN and ResNet-UNet, then a student distilled from them")
    trained = train_run(data=str(sample), out=out / "run", cfg=make_config(preset), progress=progress)
    lap("train")
    say("[3/5] seg-export: the Dice-latency front picks what ships; fp32, fp16 and int8 of it, gated on validation "
        "Dice, scored on the test patients")
    exported = export_run(out / "run", out / "artifacts", ExportOptions(fp16=True, int8=True, overwrite=True),
                          progress=log.info)
    lap("export")
    test_patients = load_split(out / "run" / "split.json").test
    say(f"[4/5] seg-run over the {len(test_patients)} held-out test patients")
    summary = segment([sample / patient for patient in test_patients], out / "artifacts", out / "segmentation",
                      RunOptions(overwrite=True))
    lap("run")
    say("[5/5] seg-bench")
    _, written = bench_artifacts(out / "artifacts", out / "bench", BENCH[preset])
    lap("bench")
    return DemoResult(out=out, test_dice=trained.test_dice, export_table=exported.table,
                      export_test_table=exported.test_table, postprocessing=exported.postprocessing,
                      deployed=exported.deployed, deployed_reason=exported.deployed_reason, segmented=summary.done,
                      skipped=len(summary.skipped), report=written[1], seconds=seconds)
