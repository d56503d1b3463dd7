"""How large a face looks to the camera: the pinhole model behind the choice of `min_face_size`.

A face of width w metres at distance d metres, seen by a camera whose image is W pixels wide
over a horizontal field of view of F degrees, is w * f / d pixels wide, with the focal length
in pixels f = (W / 2) / tan(F / 2). MTCNN sees the detection copy (`detect_max_side`), so the
size that matters for `min_face_size` is the one in that copy (docs/RUNTIME.md, "The smallest
face to look for").
"""
from __future__ import annotations

import math

# Width of the box MTCNN draws around an adult face, metres: about the bizygomatic (cheek to
# cheek) breadth, 0.13-0.15 m in adult anthropometric surveys. An assumption, not a measurement
# of lightmer's: faces of children and turned heads are narrower.
FACE_WIDTH_M = 0.14


def focal_px(image_width_px: int, hfov_deg: float) -> float:
    """Focal length in pixels of a camera W pixels wide over `hfov_deg` degrees."""
    if not 0 < hfov_deg < 180 or image_width_px < 1:
        raise ValueError(f'need 0 < hfov_deg < 180 and a positive width, got {hfov_deg}, '
                         f'{image_width_px}')
    return (image_width_px / 2) / math.tan(math.radians(hfov_deg) / 2)


def face_width_px(distance_m: float, image_width_px: int, hfov_deg: float,
                  detect_max_side: int = 0, image_height_px: int | None = None,
                  face_width_m: float = FACE_WIDTH_M) -> float:
    """Width in pixels of a face `distance_m` metres away, in the image MTCNN sees: the frame,
    or its copy whose longer side is `detect_max_side` (0: the frame; the height is needed only
    when it is the longer side)."""
    if distance_m <= 0:
        raise ValueError(f'distance_m must be > 0, got {distance_m}')
    px = face_width_m * focal_px(image_width_px, hfov_deg) / distance_m
    longer = max(image_width_px, image_height_px or 0)
    if detect_max_side and longer > detect_max_side:
        px *= detect_max_side / longer
    return px


def farthest_face_m(min_face_px: float, image_width_px: int, hfov_deg: float,
                    detect_max_side: int = 0, image_height_px: int | None = None,
                    face_width_m: float = FACE_WIDTH_M) -> float:
    """The distance at which a face shrinks to `min_face_px` pixels of the detection image."""
    at_one_metre = face_width_px(1.0, image_width_px, hfov_deg, detect_max_side,
                                 image_height_px, face_width_m)
    return at_one_metre / min_face_px
