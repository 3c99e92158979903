"""Batch sampling and resizing of training slices."""

import numpy as np
import pytest
import torch

from brainseg.train.slices import SliceTable, epoch_batches, resize_slices


def _table(n, tumour_every=3):
    masks = np.zeros((n, 8, 8, 1), np.uint8)
    masks[::tumour_every, 2:4, 2:4] = 1
    return SliceTable(np.zeros((n, 8, 8, 3), np.uint8), masks, masks.reshape(n, -1).any(axis=1))


@pytest.mark.parametrize("n", [17, 18, 19, 21])
def test_every_rank_gets_the_same_number_of_batches(n):
    table = _table(n)
    counts = {len(epoch_batches(table, batch_size=2, oversample=0.0, generator=torch.Generator().manual_seed(0),
                                rank=r, world_size=3)) for r in range(3)}
    assert len(counts) == 1


def test_ranks_draw_disjoint_slices_of_one_permutation():
    table = _table(24)
    shards = [np.concatenate(epoch_batches(table, batch_size=4, oversample=0.0,
                                           generator=torch.Generator().manual_seed(1), rank=r, world_size=2))
              for r in range(2)]
    assert not set(shards[0]) & set(shards[1])
    assert sorted(np.concatenate(shards)) == list(range(24))


def test_oversampling_reaches_the_asked_share_of_tumour_slices():
    table = _table(600, tumour_every=10)  # 10% tumour slices
    drawn = np.concatenate(epoch_batches(table, batch_size=8, oversample=0.5,
                                         generator=torch.Generator().manual_seed(2)))
    assert table.has_tumour[drawn].mean() == pytest.approx(0.5, abs=0.06)


def test_masks_are_resized_without_new_values():
    mask = np.zeros((2, 50, 70, 1), np.uint8)
    mask[:, 10:30, 20:40] = 1
    resized = resize_slices(mask, 32, is_mask=True)
    assert resized.shape == (2, 32, 32, 1)
    assert set(np.unique(resized)) == {0, 1}


def _volumes(count, slices=30, size=160, seed=0):
    """Float32 BraTS-like volumes made one at a time, each ~12 MB (4 channels)."""
    from brainseg.data.volume import Volume

    for number in range(count):
        rng = np.random.default_rng(seed + number)
        mask = np.zeros((slices, size, size, 3), np.uint8)
        mask[number % slices :: 7, 40:60, 50:70] = 1
        yield Volume(f"case{number:02d}", rng.standard_normal((slices, size, size, 4), np.float32), mask,
                     [f"case{number:02d}:z{z}" for z in range(slices)], source="brats")


def test_slice_cache_holds_one_volume_at_a_time_and_maps_the_training_table(tmp_path):
    import tracemalloc

    from brainseg.train.slices import SliceCache

    def peak_while_caching(count):
        tracemalloc.start()
        cache = SliceCache.build(_volumes(count), tmp_path / f"c{count}", size=64)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return cache, peak

    small, peak_small = peak_while_caching(3)
    large, peak_large = peak_while_caching(12)
    one_volume = 30 * 160 * 160 * 4 * 4
    assert peak_large < 3 * one_volume and peak_large < 1.3 * peak_small  # 4x the cases (12 volumes), same memory
    assert large.ids == [f"case{n:02d}" for n in range(12)]
    assert large.patients[5].tumour_slices == 4  # slices 5, 12, 19, 26
    wanted = ["case03", "case07", "case11"]
    large.write_table(wanted)
    table = SliceCache.open(large.folder).table()
    assert isinstance(table.images, np.memmap) and table.images.shape == (90, 64, 64, 4)
    expected = [v for v in _volumes(12) if v.patient_id in wanted]
    np.testing.assert_array_equal(table.images[30:60], resize_slices(expected[1].image, 64, is_mask=False))
    np.testing.assert_array_equal(table.masks[60:], resize_slices(expected[2].mask, 64, is_mask=True))
    np.testing.assert_array_equal(table.has_tumour, np.concatenate([v.tumour_slices for v in expected]))
    assert sorted(p.name for p in large.folder.iterdir()) == ["index.json", "train.images.npy", "train.masks.npy"]
