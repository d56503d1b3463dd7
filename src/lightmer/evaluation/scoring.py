"""Scoring emotion windows against labelled clips: pure functions shared by offline and live
evaluation.

- A window's stamp is its last segment's reference time (the `emotion` header stamp); the window
  belongs to the labelled clip whose [start, end] contains the stamp; windows outside every
  clip are counted but not scored.
- Clip decision: argmax of the mean of the window probabilities of the clip's windows. A clip
  with no window counts as wrong (reported as `clips_without_windows`).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from lightmer.core.plots import confusion_matrix

CLIP_DECISION = 'argmax of the mean window probabilities over the windows stamped in the clip'
# `rows` below are labelled clips (bags.LabelRow): .start and .end in seconds of ROS time and
# .label, a class name.


def check_labels(names: Iterable[str], labels: Sequence[str], source: str = 'the labels CSV',
                 extras: Sequence[str] = ()) -> None:
    """Raise ValueError naming every label in `names` (a labels CSV's rows, an answers file's
    answers) that is neither one of `labels`, the classes the checkpoint predicts (case-
    sensitive, as in the checkpoint), nor one of `extras` (answers allow skip and unsure)."""
    unknown = sorted(set(names) - set(labels) - set(extras))
    if unknown:
        allowed = list(labels) + list(extras)
        raise ValueError(f'{source} names {unknown}, which the checkpoint does not know (it '
                         f'predicts {list(labels)}); use one of {allowed} or a checkpoint '
                         'trained with those classes')


def assign_clips(stamps_s: np.ndarray, rows: Sequence) -> np.ndarray:
    """int (M,) index of the row whose [start, end] contains each stamp, -1 for none."""
    out = np.full(len(stamps_s), -1, dtype=np.int64)
    for i, t in enumerate(np.asarray(stamps_s, dtype=np.float64)):
        for j, r in enumerate(rows):
            if r.start <= t <= r.end:
                out[i] = j
                break
    return out


def score(stamps_s: np.ndarray, probs: np.ndarray, rows: Sequence,
          labels: tuple[str, ...]) -> dict:
    """Window- and clip-level accuracy and confusion matrices.

    stamps_s: float (M,) window stamps; probs: float (M, C); rows: labelled clips whose label is
    one of `labels` (the checkpoint's classes, in output order).
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(len(stamps_s), len(labels))
    check_labels([r.label for r in rows], labels)
    index = {name: i for i, name in enumerate(labels)}
    clip_of = assign_clips(stamps_s, rows)
    scored = clip_of >= 0
    true_w = np.array([index[rows[j].label] for j in clip_of[scored]], dtype=np.int64)
    pred_w = probs[scored].argmax(axis=1) if scored.any() else np.zeros(0, np.int64)
    true_c, pred_c, no_window = [], [], 0
    for j, r in enumerate(rows):
        mine = probs[clip_of == j]
        true_c.append(index[r.label])
        if len(mine):
            pred_c.append(int(mine.mean(axis=0).argmax()))
        else:
            no_window += 1
            pred_c.append(-1)                     # no decision: wrong by construction
    true_c_a, pred_c_a = np.array(true_c), np.array(pred_c)
    decided = pred_c_a >= 0
    n_classes = len(labels)
    return {
        'windows': int(len(stamps_s)),
        'windows_scored': int(scored.sum()),
        'windows_outside_clips': int((~scored).sum()),
        'window_accuracy': float((true_w == pred_w).mean()) if len(true_w) else None,
        'clips': len(rows),
        'clips_without_windows': no_window,
        'clip_accuracy': float((true_c_a == pred_c_a).mean()) if rows else None,
        'clip_decision': CLIP_DECISION,
        'confusion_windows': confusion_matrix(true_w, pred_w, n_classes).tolist(),
        'confusion_clips': confusion_matrix(true_c_a[decided], pred_c_a[decided],
                                            n_classes).tolist(),
    }


def percentiles(values) -> dict:
    """{'p50', 'p95', 'max', 'n'} of `values` (None for an empty list: JSON has no NaN)."""
    v = np.asarray(values, dtype=np.float64)
    if not v.size:
        return {'p50': None, 'p95': None, 'max': None, 'n': 0}
    return {'p50': float(np.percentile(v, 50)), 'p95': float(np.percentile(v, 95)),
            'max': float(v.max()), 'n': int(v.size)}
