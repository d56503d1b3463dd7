"""The answers file: history, last answer wins, validation before writing, safe concurrent
appends from several processes."""
import multiprocessing

import pytest

from lightmer.active.answers import Answer, append_answers, latest, read_answers

LABELS = ('angry', 'happy', 'sad')


def test_history_and_last_answer_wins(tmp_path):
    path = tmp_path / 'answers.csv'
    assert read_answers(path) == []
    append_answers(path, [Answer('r:1', 'angry', 'ann'), Answer('r:2', 'skip', 'ann')], LABELS)
    append_answers(path, [Answer('r:1', 'happy', 'bob, the second')], LABELS)
    history = read_answers(path)
    assert [(a.window_id, a.label, a.who) for a in history] == [
        ('r:1', 'angry', 'ann'), ('r:2', 'skip', 'ann'), ('r:1', 'happy', 'bob, the second')]
    assert all(a.when.endswith('+00:00') for a in history)     # filled in, UTC
    assert {w: a.label for w, a in latest(history).items()} == {'r:1': 'happy', 'r:2': 'skip'}
    assert path.read_text().splitlines()[0] == 'window_id,label,who,when'


def test_skip_repeats_writes_a_repeated_last_answer_once(tmp_path):
    path = tmp_path / 'answers.csv'
    written = append_answers(path, [Answer('r:1', 'angry'), Answer('r:1', 'angry')], LABELS,
                             skip_repeats=True)
    assert len(written) == 1 and len(read_answers(path)) == 1
    # A resend of the same answer, and within one call a repeat: nothing more is written;
    # a changed answer and a change back are (the history keeps both).
    assert append_answers(path, [Answer('r:1', 'angry')], LABELS, skip_repeats=True) == []
    written = append_answers(path, [Answer('r:1', 'sad'), Answer('r:1', 'sad'),
                                    Answer('r:1', 'angry')], LABELS, skip_repeats=True)
    assert [a.label for a in written] == ['sad', 'angry']
    assert [a.label for a in read_answers(path)] == ['angry', 'sad', 'angry']
    # Without skip_repeats every answer is history.
    append_answers(path, [Answer('r:1', 'angry')], LABELS)
    assert len(read_answers(path)) == 4


def test_bad_answers_write_nothing(tmp_path):
    path = tmp_path / 'answers.csv'
    append_answers(path, [Answer('r:1', 'sad')], LABELS)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=r"\['surprised'\], which the checkpoint does not know"):
        append_answers(path, [Answer('r:2', 'angry'), Answer('r:3', 'surprised')], LABELS)
    with pytest.raises(ValueError, match='needs a window id and a label'):
        append_answers(path, [Answer('', 'angry')], LABELS)
    assert path.read_bytes() == before
    other = tmp_path / 'other.csv'
    other.write_text('start,end,label\n1,2,angry\n')
    with pytest.raises(ValueError, match='header must start with window_id,label'):
        append_answers(other, [Answer('r:1', 'sad')], LABELS)
    assert other.read_text() == 'start,end,label\n1,2,angry\n'


def test_hand_made_file_with_two_columns(tmp_path):
    path = tmp_path / 'answers.csv'
    path.write_text('window_id,label\nr:5,angry\nr:6,unsure\n')
    assert [(a.window_id, a.label, a.who) for a in read_answers(path)] == [
        ('r:5', 'angry', ''), ('r:6', 'unsure', '')]


def _append_many(path, who, n):
    for i in range(n):
        append_answers(path, [Answer(f'{who}:{i}', 'angry', who)], LABELS)


def test_concurrent_writers_lose_nothing(tmp_path):
    path = tmp_path / 'answers.csv'
    ctx = multiprocessing.get_context('spawn')
    procs = [ctx.Process(target=_append_many, args=(path, who, 40)) for who in ('a', 'b')]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    ids = [a.window_id for a in read_answers(path)]
    assert sorted(ids) == sorted([f'{w}:{i}' for w in 'ab' for i in range(40)])
