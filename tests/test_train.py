"""Training end to end on tiny data: the CLI, resume after a crash, and two DDP processes."""

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from brainseg.cli import app
from brainseg.train import loop
from brainseg.train.checkpoint import load_checkpoint
from brainseg.train.config import make_config
from brainseg.train.run import train_run

TINY = ["--preset", "quick", "--img-size", "64", "--batch-size", "4", "--no-progress"]


def test_cli_smoke_train_writes_everything(tiny_sample, tmp_path):
    """Also the intensity options that are not the defaults (the fixtures train with the defaults)."""
    out = tmp_path / "run"
    options = ["--intensity-augment", "curves", "--normalisation", "slice_quartiles"]
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_sample), "--out", str(out), "--epochs", "1",
                                      *options, *TINY])
    assert result.exit_code == 0, result.output
    for name in ("unet", "fpn", "resunet"):
        files = {p.name for p in (out / name).iterdir()}
        assert {"best.pt", "last.pt", "config.json", "metrics.csv", "training_curve.png",
                "val_report.json", "test_report.json"} <= files
        payload = load_checkpoint(out / name / "best.pt", expect_model=name)
        assert payload["img_size"] == 64 and payload["normalisation"]["kind"] == "uint8"
        assert payload["normalisation"]["scheme"] == "slice_quartiles"
        config = json.loads((out / name / "config.json").read_text())
        assert (config["intensity_augment"], config["normalisation"]) == ("curves", "slice_quartiles")
        report = json.loads((out / name / "val_report.json").read_text())
        assert 0.0 <= report["regions"]["tumour"]["dice"]["mean"] <= 1.0
    split = json.loads((out / "split.json").read_text())
    assert not set(split["train"]) & (set(split["val"]) | set(split["test"]))
    assert "ensemble (mean)" in json.loads((out / "report.json").read_text())["test"]
    assert "held-out patients" in result.output


def test_cli_refuses_a_used_run_folder_in_one_line(tiny_sample, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "x").write_text("")
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_sample), "--out", str(tmp_path / "run"), *TINY])
    assert result.exit_code == 1
    assert "already holds a run; pass --resume" in result.output
    assert "Traceback" not in result.output


def test_cli_bad_data_folder_is_one_line_error(tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), *TINY])
    assert result.exit_code == 1
    assert "nope" in result.output and "Traceback" not in result.output


def _cfg(epochs):
    return make_config("quick", models=["unet"], epochs=epochs, img_size=64, batch_size=4, patience=99)


def test_resume_after_a_crash_loses_at_most_one_epoch(tiny_sample, tmp_path, monkeypatch):
    train_run(data=str(tiny_sample), out=tmp_path / "straight", cfg=_cfg(3), progress=False)

    original = loop.Trainer._train_epoch

    def crash_in_second_epoch(self, epoch, on_step):
        if epoch == 1:
            raise KeyboardInterrupt("killed mid-epoch")
        return original(self, epoch, on_step)

    monkeypatch.setattr(loop.Trainer, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(data=str(tiny_sample), out=tmp_path / "crashed", cfg=_cfg(3), progress=False)
    assert load_checkpoint(tmp_path / "crashed" / "unet" / "last.pt")["epoch"] == 1
    monkeypatch.setattr(loop.Trainer, "_train_epoch", original)

    train_run(data=str(tiny_sample), out=tmp_path / "crashed", cfg=_cfg(3), resume=True, progress=False)
    resumed = load_checkpoint(tmp_path / "crashed" / "unet" / "last.pt")
    straight = load_checkpoint(tmp_path / "straight" / "unet" / "last.pt")
    assert [row["epoch"] for row in resumed["history"]] == [1, 2, 3]
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=f"{key} differs after resume")


def test_resume_without_a_run_is_an_error(tiny_sample, tmp_path):
    from brainseg.errors import ConfigError

    with pytest.raises(ConfigError, match="nothing to resume"):
        train_run(data=str(tiny_sample), out=tmp_path / "none", cfg=_cfg(1), resume=True, progress=False)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tiny_sample, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "brainseg", "train", "--data", str(tiny_sample), "--out", str(out),
               "--models", "unet", "--epochs", "2", *TINY]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    history = load_checkpoint(out / "unet" / "last.pt")["history"]
    assert [row["epoch"] for row in history] == [1, 2]


def test_brats_regions_train_three_channels_with_hd95_in_mm(tmp_path):
    from data_files import make_brats

    root = make_brats(tmp_path / "brats", cases=5)
    cfg = make_config("quick", models=["unet"], epochs=1, img_size=32, batch_size=2, target="brats-regions",
                      val_fraction=0.2, test_fraction=0.2)
    train_run(data=str(root), out=tmp_path / "run", cfg=cfg, progress=False)
    payload = load_checkpoint(tmp_path / "run" / "unet" / "best.pt")
    assert (payload["in_channels"], payload["classes"]) == (4, 3)
    assert payload["normalisation"]["kind"] == "float"
    report = json.loads((tmp_path / "run" / "unet" / "test_report.json").read_text())
    assert set(report["regions"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["layout"] == "brats" and run["sets"]["test"]["patients"] == 1
