"""Which pooled windows to ask a person about next: scores and a diverse batch (pure numpy).

Strategies (the window's probabilities come from the model in eval mode):
- uncertainty: entropy in bits (`uncertainty.entropy_bits`, paper eq. 4), highest first;
- margin: probability of the top class minus that of the second, smallest first;
- random: a seeded random order (the baseline every strategy must beat).

Diversity: windows of one recording that share a segment (|k_a - k_b| < N, so their camera
time overlaps) hold nearly the same frames and sounds; a batch never holds two of them. And no
recording gives more than `max_per_recording` windows (default `default_cap`: twice its fair
share, ceil(2 n / R) for R recordings with candidates), so one long or odd session cannot
fill the batch. The batch is filled greedily in score order under both rules; ties go to the
window id in ascending order, so a selection is reproducible.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from lightmer.core.uncertainty import entropy_bits

STRATEGIES = ('uncertainty', 'margin', 'random')


def margins(probs: np.ndarray) -> np.ndarray:
    """float (M, C) probabilities -> float64 (M,) top-1 minus top-2 probability (0 = a tie)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f'probs must have shape (M, C >= 2), got {p.shape}')
    top2 = np.sort(p, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def priority(probs: np.ndarray, strategy: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(score float64 (M,), priority float64 (M,)): ask in decreasing priority.

    score is what the manifest reports (entropy in bits, margin, or the random draw);
    priority is the same value oriented so that larger means ask first.
    """
    if strategy == 'uncertainty':
        h = entropy_bits(probs)
        return h, h
    if strategy == 'margin':
        m = margins(probs)
        return m, -m
    if strategy == 'random':
        draw = np.random.default_rng(seed).random(len(probs))
        return draw, draw
    raise ValueError(f'strategy must be one of {STRATEGIES}, got {strategy!r}')


def default_cap(n: int, n_recordings: int) -> int:
    """Most windows one recording may give to a batch of `n`: twice its fair share."""
    return max(1, math.ceil(2 * n / max(1, n_recordings)))


def select_diverse(priority_: np.ndarray, ids: Sequence[str], recordings: np.ndarray,
                   k_last: np.ndarray, n_segments: int, n: int,
                   max_per_recording: int | None = None) -> list[int]:
    """Indices of at most `n` windows, highest priority first, under the diversity rules.

    priority_: float (M,); ids: M distinct window ids (tie order); recordings: int (M,)
    recording of each window; k_last: int (M,) last segment id; n_segments: N. Fewer than n
    come back only when the rules leave no other candidate.
    """
    pr = np.asarray(priority_, dtype=np.float64)
    rec = np.asarray(recordings)
    k = np.asarray(k_last, dtype=np.int64)
    if not (pr.shape == rec.shape == k.shape == (len(ids),)):
        raise ValueError('priority, ids, recordings and k_last must align (M,)')
    if np.isnan(pr).any():
        raise ValueError('priorities contain NaN: the model produced invalid probabilities')
    if n < 0:
        raise ValueError(f'n must be >= 0, got {n}')
    cap = default_cap(n, len(np.unique(rec))) if max_per_recording is None else max_per_recording
    if cap < 1:
        raise ValueError(f'max_per_recording must be >= 1, got {cap}')
    order = sorted(range(len(ids)), key=lambda i: (-pr[i], ids[i]))
    picked: list[int] = []
    taken: dict[object, list[int]] = {}
    for i in order:
        if len(picked) == n:
            break
        mine = taken.setdefault(rec[i].item(), [])
        if len(mine) >= cap or any(abs(k[i] - kk) < n_segments for kk in mine):
            continue
        mine.append(int(k[i]))
        picked.append(i)
    return picked


def overlapping(rec: np.ndarray, k_last: np.ndarray, chosen: np.ndarray,
                n_segments: int) -> np.ndarray:
    """bool (M,): windows that share a segment with any window of `chosen` (indices), the
    chosen ones included. Used to keep evaluation windows out of training."""
    rec = np.asarray(rec)
    k = np.asarray(k_last, dtype=np.int64)
    out = np.zeros(len(k), bool)
    for j in np.asarray(chosen, dtype=np.int64):
        out |= (rec == rec[j]) & (np.abs(k - k[j]) < n_segments)
    return out
