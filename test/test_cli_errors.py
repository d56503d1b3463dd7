"""Every `lightmer` command, given bad input, prints one clear line and exits non-zero: never a
traceback. Run as real processes, as a user runs them."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lightmer.cli import main
from lightmer.core.checkpoint import meta_for_preset, save_checkpoint
from lightmer.core.model import LightmerNet
from lightmer.evaluation import bags


@pytest.fixture(scope='module')
def files(tmp_path_factory) -> dict[str, Path]:
    """Bad inputs of every kind, and one usable bag to pair them with."""
    d = tmp_path_factory.mktemp('bad_inputs')
    meta = meta_for_preset('crema-d')
    model = LightmerNet(meta.model)
    with torch.no_grad():
        model.fc.weight[0, 0] = float('nan')
    save_checkpoint(d / 'nan.pt', model, meta)
    torch.save(model, d / 'module.pt')                 # a pickled nn.Module, not ours
    (d / 'empty').mkdir()
    junk = d / 'junk_crema' / 'VideoFlash'
    junk.mkdir(parents=True)
    (junk / 'not_a_clip.flv').write_bytes(b'FLV')
    (junk / '1001_DFA_ANG_XX.flv').write_bytes(b'version https://git-lfs.github.com/spec/v1\n')
    (d / 'a_file').write_text('not a folder')
    (d / 'plain.txt').write_text('remember to set model_path\nand the camera topic\n')
    (d / 'broken.yaml').write_text('/**:\n  ros__parameters:\n    max_faces: [1, 2\n')
    (d / 'mixed.yaml').write_text('/**:\n  ros__parameters:\n    audio_to: [1, x]\n')
    (d / 'outside.yaml').write_text('/**:\n  max_faces: 2\n')
    (d / 'someones_work').mkdir()
    (d / 'someones_work' / 'thesis.tex').write_text('precious')
    frames = np.full((6, 24, 32, 3), 90, np.uint8)
    clip = bags.BagClip('c', 'happy', frames, np.arange(6) / 6.0, 6.0,
                        np.zeros(16000, np.float32))
    bags.write_bag([clip], d / 'ok.bag', gap_s=0.2)
    return d


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'lightmer.cli', *args], capture_output=True,
                          text=True, timeout=300)


# (name, argv with {d} for the fixture folder, text the error line must hold)
CASES = [
    ('summary', ['summary', '--classes', '0'], 'expected a positive integer'),
    ('unknown command', ['frobnicate'], 'invalid choice'),
    ('export missing', ['export', '--checkpoint', '{d}/missing.pt'], 'no checkpoint at'),
    ('export nan', ['export', '--checkpoint', '{d}/nan.pt'], 'non-finite'),
    ('bench foreign', ['bench', '--no-nodes', '--repeats', '1', '--checkpoint',
                       '{d}/module.pt'], 'not a lightmer checkpoint'),
    ('synth', ['synth', '--layout', 'crema-d', '--out', '{d}/s', '--actors', '500'],
     'actors 1..91'),
    ('prepare no folders', ['prepare', '--dataset', 'crema-d', '--root', '{d}/empty',
                            '--cache', '{d}/c1'], 'VideoFlash'),
    ('prepare no clips', ['prepare', '--dataset', 'crema-d', '--root', '{d}/junk_crema',
                          '--cache', '{d}/c2'], 'no usable clips'),
    ('prepare ravdess', ['prepare', '--dataset', 'ravdess', '--root', '{d}/empty',
                         '--cache', '{d}/c3'], 'Actor_XX'),
    ('train no cache', ['train', '--dataset', 'crema-d', '--cache', '{d}/empty',
                        '--out', '{d}/r'], 'run `lightmer prepare'),
    ('train fold', ['train', '--dataset', 'crema-d', '--cache', '{d}/empty', '--out', '{d}/r',
                    '--fold', 'first'], "'all'"),
    ('make-bag', ['make-bag', '--dataset', 'crema-d', '--root', '{d}/missing', '--out',
                  '{d}/b'], 'does not exist'),
    ('eval-bag no bag', ['eval-bag', '--bag', '{d}/missing.bag', '--labels', '{d}/l.csv',
                         '--checkpoint', '{d}/nan.pt'], 'no such bag'),
    ('eval-bag nan', ['eval-bag', '--bag', '{d}/ok.bag', '--labels', '{d}/ok.bag.labels.csv',
                      '--checkpoint', '{d}/nan.pt'], 'non-finite'),
    ('bringup', ['bringup', '--model', '{d}/module.pt'], 'not a lightmer checkpoint'),
    ('demo file', ['demo', '--out', '{d}/a_file'], 'a_file'),
    ('demo foreign folder', ['demo', '--out', '{d}/someones_work'], 'not a demo output'),
]


@pytest.mark.parametrize('argv, expected', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_one_line_and_a_non_zero_exit(files, argv, expected):
    proc = _run([a.replace('{d}', str(files)) for a in argv])
    assert proc.returncode != 0
    assert 'Traceback' not in proc.stderr, proc.stderr
    # rcl's own log lines (bringup starts ROS, and rcl may log as it does) are not lightmer's
    # output
    lines = [line for line in proc.stderr.splitlines()
             if line.strip() and not re.match(r'\[(INFO|WARN)\] \[\d+\.\d+\] \[rcl\]', line)]
    command = argv[0]
    if 'usage:' in proc.stderr:       # argparse: its usage, then one error line
        assert lines[-1].startswith('lightmer') and 'error:' in lines[-1], proc.stderr
    else:
        assert len(lines) == 1, proc.stderr
        assert lines[0].startswith(f'lightmer {command}: '), proc.stderr
    assert expected in lines[-1], proc.stderr
    assert (files / 'someones_work' / 'thesis.tex').read_text() == 'precious'


# Launch arguments and options checked before anything starts: one line, exit status 2.
ARGUMENT_CASES = [
    ('params plain text', ['bringup', '--params-file', '{d}/plain.txt'],
     'not a ROS parameter file'),
    ('params broken yaml', ['bringup', '--params-file', '{d}/broken.yaml'], 'not valid YAML'),
    ('params mixed list', ['bringup', '--params-file', '{d}/mixed.yaml'], 'mixes types'),
    ('params outside', ['bringup', '--params-file', '{d}/outside.yaml'],
     "outside any 'ros__parameters'"),
    ('camera topic', ['bringup', '--camera-topic', 'bad topic!'], 'not a ROS topic name'),
    ('namespace', ['bringup', '--namespace', '1bad ns'], 'not a ROS namespace'),
    ('label port', ['label', '--pool', '{d}/empty', '--port', '70000'], '0..65535'),
]


@pytest.mark.parametrize('argv, expected', [c[1:] for c in ARGUMENT_CASES],
                         ids=[c[0] for c in ARGUMENT_CASES])
def test_bad_arguments_give_one_line_and_exit_2(files, argv, expected, capsys):
    # In this process (cli.main, what the console script calls): these are refused before
    # ROS or a model is touched, and a process each would cost the fast tier ~4 s a case.
    code = main([a.replace('{d}', str(files)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f'lightmer {argv[0]}: '), err
    assert expected in lines[0], err
