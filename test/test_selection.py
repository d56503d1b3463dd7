"""Selection of the windows people label: scores, diversity, the per-recording cap."""
import numpy as np
import pytest

from lightmer.active.selection import (
    default_cap,
    margins,
    overlapping,
    priority,
    select_diverse,
)
from lightmer.core.uncertainty import entropy_bits

N = 5


def _windows(rng, n_recs=3, per_rec=40, n_classes=6):
    """Consecutive windows (k_last 0..per_rec-1) in each recording, random probabilities."""
    logits = rng.normal(0, 2, size=(n_recs * per_rec, n_classes))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    rec = np.repeat(np.arange(n_recs), per_rec)
    k = np.tile(np.arange(per_rec), n_recs)
    ids = [f'r{r}:{kk}' for r, kk in zip(rec, k, strict=True)]
    return probs, rec, k, ids


def test_uncertainty_picks_the_highest_entropy_without_overlap():
    probs, rec, k, ids = _windows(np.random.default_rng(0))
    h = entropy_bits(probs)
    _, prio = priority(probs, 'uncertainty')
    picked = select_diverse(prio, ids, rec, k, N, n=12, max_per_recording=12)
    assert len(picked) == 12
    assert picked[0] == int(np.argmax(h))                     # the most uncertain first
    assert list(h[picked]) == sorted(h[picked], reverse=True)
    for a in picked:                                          # never two sharing a segment
        for b in picked:
            if a != b and rec[a] == rec[b]:
                assert abs(k[a] - k[b]) >= N
    # Every window skipped over was skipped because it overlaps a better pick.
    chosen = set(picked)
    for i in np.flatnonzero(h > h[picked].min()):
        if i not in chosen:
            assert any(rec[j] == rec[i] and abs(k[j] - k[i]) < N for j in picked)


def test_cap_per_recording_and_default():
    probs, rec, k, ids = _windows(np.random.default_rng(1), n_recs=4, per_rec=60)
    # Make recording 0 the most uncertain everywhere: without a cap it would fill the batch.
    probs[rec == 0] = 1 / probs.shape[1]
    _, prio = priority(probs, 'uncertainty')
    uncapped = select_diverse(prio, ids, rec, k, N, n=8, max_per_recording=8)
    assert set(rec[uncapped]) == {0}
    capped = select_diverse(prio, ids, rec, k, N, n=8)
    assert default_cap(8, 4) == 4
    assert np.bincount(rec[capped]).max() <= 4 and len(capped) == 8
    assert default_cap(10, 1) == 20 and default_cap(3, 10) == 1


def test_margin_and_random():
    probs = np.array([[0.5, 0.4, 0.1], [0.9, 0.05, 0.05], [0.34, 0.33, 0.33]])
    np.testing.assert_allclose(margins(probs), [0.1, 0.85, 0.01])
    score, prio = priority(probs, 'margin')
    assert list(np.argsort(-prio)) == [2, 0, 1]               # smallest margin first
    np.testing.assert_allclose(score, margins(probs))
    a, _ = priority(probs, 'random', seed=3)
    b, _ = priority(probs, 'random', seed=3)
    c, _ = priority(probs, 'random', seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match='strategy'):
        priority(probs, 'greedy')


def test_ties_break_by_id_and_input_order_does_not_matter():
    prio = np.zeros(4)
    ids = ['b:0', 'a:0', 'd:0', 'c:0']
    rec = np.arange(4)
    k = np.zeros(4, int)
    assert [ids[i] for i in select_diverse(prio, ids, rec, k, N, 2)] == ['a:0', 'b:0']


def test_overlapping_zone():
    rec = np.array([0, 0, 0, 0, 1])
    k = np.array([0, 4, 5, 9, 4])
    zone = overlapping(rec, k, np.array([1]), N)
    assert zone.tolist() == [True, True, True, False, False]
