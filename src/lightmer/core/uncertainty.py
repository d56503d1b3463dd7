"""Entropy of predicted distributions and most-uncertain selection (paper eq. 4, Algorithm 1).

Pure numpy: arrays in, new arrays out, arguments never mutated.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def entropy_bits(probs: np.ndarray) -> np.ndarray:
    """Shannon entropy H(y) = -sum_c y_c log2 y_c of each row, in bits.

    probs: float array (M, C), each row a probability distribution (non-negative, sums to 1
    within float tolerance). Returns float64 (M,), each in [0, log2 C]. Zero probabilities
    contribute 0 (the limit of y log y as y -> 0), so a one-hot row has entropy exactly 0.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f'probs must have shape (M, C), got {p.shape}')
    if p.size and (not np.all(np.isfinite(p)) or p.min() < 0.0):
        raise ValueError('probs must be finite and non-negative: pass softmax outputs, '
                         'not logits')
    # where=p>0 skips log(0); the output starts at 0 there, which is the limit value.
    logs = np.log2(p, out=np.zeros_like(p), where=p > 0)
    h = -(p * logs).sum(axis=1)
    # -0.0 and tiny negative rounding (a row like [1, 0]) read as 0 bits.
    return np.maximum(h, 0.0)


def most_uncertain(entropies: np.ndarray, ids: Sequence[str], n: int) -> list[int]:
    """Indices of the `n` highest entropies, highest first; ties broken by id ascending.

    entropies: float (M,) bits; ids: M distinct clip ids aligned with it; n: 0 <= n.
    If n >= M every index is returned (the pool is simply emptied). The order depends only on
    the values and ids, never on the input order, so selection is reproducible.
    """
    h = np.asarray(entropies, dtype=np.float64)
    if h.ndim != 1 or len(ids) != h.shape[0]:
        raise ValueError(f'entropies (M,) and ids (M) must align: got {h.shape} and {len(ids)}')
    if n < 0:
        raise ValueError(f'n must be >= 0, got {n}')
    if np.isnan(h).any():
        raise ValueError('entropies contain NaN: the model produced invalid probabilities')
    if len(set(ids)) != len(ids):
        raise ValueError('ids must be distinct so that ties have one deterministic order')
    # Sort by (-entropy, id): Python's sort is total on these tuples, unlike argsort on floats
    # alone, whose order among equal keys would depend on the input order.
    order = sorted(range(h.shape[0]), key=lambda i: (-h[i], ids[i]))
    return order[:n]
