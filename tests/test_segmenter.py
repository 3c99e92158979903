"""The Segmenter: one way for every command to open and run an artifacts folder."""

from __future__ import annotations

import ast
import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from brainseg.artifacts.manifest import Manifest
from brainseg.errors import ConfigError
from brainseg.runtime import backends
from brainseg.runtime.batch.plan import RunOptions
from brainseg.runtime.segmenter import Segmenter, SegmenterOptions

pytest.importorskip("onnxruntime")

# the command modules that run an export: seg-run, its Ray path, seg-eval, seg-serve, seg-bench
COMMANDS = ("brainseg.runtime.batch.pipeline", "brainseg.runtime.batch.ray_run", "brainseg.evaluation.evaluate",
            "brainseg.serve.core", "brainseg.bench.runner")
# what opens or wraps a backend: only the Segmenter may import these
BACKEND_MODULES = ("brainseg.runtime.backends.tta", "brainseg.runtime.backends.onnxruntime",
                   "brainseg.runtime.backends.openvino", "brainseg.runtime.backends.tensorrt")


def _imports(module: str) -> dict[str, set[str]]:
    """{imported module: names imported from it} of `module`'s source, at any depth (lazy imports too)."""
    tree = ast.parse(Path(importlib.util.find_spec(module).origin).read_text())
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.setdefault(node.module, set()).update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found.setdefault(alias.name, set())
    return found


@pytest.mark.parametrize("module", COMMANDS)
def test_each_command_reaches_the_backend_only_through_the_segmenter(module):
    imports = _imports(module)
    assert set(imports) & set(BACKEND_MODULES) == set(), f"{module} opens or wraps a backend itself"
    assert "open_backend" not in imports.get("brainseg.runtime.backends", set())
    assert "open_file" not in imports.get("brainseg.runtime.backends", set())
    segmenter_names = imports.get("brainseg.runtime.segmenter", set()) | \
        imports.get("brainseg.runtime.batch.plan", set())
    assert segmenter_names & {"Segmenter", "SegmenterOptions", "RunOptions", "RunPlan"}, f"{module} holds no Segmenter"


def test_nothing_but_the_segmenter_opens_a_backend():
    package = Path(importlib.util.find_spec("brainseg").origin).parent
    callers = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                     if "open_backend(" in path.read_text() or "FlipTTA(" in path.read_text())
    assert callers == ["runtime/backends/__init__.py", "runtime/segmenter.py"]


def test_options_out_of_their_choices_are_one_line_errors(tiny_artifacts):
    for options, message in ((SegmenterOptions(tta="mirror"), "--tta must be one of auto, none, flip"),
                             (SegmenterOptions(components="biggest"), "--components must be one of"),
                             (SegmenterOptions(precision="fp8"), "--precision must be one of fp32, fp16, int8, bf16"),
                             (SegmenterOptions(batch_size=0), "--batch-size must be at least 1, got 0"),
                             (SegmenterOptions(threads=0), "--threads must be at least 1, got 0")):
        with pytest.raises(ConfigError, match=message):
            Segmenter(tiny_artifacts, options)


def test_predict_is_infer_in_batches_finished_at_the_scans_size(tiny_artifacts):
    with Segmenter(tiny_artifacts, SegmenterOptions(threads=1, batch_size=2)) as segmenter:
        spec = segmenter.spec
        rng = np.random.default_rng(1)
        image = rng.integers(0, 256, (5, 2 * spec.height, 2 * spec.width, spec.channels), dtype=np.uint8)
        prediction = segmenter.predict(image)
        at_graph = segmenter.steps.to_graph_size(image)
        whole = {name: np.concatenate([segmenter.infer(at_graph[i:i + 2])[name] for i in range(0, 5, 2)])
                 for name in ("probability", "mask", "disagreement")}
        expected = segmenter.steps.finish(whole, image.shape[1:3])
    assert prediction.mask.shape == (5, 2 * spec.height, 2 * spec.width, 1)
    np.testing.assert_array_equal(prediction.mask, expected.mask)
    np.testing.assert_allclose(prediction.probability, expected.probability, atol=1e-6)


def test_arrays_returned_are_the_callers_a_second_call_leaves_them_alone(tiny_artifacts):
    with Segmenter(tiny_artifacts, SegmenterOptions(threads=1, tta="flip")) as segmenter:
        spec = segmenter.spec
        rng = np.random.default_rng(2)
        first_batch, second_batch = (rng.integers(0, 256, (2, *spec.size, spec.channels), dtype=np.uint8)
                                     for _ in range(2))
        first = segmenter.infer(first_batch)
        kept = {name: array.copy() for name, array in first.items()}
        second = segmenter.infer(second_batch)
    assert not np.array_equal(second["probability"], kept["probability"]), "vacuous: both calls gave the same"
    for name, array in first.items():
        np.testing.assert_array_equal(array, kept[name], err_msg=f"{name} was overwritten by the next call")


def _cpu_int8_only(tiny_artifacts: Path, folder: Path) -> Path:
    """tiny_artifacts as `seg-export --int8-activations uint8` writes it: the int8 CPU file alone."""
    shutil.copytree(tiny_artifacts, folder)
    raw = json.loads((folder / "manifest.json").read_text())
    gpu_file = raw["precisions"]["int8"]["targets"].pop("gpu")["file"]
    raw["files"].pop(gpu_file)
    (folder / gpu_file).unlink()
    (folder / "manifest.json").write_text(json.dumps(raw))
    return folder


def test_int8_on_a_folder_with_only_the_cpu_file_runs_on_the_cpu(tiny_artifacts, tmp_path, monkeypatch):
    folder = _cpu_int8_only(tiny_artifacts, tmp_path / "uint8-only")
    with Segmenter(folder, SegmenterOptions(precision="int8", threads=1)) as segmenter:
        assert (segmenter.precision, segmenter.choice.file) == ("int8", "ensemble.int8-cpu.onnx")
    # where TensorRT is installed too, auto passes over it (no GPU file) instead of failing
    monkeypatch.setattr(backends, "tensorrt_present", lambda: True)
    with Segmenter(folder, SegmenterOptions(precision="int8", threads=1)) as segmenter:
        assert segmenter.choice.file == "ensemble.int8-cpu.onnx" and segmenter.choice.backend != "tensorrt"
    with pytest.raises(ConfigError, match="int8 has no gpu file"):
        Segmenter(folder, SegmenterOptions(backend="tensorrt", precision="int8"))


def test_seg_bench_end_to_end_rows_open_the_session_seg_run_opens(tiny_artifacts):
    from brainseg.bench.runner import BenchOptions, _candidates

    manifest = Manifest.load(tiny_artifacts)
    options = BenchOptions(backends=("onnxruntime",), precisions=("int8",), tta=("none",), members=False)
    (candidate,) = list(_candidates(manifest, options, []))
    with Segmenter(manifest, RunOptions(backend="onnxruntime", precision="int8", tta="none")) as seg_run:
        bench, run = candidate.runner.backend.session, seg_run.backend.session
        try:
            for entry in ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning"):
                assert bench.get_session_options().get_session_config_entry(entry) == \
                    run.get_session_options().get_session_config_entry(entry), entry
            assert bench.get_session_options().intra_op_num_threads == run.get_session_options().intra_op_num_threads
            assert (bench.get_providers(), candidate.file) == (run.get_providers(), seg_run.choice.file)
        finally:
            candidate.runner.close()


def test_describe_says_what_runs_and_why(tiny_artifacts):
    with Segmenter(tiny_artifacts, SegmenterOptions(backend="onnxruntime", precision="fp32", tta="flip")) as segmenter:
        described = segmenter.describe()
    assert (described["backend"], described["precision"], described["file"]) == \
        ("onnxruntime", "fp32", "ensemble.fp32.onnx")
    assert described["tta"] == "flip" and "ONNX Runtime with CPUExecutionProvider" in described["reason"]
