"""The front as a person reads it: a table in accuracy.md and front.png (validation Dice against latency)."""

from __future__ import annotations

from pathlib import Path

from brainseg.export.front import Candidate, Decision


def _cell(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(candidates: list[Candidate], decision: Decision, *, tolerance: float, timed: str,
             eager_ms: float | None) -> list[str]:
    """accuracy.md's section on the front: every candidate, the rule, the one shipped and why."""
    lines = ["## The Dice-latency front: what this folder ships and why", "",
             f"Shipped: **{decision.chosen.name}** ({decision.reason}). The rule: the fastest candidate whose "
             f"validation Dice is within {tolerance} of the best candidate's (`--dice-tolerance`).", ""]
    if timed:
        eager = f"; PyTorch eager FP32 of the three-model ensemble took {eager_ms:.2f} ms/slice in the same rounds"
        lines += [f"Timed {timed}{eager if eager_ms is not None else ''}. Validation Dice as each candidate's "
                  "fp32 graph deploys (its weights, TTA and component rule); test Dice is reported and chooses "
                  "nothing.", ""]
    else:
        lines += ["Not timed (a forced `--deploy`): the rows give the validation and test Dice only.", ""]
    lines += ["| candidate | weights | components | val Dice | ms/slice (round range) | speed-up vs eager ensemble "
              "(range) | GFLOP/slice | test Dice |", "|---|---|---|---|---|---|---|---|"]
    for c in sorted(candidates, key=lambda c: (c.ms if c.ms is not None else 0.0, -c.val_dice)):
        name = f"**{c.name}**" if c is decision.chosen else c.name
        weights = ", ".join(f"{n} {w:.2f}" for n, w in zip(c.networks, c.weights, strict=True)) \
            if len(c.networks) > 1 else "1"
        ms = "n/a" if c.ms is None else f"{c.ms:.2f} ({c.ms_range[0]:.2f}-{c.ms_range[1]:.2f})"
        speed = "n/a" if c.speedup is None else \
            f"{c.speedup:.2f}x ({c.speedup_range[0]:.2f}-{c.speedup_range[1]:.2f})"
        lines.append(f"| {name} | {weights} | {c.components} | {c.val_dice:.4f} | {ms} | {speed} | "
                     f"{_cell(c.gflop, '.2f')} | {_cell(c.test_dice, '.4f')} |")
    return lines + [""]


def plot(path: Path, candidates: list[Candidate], decision: Decision, *, tolerance: float) -> Path | None:
    """front.png: validation Dice against ms/slice, each candidate labelled, the shipped one marked and the
    tolerance band drawn. None (no file) when the front was not timed."""
    timed = [c for c in candidates if c.ms is not None]
    if not timed:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # a Figure of its own: no pyplot, no global backend switch

    figure = Figure(figsize=(7.5, 5.0), dpi=110)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    top = decision.best.val_dice
    axes.axhspan(top - tolerance, top, color="tab:green", alpha=0.12, label=f"within {tolerance} of the best")
    for c in timed:
        flip = c.tta == "flip"
        axes.errorbar(c.ms, c.val_dice, xerr=[[c.ms - c.ms_range[0]], [c.ms_range[1] - c.ms]], fmt="s" if flip else "o",
                      color="tab:orange" if flip else "tab:blue", ms=6, capsize=2)
        axes.annotate(c.name, (c.ms, c.val_dice), textcoords="offset points", xytext=(5, 4), fontsize=7)
    chosen = decision.chosen
    axes.plot(chosen.ms, chosen.val_dice, marker="*", color="tab:red", ms=18, linestyle="none",
              label=f"shipped: {chosen.name}")
    axes.plot([], [], "o", color="tab:blue", label="no TTA")
    axes.plot([], [], "s", color="tab:orange", label="flip TTA")
    axes.set_xlabel("ms per slice, batch 1 (median of rounds; bars: round range)")
    axes.set_ylabel("validation Dice (per patient, mean)")
    axes.set_title("Candidates: validation Dice against latency")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    figure.tight_layout()
    figure.savefig(path)
    return path
