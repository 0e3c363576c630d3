"""Block loader: every row once per epoch, shuffled reproducibly, streamed or cached alike."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ctrzoo.data.loader import BatchLoader
from ctrzoo.data.prepare import PrepareOptions, prepare


@pytest.fixture(scope="module")
def criteo_ds(sample_rows, tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "criteo"
    # tiny blocks so the train split has many row groups
    prepare("criteo", [sample_rows / "criteo_sample.tsv"], out, options=PrepareOptions(block_bytes=2500))
    return out


def _rows(loader: BatchLoader) -> np.ndarray:
    return np.concatenate([torch.cat([b.sparse, b.dense], 1).numpy() for b in loader])


@pytest.mark.parametrize("cache", [True, False])
def test_each_row_once_per_epoch_and_reshuffled(criteo_ds, cache):
    loader = BatchLoader(criteo_ds, "train", batch_size=16, seed=5, cache=cache, block_rows=40)
    e1, e2 = _rows(loader), _rows(loader)
    assert len(e1) == loader.rows == len(e2)
    assert sorted(map(tuple, e1)) == sorted(map(tuple, e2))  # same multiset of rows
    assert not np.array_equal(e1, e2)  # a new order each epoch
    again = BatchLoader(criteo_ds, "train", batch_size=16, seed=5, cache=cache, block_rows=40)
    np.testing.assert_array_equal(_rows(again), e1)  # reproducible with the seed


def test_batches_have_the_fixed_layout_and_sizes(criteo_ds):
    loader = BatchLoader(criteo_ds, "train", batch_size=50, shuffle=False)
    sizes = [len(b) for b in loader]
    assert sizes[:-1] == [50] * (len(sizes) - 1) and sum(sizes) == loader.rows and len(loader) == len(sizes)
    b = next(iter(loader))
    assert b.sparse.dtype == torch.int64 and b.sparse.shape == (50, 26)
    assert b.dense.dtype == torch.float32 and b.dense.shape == (50, 13)
    assert b.seq.shape == (50, 0, 0) and b.label.dtype == torch.float32
    dropped = BatchLoader(criteo_ds, "train", batch_size=50, shuffle=False, drop_last=True)
    assert all(len(x) == 50 for x in dropped)


def test_streamed_equals_cached_without_shuffle(criteo_ds):
    a = BatchLoader(criteo_ds, "test", batch_size=7, shuffle=False, cache=True)
    b = BatchLoader(criteo_ds, "test", batch_size=7, shuffle=False, cache=False)
    np.testing.assert_array_equal(_rows(a), _rows(b))


@pytest.mark.parametrize("block_bytes", [2500, 1 << 20])  # many row groups / a single one
def test_rank_parts_are_disjoint_and_cover_the_split(sample_rows, tmp_path, block_bytes):
    out = tmp_path / "ds"
    prepare("criteo", [sample_rows / "criteo_sample.tsv"], out, options=PrepareOptions(block_bytes=block_bytes))
    whole = _rows(BatchLoader(out, "train", batch_size=1000, shuffle=False))
    parts = [_rows(BatchLoader(out, "train", batch_size=7, seed=3, rank=r, world_size=2)) for r in range(2)]
    assert len(parts[0]) > 0 and len(parts[1]) > 0
    assert len(parts[0]) + len(parts[1]) == len(whole)
    assert sorted(map(tuple, np.concatenate(parts))) == sorted(map(tuple, whole))


@pytest.mark.parametrize("world", [2, 3, 5])
def test_ranks_get_equal_disjoint_row_ranges_whatever_the_group_sizes(world):
    from ctrzoo.data.loader import _shard

    # Parquet row groups of unequal sizes (each file: full groups and a small remainder), as prepare writes them
    groups = [(f"f{f}", g, n) for f in range(4) for g, n in enumerate([131_072, 131_072, 131_072, 6_613])]
    parts = [_shard(groups, r, world) for r in range(world)]
    sizes = [sum(stop - start for _, _, start, stop in part) for part in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == sum(n for *_, n in groups)
    covered = sorted((p, g, start, stop) for part in parts for p, g, start, stop in part)
    for (p, g, _, stop), (q, h, start, _) in itertools.pairwise(covered):  # no row twice, none left out
        assert (p, g) != (q, h) or stop == start
