"""Import boundaries and the command-line surface."""

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from brainseg.cli import app


def test_data_and_metrics_import_without_torch():
    # the runtime and the export reuse these modules on machines without torch
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import brainseg.metrics, brainseg.data.readers, brainseg.data.split, brainseg.data.sample, brainseg.cli\n"
        "import brainseg.data.preprocess, brainseg.runtime.pipeline, brainseg.runtime.backends\n"
        "import brainseg.runtime.onnxruntime_backend, brainseg.runtime.tensorrt_backend\n"
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_every_command_is_registered_with_its_console_script():
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("train", "sample-data", "export", "export-engine", "run", "bench", "demo"):
        assert command in result.output
    scripts = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    for script in ("seg-train", "seg-export", "seg-run", "seg-bench", "seg-demo", "seg-sample"):
        assert f'{script} = "brainseg.cli:' in scripts


def test_sample_data_command_writes_the_kaggle_layout(tmp_path):
    out = tmp_path / "sample"
    result = CliRunner().invoke(app, ["sample-data", str(out), "--patients", "2", "--slices", "3", "--size", "64"])
    assert result.exit_code == 0, result.output
    patients = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(patients) == 2
    assert len(list((out / patients[0]).glob("*_mask.tif"))) == 3
    again = CliRunner().invoke(app, ["sample-data", str(out), "--patients", "2", "--slices", "3", "--size", "64"])
    assert again.exit_code == 1 and "Traceback" not in again.output
