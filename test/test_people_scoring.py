"""Per-person scoring: ids to people by position, id switches, per-person accuracy."""
import numpy as np
import pytest

from lightmer.evaluation.bags import LabelRow
from lightmer.evaluation.people_scoring import (
    id_switches,
    ids_on_both_sides,
    person_of_ids,
    score_people,
)

LABELS = ('happy', 'sad')
ROWS = [LabelRow(0.0, 2.0, 'happy', 'l1', 'left'), LabelRow(2.0, 4.0, 'sad', 'r1', 'right'),
        LabelRow(4.0, 6.0, 'sad', 'l2', 'left')]


def test_ids_are_people_by_the_side_their_faces_were_on():
    centres = {'a': [100, 120, 700], 'b': [600, 650], 'c': []}
    assert person_of_ids(centres, 800) == {'a': 'left', 'b': 'right'}
    assert ids_on_both_sides(centres, 800) == ['a']


def test_id_switches_count_changes_inside_a_persons_row_only():
    person_of = {'a': 'left', 'b': 'right', 'c': 'right', 'd': 'left'}
    ids = ['a', 'b', 'a', 'c', 'b', 'd', 'a']
    stamps = np.array([0.5, 0.6, 1.5, 2.5, 3.5, 4.5, 5.5])
    # row l1: a, a -> 0; row r1: c, b -> 1; row l2: d, a -> 1
    assert id_switches(ids, stamps, ROWS, person_of) == 2


def test_score_people_scores_each_person_on_their_own_rows():
    person_of = {'a': 'left', 'b': 'right'}
    ids = ['a', 'b', 'b', 'a']
    stamps = np.array([1.0, 1.0, 3.0, 5.0])
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.2, 0.8], [0.7, 0.3]])
    result = score_people(ids, stamps, probs, ROWS, LABELS, person_of)
    assert result['people']['left']['clip_accuracy'] == 0.5       # l1 right, l2 wrong
    assert result['people']['right']['clip_accuracy'] == 1.0
    assert result['people']['right']['windows_scored'] == 1       # b at 1.0 is l1's turn
    assert result['clip_accuracy'] == pytest.approx(2 / 3)
    assert result['id_switches'] == 0 and result['ids'] == 2
    with pytest.raises(ValueError, match='person column'):
        score_people(ids, stamps, probs, [LabelRow(0, 1, 'sad', 'x')], LABELS, person_of)


def test_a_turn_where_both_speak_is_nobodys_own_and_not_scored():
    person_of = {'a': 'left', 'b': 'right'}
    rows = ROWS + [LabelRow(6.0, 8.0, 'happy', 'l1+r1', 'both')]
    ids, stamps = ['a', 'b', 'a'], np.array([1.0, 3.0, 7.0])
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9]])
    result = score_people(ids, stamps, probs, rows, LABELS, person_of)
    assert set(result['people']) == {'left', 'right'} and result['clips'] == 3
    assert result['people']['left']['windows_scored'] == 1          # 7.0 lies in 'both'
