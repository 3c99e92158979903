"""seg-export's front step: every network's fp32 file run once per split, the candidates scored and
timed, and the one to ship picked by the rule (brainseg.export.front)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brainseg.artifacts.layout import FRONT_PLOT
from brainseg.artifacts.sections import Deployment
from brainseg.data.volume import Volume
from brainseg.export import front, front_report, robustness
from brainseg.export.accuracy import Predict, predict_volumes
from brainseg.export.calibration import calibration_slices
from brainseg.export.front import Candidate, Decision, FrontSettings
from brainseg.export.front_timing import time_run_front, timing_plan
from brainseg.export.postprocess_choice import with_flip
from brainseg.export.trained_run import TrainedRun

log = logging.getLogger("brainseg.export")
RULE = "the fastest candidate whose validation Dice is within dice_tolerance of the best candidate's"


def network_probabilities(predict: Predict, volumes: list[Volume], *, img_size: int,
                          flip: bool) -> dict[str, list[np.ndarray]]:
    """One network's probabilities per volume, plain and (with `flip`) mirrored, for front.Probabilities."""
    if not volumes:
        return {"none": [], "flip": []}
    found = {"none": predict_volumes(predict, volumes, img_size=img_size)}
    if flip:
        found["flip"] = predict_volumes(with_flip(predict), volumes, img_size=img_size)
    return found


@dataclass
class FrontOutcome:
    candidates: list[Candidate]
    decision: Decision
    timed: str = ""
    eager_ms: float | None = None
    robustness: dict = field(default_factory=dict)

    @property
    def chosen(self) -> Candidate:
        return self.decision.chosen

    def section(self, *, asked: str, tolerance: float) -> Deployment:
        return Deployment(candidate=self.chosen.name, networks=list(self.chosen.networks), asked=asked,
                          dice_tolerance=tolerance, rule=RULE, reason=self.decision.reason, timed=self.timed,
                          eager_ensemble_ms=self.eager_ms, front=[c.to_row() for c in self.candidates],
                          robustness=self.robustness)

    def markdown(self, tolerance: float) -> str:
        lines = front_report.markdown(self.candidates, self.decision, tolerance=tolerance, timed=self.timed,
                                      eager_ms=self.eager_ms)
        if self.robustness:
            lines += robustness.markdown(self.robustness)
        return "\n".join(lines)


@dataclass(frozen=True)
class FrontAsk:
    """What the options ask of the front (see ExportOptions)."""

    deploy: str
    tolerance: float
    cpu_int8: bool  # seg-run here would run the CPU's int8 file
    rounds: int
    seconds: float
    simplify: bool


def weigh(run: TrainedRun, sets: tuple[list[Volume], list[Volume]], probs: dict[str, front.Probabilities],
          settings: FrontSettings, ask: FrontAsk, *, progress: Callable[[str], None] = log.info) -> FrontOutcome:
    """Score every candidate, time them unless a `--deploy` name is forced, and pick the one to ship."""
    val, test = sets
    members = [m.name for m in run.members]
    student = run.student.name if run.student is not None else None
    progress(f"the front: scoring the candidates on {len(val)} validation patients")
    candidates = front.score_candidates(members, student, (val, probs["val"]), (test, probs["test"]), settings)
    timed, eager_ms = "", None
    if ask.deploy == "auto":
        plan = timing_plan(cpu_int8=ask.cpu_int8, rounds=ask.rounds, seconds=ask.seconds)
        slices = calibration_slices(val, img_size=run.img_size, count=16, seed=run.config.seed)
        baseline = time_run_front(run, candidates, plan, slices, simplify=ask.simplify, progress=progress)
        timed, eager_ms = plan.describe(), baseline["ms"]
    decision = front.pick(candidates, tolerance=ask.tolerance, deploy=_forced_name(ask.deploy, candidates, members))
    log.info("the front picks %s: %s", decision.chosen.name, decision.reason)
    return FrontOutcome(candidates, decision, timed, eager_ms)


def _forced_name(deploy: str, candidates: list[Candidate], members: list[str]) -> str:
    """`--deploy ensemble` is the candidate of every member (its TTA is the export's own choice, made later)."""
    if deploy != front.ENSEMBLE:
        return deploy
    every = [c for c in candidates if set(c.networks) == set(members)]
    return min(every, key=lambda c: c.tta != "none").name if every else deploy


def with_tta(outcome: FrontOutcome, tta: str) -> None:
    """`--deploy ensemble`: the export chose the TTA of the every-member graph itself; ship that candidate's row."""
    if outcome.chosen.tta == tta:
        return
    row = next((c for c in outcome.candidates if c.networks == outcome.chosen.networks and c.tta == tta), None)
    if row is not None:
        outcome.decision = Decision(row, outcome.decision.best, f"{outcome.decision.reason} (TTA chosen on validation)")


def plot(folder: Path, outcome: FrontOutcome, tolerance: float) -> Path | None:
    return front_report.plot(folder / FRONT_PLOT, outcome.candidates, outcome.decision, tolerance=tolerance)
