"""What the nodes say in their logs about inputs they drop, on real node classes in one process
(callbacks called directly; `Reporter.error` is the throttled ERROR line, `Reporter.warn` the
WARN line, both also on /diagnostics).

- Audio that comes before the latched AudioInfo (at every start and respawn, by a few ms) is
  kept quietly and used once the format comes; only when none came within
  AUDIO_INFO_WAIT_S is there a warning (not an error).
- A refused window of huge audio (1e30: its power spectrum overflows) and a log-mel holding
  NaN are logged, as every other refusal is, besides being counted (`invalid`).
"""
from __future__ import annotations

import numpy as np
import pytest
import rclpy
import torch
from sensor_msgs.msg import Image
from std_msgs.msg import Header

import ros_helpers as rh
from lightmer.harness.rig import audio_msg, info_msg
from lightmer.ros import audio_feature_node
from lightmer.ros.audio_feature_node import AudioFeatureNode
from lightmer.ros.conversions import float_to_time
from lightmer.ros.fusion_node import FusionNode
from polling import wait_until

CHUNK = 1600                      # samples, 0.1 s at 16 kHz


@pytest.fixture(scope='module')
def ros(tmp_path_factory):
    torch.set_num_threads(1)
    context = rclpy.Context()
    rclpy.init(context=context)
    checkpoint = rh.make_checkpoint(tmp_path_factory.mktemp('logs') / 'model.pt', seed=3)
    yield {'context': context, 'checkpoint': checkpoint}
    rclpy.shutdown(context=context)


def _node(cls, ros, namespace: str):
    return cls(context=ros['context'], cli_args=[
        '--ros-args', '-r', f'__ns:={namespace}', '-p', f'model_path:={ros["checkpoint"]}'])


def _chunks(samples: np.ndarray, t0: float):
    for i in range(0, len(samples), CHUNK):
        yield audio_msg(t0 + i / 16000, samples[i:i + CHUNK].tobytes())


@pytest.mark.slow      # the audio node loads librosa (numba): seconds
def test_audio_before_the_audio_info_is_kept_quietly_and_used(ros):
    node = _node(AudioFeatureNode, ros, '/logs_early')
    try:
        audio = (rh.make_clip(0.5).audio * 32767).astype('<i2')[:3 * 16000]
        for msg in _chunks(audio, 2000.0):
            node.audio_callback(msg)
        assert node.reporter.errors == 0 and node.reporter.problem == ''
        assert node.diagnostic_counts()['rejected'] == 0
        node.info_callback(info_msg())
        counts = node.diagnostic_counts()
        assert counts['published'] >= 3 and counts['rejected'] == 0, counts
        assert node.reporter.errors == 0 and node.reporter.problem == ''
    finally:
        node.destroy_node()


@pytest.mark.slow      # the audio node loads librosa (numba): seconds
def test_no_audio_info_at_all_gives_a_warning_not_an_error(ros, monkeypatch):
    monkeypatch.setattr(audio_feature_node, 'AUDIO_INFO_WAIT_S', 0.2)
    node = _node(AudioFeatureNode, ros, '/logs_no_info')
    chunk = next(_chunks(np.zeros(CHUNK, '<i2'), 2000.0))
    try:
        wait_until(lambda: node.reporter.problem, 10, 'the warning after the wait',
                   each=lambda: node.audio_callback(chunk))
        assert 'no usable AudioInfo' in node.reporter.problem
        assert node.reporter.errors == 0
        assert node.diagnostic_counts()['rejected'] > 0
    finally:
        node.destroy_node()


@pytest.mark.slow      # the audio node loads librosa (numba): seconds
def test_huge_audio_is_logged_when_refused(ros):
    node = _node(AudioFeatureNode, ros, '/logs_huge')
    try:
        node.info_callback(info_msg('F32LE'))
        for msg in _chunks(np.full(3 * 16000, 1e30, '<f4'), 2000.0):
            node.audio_callback(msg)
        assert node.diagnostic_counts()['invalid'] > 0
        assert node.reporter.errors > 0 and 'not finite' in node.reporter.problem
    finally:
        node.destroy_node()


def test_a_nan_log_mel_is_logged_when_refused(ros):
    node = _node(FusionNode, ros, '/logs_nan_mel')
    try:
        mel = np.full((128, 43), np.nan, np.float32)
        node.mel_callback(Image(header=Header(stamp=float_to_time(2000.25)), height=128,
                                width=43, encoding='32FC1', step=43 * 4, data=mel.tobytes()))
        assert node.fuser.counts.invalid == 1
        assert node.reporter.errors == 1 and 'NaN' in node.reporter.problem
    finally:
        node.destroy_node()
