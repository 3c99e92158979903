"""seg-bench's outputs: report.md (the table a design review reads), report.json, and two plots.

report.json (format brainseg-bench/1) holds everything report.md shows plus every timed sample,
so a reader can recompute any statistic. Plots need matplotlib; without it they are left out
with a note, never an error.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from pathlib import Path

from brainseg.bench import front as bench_front
from brainseg.bench.runner import BenchResult, row_id
from brainseg.bench.stats import CV_WARNING
from brainseg.errors import BrainsegError, require
from brainseg.fileio import write_atomic

log = logging.getLogger("brainseg.bench")
FORMAT = "brainseg-bench/1"
ROW_KEYS = ("backend", "provider", "precision", "model", "file", "mode", "batch", "stats", "noisy", "dice",
            "gflop_per_slice", "gflops_achieved", "share_of_peak")
STAT_KEYS = ("count", "min_ms", "mean_ms", "std_ms", "p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms", "cv",
             "throughput_per_s", "batch")
CONVENTIONS = (
    "Latency per call in ms after warm-up; percentiles by linear interpolation; std with ddof=1; "
    f"CV = std/mean, flagged above {CV_WARNING:.1%}. Throughput = batch x 1000 / mean ms, in slices/s. "
    "compute: inference on slices in memory in the graph's input form; end-to-end: seg-run's own steps per "
    "batch (read the slice files, resize, infer, resize back, threshold, write mask PNGs and row records); "
    "idle: compute at batch 1 with an idle gap "
    "before each call. Rows are timed in interleaved rounds; a speed-up is the median over rounds of the ratio "
    "of the two rows' medians in that round, with the lowest and highest round. openvino-default: OpenVINO's "
    "own settings on the fp32 file (bf16 compute on CPUs with native bf16; the compute type is shown). "
    "Dice: mean per-patient foreground Dice on the export's validation patients, from "
    "the manifest (PyTorch FP32 row = the reference the gate compares against). GFLOP/slice counts 2 x "
    "multiply-adds of Conv/ConvTranspose/MatMul/Gemm; share of peak = achieved / this machine's measured "
    "ONNX Runtime MatMul rate (fp32 peak for fp32/fp16 rows, u8 x s8 MatMulInteger for int8 rows; GFLOP "
    "means GOP for int8), CPU only. The peak is a measured reference, not a hard ceiling: above 100% means the "
    "convolution kernels ran faster than a 1024^3 matrix product."
)


def build_report(result: BenchResult, *, artifacts: Path, manifest_sha256: str, environment: dict, peaks: dict,
                 options: dict, deployed: str = "ensemble") -> dict:
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "artifacts": str(artifacts), "manifest_sha256": manifest_sha256, "deployed": deployed,
        "environment": environment, "peaks": peaks, "options": options, "conventions": CONVENTIONS,
        "rows": result.rows, "skipped": result.skipped, "samples": result.samples, "front": result.front,
    }


def schema_problems(report: dict) -> list[str]:
    """What is missing or mistyped in a report.json; empty when it is well formed."""
    problems = []
    for key, kind in (("format", str), ("environment", dict), ("peaks", dict), ("rows", list), ("skipped", list),
                      ("samples", dict), ("conventions", str)):
        if not isinstance(report.get(key), kind):
            problems.append(f"{key!r} should be {kind.__name__}")
    if problems:
        return problems
    if report["format"] != FORMAT:
        problems.append(f"format is {report['format']!r}, expected {FORMAT!r}")
    for index, row in enumerate(report["rows"]):
        problems += [f"row {index} lacks {key!r}" for key in ROW_KEYS if key not in row]
        problems += [f"row {index} stats lack {key!r}" for key in STAT_KEYS if key not in row.get("stats", {})]
        if row_id(row) not in report["samples"] if all(k in row for k in ROW_KEYS) else False:
            problems.append(f"row {index} has no samples")
    return problems


def _fmt(value, pattern: str = "{:.2f}") -> str:
    return "" if value is None else pattern.format(value)


def markdown(report: dict) -> str:
    env, peaks = report["environment"], report["peaks"]
    lines = [
        "# seg-bench report", "",
        f"Artifacts `{report['artifacts']}` (manifest sha256 `{report['manifest_sha256'][:12]}`), {report['created']}. "
        f"Every runtime row runs the export's shipped candidate, **{report.get('deployed', 'ensemble')}** "
        "(rows named `ensemble` are its graph).",
        "", "## Environment", "",
        f"- CPU: {env.get('cpu_model')} ({env.get('cpu_cores_usable') or env.get('cpu_cores_logical')} cores usable, "
        f"vector ISA {env.get('cpu_vector_isa')})",
        f"- GPU: {', '.join(g['name'] for g in env.get('gpu') or []) or 'none'}; CUDA {env.get('cuda')}; "
        f"TensorRT {env.get('tensorrt')}; Jetson power mode {env.get('jetson_power_mode')}",
        f"- ONNX Runtime {env.get('onnxruntime')} ({', '.join(env.get('onnxruntime_providers') or [])}); "
        f"torch {env.get('torch')}; numpy {env.get('numpy')}; OpenCV {env.get('opencv')}; {env.get('os')}",
        "- Measured peak: " + "; ".join(f"{k} {v['gflops']:.0f} GFLOP/s ({v['method']})" for k, v in peaks.items()),
        "", "## Results", "",
        "| backend | precision | model | mode | batch | p50 ms | p90 ms | p99 ms | mean ± std ms | CV | slices/s "
        "| Dice | GFLOP/slice | GFLOP/s | % of peak |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(_table_row(row))
    noisy = [row_id(r) for r in report["rows"] if r["noisy"]]
    if noisy:
        which = ", ".join(noisy) if len(noisy) <= 6 else f"{len(noisy)} of {len(report['rows'])} rows, marked ⚠"
        lines += ["", f"⚠ CV above {CV_WARNING:.1%}: {which}. Such rows are noisy: compare medians, rerun with more "
                  "--seconds, or use a quieter machine."]
    staged = [r for r in report["rows"] if r.get("gpu_stages_ms")]
    if staged:
        lines += ["", "## GPU stages (CUDA events, median ms)", "",
                  "| row | host to device | compute | device to host |", "|---|---|---|---|"]
        lines += [f"| {row_id(r)} | {r['gpu_stages_ms']['h2d_ms']:.3f} | {r['gpu_stages_ms']['compute_ms']:.3f} "
                  f"| {r['gpu_stages_ms']['d2h_ms']:.3f} |" for r in staged]
    lines += ["", "## Speed-ups", ""] + _speedups(report["rows"])
    lines += ["", "## What flip TTA costs", ""] + _tta_costs(report["rows"])
    lines += bench_front.markdown(report.get("front"))
    if report["skipped"]:
        lines += ["", "## Not measured here", ""]
        lines += [f"- {s['backend']}{' ' + s['precision'] if s.get('precision') else ''}: {s['reason']}"
                  for s in report["skipped"]]
    lines += ["", "## Conventions", "", report["conventions"], ""]
    return "\n".join(lines)


def _table_row(row: dict) -> str:
    st = row["stats"]
    backend = row["backend"]
    if backend == "onnxruntime":
        backend = f"onnxruntime ({row['provider'].replace('ExecutionProvider', '')})"
    elif backend.startswith("openvino") and row.get("compute"):
        backend = f"{backend} ({row['compute']})"
    share = None if row["share_of_peak"] is None else 100 * row["share_of_peak"]
    cells = [
        backend, row["precision"], row["model"], row["mode"], str(row["batch"]),
        f"{st['p50_ms']:.2f}", f"{st['p90_ms']:.2f}", f"{st['p99_ms']:.2f}",
        f"{st['mean_ms']:.2f} ± {st['std_ms']:.2f}",
        f"{st['cv']:.1%}" + (" ⚠" if row["noisy"] else ""), f"{st['throughput_per_s']:.1f}",
        _fmt(row["dice"], "{:.4f}"), _fmt(row["gflop_per_slice"]), _fmt(row["gflops_achieved"], "{:.1f}"),
        _fmt(share, "{:.0f}%"),
    ]
    return "| " + " | ".join(cells) + " |"


def round_ratio(base: dict, row: dict) -> dict:
    """How many times faster `row` is than `base`: the ratio of their medians in each interleaved
    round, summarised as median, min and max (a report without rounds gives one ratio of p50s)."""
    pairs = list(zip(base.get("round_p50_ms") or [base["stats"]["p50_ms"]],
                     row.get("round_p50_ms") or [row["stats"]["p50_ms"]], strict=False))
    ratios = sorted(b / r for b, r in pairs)
    middle = len(ratios) // 2
    median = ratios[middle] if len(ratios) % 2 else (ratios[middle - 1] + ratios[middle]) / 2
    return {"median": round(median, 3), "min": round(ratios[0], 3), "max": round(ratios[-1], 3),
            "rounds": len(ratios)}


def _speedups(rows: list[dict]) -> list[str]:
    """Each ensemble row against PyTorch eager FP32 and against OpenVINO's default run of the fp32
    file, at the same mode and batch, round by round."""
    out = []
    for row in rows:
        if row["model"] != "ensemble":
            continue
        for peer, label in (("pytorch", "PyTorch eager FP32"), ("openvino-default", "OpenVINO defaults, fp32 file")):
            base = next((r for r in rows if r["model"] == "ensemble" and r["mode"] == row["mode"]
                         and r["batch"] == row["batch"] and r["backend"] == peer), None)
            if base is None or base is row or row["backend"] in ("pytorch", "openvino-default"):
                continue
            ratio = round_ratio(base, row)
            out.append(f"- {row['backend']} {row['precision']}, {row['mode']}, batch {row['batch']}: "
                       f"{ratio['median']:.2f}x {label} (rounds {ratio['min']:.2f}-{ratio['max']:.2f})")
    return out or ["- (no PyTorch eager FP32 or OpenVINO default rows to compare against)"]


def _tta_costs(rows: list[dict]) -> list[str]:
    """Each "ensemble+flip" row against the same backend, precision, mode and batch without TTA."""
    out = []
    for row in rows:
        if row["model"] != "ensemble+flip":
            continue
        base = next((r for r in rows if r["model"] == "ensemble" and all(
            r[key] == row[key] for key in ("backend", "provider", "precision", "mode", "batch"))), None)
        if base is not None:
            ratio = row["stats"]["mean_ms"] / base["stats"]["mean_ms"]
            out.append(f"- {row['backend']} {row['precision']}, {row['mode']}, batch {row['batch']}: "
                       f"{ratio:.2f}x the latency without TTA")
    return out or ["- (no TTA rows timed)"]


def write_report(out: Path, report: dict) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "report.md", markdown(report))
    return [out / "report.json", out / "report.md", *_plots(out, report)]


def _plots(out: Path, report: dict) -> list[Path]:
    try:
        require("matplotlib", "bench").use("Agg")
    except BrainsegError as err:
        log.warning("%s; the report's plots are left out", err)
        return []
    import matplotlib.pyplot as plt
    written = []
    single = [r for r in report["rows"] if r["batch"] == 1 and r["mode"] != "idle" and r["model"] == "ensemble"]
    if single:
        fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(single)))
        ax.boxplot([report["samples"][row_id(r)] for r in single], orientation="horizontal", showfliers=True,
                   tick_labels=[f"{r['backend']} {r['precision']} {r['mode']}" for r in single])
        ax.set_xlabel("latency per call, ms (batch 1)")
        ax.set_title("Latency distribution, ensemble")
        fig.tight_layout()
        fig.savefig(out / "latency_distribution.png", dpi=120)
        plt.close(fig)
        written.append(out / "latency_distribution.png")
    series: dict[str, list[tuple[int, float]]] = {}
    for r in report["rows"]:
        if r["mode"] == "compute" and r["model"] == "ensemble":
            point = (r["batch"], r["stats"]["throughput_per_s"])
            series.setdefault(f"{r['backend']} {r['precision']}", []).append(point)
    if any(len(points) > 1 for points in series.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, points in series.items():
            xs, ys = zip(*sorted(points), strict=True)
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size")
        ax.set_ylabel("slices/s (compute)")
        ax.set_title("Throughput by batch size, ensemble")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / "throughput_by_batch.png", dpi=120)
        plt.close(fig)
        written.append(out / "throughput_by_batch.png")
    return written
