"""Actor-disjoint folds and the D0 / U / test split (paper section V-A)."""
import pytest

from lightmer.training.folds import Split, actor_folds, check_disjoint, split_fold

ACTORS = [str(a) for a in range(1001, 1092)]  # CREMA-D's 91 actor ids


def test_folds_partition_the_actors_evenly_and_deterministically():
    folds = actor_folds(ACTORS, 5, seed=0)
    assert sorted(a for f in folds for a in f) == ACTORS
    assert sorted(len(f) for f in folds) == [18, 18, 18, 18, 19]
    assert actor_folds(list(reversed(ACTORS)) + ACTORS[:3], 5, seed=0) == folds  # order, dupes
    assert actor_folds(ACTORS, 5, seed=1) != folds


@pytest.mark.parametrize('n_actors', [24, 91, 7])
def test_split_is_disjoint_covers_training_actors_and_d0_is_a_third(n_actors):
    actors = [f'{a:02d}' for a in range(1, n_actors + 1)]
    n_folds = 5
    tests = []
    for fold in range(n_folds):
        s = split_fold(actors, n_folds, fold, seed=7)
        assert not set(s.d0) & set(s.pool)
        assert not set(s.d0) & set(s.test)
        assert not set(s.pool) & set(s.test)
        assert sorted(s.d0 + s.pool + s.test) == actors
        assert len(s.d0) == max(1, round(len(s.train) / 3))
        assert s == split_fold(list(reversed(actors)), n_folds, fold, seed=7)
        tests.extend(s.test)
    assert sorted(tests) == actors  # every actor is tested exactly once


def test_d0_differs_between_folds_and_seeds():
    d0s = {split_fold(ACTORS, 5, k, seed=0).d0 for k in range(5)}
    assert len(d0s) == 5
    assert split_fold(ACTORS, 5, 0, seed=0) != split_fold(ACTORS, 5, 0, seed=1)


def test_clear_errors():
    with pytest.raises(ValueError, match='no test actors'):
        actor_folds(['1', '2', '3'], 5, seed=0)
    with pytest.raises(ValueError, match='fold must be'):
        split_fold(ACTORS, 5, 5, seed=0)
    with pytest.raises(ValueError, match='no actors'):
        actor_folds([], 5, seed=0)
    with pytest.raises(ValueError, match='both d0 and test'):
        check_disjoint(Split(d0=('1', '2'), pool=('3',), test=('2',)))
