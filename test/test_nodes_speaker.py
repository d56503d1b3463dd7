"""Who is speaking, through the real nodes (rclpy, real DDS on loopback): with
audio_to speaker the speaking face fuses the segment's audio and the listener does not, a turn
switches the attribution at the first segment of the new speaker, both talking share it,
silence goes to everyone; the REP-155 voice topics and the face-voice match are published with
hri_msgs types; Expression carries valence and arousal from the circumplex table; odd mouth
motion on FaceCrops never ends the node (the fusion node in process, fed its inputs). Then the
three nodes' chain with real MTCNN: two drawn faces whose mouths open in turn with a voice.

The two faces show the same crop, so whatever differs between their windows is the audio:
with constant inputs every segment of one role has the same logits, and a window lying inside
one role is the softmax of those logits."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import rclpy
import torch
from hri_msgs.msg import Expression, IdsList, IdsMatch
from lightmer_msgs.msg import FaceCrop, FaceCrops
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import Bool, Header
from vision_msgs.msg import Classification

import ros_helpers as rh
from lightmer.core.backend import load_model
from lightmer.core.config import FeatureConfig
from lightmer.core.features import FaceCropper, log_mel
from lightmer.core.messages import time_to_float, valence_arousal
from lightmer.harness.rig import Rig, info_msg, sensor_events
from lightmer.ros.bringup import start_bringup
from lightmer.ros.conversions import array_to_image, face_crops_msg, float_to_time
from lightmer.ros.fusion_node import FusionNode
from lightmer.ros.qos import output_qos
from lightmer.stream.people import TrackedFace
from lightmer.stream.speaker import voice_envelope
from polling import wait_until

# Slow tier (a fusion node with a model, ~30 s of segments on two loaded cores).
pytestmark = pytest.mark.slow

HUMANS = '/spk/humans'
T = 0.5
CROP = np.random.default_rng(3).integers(0, 256, (98, 80), np.uint8)
BOX = np.array([10.0, 10.0, 110.0, 130.0])


def _voice():
    """A 'speech' log-mel (4 Hz syllables, every band alike) and a still or synced mouth."""
    times, _ = voice_envelope(np.zeros((128, 43), np.float32), _FEATURES)
    env = np.sin(2 * np.pi * 4 * times)
    mel = np.repeat(env[None, :], 128, axis=0).astype(np.float32)
    mt = np.arange(-0.75, 0.0, 1 / 30)
    moving = (2.0 + 1.5 * np.interp(mt, times, env)).astype(np.float32)
    return mel, (mt, moving), (mt, np.zeros_like(moving))


_FEATURES = FeatureConfig()
SPEECH, TALKING, STILL = _voice()
SILENCE = np.zeros((128, 43), np.float32)
# per segment: (mel, mouth of a, mouth of b); a speaks, then b (a turn), both, then silence
SCRIPT = ([(SPEECH, TALKING, STILL)] * 6 + [(SPEECH, STILL, TALKING)] * 6
          + [(SPEECH, TALKING, TALKING)] * 6 + [(SILENCE, STILL, STILL)] * 6)


def _segment_msgs(k: int, mel, mouth_a, mouth_b):
    t = (k + 0.5) * T
    header = Header(stamp=float_to_time(t), frame_id='cam')
    faces = [TrackedFace('a', CROP, BOX, 0.99, mouth_a), TrackedFace('b', CROP, BOX, 0.99,
                                                                      mouth_b)]
    mel_msg = array_to_image(mel, Header(stamp=float_to_time(t)))
    return face_crops_msg(header, faces, 2), mel_msg


def _softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def test_the_speaker_gets_the_audio_and_the_voice_topics_say_so(tmp_path):
    torch.set_num_threads(1)
    checkpoint = rh.make_checkpoint(tmp_path / 'model.pt', seed=4)
    model = load_model(checkpoint)
    labels = tuple(model.meta.labels)
    expect = {name: _softmax(model.segment_logits(CROP, mel))
              for name, mel in (('speech', SPEECH), ('silence', SILENCE))}
    # the listener's face-only input: the log-mel of silence (PeopleFuser.silence_mel)
    quiet = log_mel(np.zeros(model.meta.features.window_samples, np.float32),
                    model.meta.features)
    expect['face_only'] = _softmax(model.segment_logits(CROP, quiet))
    assert not np.allclose(expect['speech'], expect['face_only'], atol=1e-4)

    context = rclpy.Context()
    rclpy.init(context=context)
    node = FusionNode(context=context, cli_args=[
        '--ros-args', '-r', '__ns:=/spk', '-p', f'model_path:={checkpoint}',
        '-p', 'max_faces:=2', '-p', 'min_segments:=2', '-p', f'humans_prefix:={HUMANS}/faces',
        '-p', 'forget_after_s:=100.0'])
    listener = rclpy.create_node('speaker_listener', context=context)
    got: dict[str, list] = {}
    lock = threading.Lock()

    def keep(name):
        def callback(msg):
            with lock:
                got.setdefault(name, []).append(msg)
        return callback

    topics = [(IdsList, f'{HUMANS}/voices/tracked', 'tracked'),
              (IdsMatch, f'{HUMANS}/candidate_matches', 'matches'),
              (Bool, f'{HUMANS}/voices/voice_a/is_speaking', 'speaking_a'),
              (Bool, f'{HUMANS}/voices/voice_b/is_speaking', 'speaking_b')]
    for face in 'ab':
        topics += [(Classification, f'{HUMANS}/faces/{face}/emotion', f'emotion_{face}'),
                   (Expression, f'{HUMANS}/faces/{face}/expression', f'expression_{face}')]
    for msg_type, topic, name in topics:
        listener.create_subscription(msg_type, topic, keep(name), output_qos(100))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(listener)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()

    def count(name):
        with lock:
            return len(got.get(name, []))

    try:
        # the voice and per-face publishers exist once the faces were seen and credited;
        # a first pass creates them, the script is then played once everyone is matched
        for k, (mel, a, b) in enumerate(SCRIPT[:7]):
            faces, mel_msg = _segment_msgs(k, mel, a, b)
            node.faces_callback(faces)
            node.mel_callback(mel_msg)
        wait_until(lambda: all(listener.count_publishers(t) for _, t, _ in topics), 30,
                   'every voice and per-face publisher matched')
        with lock:
            got.clear()
        base = 100
        for k, (mel, a, b) in enumerate(SCRIPT):
            faces, mel_msg = _segment_msgs(base + k, mel, a, b)
            node.faces_callback(faces)
            node.mel_callback(mel_msg)
        n = len(SCRIPT)
        wait_until(lambda: min(count('speaking_a'), count('speaking_b')) >= n and _ended(got, lock)
                   and count('emotion_a') >= n - 1 and count('emotion_b') >= n - 1, 30,
                   'every segment on the voice and emotion topics',
                   describe=lambda: {k: len(v) for k, v in got.items()})
        with lock:
            snapshot = {k: list(v) for k, v in got.items()}
        _hostile(node)
        assert thread.is_alive()
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)
        node.destroy_node()
        listener.destroy_node()
        rclpy.shutdown(context=context)
    _check_windows(snapshot, base, expect)
    _check_voices(snapshot, base)
    _check_expressions(snapshot, labels)


def _ended(got, lock) -> bool:
    """The script's last Bools are in: both talked in the 7th-last segment, nobody after
    (a late Bool of the first pass may still precede them)."""
    with lock:
        return all([m.data for m in got.get(f'speaking_{f}', [])][-7:] == [True] + [False] * 6
                   for f in 'ab')


def _by_segment(msgs, base):
    return {round((m.header.stamp.sec + m.header.stamp.nanosec * 1e-9) / T - 0.5) - base: m
            for m in msgs}


def _check_windows(got, base, expect):
    """Windows wholly inside one role (N = 5 segments back) equal that role's softmax."""
    a, b = (_by_segment(got[f'emotion_{f}'], base) for f in 'ab')

    def probs(msg):
        return np.array([h.score for h in msg.results])

    inside = {5: ('speech', 'face_only'), 11: ('face_only', 'speech'),
              17: ('speech', 'speech'), 23: ('silence', 'silence')}
    for k, (role_a, role_b) in inside.items():
        np.testing.assert_allclose(probs(a[k]), expect[role_a], atol=1e-5, err_msg=f'a {k}')
        np.testing.assert_allclose(probs(b[k]), expect[role_b], atol=1e-5, err_msg=f'b {k}')


def _check_voices(got, base):
    """is_speaking per segment follows the script: the turn switches at segment 6, both at
    12, nobody at 18 (silence); matches name the voice, the face and a confidence."""
    # std_msgs/Bool has no stamp: one per segment, in order (reliable, one publisher); a late
    # one of the first pass can precede them
    a, b = got['speaking_a'][-len(SCRIPT):], got['speaking_b'][-len(SCRIPT):]
    assert len(a) == len(b) == len(SCRIPT)
    want = {k: (s[1] is TALKING and s[0] is SPEECH, s[2] is TALKING and s[0] is SPEECH)
            for k, s in enumerate(SCRIPT)}
    for k, (speaks_a, speaks_b) in want.items():
        assert (a[k].data, b[k].data) == (speaks_a, speaks_b), k
    # IdsMatch has no stamp (upstream definition): one topic keeps its order, so the last
    # matches are the script's credits, segment after segment (a late one of the first pass
    # can precede them)
    turns = [{f for f, speaks in zip('ab', want[k], strict=True) if speaks}
             for k in range(len(SCRIPT))]
    turns = [c for c in turns if c]
    matches = got['matches'][-sum(len(c) for c in turns):]
    assert len(matches) == sum(len(c) for c in turns) and turns
    for faces in turns:
        group, matches = matches[:len(faces)], matches[len(faces):]
        assert {(m.id1, m.id1_type, m.id2, m.id2_type) for m in group} == {
            (f'voice_{f}', IdsMatch.VOICE, f, IdsMatch.FACE) for f in faces}, faces
        assert all(0 < m.confidence <= 1 for m in group)
    tracked = _by_segment(got['tracked'], base)
    assert set(tracked[20].ids) == {'voice_a', 'voice_b'}       # both have spoken, in view


def _check_expressions(got, labels):
    emotions = {m.header.stamp.sec * 10**9 + m.header.stamp.nanosec: m
                for m in got['emotion_a']}
    checked = 0
    for e in got['expression_a']:
        c = emotions.get(e.header.stamp.sec * 10**9 + e.header.stamp.nanosec)
        if c is None:
            continue
        v, a = valence_arousal(np.array([h.score for h in c.results]), labels)
        assert abs(e.valence - v) < 1e-6 and abs(e.arousal - a) < 1e-6
        checked += 1
    assert checked >= 10


def _hostile(node):
    """Mouth motion a face node would never send: lengths that differ, NaN, too many
    samples, times of NaN; the faces stay, their motion is dropped, the node lives."""
    header = Header(stamp=float_to_time(500.25), frame_id='cam')
    crop = array_to_image(CROP, header)
    odd = [FaceCrop(id='a', crop=crop, mouth_motion=[1.0, 2.0], mouth_times=[0.0]),
           FaceCrop(id='b', crop=crop, mouth_motion=[float('nan')] * 3,
                    mouth_times=[-0.1, -0.05, 0.0])]
    rejected = node.fuser.counts.rejected
    node.faces_callback(FaceCrops(header=header, faces=odd, detected=2))
    many = [FaceCrop(id='a', crop=crop, mouth_motion=[1.0] * 5000,
                     mouth_times=[0.0] * 5000),
            FaceCrop(id='b', crop=crop, mouth_motion=[1.0] * 3,
                     mouth_times=[float('inf'), 0.0, 0.0])]
    node.faces_callback(FaceCrops(header=Header(stamp=float_to_time(500.75)), faces=many,
                                  detected=2))
    node.mel_callback(array_to_image(SPEECH, Header(stamp=float_to_time(500.75))))
    assert node.fuser.counts.rejected == rejected + 4


# --- the three node processes' chain, real MTCNN: mouths drawn in time with a voice ----------
E2E = '/e2e/humans'
FPS, SR, CHUNK = 15.0, 16000, 1600
TURN_S = 4.0


def _syllables(t):
    """Speech-like envelope in [0, 1]: 3.3 bursts a second with pauses between."""
    return np.maximum(0.0, np.sin(2 * np.pi * 3.3 * np.asarray(t))) ** 2


def _talking_frames(t0, boxes):
    """(stamp, frame): two faces side by side; the left mouth opens with the voice for
    TURN_S, then the right one (the other still), as mouths darken when they open."""
    face = rh._face_image(220)
    still = np.full((480, 640, 3), 90, np.uint8)
    still[60:280, 20:240] = face
    still[60:280, 400:620] = face
    out = []
    for i in range(int(2 * TURN_S * FPS)):
        t = t0 + i / FPS
        frame = still.copy()
        x1, y1, x2, y2 = boxes[0 if t - t0 < TURN_S else 1]
        r0, r1 = int(y1 + 0.68 * (y2 - y1)), int(y1 + 0.88 * (y2 - y1))
        c0, c1 = int(x1 + 0.32 * (x2 - x1)), int(x1 + 0.68 * (x2 - x1))
        frame[r0:r1, c0:c1] = (frame[r0:r1, c0:c1] * (1 - 0.8 * _syllables(t - t0))
                               ).astype(np.uint8)
        out.append((t, frame))
    return out, still


def _talking_audio(seconds):
    t = np.arange(int(seconds * SR)) / SR
    tone = 2 * ((130 * t) % 1.0) - 1            # a buzz rich in harmonics, as voiced speech
    noise = 0.002 * np.random.default_rng(0).normal(size=t.size)
    return (9000 * (0.5 * tone * _syllables(t) + noise)).astype(np.int16)


def test_through_the_nodes_the_talking_mouth_gets_the_voice_and_turns_switch(tmp_path):


    torch.set_num_threads(1)
    checkpoint = rh.make_checkpoint(tmp_path / 'model.pt', seed=6)
    cropper = FaceCropper(FeatureConfig())
    _, still = _talking_frames(0.0, [BOX, BOX])
    [(boxes, probs)] = cropper.detect_all([still])
    boxes = sorted(boxes[probs >= 0.9], key=lambda b: b[0])
    assert len(boxes) == 2, 'MTCNN should find both drawn faces'
    t0 = rh.T0 + 3.0
    frames, _ = _talking_frames(t0, boxes)
    events = sensor_events(frames, t0, _talking_audio(2 * TURN_S + 0.2), SR, CHUNK,
                           rh.FRAME_ID)
    params = tmp_path / 'params.yaml'
    params.write_text('/**:\n  ros__parameters:\n    diagnostics_period_s: 0.2\n'
                      '/**/face_crop:\n  ros__parameters:\n    qos_reliability: reliable\n'
                      f'    humans_prefix: {E2E}/faces\n'
                      '/**/fusion:\n  ros__parameters:\n    min_segments: 2\n'
                      f'    humans_prefix: {E2E}/faces\n')
    context = rclpy.Context()
    rclpy.init(context=context)
    running = start_bringup({'model': str(checkpoint), 'max_faces': '2',
                             'params_file': str(params)}, context=context)
    rig = Rig(context=context, name='rig_speaker', people=f'{E2E}/faces')
    matches: list = []
    lock = threading.Lock()

    def keep(msg):
        with lock:
            matches.append(msg)

    rig.node.create_subscription(IdsMatch, f'{E2E}/candidate_matches', keep, output_qos(200))
    voices: list = []

    def keep_voices(msg):
        with lock:
            voices.append(msg)

    rig.node.create_subscription(IdsList, f'{E2E}/voices/tracked', keep_voices, output_qos(200))
    try:
        rig.wait_ready(90)
        rig.publish('info', info_msg())
        rig.wait_format('1ch 16000 Hz int16')
        rig.prime_audio(t0 - 60.0)          # its silence must end well before t0
        rig.play(events, rate=0.5)            # half speed: MTCNN on two loaded cores keeps up
        last_ref = t0 + 2 * TURN_S - 1.25        # the stream's last segments may not close
        # every estimate (even silence) publishes the tracked voices: wait for the last one
        wait_until(lambda: any(time_to_float(v.header.stamp) >= last_ref - 0.5
                               for v in list(voices)), 60, 'the last segments\' estimates',
                   describe=lambda: [round(time_to_float(v.header.stamp), 2)
                                     for v in list(voices)])
        snap = rig.snapshot()
        assert all(t.is_alive() for t in running.threads)
    finally:
        rig.close()
        running.stop()
        rclpy.shutdown(context=context)
    side = {}
    for r in snap.face_crops:
        for f in r.msg.faces:
            side[f.id] = 'left' if f.roi.x_offset + f.roi.width / 2 < 320 else 'right'
            assert len(f.mouth_motion) == len(f.mouth_times) and max(f.mouth_times,
                                                                   default=0) <= 0
    sides = []
    for m in matches:
        assert (m.id1_type, m.id2_type) == (IdsMatch.VOICE, IdsMatch.FACE)
        assert m.id1 == f'voice_{m.id2}' and 0 < m.confidence <= 1
        sides.append(side[m.id2])
    mouths = [(round(time_to_float(r.msg.header.stamp), 2),
               [(f.id, len(f.mouth_motion), round(float(np.mean(f.mouth_motion)), 1)
                 if len(f.mouth_motion) else 0) for f in r.msg.faces]) for r in snap.face_crops]
    # IdsMatch has no stamp (upstream definition), but one topic keeps its order: the left
    # turn's credits come first, then the right's. Only the segment across the turn (its
    # span holds both voices) may credit either side there, so at most two credits of the
    # right precede the left's last; at least three per turn (the offline chain credits
    # every segment inside a turn).
    assert sides.count('left') >= 3 and sides.count('right') >= 3, (sides, mouths)
    last_left = len(sides) - 1 - sides[::-1].index('left')
    assert sides[:last_left].count('right') <= 2, sides
