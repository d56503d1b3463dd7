"""Bad input to the running nodes (one process, real DDS on loopback): each is refused and
reported on /diagnostics, the nodes stay alive, and good input afterwards works again.

The tests share one bringup and run in file order; each uses stamps later than the previous
one, except the last, which jumps back on purpose."""
from __future__ import annotations

import time

import numpy as np
import pytest
import rclpy
import torch
from sensor_msgs.msg import Image
from std_msgs.msg import Header

import ros_helpers as rh
from lightmer.core.messages import time_to_float
from lightmer.harness.rig import Rig, audio_msg, image_msg, info_msg
from lightmer.ros.bringup import start_bringup
from lightmer.ros.conversions import float_to_time

N, MIN_SEGMENTS, SEGMENT_S = 5, 2, 0.5


@pytest.fixture(scope='module')
def env(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp('bad_input')
    checkpoint = rh.make_checkpoint(tmp / 'model.pt', seed=7)
    params = tmp / 'params.yaml'
    params.write_text('/**:\n  ros__parameters:\n    diagnostics_period_s: 0.2\n'
                      '/**/fusion:\n  ros__parameters:\n'
                      f'    min_segments: {MIN_SEGMENTS}\n')
    context = rclpy.Context()
    rclpy.init(context=context)
    running = start_bringup({'model': str(checkpoint), 'params_file': str(params)},
                            context=context)
    rig = Rig(context=context, name='rig_bad_input')
    rig.wait_ready(30)
    yield {'rig': rig, 'running': running, 'checkpoint': checkpoint}
    rig.close()
    running.stop()
    rclpy.shutdown(context=context)


def _count(snap, node: str, key: str) -> int:
    return snap.counts(node).get(key, 0)


def _wait_count(rig, node, key, at_least, timeout_s=20.0):
    return rig.wait_for(lambda s: _count(s, node, key) >= at_least and s, timeout_s,
                        f'{node} {key} >= {at_least}')


def _alive(running) -> None:
    assert all(t.is_alive() for t in running.threads), 'an executor thread died'


def _face_frames(t0: float, n: int, face: bool = True):
    clip = rh.make_clip(SEGMENT_S, face=face)
    return [(t0 + i * 0.1, clip.frames[i % len(clip.frames)]) for i in range(n)]


def _publish_frames(rig, frames) -> None:
    for t, frame in frames:
        rig.publish('image', image_msg(t, frame, rh.FRAME_ID))
        time.sleep(0.05)


def test_unsupported_empty_and_truncated_images_are_refused_then_frames_work(env):
    rig = env['rig']
    base = _count(rig.snapshot(), '/face_crop', 'rejected')
    frame = rh.make_clip(SEGMENT_S).frames[0]
    yuv = image_msg(2000.0, frame[:, :, :2].copy(), encoding='yuv422')
    empty = Image(header=Header(stamp=float_to_time(2000.05)), encoding='rgb8')
    truncated = image_msg(2000.1, frame)
    truncated.data = bytes(truncated.data)[:1000]
    for msg in (yuv, empty, truncated):
        rig.publish('image', msg)
    snap = _wait_count(rig, '/face_crop', 'rejected', base + 3)
    assert 'truncated' in snap.diagnostics['/face_crop']['_message']
    _publish_frames(rig, _face_frames(2000.2, 12))
    snap = rig.wait_for(lambda s: len(rh.stamps(s.crops, 2000.2, 2001.4)) >= 2 and s, 20,
                          'crops from the good frames after the bad ones')
    assert _count(snap, '/face_crop', 'rejected') == base + 3
    _alive(env['running'])


def test_frames_without_a_face_are_counted_and_publish_nothing(env):
    rig = env['rig']
    before = rig.snapshot()
    _publish_frames(rig, _face_frames(2100.0, 10, face=False))     # segments 4200, 4201
    _publish_frames(rig, _face_frames(2101.0, 6))                  # faces again
    snap = rig.wait_for(lambda s: len(rh.stamps(s.crops, 2101.0, 2101.6)) >= 1 and s, 20,
                          'a crop once faces are back')
    assert _count(snap, '/face_crop', 'no_face') >= _count(before, '/face_crop', 'no_face') + 2
    assert rh.stamps(snap.crops, 2100.0, 2100.95) == []
    _alive(env['running'])


def _chunks(t0: float, seconds: float, sr: int, channels: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    n = int(seconds * sr)
    x = 0.2 * np.sin(2 * np.pi * 220 * np.arange(n) / sr) + 0.01 * rng.standard_normal(n)
    step = sr // 10
    for s in range(0, n, step):
        piece = np.repeat(x[s:s + step, None], channels, axis=1)
        if np.dtype(dtype) == np.int16:
            piece = (piece * 32000).astype('<i2')
        else:
            piece = piece.astype('<f4')
        yield t0 + s / sr, piece


def _publish_audio(rig, chunks, nan_at: float | None = None) -> None:
    for t, piece in chunks:
        if nan_at is not None and abs(t - nan_at) < 1e-6:
            piece = piece.copy()
            piece[3] = np.nan
        rig.publish('audio', audio_msg(t, piece.tobytes()))
        time.sleep(0.005)


def test_mp3_stream_is_refused_naming_the_fix_then_wave_works(env):
    rig = env['rig']
    base = _count(rig.snapshot(), '/audio_feature', 'rejected')
    rig.publish('info', info_msg(coding='mp3'))
    snap = rig.wait_for(lambda s: 'format:=wave' in s.diagnostics.get(
        '/audio_feature', {}).get('_message', '') and s, 20, 'the mp3 refusal')
    _publish_audio(rig, _chunks(3000.0, 0.5, 16000, 1, np.int16))
    _wait_count(rig, '/audio_feature', 'rejected', base + 5)
    rig.publish('info', info_msg())                        # S16LE 16 kHz mono wave
    rig.wait_format('1ch 16000 Hz int16')
    _publish_audio(rig, _chunks(3001.0, 3.0, 16000, 1, np.int16))
    snap = rig.wait_for(lambda s: len(rh.stamps(s.mels, 3001.0, 3004.0)) >= 3 and s, 20,
                          'log-mels once the stream is wave')
    assert rh.stamps(snap.mels, 3000.0, 3000.99) == []
    _alive(env['running'])


def test_nan_samples_are_dropped_and_the_stream_recovers(env):
    rig = env['rig']
    before = rig.snapshot()
    rig.publish('info', info_msg(sample_format='F32LE'))
    rig.wait_format('1ch 16000 Hz float32')
    _publish_audio(rig, _chunks(3100.0, 5.0, 16000, 1, np.float32), nan_at=3102.0)
    snap = _wait_count(rig, '/audio_feature', 'rejected',
                       _count(before, '/audio_feature', 'rejected') + 1)
    snap = rig.wait_for(lambda s: len(rh.stamps(s.mels, 3103.0, 3105.0)) >= 1 and s, 20,
                          'log-mels after the NaN chunk')
    assert _count(snap, '/audio_feature', 'audio_gap') > _count(before, '/audio_feature',
                                                                'audio_gap')
    for r in snap.mels:
        assert np.isfinite(np.frombuffer(bytes(r.msg.data), np.float32)).all()
    # no window may contain the NaN chunk [3102.0, 3102.1)
    for t in rh.stamps(snap.mels, 3100.0, 3105.0):
        assert t + 0.75 <= 3102.0 + 1e-6 or t - 0.75 >= 3102.1 - 1e-6
    _alive(env['running'])


def test_wrong_rate_is_refused_and_other_rates_and_channels_are_resampled(env):
    rig = env['rig']
    rig.publish('info', info_msg(rate=0))
    rig.wait_for(lambda s: 'rate' in s.diagnostics.get('/audio_feature', {}).get(
        '_message', '') and s, 20, 'the sample-rate refusal')
    rig.publish('info', info_msg(rate=44100, channels=2))
    rig.wait_format('2ch 44100 Hz int16')
    _publish_audio(rig, _chunks(3200.0, 3.0, 44100, 2, np.int16))
    snap = rig.wait_for(lambda s: len(rh.stamps(s.mels, 3200.0, 3203.0)) >= 2 and s, 20,
                          'log-mels of a 44.1 kHz stereo stream')
    assert {(r.msg.height, r.msg.width) for r in snap.mels} == {(128, 43)}
    rig.publish('info', info_msg())                        # back to 16 kHz mono
    rig.wait_format('1ch 16000 Hz int16')
    _publish_audio(rig, _chunks(3300.0, 0.5, 16000, 1, np.int16))
    _alive(env['running'])


def test_stamps_going_backwards_reset_the_nodes_which_then_match_offline(env):
    rig, running = env['rig'], env['running']
    before = rig.snapshot()
    clip = rh.make_clip(SEGMENT_S, seed=2)
    expected = rh.expected_windows(clip, env['checkpoint'], N, MIN_SEGMENTS)
    rig.play(rh.clip_events(clip))                  # stamps ~1000 s: far behind 2000-3300 s
    snap = rig.wait_for(
        lambda s: set(expected) <= set(rh.emotion_by_segment(
            [r for r in s.emotion if time_to_float(r.msg.header.stamp) < 1010], SEGMENT_S)) and s,
        60, 'windows after the jump back')
    got = rh.emotion_by_segment(
        [r for r in snap.emotion if time_to_float(r.msg.header.stamp) < 1010], SEGMENT_S)
    for k, probs in expected.items():
        np.testing.assert_allclose(got[k], probs, atol=1e-5)
    snap = rig.wait_for(
        lambda s: all(_count(s, n, 'resets') > _count(before, n, 'resets')
                      for n in ('/face_crop', '/audio_feature', '/fusion')) and s, 10,
        'a reset reported by each node')
    assert running.node('fusion').reporter.problem == '', 'recovered: the warning is cleared'
    _alive(running)
