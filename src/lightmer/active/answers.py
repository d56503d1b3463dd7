"""The answers file: what people said about pooled windows.

A CSV with the header `window_id,label,who,when`, one answer per line, oldest first:
- window_id: a pool window id ('<recording>:<k_last>', as in a batch manifest);
- label: a class name of the checkpoint's labels, or `skip` (not an emotion one can tell, or
  not a person) or `unsure` (the labeller could not decide); neither of those two trains;
- who: free text naming the labeller (or the script that answered);
- when: ISO 8601 UTC time of the answer.

The file is a history: a window may be answered again, and the last answer for a window wins
(`latest`). `append_answers` validates first, then rewrites the file atomically under an
exclusive lock (fcntl), so a labelling page, a script and `lightmer finetune` may share one
file: a reader never sees half a line and two writers never lose each other's answers.
"""
from __future__ import annotations

import csv
import datetime as dt
import fcntl
import io
import os
from collections.abc import Iterable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lightmer.core.atomic_io import atomic_write_text
from lightmer.evaluation.scoring import check_labels

FIELDS = ('window_id', 'label', 'who', 'when')
SKIP, UNSURE = 'skip', 'unsure'
NOT_A_CLASS = (SKIP, UNSURE)


@dataclass(frozen=True)
class Answer:
    window_id: str
    label: str          # a class name, 'skip' or 'unsure'
    who: str = ''
    when: str = ''      # ISO 8601 UTC; `append_answers` fills it when empty


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec='seconds')


def _parse(text: str, source: str) -> list[Answer]:
    reader = csv.DictReader(io.StringIO(text))
    header = tuple(reader.fieldnames or ())
    if header[:2] != FIELDS[:2]:
        raise ValueError(f'{source}: the header must start with {",".join(FIELDS[:2])} '
                         f'(full header {",".join(FIELDS)}), got {",".join(header) or "none"}')
    out = []
    for line, rec in enumerate(reader, start=2):
        wid, label = (rec.get('window_id') or '').strip(), (rec.get('label') or '').strip()
        if not wid or not label:
            raise ValueError(f'{source}:{line}: window_id and label must not be empty')
        out.append(Answer(wid, label, (rec.get('who') or '').strip(),
                          (rec.get('when') or '').strip()))
    return out


def read_answers(path: str | os.PathLike) -> list[Answer]:
    """Every answer in file order (the history); [] when the file does not exist yet."""
    path = Path(path)
    if not path.exists():
        return []
    return _parse(path.read_text(encoding='utf-8'), str(path))


def latest(answers: Iterable[Answer]) -> dict[str, Answer]:
    """window_id -> its last answer (later lines override earlier ones)."""
    out: dict[str, Answer] = {}
    for a in answers:
        out[a.window_id] = a
    return out


# A spreadsheet opening the file runs a cell that starts with one of these as a formula.
FORMULA_LEADS = ('=', '+', '-', '@', '\t', '\r')


def spreadsheet_safe(text: str) -> str:
    """`text` with a leading apostrophe when a spreadsheet would read it as a formula
    (OWASP's CSV-injection advice); other text unchanged."""
    return "'" + text if text.startswith(FORMULA_LEADS) else text


def _format(answers: Iterable[Answer], header: bool) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    if header:
        w.writerow(FIELDS)
    for a in answers:
        # window ids and labels are checked against the pool and the label set; `who` is
        # free text (the labelling page takes it from the request)
        w.writerow([a.window_id, a.label, spreadsheet_safe(a.who), a.when])
    return buf.getvalue()


@contextmanager
def _locked(path: Path):
    """Exclusive lock on `<path>.lock` for one read-modify-write of `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + '.lock'), 'a') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def append_answers(path: str | os.PathLike, answers: Iterable[Answer],
                   labels: Sequence[str] | None = None,
                   skip_repeats: bool = False) -> list[Answer]:
    """Append `answers` to the answers file at `path` (created with its header if missing).

    Validated before anything is written: window ids and labels non-empty, and with `labels`
    (the checkpoint's class names) every label one of them or skip/unsure. An empty `when`
    is filled with the current UTC time. Atomic and locked (see the module docstring).
    With `skip_repeats`, an answer that repeats the window's last answer in the file (same
    label) is not written again: a page that resends an answer after a lost reply, or two
    tabs giving the same answer, add nothing. Returns the answers as written.
    """
    path = Path(path)
    new = [a if a.when else Answer(a.window_id, a.label, a.who, now_utc()) for a in answers]
    for a in new:
        if not a.window_id.strip() or not a.label.strip():
            raise ValueError(f'an answer needs a window id and a label, got {a}')
    if labels is not None:
        check_labels([a.label for a in new], labels, 'the new answers', extras=NOT_A_CLASS)
    if not new:
        return []
    with _locked(path):
        old = path.read_text(encoding='utf-8') if path.exists() else ''
        # Parsing first also means never appending to a file that is not ours.
        history = _parse(old, str(path)) if old else []
        if skip_repeats:
            last = {w: a.label for w, a in latest(history).items()}
            kept = []
            for a in new:
                if last.get(a.window_id) != a.label:
                    kept.append(a)
                    last[a.window_id] = a.label
            new = kept
        if old and not old.endswith('\n'):
            old += '\n'
        if new:
            atomic_write_text(path, old + _format(new, header=not old))
    return new
