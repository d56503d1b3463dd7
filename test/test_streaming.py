"""The message-free stream processors: frame choice, audio windows, per-segment fusion."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lightmer.config import FeatureConfig
from lightmer.features import log_mel_at, resample
from lightmer.segments import reference_time, segment_index
from lightmer.streaming import (
    AudioSegmenter,
    FrameSelector,
    SegmentFuser,
    model_functions,
    segment_of_reference,
)

CFG = FeatureConfig()


# --- the grid --------------------------------------------------------------------------------
@pytest.mark.parametrize('anchor', ['centre', 'start'])
def test_segment_of_reference_inverts_reference_time_through_nanosecond_stamps(anchor):
    for k in (0, 7, 3_400_000_001):
        ref = reference_time(k, 0.6, anchor)
        ns = int(round(ref * 1e9))
        assert segment_of_reference(ns / 1e9, 0.6, anchor) == k
        assert segment_of_reference((ns - 1) / 1e9, 0.6, anchor) == k


# --- FrameSelector ---------------------------------------------------------------------------
@pytest.mark.parametrize('anchor', ['centre', 'start'])
def test_frame_selector_emits_each_segment_once_with_its_nearest_frame(anchor):
    seg = 0.5
    times = 100.013 + np.arange(120) / 30.0                       # 4 s at 30 fps
    sel = FrameSelector(seg, anchor)
    emitted = []
    for i, t in enumerate(times):
        for k, t_frame, payload in sel.push(float(t), i):
            # emitted no later than the first frame at/after the reference time
            assert t <= max(reference_time(k, seg, anchor), t_frame) + 1 / 30 + 1e-9
            emitted.append((k, t_frame, payload))
    ks = [k for k, _, _ in emitted]
    assert ks == sorted(set(ks)), 'each segment once, in order'
    for k, t_frame, payload in emitted:
        ref = reference_time(k, seg, anchor)
        inside = [i for i, t in enumerate(times) if segment_index(float(t), seg) == k]
        best = min(inside, key=lambda i: abs(times[i] - ref))
        assert payload == best and t_frame == times[best]
    # every segment whose reference time the frames reached is emitted
    last_t = float(times[-1])
    expected = [k for k in range(segment_index(float(times[0]), seg),
                                 segment_index(last_t, seg) + 1)
                if reference_time(k, seg, anchor) <= last_t
                and reference_time(k, seg, anchor) >= times[0] - seg]
    assert set(expected) <= set(ks)


def test_frame_selector_start_anchor_emits_on_the_first_frame_of_a_segment():
    sel = FrameSelector(0.5, 'start')
    assert [(k, p) for k, _, p in sel.push(10.49, 'a')] == [(20, 'a')]   # past 10.0 already
    assert [(k, p) for k, _, p in sel.push(10.51, 'b')] == [(21, 'b')]   # first of 21
    assert sel.push(10.6, 'c') == []                                      # 21 is done


def test_frame_selector_resets_when_stamps_go_backwards():
    sel = FrameSelector(0.5, 'centre')
    for t in (10.0, 10.1, 10.2, 10.3):
        sel.push(t, t)
    out = sel.push(5.3, 'loop')                   # the bag looped
    assert sel.resets == 1
    assert [(k, p) for k, _, p in out] == [(10, 'loop')]


# --- AudioSegmenter --------------------------------------------------------------------------
def _voice(n: int, sr: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / sr
    x = np.sin(2 * np.pi * 180 * t) * (0.5 + 0.5 * np.sin(2.3 * t)) + 0.05 * rng.standard_normal(n)
    return (0.3 * x).astype(np.float32)


def _feed(seg: AudioSegmenter, audio: np.ndarray, sr: int, t0: float, chunk: int,
          skip: range = range(0)):
    out = []
    for c, s in enumerate(range(0, len(audio), chunk)):
        if c in skip:
            continue
        out += seg.push(t0 + s / sr, audio[s:s + chunk], sr)
    return out


@pytest.mark.parametrize('anchor', ['centre', 'start'])
def test_audio_segmenter_matches_the_offline_log_mel(anchor):
    sr, t0 = 16000, 200.37
    audio = _voice(5 * sr, sr)
    seg = AudioSegmenter(CFG, 0.5, anchor)
    out = _feed(seg, audio, sr, t0, chunk=1024)
    ks = [k for k, _, _ in out]
    half = CFG.window_s / 2
    covered = [k for k in range(segment_index(t0, 0.5), segment_index(t0 + 5, 0.5) + 1)
               if reference_time(k, 0.5, anchor) - half >= t0
               and reference_time(k, 0.5, anchor) + half <= t0 + len(audio) / sr]
    assert ks == covered
    for k, t_ref, mel in out:
        assert t_ref == reference_time(k, 0.5, anchor)
        assert mel.shape == (128, 43) and mel.dtype == np.float32
        np.testing.assert_allclose(mel, log_mel_at(audio, t_ref - t0, CFG), atol=1e-4)
    assert seg.counts.gaps == 0 and seg.counts.published == len(out)


def test_audio_segmenter_resamples_other_rates_close_to_offline():
    sr, t0 = 48000, 50.05
    audio = _voice(4 * sr, sr, seed=1)
    seg = AudioSegmenter(CFG, 0.5)
    out = _feed(seg, audio, sr, t0, chunk=4800)
    assert len(out) >= 4
    offline = resample(audio, sr, 16000)
    for _, t_ref, mel in out:
        ref = log_mel_at(offline, t_ref - t0, CFG)
        assert np.abs(mel - ref).mean() < 0.02, 'window-wise resampling ~ whole-clip'


def test_audio_segmenter_counts_gaps_and_recovers():
    sr, t0 = 16000, 10.0
    audio = _voice(8 * sr, sr)
    seg = AudioSegmenter(CFG, 0.5)
    out = _feed(seg, audio, sr, t0, chunk=1600, skip=range(30, 35))   # 3.0 s .. 3.5 s missing
    ks = [k for k, _, _ in out]
    lost = [k for k in range(ks[0], ks[-1] + 1) if k not in ks]
    half = CFG.window_s / 2
    for k in lost:   # exactly the windows touching the missing half second
        ref = reference_time(k, 0.5, 'centre')
        assert ref - half < t0 + 3.5 and ref + half > t0 + 3.0
    assert seg.counts.gaps == len(lost) > 0
    for _, t_ref, mel in out:
        np.testing.assert_allclose(mel, log_mel_at(audio, t_ref - t0, CFG), atol=1e-4)


def test_audio_segmenter_rejects_nan_and_resets_on_backwards_stamps():
    sr = 16000
    seg = AudioSegmenter(CFG, 0.5)
    audio = _voice(3 * sr, sr)
    _feed(seg, audio, sr, 10.0, chunk=1600)
    bad = audio[:1600].copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        seg.push(13.0, bad, sr)
    seg.discontinuity()
    out = _feed(seg, audio, sr, 5.0, chunk=1600)    # earlier stamps: a looping bag
    assert seg.counts.resets == 1
    assert out and out[0][0] == segment_index(5.0 + 0.75, 0.5)


# --- SegmentFuser ----------------------------------------------------------------------------
class _Counting:
    """A stand-in for the model's per-segment part that records its calls (the real model is
    checked against the fuser in test_fuser_with_the_real_model_equals_its_forward)."""

    def __init__(self):
        self.calls = []

    def __call__(self, face, mel):
        self.calls.append((int(face[0, 0]), float(mel[0, 0])))
        return np.array([face.mean() / 255.0, mel.mean(), 0.0])


def _softmax_mean(logits):
    m = np.asarray(logits).mean(axis=0)
    e = np.exp(m - m.max())
    return e / e.sum()


def _face(k):
    return np.full((98, 80), k % 256, dtype=np.uint8)


def _mel(k):
    return np.full((128, 43), float(k), dtype=np.float32)


def test_fuser_runs_each_segment_once_and_fuses_the_last_n():
    seg_fn = _Counting()
    fuser = SegmentFuser(seg_fn, _softmax_mean, n_segments=3, segment_s=0.5, min_segments=2)
    outputs = []
    for k in range(20, 28):
        outputs += fuser.push_face(k * 0.5 + 0.2, _face(k), 'cam')
        outputs += fuser.push_mel(reference_time(k, 0.5, 'centre'), _mel(k))
    assert len(seg_fn.calls) == 8 and fuser.counts.model_calls == 8
    assert [w.k_last for w in outputs] == list(range(21, 28))
    for w in outputs:
        ids = [j for j in range(w.k_last - 2, w.k_last + 1) if j >= 20]
        assert w.segments == tuple(ids)
        want = _softmax_mean([[_face(j).mean() / 255, float(j), 0.0] for j in ids])
        np.testing.assert_allclose(w.probs, want)
        assert w.t_ref == reference_time(w.k_last, 0.5, 'centre') and w.frame_id == 'cam'


def test_fuser_skip_policy_drops_a_segment_once_the_other_stream_passed_it():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5, min_segments=1, wait_s=1.0)
    assert fuser.push_mel(reference_time(10, 0.5, 'centre'), _mel(10)) == []   # no face yet
    assert fuser.counts.dropped == 0
    out = fuser.push_face(5.6, _face(11), 'cam')   # faces passed 10: its face will not come
    assert fuser.counts.dropped == 1 and out == []
    out = fuser.push_mel(reference_time(11, 0.5, 'centre'), _mel(11))
    assert [w.segments for w in out] == [(11,)]
    fuser.push_face(5.3, _face(10), 'cam')          # not backwards by stream: late, ignored
    assert fuser.counts.late == 1 and fuser.counts.resets == 0


def test_fuser_gives_up_after_the_wait_when_the_other_stream_stalls():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5, min_segments=1, wait_s=1.0)
    fuser.push_face(20 * 0.5 + 0.2, _face(20), 'cam')   # audio never comes
    fuser.push_face(21 * 0.5 + 0.2, _face(21), 'cam')
    assert fuser.counts.dropped == 0
    fuser.poll(reference_time(20, 0.5, 'centre') + 0.99)
    assert fuser.counts.dropped == 0
    fuser.poll(reference_time(20, 0.5, 'centre') + 1.0)
    assert fuser.counts.dropped == 1                   # 21 is younger: still waiting
    assert 21 not in fuser.cached_segments


def test_fuser_nearest_policy_borrows_the_neighbours_face():
    seg_fn = _Counting()
    fuser = SegmentFuser(seg_fn, _softmax_mean, 3, 0.5, min_segments=1, policy='nearest',
                         wait_s=1.0)
    fuser.push_face(5.1, _face(10), 'cam')
    fuser.push_mel(reference_time(10, 0.5, 'centre'), _mel(10))
    fuser.push_mel(reference_time(11, 0.5, 'centre'), _mel(11))         # segment 11: no face
    fuser.push_face(6.1, _face(12), 'cam')
    out = fuser.push_mel(reference_time(12, 0.5, 'centre'), _mel(12))
    out += fuser.poll(8.0)
    assert fuser.counts.filled == 1 and fuser.counts.dropped == 0
    assert (10, 11.0) in seg_fn.calls, 'segment 11 used the face of segment 10 (nearest, earlier)'
    assert 11 in fuser.cached_segments


def test_fuser_resets_when_segments_go_backwards_and_ignores_duplicates():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5, min_segments=1)
    for k in (40, 41):
        fuser.push_face(k * 0.5 + 0.1, _face(k))
        fuser.push_mel(reference_time(k, 0.5, 'centre'), _mel(k))
    fuser.push_face(41 * 0.5 + 0.2, _face(41))
    assert fuser.counts.duplicates == 1
    fuser.push_face(3.1, _face(6))
    assert fuser.counts.resets == 1 and fuser.cached_segments == ()
    out = fuser.push_mel(reference_time(6, 0.5, 'centre'), _mel(6))
    assert [w.k_last for w in out] == [6]


def test_fuser_keeps_the_window_when_faces_run_ahead_of_the_audio():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5, min_segments=1, wait_s=3.0)
    outs = []
    for k in range(10):
        outs += fuser.push_face(k * 0.5 + 0.1, _face(k))
        if k >= 4:                                    # the log-mels trail by 4 segments
            outs += fuser.push_mel(reference_time(k - 4, 0.5, 'centre'), _mel(k - 4))
    assert [w.segments for w in outs][-3:] == [(1, 2, 3), (2, 3, 4), (3, 4, 5)]


def test_fuser_min_segments_holds_windows_back():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 4, 0.5, min_segments=4)
    outs = []
    for k in range(4):
        outs += fuser.push_face(k * 0.5 + 0.1, _face(k))
        outs += fuser.push_mel(reference_time(k, 0.5, 'centre'), _mel(k))
    assert [w.k_last for w in outs] == [3]


def test_fuser_with_the_real_model_equals_its_forward():
    from lightmer.checkpoint import meta_for_preset
    from lightmer.model import LightmerNet

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = LightmerNet(meta_for_preset('crema-d').model).eval()
    seg_fn, fuse_fn = model_functions(model)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (5, 98, 80), dtype=np.uint8)
    mels = rng.standard_normal((5, 128, 43)).astype(np.float32)
    fuser = SegmentFuser(seg_fn, fuse_fn, 5, 0.5)
    out = []
    for k in range(5):
        out += fuser.push_face(k * 0.5 + 0.25, faces[k])
        out += fuser.push_mel(reference_time(k, 0.5, 'centre'), mels[k])
    from lightmer.features import face_to_input

    with torch.inference_mode():
        want = torch.softmax(model(torch.from_numpy(face_to_input(faces))[None],
                                   torch.from_numpy(mels)[None, :, None]), dim=-1)[0]
    assert len(out) == 1
    np.testing.assert_allclose(out[0].probs, want.numpy(), atol=1e-6)
    assert abs(out[0].probs.sum() - 1) < 1e-9


def test_audio_segmenter_applies_the_checkpoints_mel_normalisation():
    """The node computes the same level-preserving features as training when the checkpoint
    says mel_norm 'dataset' (one log_mel for both)."""
    import dataclasses

    cfg = dataclasses.replace(CFG, mel_norm='dataset', mel_db_mean=-45.0, mel_db_std=15.0)
    sr, t0 = 16000, 50.0
    audio = _voice(3 * sr, sr)
    out = _feed(AudioSegmenter(cfg, 0.5, 'centre'), audio, sr, t0, chunk=1024)
    assert out
    for _, t_ref, mel in out:
        np.testing.assert_allclose(mel, log_mel_at(audio, t_ref - t0, cfg), atol=1e-4)
        assert not np.allclose(mel, log_mel_at(audio, t_ref - t0, CFG), atol=0.1)
