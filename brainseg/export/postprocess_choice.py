"""Choose the folder's default TTA and component rule on the validation patients, nnU-Net's way.

Each candidate is kept only when it raises the validation Dice of the fp32 ensemble file above
what it is without it; the test patients are never looked at. TTA is decided first (on the raw
masks), then the component rule on the masks of the chosen TTA. The manifest records the
choice with every number behind it.
"""

from __future__ import annotations

import logging

import numpy as np

from brainseg.data.volume import Volume
from brainseg.errors import ConfigError
from brainseg.export.accuracy import Predict, predict_volumes
from brainseg.metrics import headline_dice, score_volumes
from brainseg.postprocess import COMPONENT_RULES, TTA_MODES, PostProcessing, flip_slices, unflip_maps

log = logging.getLogger("brainseg.export")
TTA_ASKED = ("auto", *TTA_MODES)
COMPONENTS_ASKED = ("auto", *COMPONENT_RULES)


def with_flip(predict: Predict) -> Predict:
    """`predict` averaged with its run on the mirrored slices: the runtime's FlipTTA, for (N, K, H, W) probabilities."""
    def flipped(images: np.ndarray) -> np.ndarray:
        return 0.5 * (predict(images) + unflip_maps(predict(flip_slices(images))))

    return flipped


def predictor(predict: Predict, post: PostProcessing) -> Predict:
    """`predict` as `post` deploys it: with flip TTA or without."""
    return with_flip(predict) if post.tta == "flip" else predict


def _dice(volumes: list[Volume], probs: list[np.ndarray], threshold: float, post: PostProcessing) -> float:
    report = score_volumes(volumes, probs, threshold=threshold, with_hd95=False,
                           refine=post.refine if post.components != "none" else None)
    return headline_dice(report)


def choose_postprocessing(predict: Predict, volumes: list[Volume], *, img_size: int, threshold: float,
                          tta: str = "auto", components: str = "auto",
                          min_voxels: int | None = None) -> tuple[PostProcessing, dict]:
    """(the chosen PostProcessing, the manifest's "postprocessing" section).

    `predict` is the fp32 ensemble file's; `tta` and `components` are "auto" (decide by
    validation Dice) or a fixed choice, which is recorded with its numbers all the same.
    """
    if tta not in TTA_ASKED:
        raise ConfigError(f"--tta must be one of {', '.join(TTA_ASKED)}, got {tta!r}")
    if components not in COMPONENTS_ASKED:
        raise ConfigError(f"--components must be one of {', '.join(COMPONENTS_ASKED)}, got {components!r}")
    base = PostProcessing() if min_voxels is None else PostProcessing(min_voxels=min_voxels)
    plain = predict_volumes(predict, volumes, img_size=img_size)
    probs = {"none": plain}
    if tta != "none":
        probs["flip"] = predict_volumes(with_flip(predict), volumes, img_size=img_size)
    tta_dice = {mode: _dice(volumes, p, threshold, base) for mode, p in probs.items()}
    chosen_tta = _pick(tta_dice, tta)
    rules = COMPONENT_RULES if components == "auto" else ("none", components)
    component_dice = {}
    for rule in dict.fromkeys(rules):
        post = PostProcessing(tta=chosen_tta, components=rule, min_voxels=base.min_voxels)
        component_dice[rule] = _dice(volumes, probs[chosen_tta], threshold, post)
    chosen = PostProcessing(tta=chosen_tta, components=_pick(component_dice, components), min_voxels=base.min_voxels)
    log.info("post-processing chosen on %d validation patients: %s", len(volumes), chosen.describe())
    return chosen, {
        "chosen": chosen.to_dict(),
        "description": chosen.describe(),
        "decided_on": f"validation Dice of the fp32 ensemble file, {len(volumes)} patients; "
                      "a candidate is kept only if it beats 'none'",
        "asked": {"tta": tta, "components": components},
        "validation_dice": {"tta": tta_dice, "components": component_dice},
    }


def _pick(dice: dict[str, float], asked: str) -> str:
    """The asked mode, or under "auto" the best one if it beats "none" (ties keep "none")."""
    if asked != "auto":
        return asked
    best = max(dice, key=lambda mode: (dice[mode], mode == "none"))
    return best if dice[best] > dice["none"] else "none"
