"""`lightmer prepare`: the documented frame subsample, the cache layout, no-face handling, and
resuming after a real kill."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lightmer.cli import main
from lightmer.core.atomic_io import atomic_write_wav
from lightmer.core.config import PRESETS, FeatureConfig
from lightmer.core.segments import segment_bounds
from lightmer.datasets import synth
from lightmer.datasets.cache import load_index
from lightmer.datasets.media import decode_audio
from lightmer.datasets.prepare import FRAMES_PER_SEGMENT, prepare, select_frames
from polling import wait_until

# Slow tier (prepare runs, one killed and resumed): not in `make test-fast`.
pytestmark = pytest.mark.slow

N = PRESETS['crema-d'].n_segments


def test_select_frames_takes_k_evenly_spaced_frames_per_segment():
    times = np.arange(75) / 30.0                          # 2.5 s at 30 fps
    chosen = select_frames(times, segment_bounds(2.5, 5), 3)
    assert [list(c) for c in chosen] == [[2, 7, 12], [17, 22, 27], [32, 37, 42],
                                         [47, 52, 57], [62, 67, 72]]
    # fewer frames than K in a segment: all of them; none at all: the nearest to its centre
    short = np.arange(4) / 30.0
    chosen = select_frames(short, segment_bounds(4 / 30, 6), 3)
    assert all(len(c) >= 1 for c in chosen)
    assert sorted({int(i) for c in chosen for i in c}) == [0, 1, 2, 3]


def test_tiny_cache_layout(tiny_cache, tiny_corpus):
    index = json.loads((tiny_cache / 'index.json').read_text())
    assert index['dataset'] == 'crema-d' and index['preset'] == 'crema-d'
    assert index['features'] == FeatureConfig().to_dict() and index['complete']
    assert index['n_segments'] == N and index['frames_per_segment'] == FRAMES_PER_SEGMENT
    clips = index['clips']
    assert [c['clip_id'] for c in clips] == sorted(p.stem for p in
                                                     (tiny_corpus / 'VideoFlash').glob('*.flv'))
    assert all(c['status'] == 'ok' for c in clips)
    for c in clips:
        assert {'clip_id', 'actor', 'label', 'duration', 'frames', 'faces', 'status'} <= set(c)
        assert c['audio_source'] == 'wav'
        assert abs(c['audio_duration'] - c['duration']) < 0.05    # the same recording
        # the face detector ran only on the N x K frames training can draw, not on every frame
        assert c['tried'] == N * FRAMES_PER_SEGMENT < c['frames']
        assert c['faces'] == c['tried']                 # the synthetic face is always found
        with np.load(tiny_cache / 'clips' / f"{c['clip_id']}.npz") as z:
            crops, times, audio = z['crops'], z['crop_times'], z['audio']
            assert float(z['duration']) == c['duration']
        assert crops.dtype == np.uint8 and crops.shape == (c['faces'], 98, 80)
        assert times.dtype == np.float64 and np.all(np.diff(times) > 0)
        assert 0 <= times[0] and times[-1] < c['duration']
        seg = np.minimum((times / c['duration'] * N).astype(int), N - 1)
        assert np.bincount(seg, minlength=N).tolist() == [FRAMES_PER_SEGMENT] * N
        assert audio.dtype == np.float32 and audio.ndim == 1
        assert abs(len(audio) / 16000 - c['duration']) < 0.1
        assert crops.std() > 10                         # a face, not a blank


def test_clip_without_a_face_gets_status_no_face_and_is_left_out(tiny_corpus, tmp_path):
    root = tmp_path / 'root'
    (root / 'VideoFlash').mkdir(parents=True)
    (root / 'AudioWAV').mkdir()
    good = sorted((tiny_corpus / 'VideoFlash').glob('*.flv'))[0].stem
    for d, ext in (('VideoFlash', 'flv'), ('AudioWAV', 'wav')):
        shutil.copy(tiny_corpus / d / f'{good}.{ext}', root / d / f'{good}.{ext}')
    blank = '1002_DFA_SAD_XX'
    frames = [np.full((360, 480, 3), 100 + i, np.uint8) for i in range(30)]   # 1 s, no face
    synth._write_flv(root / 'VideoFlash' / f'{blank}.flv', frames, synth.Fraction(30))
    speech, sr = decode_audio(tiny_corpus / 'AudioWAV' / f'{good}.wav')
    atomic_write_wav(root / 'AudioWAV' / f'{blank}.wav', speech[:sr], sr)   # 1 s too

    summary = prepare('crema-d', root, tmp_path / 'cache', workers=1, progress=False)
    assert summary.status == {'ok': 1, 'no_face': 1}
    # K frames per segment first, then the rest of every faceless segment: all 30 frames
    assert summary.frames_without_face == 30
    assert f'{blank}: no_face' in str(summary)
    index = load_index(tmp_path / 'cache')
    assert index.clip_ids == [good]
    with np.load(tmp_path / 'cache' / 'clips' / f'{blank}.npz') as z:
        assert z['crops'].shape == (0, 98, 80) and str(z['status']) == 'no_face'


def test_a_cache_made_with_other_settings_is_refused(tiny_cache, tiny_corpus):
    before = (tiny_cache / 'index.json').read_text()
    with pytest.raises(ValueError, match='other settings'):
        prepare('crema-d', tiny_corpus, tiny_cache, frames_per_segment=2, progress=False)
    assert (tiny_cache / 'index.json').read_text() == before


def _process_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, state, start time in clock ticks) of every process, from /proc."""
    table = {}
    for stat in Path('/proc').glob('[0-9]*/stat'):
        try:
            text = stat.read_text()
        except OSError:            # ended while we looked
            continue
        fields = text[text.rindex(')') + 2:].split()     # after 'pid (comm) '
        table[int(stat.parent.name)] = (int(fields[1]), fields[0], int(fields[19]))
    return table


def _descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every living descendant of `pid`."""
    table = _process_table()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, state, start) in table.items():
            if ppid == parent and child not in found and state != 'Z':
                found[child] = start
                frontier.append(child)
    return found


def _alive(processes: dict[int, int]) -> list[int]:
    """Those of `processes` (pid -> start time) still running (not ended, not a zombie)."""
    table = _process_table()
    return [pid for pid, start in processes.items()
            if pid in table and table[pid][2] == start and table[pid][1] != 'Z']


def test_prepare_killed_leaves_no_worker_and_resumes_to_an_uninterrupted_run(
        tiny_corpus, tiny_cache, tmp_path, capsys):
    cache = tmp_path / 'cache'
    cmd = [sys.executable, '-m', 'lightmer.cli', 'prepare', '--dataset', 'crema-d',
           '--root', str(tiny_corpus), '--cache', str(cache), '--workers', '2']
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    children: dict[int, int] = {}
    try:
        def working() -> bool:
            children.update(_descendants(proc.pid))
            return (len(list((cache / 'clips').glob('*.npz'))) >= 3 and len(children) >= 2
                    or proc.poll() is not None)

        wait_until(working, 180, 'three finished clips and two workers',
                   describe=lambda: (sorted((cache / 'clips').glob('*.npz')), children))
        # SIGKILL to prepare alone, as the OOM killer or `kill -9` does: no handler runs and
        # nothing is sent to the workers, which must notice on their own.
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
        assert len(children) >= 2              # the two workers (and the resource tracker)
        wait_until(lambda: not _alive(children), 30, 'the workers to end with their parent',
                   describe=lambda: _alive(children))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)    # whatever survived a failed test
        proc.stderr.close()
    done = len(list((cache / 'clips').glob('*.npz')))
    assert 3 <= done < 24
    assert not (cache / 'index.json').exists()     # unfinished: nothing claims completeness

    # resumed in this process with one worker (the reference used two: same cache either way)
    assert main(['prepare', '--dataset', 'crema-d', '--root', str(tiny_corpus),
                 '--cache', str(cache), '--workers', '1']) == 0
    out = capsys.readouterr().out
    assert f'({24 - done} new, {done} already done)' in out
    assert 'frames without a face: 0 of 360 tried' in out

    a = json.loads((cache / 'index.json').read_text())
    b = json.loads((tiny_cache / 'index.json').read_text())
    assert a == b
    assert not list((cache / 'clips').glob('.*'))   # no temporary files left behind
    for c in b['clips']:
        with np.load(cache / 'clips' / f"{c['clip_id']}.npz") as za, \
                np.load(tiny_cache / 'clips' / f"{c['clip_id']}.npz") as zb:
            assert sorted(za.files) == sorted(zb.files)
            for k in zb.files:
                np.testing.assert_array_equal(za[k], zb[k], err_msg=f"{c['clip_id']} {k}")
