"""Entropy in bits and most-uncertain selection (paper eq. 4 and Algorithm 1, lines 3-8)."""
import numpy as np
import pytest

from lightmer.core.uncertainty import entropy_bits, most_uncertain


def test_entropy_of_known_distributions():
    probs = np.array([
        [0.25, 0.25, 0.25, 0.25],   # uniform over 4: 2 bits
        [1.0, 0.0, 0.0, 0.0],       # certain: 0 bits (0 log 0 = 0, no NaN)
        [0.5, 0.5, 0.0, 0.0],       # fair coin: 1 bit
        [0.5, 0.25, 0.25, 0.0],     # 0.5*1 + 2*0.25*2 = 1.5 bits
    ])
    before = probs.copy()
    h = entropy_bits(probs)
    np.testing.assert_allclose(h, [2.0, 0.0, 1.0, 1.5], atol=1e-12)
    assert h.dtype == np.float64 and h.shape == (4,)
    np.testing.assert_array_equal(probs, before)  # input untouched


def test_entropy_maximum_is_log2_c_and_handles_float32():
    c = 6
    uniform = np.full((1, c), 1.0 / c, dtype=np.float32)
    peaked = np.array([[0.9, 0.02, 0.02, 0.02, 0.02, 0.02]], dtype=np.float32)
    assert entropy_bits(uniform)[0] == pytest.approx(np.log2(c), abs=1e-6)
    assert 0 < entropy_bits(peaked)[0] < np.log2(c)


def test_entropy_rejects_logits_and_bad_shapes():
    with pytest.raises(ValueError, match='non-negative'):
        entropy_bits(np.array([[2.0, -1.0]]))
    with pytest.raises(ValueError, match='shape'):
        entropy_bits(np.array([0.5, 0.5]))


def test_most_uncertain_orders_by_entropy_then_id():
    h = np.array([0.5, 2.0, 1.0, 2.0, 1.0, 0.0])
    ids = ['e', 'd', 'c', 'b', 'a', 'f']
    # 2.0 tie between 'd' (1) and 'b' (3) -> 'b' first; 1.0 tie 'c' (2), 'a' (4) -> 'a' first
    assert most_uncertain(h, ids, 4) == [3, 1, 4, 2]
    assert most_uncertain(h, ids, 0) == []
    assert most_uncertain(h, ids, 100) == [3, 1, 4, 2, 0, 5]


def test_most_uncertain_is_independent_of_input_order():
    rng = np.random.default_rng(3)
    h = rng.choice([0.0, 0.5, 1.0], size=30)  # many exact ties
    ids = [f'clip{i:02d}' for i in range(30)]
    chosen = {ids[i] for i in most_uncertain(h, ids, 10)}
    perm = rng.permutation(30)
    chosen_perm = {ids[perm[i]] for i in most_uncertain(h[perm], [ids[p] for p in perm], 10)}
    assert chosen == chosen_perm


def test_most_uncertain_on_entropies_of_real_distributions():
    probs = np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4], [0.5, 0.5], [1.0, 0.0]])
    ids = ['z', 'y', 'x', 'w', 'v']
    assert most_uncertain(entropy_bits(probs), ids, 3) == [3, 1, 2]


def test_most_uncertain_rejects_bad_input():
    with pytest.raises(ValueError, match='align'):
        most_uncertain(np.zeros(3), ['a', 'b'], 1)
    with pytest.raises(ValueError, match='distinct'):
        most_uncertain(np.zeros(2), ['a', 'a'], 1)
    with pytest.raises(ValueError, match='NaN'):
        most_uncertain(np.array([np.nan, 1.0]), ['a', 'b'], 1)
