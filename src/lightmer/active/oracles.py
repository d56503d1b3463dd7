"""Oracles for pooled windows: who says what a window's emotion is (paper Algorithm 1, line 9).

Both implement `lightmer.training.oracle.Oracle` (`check(ids, predicted) -> class indices`), as
`DatasetOracle` does for `train`, and both use the protocol's answer for what a person cannot
label: `NO_LABEL` for a window answered `skip` or `unsure`, which then does not train.
- `AnswersOracle`: the human oracle. It reads the answers file (`lightmer.active.answers`) that the
  labelling page, a spreadsheet or any tool writes; windows nobody has answered yet raise
  `UnansweredError` with their ids, so the caller can hand the batch to a person and come back.
- `IntervalOracle`: a scripted labeller for tests and simulations. It answers from labels by
  time interval (the `start,end,label,clip_id` CSV that `make-bag` writes beside a bag, or a
  hand-made one), writes those answers into the answers file as a person would, and then
  reads them back through `AnswersOracle`: one path from answer to training.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from lightmer.active.answers import (
    NOT_A_CLASS,
    SKIP,
    Answer,
    append_answers,
    latest,
    read_answers,
)
from lightmer.active.pool import Pool, parse_window_id
from lightmer.evaluation import bags
from lightmer.evaluation.scoring import assign_clips, check_labels
from lightmer.training.oracle import NO_LABEL, Oracle

# `finetune --oracle`: people's answers file, or the bags' labels CSVs (scripts, simulation).
ORACLES = ('answers', 'bag-labels')


class UnansweredError(LookupError):
    """Some asked windows have no answer yet."""

    def __init__(self, ids: Sequence[str]):
        self.ids = list(ids)
        super().__init__(f'{len(self.ids)} window(s) have no answer yet, e.g. {self.ids[:3]}')


class AnswersOracle(Oracle):
    """Answers from the answers file; the last answer per window wins."""

    def __init__(self, answers: str | Path, labels: Sequence[str]):
        self.path = Path(answers)
        self.labels = tuple(labels)

    def check(self, ids: Sequence[str], predicted: Sequence[int]) -> list[int]:
        """Class index per id (NO_LABEL for skip/unsure); UnansweredError if any id has none."""
        if len(ids) != len(predicted):
            raise ValueError('ids and predicted must have the same length')
        history = read_answers(self.path)
        check_labels([a.label for a in history], self.labels, str(self.path),
                     extras=NOT_A_CLASS)
        answers = latest(history)
        missing = [i for i in ids if i not in answers]
        if missing:
            raise UnansweredError(missing)
        return [self.labels.index(answers[i].label) if answers[i].label in self.labels
                else NO_LABEL for i in ids]


class IntervalOracle(Oracle):
    """Answers a window with the label of the interval holding its stamp (its last segment's
    reference time, the `emotion` stamp, as eval-bag scores), or `skip` outside every one.

    intervals: recording id -> that bag's labels CSV; default: `<bag>.labels.csv` beside each
    pooled bag, as `make-bag` writes it.
    """

    def __init__(self, pool: Pool, answers: str | Path, labels: Sequence[str],
                 intervals: dict[str, Path] | None = None, who: str = 'bag-labels-csv'):
        self.pool = pool
        self.who = who
        self.file = AnswersOracle(answers, labels)
        self._rows = {}
        for rec in pool.recording_ids:
            info = pool.recording(rec)
            csv_path = Path((intervals or {}).get(rec) or bags.default_labels_path(info['bag']))
            if not csv_path.is_file():
                raise FileNotFoundError(f'no labels CSV {csv_path} for recording {rec}: write '
                                        'one (start,end,label,clip_id) or answer by hand')
            rows = bags.read_labels(csv_path, info['bag_start_ns'] / 1e9)
            check_labels([r.label for r in rows], labels, str(csv_path))
            self._rows[rec] = rows

    def label_of(self, wid: str) -> str:
        rec, _ = parse_window_id(wid)
        table = self.pool.table
        stamp = table.t_ref[table.index_of([wid])]
        j = int(assign_clips(stamp, self._rows[rec])[0])
        return SKIP if j < 0 else self._rows[rec][j].label

    def check(self, ids: Sequence[str], predicted: Sequence[int]) -> list[int]:
        known = latest(read_answers(self.file.path))
        new = []
        for wid in ids:
            label = self.label_of(wid)
            if wid not in known or known[wid].label != label:
                new.append(Answer(wid, label, self.who))
        append_answers(self.file.path, new, self.file.labels)
        return self.file.check(ids, predicted)
