"""Flip TTA and 3-D component rules: what they do, and that export keeps them only when validation Dice rises."""

import numpy as np
import pytest

from brainseg.data.volume import Volume
from brainseg.errors import ConfigError
from brainseg.postprocess import PostProcessing, filter_components

SIZE = 32


def _blob(mask: np.ndarray, slices: slice, rows: slice, cols: slice) -> np.ndarray:
    mask = mask.copy()
    mask[slices, rows, cols] = 1
    return mask


def test_largest_keeps_one_3d_component_and_min_volume_drops_small_ones():
    mask = np.zeros((4, SIZE, SIZE), bool)
    mask = _blob(mask, slice(0, 3), slice(2, 10), slice(2, 10))  # 192 voxels, connected across slices
    mask = _blob(mask, slice(3, 4), slice(20, 23), slice(20, 23))  # 9 voxels
    largest = filter_components(mask, "largest")
    assert largest.sum() == 192 and not largest[3, 20:23, 20:23].any()
    assert filter_components(mask, "min_volume", 10).sum() == 192
    assert filter_components(mask, "min_volume", 9).sum() == 201
    assert filter_components(mask, "none").sum() == 201
    assert not filter_components(np.zeros((2, 4, 4), bool), "largest").any()
    with pytest.raises(ConfigError, match="components must be one of"):
        PostProcessing(components="biggest")


def test_refine_classes_filters_each_class_alone():
    mask = np.zeros((2, SIZE, SIZE, 2), np.uint8)
    mask[0, 0:4, 0:4, 0] = mask[1, 20:22, 20:22, 0] = 1
    mask[0, 10:12, 10:12, 1] = mask[1, 25:31, 25:31, 1] = 1
    refined = PostProcessing(components="largest").refine_classes(mask)
    assert refined[..., 0].sum() == 16 and refined[..., 1].sum() == 36
    assert refined.dtype == np.uint8


def _volume(patient: str, truth: np.ndarray) -> Volume:
    """A volume whose image carries its truth (255 on tumour), so a 'model' can read it back."""
    image = np.repeat((truth * 255).astype(np.uint8)[..., None], 3, axis=-1)
    return Volume(patient, image, truth[..., None].astype(np.uint8), [f"s{i}" for i in range(len(truth))])


def _choose(predict, volumes, **asked):
    from brainseg.export.postprocess_choice import choose_postprocessing

    return choose_postprocessing(predict, volumes, img_size=SIZE, threshold=0.5, **asked)


def _reads_truth(extra=None):
    """predict(images (N, H, W, C)) -> (N, 1, H, W): 0.9 where the image says tumour, plus `extra`."""
    def predict(images):
        probability = np.where(images[..., 0] > 0, 0.9, 0.05).astype(np.float32)
        if extra is not None:
            probability = np.maximum(probability, extra[: len(images)])
        return probability[:, None]

    return predict


@pytest.fixture
def one_blob_volumes():
    empty = np.zeros((4, SIZE, SIZE), np.uint8)
    return [_volume("p1", _blob(empty, slice(0, 3), slice(4, 14), slice(4, 14))),
            _volume("p2", _blob(empty, slice(1, 4), slice(10, 20), slice(6, 16)))]


def test_a_component_rule_is_kept_when_it_raises_validation_dice(one_blob_volumes):
    spurious = np.zeros((4, SIZE, SIZE), np.float32)
    spurious[3, 26:29, 26:29] = 0.8  # a small false blob far from the tumour
    chosen, section = _choose(_reads_truth(spurious), one_blob_volumes, tta="none")
    dice = section["validation_dice"]["components"]
    assert chosen.components in ("largest", "min_volume")
    assert dice[chosen.components] > dice["none"]
    assert section["chosen"] == chosen.to_dict()


def test_a_component_rule_is_dropped_when_it_costs_validation_dice():
    empty = np.zeros((4, SIZE, SIZE), np.uint8)
    two = _blob(_blob(empty, slice(0, 2), slice(2, 8), slice(2, 8)), slice(2, 4), slice(20, 30), slice(20, 30))
    chosen, section = _choose(_reads_truth(), [_volume("p1", two)], tta="none", min_voxels=8)
    dice = section["validation_dice"]["components"]
    assert dice["largest"] < dice["none"] and dice["min_volume"] == dice["none"]
    assert chosen.components == "none"  # a tie is not an improvement


def test_flip_tta_is_kept_only_when_it_raises_validation_dice(one_blob_volumes):
    biased = np.zeros((4, SIZE, SIZE), np.float32)
    biased[:, :, SIZE - 4:] = 0.6  # a model that always sees tumour at the right edge
    chosen, section = _choose(_reads_truth(biased), one_blob_volumes, components="none")
    assert chosen.tta == "flip", section["validation_dice"]
    assert section["validation_dice"]["tta"]["flip"] > section["validation_dice"]["tta"]["none"]

    chosen, section = _choose(_reads_truth(), one_blob_volumes, components="none")
    assert chosen.tta == "none"  # mirror-symmetric already: flipping changes nothing
    assert section["validation_dice"]["tta"]["flip"] == section["validation_dice"]["tta"]["none"]


def test_a_fixed_choice_is_recorded_with_its_numbers(one_blob_volumes):
    chosen, section = _choose(_reads_truth(), one_blob_volumes, tta="flip", components="largest")
    assert (chosen.tta, chosen.components) == ("flip", "largest")
    assert section["asked"] == {"tta": "flip", "components": "largest"}
    assert set(section["validation_dice"]["tta"]) == {"none", "flip"}
    with pytest.raises(ConfigError, match="--tta must be one of"):
        _choose(_reads_truth(), one_blob_volumes, tta="mirror")


def test_flip_tta_around_a_real_backend_averages_both_passes(tiny_artifacts, tiny_sample):
    from brainseg.artifacts.manifest import Manifest
    from brainseg.runtime.segmenter import Segmenter, SegmenterOptions

    manifest = Manifest.load(tiny_artifacts)
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 256, (2, *manifest.input.size, manifest.input.channels), dtype=np.uint8)
    with Segmenter(manifest, SegmenterOptions(precision="fp32", threads=1, tta="none")) as plain_run:
        plain = plain_run.infer(batch)
        mirrored = plain_run.infer(np.ascontiguousarray(batch[:, :, ::-1]))
    with Segmenter(manifest, SegmenterOptions(precision="fp32", threads=1, tta="flip")) as flipped:
        both = flipped.infer(batch)
    expected = 0.5 * (plain["probability"] + mirrored["probability"][..., ::-1])
    np.testing.assert_allclose(both["probability"], expected, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(both["mask"], (expected >= manifest.threshold).astype(np.uint8))
    assert np.abs(both["probability"] - plain["probability"]).max() > 1e-4, "flipping changed nothing: vacuous"
