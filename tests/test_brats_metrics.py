"""The BraTS challenge's lesion-wise figures (brainseg.evaluation.brats_metrics) on hand-made cases, and
against panoptica run directly, from a configuration file, on NIfTI files of the same label maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from brainseg.evaluation import brats_metrics
from brainseg.evaluation.brats_metrics import HD95_INFINITE, label_map, score_case

panoptica = pytest.importorskip("panoptica", reason="BraTS lesion-wise metrics need panoptica (the eval extra)")

SHAPE = (24, 48, 48)


def regions(*boxes: tuple[slice, slice, slice], tissue: int = 2) -> np.ndarray:
    """(S, H, W, 3) region masks with each box as one lesion of enhancing tumour (tissue 2: in WT, TC
    and ET), of tumour core (1: WT and TC) or of oedema (0: WT only)."""
    mask = np.zeros((*SHAPE, 3), np.uint8)
    for box in boxes:
        mask[box][..., : tissue + 1] = 1
    return mask


A = (slice(1, 6), slice(2, 8), slice(2, 8))  # apart from every other box: no shared face, edge or corner
B = (slice(14, 20), slice(30, 40), slice(30, 40))
NEAR_1 = (slice(8, 12), slice(10, 16), slice(10, 16))
NEAR_2 = (slice(8, 12), slice(10, 16), slice(19, 25))
BRIDGE = (slice(8, 12), slice(10, 16), slice(10, 25))


def test_a_perfect_prediction_scores_dice_1_and_hd95_0_in_every_region():
    truth = regions(A, B)
    figures = score_case(truth, truth, None)
    for region in ("wt", "tc", "et"):
        row = figures[region]
        assert (row["tp"], row["fp"], row["fn"]) == (2, 0, 0), region
        assert row["lesion_wise_dice"] == pytest.approx(1.0) and row["lesion_wise_hd95"] == pytest.approx(0.0)
        assert row["global_dice"] == pytest.approx(1.0) and row["f1"] == 1.0


def test_a_missed_lesion_counts_as_dice_0_and_hd95_373():
    figures = score_case(regions(A), regions(A, B), (1.0, 1.0, 1.0))["et"]
    assert (figures["tp"], figures["fp"], figures["fn"]) == (1, 0, 1)
    assert figures["lesion_wise_dice"] == pytest.approx(0.5)
    assert figures["lesion_wise_hd95"] == pytest.approx(HD95_INFINITE / 2)
    assert figures["f1"] == pytest.approx(2 / 3)
    a, b = regions(A)[..., 2].sum(), regions(B)[..., 2].sum()
    assert figures["global_dice"] == pytest.approx(2 * a / (2 * a + b))  # the global figure only sees fewer voxels


def test_a_false_positive_lesion_counts_as_dice_0_and_hd95_373():
    figures = score_case(regions(A, B), regions(A), (1.0, 1.0, 1.0))["wt"]
    assert (figures["tp"], figures["fp"], figures["fn"]) == (1, 1, 0)
    assert figures["lesion_wise_dice"] == pytest.approx(0.5)
    assert figures["lesion_wise_hd95"] == pytest.approx(HD95_INFINITE / 2)


def test_two_lesions_merged_into_one_prediction_match_neither():
    figures = score_case(regions(BRIDGE), regions(NEAR_1, NEAR_2), (1.0, 1.0, 1.0))["et"]
    assert (figures["tp"], figures["fp"], figures["fn"]) == (0, 1, 2)  # IoU with each lesion below 0.5
    assert figures["lesion_wise_dice"] == 0.0 and figures["lesion_wise_hd95"] == pytest.approx(HD95_INFINITE)
    assert figures["global_dice"] > 0.7  # most voxels are right: only the lesion-wise figures see the merge


def test_a_region_empty_in_both_scores_perfect_and_an_empty_prediction_scores_373():
    oedema_only = regions(A, tissue=0)
    figures = score_case(oedema_only, oedema_only, None)
    assert figures["et"]["lesion_wise_dice"] == 1.0 and figures["et"]["lesion_wise_hd95"] == 0.0
    assert figures["et"]["global_dice"] == 1.0 and figures["et"]["global_hd95"] == 0.0
    nothing = score_case(np.zeros((*SHAPE, 3), np.uint8), regions(A), None)["tc"]
    assert nothing["lesion_wise_dice"] == 0.0 and nothing["lesion_wise_hd95"] == pytest.approx(HD95_INFINITE)
    assert nothing["global_hd95"] == HD95_INFINITE and nothing["global_dice"] == 0.0


def test_label_maps_are_built_in_the_2023_convention():
    labels = label_map(regions(A, tissue=2) | regions(B, tissue=0) | regions(NEAR_1, tissue=1))
    assert set(np.unique(labels)) == {0, 1, 2, 3}
    assert (labels[A] == 3).all() and (labels[B] == 2).all() and (labels[NEAR_1] == 1).all()


# The configuration, written out here as panoptica's own YAML rather than taken from the code under test.
CONFIG = """!Panoptica_Evaluator
decision_metric: null
decision_threshold: null
edge_case_handler: !EdgeCaseHandler
  empty_list_std: !EdgeCaseResult NAN
  listmetric_zeroTP_handling:
    !Metric DSC: &zero !MetricZeroTPEdgeCaseHandling {empty_prediction_result: !EdgeCaseResult ZERO,
      empty_reference_result: !EdgeCaseResult ZERO, no_instances_result: !EdgeCaseResult NAN,
      normal: !EdgeCaseResult ZERO}
    !Metric IOU: *zero
    !Metric NSD: *zero
    !Metric HD95: !MetricZeroTPEdgeCaseHandling {empty_prediction_result: !EdgeCaseResult INF,
      empty_reference_result: !EdgeCaseResult INF, no_instances_result: !EdgeCaseResult NAN,
      normal: !EdgeCaseResult INF}
expected_input: !InputType SEMANTIC
global_metrics: [!Metric DSC, !Metric HD95, !Metric NSD]
instance_approximator: !ConnectedComponentsInstanceApproximator {cca_backend: null}
instance_matcher: !NaiveThresholdMatching {allow_many_to_one: false, matching_metric: !Metric IOU,
  matching_threshold: 0.5}
instance_metrics: [!Metric DSC, !Metric IOU, !Metric HD95, !Metric NSD]
log_times: false
segmentation_class_groups: !SegmentationClassGroups
  groups:
    et: !LabelMergeGroup {single_instance: false, value_labels: [3]}
    tc: !LabelMergeGroup {single_instance: false, value_labels: [1, 3]}
    wt: !LabelMergeGroup {single_instance: false, value_labels: [1, 2, 3]}
verbose: false
"""


def test_the_figures_equal_panopticas_own_from_a_config_file_on_nifti_files(tmp_path):
    nib = pytest.importorskip("nibabel")
    from panoptica import Metric, MetricMode, Panoptica_Evaluator

    predicted = regions(A, BRIDGE, tissue=2) | regions(B, tissue=1)
    truth = regions(A, NEAR_1, NEAR_2, tissue=2) | regions(B, tissue=0)
    spacing = (2.5, 0.9, 1.1)
    ours = score_case(predicted, truth, spacing)
    (tmp_path / "config.yaml").write_text(CONFIG)
    files = {}
    for name, mask in (("pred", predicted), ("ref", truth)):
        image = nib.Nifti1Image(label_map(mask), np.diag([*spacing, 1.0]))
        nib.save(image, str(files.setdefault(name, tmp_path / f"{name}.nii.gz")))
    direct = Panoptica_Evaluator.load_from_config(tmp_path / "config.yaml").evaluate(
        np.asarray(nib.load(str(files["pred"])).dataobj), np.asarray(nib.load(str(files["ref"])).dataobj),
        voxelspacing=spacing)
    for region in ("wt", "tc", "et"):
        result = direct[region]
        tp, fp, fn = int(result.tp), int(result.fp), int(result.fn)
        lesions = tp + fp + fn
        matched = {m: result.get_list_metric(m, mode=MetricMode.ALL) if tp else [] for m in (Metric.DSC, Metric.HD95)}
        hd95 = [HD95_INFINITE if math.isinf(v) else v for v in matched[Metric.HD95]]
        expected = {"tp": tp, "fp": fp, "fn": fn,
                    "lesion_wise_dice": sum(matched[Metric.DSC]) / lesions,
                    "lesion_wise_hd95": (sum(hd95) + HD95_INFINITE * (fp + fn)) / lesions,
                    "global_dice": float(result.global_bin_dsc), "global_hd95": float(result.global_bin_hd95),
                    "global_nsd": float(result.global_bin_nsd)}
        for metric, value in expected.items():
            assert ours[region][metric] == pytest.approx(value, abs=1e-6), (region, metric)
    assert ours["et"]["fn"] == 2 and ours["et"]["tp"] == 1  # the merged pair is missed, A found


def test_means_average_the_figures_and_sum_the_counts():
    one, two = score_case(regions(A), regions(A), None), score_case(regions(A), regions(A, B), None)
    table = brats_metrics.means([one, two])
    assert table["et"]["lesion_wise_dice"] == pytest.approx(0.75) and table["et"]["fn"] == 1 and table["et"]["tp"] == 2
