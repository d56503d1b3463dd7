"""Scoring per-person emotion windows against per-person labelled clips (pure).

Windows come per face id (`people.PersonWindow`, or /humans/faces/<id>/emotion live); rows of
the labels CSV name their person (`bags.LabelRow.person`). Which person an id is cannot come
from the id, so it comes from where the face was: `person_of_ids` gives each id the person on
whose side of the frame its face's centre lay for most of its segments ('left' / 'right', the
layout `make-bag --two-people` writes). Each person is then scored like one-person bags
(`scoring.score`) on their own rows with their own ids' windows.

Id switches, per labelled row: consecutive windows of that row's person, stamped inside the row,
that carry different ids (the person was in view the whole row, so any change is a tracking
error). An id whose faces lay on both sides of the frame (`ids_on_both_sides`) covered two
people. A person leaving and coming back under a new id is neither: that is a new appearance.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lightmer.evaluation.scoring import score
from lightmer.evaluation.two_people import OVERLAP

SIDES = ('left', 'right')


def person_of_ids(centres_x: Mapping[str, Sequence[float]],
                  frame_width: float) -> dict[str, str]:
    """{id: 'left' | 'right'} by the median of the id's face centres (x, pixels)."""
    return {face_id: SIDES[int(np.median(xs) >= frame_width / 2)]
            for face_id, xs in centres_x.items() if len(xs)}


def ids_on_both_sides(centres_x: Mapping[str, Sequence[float]], frame_width: float) -> list[str]:
    """Ids with face centres on both halves of the frame, sorted."""
    return sorted(i for i, xs in centres_x.items()
                  if len({int(x >= frame_width / 2) for x in xs}) > 1)


def id_switches(face_ids: Sequence[str], stamps_s: np.ndarray, rows: Sequence,
                person_of: Mapping[str, str]) -> int:
    """Changes of id between consecutive windows of a row's person inside that row."""
    stamps_s = np.asarray(stamps_s, dtype=np.float64)
    switches = 0
    for r in rows:
        inside = [(t, i) for t, i in zip(stamps_s, face_ids, strict=True)
                  if r.start <= t <= r.end and person_of.get(i) == r.person]
        ids = [i for _, i in sorted(inside)]
        switches += sum(a != b for a, b in zip(ids, ids[1:], strict=False))
    return switches


def score_people(face_ids: Sequence[str], stamps_s: np.ndarray, probs: np.ndarray,
                 rows: Sequence, labels: tuple[str, ...], person_of: Mapping[str, str]) -> dict:
    """Per person scoring.score of their windows on their rows, the clip accuracy over every
    person's clips, and the tracking figures.

    face_ids: (M,) the id of each window; stamps_s float (M,); probs float (M, C).
    """
    stamps_s = np.asarray(stamps_s, dtype=np.float64)
    probs = np.asarray(probs, dtype=np.float64).reshape(len(stamps_s), len(labels))
    # a turn where both speak is nobody's own: not scored (two_people.OVERLAP)
    rows = [r for r in rows if r.person != OVERLAP]
    people = sorted({r.person for r in rows})
    if '' in people:
        raise ValueError('per-person scoring needs a person column in the labels CSV '
                         '(make-bag --two-people writes one)')
    per_person, correct, clips = {}, 0.0, 0
    for person in people:
        mine = np.array([person_of.get(i) == person for i in face_ids], dtype=bool)
        their_rows = [r for r in rows if r.person == person]
        result = score(stamps_s[mine], probs[mine], their_rows, labels)
        result['ids'] = sorted({i for i in face_ids if person_of.get(i) == person})
        per_person[person] = result
        correct += result['clip_accuracy'] * result['clips']
        clips += result['clips']
    return {
        'people': per_person,
        'clip_accuracy': correct / clips if clips else None,
        'clips': clips,
        'id_switches': id_switches(face_ids, stamps_s, rows, person_of),
        'ids': len(set(face_ids)),
    }
