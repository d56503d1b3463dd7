"""The face tracker keeps ids through motion and short misses, and never hands one id to two
faces."""
import numpy as np
import pytest

from lightmer.stream.tracking import (
    FaceTracker,
    TrackerSettings,
    centre_distance,
    iou_matrix,
    match,
)


def box(cx, cy, size=60.0):
    return [cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2]


def test_iou_and_centre_distance_of_known_boxes():
    a = np.array([[0, 0, 10, 10]], float)
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]], float)
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 0.0, 1.0]])
    np.testing.assert_allclose(centre_distance(a, b), [[0.5, np.hypot(20, 20) / 10, 0.0]])
    assert iou_matrix(np.zeros((0, 4)), b).shape == (0, 3)
    # degenerate boxes: no division by zero
    assert iou_matrix([[1, 1, 1, 1]], [[1, 1, 1, 1]])[0, 0] == 0.0


def test_match_prefers_overlap_then_distance_and_never_reuses():
    tracks = np.array([box(100, 100), box(300, 100)])
    boxes = np.array([box(310, 100), box(100, 180), box(600, 100)])
    pairs = match(tracks, boxes, TrackerSettings(iou_min=0.3, centre_max=1.5))
    # box 0 overlaps track 1; box 1 moved 80 px = 1.33 widths from track 0; box 2 is far
    assert sorted(pairs) == [(0, 1), (1, 0)]


def test_two_faces_keep_their_ids_while_moving_and_swapping_order():
    tracker = FaceTracker(prefix='f')
    first = tracker.update(np.array([box(100, 200), box(400, 200)]))
    assert first == ['f1', 'f2']
    # both drift right; the detector lists them in the other order
    second = tracker.update(np.array([box(430, 205), box(130, 195)]))
    assert second == ['f2', 'f1']


def test_an_id_survives_max_missed_segments_then_a_return_is_a_new_face():
    tracker = FaceTracker(TrackerSettings(max_missed=2), prefix='p')
    assert tracker.update(np.array([box(100, 100), box(400, 100)])) == ['p1', 'p2']
    for _ in range(2):                                    # p2 flickers out for two segments
        assert tracker.update(np.array([box(100, 100)])) == ['p1']
    assert tracker.active_ids == ('p1', 'p2')
    assert tracker.update(np.array([box(100, 100), box(402, 101)])) == ['p1', 'p2']
    for _ in range(3):                                    # gone for three: forgotten
        tracker.update(np.array([box(100, 100)]))
    assert tracker.active_ids == ('p1',)
    assert tracker.forgotten == 1
    assert tracker.update(np.array([box(100, 100), box(400, 100)])) == ['p1', 'p3']
    assert tracker.started == 3


def test_empty_segments_and_reset():
    tracker = FaceTracker()
    assert tracker.update(np.zeros((0, 4))) == []
    assert tracker.update(np.array([box(50, 50)])) == ['f1']
    tracker.reset()
    assert tracker.update(np.array([box(50, 50)])) == ['f2']     # ids are never reused


def test_many_faces_get_distinct_ids():
    rng = np.random.default_rng(0)
    tracker = FaceTracker()
    centres = [(80 + 90 * (i % 5), 80 + 90 * (i // 5)) for i in range(20)]
    ids = tracker.update(np.array([box(x, y, 50) for x, y in centres]))
    assert len(set(ids)) == 20
    jittered = [box(x + rng.uniform(-5, 5), y + rng.uniform(-5, 5), 50) for x, y in centres]
    order = rng.permutation(20)
    again = tracker.update(np.array(jittered)[order])
    assert again == [ids[i] for i in order]


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError, match='iou_min'):
        TrackerSettings(iou_min=0.0)
    with pytest.raises(ValueError, match='max_missed'):
        TrackerSettings(max_missed=-1)
