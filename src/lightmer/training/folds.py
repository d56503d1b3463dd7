"""Subject-independent folds and the D_train(0) / U / test split of paper section V-A (pure).

Everything is derived from the sorted actor ids and an integer seed, never from file-system
order, so the same ids and seed give the same split on any machine.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

# Seed offsets keep the fold shuffle and the D0 shuffle on independent random streams.
_FOLD_STREAM = 0
_D0_STREAM = 1


@dataclass(frozen=True)
class Split:
    """Actor ids of one fold: D_train(0), the pool U and the test fold; pairwise disjoint."""

    d0: tuple[str, ...]
    pool: tuple[str, ...]
    test: tuple[str, ...]

    @property
    def train(self) -> tuple[str, ...]:
        """All training actors, D0 followed by U."""
        return self.d0 + self.pool

    def to_dict(self) -> dict:
        return {'d0': list(self.d0), 'pool': list(self.pool), 'test': list(self.test)}


def _unique_sorted(actors: Iterable[str]) -> list[str]:
    ids = sorted({str(a) for a in actors})
    if not ids:
        raise ValueError('no actors: the cache index lists no usable clips')
    return ids


def actor_folds(actors: Iterable[str], n_folds: int, seed: int) -> list[list[str]]:
    """Partition the distinct actor ids into `n_folds` test folds of near-equal size.

    The sorted ids are shuffled by a generator seeded with `seed`, then cut into consecutive
    chunks whose sizes differ by at most one. Each fold's ids are returned sorted.
    Raises ValueError when there are fewer actors than folds (a fold would have no test actor).
    """
    ids = _unique_sorted(actors)
    if n_folds < 2:
        raise ValueError(f'need at least 2 folds for cross-validation, got {n_folds}')
    if n_folds > len(ids):
        raise ValueError(f'{n_folds} folds but only {len(ids)} actors: some fold would have no '
                         f'test actors; pass --folds {len(ids)} or fewer')
    rng = np.random.default_rng([seed, _FOLD_STREAM])
    order = rng.permutation(len(ids))
    chunks = np.array_split(order, n_folds)
    return [sorted(ids[i] for i in chunk) for chunk in chunks]


def split_fold(actors: Iterable[str], n_folds: int, fold: int, seed: int) -> Split:
    """The split of fold `fold` (0-based): test = that fold's actors, D0 = 1/3 of the rest
    (rounded, at least one actor), U = the remaining training actors.

    D0 is drawn with a generator seeded by (seed, fold), so each fold has its own D0.
    """
    folds = actor_folds(actors, n_folds, seed)
    if not 0 <= fold < n_folds:
        raise ValueError(f'fold must be in [0, {n_folds - 1}], got {fold}')
    test = folds[fold]
    train = sorted(a for k, f in enumerate(folds) if k != fold for a in f)
    rng = np.random.default_rng([seed, _D0_STREAM, fold])
    n_d0 = max(1, round(len(train) / 3))
    picked = set(rng.choice(len(train), size=n_d0, replace=False).tolist())
    d0 = tuple(a for i, a in enumerate(train) if i in picked)
    pool = tuple(a for i, a in enumerate(train) if i not in picked)
    split = Split(d0=d0, pool=pool, test=tuple(test))
    check_disjoint(split)
    return split


def check_disjoint(split: Split) -> None:
    """Raise ValueError if any actor is in two of D0, U and test, or test/D0 is empty."""
    sets = {'d0': set(split.d0), 'pool': set(split.pool), 'test': set(split.test)}
    for a, b in (('d0', 'pool'), ('d0', 'test'), ('pool', 'test')):
        both = sets[a] & sets[b]
        if both:
            raise ValueError(f'actors {sorted(both)} are in both {a} and {b}: the split is not '
                             f'subject-independent')
    if not split.test:
        raise ValueError('the test fold has no actors')
    if not split.d0:
        raise ValueError('D_train(0) has no actors')
