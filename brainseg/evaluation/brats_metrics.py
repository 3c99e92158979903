"""BraTS as the challenge scores it: lesion-wise and global metrics per region, computed by panoptica.

Since BraTS 2023 the glioma task ranks by lesion-wise Dice and HD95 per region (whole tumour WT,
tumour core TC, enhancing tumour ET): each region's voxels are split into lesions (connected
components), predicted lesions are matched to true ones, and

    lesion-wise Dice = sum of the matched lesions' Dice / (TP + FN + FP)
    lesion-wise HD95 = (sum of the matched lesions' HD95 + 373 x (FN + FP)) / (TP + FN + FP)

so every missed and every false lesion counts as a Dice of 0 and an HD95 of 373 mm (the
organisers' stand-in for infinity). Lesion-wise NSD is the Dice's twin with the normalised surface
Dice. The legacy global figures (Dice, HD95, NSD of the region's whole mask) sit beside them, an
infinite HD95 reported as 373 too. A region empty in both prediction and truth scores Dice 1 and
HD95 0, as the organisers score it.

panoptica (Apache-2.0, the `eval` extra) does the instances, matching and per-lesion metrics, with
the configuration it ships for BraTS (`panoptica_evaluator_BRATS.yaml`: connected components,
one-to-one matching at IoU > 0.5), with HD95 and NSD added to its metrics and the three regions as
label groups. The organisers' own evaluation package (AGPL) is not used; its configuration was not
available to check against, so these are panoptica's BraTS figures, named as such in reports.

NSD's tolerance is panoptica's default, the smallest voxel spacing (1 mm on BraTS's grid). Label
maps are built here in the 2023 convention from the three region masks, so the figures do
not depend on the convention label maps are written in. Each region is scored on the slices seg-eval
reads (every slice with brain), with the volume's voxel spacing.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings

import numpy as np

from brainseg.errors import require
from brainseg.runtime.outputs import brats_label_map

HD95_INFINITE = 373.0  # the organisers' HD95 for a missed or false lesion, and for an infinite one
REGION_LABELS = {"wt": (1, 2, 3), "tc": (1, 3), "et": (3,)}  # BraTS 2023 labels of each region
METRICS = ("lesion_wise_dice", "lesion_wise_hd95", "lesion_wise_nsd", "global_dice", "global_hd95", "global_nsd",
           "tp", "fp", "fn", "f1")
EXTRA = "eval"
CONVENTIONS = ("panoptica's BraTS configuration (connected components, one-to-one matching at IoU > 0.5) on "
               "WT, TC and ET; lesion-wise Dice and NSD = sum over matched lesions / (TP + FN + FP); "
               "lesion-wise HD95 adds 373 per missed or false lesion; an infinite HD95 is 373; a region empty in "
               "both scores Dice 1, HD95 0; on the slices with brain; means over patients, TP/FP/FN summed")


def label_map(regions: np.ndarray) -> np.ndarray:
    """(..., 3) WT/TC/ET masks -> (...) BraTS 2023 labels (SNFH 2, NETC 1, ET 3), ET inside TC inside WT:
    the label map seg-run writes in that convention."""
    return brats_label_map(regions, "2023")


def evaluator():
    """panoptica's BraTS evaluator: its shipped BRATS configuration, HD95 and NSD added, WT/TC/ET as groups."""
    require("panoptica", EXTRA)
    from panoptica import (
        ConnectedComponentsInstanceApproximator,
        InputType,
        Metric,
        NaiveThresholdMatching,
        Panoptica_Evaluator,
    )
    from panoptica.utils import EdgeCaseHandler, EdgeCaseResult, LabelMergeGroup, SegmentationClassGroups
    from panoptica.utils.citation_reminder import disable_citation_reminder
    from panoptica.utils.edge_case_handling import MetricZeroTPEdgeCaseHandling as ZeroTP

    disable_citation_reminder()  # its banner would break seg-eval's output; docs/metrics.md cites panoptica
    nan, zero, inf = EdgeCaseResult.NAN, EdgeCaseResult.ZERO, EdgeCaseResult.INF
    # no matched lesion: the BraTS configuration's rules, and the same for HD95 (infinite) and NSD (0)
    zero_tp = {metric: ZeroTP(no_instances_result=nan, empty_prediction_result=zero, empty_reference_result=zero,
                              normal=zero) for metric in (Metric.DSC, Metric.IOU, Metric.NSD)}
    zero_tp[Metric.HD95] = ZeroTP(no_instances_result=nan, empty_prediction_result=inf, empty_reference_result=inf,
                                  normal=inf)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints that WT, TC and ET share labels, as they must
        groups = SegmentationClassGroups({name: LabelMergeGroup(list(labels))
                                          for name, labels in REGION_LABELS.items()})
    return Panoptica_Evaluator(
        expected_input=InputType.SEMANTIC,
        instance_approximator=ConnectedComponentsInstanceApproximator(),
        instance_matcher=NaiveThresholdMatching(matching_metric=Metric.IOU, matching_threshold=0.5,
                                                allow_many_to_one=False),
        edge_case_handler=EdgeCaseHandler(listmetric_zeroTP_handling=zero_tp, empty_list_std=nan),
        segmentation_class_groups=groups,
        instance_metrics=[Metric.DSC, Metric.IOU, Metric.HD95, Metric.NSD],
        global_metrics=[Metric.DSC, Metric.HD95, Metric.NSD],
    )


def score_case(predicted: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float] | None,
               panoptica_evaluator=None) -> dict[str, dict[str, float]]:
    """{region: {metric: value}} for one case's (S, H, W, 3) predicted and true region masks.

    `spacing` is (slice step, row, column) in mm, None for 1 mm voxels (then HD95 is in voxels).
    """
    with warnings.catch_warnings():  # NSD without a spacing warns that its 0.5-voxel tolerance is a default
        warnings.simplefilter("ignore", UserWarning)
        found = (panoptica_evaluator or evaluator()).evaluate(
            label_map(predicted), label_map(truth), voxelspacing=spacing, verbose=False, log_times=False)
    return {region: lesion_wise(found[region]) for region in REGION_LABELS}


def lesion_wise(result) -> dict[str, float]:
    """The challenge's figures from one region's panoptica result (see the module docstring)."""
    tp, fp, fn = int(result.tp), int(result.fp), int(result.fn)
    lesions = tp + fp + fn
    if lesions == 0:  # no lesion in the prediction or the truth: perfect
        dice_sum = hd95_sum = nsd_sum = 0.0
    else:
        dice_sum, hd95_sum, nsd_sum = (_matched_sum(result, name) for name in ("dsc", "hd95", "nsd"))
    return {
        "lesion_wise_dice": dice_sum / lesions if lesions else 1.0,
        "lesion_wise_hd95": (hd95_sum + HD95_INFINITE * (fp + fn)) / lesions if lesions else 0.0,
        "lesion_wise_nsd": nsd_sum / lesions if lesions else 1.0,
        "global_dice": _global(result, "global_bin_dsc", empty=1.0),
        "global_hd95": _global(result, "global_bin_hd95", empty=0.0),
        "global_nsd": _global(result, "global_bin_nsd", empty=1.0),
        "tp": tp, "fp": fp, "fn": fn,
        "f1": 2 * tp / (2 * tp + fp + fn) if lesions else 1.0,
    }


def _matched_sum(result, metric: str) -> float:
    """Sum of a per-lesion metric over the matched lesions, an infinite HD95 counted as 373."""
    if int(result.tp) == 0:
        return 0.0
    from panoptica import Metric, MetricMode

    which = {"dsc": Metric.DSC, "hd95": Metric.HD95, "nsd": Metric.NSD}[metric]
    values = result.get_list_metric(which, mode=MetricMode.ALL)
    return float(sum(HD95_INFINITE if not math.isfinite(v) else v for v in values))


def _global(result, name: str, *, empty: float) -> float:
    if result.global_bin_volume_pred == 0 and result.global_bin_volume_ref == 0:
        return empty
    value = float(getattr(result, name))
    return HD95_INFINITE if math.isinf(value) else value


def means(cases: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """{region: {metric: mean over cases}}; TP/FP/FN are summed over cases instead."""
    table = {}
    for region in REGION_LABELS:
        table[region] = {}
        for metric in METRICS:
            values = [case[region][metric] for case in cases]
            table[region][metric] = float(sum(values)) if metric in ("tp", "fp", "fn") else float(np.mean(values))
    return table
