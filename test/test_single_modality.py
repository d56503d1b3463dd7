"""missing_policy 'single': a segment with one modality is fused with core.missing's input for
the other (the input modality dropout trains on), and every window says how many of its
segments had their own face and their own audio."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lightmer.core.backend import face_batch, model_functions
from lightmer.core.checkpoint import meta_for_preset
from lightmer.core.config import FeatureConfig
from lightmer.core.features import face_to_input
from lightmer.core.missing import missing_audio_input, missing_face_input
from lightmer.core.model import LightmerNet
from lightmer.core.segments import reference_time
from lightmer.stream.fuser import SegmentFuser, fill_missing
from lightmer.stream.settings import StreamSettings

CFG = FeatureConfig()
SINGLE = StreamSettings(min_segments=1, missing_policy='single', missing_wait_s=1.0)


class _Recording:
    """The model's per-segment part as a recorder: (face, mel) of each call; logits that tell
    a real face (uint8 mean / 255) from the missing input (float zeros) and carry the mel."""

    def __init__(self):
        self.calls: list[tuple[np.ndarray, np.ndarray]] = []

    def __call__(self, face, mel):
        self.calls.append((np.array(face), np.array(mel)))
        level = face.mean() / 255.0 if face.dtype == np.uint8 else -1.0
        return np.array([level, float(mel.mean()), 0.0])


def _softmax_mean(logits):
    m = np.asarray(logits).mean(axis=0)
    e = np.exp(m - m.max())
    return e / e.sum()


def _face(k):
    return np.full((98, 80), 100 + k % 100, dtype=np.uint8)


def _mel(k):
    return np.full((128, 43), float(k), dtype=np.float32)


def _ref(k):
    return reference_time(k, 0.5, 'centre')


def _fuser(seg_fn, settings=SINGLE):
    return SegmentFuser(seg_fn, _softmax_mean, 3, 0.5, settings, CFG)


def test_single_needs_the_feature_settings_and_fill_missing_needs_one_modality():
    with pytest.raises(ValueError, match='FeatureConfig'):
        SegmentFuser(_Recording(), _softmax_mean, 3, 0.5, SINGLE)
    with pytest.raises(ValueError, match='at least one'):
        fill_missing(None, None, CFG)
    face, mel = fill_missing(_face(1), None, CFG)
    assert face.dtype == np.uint8 and np.array_equal(mel, missing_audio_input(CFG))
    face, mel = fill_missing(None, _mel(1), CFG)
    assert np.array_equal(face, missing_face_input(CFG)) and mel[0, 0] == 1.0


def test_face_only_stream_publishes_windows_fused_with_the_missing_audio_input():
    seg_fn = _Recording()
    fuser = _fuser(seg_fn)
    out = []
    for k in range(10, 16):                       # the audio never comes (microphone off)
        out += fuser.push_face(k * 0.5 + 0.2, _face(k), 'cam')
    out += fuser.poll(_ref(15) + 1.0)
    # each segment waited missing_wait_s for its audio, then was fused from the face alone
    assert [w.k_last for w in out] == list(range(10, 16))
    assert fuser.counts.face_only == 6 and fuser.counts.dropped == 0
    assert fuser.counts.audio_only == 0 and fuser.counts.used == 6
    silence = missing_audio_input(CFG)
    for face, mel in seg_fn.calls:
        assert face.dtype == np.uint8 and np.array_equal(mel, silence)
    last = out[-1]
    assert last.segments == (13, 14, 15) and (last.with_face, last.with_audio) == (3, 0)
    assert abs(last.probs.sum() - 1) < 1e-9 and np.isfinite(last.probs).all()


def test_audio_only_stream_is_fused_at_once_with_the_missing_face_input():
    seg_fn = _Recording()
    fuser = _fuser(seg_fn, StreamSettings(min_segments=1, missing_policy='single',
                                          missing_wait_s=100.0))
    out = []
    for k in range(20, 24):                       # nobody in view: the face node's word
        out += fuser.push_no_face(k * 0.5 + 0.2)
        out += fuser.push_mel(_ref(k), _mel(k))
    assert [w.k_last for w in out] == [20, 21, 22, 23], 'no wait: the no-face word settles'
    assert fuser.counts.audio_only == 4 and fuser.counts.no_face == 4
    zeros = missing_face_input(CFG)
    for face, _mel_in in seg_fn.calls:
        assert face.dtype == np.float32 and np.array_equal(face, zeros)
    assert [(w.with_face, w.with_audio) for w in out] == [(0, 1), (0, 2), (0, 3), (0, 3)]


def test_windows_count_each_modality_of_their_own_segments():
    """A mixed run: both, face only (audio gap), audio only (no face), both. Borrowed inputs
    ('nearest') are not the segment's own either."""
    want = [(1, 1), (2, 1), (2, 2), (2, 2)]
    for policy in ('single', 'nearest'):
        fuser = _fuser(_Recording(), StreamSettings(min_segments=1, missing_policy=policy,
                                                    missing_wait_s=1.0))
        out = fuser.push_face(30 * 0.5 + 0.2, _face(30)) + fuser.push_mel(_ref(30), _mel(30))
        out += fuser.push_face(31 * 0.5 + 0.2, _face(31))          # 31: its audio is lost
        out += fuser.push_no_face(32 * 0.5 + 0.2)                  # 32: nobody in view
        out += fuser.push_mel(_ref(32), _mel(32))                  # audio passed 31
        out += fuser.push_face(33 * 0.5 + 0.2, _face(33)) + fuser.push_mel(_ref(33), _mel(33))
        assert [w.k_last for w in out] == [30, 31, 32, 33], policy
        assert [(w.with_face, w.with_audio) for w in out] == want, policy
        assert all(len(w.segments) == min(3, i + 1) for i, w in enumerate(out))


def test_skip_still_drops_what_single_would_fuse():
    fuser = _fuser(_Recording(), StreamSettings(min_segments=1, missing_wait_s=1.0))
    out = []
    for k in range(10, 14):
        out += fuser.push_no_face(k * 0.5 + 0.2) + fuser.push_mel(_ref(k), _mel(k))
    assert out == [] and fuser.counts.audio_only == 0 and fuser.counts.used == 0


def test_push_no_audio_settles_a_listeners_segment_from_the_face_alone():
    seg_fn = _Recording()
    fuser = _fuser(seg_fn, StreamSettings(min_segments=1, missing_policy='single',
                                          missing_wait_s=100.0))
    out = fuser.push_face(40 * 0.5 + 0.2, _face(40)) + fuser.push_no_audio(_ref(40))
    out += fuser.push_no_audio(_ref(41)) + fuser.push_face(41 * 0.5 + 0.2, _face(41))
    assert [(w.k_last, w.with_face, w.with_audio) for w in out] == [(40, 1, 0), (41, 2, 0)]
    assert fuser.counts.face_only == 2 and fuser.pending_segments == ()
    assert all(np.array_equal(m, missing_audio_input(CFG)) for _, m in seg_fn.calls)
    skip = _fuser(_Recording(), StreamSettings(min_segments=1, missing_wait_s=100.0))
    assert skip.push_face(20.2, _face(40)) + skip.push_no_audio(_ref(40)) == []
    assert skip.counts.dropped == 1 and skip.pending_segments == ()


def test_single_with_the_real_model_equals_its_forward_on_the_missing_inputs():
    """The model callables take the float missing-face input beside uint8 crops, and a window
    from one modality is the network's forward on exactly core.missing's inputs."""
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = LightmerNet(meta_for_preset('crema-d').model).eval()
    seg_fn, fuse_fn = model_functions(model)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (3, 98, 80), dtype=np.uint8)
    mels = rng.standard_normal((3, 128, 43)).astype(np.float32)
    fuser = SegmentFuser(seg_fn, fuse_fn, 3, 0.5, StreamSettings(
        min_segments=0, missing_policy='single', missing_wait_s=100.0), CFG)
    out = fuser.push_face(0.25, faces[0]) + fuser.push_no_audio(_ref(0))       # face only
    out += fuser.push_no_face(0.75) + fuser.push_mel(_ref(1), mels[1])         # audio only
    out += fuser.push_face(1.25, faces[2]) + fuser.push_mel(_ref(2), mels[2])  # both
    net_faces = face_to_input(faces)                                           # (3, 1, 98, 80)
    net_faces[1] = missing_face_input(CFG)
    net_mels = mels.copy()
    net_mels[0] = missing_audio_input(CFG)
    with torch.inference_mode():
        want = torch.softmax(model(torch.from_numpy(net_faces)[None],
                                   torch.from_numpy(net_mels)[None, :, None]), dim=-1)[0]
    assert len(out) == 1 and (out[0].with_face, out[0].with_audio) == (2, 2)
    np.testing.assert_allclose(out[0].probs, want.numpy(), atol=1e-6)
    with pytest.raises(ValueError, match='float32'):
        face_batch(np.zeros((98, 80), np.float64))
