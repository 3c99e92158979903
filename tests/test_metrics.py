"""Metrics against hand-computed cases, including every empty-mask convention."""

import math

import numpy as np
import pytest

from brainseg import metrics


def _mask(shape, *boxes):
    m = np.zeros(shape, bool)
    for box in boxes:
        m[box] = True
    return m


def test_dice_and_iou_hand_computed():
    pred = _mask((1, 4, 4), np.s_[0, 0, 0:2])  # 2 pixels
    truth = _mask((1, 4, 4), np.s_[0, 0, 1:4])  # 3 pixels, 1 shared
    assert metrics.dice(pred, truth) == pytest.approx(2 * 1 / 5)
    assert metrics.iou(pred, truth) == pytest.approx(1 / 4)


def test_empty_conventions():
    empty, full = np.zeros((2, 3, 3), bool), np.ones((2, 3, 3), bool)
    assert metrics.dice(empty, empty) == 1.0
    assert metrics.iou(empty, empty) == 1.0
    assert metrics.dice(full, empty) == 0.0
    assert metrics.dice(empty, full) == 0.0
    assert metrics.hd95(empty, empty) == 0.0
    assert math.isnan(metrics.hd95(full, empty))
    assert math.isnan(metrics.hd95(empty, full))


def test_hd95_of_a_shifted_square_is_the_shift():
    truth = _mask((20, 20), np.s_[5:10, 5:10])
    pred = _mask((20, 20), np.s_[5:10, 8:13])  # shifted by 3 columns
    assert metrics.hd95(pred, truth) == pytest.approx(3.0)
    assert metrics.hd95(pred, truth, spacing=(1.0, 0.5)) == pytest.approx(1.5)
    assert metrics.hd95(truth, truth) == 0.0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differs"):
        metrics.dice(np.zeros((2, 2)), np.zeros((3, 3)))


def test_score_patient_counts_slices():
    truth = np.zeros((4, 8, 8), bool)
    truth[1, 2:4, 2:4] = truth[2, 2:4, 2:4] = True  # tumour on slices 1, 2
    pred = np.zeros_like(truth)
    pred[1, 2:4, 2:4] = True  # finds slice 1, misses slice 2
    pred[3, 0, 0] = True  # one false-positive pixel on empty slice 3
    score = metrics.score_patient("p", pred, truth)
    assert (score.tumour_slices, score.empty_slices) == (2, 2)
    assert score.detected_slices == 1
    assert score.false_positive_slices == 1
    assert score.dice == pytest.approx(2 * 4 / (5 + 8))
    assert metrics.score_patient("p", pred, truth, min_pixels=2).false_positive_slices == 0


def test_summary_scores_empty_patients_apart():
    truth_a = np.zeros((2, 4, 4), bool)
    truth_a[0, :2, :2] = True
    good = metrics.score_patient("a", truth_a, truth_a)  # Dice 1
    half = metrics.score_patient("b", truth_a & _mask((2, 4, 4), np.s_[0, 0, :]), truth_a)  # 2 of 4 pixels
    no_tumour = metrics.score_patient("c", _mask((2, 4, 4), np.s_[1, 0, 0]), np.zeros((2, 4, 4), bool))
    summary = metrics.summarize([good, half, no_tumour])
    assert summary["patients_with_tumour"] == 2
    assert summary["dice"]["mean"] == pytest.approx((1 + 2 * 2 / 6) / 2)  # patient c is not in the mean
    assert summary["worst_patient"]["id"] == "b"
    assert summary["patients_without_tumour_with_false_positive"] == 1
    assert summary["empty_slice_false_positive_rate"] == pytest.approx(1 / 4)  # 1 of a1, b1, c0, c1
