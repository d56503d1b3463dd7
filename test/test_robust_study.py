"""`lightmer robust-study`: its report's arithmetic, its second shift, its recipes."""
import numpy as np
import pytest

from lightmer.active.query import pool_probs, segment_scorer
from lightmer.experiments import robust_study as study
from lightmer.experiments.robot_sim import ROBOT_SHIFT
from lightmer.experiments.robot_world import WorldSize, people_draw, pooled, score_on_pool
from lightmer.stream.settings import StreamSettings


def _row(recipe, seed, draw, shift, acc):
    score = {'window_accuracy': acc, 'clip_accuracy': acc + 0.1, 'windows_scored': 10,
             'clips': 4, 'clips_without_windows': 0}
    return {'recipe': recipe, 'seed': seed, 'shift': shift, 'draw': draw,
            **{m: dict(score) for m in study.MODALITIES}}


def test_intervals_are_over_draws_and_over_seeds_and_differences_paired_by_draw():
    size = study.size_with('full', seeds=[0, 1], draws=3, recipes=['paper', 'augment'])
    people = [0.30, 0.45, 0.60]                      # draws differ a lot
    rows = [_row('paper', s, d, 'robot', people[d] + 0.01 * s) for s in (0, 1) for d in range(3)]
    rows += [_row('augment', s, d, 'robot', people[d] + 0.01 * s + 0.1)
             for s in (0, 1) for d in range(3)]
    report = study.summarise(rows, size)
    cell = report['table']['paper']['robot']['both']['window_accuracy']
    assert cell['over_draws']['n'] == 3 and cell['over_seeds']['n'] == 2
    assert cell['over_draws']['mean'] == pytest.approx(np.mean(people) + 0.005)
    assert cell['over_seeds']['high'] - cell['over_seeds']['low'] < 0.1   # seeds agree
    paired = report['paired_to_paper']['augment']['robot']['window_accuracy']
    assert paired['mean'] == pytest.approx(0.1) and paired['low'] == pytest.approx(0.1)
    assert 'studio' not in report['table']['paper']          # nothing measured there yet
    table = study.report_markdown(report)
    assert '| robot | augment | 0.555 [' in table and '0.100 [0.100, 0.100] (n=3) |' in table


def test_the_second_shift_is_built_differently_from_the_robot_shift():
    second = study.SECOND_SHIFT
    assert ROBOT_SHIFT.jpeg_quality is None and second.jpeg_quality is not None
    assert ROBOT_SHIFT.motion_blur_px == 0 < second.motion_blur_px
    assert ROBOT_SHIFT.echo_ms == 0 < second.echo_ms and second.band_hz is not None
    assert ROBOT_SHIFT.colour_cast == (1.0, 1.0, 1.0) != second.colour_cast
    assert study.RECIPES['paper'] == {'augment': 'none', 'modality_dropout': 0.0}
    with pytest.raises(ValueError, match='unknown recipes'):
        study.size_with('quick', recipes=['paper', 'mixup'])


@pytest.mark.slow
def test_modality_scores_with_both_are_the_pooled_eval_bag_scores(tmp_path,
                                                                  untrained_checkpoint):
    """The study's own logits path (both modalities) scores as the nodes' path does, and
    leaving a modality out really changes the windows' probabilities. Slow: a draw and its
    pool (one person, one clip per emotion and session, the second shift)."""
    size = WorldSize(people=1, pool_clips=1, eval_clips=1)
    draw = people_draw(tmp_path, size, 'second', study.SECOND_SHIFT, number=0)
    pool = pooled(tmp_path, draw, untrained_checkpoint, StreamSettings(min_segments=3))
    got = study.modality_scores(pool, untrained_checkpoint)
    want = score_on_pool(pool, untrained_checkpoint)
    assert got['both'] == pytest.approx(want) and want['windows_scored'] > 0
    assert got['audio']['windows_scored'] == got['face']['windows_scored'] == \
        want['windows_scored']
    probs = {keep: study.modality_probs(pool, untrained_checkpoint, keep)
             for keep in study.MODALITIES}
    _, logits_of, fuse = segment_scorer(untrained_checkpoint)
    np.testing.assert_allclose(probs['both'], pool_probs(pool, logits_of, fuse), atol=1e-6)
    assert np.abs(probs['audio'] - probs['both']).max() > 1e-3
    assert np.abs(probs['face'] - probs['both']).max() > 1e-3
