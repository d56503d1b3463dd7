"""A camera stream cut into segments: per segment the frame nearest its reference time, and
the face crop of that frame alone (what the face_crop node does, without ROS)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from lightmer.core.features import FaceCropper, select_largest_confident
from lightmer.core.segments import (
    reference_time,
    segment_index,
)
from lightmer.stream.follow import FaceFollower, FollowSettings
from lightmer.stream.settings import StreamSettings


class FrameSelector:
    """Per segment, the frame nearest its reference time, emitted once.

    Frames arrive in stamp order. A segment is emitted as soon as a frame at or after its
    reference time arrives (later frames can only be farther), or when a frame of a later
    segment arrives; so with reference 'start' the first frame of a segment is emitted at once.
    The payload is opaque (the node keeps the unconverted message there, so only emitted frames
    are ever decoded).
    A stamp earlier than the previous one (a bag looping) resets the selector and counts it; a
    step forward of at least `jump_s` is counted in `jumps` (the caller logs it).
    """

    def __init__(self, segment_s: float, reference: str,
                 jump_s: float = StreamSettings.stamp_jump_s):
        reference_time(0, segment_s, reference)   # validate early, with the grid's own message
        self.segment_s = segment_s
        self.reference = reference
        self.jump_s = jump_s
        self.resets = 0
        self.jumps = 0
        self._clear()

    def _clear(self) -> None:
        self._last_t: float | None = None
        self._k: int | None = None                      # segment of the held candidate
        self._candidate: tuple[float, Any] | None = None  # (t, payload) nearest so far
        self._done_k: int | None = None                  # last segment emitted

    def push(self, t: float, payload: Any) -> list[tuple[int, float, Any]]:
        """Offer a frame stamped `t` (seconds). Returns [(k, t_frame, payload)] emitted now."""
        if self._last_t is not None and t < self._last_t:
            self.resets += 1
            self._clear()
        elif self._last_t is not None and t - self._last_t >= self.jump_s:
            self.jumps += 1
        self._last_t = t
        out: list[tuple[int, float, Any]] = []
        k = segment_index(t, self.segment_s)
        if self._k is not None and k != self._k:
            self._emit_candidate(out)
        if self._done_k is not None and k <= self._done_k:
            return out                                   # this segment already has its frame
        ref = reference_time(k, self.segment_s, self.reference)
        if self._candidate is None or abs(t - ref) < abs(self._candidate[0] - ref):
            self._candidate = (t, payload)
            self._k = k
        if t >= ref:
            self._emit_candidate(out)
        return out

    def _emit_candidate(self, out: list) -> None:
        if self._candidate is not None and self._k is not None:
            out.append((self._k, self._candidate[0], self._candidate[1]))
            self._done_k = self._k
        self._candidate = None
        self._k = None


@dataclass
class FaceCounts:
    frames: int = 0      # frames offered
    segments: int = 0    # segments whose frame was chosen
    published: int = 0   # of those, with a face crop
    no_face: int = 0     # of those, no face found
    rejected: int = 0    # frames refused: malformed, or undecodable once chosen
    undecodable: int = 0  # of those, chosen frames that failed to decode (no crop)
    resets: int = 0      # stamps went backwards (a bag looping)
    jumps: int = 0       # stamps jumped forward by stamp_jump_s or more
    whole_frame: int = 0  # chosen frames MTCNN searched whole (stream.follow)
    followed: int = 0    # chosen frames searched only around the last segment's face


@dataclass(frozen=True)
class FaceResult:
    """The outcome of one segment's chosen frame."""

    k: int
    t_frame: float                 # the chosen frame's stamp, seconds
    crop: np.ndarray | None        # uint8 (98, 80); None: no face, or the frame was refused
    payload: Any                   # what was pushed with the frame
    error: str = ''                # why the chosen frame could not be decoded


class BaseFaceSegmenter:
    """What every face segmenter does before it looks for faces: per segment the input nearest
    the reference time (`FrameSelector`; an input is a frame, or the robot's list of tracked
    faces), and the counts of that in `counts` (the nodes' /diagnostics keys): inputs offered
    (`frames`), inputs refused (`rejected`), segments settled (`segments`), stamps going
    backwards (`resets`: then `_restart()`) and jumping forward (`jumps`).

    Subclasses turn each chosen input into their faces.
    """

    def __init__(self, segment_s: float, reference: str, jump_s: float, counts: Any):
        self._selector = FrameSelector(segment_s, reference, jump_s)
        self.counts = counts

    def reject(self) -> None:
        """The caller refused an input before offering it (a malformed message)."""
        self._count_input()
        self.counts.rejected += 1

    def _choose(self, t: float, payload: Any) -> list[tuple[int, float, Any]]:
        """Offer an input stamped `t` (seconds): [(k, t_chosen, payload)] settled now."""
        self._count_input()
        resets, jumps = self._selector.resets, self._selector.jumps
        chosen = self._selector.push(t, payload)
        if self._selector.resets != resets:
            self.counts.resets += 1
            self._restart()
        self.counts.jumps += self._selector.jumps - jumps
        self.counts.segments += len(chosen)
        return chosen

    def _count_input(self) -> None:
        self.counts.frames += 1

    def _restart(self) -> None:
        """Stamps went backwards (a bag looping): forget what is kept across segments."""


class FaceSegmenter(BaseFaceSegmenter):
    """Per segment, the face crop of the frame nearest its reference time: `FrameSelector`
    chooses the frame, then MTCNN runs on that frame alone, following the last segment's faces
    (`stream.follow.FaceFollower`), and the largest confident face is cropped."""

    def __init__(self, cropper: FaceCropper, segment_s: float, settings: StreamSettings):
        super().__init__(segment_s, settings.reference, settings.stamp_jump_s, FaceCounts())
        self._cropper = cropper
        self.follower = FaceFollower(cropper, FollowSettings.of(settings))

    def push(self, t: float, payload: Any,
             decode: Callable[[Any], np.ndarray] | None = None) -> list[FaceResult]:
        """Offer a frame stamped `t` (seconds). `decode(payload)` gives the uint8 (H, W, 3) RGB
        frame (the payload itself by default) and may raise ValueError; it runs only on the
        chosen frames. Returns the segments whose frame was chosen now."""
        out = []
        for k, t_frame, selected in self._choose(t, payload):
            try:
                frame = selected if decode is None else decode(selected)
                crop = self._crop(frame)
            except ValueError as exc:
                self.counts.rejected += 1
                self.counts.undecodable += 1
                out.append(FaceResult(k, t_frame, None, selected, str(exc)))
                continue
            if crop is None:
                self.counts.no_face += 1
            else:
                self.counts.published += 1
            out.append(FaceResult(k, t_frame, crop, selected))
        return out

    def _crop(self, frame: np.ndarray) -> np.ndarray | None:
        """The crop of the frame's largest confident face, or None."""
        box = select_largest_confident(*self.follower.detect(frame), min_prob=0.0)
        self.counts.whole_frame = self.follower.counts.whole
        self.counts.followed = self.follower.counts.followed
        if box is None:
            return None
        try:
            return self._cropper.crop(frame, box)
        except ValueError:   # a box entirely outside the frame: treat as no face
            return None

    def _restart(self) -> None:
        self.follower.reset()
