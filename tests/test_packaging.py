"""Import boundaries and the command-line surface, as installed."""

import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from brainseg.cli import app

PACKAGE = Path(__file__).parents[1] / "brainseg"
SCRIPTS = {"seg-train": "--data", "seg-sample": "--patients", "seg-export": "--int8", "seg-run": "--artifacts",
           "seg-bench": "--batch-sizes", "seg-demo": "--preset", "seg-eval": "--split"}


def test_the_runtime_imports_neither_torch_nor_export():
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['brainseg.export'] = None\n"
        "import brainseg.runtime, brainseg.runtime.batch.pipeline, brainseg.runtime.backends\n"
        "import brainseg.runtime.backends.onnxruntime, brainseg.runtime.backends.tensorrt\n"
        "import brainseg.artifacts.manifest, brainseg.runtime.segmenter, brainseg.runtime.batch.ray_run\n"
        "import brainseg.metrics, brainseg.data.readers, brainseg.data.split, brainseg.data.synthetic.sample\n"
        "import brainseg.postprocess, brainseg.runtime.backends.tta, brainseg.evaluation.evaluate\n"
        "import brainseg.evaluation.report, brainseg.serve.core, brainseg.deploy.triton, brainseg.cli\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("package", ["runtime", "artifacts"])
def test_no_runtime_or_artifacts_module_imports_export_or_torch(package):
    """Read every import statement, lazy ones inside functions included."""
    for path in sorted((PACKAGE / package).glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.startswith(("brainseg.export", "torch"))]
            assert not bad, f"{path.name}:{node.lineno} imports {bad}"


def _console_scripts() -> dict:
    entry_points = importlib.metadata.distribution("brainseg").entry_points
    return {ep.name: ep for ep in entry_points if ep.group == "console_scripts"}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_console_script_runs_its_command(script, monkeypatch, capsys):
    entry = _console_scripts()[script].load()
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as done:
        entry()
    assert done.value.code == 0
    assert SCRIPTS[script] in capsys.readouterr().out


def test_seg_export_engine_dispatches_to_the_engine_command(monkeypatch, capsys):
    entry = _console_scripts()["seg-export"].load()
    monkeypatch.setattr(sys, "argv", ["seg-export", "engine", "--help"])
    with pytest.raises(SystemExit) as done:
        entry()
    assert done.value.code == 0
    text = capsys.readouterr().out
    assert "seg-export engine" in text and "TensorRT engine" in text and "--workspace-gib" in text


def test_the_brainseg_command_lists_every_subcommand():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "sample-data", "export", "export-engine", "run", "bench", "demo"):
        assert command in result.output


def test_sample_data_command_writes_the_kaggle_layout(tmp_path):
    out = tmp_path / "sample"
    result = CliRunner().invoke(app, ["sample-data", str(out), "--patients", "2", "--slices", "3", "--size", "64"])
    assert result.exit_code == 0, result.output
    patients = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(patients) == 2
    assert len(list((out / patients[0]).glob("*_mask.tif"))) == 3
    again = CliRunner().invoke(app, ["sample-data", str(out), "--patients", "2", "--slices", "3", "--size", "64"])
    assert again.exit_code == 1 and "Traceback" not in again.output
