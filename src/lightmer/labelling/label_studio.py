"""Label Studio interop: a batch as Label Studio tasks, and a Label Studio JSON export back
into lightmer's answers file.

Export (`lightmer query ... --export label-studio DIR`), in the formats Label Studio documents
for importing tasks with pre-annotations and for its labelling configuration:
- DIR/tasks.json: a JSON list of tasks, one per window, in asking order: `data` {`window_id`,
  `audio` and `faces` (URLs of the files below), `recording`, `stamp_s`, `entropy_bits`,
  `predicted`} and `predictions`: one prediction (`model_version` "lightmer <checkpoint
  key>", `score` the predicted class's probability, `result` one `choices` region from
  `emotion` to `audio` with the predicted class);
- DIR/label_config.xml: an Image (the face strip), an Audio and a single-choice `emotion`
  Choices with the checkpoint's classes plus skip and unsure, hotkeys 1-9, s, u;
- DIR/media/<rank>_<recording>_<k>/faces.png and audio.wav (lightmer.labelling.media).
The URLs default to Label Studio's local-files form (`/data/local-files/?d=<DIR name>/media/
...`): start Label Studio with local files serving enabled and its document root at DIR's
parent, or pass another `url_prefix` (for instance a static file server's address).

Import (`lightmer import-labels --label-studio EXPORT.json --pool POOL --labels ANSWERS`):
the export is a JSON list of tasks with `annotations`; per task the newest annotation that
was not cancelled (Label Studio's "skip" means "not answered", so it is left unanswered)
gives the first choice of its `choices` result; `who` is "label-studio:<annotator>", `when`
the annotation's time. Every window id and label is checked before anything is written, and
importing the same export twice adds nothing (lightmer.active.answers, skip_repeats).
"""
from __future__ import annotations

import datetime as dt
import json
import os
import xml.etree.ElementTree as ET
from pathlib import Path

from lightmer.active.answers import NOT_A_CLASS, Answer, append_answers
from lightmer.active.pool import Pool
from lightmer.core.atomic_io import atomic_save_json, atomic_write_bytes, atomic_write_text
from lightmer.labelling import media as label_media

FROM_NAME, TO_NAME, FACES = 'emotion', 'audio', 'faces'
LOCAL_FILES = '/data/local-files/?d='


def labelling_config(labels: tuple[str, ...] | list[str]) -> str:
    """Label Studio labelling configuration (XML) for windows of a checkpoint's classes."""
    view = ET.Element('View')
    ET.SubElement(view, 'Header', value='What does this person feel?')
    ET.SubElement(view, 'Image', name=FACES, value=f'${FACES}')
    ET.SubElement(view, 'Audio', name=TO_NAME, value=f'${TO_NAME}')
    choices = ET.SubElement(view, 'Choices', name=FROM_NAME, toName=TO_NAME,
                            choice='single-radio', showInline='true', required='true')
    for i, label in enumerate(labels):
        attrs = {'value': label}
        if i < 9:
            attrs['hotkey'] = str(i + 1)
        ET.SubElement(choices, 'Choice', attrs)
    for extra in NOT_A_CLASS:
        ET.SubElement(choices, 'Choice', value=extra, hotkey=extra[0])
    ET.indent(view)
    return ET.tostring(view, encoding='unicode') + '\n'


def export_tasks(manifest: dict, out: str | os.PathLike, url_prefix: str | None = None) -> dict:
    """Write the batch `manifest` (lightmer query) as Label Studio tasks into `out`; returns
    {'tasks', 'config', 'media', 'n'}."""
    out = Path(out)
    prefix = f'{LOCAL_FILES}{out.resolve().name}/' if url_prefix is None else url_prefix
    pool = Pool(manifest['pool'])
    labels = tuple(manifest['labels'])
    tasks = []
    for item in manifest['items']:
        rec, _, k = item['window_id'].rpartition(':')
        rel = f"media/{item['rank']:03d}_{rec}_{k}"
        view = pool.window(item['window_id'], labels)
        atomic_write_bytes(out / rel / 'faces.png', label_media.face_strip_png(view))
        atomic_write_bytes(out / rel / 'audio.wav', label_media.window_wav(pool, view))
        p_pred = item['probs'][labels.index(item['predicted'])]
        tasks.append({
            'data': {'window_id': item['window_id'], TO_NAME: f'{prefix}{rel}/audio.wav',
                     FACES: f'{prefix}{rel}/faces.png', 'recording': item['recording'],
                     'stamp_s': item['stamp_s'], 'entropy_bits': item['entropy_bits'],
                     'predicted': item['predicted']},
            'predictions': [{
                'model_version': f"lightmer {manifest['checkpoint']['key']}",
                'score': float(p_pred),
                'result': [{'id': f"pred{item['rank']}", 'from_name': FROM_NAME,
                            'to_name': TO_NAME, 'type': 'choices',
                            'value': {'choices': [item['predicted']]}}]}]})
    atomic_write_text(out / 'label_config.xml', labelling_config(labels))
    atomic_save_json(out / 'tasks.json', tasks)
    return {'tasks': str(out / 'tasks.json'), 'config': str(out / 'label_config.xml'),
            'media': str(out / 'media'), 'n': len(tasks)}


def _utc(text: object) -> str:
    """Label Studio's ISO times ('...Z' or '+00:00') as lightmer's ISO 8601 UTC seconds."""
    if not isinstance(text, str) or not text:
        return ''
    t = dt.datetime.fromisoformat(text.replace('Z', '+00:00'))
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    return t.astimezone(dt.UTC).isoformat(timespec='seconds')


def _annotator(completed_by: object) -> str:
    if isinstance(completed_by, dict):        # some exports expand the user
        completed_by = completed_by.get('email') or completed_by.get('id')
    return f'label-studio:{completed_by}' if completed_by not in (None, '') else 'label-studio'


def _choice(annotation: dict) -> str | None:
    for region in annotation.get('result') or []:
        if region.get('type') == 'choices' and region.get('from_name') == FROM_NAME:
            picked = (region.get('value') or {}).get('choices') or []
            return picked[0] if picked else None
    return None


def read_export(path: str | os.PathLike) -> tuple[list, dict]:
    """(answers, counts) of a Label Studio JSON export; ValueError for a file that is not one
    or a task without lightmer's window id."""
    path = Path(path)
    try:
        tasks = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f'cannot read the Label Studio export {path}: {e}') from None
    if not isinstance(tasks, list):
        raise ValueError(f'{path} is not a Label Studio JSON export (a list of tasks); export '
                         'the project as "JSON", not "JSON-MIN" or CSV')
    answers, counts = [], {'tasks': len(tasks), 'answered': 0, 'cancelled': 0, 'unanswered': 0}
    for n, task in enumerate(tasks):
        if not isinstance(task, dict):
            raise ValueError(f'{path}: task {n} is not a JSON object')
        wid = (task.get('data') or {}).get('window_id')
        if not isinstance(wid, str) or not wid:
            raise ValueError(f'{path}: task {n} (id {task.get("id")}) has no data.window_id; '
                             'import tasks written by `lightmer query --export label-studio`')
        given = [a for a in task.get('annotations') or [] if not a.get('was_cancelled')]
        given = [(a, _choice(a)) for a in given]
        given = [(a, c) for a, c in given if c is not None]
        if not given:
            cancelled = any(a.get('was_cancelled') for a in task.get('annotations') or [])
            counts['cancelled' if cancelled else 'unanswered'] += 1
            continue
        a, choice = max(given, key=lambda ac: _utc(ac[0].get('updated_at')
                                                   or ac[0].get('created_at')))
        answers.append(Answer(wid, choice, _annotator(a.get('completed_by')),
                              _utc(a.get('updated_at') or a.get('created_at'))))
        counts['answered'] += 1
    answers.sort(key=lambda a: a.when)          # the answers file is oldest first
    return answers, counts


def import_export(export: str | os.PathLike, pool_path: str | os.PathLike,
                  answers_path: str | os.PathLike) -> dict:
    """Append a Label Studio export's answers to the answers file (all checked first)."""
    pool = Pool(pool_path)
    answers, counts = read_export(export)
    known = set(pool.table.ids)
    unknown = sorted({a.window_id for a in answers} - known)
    if unknown:
        raise ValueError(f'{export} answers windows that {pool_path} does not hold '
                         f'({unknown[:3]}...); pass the pool the tasks were exported from')
    labels = tuple(pool.recording(pool.recording_ids[0])['labels'])
    written = append_answers(answers_path, answers, labels, skip_repeats=True)
    return {**counts, 'written': len(written), 'answers_file': str(answers_path)}
