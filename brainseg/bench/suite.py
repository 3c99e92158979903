"""`seg-bench` end to end: environment, this machine's peak rates, every timing, the report files."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from brainseg.artifacts.manifest import Manifest
from brainseg.bench.environment import describe_environment
from brainseg.bench.peak import measure_peak
from brainseg.bench.report import build_report, write_report
from brainseg.bench.runner import BenchOptions, run_bench

log = logging.getLogger("brainseg.bench")


def bench_artifacts(artifacts: str | Path, out: str | Path, options: BenchOptions = BenchOptions(),
                    *, progress: Callable[[str], None] = log.info) -> tuple[dict, list[Path]]:
    """Benchmark an artifacts folder; write report.md, report.json and plots under `out`."""
    options.check()
    artifacts, out = Path(artifacts), Path(out)
    manifest = Manifest.load(artifacts)
    progress("describing this machine and measuring its peak fp32 and int8 matmul rates")
    environment = describe_environment()
    peaks = {kind: measure_peak(kind, threads=options.threads) for kind in ("fp32", "int8")}
    result = run_bench(manifest, options, peaks={k: v["gflops"] for k, v in peaks.items()}, progress=progress)
    report = build_report(result, artifacts=artifacts, manifest_sha256=manifest.sha256,
                          environment=environment, peaks=peaks, options=asdict(options), deployed=manifest.deployed)
    return report, write_report(out, report)
