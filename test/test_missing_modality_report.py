"""The missing-modality measurement's report (experiments.missing_modality): per model and
policy the clean run against the mean of the occluded runs, and the goal judged for 'single'
against the same model's clean runs."""
from __future__ import annotations

import pytest

from lightmer.experiments.missing_modality import goal, markdown, table


def _row(bag, model, policy, windows, accuracy, with_face):
    return {'bag': bag, 'occluded': bag != 'clean', 'model': model, 'policy': policy,
            'windows': windows + 3, 'windows_scored': windows, 'window_accuracy': accuracy,
            'clip_accuracy': accuracy, 'modalities': {'segments': 100,
                                                      'with_face': with_face}}


ROWS = [
    _row('clean', 'm', 'skip', 100, 0.60, 100),
    _row('clean', 'm', 'single', 104, 0.58, 96),
    _row('occluded_s0', 'm', 'skip', 70, 0.62, 100),
    _row('occluded_s1', 'm', 'skip', 72, 0.60, 100),
    _row('occluded_s0', 'm', 'single', 100, 0.56, 70),
    _row('occluded_s1', 'm', 'single', 98, 0.52, 72),
]


def test_table_means_the_occluded_seeds_and_keeps_the_clean_run():
    entries = {e['policy']: e for e in table(ROWS)}
    single = entries['single']
    assert single['clean'] == {'runs': 1, 'windows_scored': 104, 'window_accuracy': 0.58,
                               'clip_accuracy': 0.58, 'with_face_share': 0.96}
    assert single['occluded']['runs'] == 2
    assert single['occluded']['windows_scored'] == pytest.approx(99.0)
    assert single['occluded']['window_accuracy'] == pytest.approx(0.54)
    assert single['occluded']['with_face_share'] == pytest.approx(0.71)
    assert '| m | single | 104 | 99.0 | 0.580 | 0.540 |' in markdown({'table': table(ROWS)})


def test_goal_needs_ninety_percent_of_the_windows_within_five_points():
    judged = goal(ROWS)['m']
    # against clean 'single': 99/104 windows, 4 points lower: met
    assert judged['vs_clean_single']['windows_ratio'] == pytest.approx(99 / 104)
    assert judged['vs_clean_single']['accuracy_drop_points'] == pytest.approx(4.0)
    assert judged['vs_clean_single']['met'] is True
    # against clean 'skip': 99/100 windows but 6 points lower: missed
    assert judged['vs_clean_skip']['accuracy_drop_points'] == pytest.approx(6.0)
    assert judged['vs_clean_skip']['met'] is False
    fewer = [dict(r, windows_scored=80) if r['policy'] == 'single' and r['occluded'] else r
             for r in ROWS]
    assert goal(fewer)['m']['vs_clean_single']['met'] is False       # 80/104 < 0.9


def test_goal_waits_for_an_occluded_run_of_single():
    clean_only = [r for r in ROWS if not (r['occluded'] and r['policy'] == 'single')]
    assert goal(clean_only) == {}
    assert {e['policy']: e['occluded']['windows_scored'] for e in table(clean_only)}[
        'single'] is None
