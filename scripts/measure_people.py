"""Per-person accuracy against one person at a time, on the same clips.

Writes two bags of the same two actors' clips (`make-bag`): one person at a time (clips one
after another, grey gaps between them) and two people side by side taking turns
(`--two-people`), evaluates both offline with the nodes' processors (`eval-bag`, and
`--people` for the second), restricts the one-person scores to the clips the two-person bag
holds, and reports window and clip accuracy side by side, per person, with id switches. With
`live`, both bags also go through the three node processes (`eval-bag --live`): end-to-end
latency of one and of two people, and whether the live per-person windows equal offline.

Usage (held-out actors of the checkpoint's fold; a few minutes on two cores):
  bash scripts/loopback.sh .venv/bin/python scripts/measure_people.py \
      CORPUS CHECKPOINT OUT ACTOR_A ACTOR_B [live]
Writes OUT/people.json and OUT/people.png (the bags are kept and reused).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.plots import plot_grouped_bars
from lightmer.evaluation import bag_corpus, bags
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.evaluation.scoring import score


def main(corpus: Path, checkpoint: Path, out: Path, actors: list[str], live: bool) -> int:
    out.mkdir(parents=True, exist_ok=True)
    one, two = out / 'one.bag', out / 'two.bag'
    if not one.exists():
        print(bag_corpus.make_bag('crema-d', corpus, one, actors=actors))
    if not two.exists():
        print(bag_corpus.make_bag('crema-d', corpus, two, actors=actors, two_people=True))
    single = evaluate_bag(EvalConfig(one, bags.default_labels_path(one), checkpoint,
                                     out=out / 'eval_one'))
    people = evaluate_bag(EvalConfig(two, bags.default_labels_path(two), checkpoint,
                                     out=out / 'eval_two', people=True))
    # the one-person bag scored on the clips the two-person bag could pair
    paired = {r.clip_id for r in bags.read_labels(bags.default_labels_path(two))}
    rows = [r for r in bags.read_labels(bags.default_labels_path(one)) if r.clip_id in paired]
    windows = json.loads((out / 'eval_one' / 'windows.json').read_text())
    same = score(np.array([w['stamp_s'] for w in windows]),
                 np.array([w['probs'] for w in windows]), rows, tuple(single['labels']))
    result = {
        'actors': {'left': actors[0], 'right': actors[1]},
        'checkpoint': str(checkpoint),
        'clips': len(rows),
        'one_person': {'window_accuracy': same['window_accuracy'],
                       'clip_accuracy': same['clip_accuracy'],
                       'windows_scored': same['windows_scored']},
        'two_people': {
            'window_accuracy': people['window_accuracy'],
            'clip_accuracy': people['clip_accuracy'],
            'windows_scored': people['windows_scored'],
            'per_person': {name: {'window_accuracy': p['window_accuracy'],
                                  'clip_accuracy': p['clip_accuracy'], 'ids': p['ids']}
                           for name, p in people['people'].items()},
            'id_switches': people['id_switches'],
            'ids_on_both_sides': people['ids_on_both_sides'],
        },
        'clip_accuracy_difference_points': round(
            100 * (people['clip_accuracy'] - same['clip_accuracy']), 1),
        'window_accuracy_difference_points': round(
            100 * (people['window_accuracy'] - same['window_accuracy']), 1),
    }
    if live:
        result['live'] = _live(one, two, checkpoint, out, people)
    atomic_save_json(out / 'people.json', result)
    plot_grouped_bars(
        {'one person at a time': [same['window_accuracy'], same['clip_accuracy']],
         'two people, per person': [people['window_accuracy'], people['clip_accuracy']]},
        ['window accuracy', 'clip accuracy'], out / 'people.png',
        title=f'same {len(rows)} clips, actors {actors[0]} and {actors[1]}', ylabel='accuracy')
    print(json.dumps(result, indent=2))
    return 0


def _live(one: Path, two: Path, checkpoint: Path, out: Path, offline: dict) -> dict:
    """Both bags through the live nodes: latency, and the per-person windows against offline's
    (matched by person and stamp; ids differ between runs)."""
    from lightmer.harness.live_eval import evaluate_bag_live  # rclpy: only `live` needs it

    single = evaluate_bag_live(EvalConfig(one, bags.default_labels_path(one), checkpoint,
                                     live=True, out=out / 'eval_one_live'))
    people = evaluate_bag_live(EvalConfig(two, bags.default_labels_path(two), checkpoint,
                                     live=True, out=out / 'eval_two_live', people=True))

    def by_person(name: str, person_of: dict) -> dict:
        windows = json.loads((out / name / 'windows.json').read_text())
        return {(person_of[w['face_id']], round(w['stamp_s'], 6)): np.array(w['probs'])
                for w in windows}

    a = by_person('eval_two', offline['person_of_id'])
    b = by_person('eval_two_live', people['person_of_id'])
    return {
        'one_person_latency_ms': single['latency_ms'],
        'two_people_latency_ms': people['latency_ms'],
        'latency_definition': people['latency_definition'],
        'two_people_clip_accuracy': people['clip_accuracy'],
        'two_people_id_switches': people['id_switches'],
        'kept_up': {'one_person': single['kept_up'], 'two_people': people['kept_up']},
        'windows_offline': len(a), 'windows_live': len(b),
        'same_windows_as_offline': set(a) == set(b),
        'max_abs_probability_difference': float(max(np.abs(a[k] - b[k]).max()
                                                    for k in a.keys() & b.keys())),
    }


if __name__ == '__main__':
    if len(sys.argv) not in (6, 7) or sys.argv[6:] not in ([], ['live']):
        raise SystemExit(__doc__)
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]),
                          sys.argv[4:6], sys.argv[6:] == ['live']))
