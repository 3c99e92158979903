"""benchmarks/gpu_check.py, the one-shot GPU check, proved on the CPU before it ever meets a GPU.

The torch parts run here at 32 px with the tiny preset's models and a few calls; the cuda-plumbing
part drives the real TensorRTBackend through the fake CUDA runtime of tests/tensorrt_standins.py,
with numpy standing in for its CuPy kernel, and runs for real only where CUDA and CuPy exist.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tensorrt_standins import FakeCudart
from test_runtime_tensorrt_gpu import real_cudart_or_skip

from brainseg.artifacts import cuda

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
TINY = ["--device", "cpu", "--preset", "tiny", "--sizes", "32", "--batch", "2", "--warmup", "0", "--iterations", "2",
        "--throughput-iterations", "1"]


@pytest.fixture
def gpu_check(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("gpu_check")


def run_part(gpu_check, out: Path, part: str, *options: str) -> tuple[int, dict]:
    code = gpu_check.main(["--part", part, "--out", str(out), *options])
    return code, json.loads((out / f"{part}.json").read_text())


def test_torch_latency_on_the_cpu_writes_every_number_and_says_what_it_skipped(gpu_check, tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    code, result = run_part(gpu_check, tmp_path, "torch-latency", *TINY, "--modes", "eager,cuda-graph")
    assert code == 0 and result["status"] == "partial" and result["error"] is None
    assert result["members"] == ["unet", "fpn", "resunet"]
    assert result["skipped"] == {f"32px {p} cuda-graph": "CUDA graphs need a CUDA device" for p in ("fp32", "fp16")}
    assert [(row["precision"], row["mode"], row["size"]) for row in result["rows"]] == [
        ("fp32", "eager", 32), ("fp16", "eager", 32)]
    for row in result["rows"]:
        assert row["batch1"]["calls"] == 2 and 0 < row["batch1"]["median_ms"] <= row["batch1"]["p90_ms"]
        assert row["batch2"]["calls"] == 1 and row["batch2"]["slices_per_s"] > 0
    assert result["environment"]["device"] == "cpu" and result["seconds"] > 0


def test_without_smp_and_opencv_the_latency_part_times_the_unet_alone_and_says_why(tmp_path):
    """A fresh process where neither imports, as on a bare GPU machine."""
    argv = ["--part", "torch-latency", "--out", str(tmp_path), *TINY, "--precisions", "fp32"]
    code = (f"import sys; sys.modules['cv2'] = sys.modules['segmentation_models_pytorch'] = None; "
            f"sys.path.insert(0, {str(BENCHMARKS)!r}); import gpu_check; sys.exit(gpu_check.main({argv!r}))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "torch-latency.json").read_text())
    assert result["status"] == "partial" and result["environment"]["opencv"].startswith("not importable")
    assert result["members"] == ["unet"] and len(result["rows"]) == 1 and "batch1" in result["rows"][0]
    assert set(result["skipped"]) == {"fpn", "resunet"}
    assert all("segmentation-models-pytorch" in reason for reason in result["skipped"].values())


def test_train_epoch_on_the_cpu_times_each_model(gpu_check, tmp_path):
    pytest.importorskip("segmentation_models_pytorch")
    code, result = run_part(gpu_check, tmp_path, "train-epoch", "--device", "cpu", "--preset", "tiny",
                            "--train-size", "32", "--train-batch", "2", "--train-slices", "2", "--amp", "off")
    assert code == 0 and result["status"] == "partial"
    assert result["skipped"] == {"peak GPU memory": "no CUDA device: --device cpu"}
    assert [row["model"] for row in result["rows"]] == ["unet", "fpn", "resunet"]
    for row in result["rows"]:
        assert row["steps"] == 1 and row["batch_size"] == 2 and row["size"] == 32
        assert row["seconds_per_epoch"] > 0 and row["images_per_s"] > 0
        assert row["peak_gpu_memory_allocated_mib"] is None and row["grad_scaler"] is False


def test_synthetic_slices_have_tumour_on_every_other_slice(gpu_check):
    images, masks = gpu_check.synthetic_slices(4, 32)
    assert images.shape == (4, 32, 32, 3) and images.dtype == np.uint8 and masks.shape == (4, 32, 32, 1)
    assert masks.reshape(4, -1).any(axis=1).tolist() == [True, False, True, False]


def test_a_part_that_did_not_finish_keeps_its_rows_and_says_why(tmp_path):
    (tmp_path / "torch-latency.json").write_text(json.dumps({"part": "torch-latency", "status": "running",
                                                             "rows": [{"size": 128}], "skipped": {}}))
    (tmp_path / "train-epoch.json").write_text(json.dumps({"part": "train-epoch", "status": "failed", "rows": []}))
    script = str(BENCHMARKS / "gpu_check.py")
    for part, code in (("torch-latency", 124), ("cuda-plumbing", 139), ("train-epoch", 1)):
        done = subprocess.run([sys.executable, script, "--part", part, "--out", str(tmp_path), "--mark-unfinished",
                               str(code)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    latency, plumbing, train = (json.loads((tmp_path / f"{part}.json").read_text())
                                for part in ("torch-latency", "cuda-plumbing", "train-epoch"))
    assert latency["status"] == "timed_out" and latency["rows"] == [{"size": 128}] and "124" in latency["error"]
    assert plumbing["status"] == "crashed" and "cuda-plumbing.log" in plumbing["error"]
    assert train["status"] == "failed"  # it finished and said why: left as it was


def test_gpu_check_writes_where_seg_bench_writes_for_the_same_gpu(gpu_check, monkeypatch):
    from brainseg.bench import environment

    for name, folder in (("NVIDIA H200", "gpu-h200"), ("NVIDIA H100 80GB HBM3", "gpu-h100-80gb-hbm3"),
                         ("Orin (nvgpu)", "gpu-orin-nvgpu"), ("???", "gpu-unknown")):
        monkeypatch.setattr(environment, "_nvidia_gpus", lambda name=name: [{"name": name}])
        assert gpu_check.gpu_slug(name) == environment.machine_name() == folder


# --- cuda-plumbing --------------------------------------------------------------------------------------


def numpy_engine(cudart: FakeCudart, reference, *, wrong: bool = False):
    """make_launcher for the fake runtime: the engine's work, queued on its stream, in numpy."""

    def make(slice_shape, device):
        def launch(stream, addresses, batch):
            def work():
                image = cudart.device[addresses["image"]][: batch * int(np.prod(slice_shape))]
                for name, value in reference(image.reshape(batch, *slice_shape)).items():
                    value = value + 1 if wrong and name == "probability" else value
                    cudart.device[addresses[name]][: value.nbytes] = value.reshape(-1).view(np.uint8)
                cudart.clock += 0.5 * batch  # the fake GPU's clock: 0.5 ms per slice

            cudart.enqueue(stream, work)

        return launch

    return make


@pytest.fixture
def plumbing(gpu_check):
    return importlib.import_module("gpu_check_plumbing")


def plumbing_args(gpu_check, tmp_path):
    return gpu_check.parse_args(["--part", "cuda-plumbing", "--out", str(tmp_path), "--sizes", "8,16",
                                 "--plumbing-batches", "1,2,4", "--plumbing-reps", "3"])


def test_cuda_plumbing_runs_the_tensorrt_backend_and_checks_its_outputs(gpu_check, plumbing, tmp_path, monkeypatch):
    cudart = FakeCudart()
    monkeypatch.setattr(cuda, "import_cudart", lambda: cudart)
    args = plumbing_args(gpu_check, tmp_path)
    record = gpu_check.PartRecord(tmp_path, "cuda-plumbing", {}, 1e9)
    plumbing.cuda_plumbing(args, record, make_launcher=numpy_engine(cudart, plumbing.reference_outputs))
    assert record.finish(None) == 0
    result = json.loads((tmp_path / "cuda-plumbing.json").read_text())
    assert result["status"] == "ok" and result["backend"]["tensorrt_version"] == plumbing.STANDIN_VERSION
    assert result["backend"]["device"] == "Fake GPU"
    rows = {(row["size"], row["batch"], row["cuda_graph"]): row for row in result["rows"]}
    assert set(rows) == {(size, batch, False) for size in (8, 16) for batch in (1, 2, 4)} | {
        (size, batch, True) for size in (8, 16) for batch in (1, 4)}
    staged = rows[(16, 4, False)]
    assert staged["checked_calls"] == 6 and staged["bytes_in"] == 4 * 16 * 16 * 3
    assert min(staged["h2d_ms"], staged["compute_ms"], staged["d2h_ms"]) > 0 and staged["h2d_gb_per_s"] > 0
    assert "h2d_ms" not in rows[(16, 4, True)]
    assert not cudart.live()  # every buffer, stream, graph and event freed
    assert "cudaGraphLaunch" in cudart.calls and "tensorrt" not in sys.modules


def test_cuda_plumbing_fails_when_an_output_is_wrong(gpu_check, plumbing, tmp_path, monkeypatch):
    cudart = FakeCudart()
    monkeypatch.setattr(cuda, "import_cudart", lambda: cudart)
    record = gpu_check.PartRecord(tmp_path, "cuda-plumbing", {}, 1e9)
    with pytest.raises(AssertionError, match="probability differs from numpy at batch 1"):
        plumbing.cuda_plumbing(plumbing_args(gpu_check, tmp_path), record,
                               make_launcher=numpy_engine(cudart, plumbing.reference_outputs, wrong=True))
    assert not cudart.live()


def test_cuda_plumbing_on_a_real_gpu(gpu_check, tmp_path):
    pytest.importorskip("cupy", reason="CuPy is not installed here; the cuda-plumbing part runs on a GPU machine")
    real_cudart_or_skip()
    code, result = run_part(gpu_check, tmp_path, "cuda-plumbing", "--sizes", "32", "--plumbing-batches", "1,2",
                            "--plumbing-reps", "3")
    assert code == 0 and result["status"] == "ok", result.get("error")
    assert len(result["rows"]) == 4 and all(row["infer_wall_ms_median"] > 0 for row in result["rows"])
