"""The pinhole face-size model behind min_face_size (core.camera, docs/RUNTIME.md)."""
import math

import pytest

from lightmer.core.camera import face_width_px, farthest_face_m, focal_px


def test_face_width_follows_the_pinhole_model():
    # 90 deg over 640 px: f = 320 px; a 0.14 m face at 1 m is 44.8 px, at 2 m half that
    assert focal_px(640, 90) == pytest.approx(320.0)
    assert face_width_px(1.0, 640, 90) == pytest.approx(44.8)
    assert face_width_px(2.0, 640, 90) == pytest.approx(22.4)
    # a 1280x720 frame searched at 640x360 sees the face as a 640 px camera would
    assert face_width_px(1.5, 1280, 70, 640, 720) == pytest.approx(face_width_px(1.5, 640, 70))
    assert face_width_px(1.5, 1280, 70) == pytest.approx(2 * face_width_px(1.5, 640, 70))


def test_farthest_face_inverts_the_width():
    d = farthest_face_m(40, 640, 70)
    assert face_width_px(d, 640, 70) == pytest.approx(40)
    assert d == pytest.approx(0.14 * 320 / math.tan(math.radians(35)) / 40)


@pytest.mark.parametrize('args', [(0.0, 640, 70), (1.0, 640, 0), (1.0, 640, 180), (1.0, 0, 70)])
def test_impossible_cameras_and_distances_are_refused(args):
    with pytest.raises(ValueError):
        face_width_px(*args)
