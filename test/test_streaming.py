"""The message-free stream processors: frame choice, audio windows, per-segment fusion."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from lightmer.core.backend import model_functions
from lightmer.core.checkpoint import meta_for_preset
from lightmer.core.config import FeatureConfig
from lightmer.core.features import face_to_input, log_mel_at, resample
from lightmer.core.model import LightmerNet
from lightmer.core.segments import reference_time, segment_index, segment_of_reference
from lightmer.stream.audio import AudioSegmenter
from lightmer.stream.faces import FaceSegmenter, FrameSelector
from lightmer.stream.fuser import SegmentFuser, stall_status
from lightmer.stream.settings import StreamSettings

CFG = FeatureConfig()
DEFAULTS = StreamSettings()


# --- the grid --------------------------------------------------------------------------------
@pytest.mark.parametrize('reference', ['centre', 'start'])
def test_segment_of_reference_inverts_reference_time_through_nanosecond_stamps(reference):
    for k in (0, 7, 3_400_000_001):
        ref = reference_time(k, 0.6, reference)
        ns = int(round(ref * 1e9))
        assert segment_of_reference(ns / 1e9, 0.6, reference) == k
        assert segment_of_reference((ns - 1) / 1e9, 0.6, reference) == k


# --- FrameSelector ---------------------------------------------------------------------------
@pytest.mark.parametrize('reference', ['centre', 'start'])
def test_frame_selector_emits_each_segment_once_with_its_nearest_frame(reference):
    seg = 0.5
    times = 100.013 + np.arange(120) / 30.0                       # 4 s at 30 fps
    sel = FrameSelector(seg, reference)
    emitted = []
    for i, t in enumerate(times):
        for k, t_frame, payload in sel.push(float(t), i):
            # emitted no later than the first frame at/after the reference time
            assert t <= max(reference_time(k, seg, reference), t_frame) + 1 / 30 + 1e-9
            emitted.append((k, t_frame, payload))
    ks = [k for k, _, _ in emitted]
    assert ks == sorted(set(ks)), 'each segment once, in order'
    for k, t_frame, payload in emitted:
        ref = reference_time(k, seg, reference)
        inside = [i for i, t in enumerate(times) if segment_index(float(t), seg) == k]
        best = min(inside, key=lambda i: abs(times[i] - ref))
        assert payload == best and t_frame == times[best]
    # every segment whose reference time the frames reached is emitted
    last_t = float(times[-1])
    expected = [k for k in range(segment_index(float(times[0]), seg),
                                 segment_index(last_t, seg) + 1)
                if reference_time(k, seg, reference) <= last_t
                and reference_time(k, seg, reference) >= times[0] - seg]
    assert set(expected) <= set(ks)


def test_frame_selector_start_reference_emits_on_the_first_frame_of_a_segment():
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


class _FaceUnlessBlack:
    """A detector that finds one face in every frame that is not all black (whole frames only:
    the segmenter runs with follow_every 1)."""

    cfg = FeatureConfig()

    def detect_all(self, frames):
        return [(np.array([[0.0, 0.0, 4.0, 4.0]]), np.ones(1)) if f.any()
                else (np.zeros((0, 4)), np.zeros(0)) for f in frames]

    def crop(self, frame, box):
        return np.zeros((98, 80), np.uint8)


def test_face_segmenter_counts_each_chosen_frame_and_decodes_only_those():
    decoded = []

    def decode(payload):
        decoded.append(payload)
        if payload == 'broken':
            raise ValueError('truncated')
        return np.full((4, 4, 3), 0 if payload == 'blank' else 200, np.uint8)

    faces = FaceSegmenter(_FaceUnlessBlack(), 0.5,
                          StreamSettings(reference='start', follow_every=1))
    out = []
    for t, payload in ((10.0, 'a'), (10.1, 'skipped'), (10.5, 'blank'), (11.0, 'broken'),
                       (11.5, 'b')):
        out += faces.push(t, payload, decode)
    faces.reject()
    assert decoded == ['a', 'blank', 'broken', 'b'], 'only the chosen frames are decoded'
    assert [(r.k, r.crop is not None, r.error) for r in out] == [
        (20, True, ''), (21, False, ''), (22, False, 'truncated'), (23, True, '')]
    c = faces.counts
    assert (c.frames, c.segments, c.published, c.no_face, c.rejected, c.resets) == (
        6, 4, 2, 1, 2, 0)
    faces.push(3.0, 'c', decode)                # the bag looped
    assert faces.counts.resets == 1


def test_stream_settings_refuse_bad_values_and_bound_the_window_minimum():
    for bad in ({'reference': 'middle'}, {'missing_policy': 'zeros'}, {'min_segments': -1},
                {'missing_wait_s': -1.0}, {'nearest_max_segments': 0}, {'min_face_size': 0}):
        with pytest.raises(ValueError):
            StreamSettings(**bad)
    assert StreamSettings(min_segments=0).window_minimum(5) == 5
    assert StreamSettings(min_segments=7).window_minimum(5) == 5
    assert StreamSettings(min_segments=2).window_minimum(5) == 2


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


@pytest.mark.parametrize('reference', ['centre', 'start'])
def test_audio_segmenter_matches_the_offline_log_mel(reference):
    sr, t0 = 16000, 200.37
    audio = _voice(5 * sr, sr)
    seg = AudioSegmenter(CFG, 0.5, StreamSettings(reference=reference))
    out = _feed(seg, audio, sr, t0, chunk=1024)
    ks = [k for k, _, _ in out]
    half = CFG.window_s / 2
    covered = [k for k in range(segment_index(t0, 0.5), segment_index(t0 + 5, 0.5) + 1)
               if reference_time(k, 0.5, reference) - half >= t0
               and reference_time(k, 0.5, reference) + half <= t0 + len(audio) / sr]
    assert ks == covered
    for k, t_ref, mel in out:
        assert t_ref == reference_time(k, 0.5, reference)
        assert mel.shape == (128, 43) and mel.dtype == np.float32
        np.testing.assert_allclose(mel, log_mel_at(audio, t_ref - t0, CFG), atol=1e-4)
    assert seg.counts.audio_gap == 0 and seg.counts.published == len(out)


def test_audio_segmenter_resamples_other_rates_close_to_offline():
    sr, t0 = 48000, 50.05
    audio = _voice(4 * sr, sr, seed=1)
    seg = AudioSegmenter(CFG, 0.5, DEFAULTS)
    out = _feed(seg, audio, sr, t0, chunk=4800)
    assert len(out) >= 4
    offline = resample(audio, sr, 16000)
    for _, t_ref, mel in out:
        ref = log_mel_at(offline, t_ref - t0, CFG)
        assert np.abs(mel - ref).mean() < 0.02, 'window-wise resampling ~ whole-clip'


def test_audio_segmenter_counts_gaps_and_recovers():
    sr, t0 = 16000, 10.0
    audio = _voice(8 * sr, sr)
    seg = AudioSegmenter(CFG, 0.5, DEFAULTS)
    out = _feed(seg, audio, sr, t0, chunk=1600, skip=range(30, 35))   # 3.0 s .. 3.5 s missing
    ks = [k for k, _, _ in out]
    lost = [k for k in range(ks[0], ks[-1] + 1) if k not in ks]
    half = CFG.window_s / 2
    for k in lost:   # exactly the windows touching the missing half second
        ref = reference_time(k, 0.5, 'centre')
        assert ref - half < t0 + 3.5 and ref + half > t0 + 3.0
    assert seg.counts.audio_gap == len(lost) > 0
    for _, t_ref, mel in out:
        np.testing.assert_allclose(mel, log_mel_at(audio, t_ref - t0, CFG), atol=1e-4)


def test_audio_segmenter_rejects_nan_and_resets_on_backwards_stamps():
    sr = 16000
    seg = AudioSegmenter(CFG, 0.5, DEFAULTS)
    audio = _voice(3 * sr, sr)
    _feed(seg, audio, sr, 10.0, chunk=1600)
    bad = audio[:1600].copy()
    bad[5] = np.nan
    with pytest.raises(ValueError, match='NaN'):
        seg.push(13.0, bad, sr)
    seg.reject()
    assert seg.counts.rejected == 1
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
    fuser = SegmentFuser(seg_fn, _softmax_mean, 3, 0.5, StreamSettings(min_segments=2))
    outputs = []
    for k in range(20, 28):
        outputs += fuser.push_face(k * 0.5 + 0.2, _face(k), 'cam')
        outputs += fuser.push_mel(reference_time(k, 0.5, 'centre'), _mel(k))
    assert len(seg_fn.calls) == 8 and fuser.counts.used == 8
    assert [w.k_last for w in outputs] == list(range(21, 28))
    for w in outputs:
        ids = [j for j in range(w.k_last - 2, w.k_last + 1) if j >= 20]
        assert w.segments == tuple(ids)
        want = _softmax_mean([[_face(j).mean() / 255, float(j), 0.0] for j in ids])
        np.testing.assert_allclose(w.probs, want)
        assert w.t_ref == reference_time(w.k_last, 0.5, 'centre') and w.frame_id == 'cam'


def test_fuser_skip_policy_drops_a_segment_once_the_other_stream_passed_it():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5,
                         StreamSettings(min_segments=1, missing_wait_s=1.0))
    assert fuser.push_mel(reference_time(10, 0.5, 'centre'), _mel(10)) == []   # no face yet
    assert fuser.counts.dropped == 0
    out = fuser.push_face(5.6, _face(11), 'cam')   # faces passed 10: its face will not come
    assert fuser.counts.dropped == 1 and out == []
    out = fuser.push_mel(reference_time(11, 0.5, 'centre'), _mel(11))
    assert [w.segments for w in out] == [(11,)]
    fuser.push_face(5.3, _face(10), 'cam')          # not backwards by stream: late, ignored
    assert fuser.counts.late == 1 and fuser.counts.resets == 0


def test_fuser_gives_up_after_the_wait_when_the_other_stream_stalls():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5,
                         StreamSettings(min_segments=1, missing_wait_s=1.0))
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
    fuser = SegmentFuser(seg_fn, _softmax_mean, 3, 0.5, StreamSettings(
        min_segments=1, missing_policy='nearest', missing_wait_s=1.0))
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
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5, StreamSettings(min_segments=1))
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
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5,
                         StreamSettings(min_segments=1, missing_wait_s=3.0))
    outs = []
    for k in range(10):
        outs += fuser.push_face(k * 0.5 + 0.1, _face(k))
        if k >= 4:                                    # the log-mels trail by 4 segments
            outs += fuser.push_mel(reference_time(k - 4, 0.5, 'centre'), _mel(k - 4))
    assert [w.segments for w in outs][-3:] == [(1, 2, 3), (2, 3, 4), (3, 4, 5)]


def test_fuser_min_segments_holds_windows_back():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 4, 0.5, StreamSettings(min_segments=4))
    outs = []
    for k in range(4):
        outs += fuser.push_face(k * 0.5 + 0.1, _face(k))
        outs += fuser.push_mel(reference_time(k, 0.5, 'centre'), _mel(k))
    assert [w.k_last for w in outs] == [3]


def test_fuser_with_the_real_model_equals_its_forward():
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = LightmerNet(meta_for_preset('crema-d').model).eval()
    seg_fn, fuse_fn = model_functions(model)
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (5, 98, 80), dtype=np.uint8)
    mels = rng.standard_normal((5, 128, 43)).astype(np.float32)
    fuser = SegmentFuser(seg_fn, fuse_fn, 5, 0.5, StreamSettings(min_segments=0))   # all N
    out = []
    for k in range(5):
        out += fuser.push_face(k * 0.5 + 0.25, faces[k])
        out += fuser.push_mel(reference_time(k, 0.5, 'centre'), mels[k])
    with torch.inference_mode():
        want = torch.softmax(model(torch.from_numpy(face_to_input(faces))[None],
                                   torch.from_numpy(mels)[None, :, None]), dim=-1)[0]
    assert len(out) == 1
    np.testing.assert_allclose(out[0].probs, want.numpy(), atol=1e-6)
    assert abs(out[0].probs.sum() - 1) < 1e-9


# --- input guards (non-finite, silence, stamp jumps, restarts) --------------------------------
def test_audio_segmenter_refuses_windows_whose_power_overflows_and_keeps_the_rest():
    """Huge but finite F32 samples (1e30) overflow the power spectrum: every window touching
    them is refused and counted; the windows around them are published and finite."""
    sr, t0 = 16000, 20.0
    audio = _voice(8 * sr, sr)
    audio[3 * sr:3 * sr + 1600] = 1e30                      # 3.0 s .. 3.1 s
    seg = AudioSegmenter(CFG, 0.5, StreamSettings())
    out = _feed(seg, audio, sr, t0, chunk=1600)
    half = CFG.window_s / 2
    touching = [k for k in range(segment_index(t0, 0.5), segment_index(t0 + 8, 0.5) + 1)
                if reference_time(k, 0.5, 'centre') - half < t0 + 3.1
                and reference_time(k, 0.5, 'centre') + half > t0 + 3.0]
    assert seg.counts.invalid == len(touching) > 0
    assert not {k for k, _, _ in out} & set(touching)
    assert all(np.isfinite(mel).all() for _, _, mel in out)
    assert [k for k, _, _ in out if k > max(touching)], 'windows after the burst come back'


def test_audio_segmenter_counts_windows_of_digital_silence():
    sr, t0 = 16000, 30.0
    audio = _voice(6 * sr, sr)
    audio[2 * sr:5 * sr] = 0.0                                # 3 s of digital silence
    seg = AudioSegmenter(CFG, 0.5, StreamSettings())
    out = _feed(seg, audio, sr, t0, chunk=1600)
    half = CFG.window_s / 2
    silent = [k for k, t_ref, _ in out if t_ref - half >= t0 + 2 and t_ref + half <= t0 + 5]
    assert silent and seg.counts.silent == len(silent)
    assert seg.counts.published == len(out), 'silent windows are still published'


def test_audio_segmenter_counts_a_stamp_jump_once_not_as_billions_of_lost_segments():
    sr = 16000
    audio = _voice(3 * sr, sr)
    seg = AudioSegmenter(CFG, 0.5, StreamSettings(stamp_jump_s=10.0))
    _feed(seg, audio, sr, 0.0, chunk=1600)                     # a stamp-0 source (unset clock)
    out = _feed(seg, audio, sr, 1.79e9, chunk=1600)            # then wall-clock stamps
    _feed(seg, audio, sr, 1.79e9 + 3 * 3600 + 3, chunk=1600)   # a +3 h jump
    assert seg.counts.jumps == 2 and seg.counts.audio_gap == 0
    assert out
    _feed(seg, audio, sr, 1.79e9 + 3 * 3600 + 3 + 3 + 2.0, chunk=1600)   # a 2 s hole
    assert seg.counts.jumps == 2 and 0 < seg.counts.audio_gap <= 2.0 / 0.5 + 3


def test_frame_selector_counts_forward_stamp_jumps():
    sel = FrameSelector(0.5, 'centre', jump_s=10.0)
    for t in (1.0, 1.1, 1.2, 5.0, 20.0, 20.1):
        sel.push(t, None)
    assert sel.jumps == 1 and sel.resets == 0


def _finite_simplex(w) -> bool:
    return bool(np.isfinite(w.probs).all() and (w.probs >= 0).all()
                and abs(w.probs.sum() - 1) < 1e-9)


def test_fuser_drops_a_non_finite_log_mel_and_counts_it():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5, StreamSettings(min_segments=1))
    outs = []
    for k in range(10, 16):
        mel = _mel(k)
        if k == 12:
            mel = mel.copy()
            mel[5, 5] = np.nan
        outs += fuser.push_face(k * 0.5 + 0.1, _face(k))
        outs += fuser.push_mel(reference_time(k, 0.5, 'centre'), mel)
    assert fuser.counts.invalid == 1
    assert 12 not in fuser.cached_segments
    assert [w.k_last for w in outs] == [10, 11, 13, 14, 15]
    assert all(_finite_simplex(w) for w in outs)


def test_fuser_drops_a_segment_whose_logits_are_not_finite():
    def seg_fn(face, mel):
        return np.array([np.inf if face[0, 0] == 12 else 0.0, 1.0, np.nan if face[0, 0] == 13
                         else 0.0])

    fuser = SegmentFuser(seg_fn, _softmax_mean, 3, 0.5, StreamSettings(min_segments=1))
    outs = []
    for k in range(10, 16):
        outs += fuser.push_face(k * 0.5 + 0.1, _face(k))
        outs += fuser.push_mel(reference_time(k, 0.5, 'centre'), _mel(k))
    assert fuser.counts.invalid == 2
    assert [w.k_last for w in outs] == [10, 11, 14, 15]
    assert all(_finite_simplex(w) for w in outs)


def test_fuser_no_face_marker_settles_the_segment_at_once():
    """The face node says 'no face in segment k': the fuser need not wait for the face stream
    to pass k or for wait_s; 'no person' is counted apart from dropped segments."""
    fuser = SegmentFuser(_Counting(), _softmax_mean, 3, 0.5,
                         StreamSettings(min_segments=1, missing_wait_s=100.0))
    fuser.push_mel(reference_time(10, 0.5, 'centre'), _mel(10))
    assert fuser.push_no_face(10 * 0.5 + 0.2) == []
    assert fuser.counts.no_face == 1 and fuser.counts.dropped == 0
    assert fuser.pending_segments == ()
    fuser.push_no_face(11 * 0.5 + 0.2)                 # marker first, then the mel
    fuser.push_mel(reference_time(11, 0.5, 'centre'), _mel(11))
    assert fuser.counts.no_face == 2 and fuser.pending_segments == ()
    out = fuser.push_face(12 * 0.5 + 0.2, _face(12), 'cam')
    out += fuser.push_mel(reference_time(12, 0.5, 'centre'), _mel(12))
    assert [w.segments for w in out] == [(12,)]


def test_fuser_nearest_policy_fills_a_no_face_segment_from_its_neighbour():
    seg_fn = _Counting()
    fuser = SegmentFuser(seg_fn, _softmax_mean, 3, 0.5,
                         StreamSettings(min_segments=1, missing_policy='nearest'))
    fuser.push_face(10 * 0.5 + 0.1, _face(10))
    fuser.push_mel(reference_time(10, 0.5, 'centre'), _mel(10))
    fuser.push_no_face(11 * 0.5 + 0.1)
    out = fuser.push_mel(reference_time(11, 0.5, 'centre'), _mel(11))
    assert [w.segments for w in out] == [(10, 11)] and (10, 11.0) in seg_fn.calls
    assert fuser.counts.filled == 1


@pytest.mark.parametrize('stream', ['face', 'mel'])
def test_fuser_never_mixes_segments_from_before_and_after_a_stream_outage(stream):
    """One input stops for longer than stall_warn_s (its node restarted, its sensor stalled)
    while the other flows: windows after its return use only segments after the outage."""
    fuser = SegmentFuser(_Counting(), _softmax_mean, 12, 0.5,
                         StreamSettings(min_segments=1, missing_wait_s=1.0, stall_warn_s=3.0))
    outs = []
    for k in range(100, 130):
        down = 105 <= k < 112                                  # 3.5 s without this stream
        if not (stream == 'face' and down):
            outs += fuser.push_face(k * 0.5 + 0.1, _face(k))
        if not (stream == 'mel' and down):
            outs += fuser.push_mel(reference_time(k, 0.5, 'centre'), _mel(k))
    assert fuser.counts.breaks == 1
    after = [w for w in outs if w.k_last >= 112]
    assert after and all(min(w.segments) >= 112 for w in after)
    assert [w.segments for w in outs if w.k_last == 104][0] == tuple(range(100, 105))


@pytest.mark.parametrize('gap_s, breaks', [(2.0, 1), (1.9, 0)])
def test_fuser_breaks_on_a_stamp_gap_of_stall_warn_s_exactly_as_the_stall_is_reported(gap_s,
                                                                                       breaks):
    """stall_warn_s means one thing: an input silent that long is a stall on /diagnostics, and
    two of its inputs that far apart in stamp time restart the windows. A face node back 2.0 s
    after its last crop (3 segments missing at T = 0.5 s) is such a gap."""
    settings = StreamSettings(min_segments=1, stall_warn_s=2.0)
    fuser = SegmentFuser(_Counting(), _softmax_mean, 5, 0.5, settings)
    fuser.push_mel(reference_time(100, 0.5, 'centre'), _mel(100))
    assert fuser.push_face(100 * 0.5 + 0.3, _face(100))
    for k in range(101, 105):                                  # the face node is down
        fuser.push_mel(reference_time(k, 0.5, 'centre'), _mel(k))
    outs = fuser.push_face(100 * 0.5 + 0.3 + gap_s, _face(104))
    assert fuser.counts.breaks == breaks
    assert [w.segments for w in outs] == [(104,) if breaks else (100, 104)]
    assert stall_status({'face_crop': gap_s, 'log_mel': 0.0}, 2.0, 10.0)[0] == (
        'warn' if breaks else 'ok')


def test_fuser_a_short_hole_does_not_restart_the_windows():
    fuser = SegmentFuser(_Counting(), _softmax_mean, 12, 0.5,
                         StreamSettings(min_segments=1, stall_warn_s=3.0))
    outs = []
    for k in range(100, 120):
        if not 105 <= k < 109:                                 # 2 s: a lost audio chunk
            outs += fuser.push_mel(reference_time(k, 0.5, 'centre'), _mel(k))
        outs += fuser.push_face(k * 0.5 + 0.1, _face(k))
    assert fuser.counts.breaks == 0
    assert outs[-1].segments == tuple(j for j in range(108, 120) if not 105 <= j < 109)


def test_stall_status_tells_a_stopped_input_from_an_idle_pair():
    assert stall_status({'face_crop': 0.1, 'log_mel': 0.2}, 3.0, 10.0) == ('ok', '')
    level, message = stall_status({'face_crop': 4.0, 'log_mel': 0.2}, 3.0, 10.0)
    assert level == 'warn' and 'face_crop silent for 4.0 s' in message and 'camera' in message
    level, message = stall_status({'face_crop': 0.0, 'log_mel': 12.0}, 3.0, 10.0)
    assert level == 'error' and 'microphone' in message
    assert stall_status({'face_crop': 50.0, 'log_mel': 12.0}, 3.0, 10.0)[0] == 'ok'


def test_audio_segmenter_applies_the_checkpoints_mel_normalisation():
    """The node computes the same level-preserving features as training when the checkpoint
    says mel_norm 'dataset' (one log_mel for both)."""
    cfg = dataclasses.replace(CFG, mel_norm='dataset', mel_db_mean=-45.0, mel_db_std=15.0)
    sr, t0 = 16000, 50.0
    audio = _voice(3 * sr, sr)
    out = _feed(AudioSegmenter(cfg, 0.5, DEFAULTS), audio, sr, t0, chunk=1024)
    assert out
    for _, t_ref, mel in out:
        np.testing.assert_allclose(mel, log_mel_at(audio, t_ref - t0, cfg), atol=1e-4)
        assert not np.allclose(mel, log_mel_at(audio, t_ref - t0, CFG), atol=0.1)
