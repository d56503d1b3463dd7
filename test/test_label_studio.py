"""Label Studio interop on real files: `query --export label-studio` writes tasks, config and
media in Label Studio's documented formats; a Label Studio JSON export of those tasks (made
here as Label Studio writes one: annotations with choices, a cancelled one, an unanswered
task) comes back through `import-labels` into the answers file, once."""
from __future__ import annotations

import json
import wave
import xml.etree.ElementTree as ET

from lightmer.active.answers import read_answers
from lightmer.cli import main
from lightmer.labelling.label_studio import LOCAL_FILES


def _annotation(choice, when, user=1, cancelled=False):
    return {'id': abs(hash((choice, when))) % 10_000, 'completed_by': user,
            'was_cancelled': cancelled, 'ground_truth': False, 'created_at': when,
            'updated_at': when, 'lead_time': 3.2,
            'result': [] if cancelled else [{
                'id': 'r1', 'from_name': 'emotion', 'to_name': 'audio', 'type': 'choices',
                'origin': 'manual', 'value': {'choices': [choice]}}]}


def test_export_and_import_round_trip(robot_pool, untrained_checkpoint, tmp_path, capsys):
    out = tmp_path / 'ls'
    batch = tmp_path / 'batch.json'
    assert main(['query', '--pool', str(robot_pool), '--checkpoint', str(untrained_checkpoint),
                 '--n', '4', '--out', str(batch), '--export', 'label-studio', str(out)]) == 0
    assert 'Label Studio: 4 tasks' in capsys.readouterr().out
    manifest = json.loads(batch.read_text())
    labels = manifest['labels']

    # The labelling config: an image, an audio, one single choice of the classes + skip/unsure.
    view = ET.parse(out / 'label_config.xml').getroot()
    assert view.tag == 'View'
    assert {e.tag: e.get('value') for e in view if e.tag in ('Image', 'Audio')} == {
        'Image': '$faces', 'Audio': '$audio'}
    (choices,) = view.iter('Choices')
    assert choices.get('name') == 'emotion' and choices.get('toName') == 'audio'
    assert [c.get('value') for c in choices] == [*labels, 'skip', 'unsure']

    # Tasks: data with local-files URLs of files that exist, the model's pre-annotation.
    tasks = json.loads((out / 'tasks.json').read_text())
    assert [t['data']['window_id'] for t in tasks] == [i['window_id'] for i in manifest['items']]
    for task, item in zip(tasks, manifest['items'], strict=True):
        for key in ('audio', 'faces'):
            url = task['data'][key]
            assert url.startswith(f'{LOCAL_FILES}ls/media/')
            assert (tmp_path / url[len(LOCAL_FILES):]).is_file()
        with wave.open(str(tmp_path / task['data']['audio'][len(LOCAL_FILES):])) as w:
            assert w.getframerate() == 16000
            seconds = w.getnframes() / 16000
        assert abs(seconds - (item['audio_s'][1] - item['audio_s'][0] + 2.0)) < 1e-3
        (pred,) = task['predictions']
        (region,) = pred['result']
        assert region['type'] == 'choices' and region['value']['choices'] == [item['predicted']]
        assert (region['from_name'], region['to_name']) == ('emotion', 'audio')
        assert abs(pred['score'] - max(item['probs'])) < 1e-12

    # People answer in Label Studio; its JSON export holds the tasks with their annotations.
    export = [dict(t, id=i + 1, annotations=[], predictions=t['predictions'])
              for i, t in enumerate(tasks)]
    export[0]['annotations'] = [_annotation(labels[2], '2026-11-30T10:00:00.123456Z')]
    export[1]['annotations'] = [_annotation(labels[0], '2026-11-30T10:01:00Z', user=2),
                                _annotation('skip', '2026-11-30T10:05:00+00:00',
                                            user={'id': 3, 'email': 'ann@example.org'})]
    export[2]['annotations'] = [_annotation(None, '2026-11-30T10:02:00Z', cancelled=True)]
    export_file = tmp_path / 'project-1-at-2026-11-30.json'
    export_file.write_text(json.dumps(export))
    answers = tmp_path / 'answers.csv'
    cmd = ['import-labels', '--label-studio', str(export_file), '--pool', str(robot_pool),
           '--labels', str(answers), '--json']
    assert main(cmd) == 0
    summary = json.loads(capsys.readouterr().out)
    assert (summary['answered'], summary['cancelled'], summary['unanswered'],
            summary['written']) == (2, 1, 1, 2)
    got = [(a.window_id, a.label, a.who, a.when) for a in read_answers(answers)]
    assert got == [
        (tasks[0]['data']['window_id'], labels[2], 'label-studio:1', '2026-11-30T10:00:00+00:00'),
        (tasks[1]['data']['window_id'], 'skip', 'label-studio:ann@example.org',
         '2026-11-30T10:05:00+00:00')]
    # Importing the same export again adds nothing.
    assert main(cmd) == 0
    assert json.loads(capsys.readouterr().out)['written'] == 0
    assert len(read_answers(answers)) == 2


def test_bad_exports_write_nothing(robot_pool, label_batch, tmp_path, capsys):
    items = json.loads(label_batch.read_text())['items']
    answers = tmp_path / 'answers.csv'
    cases = {
        'unknown class': [{'data': {'window_id': items[0]['window_id']},
                           'annotations': [_annotation('ecstatic', '2026-11-30T10:00:00Z')]}],
        'foreign task': [{'id': 7, 'data': {'image': 'x.jpg'},
                          'annotations': [_annotation('skip', '2026-11-30T10:00:00Z')]}],
        'unknown window': [{'data': {'window_id': 'other-000000:12'},
                            'annotations': [_annotation('skip', '2026-11-30T10:00:00Z')]}],
        'not a list': {'tasks': []},
    }
    messages = {'unknown class': 'does not know', 'foreign task': 'no data.window_id',
                'unknown window': 'does not hold', 'not a list': 'list of tasks'}
    for name, content in cases.items():
        path = tmp_path / f'{name}.json'
        path.write_text(json.dumps(content))
        assert main(['import-labels', '--label-studio', str(path), '--pool', str(robot_pool),
                     '--labels', str(answers)]) == 2, name
        assert messages[name] in capsys.readouterr().err, name
        assert not answers.exists(), name
