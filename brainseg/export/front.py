"""The candidates an export weighs, their validation Dice, and the rule that picks the one it ships.

A candidate is a set of the run's networks mixed with weights into one graph, run with or without
flip TTA: each member alone, every subset of members (weights fitted on the validation patients;
a grid over the simplex that includes 0, so each subset is the grid's best point with exactly those
members above 0), the three-model "ensemble", and the distilled student where the run has one.

Scoring needs no graph per candidate: each network's fp32 file is run once per split, plain and
mirrored, and a candidate's probabilities are the weighted sum of its networks' float32
probabilities, which is what its fused graph computes (EnsembleGraph). Its component rule is
chosen on the validation patients as the export chooses it for the shipped file (kept only when it
beats "none"). Test Dice is computed the same way and reported; it chooses nothing.

The rule (`pick`): the fastest candidate whose validation Dice is within `tolerance` of the best
candidate's; timing is brainseg.export.front_timing's.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from brainseg.data.volume import Volume
from brainseg.errors import ConfigError
from brainseg.export.accuracy import fit_weights
from brainseg.metrics import headline_dice, score_volumes
from brainseg.postprocess import COMPONENT_RULES, TTA_MODES, PostProcessing

log = logging.getLogger("brainseg.export")
ENSEMBLE = "ensemble"  # the candidate of every member: what the export shipped before the front
FLIP = "/flip"  # a candidate name's suffix when it runs with flip TTA
# the export's accuracy gate (ExportOptions.max_dice_drop): a candidate that would pass the gate
# against the best one counts as no worse. 0.002 shipped the best validation Dice almost always,
# whatever its cost, on differences that 5 validation patients cannot resolve (docs/benchmarks.md)
DEFAULT_TOLERANCE = 0.005

# probabilities[network][tta] = one (S, H, W, K) float32 array per volume of a split
Probabilities = dict[str, dict[str, list[np.ndarray]]]


@dataclass
class Candidate:
    """One thing the export could ship, with what it scored and (once timed) what it costs."""

    name: str
    networks: tuple[str, ...]  # folder names in the run: members, or "student"
    weights: tuple[float, ...]
    tta: str
    components: str = "none"
    val_dice: float = 0.0
    component_dice: dict[str, float] = field(default_factory=dict)
    test_dice: float | None = None
    ms: float | None = None  # median ms per slice at batch 1, timed as seg-run would run it here
    ms_range: tuple[float, float] | None = None  # the fastest and slowest round's median
    round_ms: list[float] = field(default_factory=list)  # each round's median, for ratios taken round by round
    speedup: float | None = None  # PyTorch eager three-model ensemble's ms over this one's, median of rounds
    speedup_range: tuple[float, float] | None = None
    gflop: float | None = None  # per slice, flip TTA counted twice

    @property
    def graph(self) -> str:
        """The fused graph it runs: its name without the TTA suffix (two candidates share one graph)."""
        return self.name.removesuffix(FLIP)

    def to_row(self) -> dict:
        return {"name": self.name, "networks": list(self.networks), "weights": list(self.weights), "tta": self.tta,
                "components": self.components, "val_dice": self.val_dice, "test_dice": self.test_dice,
                "ms_per_slice": self.ms, "ms_range": list(self.ms_range) if self.ms_range else None,
                "round_ms": [round(ms, 3) for ms in self.round_ms],
                "speedup_vs_eager_ensemble": self.speedup,
                "speedup_range": list(self.speedup_range) if self.speedup_range else None,
                "gflop_per_slice": self.gflop}


def candidate_name(networks: Sequence[str], tta: str, members: Sequence[str]) -> str:
    base = ENSEMBLE if len(members) > 1 and set(networks) == set(members) else "+".join(networks)
    return base + (FLIP if tta == "flip" else "")


def _subsets(members: Sequence[str]) -> list[tuple[str, ...]]:
    return [combo for size in range(1, len(members) + 1) for combo in itertools.combinations(members, size)]


def _mix(probs: Probabilities, networks: Sequence[str], weights: Sequence[float], tta: str) -> list[np.ndarray]:
    """The candidate's probabilities per volume, as its graph mixes them (weights normalised to sum 1)."""
    total = float(sum(weights))
    arrays = [probs[name][tta] for name in networks]
    if len(arrays) == 1:
        return arrays[0]
    return [sum(np.float32(w / total) * per_network[v] for w, per_network in zip(weights, arrays, strict=True))
            for v in range(len(arrays[0]))]


def _dice(volumes: list[Volume], probs: list[np.ndarray], threshold: float, rule: str, min_voxels: int) -> float:
    post = PostProcessing(components=rule, min_voxels=min_voxels)
    report = score_volumes(volumes, probs, threshold=threshold, with_hd95=False,
                           refine=post.refine if rule != "none" else None)
    return headline_dice(report)


def _weights(probs: Probabilities, networks: tuple[str, ...], volumes: list[Volume], tta: str, *,
             threshold: float, asked: str, members: Sequence[str]) -> tuple[float, ...]:
    if len(networks) == 1:
        return (1.0,)
    if asked == "equal":
        return tuple(1.0 / len(networks) for _ in networks)
    if asked != "auto":  # given for every member: this subset's share of them
        given = [float(w) for w in asked.split(",")]
        return tuple(given[list(members).index(name)] for name in networks)
    weights, _ = fit_weights([probs[name][tta] for name in networks], volumes, threshold=threshold)
    return tuple(weights)


@dataclass(frozen=True)
class FrontSettings:
    threshold: float
    tta: str = "auto"  # auto: both; none or flip: only that
    components: str = "auto"
    min_voxels: int = 64
    weights: str = "auto"  # auto | equal | "a,b,c" over the members, as --weights


def score_candidates(members: Sequence[str], student: str | None, val: tuple[list[Volume], Probabilities],
                     test: tuple[list[Volume], Probabilities] | None, settings: FrontSettings) -> list[Candidate]:
    """Every candidate, weighted and scored on the validation patients (and reported on the test ones).

    `val` and `test` are (volumes, probabilities of each network plain and mirrored, see Probabilities).
    """
    volumes, probs = val
    modes = TTA_MODES if settings.tta == "auto" else (settings.tta,)
    rules = COMPONENT_RULES if settings.components == "auto" else tuple(dict.fromkeys(("none", settings.components)))
    sets = _subsets(members) + ([(student,)] if student else [])
    candidates = []
    for networks, tta in itertools.product(sets, modes):
        weights = _weights(probs, networks, volumes, tta, threshold=settings.threshold, asked=settings.weights,
                           members=members)
        mixed = _mix(probs, networks, weights, tta)
        found = {rule: _dice(volumes, mixed, settings.threshold, rule, settings.min_voxels) for rule in rules}
        rule = _pick_rule(found, settings.components)
        candidate = Candidate(candidate_name(networks, tta, members), networks, weights, tta, rule,
                              val_dice=found[rule], component_dice=found)
        if test is not None and test[0]:
            test_volumes, test_probs = test
            candidate.test_dice = _dice(test_volumes, _mix(test_probs, networks, weights, tta), settings.threshold,
                                        rule, settings.min_voxels)
        candidates.append(candidate)
    return candidates


def _pick_rule(found: dict[str, float], asked: str) -> str:
    """The asked rule, or under "auto" the best one if it beats "none" (ties keep "none"), as for the shipped file."""
    if asked != "auto":
        return asked
    best = max(found, key=lambda rule: (found[rule], rule == "none"))
    return best if found[best] > found["none"] else "none"


@dataclass(frozen=True)
class Decision:
    chosen: Candidate
    best: Candidate  # the candidate with the best validation Dice
    reason: str


def pick(candidates: list[Candidate], *, tolerance: float, deploy: str = "auto") -> Decision:
    """The candidate to ship: under "auto" the fastest whose validation Dice is within `tolerance` of the
    best's (ties in time go to the higher Dice); a candidate's name ("ensemble", "resunet/flip"...) forces
    that one."""
    if tolerance < 0:
        raise ConfigError(f"--dice-tolerance must be >= 0, got {tolerance}")
    best = max(candidates, key=lambda c: c.val_dice)
    if deploy != "auto":
        forced = next((c for c in candidates if c.name == deploy), None)
        if forced is None:
            raise ConfigError(f"--deploy {deploy!r} is not a candidate of this run; choose auto or one of: "
                              f"{', '.join(c.name for c in candidates)}")
        return Decision(forced, best, f"--deploy {deploy}")
    within = [c for c in candidates if c.val_dice >= best.val_dice - tolerance - 1e-12]
    chosen = min(within, key=lambda c: (c.ms, -c.val_dice))
    if chosen is best:
        reason = f"the best validation Dice ({best.val_dice:.4f}), and no candidate within {tolerance} of it is faster"
    else:
        reason = (f"the fastest candidate ({chosen.ms:.2f} ms/slice against {best.name}'s {best.ms:.2f}) whose "
                  f"validation Dice {chosen.val_dice:.4f} is within {tolerance} of the best ({best.name}, "
                  f"{best.val_dice:.4f})")
    return Decision(chosen, best, reason)
