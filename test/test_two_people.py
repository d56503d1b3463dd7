"""make-bag --two-people: two generated actors side by side taking turns, per-person labels."""
import dataclasses
import json
import os
import shlex
from pathlib import Path

import numpy as np
import pytest

import ros_helpers as rh
from lightmer.cli import main
from lightmer.evaluation import bag_corpus, bags
from lightmer.evaluation.bags import GAP_GREY, BagClip
from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag
from lightmer.evaluation.two_people import OVERLAP, pair_clips, two_person_clips

# Slow tier (two-person bags through the pipeline): not in `make test-fast`.
pytestmark = pytest.mark.slow


def _clip(clip_id, label, value, n=3, shape=(4, 5, 3)):
    frames = np.stack([np.full(shape, value + i, np.uint8) for i in range(n)])
    return BagClip(clip_id, label, frames, np.arange(n) / 10.0, 10.0,
                   np.zeros(int(0.3 * bags.SAMPLE_RATE), np.float32))


def test_pairs_never_share_an_emotion():
    left = [_clip('a1', 'happy', 10), _clip('a2', 'sad', 20), _clip('a3', 'angry', 30)]
    right = [_clip('b1', 'happy', 40), _clip('b2', 'sad', 50)]
    pairs = [(a.clip_id, b.clip_id) for a, b in pair_clips(left, right)]
    assert pairs == [('a1', 'b2'), ('a2', 'b1')]                   # a3 has no partner left


def test_turns_hold_the_listener_still_and_the_right_person_leaves_every_second_pair():
    pairs = [(_clip('a1', 'happy', 10), _clip('b1', 'sad', 40)),
             (_clip('a2', 'sad', 20), _clip('b2', 'happy', 50))]
    turns = list(two_person_clips(pairs, GAP_GREY, away_every=2))
    assert [(t.clip_id, t.person, t.label) for t in turns] == [
        ('a1', 'left', 'happy'), ('b1', 'right', 'sad'),
        ('a2', 'left', 'sad'), ('b2', 'right', 'happy')]
    assert all(t.frames.shape == (3, 4, 10, 3) for t in turns)
    first, second, third, _ = turns
    np.testing.assert_array_equal(first.frames[:, :, :5], pairs[0][0].frames)     # speaking
    assert (first.frames[:, :, 5:] == 40).all()               # right holds its first frame
    assert (second.frames[:, :, :5] == 12).all()              # left holds its last frame
    np.testing.assert_array_equal(second.frames[:, :, 5:], pairs[0][1].frames)
    assert (third.frames[:, :, 5:] == GAP_GREY).all()         # right person away
    assert second.audio is pairs[0][1].audio                  # the speaker's voice


def test_an_overlap_turn_plays_both_people_and_mixes_their_voices():
    a, b = _clip('a1', 'happy', 10, n=3), _clip('b1', 'sad', 40, n=2)
    a = dataclasses.replace(a, audio=np.full(3000, 0.7, np.float32))
    b = dataclasses.replace(b, audio=np.full(2000, 0.6, np.float32))
    turns = list(two_person_clips([(a, b)], GAP_GREY, away_every=0, overlap_every=1))
    assert [(t.person, t.label) for t in turns] == [('left', 'happy'), ('right', 'sad'),
                                                   (OVERLAP, 'happy')]
    both = turns[2]
    np.testing.assert_array_equal(both.frames[:, :, :5], a.frames)      # both move at once
    np.testing.assert_array_equal(both.frames[:2, :, 5:], b.frames)
    np.testing.assert_array_equal(both.frames[2, :, 5:], b.frames[-1])  # the shorter holds
    assert len(both.audio) == 3000 and np.abs(both.audio).max() <= 1.0
    np.testing.assert_allclose(both.audio[:2000], 1.0)       # 0.7 + 0.6, scaled to fit
    np.testing.assert_allclose(both.audio[2000:], 0.7 / 1.3, rtol=1e-6)
    assert [t.person for t in two_person_clips([(a, b)], GAP_GREY, overlap_every=0)] == [
        'left', 'right']


def _readme_command(prefix: str) -> list[str]:
    """The README's one command starting with `prefix` (continuation lines joined), split."""
    text = (Path(__file__).resolve().parents[1] / 'README.md').read_text(encoding='utf-8')
    lines = text.replace('\\\n', ' ').splitlines()
    (line,) = [x.strip() for x in lines if x.strip().startswith(prefix)]
    return shlex.split(line)[1:]


@pytest.fixture(scope='module')
def two_bag(tiny_corpus, tmp_path_factory):
    """The README's two-person make-bag line, run as written in a directory of its own."""
    where = tmp_path_factory.mktemp('two_people')
    args = _readme_command('lightmer make-bag --dataset crema-d --root corpus/ ')
    args = [str(tiny_corpus) if a == 'corpus/' else a for a in args]
    old = os.getcwd()
    os.chdir(where)
    try:
        assert main(args) == 0
    finally:
        os.chdir(old)
    return where / 'two.bag'


def test_make_bag_two_people_writes_per_person_rows(two_bag):
    out = two_bag
    rows = bags.read_labels(bags.default_labels_path(out))
    assert [r.person for r in rows] == ['left', 'right'] * 6
    assert all(r.clip_id.startswith('1001_') for r in rows if r.person == 'left')
    assert all(r.clip_id.startswith('1002_') for r in rows if r.person == 'right')
    assert all(a.label != b.label for a, b in zip(rows[::2], rows[1::2], strict=True))
    # turns follow each other with no gap
    assert all(abs(a.end - b.start) < 1e-6 for a, b in zip(rows, rows[1:], strict=False))
    info = bags.bag_info(out)
    frames = [m for m in bags.read_bag(out) if m.kind == 'image']
    width = {m.data.shape[1] for m in frames}
    assert width == {960}                                     # two 480-wide halves
    # in the second pair's left turn the right half is empty
    second = rows[2]
    inside = [m.data for m in frames if second.start <= m.stamp_ns / 1e9 < second.end]
    assert inside and all((f[:, 480:] == GAP_GREY).all() for f in inside)
    assert (info.end_ns - info.start_ns) / 1e9 == pytest.approx(rows[-1].end - rows[0].start,
                                                            abs=0.1)


def test_two_people_needs_two_actors(tiny_corpus, tmp_path):
    with pytest.raises(ValueError, match='two different actors'):
        bag_corpus.make_bag('crema-d', tiny_corpus, tmp_path / 'x', actors=['1001'],
                      two_people=True)


def test_eval_bag_people_scores_each_person_without_id_switches(two_bag, tmp_path, capsys,
                                                                monkeypatch):
    """The README's eval-bag --people line, run as written beside the bag."""
    checkpoint = rh.make_checkpoint(tmp_path / 'model.pt', seed=2)
    monkeypatch.chdir(two_bag.parent)
    args = _readme_command('lightmer eval-bag --bag two.bag ')
    assert main([str(checkpoint) if a == 'best.pt' else a for a in args]) == 0
    assert 'per person clip accuracy: left' in capsys.readouterr().out
    result = json.loads((two_bag.parent / 'eval_two' / 'eval.json').read_text())
    assert result['id_switches'] == 0 and result['ids_on_both_sides'] == []
    left, right = result['people']['left'], result['people']['right']
    assert left['clips'] == right['clips'] == 6
    assert left['windows_scored'] > 0 and right['windows_scored'] > 0
    assert left['ids'] and right['ids'] and not set(left['ids']) & set(right['ids'])
    # the right person walks out in every second pair and comes back under a new id
    assert len(right['ids']) >= 2 and len(left['ids']) == 1
    assert (two_bag.parent / 'eval_two' / 'confusion.png').is_file()
    # per-person scoring needs the person column
    with pytest.raises(ValueError, match='person column'):
        one = tmp_path / 'one.csv'
        one.write_text('start,end,label,clip_id\n0,1,happy,a\n')
        evaluate_bag(EvalConfig(two_bag, one, checkpoint, people=True))
