"""The three nodes in one process (`lightmer bringup`'s start_bringup) over real DDS on loopback:
a generated clip in, the offline model's probabilities out."""
from __future__ import annotations

import io
import itertools
import time

import numpy as np
import pytest
import rclpy
import torch
from PIL import Image as PILImage
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

import ros_helpers as rh
from lightmer.core.features import to_mono
from lightmer.core.messages import ConversionError, check_image, image_to_rgb, time_to_float
from lightmer.harness.rig import Rig, Topics, info_msg
from lightmer.ros.bringup import start_bringup
from lightmer.ros.conversions import float_to_time
from lightmer.ros.face_crop_node import FaceCropNode
from lightmer.stream.pipeline import OfflinePipeline
from lightmer.stream.settings import StreamSettings
from polling import wait_until

N, MIN_SEGMENTS, SEGMENT_S = 5, 2, 0.5
FORMAT = '1ch 16000 Hz int16'           # what the audio node holds after rig's AudioInfo
OFFSET_BEST_EFFORT = 100.0       # a multiple of T: segment k + 200 replays segment k


def write_params(path, audio_qos: str = 'reliable') -> str:
    path.write_text(
        '/**:\n  ros__parameters:\n    diagnostics_period_s: 0.2\n'
        f'/**/audio_feature:\n  ros__parameters:\n    qos_reliability: {audio_qos}\n'
        f'/**/fusion:\n  ros__parameters:\n    min_segments: {MIN_SEGMENTS}\n')
    return str(path)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp('inprocess')
    checkpoint = rh.make_checkpoint(tmp / 'model.pt')
    clip = rh.make_clip(SEGMENT_S)
    expected = rh.expected_windows(clip, checkpoint, N, MIN_SEGMENTS)
    context = rclpy.Context()
    rclpy.init(context=context)
    running = start_bringup({'model': str(checkpoint),
                             'params_file': write_params(tmp / 'params.yaml')}, context=context)
    yield {'context': context, 'checkpoint': checkpoint, 'clip': clip, 'expected': expected,
           'running': running, 'tmp': tmp}
    running.stop()
    rclpy.shutdown(context=context)


def _check_equal(got: dict, expected: dict, shift: int = 0) -> None:
    for k, probs in expected.items():
        assert k + shift in got, f'no window for segment {k + shift}'
        np.testing.assert_allclose(got[k + shift], probs, atol=1e-5)
        assert abs(got[k + shift].sum() - 1) < 1e-6


def test_reliable_publishers_give_the_offline_probabilities(setup):
    expected = setup['expected']
    assert len(expected) >= 4
    # the windows differ from each other, so equality below is not a coincidence
    assert np.ptp(np.stack(list(expected.values())), axis=0).max() > 1e-3
    with Rig(context=setup['context'], name='rig_reliable') as rig:
        rig.wait_ready(30)
        rig.publish('info', info_msg())
        rig.wait_format(FORMAT)
        rig.prime_audio(rh.T0 - 30)
        rig.play(rh.clip_events(setup['clip']))
        snap = rig.wait_for(
            lambda s: len(rh.emotion_by_segment(s.emotion, SEGMENT_S)) >= len(expected) and s,
            60, 'one emotion window per expected segment')
        got = rh.emotion_by_segment(snap.emotion, SEGMENT_S)
        _check_equal(got, expected)
        assert set(got) == set(expected), 'no window beyond those the clip supports'
        m = snap.emotion[0].msg
        assert m.header.frame_id == rh.FRAME_ID
        assert [h.class_id for h in m.results] == ['angry', 'disgusted', 'fearful', 'happy',
                                                   'neutral', 'sad']
        assert [c.class_name for c in snap.label_info[0].msg.class_map][0] == 'angry'
        # crops carry their source frame's header; mels are stamped with reference times
        frame_stamps = {round(float(t), 6) for t in setup['clip'].frame_times}
        crops = [r.msg for r in snap.crops]
        assert all(round(time_to_float(c.header.stamp), 6) in frame_stamps for c in crops)
        assert {(c.height, c.width, c.encoding) for c in crops} == {(98, 80, 'mono8')}
        assert {(r.msg.height, r.msg.width, r.msg.encoding) for r in snap.mels} == {
            (128, 43, '32FC1')}
        # the per-segment model ran once per segment, whatever the number of windows
        fusion = setup['running'].node('fusion')
        assert fusion.fuser.counts.used == len(expected) + MIN_SEGMENTS - 1
        diag = rig.wait_for(
            lambda s: s.counts('/fusion').get('used') == fusion.fuser.counts.used and s, 10,
            'fusion diagnostics')
        assert diag.counts('/face_crop')['no_face'] == 0
        assert diag.counts('/audio_feature')['published'] >= len(expected)
        # the primer's run ended 30 s before the clip: a stamp jump (>= stamp_jump_s), counted
        # once, not as the 60 segments between
        assert diag.counts('/audio_feature')['jumps'] >= 1
        assert diag.counts('/audio_feature')['audio_gap'] == 0


@pytest.mark.slow
def test_best_effort_camera_works_too(setup):
    # the default image subscription is best effort, so it takes both kinds of camera
    with Rig(context=setup['context'], camera_reliable=False, name='rig_best_effort') as rig:
        rig.wait_ready(30)
        rig.publish('info', info_msg())
        rig.wait_format(FORMAT)
        rig.prime_audio(rh.T0 + OFFSET_BEST_EFFORT - 30)
        rig.play(rh.clip_events(setup['clip'], offset_s=OFFSET_BEST_EFFORT))
        shift = int(round(OFFSET_BEST_EFFORT / SEGMENT_S))
        want = {k + shift for k in setup['expected']}
        snap = rig.wait_for(
            lambda s: want <= set(rh.emotion_by_segment(s.emotion, SEGMENT_S)) and s,
            60, 'the best-effort replay windows')
        _check_equal(rh.emotion_by_segment(snap.emotion, SEGMENT_S), setup['expected'], shift)


@pytest.mark.slow
def test_sim_time_and_best_effort_audio(setup):
    """use_sim_time: the nodes' clocks follow /clock; the output is still stamped and equal.
    Here every publisher is best effort, with the audio subscription set to best_effort."""
    ns = '/sim'
    topics = Topics(f'{ns}/camera/image_raw', f'{ns}/audio/audio_stamped',
                    f'{ns}/audio/audio_info')
    running = start_bringup({
        'model': str(setup['checkpoint']), 'use_sim_time': 'true', 'namespace': ns,
        'params_file': write_params(setup['tmp'] / 'sim.yaml', audio_qos='best_effort'),
        **topics.launch_args()}, context=setup['context'])
    rig = Rig(context=setup['context'], namespace=ns, topics=topics, name='rig_sim',
              camera_reliable=False, audio_reliable=False)
    try:
        fusion = running.node('fusion')
        assert fusion.get_parameter('use_sim_time').value is True
        assert fusion.get_fully_qualified_name() == '/sim/fusion'
        rig.wait_ready(30)
        rig.publish('info', info_msg())
        rig.wait_format(FORMAT)
        rig.prime_audio(rh.T0 - 30)
        rig.play(rh.clip_events(setup['clip']), clock=True)
        snap = rig.wait_for(
            lambda s: set(setup['expected']) <= set(rh.emotion_by_segment(s.emotion, SEGMENT_S))
            and s, 60, 'sim-time windows')
        _check_equal(rh.emotion_by_segment(snap.emotion, SEGMENT_S), setup['expected'])
        last = float(setup['clip'].frame_times[-1])

        def node_clock() -> float:
            return fusion.get_clock().now().nanoseconds / 1e9

        wait_until(lambda: abs(node_clock() - last) < 0.5, 10,
                   f'the node clock to follow /clock ({last})', describe=node_clock)
        assert abs(node_clock() - time.time()) > 1e6, 'the node clock is not wall time'
    finally:
        rig.close()
        running.stop()


def test_parameters_are_described_and_compressed_images_are_read(setup):
    """Every declared parameter carries its description; compressed_input reads JPEG frames."""
    for node in setup['running'].nodes:
        for name in node.params.__dataclass_fields__:
            assert len(node.describe_parameter(name).description) > 10, name
    context = setup['context']
    face = FaceCropNode(context=context, cli_args=[
        '--ros-args', '-r', '__ns:=/cmp', '-p', f'model_path:={setup["checkpoint"]}',
        '-p', 'compressed_input:=true', '-p', 'reference:=start'])
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(face)
    topics = Topics('/cmp/image/compressed', '/cmp/audio', '/cmp/audio_info')
    try:
        with Rig(context=context, namespace='/cmp', topics=topics, compressed=True,
                 name='rig_compressed') as rig:
            buf = io.BytesIO()
            PILImage.fromarray(setup['clip'].frames[0]).save(buf, format='JPEG', quality=95)
            stamps = itertools.count(500.0, 0.5)   # one frame per segment; 'start' emits at once

            def offer() -> None:
                if rig.image_pub.get_subscription_count():
                    rig.publish('image', CompressedImage(
                        header=Header(stamp=float_to_time(next(stamps))), format='jpeg',
                        data=buf.getvalue()))
                executor.spin_once(timeout_sec=0.1)

            crops = wait_until(lambda: rig.snapshot().crops, 30,
                               'a crop from the compressed frames', each=offer, interval_s=0.0)
        assert (crops[0].msg.height, crops[0].msg.width, crops[0].msg.encoding) == (
            98, 80, 'mono8')
        assert face.faces.counts.rejected == 0
    finally:
        executor.shutdown()
        face.destroy_node()


def test_compressed_frames_are_checked_on_arrival_and_decoded_only_when_selected(setup):
    """Garbage is refused before it reaches the selector; a selected frame that starts like a
    JPEG but does not decode costs its segment's crop (counted as rejected), and the next
    segment's good frame is cropped again."""
    face = FaceCropNode(context=setup['context'], cli_args=[
        '--ros-args', '-r', '__ns:=/cmp_bad', '-p', f'model_path:={setup["checkpoint"]}',
        '-p', 'compressed_input:=true', '-p', 'reference:=start'])
    try:
        buf = io.BytesIO()
        PILImage.fromarray(setup['clip'].frames[0]).save(buf, format='JPEG', quality=95)
        jpeg = buf.getvalue()

        def msg(t: float, data: bytes) -> CompressedImage:
            return CompressedImage(header=Header(stamp=float_to_time(t)), format='jpeg',
                                   data=data)

        face.compressed_callback(msg(600.0, b'not an image'))
        face.compressed_callback(msg(600.1, b''))
        counts = face.faces.counts
        assert counts.rejected == 2 and counts.segments == 0
        assert 'empty compressed image' in face.reporter.problem
        face.compressed_callback(msg(600.5, jpeg[:300]))   # JPEG header, no image data
        assert (counts.frames, counts.segments, counts.rejected, counts.published) == (
            3, 1, 3, 0)
        assert 'selected frame dropped' in face.reporter.problem
        face.compressed_callback(msg(601.0, jpeg))
        assert counts.published == 1 and counts.rejected == 3
        assert face.reporter.problem == ''
    finally:
        face.destroy_node()


def test_arrival_check_refuses_exactly_what_the_conversion_refuses():
    """face_crop_node converts only selected frames, so its copy-free arrival check must agree
    with image_to_rgb on every malformed raw image."""
    def image(enc='rgb8', h=4, w=5, channels=3, pad=0, cut=0):
        step = w * channels + pad
        return Image(encoding=enc, height=h, width=w, step=step,
                     data=bytes(max(h * step - cut, 0)))

    cases = [image(), image(pad=3), image('mono8', channels=1), image('bgra8', channels=4),
             image('yuv422', channels=2), image(h=0), image(w=0), image(cut=1),
             image(pad=-1), image('rgba8', channels=3), Image(encoding='rgb8')]
    outcomes = []
    for msg in cases:
        refused = []
        for fn in (check_image, image_to_rgb):
            try:
                fn(msg)
                refused.append(False)
            except ConversionError:
                refused.append(True)
        assert refused[0] == refused[1], (msg.encoding, msg.height, msg.width, msg.step)
        outcomes.append(refused[0])
    assert outcomes == [False] * 4 + [True] * 7


def _offline_windows(checkpoint, settings, frames, audio=None) -> dict[int, np.ndarray]:
    """What the nodes' processors (eval-bag offline) publish for `frames` [(t, frame)] and,
    when given, `audio` (t0, int16 (n,)) in 0.1 s chunks, pushed in publication order."""
    pipe = OfflinePipeline(checkpoint, settings)
    events = [(t, 0, 'image', frame) for t, frame in frames]
    if audio is not None:
        t0, pcm = audio
        for s in range(0, len(pcm), rh.CHUNK):
            piece = pcm[s:s + rh.CHUNK]
            events.append((t0 + (s + len(piece)) / rh.SR, 1, 'audio', (t0 + s / rh.SR, piece)))
    out = []
    for t, _, kind, data in sorted(events, key=lambda e: e[:2]):
        out += (pipe.push_image(t, data) if kind == 'image'
                else pipe.push_audio(data[0], to_mono(data[1]), rh.SR))
    return {w.k_last: w.probs for w in out}


@pytest.mark.slow
def test_single_policy_publishes_windows_from_a_face_only_and_an_audio_only_stream(setup):
    """missing_policy 'single' through the three nodes: a camera alone (no microphone data)
    and a microphone alone (nobody in view) each give the windows eval-bag computes offline,
    and /diagnostics says how many of the last window's segments had a face and audio."""
    ns = '/single'
    topics = Topics(f'{ns}/camera/image_raw', f'{ns}/audio/audio_stamped',
                    f'{ns}/audio/audio_info')
    params = setup['tmp'] / 'single.yaml'
    params.write_text('/**:\n  ros__parameters:\n    diagnostics_period_s: 0.2\n'
                      '/**/fusion:\n  ros__parameters:\n    missing_policy: single\n'
                      f'    missing_wait_s: 0.6\n    min_segments: {MIN_SEGMENTS}\n')
    settings = StreamSettings(missing_policy='single', missing_wait_s=0.6,
                              min_segments=MIN_SEGMENTS)
    running = start_bringup({'model': str(setup['checkpoint']), 'namespace': ns,
                             'params_file': str(params), **topics.launch_args()},
                            context=setup['context'])
    rig = Rig(context=setup['context'], namespace=ns, topics=topics, name='rig_single')
    fusion = f'{ns}/fusion'
    try:
        rig.wait_ready(30)
        # 1. the camera alone: every segment waits missing_wait_s for its audio, then is
        # fused from its face with core.missing's "no audio" input
        clip = setup['clip']
        frames = list(zip(clip.frame_times.tolist(), clip.frames, strict=True))
        face_only = _offline_windows(setup['checkpoint'], settings, frames)
        assert len(face_only) >= 4
        rig.play(e for e in rh.clip_events(clip) if e.kind == 'image')
        snap = rig.wait_for(lambda s: set(face_only) <= set(
            rh.emotion_by_segment(s.emotion, SEGMENT_S)) and s, 60, 'face-only windows')
        _check_equal(rh.emotion_by_segment(snap.emotion, SEGMENT_S), face_only)
        diag = rig.wait_for(lambda s: s.counts(fusion).get('face_only', 0) >= len(face_only)
                            and s, 10, 'face-only counts on /diagnostics')
        status = diag.diagnostics[fusion]
        used = int(status['window_segments'].split('/')[0])
        assert status['window_with_audio'] == f'0/{used}'
        assert status['window_with_face'] == f'{used}/{used}'
        assert diag.counts(fusion)['audio_only'] == 0
        # 2. the microphone alone, 100 s later: the face node says "no face" for every
        # segment, which settles it at once: fused from its audio with the "no face" input
        offset = 100.0
        blank = rh.make_clip(SEGMENT_S, face=False)
        frames = [(t + offset, f) for t, f in zip(blank.frame_times.tolist(), blank.frames,
                                                   strict=True)]
        audio_only = _offline_windows(setup['checkpoint'], settings, frames,
                                      (rh.T0 + offset, blank.audio))
        assert len(audio_only) >= 4
        rig.publish('info', info_msg())
        rig.wait_format(FORMAT)
        rig.prime_audio(rh.T0 + offset - 30)
        rig.play(rh.clip_events(blank, offset_s=offset))
        snap = rig.wait_for(lambda s: set(audio_only) <= set(
            rh.emotion_by_segment(s.emotion, SEGMENT_S)) and s, 60, 'audio-only windows')
        _check_equal(rh.emotion_by_segment(snap.emotion, SEGMENT_S), audio_only)
        diag = rig.wait_for(
            lambda s: s.diagnostics.get(fusion, {}).get('window_with_face', '').startswith('0/')
            and s.counts(fusion).get('windows', 0) >= len(face_only) + len(audio_only) and s,
            10, 'audio-only counts on /diagnostics')
        status = diag.diagnostics[fusion]
        used = int(status['window_segments'].split('/')[0])
        assert status['window_with_audio'] == f'{used}/{used}', status
        assert diag.counts(fusion)['audio_only'] >= len(audio_only)
        for r in snap.emotion:                    # every window a probability vector
            scores = np.array([h.score for h in r.msg.results])
            assert np.isfinite(scores).all() and (scores >= 0).all()
            assert abs(scores.sum() - 1) < 1e-6
    finally:
        rig.close()
        running.stop()
