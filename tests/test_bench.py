"""seg-bench over tiny artifacts (two iterations per row) and seg-demo with the tiny preset."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from brainseg.artifacts.manifest import Manifest
from brainseg.bench import report as rp
from brainseg.bench import runner
from brainseg.bench.runner import MODES, BenchOptions, row_id
from brainseg.bench.suite import bench_artifacts
from brainseg.cli import app
from brainseg.errors import ConfigError, is_installed
from brainseg.postprocess import PostProcessing
from brainseg.runtime.segmenter import ScanSteps, Segmenter, SegmenterOptions

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def short_front(tiny_artifacts, tmp_path_factory) -> Path:
    """A copy of the tiny artifacts whose front lists two candidates: the shipped one and one more.

    The bench rebuilds and times every candidate's graph, two minutes for the tiny run's eight on
    two cores; two candidates run the same code.
    """
    copy = tmp_path_factory.mktemp("short-front") / "artifacts"
    shutil.copytree(tiny_artifacts, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    deployment = raw["deployment"]
    other = "unet" if deployment["candidate"] != "unet" else "student"
    deployment["front"] = [row for row in deployment["front"] if row["name"] in (deployment["candidate"], other)]
    assert len(deployment["front"]) == 2
    (copy / "manifest.json").write_text(json.dumps(raw))
    return copy


@pytest.fixture(scope="module")
def bench(short_front, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    options = BenchOptions(iterations=2, seconds=None, rounds=2, batch_sizes=(1, 2), modes=MODES, threads=1)
    report, written = bench_artifacts(short_front, out, options, progress=lambda message: None)
    return out, report, written


def test_smoke_bench_times_every_backend_precision_and_mode(bench):
    _, report, _ = bench
    ids = {row_id(r) for r in report["rows"]}
    for expected in ("pytorch/fp32/ensemble/compute/b1", "onnxruntime/fp32/ensemble/end-to-end/b2",
                     "onnxruntime/int8/ensemble/idle/b1", "onnxruntime/fp32/unet/compute/b2"):
        assert expected in ids
    if is_installed("openvino"):  # the openvino extra: its gated rows and the peer's default run
        assert {"openvino/int8/ensemble/compute/b1", "openvino-default/fp32/ensemble/end-to-end/b2"} <= ids
        peer = next(r for r in report["rows"] if r["backend"] == "openvino-default")
        assert peer["dice"] is None and peer["compute"] in ("f32", "bf16")  # not gated: no Dice of its own
    # 2 calls in each of 2 interleaved rounds; each round's median kept for the round-by-round ratios
    assert all(r["stats"]["count"] == 4 and len(r["round_p50_ms"]) == 2 for r in report["rows"])
    int8 = next(r for r in report["rows"] if r["precision"] == "int8")
    assert int8["file"] == "ensemble.int8-cpu.onnx"  # the CPU's own int8 file
    assert int8["gflop_per_slice"] > 0 and 0 < int8["share_of_peak"]
    skipped = {(s["backend"], s.get("precision")): s["reason"] for s in report["skipped"]}
    assert "fp16 was not exported" in skipped[("onnxruntime", "fp16")]  # the fixture exports fp32 and int8


def test_report_files_are_written_and_the_json_matches_its_schema(bench):
    out, report, written = bench
    assert {p.name for p in written} == {"report.json", "report.md", "latency_distribution.png",
                                         "throughput_by_batch.png"}
    stored = json.loads((out / "report.json").read_text())
    assert rp.schema_problems(stored) == []
    assert len(stored["samples"]) == len(stored["rows"])
    text = (out / "report.md").read_text()
    assert "| pytorch | fp32 | ensemble | compute | 1 |" in text and "## Conventions" in text
    assert "x PyTorch eager FP32 (rounds " in text
    assert "x the latency without TTA" in text  # what flip TTA costs, row against row
    assert "onnxruntime/int8/ensemble+flip/compute/b1" in {row_id(r) for r in report["rows"]}


def test_the_front_is_timed_again_beside_eager_three_model_ensemble(bench, short_front):
    out, report, _ = bench
    manifest = Manifest.load(short_front)
    front = report["front"]
    assert front["deployed"] == manifest.deployed and front["eager_ensemble_ms"] > 0
    assert [row["name"] for row in front["rows"]] == [row["name"] for row in manifest.deployment.front]
    for row in front["rows"]:
        assert len(row["round_ms"]) == 2  # the bench's rounds
        ratios = sorted(row["speedup_range"])
        assert row["ms_per_slice"] > 0 and ratios[0] <= row["speedup_vs_eager_ensemble"] <= ratios[1]
    text = (out / "report.md").read_text()
    assert "## The Dice-latency front, timed in this run" in text and f"**{manifest.deployed}**" in text


def test_a_folder_without_a_front_says_why(tiny_artifacts, tmp_path):
    from brainseg.bench.front import time_front

    copy = tmp_path / "old"
    shutil.copytree(tiny_artifacts, copy)
    raw = json.loads((copy / "manifest.json").read_text())
    raw.pop("deployment")
    (copy / "manifest.json").write_text(json.dumps(raw))
    result = time_front(Manifest.load(copy), np.zeros((1, 8, 8, 3), np.uint8), rounds=1, seconds=0.1,
                        progress=lambda message: None)
    assert "before the Dice-latency front" in result["skipped"]


def test_schema_problems_name_what_is_missing(bench):
    _, report, _ = bench
    broken = json.loads(json.dumps(report))
    del broken["rows"][0]["stats"]["p99_ms"]
    del broken["environment"]
    assert rp.schema_problems(broken) == ["'environment' should be dict"]
    broken["environment"] = {}
    assert rp.schema_problems(broken) == ["row 0 stats lack 'p99_ms'"]


def test_bad_options_are_one_line_errors(tiny_artifacts, tmp_path):
    with pytest.raises(ConfigError, match="unknown backend cuda"):
        BenchOptions(backends=("cuda",)).check()
    result = CliRunner().invoke(app, ["bench", "--artifacts", str(tiny_artifacts), "--out", str(tmp_path),
                                      "--batch-sizes", "1,x"])
    assert result.exit_code == 1 and "--batch-sizes must be comma-separated integers" in result.output


def test_seg_demo_tiny_runs_the_whole_pipeline(tmp_path, monkeypatch):
    monkeypatch.setenv("BRAINSEG_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    for path in ("run/report.md", "artifacts/manifest.json", "segmentation/results.csv", "bench/report.md",
                 "bench/report.json"):
        assert (out / path).is_file(), path
    assert "benchmark report" in result.output and "seg-run segmented" in result.output
    again = CliRunner().invoke(app, ["demo", "--preset", "tiny", "--out", str(out), "--no-progress"])
    assert again.exit_code == 1 and "pass --overwrite" in again.output


def test_end_to_end_runs_the_runtimes_readers_and_writer(tiny_artifacts, tmp_path):
    manifest = Manifest.load(tiny_artifacts)
    scans = runner._slice_scans(tmp_path / "slices", manifest.input, 2)
    with Segmenter(manifest, SegmenterOptions(backend="onnxruntime", precision="fp32")) as segmenter:
        runner._end_to_end(segmenter, scans, segmenter.steps, tmp_path / "out")()
    for scan in scans:  # what seg-run writes for a slice: its mask at the slice's own size, and its row
        mask = cv2.imread(str(tmp_path / "out" / "masks" / f"{scan.key}.png"), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (2 * manifest.input.height, 2 * manifest.input.width)
        assert (tmp_path / "out" / ".rows" / f"{scan.key}.json").is_file()


def test_gpu_runners_get_their_stage_times_in_the_row_and_the_report(tiny_artifacts):
    from brainseg.bench.runner import BenchResult, Candidate, _cells, _time_cells

    class StagedRunner:  # what TensorRTBackend offers besides infer
        def infer(self, batch):
            return {"probability": np.zeros((len(batch), 1, 64, 64), np.float32)}

        def infer_stages(self, batch):
            return self.infer(batch), {"h2d_ms": 0.1 * len(batch), "compute_ms": 2.0, "d2h_ms": 0.3}

    spec = Manifest.load(tiny_artifacts).input
    scans = runner._slice_scans(tiny_artifacts.parent / "staged-slices", spec, 2)
    steps = ScanSteps(spec, 0.5, PostProcessing())

    class FakeSegmenter:  # a Segmenter holding a TensorRT backend
        backend = StagedRunner()
        infer = backend.infer

    candidate = Candidate("tensorrt", "Fake GPU", "fp16", "ensemble", "ensemble.fp16.engine", FakeSegmenter(), 0.9,
                          10, steps)
    result = BenchResult()
    options = BenchOptions(iterations=2, seconds=None, batch_sizes=(2,), modes=("compute",))
    images = np.concatenate([steps.read(scan)[1] for scan in scans])
    cells = _cells(candidate, options, scans, images, tiny_artifacts.parent / "staged-out")
    _time_cells(cells, options, images, {}, result, progress=lambda message: None)
    assert result.rows[0]["gpu_stages_ms"] == {"h2d_ms": 0.2, "compute_ms": 2.0, "d2h_ms": 0.3}
    report = rp.build_report(result, artifacts=tiny_artifacts, manifest_sha256="0" * 64, environment={},
                             peaks={}, options={})
    assert "| tensorrt/fp16/ensemble/compute/b2 | 0.200 | 2.000 | 0.300 |" in rp.markdown(report)


def test_speed_ups_are_taken_round_by_round_with_their_spread():
    base = {"round_p50_ms": [10.0, 12.0, 30.0], "stats": {"p50_ms": 12.0}}  # a slow spell in round 3 ...
    row = {"round_p50_ms": [5.0, 4.0, 15.0], "stats": {"p50_ms": 5.0}}  # ... fell on both rows alike
    assert rp.round_ratio(base, row) == {"median": 2.0, "min": 2.0, "max": 3.0, "rounds": 3}
    pooled = {"stats": {"p50_ms": 8.0}}  # a report from before rounds: one ratio of the p50s
    assert rp.round_ratio(pooled, {"stats": {"p50_ms": 2.0}}) == {"median": 4.0, "min": 4.0, "max": 4.0, "rounds": 1}


def test_without_torch_the_pytorch_rows_are_listed_as_not_measured_with_the_extra(tiny_artifacts, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    skipped = []
    assert list(runner._pytorch(Manifest.load(tiny_artifacts), BenchOptions(), None, skipped)) == []
    assert skipped[0]["backend"] == "pytorch" and "brainseg[train]" in skipped[0]["reason"]
