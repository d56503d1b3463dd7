"""SegmentDataset: shapes, labels, random frames per epoch in training, fixed ones in eval."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lightmer.core.config import PRESETS
from lightmer.core.segments import segment_bounds
from lightmer.datasets.cache import SegmentDataset, load_index

PRESET = PRESETS['crema-d']
N = PRESET.n_segments


@pytest.fixture(scope='module')
def index(tiny_cache):
    return load_index(tiny_cache)


def _crop_times(tiny_cache, clip_id):
    with np.load(tiny_cache / 'clips' / f'{clip_id}.npz') as z:
        return z['crop_times'], float(z['duration'])


def test_index_helpers(index):
    assert len(index.clip_ids) == 24 and index.clip_ids == sorted(index.clip_ids)
    assert sorted(set(index.actors)) == ['1001', '1002', '1003', '1004']
    assert sorted(set(index.label_indices())) == list(range(6))
    assert [PRESET.codes[i] for i in index.label_indices()] == index.label_codes


def test_sample_shapes_and_labels(tiny_cache, index):
    torch.set_num_threads(1)
    ds = SegmentDataset(tiny_cache, index.clip_ids, N, PRESET.labels, train=True, seed=0)
    faces, mels, y = ds[0]
    assert faces.shape == (N, 1, 98, 80) and faces.dtype == torch.float32
    assert mels.shape == (N, 1, 128, 43) and mels.dtype == torch.float32
    assert torch.isfinite(mels).all() and faces.abs().max() <= 1
    assert y == PRESET.codes.index(index.label_codes[0])
    # class order given as dataset codes (as train.py does) or as class names: same targets
    by_code = SegmentDataset(tiny_cache, index.clip_ids, N, PRESET.codes, train=False, seed=0)
    assert by_code.targets == ds.targets == index.label_indices()
    assert by_code.actors == index.actors
    batch = next(iter(DataLoader(ds, batch_size=4)))
    assert batch[0].shape == (4, N, 1, 98, 80) and batch[1].shape == (4, N, 1, 128, 43)


def test_training_draws_change_with_the_epoch_and_repeat_with_the_seed(tiny_cache, index):
    ds = SegmentDataset(tiny_cache, index.clip_ids, N, PRESET.labels, train=True, seed=7)
    draws = {}
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        draws[epoch] = [ds.choose(i) for i in range(len(ds))]
    picks0 = np.stack([p for p, _ in draws[0]])
    picks1 = np.stack([p for p, _ in draws[1]])
    assert (picks0 != picks1).mean() > 0.4          # other frames in another epoch
    rerun = SegmentDataset(tiny_cache, index.clip_ids, N, PRESET.labels, train=True, seed=7)
    rerun.set_epoch(1)
    for i in (0, 5):
        p, c = rerun.choose(i)
        np.testing.assert_array_equal(p, draws[1][i][0])
        np.testing.assert_array_equal(c, draws[1][i][1])
    ds.set_epoch(0)
    a, b = ds[3], ds[3]
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    # every pick lies in its own segment; the audio centre within 10 ms of the chosen frame
    for i, (picks, centres) in enumerate(draws[0]):
        times, duration = _crop_times(tiny_cache, index.clip_ids[i])
        bounds = segment_bounds(duration, N)
        t = times[picks]
        assert np.all((bounds[:, 0] <= t) & (t <= bounds[:, 1]))
        assert np.all(np.abs(centres - t) <= 0.010)
    jitter = np.concatenate([c - _crop_times(tiny_cache, index.clip_ids[i])[0][p]
                             for i, (p, c) in enumerate(draws[0])])
    assert jitter.std() > 0.003                      # the ±10 ms jitter is really drawn


def test_evaluation_draws_are_fixed_segment_centres(tiny_cache, index):
    ds = SegmentDataset(tiny_cache, index.clip_ids, N, PRESET.labels, train=False, seed=7)
    first = [ds.choose(i) for i in range(len(ds))]
    ds.set_epoch(5)
    other = SegmentDataset(tiny_cache, index.clip_ids, N, PRESET.labels, train=False, seed=99)
    for i, (picks, centres) in enumerate(first):
        for again in (ds.choose(i), other.choose(i)):
            np.testing.assert_array_equal(again[0], picks)
            np.testing.assert_array_equal(again[1], centres)
        times, duration = _crop_times(tiny_cache, index.clip_ids[i])
        mid = segment_bounds(duration, N).mean(axis=1)
        np.testing.assert_allclose(centres, mid)
        np.testing.assert_array_equal(picks, [np.argmin(np.abs(times - m)) for m in mid])


def test_other_segment_counts_and_bad_ids(tiny_cache, index):
    ds = SegmentDataset(tiny_cache, index.clip_ids[:2], 8, PRESET.labels, train=True, seed=0)
    faces, mels, _ = ds[1]
    assert faces.shape[0] == mels.shape[0] == 8
    with pytest.raises(KeyError, match='not in'):
        SegmentDataset(tiny_cache, ['1001_DFA_ANG_HI'], N, PRESET.labels, train=True, seed=0)
    with pytest.raises(ValueError, match='neither'):
        SegmentDataset(tiny_cache, index.clip_ids, N, ('a', 'b'), train=True, seed=0)
