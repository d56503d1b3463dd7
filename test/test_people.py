"""Several people: every face tracked with the real MTCNN, one window per person, shared audio."""
import numpy as np
import pytest
from skimage.data import astronaut

from lightmer.core.config import FeatureConfig
from lightmer.core.features import FaceCropper
from lightmer.core.messages import ConversionError
from lightmer.core.segments import reference_time
from lightmer.stream.faces import FaceSegmenter
from lightmer.stream.fuser import SegmentFuser
from lightmer.stream.people import (
    MultiFaceSegmenter,
    PeopleFuser,
    Ros4hriFaceSegmenter,
    TrackedFace,
)
from lightmer.stream.settings import StreamSettings

T = 0.5


class _Recording:
    """The per-segment part as a plain function of the inputs that records what it fused (the
    real model is checked against the fuser in test_streaming)."""

    def __init__(self):
        self.calls = []

    def __call__(self, face, mel):
        self.calls.append((int(face[0, 0]), float(mel[0, 0])))
        return np.array([face.mean() / 255.0, float(mel.mean()), 0.0])


def _softmax_mean(logits):
    m = np.asarray(logits).mean(axis=0)
    e = np.exp(m - m.max())
    return e / e.sum()


def _people(audio_to='all', forget_after_s=3.0):
    seg = _Recording()
    settings = StreamSettings(min_segments=1)
    fuser = PeopleFuser(lambda: SegmentFuser(seg, _softmax_mean, 3, T, settings),
                        T, 'centre', np.full((128, 43), -1.0, np.float32), audio_to=audio_to,
                        forget_after_s=forget_after_s)
    return fuser, seg


def _face(face_id, value, size):
    return TrackedFace(face_id, np.full((98, 80), value, np.uint8),
                       np.array([0.0, 0.0, size, size]))


def _mel(k):
    return np.full((128, 43), float(k), np.float32)


def test_each_person_fuses_only_their_own_faces_with_the_shared_audio():
    people, seg = _people()
    windows = []
    for k in range(10, 16):
        if k % 2:                                     # audio first in odd segments
            windows += people.push_mel(reference_time(k, T, 'centre'), _mel(k))
        out, gone = people.push_faces(k * T + 0.2, [_face('a', 10, 80), _face('b', 200, 60)])
        windows += out
        assert gone == []
        if not k % 2:
            windows += people.push_mel(reference_time(k, T, 'centre'), _mel(k))
    assert sorted(seg.calls) == sorted([(v, float(k)) for k in range(10, 16) for v in (10, 200)])
    by_id = {}
    for w in windows:
        by_id.setdefault(w.face_id, []).append(w.window)
    assert set(by_id) == {'a', 'b'}
    for face_id, value in (('a', 10), ('b', 200)):
        last = by_id[face_id][-1]
        want = _softmax_mean([[value / 255, float(j), 0.0] for j in last.segments])
        np.testing.assert_allclose(last.probs, want)
    assert people.primary('largest') == 'a' and people.primary('oldest') == 'a'


def test_largest_policy_gives_the_others_the_silence_log_mel():
    people, seg = _people(audio_to='largest')
    people.push_faces(10 * T + 0.1, [_face('a', 10, 50), _face('b', 200, 90)])
    people.push_mel(reference_time(10, T, 'centre'), _mel(10))
    assert sorted(seg.calls) == [(10, -1.0), (200, 10.0)]
    assert people.primary() == 'b'


def test_state_is_dropped_after_the_absence_and_a_return_is_counted():
    people, _ = _people(forget_after_s=1.0)
    people.push_faces(10 * T, [_face('a', 10, 80), _face('b', 20, 60)])
    _, gone = people.push_faces(11 * T, [_face('a', 10, 80)])
    assert gone == [] and people.ids == ('a', 'b')
    _, gone = people.push_faces(13 * T, [])                 # nobody in view for a while
    assert gone == ['b']
    _, gone = people.push_faces(14 * T, [_face('b', 20, 60)])
    assert gone == ['a'] and people.ids == ('b',)
    assert people.counts.returned == 1 and people.counts.forgotten == 2
    assert people.counts.started == 3 and people.counts.people == 1
    assert people.primary() == 'b'


def test_face_segments_going_back_forget_everyone_and_repeats_are_ignored():
    people, seg = _people()
    people.push_faces(20 * T, [_face('a', 10, 80)])
    assert people.push_faces(20 * T + 0.1, [_face('b', 10, 80)]) == ([], [])   # same segment
    assert people.counts.repeated == 1 and people.ids == ('a',)
    _, gone = people.push_faces(5 * T, [_face('a', 10, 80)])                   # a bag loops
    assert gone == ['a'] and people.ids == ('a',)
    assert people.counts.restarts == 1 and people.counts.returned == 1


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match='audio_to'):
        _people(audio_to='nearest')
    with pytest.raises(ValueError, match='forget_after_s'):
        _people(forget_after_s=0)


# --- the face side, on the real MTCNN ----------------------------------------------------------
@pytest.fixture(scope='module')
def cropper():
    return FaceCropper(FeatureConfig())


@pytest.fixture(scope='module')
def astronaut_face():
    return astronaut()[20:220, 120:320]                      # 200 x 200 around the face


def _grid(face, rows, cols, shift=0):
    h, w = face.shape[:2]
    frame = np.full((rows * h, cols * w + 40, 3), 128, np.uint8)
    for r in range(rows):
        for c in range(cols):
            frame[r * h:(r + 1) * h, shift + c * w:shift + (c + 1) * w] = face
    return frame


def test_two_faces_keep_their_ids_across_segments(cropper, astronaut_face):
    faces = MultiFaceSegmenter(cropper, T, 'centre', max_faces=4, id_prefix='t')
    results = []
    for k in range(4):        # one frame per segment, at its reference time, drifting right
        frame = _grid(astronaut_face, 1, 2, shift=10 * k)
        results += faces.push(k * T + 0.25, frame)
    assert [r.k for r in results] == [0, 1, 2, 3]
    ids = [[f.face_id for f in sorted(r.faces, key=lambda f: f.box[0])] for r in results]
    assert ids == [['t1', 't2']] * 4
    assert all(f.crop.shape == (98, 80) and f.crop.dtype == np.uint8
               for r in results for f in r.faces)
    assert faces.counts.tracks_started == 2 and faces.counts.capped == 0


def test_twenty_faces_hold_the_cap_and_count_the_rest(cropper, astronaut_face):
    small = astronaut_face[::2, ::2]                          # 100 x 100
    faces = MultiFaceSegmenter(cropper, T, 'centre', max_faces=3)
    [result] = faces.push(0.25, _grid(small, 4, 5))
    assert result.detected == 20
    assert len(result.faces) == 3 and faces.counts.capped == 17
    assert len({f.face_id for f in result.faces}) == 3


def test_an_undecodable_frame_is_counted_not_raised(cropper):
    def decode(_msg):
        raise ConversionError('unsupported encoding')

    faces = MultiFaceSegmenter(cropper, T, 'centre', max_faces=2)
    [result] = faces.push(0.25, 'msg', decode)
    assert result.error == 'unsupported encoding' and result.faces == ()
    assert faces.counts.rejected == 1


# --- the face side with face_source ros4hri ----------------------------------------------------
def _decode(payload):
    if isinstance(payload, str):
        raise ValueError(payload)
    return payload


def test_ros4hri_lists_drive_the_segments_and_crops_are_matched_by_stamp(astronaut_face):
    faces = Ros4hriFaceSegmenter(FeatureConfig(), T, 'centre', max_faces=2, decode=_decode)
    big, small = astronaut_face, astronaut_face[::2, ::2]
    results = []
    for i in range(40):                                        # 30 Hz for 1.3 s
        t = i / 30
        faces.push_crop('anhyk', t, big)
        if i < 20:
            faces.push_crop('bmzrq', t, small)
        faces.push_crop('ctuvw', t, 'yuv422 is not supported')  # an odd encoding, every frame
        results += faces.push_tracked(t, ['bmzrq', 'anhyk', 'ctuvw'])
    assert [r.k for r in results] == [0, 1, 2]
    assert [[f.face_id for f in r.faces] for r in results] == [
        ['anhyk', 'bmzrq'], ['anhyk', 'bmzrq'], ['anhyk']]
    first = results[0].faces
    assert all(f.crop.shape == (98, 80) and f.crop.dtype == np.uint8 for f in first)
    assert first[0].area > first[1].area                       # largest first
    assert faces.counts.rejected == 3 and faces.counts.segments == 3
    # bmzrq's crops stop at 0.63 s: segment 1 (reference 0.75 s) still finds one within T/2,
    # segment 2 (1.25 s) does not
    assert faces.counts.crop_missing == 1


def test_ros4hri_cap_and_missing_crops_are_counted(astronaut_face):
    faces = Ros4hriFaceSegmenter(FeatureConfig(), T, 'centre', max_faces=1, decode=_decode)
    faces.push_crop('a', 0.25, astronaut_face)
    faces.push_crop('b', 0.25, astronaut_face[::2, ::2])
    [result] = faces.push_tracked(0.25, ['a', 'b', 'nocrop'])
    assert [f.face_id for f in result.faces] == ['a']
    assert faces.counts.capped == 1 and faces.counts.crop_missing == 1
    [empty] = faces.push_tracked(0.75, [])
    assert empty.faces == () and faces.counts.no_face == 1


# --- what every face segmenter shares ----------------------------------------------------------
class _NoFaces:
    """A detector that finds nothing: the segmenters' bookkeeping alone."""

    cfg = FeatureConfig()

    def __call__(self, frames):
        return [None] * len(frames)

    def detect_all(self, frames):
        return [(np.zeros((0, 4)), np.zeros(0)) for _ in frames]


@pytest.mark.parametrize('kind', ['one', 'several', 'ros4hri'])
def test_every_face_segmenter_counts_inputs_segments_resets_and_jumps_alike(kind):
    """The prelude the three share (frame choice, counts, reject), written once."""
    settings = StreamSettings(stamp_jump_s=10.0)
    if kind == 'one':
        faces = FaceSegmenter(_NoFaces(), T, settings)
    elif kind == 'several':
        faces = MultiFaceSegmenter(_NoFaces(), T, 'centre', 2)
    else:
        faces = Ros4hriFaceSegmenter(FeatureConfig(), T, 'centre', 2, _decode)
    offer = faces.push_tracked if kind == 'ros4hri' else faces.push
    settled = []
    for t in (10.0, 10.3, 10.6, 10.9, 30.0, 5.0):     # two segments, a jump, then backwards
        settled += [r.k for r in offer(t, [] if kind == 'ros4hri' else np.zeros((4, 4, 3)))]
    faces.reject()
    counts = faces.counts
    offered = counts.lists if kind == 'ros4hri' else counts.frames
    assert settled == [20, 21] and counts.segments == 2 and counts.no_face == 2
    assert (offered, counts.rejected, counts.resets, counts.jumps) == (7, 1, 1, 1)
