"""Pieces of `lightmer simulate-robot` that a long run depends on: the session split and the
learning-curve summary."""
import numpy as np
import pytest

from lightmer.active.finetune import FinetuneConfig
from lightmer.datasets.loaders import index_dataset
from lightmer.experiments.robot_sim import VARIANTS, SimSize, simulate_robot, summarise
from lightmer.experiments.robot_world import split_sessions


def test_sessions_split_each_person_and_emotion(tiny_corpus, tmp_path):
    roots = split_sessions(tiny_corpus, tmp_path, eval_clips=1)
    pool, _ = index_dataset('crema-d', roots['pool'])
    held, _ = index_dataset('crema-d', roots['eval'])
    everything, _ = index_dataset('crema-d', tiny_corpus)
    assert pool == [] or not {r.clip_id for r in pool} & {r.clip_id for r in held}
    assert sorted(r.clip_id for r in pool + held) == sorted(r.clip_id for r in everything)
    assert {(r.actor, r.label) for r in held} == {(r.actor, r.label) for r in everything}


def _replicate(draw, base, adapted, acc):
    """A replicate as robot_sim.replicate returns it: acc is strategy -> accuracy at 0/12/24."""
    return {'draw': draw, 'training_seed': 0,
            'base': {'window_accuracy': base, 'clip_accuracy': base},
            'adapted': {'window_accuracy': adapted, 'clip_accuracy': adapted + 0.1},
            'strategies': {s: {'window_accuracy': dict(zip(('0', '12', '24'), a, strict=True))}
                           for s, a in acc.items()}}


def test_summary_pairs_replicates_and_checks_the_goals():
    size = SimSize(budgets=(12, 24), strategies=('staged', 'random'))
    reps = [_replicate(d, 0.2 + 0.1 * d, 0.45 + 0.1 * d,
                       {'staged': [0.45 + 0.1 * d, 0.52 + 0.1 * d, 0.55 + 0.1 * d],
                        'random': [0.45 + 0.1 * d, 0.46 + 0.1 * d, 0.50 + 0.1 * d - 0.01 * d]})
            for d in range(5)]
    r = summarise(reps, size)
    gain = r['zero_labels']['adaptation_gain_window']
    assert gain['mean'] == pytest.approx(0.25) and gain['n'] == 5
    assert gain['low'] == pytest.approx(0.25)             # the same gain in every replicate
    c = r['curves']['staged']
    assert c['labels'] == [0, 12, 24]
    np.testing.assert_allclose(c['mean'], [0.65, 0.72, 0.75])
    assert c['low'][1] < 0.72 < c['high'][1]              # replicates differ: a real interval
    d12 = r['versus_random']['staged']['12']
    assert d12['mean'] == pytest.approx(0.06) and d12['low'] == pytest.approx(0.06)
    assert r['versus_random']['staged']['24']['mean'] == pytest.approx(0.07)
    goals = r['goals']
    assert goals['adaptation_gain_at_least_0.20'] is True
    assert goals['default_vs_random'] == {'12': True, '24': True}
    assert goals['rounds_below_round0'] == []
    reps[0]['strategies']['random']['window_accuracy']['12'] = 0.40   # below its round 0
    assert summarise(reps, size)['goals']['rounds_below_round0'] == [(0, 0, 'random', 12)]


def test_every_finetune_variant_is_a_valid_setting_and_an_unknown_one_is_refused(tmp_path):
    assert VARIANTS['default'] == {}
    for name, overrides in VARIANTS.items():
        cfg = FinetuneConfig(checkpoint=tmp_path / 'm.pt', pool=tmp_path, mix=0,
                             answers=tmp_path / 'a.csv', out=tmp_path / name, **overrides)
        assert all(getattr(cfg, k) == v for k, v in overrides.items())
    with pytest.raises(ValueError, match='variant must be one of'):
        simulate_robot(tmp_path / 'sim', variant='nope')
    assert not (tmp_path / 'sim').exists()
