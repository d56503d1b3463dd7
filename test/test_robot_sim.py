"""Pieces of `lightmer simulate-robot` that a long run depends on: the session split and the
learning-curve summary."""
import numpy as np

from lightmer.datasets.loaders import index_dataset
from lightmer.experiments.robot_sim import SimSize, _curves
from lightmer.experiments.robot_world import split_sessions


def test_sessions_split_each_person_and_emotion(tiny_corpus, tmp_path):
    roots = split_sessions(tiny_corpus, tmp_path, eval_clips=1)
    pool, _ = index_dataset('crema-d', roots['pool'])
    held, _ = index_dataset('crema-d', roots['eval'])
    everything, _ = index_dataset('crema-d', tiny_corpus)
    assert pool == [] or not {r.clip_id for r in pool} & {r.clip_id for r in held}
    assert sorted(r.clip_id for r in pool + held) == sorted(r.clip_id for r in everything)
    assert {(r.actor, r.label) for r in held} == {(r.actor, r.label) for r in everything}


def test_curves_by_windows_asked():
    size = SimSize(base_actors=1, base_clips=1, base_epochs=1, people=1, pool_clips=1,
                   eval_clips=1, budgets=(12, 24), seeds=(0, 1))

    def report(accs):
        rounds = [{'round': 0, 'asked': 30, 'accuracy': accs[0]}]      # 30: prior answers
        rounds += [{'round': r, 'asked': 12 * r, 'accuracy': a}
                   for r, a in enumerate(accs[1:], start=1)]
        return {'rounds': rounds}

    reports = {(s, seed): report([0.2, 0.3 + 0.1 * seed, 0.5]) for s in size.strategies
               for seed in size.seeds}
    curves = _curves(reports, size)
    c = curves['uncertainty']
    assert c['labels'] == [0, 12, 24]
    np.testing.assert_allclose(c['mean'], [0.2, 0.35, 0.5])
    np.testing.assert_allclose(c['low'], [0.2, 0.3, 0.5])
    np.testing.assert_allclose(c['high'], [0.2, 0.4, 0.5])
