"""stream.speaker: mouth motion, the speaker rule (silence, one, overlap, unseen, unknown) and
audio_to 'speaker' in PeopleFuser (pure, no ROS)."""
import numpy as np
import pytest
from sensor_msgs.msg import Image

from lightmer.core.config import FeatureConfig
from lightmer.core.messages import ConversionError, image_green, image_to_rgb
from lightmer.stream.fuser import SegmentFuser
from lightmer.stream.people import PeopleFuser, TrackedFace
from lightmer.stream.settings import StreamSettings
from lightmer.stream.speaker import (
    MouthHistory,
    SpeakerSettings,
    audio_recipients,
    estimate_speakers,
    mouth_motion,
    voice_envelope,
)

CFG = FeatureConfig()
BOX = np.array([20.0, 10.0, 100.0, 110.0])          # x1 y1 x2 y2


def _voice(n=43, seed=0):
    """A log-mel whose envelope rises and falls like syllables (4 Hz), and that envelope."""
    t, _ = voice_envelope(np.zeros((CFG.n_mels, n), np.float32), CFG)
    env = np.sin(2 * np.pi * 4 * t) + 0.05 * np.random.default_rng(seed).normal(size=n)
    return np.repeat(env[None, :], CFG.n_mels, axis=0).astype(np.float32), t, env


def _mouth(env_t, env, gain, times=None):
    """Motion samples over the last 0.75 s at 30 Hz following `env` (gain 0: a still mouth;
    negative: moving against the voice)."""
    times = np.arange(-0.75, 0.0, 1 / 30) if times is None else times
    voice = np.interp(times, env_t, env)
    return times, (2.0 + gain * voice).clip(0).astype(np.float32) if gain else \
        np.zeros(len(times), np.float32)


def test_mouth_motion_sees_the_mouth_move_and_nothing_else():
    still = np.full((120, 120), 100, np.uint8)
    frames = [still.copy() for _ in range(6)]
    for i, f in enumerate(frames):
        f[80:100, 45:75] = 60 + 30 * (i % 2)          # the lips open and close
        f[20:40, 30:90] = 200                           # eyes: constant
    t, motion = mouth_motion(frames, np.arange(6) / 30, BOX)
    assert len(motion) == 5 and (motion > 5).all()
    np.testing.assert_allclose(t, (np.arange(5) + 0.5) / 30)
    _, none = mouth_motion([still] * 6, np.arange(6) / 30, BOX)
    assert (none == 0).all()
    _, outside = mouth_motion([still] * 6, np.arange(6) / 30, BOX + 1000)
    assert outside.size == 0


def test_a_brighter_frame_is_not_mouth_motion():
    frames = [np.full((120, 120), 100 + 20 * i, np.uint8) for i in range(4)]
    _, motion = mouth_motion(frames, np.arange(4) / 30, BOX)
    assert (motion == 0).all()


def test_history_keeps_a_span_and_restarts_when_stamps_go_back():
    h = MouthHistory(keep_s=1.0)
    frame = np.zeros((240, 320, 3), np.uint8)
    for i in range(60):
        h.push(i / 30, frame)
    assert len(h) == 31                                  # 1.0 s of 30 Hz frames, both ends
    times, motion = h.motion(BOX, 59 / 30, 0.75)
    assert len(motion) == 22 and (times <= 0).all() and times.min() >= -0.75
    h.push(0.0, frame)
    assert len(h) == 1


def test_one_speaker_gets_the_audio_the_still_listener_does_not():
    mel, t, env = _voice()
    est = estimate_speakers({'a': _mouth(t, env, 1.5), 'b': _mouth(t, env, 0)}, mel, CFG)
    assert est.state == 'one' and est.speaking == ('a',)
    assert est.scores['a'] > 0.5 and est.scores['b'] == 0.0
    assert audio_recipients(est, ['a', 'b']) == {'a'}


def test_both_talking_is_an_overlap_and_both_hear_it():
    mel, t, env = _voice()
    est = estimate_speakers({'a': _mouth(t, env, 1.5), 'b': _mouth(t, env, 1.2)}, mel, CFG)
    assert est.state == 'overlap' and set(est.speaking) == {'a', 'b'}
    assert audio_recipients(est, ['a', 'b']) == {'a', 'b'}


def test_a_mouth_moving_against_the_voice_is_not_its_speaker():
    mel, t, env = _voice()
    est = estimate_speakers({'a': _mouth(t, env, -1.5)}, mel, CFG)
    assert est.state == 'unseen' and est.speaking == ()
    assert audio_recipients(est, ['a']) == frozenset()


def test_silence_goes_to_everyone_and_unknown_too():
    silent = np.zeros((CFG.n_mels, 43), np.float32)          # digital silence, normalised
    _, t, env = _voice()
    est = estimate_speakers({'a': _mouth(t, env, 1.5)}, silent, CFG)
    assert est.state == 'silence' and est.voice == 0.0
    assert audio_recipients(est, ['a', 'b']) == {'a', 'b'}
    mel, _, _ = _voice()
    unknown = estimate_speakers({}, mel, CFG)
    assert unknown.state == 'unknown' and audio_recipients(unknown, ['a']) == {'a'}
    few = estimate_speakers({'a': (np.array([-0.1, 0.0]), np.ones(2, np.float32))}, mel, CFG)
    assert few.state == 'unknown'                             # too few samples to judge


@pytest.mark.parametrize('bad', [np.nan, np.inf])
def test_odd_motion_is_not_credited(bad):
    mel, t, env = _voice()
    times, motion = _mouth(t, env, 1.5)
    motion = motion.copy()
    motion[3] = bad
    est = estimate_speakers({'a': (times, motion), 'b': _mouth(t, env, 0)}, mel, CFG)
    assert 'a' not in est.scores and est.state == 'unseen'


def test_settings_are_checked():
    with pytest.raises(ValueError):
        SpeakerSettings(motion_full=0)


def _recording_fuser(log, face_id):
    def segment_logits(face, mel):
        log.append((face_id, float(np.abs(mel).sum())))
        return np.zeros(6)

    def fuse(logits):
        return np.full(6, 1 / 6)

    return SegmentFuser(segment_logits, fuse, 5, 0.5, StreamSettings())


def test_people_fuser_gives_the_segment_audio_to_the_speaker_only():
    log: list = []
    made = iter(['a', 'b', 'a', 'b'])
    silence = np.zeros((CFG.n_mels, 43), np.float32)
    people = PeopleFuser(lambda: _recording_fuser(log, next(made)), 0.5, 'centre', silence,
                         audio_to='speaker', features=CFG)
    mel, t, env = _voice()
    crop = np.zeros((98, 80), np.uint8)
    box = np.array([0.0, 0.0, 10.0, 10.0])
    turns = [('a', 'b'), ('b', 'a')]                  # a speaks, then b (a turn switch)
    for k, (talker, listener) in enumerate(turns):
        faces = [TrackedFace(talker, crop, box, mouth=_mouth(t, env, 1.5)),
                 TrackedFace(listener, crop, box, mouth=_mouth(t, env, 0))]
        people.push_faces(k * 0.5 + 0.25, faces)
        people.push_mel(k * 0.5 + 0.25, mel)
    heard = {}
    for face_id, energy in log:
        heard.setdefault(face_id, []).append(energy > 0)
    assert heard == {'a': [True, False], 'b': [False, True]}
    estimates = people.take_estimates()
    assert [(k, e.speaking, ids) for k, _, e, ids in estimates] == [
        (0, ('a',), ('a', 'b')), (1, ('b',), ('b', 'a'))]
    assert people.take_estimates() == []


def test_speaker_policy_needs_the_feature_settings():
    with pytest.raises(ValueError, match='feature settings'):
        PeopleFuser(lambda: None, 0.5, 'centre', np.zeros((128, 43), np.float32),
                    audio_to='speaker')


@pytest.mark.parametrize('encoding', ['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8'])
def test_image_green_reads_the_green_plane_without_decoding(encoding):
    rng = np.random.default_rng(1)
    channels = {'mono8': 1, 'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4}[encoding]
    pixels = rng.integers(0, 256, (7, 9, channels), np.uint8)
    rows = np.pad(pixels.reshape(7, -1), ((0, 0), (0, 5)))          # padded rows
    msg = Image(height=7, width=9, encoding=encoding, step=rows.shape[1], data=rows.tobytes())
    np.testing.assert_array_equal(image_green(msg, 2), image_to_rgb(msg)[::2, ::2, 1])
    with pytest.raises(ConversionError):
        image_green(Image(height=7, width=9, encoding=encoding, step=1, data=b'x'), 2)
