"""MTCNN that follows the face (stream.follow): the faces it returns are whole-frame MTCNN's, on
a recorded video whose face moves, leaves and returns and on the generated corpus; the whole
frame is searched again when a followed face is lost, and every `every` segments; the windows
on /emotion are those of whole-frame detection."""
from __future__ import annotations

import numpy as np
import pytest

from lightmer.core.backend import face_cropper
from lightmer.datasets.media import decode_video
from lightmer.harness.bench_inputs import (
    camera_frame,
    clips_as_stream,
    write_moving_face_video,
)
from lightmer.stream.follow import FaceFollower, FollowSettings
from lightmer.stream.pipeline import OfflinePipeline
from lightmer.stream.settings import StreamSettings

T = 0.5


@pytest.fixture(scope='module')
def cropper(onnx_export):
    return face_cropper(onnx_export[1], StreamSettings().min_face_size, 1)


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    return ix * iy / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy)


def _follow_and_compare(cropper, frames, settings: FollowSettings | None = None
                        ) -> tuple[FaceFollower, list[int]]:
    """Follow consecutive segment frames; per frame the number of faces whole-frame MTCNN
    finds, after asserting that the follower returned those very faces."""
    follower = FaceFollower(cropper, settings)
    found = []
    for i, frame in enumerate(frames):
        boxes, probs = cropper.detect_all([frame])[0]
        whole = boxes[probs >= cropper.cfg.face_min_prob]
        followed, _ = follower.detect(frame)
        assert len(followed) == len(whole), f'segment {i}: {len(followed)} vs {len(whole)}'
        for box in whole:
            assert max(_iou(box, f) for f in followed) >= 0.95, f'segment {i}'
        found.append(len(whole))
    return follower, found


@pytest.mark.slow    # encodes a video and runs MTCNN twice on 48 frames (~10 s here)
def test_a_face_that_moves_leaves_and_returns_is_followed_to_whole_frame_boxes(
        cropper, tmp_path):
    video = write_moving_face_video(tmp_path / 'moving.mp4', seconds=24.0, fps=2)
    frames, times, _ = decode_video(video)
    follower, found = _follow_and_compare(cropper, list(frames))
    away = [i for i, n in enumerate(found) if n == 0]
    assert away and away[0] > 0 and away[-1] < len(found) - 1, 'it left and came back'
    assert found[away[-1] + 1] == 1, 'found again at once on return'
    c = follower.counts
    assert c.lost >= 1, 'the face leaving sends the follower back to the whole frame'
    assert c.followed >= len(frames) // 2 and c.periodic >= 2
    assert c.whole + c.followed == len(frames)


def test_generated_corpus_clips_are_followed_to_whole_frame_boxes(cropper, tiny_corpus):
    frames = []
    for path in sorted((tiny_corpus / 'VideoFlash').glob('*.flv'))[:8]:
        video, times, _ = decode_video(path)
        centres = times[0] + T * (np.arange(int((times[-1] - times[0]) // T) + 1) + 0.5)
        frames += [video[int(np.argmin(np.abs(times - c)))] for c in centres]
    follower, found = _follow_and_compare(cropper, frames)
    assert sum(found) >= 0.9 * len(frames) and follower.counts.followed >= len(frames) // 2


def test_fallback_on_a_lost_face_and_every_k_segments(cropper):
    face, empty = camera_frame(1), np.full((480, 640, 3), 128, np.uint8)
    follower = FaceFollower(cropper, FollowSettings(every=3))
    results = [len(follower.detect(f)[0]) for f in (face, face, face, face, empty, face)]
    assert results == [1, 1, 1, 1, 0, 1]
    c = follower.counts
    # 0 whole (nobody followed), 1-2 followed, 3 whole (every 3), 4 lost -> whole,
    # 5 whole (nobody followed after the empty frame)
    assert (c.whole, c.followed, c.periodic, c.lost) == (4, 2, 1, 1)


def test_two_people_are_each_followed(cropper):
    frames = [np.roll(camera_frame(2), shift, axis=1) for shift in (0, 4, 9, 5)]
    follower, found = _follow_and_compare(cropper, frames, FollowSettings(every=10))
    assert found == [2, 2, 2, 2] and follower.counts.followed == 3


@pytest.mark.slow    # the three nodes' chain twice over 16 segments (~7 s here)
def test_emotion_windows_equal_whole_frame_detection(onnx_export, tiny_corpus):
    frames, times, audio = clips_as_stream(tiny_corpus, clips=4)
    out = {}
    for every in (1, 10):
        pipe = OfflinePipeline(onnx_export[1], StreamSettings(follow_every=every))
        windows, n = [], 0
        for t, frame in zip(times, frames, strict=True):     # audio in 0.1 s chunks, in order
            while n / 16000 <= t:
                windows += pipe.push_audio(n / 16000, audio[n:n + 1600], 16000)
                n += 1600
            windows += pipe.push_image(float(t), frame)
        out[every] = {w.k_last: w.probs for w in windows}
        assert (pipe.faces.counts.followed > 0) == (every > 1)
    assert out[1].keys() == out[10].keys() and len(out[1]) >= 5
    assert max(np.abs(out[1][k] - out[10][k]).max() for k in out[1]) <= 1e-3
