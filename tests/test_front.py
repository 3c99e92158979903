"""The Dice-latency front: candidates, their weights and scores, the rule that picks what ships, and an
export that ships it (issue 21)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brainseg.data.volume import Volume
from brainseg.errors import ConfigError
from brainseg.export.front import FLIP, Candidate, FrontSettings, pick, score_candidates


def _volume(pid: str, rng: np.random.Generator) -> Volume:
    mask = np.zeros((4, 16, 16, 1), np.uint8)
    mask[1:3, 4:12, 3:9] = 1  # off-centre, so a left-right flip moves it
    image = rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8)
    return Volume(pid, image, mask, [f"{pid}_{i}" for i in range(4)])


def _probs(volumes: list[Volume], *, noise: float, seed: int) -> dict[str, list[np.ndarray]]:
    """A network that is the truth plus noise; its "flip" run is a little noisier."""
    rng = np.random.default_rng(seed)
    plain = [np.clip(v.mask.astype(np.float32) + rng.normal(0, noise, v.mask.shape), 0, 1).astype(np.float32)
             for v in volumes]
    flipped = [np.clip(p + rng.normal(0, noise, p.shape), 0, 1).astype(np.float32) for p in plain]
    return {"none": plain, "flip": flipped}


@pytest.fixture(scope="module")
def scored():
    rng = np.random.default_rng(0)
    val = [_volume(f"v{i}", rng) for i in range(3)]
    test = [_volume(f"t{i}", rng) for i in range(2)]
    noises = {"good": 0.05, "fair": 0.45, "poor": 0.7, "student": 0.1}
    probs = {split: {name: _probs(vols, noise=n, seed=i + 10 * k) for i, (name, n) in enumerate(noises.items())}
             for k, (split, vols) in enumerate((("val", val), ("test", test)))}
    candidates = score_candidates(["good", "fair", "poor"], "student", (val, probs["val"]), (test, probs["test"]),
                                  FrontSettings(threshold=0.5, components="none"))
    return {c.name: c for c in candidates}, val, probs


def test_every_subset_and_the_student_with_and_without_flip(scored):
    candidates, _, _ = scored
    bases = {"good", "fair", "poor", "good+fair", "good+poor", "fair+poor", "ensemble", "student"}
    assert set(candidates) == bases | {name + FLIP for name in bases}
    assert candidates["ensemble"].networks == ("good", "fair", "poor")
    assert candidates["student/flip"].networks == ("student",) and candidates["student/flip"].tta == "flip"


def test_weights_come_from_a_grid_that_includes_zero(scored):
    candidates, _, _ = scored
    assert candidates["good"].weights == (1.0,)
    pair = candidates["good+poor"]
    assert pair.weights[0] > pair.weights[1] > 0  # the poor model earns a small weight at most
    assert abs(sum(candidates["ensemble"].weights) - 1.0) < 1e-9
    # the best of the grid over all three with zeros allowed is one of the subsets: here the good model alone
    best = max(candidates.values(), key=lambda c: c.val_dice)
    assert best.val_dice >= candidates["ensemble"].val_dice
    assert candidates["good"].val_dice > candidates["poor"].val_dice


def test_scores_are_the_weighted_mix_of_the_networks(scored):
    from brainseg.metrics import headline_dice, score_volumes

    candidates, val, probs = scored
    pair = candidates["good+fair"]
    w = np.array(pair.weights) / sum(pair.weights)
    mixed = [w[0] * a + w[1] * b for a, b in zip(probs["val"]["good"]["none"], probs["val"]["fair"]["none"],
                                                 strict=True)]
    expected = headline_dice(score_volumes(val, mixed, threshold=0.5, with_hd95=False))
    assert pair.val_dice == pytest.approx(expected, abs=1e-9)
    assert pair.test_dice is not None and 0 <= pair.test_dice <= 1


def test_tta_setting_limits_the_candidates():
    rng = np.random.default_rng(1)
    val = [_volume("v0", rng), _volume("v1", rng)]
    probs = {"a": _probs(val, noise=0.1, seed=1), "b": _probs(val, noise=0.2, seed=2)}
    only_flip = score_candidates(["a", "b"], None, (val, probs), None, FrontSettings(threshold=0.5, tta="flip"))
    assert {c.name for c in only_flip} == {"a/flip", "b/flip", "ensemble/flip"}
    assert all(c.test_dice is None for c in only_flip)
    given = score_candidates(["a", "b"], None, (val, probs), None,
                             FrontSettings(threshold=0.5, tta="none", weights="1,3"))
    assert {c.name: c.weights for c in given}["ensemble"] == (1.0, 3.0)
    equal = score_candidates(["a", "b"], None, (val, probs), None,
                             FrontSettings(threshold=0.5, tta="none", weights="equal"))
    assert {c.name: c.weights for c in equal}["ensemble"] == (0.5, 0.5)


def _timed(name: str, dice: float, ms: float, tta: str = "none") -> Candidate:
    return Candidate(name, (name.split("/")[0],), (1.0,), tta, val_dice=dice, ms=ms)


def test_the_rule_ships_the_fastest_within_tolerance():
    front = [_timed("ensemble", 0.900, 30.0), _timed("resunet", 0.8992, 11.0), _timed("unet", 0.897, 9.0),
             _timed("ensemble/flip", 0.901, 60.0, "flip")]
    decision = pick(front, tolerance=0.002)
    assert decision.best.name == "ensemble/flip"
    assert decision.chosen.name == "resunet"  # unet is faster but 0.004 below the best
    assert "11.00 ms" in decision.reason and "0.002" in decision.reason
    assert pick(front, tolerance=0.0).chosen.name == "ensemble/flip"
    assert pick(front, tolerance=0.01).chosen.name == "unet"


def test_the_default_tolerance_is_the_gate_s_margin_everywhere():
    import inspect

    from brainseg.cli import export_command
    from brainseg.export.front import DEFAULT_TOLERANCE
    from brainseg.export.pipeline import ExportOptions

    cli_default = inspect.signature(export_command).parameters["dice_tolerance"].default
    assert cli_default == ExportOptions().dice_tolerance == DEFAULT_TOLERANCE == ExportOptions().max_dice_drop


def test_ties_in_time_go_to_the_better_dice_and_the_best_may_win():
    front = [_timed("a", 0.90, 10.0), _timed("b", 0.899, 10.0)]
    decision = pick(front, tolerance=0.002)
    assert decision.chosen.name == "a" and "best validation Dice" in decision.reason


def test_forced_deploy():
    front = [_timed("ensemble", 0.900, 30.0), _timed("ensemble/flip", 0.9015, 60.0, "flip"),
             _timed("unet", 0.95, 9.0)]
    for name in ("ensemble/flip", "ensemble"):
        decision = pick(front, tolerance=0.002, deploy=name)
        assert decision.chosen.name == name and decision.reason == f"--deploy {name}"
    with pytest.raises(ConfigError, match="not a candidate.*unet"):
        pick(front, tolerance=0.002, deploy="fpn")
    with pytest.raises(ConfigError, match="dice-tolerance"):
        pick(front, tolerance=-0.1)
    untimed = [Candidate("ensemble", ("a", "b"), (0.5, 0.5), "none", val_dice=0.90)]
    assert pick(untimed, tolerance=0.002, deploy="ensemble").chosen is untimed[0]


# --- an export that ships what the front picks -----------------------------------------------------------


@pytest.fixture(scope="module")
def front_manifest(tiny_artifacts):
    from brainseg.artifacts.manifest import Manifest

    return Manifest.load(tiny_artifacts)


def test_export_records_the_front_and_ships_its_pick(front_manifest, tiny_artifacts):
    deployment = front_manifest.deployment
    assert deployment is not None and deployment.asked == "auto" and deployment.dice_tolerance == 0.005
    rows = {row["name"]: row for row in deployment.front}
    assert {"unet", "fpn", "resunet", "ensemble", "student", "unet+fpn/flip"} <= set(rows)
    assert all(row["ms_per_slice"] > 0 and row["speedup_vs_eager_ensemble"] > 0 for row in rows.values())
    best = max(row["val_dice"] for row in rows.values())
    within = [row for row in rows.values() if row["val_dice"] >= best - deployment.dice_tolerance - 1e-12]
    fastest = min(within, key=lambda row: (row["ms_per_slice"], -row["val_dice"]))
    assert deployment.candidate == fastest["name"]
    shipped = rows[deployment.candidate]
    assert front_manifest.ensemble["members"] == shipped["networks"] == deployment.networks
    assert front_manifest.postprocessing.tta == shipped["tta"]
    assert front_manifest.postprocessing.components == shipped["components"]
    assert front_manifest.deployed == deployment.candidate


def test_the_front_scores_what_the_shipped_file_scores(front_manifest):
    """The front mixes the networks' fp32 files in numpy; the shipped fused fp32 file must score the same."""
    shipped = {row["name"]: row for row in front_manifest.deployment.front}[front_manifest.deployed]
    assert front_manifest.accuracy_table["fp32"]["headline_dice"] == pytest.approx(shipped["val_dice"], abs=2e-3)
    assert front_manifest.test_table["fp32"]["headline_dice"] == pytest.approx(shipped["test_dice"], abs=2e-3)


def test_accuracy_report_plot_and_robustness(front_manifest, tiny_artifacts):
    text = (tiny_artifacts / "accuracy.md").read_text()
    assert "## The Dice-latency front" in text and f"**{front_manifest.deployed}**" in text
    assert "## The shipped candidate under intensity shifts" in text
    assert (tiny_artifacts / "front.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    robustness = front_manifest.deployment.robustness
    assert set(robustness["shifts"]) == {"x0.3", "x0.5", "x1.5 clipped", "gamma 0.67", "gamma 1.5"}
    assert robustness["worst_drop"] == pytest.approx(robustness["clean"] - min(robustness["shifts"].values()))
    assert robustness["passed"] is None  # no --max-shift-drop: reported, not gated
    raw = json.loads((tiny_artifacts / "manifest.json").read_text())
    assert raw["deployment"]["candidate"] == front_manifest.deployed


def test_segmenter_says_what_it_runs(front_manifest):
    from brainseg.runtime.segmenter import Segmenter, SegmenterOptions

    with Segmenter(front_manifest, SegmenterOptions(backend="onnxruntime")) as segmenter:
        assert segmenter.describe()["deployed"] == front_manifest.deployed
    member = next(iter(front_manifest.member_files().values()))
    with Segmenter(front_manifest, SegmenterOptions(backend="onnxruntime"), file=member) as segmenter:
        assert segmenter.describe()["deployed"] is None


def test_shift_gate_fails_every_row():
    from brainseg.export.pipeline import _shift_gate

    table = {"reference": {"passed": True}, "fp32": {"passed": True}}
    _shift_gate(table, {"passed": True}, 0.5)
    assert all(row["passed"] for row in table.values())
    _shift_gate(table, {"passed": False, "worst": "gamma 1.5", "worst_drop": 0.2}, 0.05)
    assert not any(row["passed"] for row in table.values())
    assert "gamma 1.5" in table["fp32"]["failed_because"]
