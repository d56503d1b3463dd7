"""Several people at once, without ROS: every face of a segment with a stable id, and one
segment cache and sliding window per id.

`MultiFaceSegmenter` is the face node's side (face_source mtcnn): per segment the frame nearest
the reference time (faces.BaseFaceSegmenter, as for one person), every MTCNN face whose
probability reaches the model's threshold, the `max_faces` largest kept (the rest counted),
ids from `tracking.FaceTracker`, one 98x80 crop each.

`Ros4hriFaceSegmenter` is the face node's side with face_source ros4hri: no detector; the
robot's face pipeline (hri_face_detect) lists the tracked face ids per camera frame and
publishes each face's cropped image. The lists drive the segment grid (the list nearest each
reference time is the segment's "frame"); each listed face's crop nearest that stamp, within
half a segment, is gray-scaled and stretched to 98x80 as a whole (features.crop_face with the
image as the box). Ids are ROS4HRI's own.

`PeopleFuser` is the fusion node's side: one `fuser.SegmentFuser` per id, so a window only
ever averages one person's segments. The audio is shared (no speaker attribution here): each
segment's log-mel joins the faces seen in that segment, by segment id, whichever arrives first.
`audio_to` says which faces hear it:
  'all'     - every face of the segment fuses the same audio (someone in view is speaking; the
              model judges each face together with it);
  'largest' - only the largest face of the segment (the one nearest the robot, most likely the
              one addressing it) fuses the audio; the others fuse face-only segments: the one
              "no audio" input of core.missing (the log-mel of digital silence), as
              missing_policy 'single' does;
  'speaker' - the faces that speak in that segment (speaker.estimate_speakers: mouth motion
              against the voice's envelope, once per segment when its faces and log-mel have
              both arrived; speaker.audio_recipients) fuse the audio, the others face-only
              segments, as with 'largest'. The estimates are kept for the node's voice outputs
              (`take_estimates`).
An id's state is dropped once its face has been absent for `forget_after_s` (stamp seconds); a
face that comes back under a forgotten id starts afresh (`counts.returned`).
"""
from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lightmer.core.backend import LoadedModel
from lightmer.core.config import FeatureConfig
from lightmer.core.features import crop_face
from lightmer.core.missing import missing_audio_input
from lightmer.core.segments import segment_index, segment_of_reference
from lightmer.stream.faces import BaseFaceSegmenter
from lightmer.stream.follow import FaceFollower, FollowSettings
from lightmer.stream.fuser import FusionCounts, SegmentFuser, WindowResult
from lightmer.stream.settings import StreamSettings
from lightmer.stream.speaker import (
    MouthHistory,
    SpeakerEstimate,
    SpeakerSettings,
    audio_recipients,
    estimate_speakers,
)
from lightmer.stream.tracking import FaceTracker, TrackerSettings

AUDIO_TO = ('all', 'largest', 'speaker')
PRIMARY_RULES = ('largest', 'oldest')
# Segments of face and audio bookkeeping kept for the join (audio and faces arrive from two
# nodes, one may run a few segments ahead of the other).
_JOIN_SEGMENTS = 16
# Forgotten ids remembered, to count faces that come back under one (bounded: ids never end).
_FORGOTTEN_MEMORY = 256


@dataclass(frozen=True)
class TrackedFace:
    """One face of a segment: crop uint8 (H, W); box float64 (4,) x1 y1 x2 y2 frame pixels;
    mouth: its mouth motion before the segment's frame, (times float64 (M,) s relative to the
    frame, motion float32 (M,) grey levels) as speaker.MouthHistory.motion gives, or None."""

    face_id: str
    crop: np.ndarray
    box: np.ndarray
    prob: float = 1.0
    mouth: tuple[np.ndarray, np.ndarray] | None = None

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))


def with_mouths(faces: tuple[TrackedFace, ...], history: MouthHistory, t_frame: float,
                span_s: float = SpeakerSettings.span_s) -> tuple[TrackedFace, ...]:
    """The faces with their mouth motion over the `span_s` of frames up to their segment's
    frame at `t_frame` (speaker.MouthHistory, fed every camera frame)."""
    return tuple(dataclasses.replace(f, mouth=history.motion(f.box, t_frame, span_s))
                 for f in faces)


# --- face side ---------------------------------------------------------------------------------
@dataclass
class MultiFaceCounts:
    frames: int = 0        # frames offered
    segments: int = 0      # segments settled (one frame chosen each)
    faces: int = 0         # crops published
    no_face: int = 0       # segments without any face
    capped: int = 0        # confident faces beyond max_faces, not published
    rejected: int = 0      # frames dropped (malformed, undecodable) and faces not croppable
    resets: int = 0        # stamps went backwards
    jumps: int = 0         # stamps stepped forward by stamp_jump_s or more
    tracks_started: int = 0
    tracks_forgotten: int = 0
    whole_frame: int = 0   # chosen frames MTCNN searched whole (stream.follow)
    followed: int = 0      # chosen frames searched only around the last segment's faces


@dataclass(frozen=True)
class FacesResult:
    k: int
    t_frame: float
    payload: Any
    faces: tuple[TrackedFace, ...]   # largest first
    detected: int                    # confident faces found, before the cap
    error: str = ''                  # why the frame gave no faces, when it failed to decode


class MultiFaceSegmenter(BaseFaceSegmenter):
    """Frames in (stamps in order), per segment every tracked face out.

    cropper: a features.FaceCropper; MTCNN follows the faces of the last segment
    (`stream.follow.FaceFollower` with `follow`), each tracked face in its own box.
    """

    def __init__(self, cropper, segment_s: float, reference: str, max_faces: int,
                 tracker: TrackerSettings | None = None, id_prefix: str = 'f',
                 jump_s: float = StreamSettings.stamp_jump_s,
                 follow: FollowSettings | None = None):
        if max_faces < 1:
            raise ValueError(f'max_faces must be >= 1, got {max_faces}')
        super().__init__(segment_s, reference, jump_s, MultiFaceCounts())
        self.cropper = cropper
        self.max_faces = max_faces
        self.tracker = FaceTracker(tracker or TrackerSettings(), prefix=id_prefix)
        self.follower = FaceFollower(cropper, follow)

    def push(self, t: float, payload: Any,
             decode: Callable[[Any], np.ndarray] | None = None) -> list[FacesResult]:
        """Offer a frame (or a message `decode` turns into uint8 (H, W, 3) RGB) stamped `t`."""
        out = []
        for k, t_frame, selected in self._choose(t, payload):
            try:
                frame = decode(selected) if decode is not None else selected
                faces, detected = self.faces_of(frame)
            except ValueError as exc:          # messages.ConversionError is a ValueError
                self.counts.rejected += 1
                out.append(FacesResult(k, t_frame, selected, (), 0, str(exc)))
                continue
            self.counts.no_face += not faces
            self.counts.faces += len(faces)
            out.append(FacesResult(k, t_frame, selected, faces, detected))
        self.counts.tracks_started = self.tracker.started
        self.counts.tracks_forgotten = self.tracker.forgotten
        return out

    def _restart(self) -> None:
        self.tracker.reset()
        self.follower.reset()

    def faces_of(self, frame: np.ndarray) -> tuple[tuple[TrackedFace, ...], int]:
        """The tracked faces of one segment's frame, largest first, and how many were found."""
        boxes, probs = self.follower.detect(frame)          # the confident ones
        self.counts.whole_frame = self.follower.counts.whole
        self.counts.followed = self.follower.counts.followed
        found = len(boxes)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        order = np.argsort(-area, kind='stable')[:self.max_faces]
        self.counts.capped += len(boxes) - len(order)
        boxes, probs = boxes[order], probs[order]
        ids = self.tracker.update(boxes)
        faces = []
        for face_id, box, prob in zip(ids, boxes, probs, strict=True):
            try:
                crop = self.cropper.crop(frame, box)
            except ValueError:                 # a box with no area inside the frame
                self.counts.rejected += 1
                continue
            faces.append(TrackedFace(face_id, crop, box.copy(), float(prob)))
        return tuple(faces), found


@dataclass
class Ros4hriCounts:
    lists: int = 0         # tracked-id lists offered (one per camera frame upstream)
    crops_in: int = 0      # cropped images offered
    segments: int = 0
    faces: int = 0         # crops published
    no_face: int = 0       # segments whose list was empty
    capped: int = 0        # listed faces beyond max_faces, not published
    crop_missing: int = 0  # listed faces without a crop within half a segment
    rejected: int = 0      # crops that would not convert (odd encoding or size), bad ids
    resets: int = 0        # stamps went backwards
    jumps: int = 0         # stamps stepped forward by stamp_jump_s or more


class Ros4hriFaceSegmenter(BaseFaceSegmenter):
    """Tracked-id lists and per-id crops in (each stream's stamps in order), per segment every
    listed face's 98x80 crop out. decode: a crop's payload -> uint8 (h, w, 3) RGB, raising
    ValueError for one it cannot use. The lists are this segmenter's frames (`counts.lists`)."""

    def __init__(self, cfg: FeatureConfig, segment_s: float, reference: str, max_faces: int,
                 decode: Callable[[Any], np.ndarray],
                 jump_s: float = StreamSettings.stamp_jump_s):
        if max_faces < 1:
            raise ValueError(f'max_faces must be >= 1, got {max_faces}')
        super().__init__(segment_s, reference, jump_s, Ros4hriCounts())
        self.cfg, self.max_faces, self.segment_s = cfg, max_faces, segment_s
        self._decode = decode
        # per id: recent (t, payload); a few segments of a 30 Hz stream
        self._crops: dict[str, deque] = {}

    @property
    def buffered_ids(self) -> set[str]:
        """Ids whose recent crops are kept."""
        return set(self._crops)

    def push_crop(self, face_id: str, t: float, payload: Any) -> None:
        self.counts.crops_in += 1
        self._crops.setdefault(face_id, deque(maxlen=64)).append((t, payload))

    def push_tracked(self, t: float, ids: list[str]) -> list[FacesResult]:
        out = []
        for k, t_frame, listed in self._choose(t, list(ids)):
            faces = self._faces_at(t_frame, listed)
            self.counts.no_face += not faces
            self.counts.faces += len(faces)
            out.append(FacesResult(k, t_frame, listed, faces, len(listed)))
        # ids no longer listed lose their buffers once their last crop is old
        for face_id in [i for i, q in self._crops.items() if t - q[-1][0] > 2 * self.segment_s]:
            del self._crops[face_id]
        return out

    def _count_input(self) -> None:
        self.counts.lists += 1

    def _restart(self) -> None:
        self._crops.clear()

    def _faces_at(self, t_frame: float, listed: list[str]) -> tuple[TrackedFace, ...]:
        faces = []
        for face_id in listed:
            near = [(abs(t - t_frame), t, p) for t, p in self._crops.get(face_id, ())
                    if abs(t - t_frame) <= self.segment_s / 2]
            if not near:
                self.counts.crop_missing += 1
                continue
            _, _, payload = min(near, key=lambda x: x[:2])
            try:
                image = self._decode(payload)                     # uint8 (h, w, 3)
                h, w = image.shape[:2]
                box = np.array([0.0, 0.0, w, h])
                faces.append(TrackedFace(face_id, crop_face(image, box, self.cfg), box))
            except ValueError:
                self.counts.rejected += 1
        faces.sort(key=lambda f: -f.area)
        self.counts.capped += max(0, len(faces) - self.max_faces)
        return tuple(faces[:self.max_faces])


# --- fusion side -------------------------------------------------------------------------------
@dataclass
class PeopleCounts:
    people: int = 0        # ids with state now
    started: int = 0       # ids given state
    forgotten: int = 0     # ids dropped after forget_after_s without their face
    returned: int = 0      # faces that came back under an id already forgotten
    restarts: int = 0      # face segments went backwards (a bag looping): everyone forgotten
    repeated: int = 0      # a segment's faces announced twice: the second ignored


@dataclass(frozen=True)
class PersonWindow:
    face_id: str
    window: WindowResult


@dataclass
class _Person:
    fuser: SegmentFuser
    first_seen: float
    last_seen: float
    area: float = 0.0


@dataclass
class PeopleFuser:
    """One SegmentFuser per face id (`new_fuser()` builds one), audio shared per `audio_to`.

    silence_mel: float32 (n_mels, frames), core.missing's "no audio" input, fused by the faces
    that do not hear a segment ('largest', 'speaker').
    """

    new_fuser: Callable[[], SegmentFuser]
    segment_s: float
    reference: str
    silence_mel: np.ndarray
    audio_to: str = 'all'
    forget_after_s: float = 3.0
    counts: PeopleCounts = field(default_factory=PeopleCounts)
    _people: dict[str, _Person] = field(default_factory=dict)
    _faces_at: dict[int, dict[str, float]] = field(default_factory=dict)   # k -> {id: area}
    _mels_at: dict[int, tuple[float, np.ndarray]] = field(default_factory=dict)
    _mouths_at: dict[int, dict] = field(default_factory=dict)   # k -> {id: mouth}
    _heard_at: dict[int, frozenset] = field(default_factory=dict)  # k -> ids fusing its audio
    features: FeatureConfig | None = None                    # the mel's settings ('speaker')
    speaker_settings: SpeakerSettings = field(default_factory=SpeakerSettings)
    _estimates: list = field(default_factory=list)            # (k, t_ref, estimate, ids)
    _forgotten: list[str] = field(default_factory=list)
    _retired: dict[str, int] = field(default_factory=dict)   # counts of forgotten fusers
    _last_k: int | None = None                               # latest face segment

    @classmethod
    def for_model(cls, model: LoadedModel, n_segments: int, segment_s: float,
                  settings: StreamSettings, audio_to: str = 'all',
                  forget_after_s: float = 3.0) -> PeopleFuser:
        """The fuser the fusion node and the offline pipeline run: per id a SegmentFuser on the
        model's callables (N `n_segments`, T `segment_s`), and the silence the 'largest'
        policy fuses computed with the model's feature settings."""
        features = model.meta.features
        # a listener's face-only segment: the one "no audio" input (core.missing), what
        # missing_policy 'single' fuses too
        silence = missing_audio_input(features)

        def new_fuser() -> SegmentFuser:
            return SegmentFuser(model.segment_logits, model.fuse, n_segments, segment_s,
                                settings, features)

        return cls(new_fuser, segment_s, settings.reference, silence, audio_to, forget_after_s,
                   features=features)

    def __post_init__(self) -> None:
        if self.audio_to not in AUDIO_TO:
            raise ValueError(f'audio_to must be one of {AUDIO_TO}, got {self.audio_to!r}')
        if self.audio_to == 'speaker' and self.features is None:
            raise ValueError("audio_to 'speaker' needs the log-mel's feature settings")
        if not self.forget_after_s > 0:
            raise ValueError(f'forget_after_s must be > 0, got {self.forget_after_s}')

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._people)

    def fusion_counts(self) -> dict[str, int]:
        """fuser.FusionCounts summed over every id, present and forgotten."""
        total = dict.fromkeys((f.name for f in dataclasses.fields(FusionCounts)), 0)
        for counts in [self._retired, *(dataclasses.asdict(p.fuser.counts)
                                        for p in self._people.values())]:
            for key, value in counts.items():
                total[key] += value
        return total

    def primary(self, rule: str = 'largest') -> str | None:
        """The id /emotion speaks for: the largest face of its latest segment, or the id with
        state for the longest ('oldest'); None when nobody has state."""
        if not self._people:
            return None
        if rule == 'oldest':
            return min(self._people, key=lambda i: (self._people[i].first_seen, i))
        latest = max(p.last_seen for p in self._people.values())
        present = [i for i, p in self._people.items() if p.last_seen == latest]
        return max(present, key=lambda i: (self._people[i].area, i))

    def push_faces(self, t_frame: float, faces: list[TrackedFace],
                   frame_id: str = '') -> tuple[list[PersonWindow], list[str]]:
        """One segment's faces (may be empty: nobody in view). Returns the windows completed and
        the ids forgotten now (their per-id outputs can go)."""
        k = segment_index(t_frame, self.segment_s)
        gone: list[str] = []
        if self._last_k is not None and k <= self._last_k:
            if k == self._last_k:
                self.counts.repeated += 1
                return [], []
            gone = list(self._people)
            self.reset()
        self._last_k = k
        self._faces_at[k] = {f.face_id: f.area for f in faces}
        self._mouths_at[k] = {f.face_id: f.mouth for f in faces if f.mouth is not None}
        out: list[PersonWindow] = []
        for face in faces:
            person = self._people.get(face.face_id)
            if person is None:
                if face.face_id in self._forgotten:
                    self.counts.returned += 1
                person = self._people[face.face_id] = _Person(self.new_fuser(), t_frame,
                                                              t_frame)
                self.counts.started += 1
            person.last_seen, person.area = t_frame, face.area
            out += self._tag(face.face_id, person.fuser.push_face(t_frame, face.crop, frame_id))
            if k in self._mels_at:
                t_ref, mel = self._mels_at[k]
                out += self._tag(face.face_id,
                                 person.fuser.push_mel(t_ref, self._mel_for(face.face_id, k,
                                                                            mel)))
        gone += self._forget(t_frame)
        self._trim(k)
        return out, gone

    def push_mel(self, t_ref: float, mel: np.ndarray) -> list[PersonWindow]:
        """One segment's log-mel: to the faces already seen in that segment, and kept for those
        whose crops come later."""
        k = segment_of_reference(t_ref, self.segment_s, self.reference)
        self._mels_at[k] = (t_ref, mel)
        out: list[PersonWindow] = []
        for face_id in self._faces_at.get(k, {}):
            person = self._people.get(face_id)
            if person is not None:
                out += self._tag(face_id, person.fuser.push_mel(t_ref,
                                                                self._mel_for(face_id, k, mel)))
        self._trim(k)
        return out

    def reset(self) -> None:
        """Face stamps went backwards (a bag looping): forget everyone; a face seen again is
        `returned`."""
        for face_id in self._people:
            self._remember(face_id)
        self.counts.forgotten += len(self._people)
        self.counts.restarts += 1
        self._people.clear()
        for table in (self._faces_at, self._mels_at, self._mouths_at, self._heard_at):
            table.clear()
        self._last_k = None
        self.counts.people = 0

    def take_estimates(self) -> list[tuple[int, float, SpeakerEstimate, tuple[str, ...]]]:
        """The speaker estimates made since the last call: (segment k, its reference time,
        speaker.SpeakerEstimate, the ids of the faces in that segment); only with audio_to
        'speaker'."""
        out, self._estimates = self._estimates, []
        return out

    def _mel_for(self, face_id: str, k: int, mel: np.ndarray) -> np.ndarray:
        if self.audio_to == 'all':
            return mel
        if self.audio_to == 'speaker':
            if k not in self._heard_at:          # once per segment: its faces and mel are in
                t_ref = self._mels_at[k][0]
                estimate = estimate_speakers(self._mouths_at.get(k, {}), mel, self.features,
                                             self.speaker_settings)
                self._estimates.append((k, t_ref, estimate, tuple(self._faces_at[k])))
                del self._estimates[:-_JOIN_SEGMENTS]
                self._heard_at[k] = audio_recipients(estimate, self._faces_at[k])
            return mel if face_id in self._heard_at[k] else self.silence_mel
        areas = self._faces_at[k]
        largest = max(areas, key=lambda i: (areas[i], i))
        return mel if face_id == largest else self.silence_mel

    def _forget(self, t_now: float) -> list[str]:
        gone = [i for i, p in self._people.items() if t_now - p.last_seen > self.forget_after_s]
        for face_id in gone:
            self._remember(face_id)
            del self._people[face_id]
        self.counts.forgotten += len(gone)
        self.counts.people = len(self._people)
        return gone

    def _remember(self, face_id: str) -> None:
        for key, value in dataclasses.asdict(self._people[face_id].fuser.counts).items():
            self._retired[key] = self._retired.get(key, 0) + value
        self._forgotten.append(face_id)
        del self._forgotten[:-_FORGOTTEN_MEMORY]

    def _trim(self, k: int) -> None:
        for table in (self._faces_at, self._mels_at, self._mouths_at, self._heard_at):
            for old in [j for j in table if j < k - _JOIN_SEGMENTS]:
                del table[old]

    @staticmethod
    def _tag(face_id: str, windows: list[WindowResult]) -> list[PersonWindow]:
        return [PersonWindow(face_id, w) for w in windows]
