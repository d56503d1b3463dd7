"""Face detection that follows the faces of the last segment instead of searching every frame.

Segments are half a second apart and a person talking to a robot barely moves in that time, so
MTCNN need not scan the whole frame for them: `FaceFollower` looks in a box around each face
of the last segment (`SearchRegion`: the face grown by `margin` face sizes on every side,
scanned only at the pyramid scales for faces of at least `min_scale` times its size), on the
very pixel grid of the whole frame's pyramid (`lightmer.core.mtcnn.detect_faces`), so a face
found there is the face whole-frame detection finds. It searches the whole frame instead:

- when it follows nobody (the first segment, a segment without a face, a new frame size);
- every `every` segments, to see faces that entered elsewhere (`counts.periodic`);
- when a followed face is not found in its box (`counts.lost`), or only with a probability
  below `min_prob` (`counts.weak`: turning away, occluded);
- when a face found lies within `guard` face sizes of its box's edge (`counts.edge`): it is
  moving out of the box, and the candidates that MTCNN would have merged into its box on the
  whole frame may lie beyond it.

In each of these the segment's own frame is searched again, whole: the faces returned are
always whole-frame MTCNN's, except for faces that appeared elsewhere since the last whole-frame
search (seen at the next one, at most `every` segments later). The settings' defaults were
chosen by measurement (docs/RUNTIME.md, "Following the face").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightmer.core.features import FaceCropper
from lightmer.core.mtcnn import SearchRegion
from lightmer.stream.settings import StreamSettings


@dataclass(frozen=True)
class FollowSettings:
    # Whole-frame search at least every this many segments; 1: every segment (no following).
    every: int = StreamSettings.follow_every
    margin: float = 1.0       # the box around a face: its size this many times on each side
    guard: float = 0.5        # a face nearer its box's edge than this many sizes: whole frame
    # Smallest face looked for in the box, as a fraction of the followed face's size (and never
    # below the detector's min_face_size). Measured (scripts/measure_follow.py): 0.25 gave
    # whole-frame boxes on every segment, 0.4 changed one moving face's box (IoU 0.94), as
    # candidates from smaller scales can win the final suppression.
    min_scale: float = 0.25
    min_prob: float = 0.99    # a followed face found less sure than this: whole frame
    # Boxes adding up to more than this fraction of the frame's area (a crowd): search it whole,
    # one P-Net pass per scale instead of one per box.
    max_area: float = 1.0

    def __post_init__(self) -> None:
        if self.every < 1 or self.margin <= self.guard or self.guard < 0:
            raise ValueError(f'follow settings: every >= 1 and margin > guard >= 0, got {self}')
        if not 0 <= self.min_scale <= 1 or not 0 <= self.min_prob <= 1 or self.max_area <= 0:
            raise ValueError(f'follow settings: min_scale and min_prob in [0, 1], max_area > 0, '
                             f'got {self}')

    @classmethod
    def of(cls, settings: StreamSettings) -> FollowSettings:
        """The follower of the nodes' processing settings."""
        return cls(every=settings.follow_every)


@dataclass
class FollowCounts:
    whole: int = 0       # frames searched whole (first, periodic, lost, weak, edge, nobody)
    followed: int = 0    # frames searched only around the last segment's faces
    periodic: int = 0    # whole because `every` segments had passed
    lost: int = 0        # whole because a followed face was not found in its box
    weak: int = 0        # whole because a followed face was found below min_prob
    edge: int = 0        # whole because a face found neared its box's edge


class FaceFollower:
    """Frames of consecutive segments in, their confident faces out (as whole-frame MTCNN
    gives them, see the module docstring).

    cropper: the `FaceCropper` whose detector runs (whole frames and boxes alike); faces are
    those whose probability reaches its `cfg.face_min_prob`.
    """

    def __init__(self, cropper: FaceCropper, settings: FollowSettings | None = None):
        self.cropper = cropper
        self.settings = settings or FollowSettings()
        self.counts = FollowCounts()
        self.reset()

    def reset(self) -> None:
        """Follow nobody: the next frame is searched whole."""
        self._boxes = np.zeros((0, 4))
        self._shape: tuple[int, ...] = ()
        self._since_whole = 0

    def detect(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The confident faces of one uint8 (H, W, 3) RGB frame: boxes float64 (K, 4) x1 y1 x2
        y2 frame pixels, probs float64 (K,)."""
        followed = self._followed(frame.shape)
        found = None
        if followed is not None:
            found = self._search(frame, followed)
        if found is None:
            found = self._confident(*self.cropper.detect_all([frame])[0])
            self.counts.whole += 1
            self._since_whole = 0
        else:
            self.counts.followed += 1
            self._since_whole += 1
        self._boxes, self._shape = found[0], frame.shape
        return found

    def _followed(self, shape: tuple[int, ...]) -> list[SearchRegion] | None:
        """The boxes to search this frame, or None: the whole frame."""
        if not len(self._boxes) or shape != self._shape:
            return None
        if self._since_whole + 1 >= self.settings.every:
            self.counts.periodic += 1
            return None
        regions = [self._region(b, shape) for b in self._boxes]
        area = sum((r.x1 - r.x0) * (r.y1 - r.y0) for r in regions)
        return None if area > self.settings.max_area * shape[0] * shape[1] else regions

    def _region(self, box: np.ndarray, shape: tuple[int, ...]) -> SearchRegion:
        size = _size(box)
        grow = self.settings.margin * size
        return SearchRegion(max(0, int(np.floor(box[0] - grow))),
                            max(0, int(np.floor(box[1] - grow))),
                            min(shape[1], int(np.ceil(box[2] + grow))),
                            min(shape[0], int(np.ceil(box[3] + grow))),
                            self.settings.min_scale * size)

    def _search(self, frame: np.ndarray, regions: list[SearchRegion]
                ) -> tuple[np.ndarray, np.ndarray] | None:
        """The faces in the followed boxes, or None when the frame must be searched whole."""
        boxes, probs = self._confident(*self.cropper.detect_in(frame, regions))
        h, w = frame.shape[:2]
        for region in regions:
            mine = [i for i, b in enumerate(boxes) if _centre_in(b, region)]
            if not mine:
                self.counts.lost += 1
                return None
            if max(probs[i] for i in mine) < self.settings.min_prob:
                self.counts.weak += 1
                return None
            if any(_near_edge(boxes[i], region, self.settings.guard, w, h) for i in mine):
                self.counts.edge += 1
                return None
        return boxes, probs

    def _confident(self, boxes: np.ndarray, probs: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray]:
        keep = probs >= self.cropper.cfg.face_min_prob
        return boxes[keep], probs[keep]


def _size(box: np.ndarray) -> float:
    """A face's size: the longer side of its box, pixels."""
    return float(max(box[2] - box[0], box[3] - box[1]))


def _centre_in(box: np.ndarray, region: SearchRegion) -> bool:
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    return region.x0 <= cx < region.x1 and region.y0 <= cy < region.y1


def _near_edge(box: np.ndarray, region: SearchRegion, guard: float, width: int,
               height: int) -> bool:
    """True when `box` grown by `guard` of its size reaches past an edge of `region` that is
    not the frame's own edge (there the whole frame ends too)."""
    g = guard * _size(box)
    return ((region.x0 > 0 and box[0] - g < region.x0)
            or (region.y0 > 0 and box[1] - g < region.y0)
            or (region.x1 < width and box[2] + g > region.x1)
            or (region.y1 < height and box[3] + g > region.y1))
