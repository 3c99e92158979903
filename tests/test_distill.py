"""The distilled student of `seg-train`: where it comes from, what it learns from, and when it is trained."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from brainseg.cli import app
from brainseg.data.preprocess import Normalisation
from brainseg.metrics import headline_dice, score_volumes
from brainseg.train.checkpoint import load_checkpoint, load_model
from brainseg.train.config import TrainConfig, make_config
from brainseg.train.dataset import read_run_dataset
from brainseg.train.distill import STUDENT, StudentTrainer, distill_loss, write_teacher_probabilities
from brainseg.train.distributed import DistContext
from brainseg.train.evaluate import predict_volume
from brainseg.train.loop import ModelJob
from brainseg.train.losses import dice_bce_loss
from brainseg.train.run import train_run
from brainseg.train.slices import SliceTable

MEMBERS = ("unet", "fpn", "resunet")
TINY = ["--preset", "quick", "--img-size", "64", "--batch-size", "4", "--no-progress"]


def _metrics(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _dice_lines(output):
    """The names seg-train prints a test Dice for."""
    return [line.split()[0] for line in output.splitlines() if line.startswith("  ")]


def _two_members(epochs=1, **overrides):
    return make_config("quick", models=["unet", "fpn"], epochs=epochs, img_size=64, batch_size=4, patience=99,
                       **overrides)


def test_the_student_is_written_like_a_member_and_says_what_it_is(tiny_run):
    files = {p.name for p in (tiny_run / STUDENT).iterdir()}
    assert {"best.pt", "last.pt", "config.json", "metrics.csv", "training_curve.png",
            "val_report.json", "test_report.json"} <= files
    student = load_checkpoint(tiny_run / STUDENT / "best.pt")
    unet = load_checkpoint(tiny_run / "unet" / "best.pt")
    assert set(unet) <= set(student)
    assert student["model"] == "unet" and student["model_options"] == unet["model_options"]
    assert student["role"] == "student" and student["init_from"] == "unet"
    assert student["teacher"] == {"members": list(MEMBERS), "weights": "equal mean"}
    assert student["distill_alpha"] == 0.5
    assert len(_metrics(tiny_run / STUDENT / "metrics.csv")) == make_config("quick").distill_epochs
    assert not (tiny_run / ".slices").exists(), "the teacher's file goes with the slice cache"

    model, _ = load_model(tiny_run / STUDENT / "best.pt", "unet")
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_the_report_has_a_student_row_and_the_ensemble_is_the_members_mean(tiny_run):
    report = json.loads((tiny_run / "report.json").read_text())
    for split_name in ("val", "test"):
        assert list(report[split_name]) == [*MEMBERS, "ensemble (mean)", STUDENT]
    student_test = json.loads((tiny_run / STUDENT / "test_report.json").read_text())
    assert student_test["model"] == STUDENT
    assert headline_dice(report["test"][STUDENT]) == headline_dice(student_test)

    cfg = TrainConfig.from_json(tiny_run / "config.json")
    run = json.loads((tiny_run / "run.json").read_text())
    test_ids = json.loads((tiny_run / "split.json").read_text())["test"]
    volumes = read_run_dataset(run["data"], cfg, patients=test_ids).volumes
    probabilities = {}
    for name in (*MEMBERS, STUDENT):
        model, payload = load_model(tiny_run / name / "best.pt", "unet" if name == STUDENT else name)
        norm = Normalisation.from_dict(payload["normalisation"])
        probabilities[name] = [predict_volume(model, v, img_size=64, norm=norm, device=torch.device("cpu"))
                               for v in volumes]
    members_mean = [np.mean(stack, axis=0) for stack in zip(*(probabilities[m] for m in MEMBERS), strict=True)]
    expected = headline_dice(score_volumes(volumes, members_mean, threshold=cfg.threshold))
    assert headline_dice(report["test"]["ensemble (mean)"]) == pytest.approx(expected, abs=1e-6)


def test_the_student_starts_from_the_unet_and_augments_the_teacher_like_the_masks(tiny_run, tmp_path):
    cfg = TrainConfig.from_json(tiny_run / "config.json")
    unet = load_checkpoint(tiny_run / "unet" / "best.pt")
    rng = np.random.default_rng(0)
    masks = np.zeros((8, 64, 64, 1), np.uint8)
    masks[:, 20:40, 15:35] = 1
    table = SliceTable(rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8), masks, np.ones(8, bool))
    job = ModelJob("unet", 3, table, [], Normalisation.from_dict(unet["normalisation"]), 3, 1, tmp_path / STUDENT)
    trainer = StudentTrainer(job, cfg, DistContext(0, 1, torch.device("cpu")), run_dir=tiny_run,
                             teacher_file=tmp_path / "teacher.npy")
    for key, value in unet["state_dict"].items():
        torch.testing.assert_close(trainer.model.state_dict()[key], value, msg=f"{key} is not the unet's")
    assert trainer.cfg.lr == pytest.approx(cfg.lr * cfg.distill_lr_factor) and trainer.cfg.schedule == "cosine"

    trainer.teacher = masks * 255  # a teacher that agrees with the labels must still agree after augmentation
    images, targets = trainer._inputs(np.arange(8), torch.Generator().manual_seed(3), unit_range=True)
    labels, teacher = targets.split(1, dim=1)
    assert not torch.equal(labels, torch.from_numpy(masks).permute(0, 3, 1, 2).float()), "nothing was augmented"
    torch.testing.assert_close(teacher, labels)


def test_the_student_learns_from_the_unet_not_from_scratch(tiny_run):
    unet = _metrics(tiny_run / "unet" / "metrics.csv")
    student = _metrics(tiny_run / STUDENT / "metrics.csv")
    # one epoch from a random start finds little; one epoch from the trained unet starts where it ended
    assert float(student[0]["val_dice_mean"]) > float(unet[0]["val_dice_mean"]) + 0.3
    assert float(student[0]["val_dice_mean"]) > 0.6 * max(float(r["val_dice_mean"]) for r in unet)


def _fit_logits(loss_of, shape, steps=150):
    """Free per-pixel logits that minimise `loss_of(logits)`, as probabilities."""
    logits = torch.zeros(shape, requires_grad=True)
    optimizer = torch.optim.Adam([logits], lr=0.2)
    for _ in range(steps):
        optimizer.zero_grad()
        loss_of(logits).backward()
        optimizer.step()
    return torch.sigmoid(logits.detach())


def test_the_loss_pulls_towards_the_teacher_where_it_differs_from_the_labels():
    labels = torch.zeros(2, 1, 16, 16)
    labels[:, :, 4:12, 4:12] = 1
    teacher = labels * 0.9 + 0.05
    ring = torch.zeros_like(labels, dtype=torch.bool)
    ring[:, :, 3:13, 3:13] = True
    ring &= labels == 0
    teacher[ring] = 0.6  # the ensemble's border is a pixel wider than the labels'

    like_labels = torch.logit(labels * 0.9 + 0.05).requires_grad_()
    distill_loss(like_labels, teacher, labels, alpha=0.5).backward()
    assert (like_labels.grad[ring] < 0).all(), "at the labels' answer the loss must push the ring's logits up"

    with_teacher = _fit_logits(lambda x: distill_loss(x, teacher, labels, alpha=0.5), labels.shape)
    labels_only = _fit_logits(lambda x: dice_bce_loss(x, labels), labels.shape)
    assert labels_only[ring].max() < 0.05
    assert (with_teacher[ring] > 0.1).all() and (with_teacher[ring] < 0.6).all(), "between the labels and the teacher"
    assert (with_teacher[labels == 1] > 0.9).all()

    torch.testing.assert_close(distill_loss(like_labels, teacher, labels, alpha=0.0),
                               dice_bce_loss(like_labels, labels))
    torch.testing.assert_close(distill_loss(like_labels, teacher, labels, alpha=1.0),
                               F.binary_cross_entropy_with_logits(like_labels, teacher))


def test_the_teacher_is_the_members_mean_probability_in_8_bits(tmp_path):
    from brainseg.train.models.registry import build_model

    torch.manual_seed(0)
    members = [build_model("unet", in_channels=3, classes=1, options={"base_channels": 4}) for _ in range(2)]
    images = np.random.default_rng(1).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    table = SliceTable(images, np.zeros((5, 32, 32, 1), np.uint8), np.zeros(5, bool))
    norm = Normalisation("uint8")
    write_teacher_probabilities(members, table, norm, tmp_path / "t.npy", device=torch.device("cpu"), batch_size=2,
                                autocast_dtype=None)
    stored = np.load(tmp_path / "t.npy")
    from brainseg.train.network_input import standardise, to_unit

    with torch.no_grad():
        x = standardise(to_unit(torch.from_numpy(images).permute(0, 3, 1, 2), norm), norm)
        mean = torch.stack([torch.sigmoid(m.eval()(x)) for m in members]).mean(0).permute(0, 2, 3, 1).numpy()
    assert stored.dtype == np.uint8 and stored.shape == (5, 32, 32, 1)
    assert np.abs(stored / 255 - mean).max() <= 0.5 / 255 + 1e-6
    assert stored.std() > 0, "the members' answers vary over the slices"


def test_no_student_without_distill_or_with_one_member(tiny_sample, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(tiny_sample), "--out", str(tmp_path / "off"),
                                      "--models", "unet,fpn", "--epochs", "1", "--no-distill", *TINY])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "off" / STUDENT).exists()
    assert STUDENT not in _dice_lines(result.output)
    assert STUDENT not in json.loads((tmp_path / "off" / "report.json").read_text())["test"]
    assert json.loads((tmp_path / "off" / "config.json").read_text())["distill"] is False

    one = train_run(data=str(tiny_sample), out=tmp_path / "one", progress=False,
                    cfg=make_config("quick", models=["unet"], epochs=1, img_size=64, batch_size=4))
    assert one.test_dice and STUDENT not in one.test_dice and not (tmp_path / "one" / STUDENT).exists()


def test_resume_continues_a_killed_student_and_leaves_a_finished_one(tiny_sample, tmp_path, monkeypatch):
    cfg = _two_members(distill_epochs=2)
    train_run(data=str(tiny_sample), out=tmp_path / "straight", cfg=cfg, progress=False)

    original = StudentTrainer._train_epoch

    def crash_in_second_epoch(self, epoch, on_step):
        if epoch == 1:
            raise KeyboardInterrupt("killed mid-epoch")
        return original(self, epoch, on_step)

    monkeypatch.setattr(StudentTrainer, "_train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train_run(data=str(tiny_sample), out=tmp_path / "crashed", cfg=cfg, progress=False)
    last = tmp_path / "crashed" / STUDENT / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1
    monkeypatch.setattr(StudentTrainer, "_train_epoch", original)

    train_run(data=str(tiny_sample), out=tmp_path / "crashed", cfg=cfg, resume=True, progress=False)
    resumed, straight = load_checkpoint(last), load_checkpoint(tmp_path / "straight" / STUDENT / "last.pt")
    assert [row["epoch"] for row in resumed["history"]] == [1, 2]
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(resumed["state_dict"][key], value, msg=f"{key} differs after resume")

    written = last.stat().st_mtime_ns
    again = train_run(data=str(tiny_sample), out=tmp_path / "crashed", cfg=cfg, resume=True, progress=False)
    assert last.stat().st_mtime_ns == written, "a finished student was trained again"
    assert load_checkpoint(last)["history"] == resumed["history"]
    assert STUDENT in again.test_dice


@pytest.mark.slow
def test_two_process_ddp_trains_the_student_for_its_own_epochs(tiny_sample, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "brainseg", "train", "--data", str(tiny_sample), "--out", str(out),
               "--models", "unet,fpn", "--epochs", "1", "--distill-epochs", "2", *TINY]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [row["epoch"] for row in load_checkpoint(out / STUDENT / "last.pt")["history"]] == [1, 2]
    assert STUDENT in _dice_lines(done.stdout)
    assert STUDENT in json.loads((out / "report.json").read_text())["test"]
    assert not (out / ".slices").exists()
