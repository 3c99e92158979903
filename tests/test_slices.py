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
