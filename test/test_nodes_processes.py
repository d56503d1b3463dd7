"""The three nodes as three processes (the setup.py executables' `main`), started from the same
description as the launch file (`ros.rig.NodeProcesses`), over real DDS on loopback:
probabilities equal the offline model's, one-process replay with the shipped Fast DDS profile
loses nothing, and Ctrl-C ends each node cleanly. The tests share the processes, in file
order."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import ros_helpers as rh
from lightmer.core.segments import reference_time, segment_index
from lightmer.harness.rig import NodeProcesses, Rig, info_msg, loopback_env

# Slow tier (starts node processes): not in `make test-fast`.
pytestmark = pytest.mark.slow

N, MIN_SEGMENTS, SEGMENT_S = 5, 2, 0.5
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope='module')
def processes(tmp_path_factory):
    tmp = tmp_path_factory.mktemp('processes')
    checkpoint = rh.make_checkpoint(tmp / 'model.pt', seed=3)
    # Reliable images between processes: best effort (the default, which takes any camera)
    # received only 26 of 45 640x480 frames here, and this test wants a frame in every
    # segment. In one process best effort loses nothing (test_nodes_inprocess).
    params = {'/**': {'ros__parameters': {'diagnostics_period_s': 0.2}},
              '/**/face_crop': {'ros__parameters': {'qos_reliability': 'reliable'}},
              '/**/fusion': {'ros__parameters': {'min_segments': MIN_SEGMENTS}}}
    nodes = NodeProcesses({'model': str(checkpoint)}, tmp / 'logs', params)
    yield {'nodes': nodes, 'checkpoint': checkpoint}
    nodes.stop(timeout_s=5.0)


def test_three_processes_give_the_offline_probabilities(processes):
    torch.set_num_threads(1)
    clip = rh.make_clip(SEGMENT_S, seed=1)
    expected = rh.expected_windows(clip, processes['checkpoint'], N, MIN_SEGMENTS)
    with Rig(nodes=processes['nodes'], name='rig_processes') as rig:
        rig.wait_ready(timeout_s=90)     # three cold starts of torch + MTCNN on two cores
        rig.publish('info', info_msg())
        rig.wait_format('1ch 16000 Hz int16')
        rig.prime_audio(rh.T0 - 30)
        rig.play(rh.clip_events(clip))
        snap = rig.wait_for(
            lambda s: set(expected) <= set(rh.emotion_by_segment(s.emotion, SEGMENT_S)) and s,
            90, 'windows from the three processes')
        got = rh.emotion_by_segment(snap.emotion, SEGMENT_S)
        for k, probs in expected.items():
            np.testing.assert_allclose(got[k], probs, atol=1e-5,
                                       err_msg=f'segment {k}; {rig.snapshot().diagnostics}')
        assert snap.label_info, 'LabelInfo is latched for late subscribers'
        # every segment the frames closed got its frame
        last = float(clip.frame_times[-1])
        closed = {k for k in {segment_index(float(t), SEGMENT_S) for t in clip.frame_times}
                  if reference_time(k, SEGMENT_S, 'centre') <= last
                  or k < segment_index(last, SEGMENT_S)}
        rig.wait_for(lambda s: s.counts('/face_crop').get('segments') == len(closed), 20,
                     f'{len(closed)} face segments')
        # Counts arrive every 0.2 s: wait for them to catch up rather than read one snapshot.
        wanted = len(expected) + MIN_SEGMENTS - 1
        rig.wait_for(lambda s: s.counts('/audio_feature').get('published', 0) >= wanted, 10,
                     f'{wanted} log-mels published')


def test_one_participant_replay_with_the_shipped_profile_loses_nothing(processes):
    """Camera (640x480 at 30 fps) and microphone from ONE participant, as `ros2 bag play`
    publishes a bag, with config/fastdds_replay.xml given to that player alone: no segment
    given up, no input late, a window for every segment. (With Fast DDS's defaults, audio
    chunks queued behind the frames came seconds late: scripts/measure_replay.py.)"""
    env = {**loopback_env(),
           'FASTRTPS_DEFAULT_PROFILES_FILE': str(ROOT / 'config' / 'fastdds_replay.xml')}
    done = subprocess.run([sys.executable, str(ROOT / 'scripts' / 'replay_one_participant.py'),
                           '12', str(processes['checkpoint'])], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result['windows'] >= 20                      # 12 s of segments of 0.5 s
    assert result['fusion']['late'] == 0, result
    assert result['fusion']['dropped'] == 0, result
    assert result['missing_segments'] == [], result


def test_a_killed_node_started_again_rejoins(processes):
    """NodeProcesses.restart: the fusion process killed (SIGKILL, as a crash) and started from the
    same command line comes back: fresh counters, its topics matched, LabelInfo latched again."""
    nodes = processes['nodes']
    with Rig(nodes=nodes, name='rig_restart') as rig:
        rig.wait_for(lambda s: s.counts('/fusion').get('used', 0) > 0 and s.label_info, 20,
                     'the first fusion process and its LabelInfo')
        assert nodes.restart('fusion') == -signal.SIGKILL
        rig.wait_for(lambda s: s.counts('/fusion').get('used') == 0, 90,
                     'the new fusion process reporting')
        rig.wait_ready(90)
        # 60 s, not 20: once, in a CI run of the whole suite, the new LabelInfo took longer
        # than 20 s to reach the rig (cause not isolated: discovery of the new writer while
        # the SIGKILLed one's lease, 20 s by default, still runs, on two busy cores).
        rig.wait_for(lambda s: len(s.label_info) >= 2, 60, 'LabelInfo from the new process')


def test_ctrl_c_ends_each_node_cleanly(processes):
    nodes = processes['nodes']
    codes = nodes.stop()
    for name, code in codes.items():
        log = nodes.log_path(name).read_text()
        assert code == 0, log
        assert 'Traceback' not in log, log
