"""Stable face ids across temporal segments: a small tracker over per-segment face boxes.

The face node sees one frame per segment (0.5-0.6 s apart), so a face can move a fair way
between two looks and motion models buy little: each segment's boxes are matched to the tracks
of the previous ones by overlap (IoU), then, for what is left, by the distance of the centres
relative to the face's size; a match continues its track's id. A track that finds no box keeps
its id for `max_missed` segments (a missed detection, a head turned for a moment) and is then
forgotten: a face that comes back later gets a new id, as in ROS4HRI, where face ids name one
continuous appearance and re-identification of persons is another component's job.

Greedy matching (best pair first) rather than an optimal assignment: a frame holds a handful of
faces, and greedy is exact whenever the best pairs do not compete, which is the common case for
faces that do not overlap.

Boxes are float (K, 4) arrays of x1, y1, x2, y2 in pixels.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class TrackerSettings:
    iou_min: float = 0.3      # overlap that continues a track outright
    # Centres closer than this many face widths (the mean of the two boxes' widths) continue a
    # track without overlap: a face that moved more than its size between two segments.
    centre_max: float = 1.0
    max_missed: int = 3       # segments a track survives without a box (1.5 s at T = 0.5 s)

    def __post_init__(self) -> None:
        if not 0.0 < self.iou_min <= 1.0 or self.centre_max < 0 or self.max_missed < 0:
            raise ValueError('tracker settings: iou_min in (0, 1], centre_max >= 0 and '
                             f'max_missed >= 0, got {self}')


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair: (K, 4), (M, 4) boxes -> float64 (K, M)."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def centre_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Distance of every pair's centres in units of their mean width: (K, 4), (M, 4) -> (K, M).
    """
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    ca = (a[:, :2] + a[:, 2:]) / 2
    cb = (b[:, :2] + b[:, 2:]) / 2
    dist = np.linalg.norm(ca[:, None, :] - cb[None, :, :], axis=-1)
    width = ((a[:, 2] - a[:, 0])[:, None] + (b[:, 2] - b[:, 0])[None, :]) / 2
    return np.divide(dist, width, out=np.full_like(dist, np.inf), where=width > 0)


def match(tracks: np.ndarray, boxes: np.ndarray,
          settings: TrackerSettings) -> list[tuple[int, int]]:
    """Pairs (track index, box index): first by IoU >= iou_min, best first, then what is left by
    centre distance <= centre_max, closest first. Each track and box appears at most once."""
    pairs: list[tuple[int, int]] = []
    if len(tracks) == 0 or len(boxes) == 0:
        return pairs
    used_t: set[int] = set()
    used_b: set[int] = set()
    iou = iou_matrix(tracks, boxes)
    dist = centre_distance(tracks, boxes)
    for score, ok in ((-iou, iou >= settings.iou_min), (dist, dist <= settings.centre_max)):
        for flat in np.argsort(score, axis=None, kind='stable'):
            t, b = np.unravel_index(flat, score.shape)
            if ok[t, b] and t not in used_t and b not in used_b:
                pairs.append((int(t), int(b)))
                used_t.add(int(t))
                used_b.add(int(b))
    return pairs


@dataclass
class _Track:
    face_id: str
    box: np.ndarray
    missed: int = 0


@dataclass
class FaceTracker:
    """Per-segment boxes in, one id per box out; ids are `prefix` + a counter (never reused)."""

    settings: TrackerSettings = field(default_factory=TrackerSettings)
    prefix: str = 'f'
    _tracks: list[_Track] = field(default_factory=list)
    _counter: itertools.count = field(default_factory=lambda: itertools.count(1))
    started: int = 0          # tracks ever started
    forgotten: int = 0        # tracks dropped after max_missed segments without a box

    def update(self, boxes: np.ndarray) -> list[str]:
        """The ids of this segment's boxes (float (K, 4), pixels), in the boxes' order."""
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        old = np.array([t.box for t in self._tracks]).reshape(-1, 4)
        pairs = match(old, boxes, self.settings)
        ids: list[str | None] = [None] * len(boxes)
        matched_tracks = set()
        for t, b in pairs:
            track = self._tracks[t]
            track.box, track.missed = boxes[b].copy(), 0
            ids[b] = track.face_id
            matched_tracks.add(t)
        kept = []
        for i, track in enumerate(self._tracks):
            if i not in matched_tracks:
                track.missed += 1
                if track.missed > self.settings.max_missed:
                    self.forgotten += 1
                    continue
            kept.append(track)
        self._tracks = kept
        for b, face_id in enumerate(ids):
            if face_id is None:
                ids[b] = f'{self.prefix}{next(self._counter)}'
                self._tracks.append(_Track(ids[b], boxes[b].copy()))
                self.started += 1
        return ids

    @property
    def active_ids(self) -> tuple[str, ...]:
        """Ids still tracked, including those missed for at most max_missed segments."""
        return tuple(t.face_id for t in self._tracks)

    def reset(self) -> None:
        """Forget every track (stamps went backwards); ids keep counting up."""
        self._tracks = []
