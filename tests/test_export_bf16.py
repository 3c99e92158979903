"""bf16 as a gated precision: refused where the CPU cannot run it, scored and gated where it can, and
offered by seg-run only on OpenVINO with native bf16.

This CPU may lack native bf16 (OpenVINO then quietly computes in f32, which the backend refuses to
label bf16), so the export's scoring step is also run with a stand-in for the bf16 predictor: the
fp32 file through ONNX Runtime, faithful or made to miss the tumour, to check the gate and what the
manifest records. Where the CPU has native bf16, the real export runs it (the last test).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from brainseg.artifacts.manifest import Manifest
from brainseg.errors import ConfigError
from brainseg.export import openvino_rows
from brainseg.export.pipeline import ExportOptions, export_run
from brainseg.runtime.backends import choose_precision

pytest.importorskip("onnxruntime")
openvino = pytest.importorskip("openvino", reason="needs the openvino extra")

from brainseg.runtime.backends.openvino import native_bf16  # noqa: E402

NATIVE = native_bf16()


def _stand_in(path, *, miss: bool = False):
    """The fp32 file on ONNX Runtime, as the bf16 predictor would run it; `miss`: no tumour anywhere."""
    from brainseg.artifacts.sessions import ort_session, run

    session = ort_session(path)

    def predict(images: np.ndarray) -> np.ndarray:
        probability = run(session, {"image": images})["probability"]
        return np.zeros_like(probability) if miss else probability

    return predict


@pytest.mark.skipif(NATIVE, reason="this CPU has native bf16: --bf16 is not refused here")
def test_bf16_is_refused_before_any_work_on_a_cpu_without_it(tmp_path):
    # the run folder does not even exist: the refusal comes first, naming what is missing
    with pytest.raises(ConfigError, match="--bf16 needs a CPU with native bf16"):
        export_run(tmp_path / "no-such-run", tmp_path / "out", ExportOptions(bf16=True))
    assert not (tmp_path / "out").exists()


def test_without_openvino_bf16_names_the_extra(tmp_path):
    script = ("import sys; sys.modules['openvino'] = None\n"
              "from brainseg.export import openvino_rows\n"
              "try:\n    openvino_rows.check_request(True)\n"
              "except Exception as err:\n    print(type(err).__name__, err)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.startswith("ConfigError --bf16 runs the fp32 file on OpenVINO") and "brainseg[openvino]" \
        in done.stdout


@pytest.mark.parametrize("miss", [False, True], ids=["faithful", "off"])
def test_bf16_is_scored_through_the_gate_and_recorded(tiny_run, tmp_path, monkeypatch, miss):
    real = openvino_rows.predictor
    monkeypatch.setattr(openvino_rows, "check_request", lambda asked: None)  # as on a CPU with native bf16
    monkeypatch.setattr(openvino_rows, "predictor", lambda path, precision: _stand_in(path, miss=miss)
                        if precision == "bf16" else real(path, precision))
    result = export_run(tiny_run, tmp_path / "art", ExportOptions(bf16=True, deploy="ensemble"))  # front untimed
    assert "bf16" in result.table and "bf16" in result.test_table
    assert result.table["bf16"]["passed"] is (not miss)
    assert ("bf16" in result.failed) is miss
    manifest = Manifest.load(tmp_path / "art")
    entry = json.loads(manifest.path.read_text())["precisions"]["bf16"]
    assert entry["targets"] == {"cpu": {"file": "ensemble.fp32.onnx", "row": "bf16", "openvino_row": "bf16"}}
    assert (entry["compute"], entry["passed"]) == ("bf16", not miss)
    assert manifest.openvino_passed("bf16") is (not miss)
    if miss:  # failed: never offered, even where bf16 runs
        assert choose_precision(manifest, None, target="cpu", bf16=True) == "fp32"
        with pytest.raises(ConfigError, match="bf16 failed the export's accuracy gate"):
            choose_precision(manifest, "bf16", target="cpu", bf16=True)
    else:  # passed: OpenVINO with native bf16 prefers it to fp32 (there is no int8 here); nothing else runs it
        assert choose_precision(manifest, None, target="cpu", bf16=True) == "bf16"
        assert choose_precision(manifest, None, target="cpu", bf16=True, openvino=True) == "bf16"
        assert choose_precision(manifest, None, target="cpu") == "fp32"
        assert choose_precision(manifest, None, target="gpu") == "fp32"
        with pytest.raises(ConfigError, match="runs only on OpenVINO"):
            choose_precision(manifest, "bf16", target="cpu")
    assert "| bf16 |" in (tmp_path / "art" / "accuracy.md").read_text()


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (AVX512-BF16 or AMX): bf16 cannot run here")
def test_the_real_bf16_export_on_a_cpu_with_native_bf16(tiny_run, tmp_path):
    result = export_run(tiny_run, tmp_path / "art", ExportOptions(bf16=True, max_dice_drop=0.02))
    assert "bf16" in result.table and result.table["bf16"]["dice_mean"] > 0
    manifest = Manifest.load(tmp_path / "art")
    assert manifest.has_file("bf16", "cpu") and not manifest.has_file("bf16", "gpu")
