"""The node processes (the setup.py executables, started from the launch description) under
hostile input, Ctrl-C as `ros2 launch` delivers it, and a killed node coming back.

- Inputs that used to end a process or put NaN on /emotion (tiny frames, absurd AudioInfo
  rates, huge F32 samples, NaN and misshapen log-mels, stamps jumping by hours) leave all three
  processes running, and every emotion message is a probability vector.
- A node process killed with SIGKILL and started again rejoins: /emotion flows again. A face
  node down until the fusion reports its stall leaves a gap of at least stall_warn_s in the
  crops' stamps, and the fusion restarts its windows after it (no window mixes both sides).
- Two SIGINTs in a row (the terminal's, then launch's), or SIGTERM: exit status 0 and no
  traceback.
"""
from __future__ import annotations

import signal
import threading
import time

import numpy as np
import pytest
import torch
from sensor_msgs.msg import Image
from std_msgs.msg import Header

import ros_helpers as rh
from lightmer.core.messages import time_to_float
from lightmer.harness.rig import NodeProcesses, Rig, image_msg, info_msg
from lightmer.ros.conversions import float_to_time
from lightmer.stream.fuser import is_probability_vector
from polling import wait_until

# Slow tier (starts, kills and restarts node processes): not in `make test-fast`.
pytestmark = pytest.mark.slow

SEGMENT_S = 0.5


@pytest.fixture(scope='module')
def live(tmp_path_factory, ros_env):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp('robust')
    checkpoint = rh.make_checkpoint(tmp / 'model.pt', seed=4)
    params = {'/**': {'ros__parameters': {'diagnostics_period_s': 0.2}},
              '/**/face_crop': {'ros__parameters': {'qos_reliability': 'reliable'}},
              '/**/fusion': {'ros__parameters': {'min_segments': 2, 'stall_warn_s': 2.0}}}
    nodes = NodeProcesses({'model': str(checkpoint)}, tmp, params=params)
    rig = Rig(nodes=nodes, name='rig_robust')
    try:
        rig.wait_ready()
        rig.publish('info', info_msg())
        rig.wait_format('1ch 16000 Hz int16')
        yield {'nodes': nodes, 'rig': rig, 'checkpoint': checkpoint}
    finally:
        rig.close()
        nodes.stop(timeout_s=5)


def _emotion_ok(snap) -> None:
    for r in snap.emotion:
        assert is_probability_vector(np.array([h.score for h in r.msg.results])), r.msg


def _fusion_status(rig, snap=None) -> str:
    snap = snap or rig.snapshot()
    return snap.diagnostics.get(rig.node_name('fusion'), {}).get('_message', '')


def _face_stall(rig):
    """The rig's snapshot once the fusion's /diagnostics says its face input stalled."""
    snap = rig.snapshot()
    return snap if 'face_crop silent' in _fusion_status(rig, snap) else None


def _after(snap, t: float) -> list:
    return [r for r in snap.emotion if time_to_float(r.msg.header.stamp) > t]


def test_hostile_input_leaves_every_process_running_and_emotion_valid(live):
    rig, nodes = live['rig'], live['nodes']
    t = 4000.0
    # frames too small for any face, in three encodings (these used to end face_crop)
    for frame, enc in ((np.zeros((1, 1, 3), np.uint8), 'rgb8'),
                       (np.zeros((3, 5000), np.uint8), 'mono8'),
                       (np.zeros((5000, 3, 4), np.uint8), 'bgra8')):
        for _ in range(3):
            rig.publish('image', image_msg(t, frame, rh.FRAME_ID, encoding=enc))
            t += SEGMENT_S
    # an AudioInfo claiming 4294967295 Hz is refused; huge finite F32 samples and NaN
    rig.publish('info', info_msg(rate=4294967295))
    rig.wait_for(lambda s: 'sample_rate' in s.diagnostics.get('/audio_feature', {}).get(
        '_message', '') and s, 20, 'the absurd rate refused')
    rig.publish('info', info_msg(sample_format='F32LE'))
    rig.wait_format('1ch 16000 Hz float32')
    rng = np.random.default_rng(0)
    for i in range(30):
        chunk = (0.1 * rng.standard_normal(1600)).astype('<f4')
        if 10 <= i < 13:
            chunk[::3] = 1e30
        if i == 20:
            chunk[5] = np.nan
        rig.publish('audio', rh.audio_msg(t + i * 0.1, chunk.tobytes()))
        time.sleep(0.01)
    # log-mels straight onto the fusion's input: NaN, inf, wrong shape, wrong encoding
    mel_pub = rig.node.create_publisher(Image, 'log_mel', 10)
    for i, (shape, fill, enc) in enumerate((((128, 43), np.nan, '32FC1'),
                                            ((128, 43), np.inf, '32FC1'),
                                            ((43, 128), 0.0, '32FC1'),
                                            ((128, 43), 0.0, 'mono8'))):
        mel = np.full(shape, fill, np.float32)
        mel_pub.publish(Image(header=Header(stamp=float_to_time((8200 + i + 0.5) * SEGMENT_S)),
                              height=shape[0], width=shape[1], encoding=enc, step=shape[1] * 4,
                              data=mel.tobytes()))
    snap = rig.wait_for(
        lambda s: s.counts('/audio_feature').get('invalid', 0) > 0
        and s.counts('/fusion').get('rejected', 0) >= 2 and s,
        30, 'the overflowing audio windows and the bad log-mels counted')
    nodes.check_alive()
    # stamps jump forward by 3 h, then ordinary input works and gives valid windows
    rig.publish('info', info_msg())
    rig.wait_format('1ch 16000 Hz int16')
    clip = rh.make_clip(SEGMENT_S, seed=6)
    offset = 3 * 3600.0 + 10000.0
    rig.prime_audio(rh.T0 + offset - 30)
    rig.play(rh.clip_events(clip, offset_s=offset))
    snap = rig.wait_for(lambda s: _after(s, rh.T0 + offset) and s, 60,
                        'windows after the jump')
    _emotion_ok(snap)
    assert snap.counts('/face_crop')['no_face'] >= 3
    assert snap.counts('/audio_feature')['jumps'] >= 1
    nodes.check_alive()


@pytest.mark.parametrize('name', ['face_crop', 'fusion'])
def test_a_killed_node_restarted_rejoins_and_emotion_flows_again(live, name):
    rig, nodes = live['rig'], live['nodes']
    stream = rh.LiveStream(rig)
    try:
        rig.wait_for(lambda s: _after(s, time.time() - 5), 60, 'emotion from the live stream')
        nodes.kill(name)
        killed = time.time()
        if name == 'face_crop':
            # Started again only once the fusion reports the face stall, so the new node's
            # first crop is at least stall_warn_s after the last one. Started at once, a node
            # that loads fast (an ONNX model: its first crop 0.5-1.5 s after the kill) leaves
            # a shorter gap, after which the windows rightly go on: the break asserted below
            # then depended on how fast the machine loads torch.
            stalled = wait_until(lambda: _face_stall(rig), 20, 'the fusion to report the '
                                 'face stall', describe=lambda: _fusion_status(rig))
            breaks = stalled.counts(rig.node_name('fusion'))['breaks']   # as of the stall
        nodes.start(name)
        snap = rig.wait_for(lambda s: _after(s, killed) and s, 120,
                            f'emotion after {name} restarted')
        nodes.check_alive()
        _emotion_ok(snap)
        if name == 'face_crop':     # the fusion saw a gap of faces: its windows restarted
            rig.wait_for(lambda s: s.counts('/fusion').get('breaks', 0) > breaks,
                         10, 'the fusion to restart its windows after the face gap')
    finally:
        stream.close()


def test_two_sigints_or_sigterm_end_each_node_cleanly(live):
    """Last in this module: it ends the processes. The later signals come while the first is
    being handled (destroying the node, torch's exit hooks), as launch's own SIGINT follows
    the terminal's."""
    nodes = live['nodes']
    nodes.check_alive()
    # (delay before it, signal), per node
    plans = {'face_crop': ((0.0, signal.SIGINT), (0.15, signal.SIGINT)),
             'audio_feature': ((0.0, signal.SIGTERM), (0.3, signal.SIGINT)),
             'fusion': ((0.0, signal.SIGINT), (0.05, signal.SIGINT), (0.5, signal.SIGTERM))}

    def deliver(proc, plan):
        for delay, sig in plan:
            time.sleep(delay)
            proc.send_signal(sig)

    senders = [threading.Thread(target=deliver, args=(nodes.procs[n], plan))
               for n, plan in plans.items()]
    for t in senders:
        t.start()
    for t in senders:
        t.join()
    for name, proc in nodes.procs.items():
        proc.wait(timeout=30)
        log = nodes.log_path(name).read_text()
        assert proc.returncode == 0, f'{name}: {proc.returncode}\n{log[-3000:]}'
        assert 'Traceback' not in log and 'KeyboardInterrupt' not in log, log[-3000:]
