"""Message-free stream processors: what the three ROS nodes do, without ROS.

The nodes convert messages to arrays, call these, and convert the results back; the offline bag
evaluator replays a bag through the same objects without DDS. Every method takes the stamp time
explicitly (seconds, float, in the clock of the message stamps), so a replay is deterministic.

The grid (`segments.py`): segment k = [k*T, (k+1)*T) with a reference time inside it (the
centre, or the start for lower latency). One frame and one audio window per segment; a window of
N segments is fused from per-segment logits computed once and cached.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lightmer.core.config import FeatureConfig
from lightmer.core.missing import missing_audio_input, missing_face_input
from lightmer.core.segments import (
    reference_time,
    segment_index,
    segment_of_reference,
    window_indices,
)
from lightmer.stream.settings import StreamSettings


@dataclass(frozen=True)
class WindowResult:
    """One sliding-window output: probabilities over the classes for the segments it used."""

    k_last: int                    # the window's last segment
    t_ref: float                   # that segment's reference time, seconds
    probs: np.ndarray              # float64 (C,), sums to 1
    segments: tuple[int, ...]      # the cached segment ids that were averaged
    frame_id: str = ''
    # Of `segments`, how many had their own face / their own audio (the rest were filled:
    # policy 'nearest' or 'single'). vision_msgs/Classification has no field for these: the
    # fusion node reports them on /diagnostics and eval-bag in its windows and its report.
    with_face: int = 0
    with_audio: int = 0


@dataclass
class FusionCounts:
    used: int = 0        # segments with logits, i.e. model calls (both modalities, or filled)
    filled: int = 0      # of those, segments completed with a neighbour's modality ('nearest')
    face_only: int = 0   # of those, segments fused from their face alone ('single')
    audio_only: int = 0  # of those, segments fused from their audio alone ('single')
    dropped: int = 0     # segments given up after the wait (policy 'skip', or nothing near)
    no_face: int = 0     # segments the face stream reported without a face (no person)
    invalid: int = 0     # segments dropped for a non-finite log-mel or non-finite logits
    duplicates: int = 0  # a second input for a segment that already has that modality
    late: int = 0        # an input for a segment already completed or given up
    resets: int = 0      # stamps went backwards
    breaks: int = 0      # outages of one stream (>= stall_warn_s) that restarted the windows
    windows: int = 0     # windows emitted
    partial: int = 0     # of those, windows fused from fewer than N segments
    rejected: int = 0    # inputs refused by the caller (wrong encoding or shape)


@dataclass
class _Pending:
    t_ref: float
    face: np.ndarray | None = None        # uint8 (98, 80)
    mel: np.ndarray | None = None         # float32 (128, 43)
    no_face: bool = False                 # the face stream said: no face in this segment
    no_audio: bool = False                # the caller said: no audio for this face here


class SegmentFuser:
    """Pairs a face crop and a log-mel per segment id, runs the model once per segment, caches
    its (C,) logits and emits the window probabilities over the cached last N segments.

    Missing modality: a segment holding one modality is resolved as soon as the other stream
    has moved past it (streams are in order, so nothing will come), or, if that stream has
    stalled, once the newest stamp seen is `missing_wait_s` past its reference time. Then
    policy 'skip' drops it; policy 'nearest' pairs it with the same modality's input of the
    nearest segment within `nearest_max_segments` (a real face or a real sound from a moment
    earlier or later, which the model was trained on, unlike zeros), and drops it when there is
    none; policy 'single' fuses it with the missing modality's input defined once in
    `core.missing` (`fill_missing`), the very input modality dropout trains the model on, so
    one modality alone makes a segment. Each window says how many of its segments had their
    own face and their own audio (`WindowResult.with_face`, `with_audio`).
    A window is emitted when a segment completes in order (never for a segment older than one
    already emitted) and enough of its N segments are cached (`StreamSettings.window_minimum`).

    Guards (the output is always finite, non-negative and sums to 1): a non-finite log-mel, or
    a segment whose logits are not finite, is dropped and counted in `counts.invalid`; a
    fused result that is not a probability vector is not emitted (also `invalid`). A face
    stream that says "no face in segment k" (`push_no_face`) settles k at once. When one
    stream resumes after a hole of at least `stall_warn_s` between the stamps of two of its
    inputs (its node restarted, its sensor stalled), the segments cached before the hole are
    forgotten (`counts.breaks`): a window never averages segments from both sides of an outage.
    """

    def __init__(self, segment_logits: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 fuse: Callable[[np.ndarray], np.ndarray], n_segments: int, segment_s: float,
                 settings: StreamSettings, features: FeatureConfig | None = None):
        """features: the model's FeatureConfig, which sizes the missing inputs of policy
        'single' (required for it; checkpoint metadata carries it)."""
        reference_time(0, segment_s, settings.reference)
        if n_segments < 1:
            raise ValueError(f'n_segments must be >= 1, got {n_segments}')
        if settings.missing_policy == 'single' and features is None:
            raise ValueError("missing_policy 'single' needs the model's FeatureConfig "
                             '(features=meta.features): it sizes the missing inputs')
        self.features = features
        self._segment_logits = segment_logits
        self._fuse = fuse
        self.n_segments = n_segments
        self.segment_s = segment_s
        self.reference = settings.reference
        self.min_segments = settings.window_minimum(n_segments)
        self.policy = settings.missing_policy
        self.wait_s = settings.missing_wait_s
        self.nearest_max = settings.nearest_max_segments
        self.break_s = settings.stall_warn_s
        self.counts = FusionCounts()
        # Called as listener(k, t_ref, face, mel, logits) each time a segment's logits are
        # computed (what the model saw, borrowed modality included): the pool records segments
        # through it, so that it stores exactly what the nodes computed.
        self.segment_listener: Callable[[int, float, np.ndarray, np.ndarray, np.ndarray],
                                        None] | None = None
        self._clear()

    def _clear(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._faces: dict[int, np.ndarray] = {}   # recent inputs, for the 'nearest' policy
        self._mels: dict[int, np.ndarray] = {}
        self._logits: dict[int, np.ndarray] = {}
        self._frame_ids: dict[int, str] = {}
        self._own: dict[int, tuple[bool, bool]] = {}   # cached k -> (own face, own audio)
        self._given_up: set[int] = set()
        self._last_face_k: int | None = None
        self._last_mel_k: int | None = None
        self._last_face_t: float | None = None     # stamp of the last face input, seconds
        self._last_mel_t: float | None = None      # reference time of the last log-mel
        self._latest_t = -math.inf
        self._emitted_k: int | None = None

    def reject(self) -> None:
        """The caller refused an input (wrong encoding or shape)."""
        self.counts.rejected += 1

    @property
    def cached_segments(self) -> tuple[int, ...]:
        return tuple(sorted(self._logits))

    @property
    def pending_segments(self) -> tuple[int, ...]:
        """Segments holding one modality, waiting for the other."""
        return tuple(sorted(self._pending))

    def push_face(self, t: float, crop: np.ndarray, frame_id: str = '') -> list[WindowResult]:
        """A face crop (uint8 (98, 80)) from a frame stamped `t` (seconds)."""
        k = segment_index(t, self.segment_s)
        if self._backwards(k, self._last_face_k):
            return self.poll(t)
        self._after_hole(k, t, self._last_face_t)
        self._last_face_k, self._last_face_t = k, t
        p = self._pending_for(k)
        p.face = np.asarray(crop)
        self._faces[k] = p.face
        if frame_id:
            self._frame_ids[k] = frame_id
        return self._after_push(k, t)

    def push_no_face(self, t: float) -> list[WindowResult]:
        """The face stream's word that the frame stamped `t` (seconds), its segment's chosen
        frame, holds no usable face: the segment is settled now (skipped, or filled by the
        'nearest' policy) instead of after the wait."""
        k = segment_index(t, self.segment_s)
        if self._backwards(k, self._last_face_k):
            return self.poll(t)
        self._after_hole(k, t, self._last_face_t)
        self._last_face_k, self._last_face_t = k, t
        self.counts.no_face += 1
        self._pending_for(k).no_face = True
        return self._after_push(k, t)

    def push_no_audio(self, t_ref: float) -> list[WindowResult]:
        """The caller's word that the segment of reference time `t_ref` (seconds) has no audio
        for this fuser's face (a listener while someone else speaks): settled now, as
        `push_no_face` settles a segment without a face (policy 'single' fuses the face
        alone). Takes the place of that segment's log-mel in the audio stream's order."""
        k = segment_of_reference(t_ref, self.segment_s, self.reference)
        if self._backwards(k, self._last_mel_k):
            return self.poll(t_ref)
        self._after_hole(k, t_ref, self._last_mel_t)
        self._last_mel_k, self._last_mel_t = k, t_ref
        self._pending_for(k).no_audio = True
        return self._after_push(k, t_ref)

    def push_mel(self, t_ref: float, mel: np.ndarray) -> list[WindowResult]:
        """A log-mel (float32 (128, 43)) stamped with its segment's reference time (seconds).
        A mel holding NaN or inf is dropped and counted (`counts.invalid`)."""
        k = segment_of_reference(t_ref, self.segment_s, self.reference)
        if self._backwards(k, self._last_mel_k):
            return self.poll(t_ref)
        self._after_hole(k, t_ref, self._last_mel_t)
        self._last_mel_k, self._last_mel_t = k, t_ref
        mel = np.asarray(mel)
        if not np.isfinite(mel).all():
            self.counts.invalid += 1
            self._given_up.add(k)
            self._pending.pop(k, None)
            return self.poll(t_ref)
        p = self._pending_for(k)
        p.mel = mel
        self._mels[k] = p.mel
        return self._after_push(k, t_ref)

    def poll(self, t_now: float) -> list[WindowResult]:
        """Resolve half-complete segments whose other modality will not come.

        Each stream is in segment order, so once the missing modality's stream has passed k
        its input for k will never arrive: resolved at once, whatever the processing lag.
        Otherwise (that stream stalled) after `missing_wait_s` of stamp time past the reference
        time.
        """
        self._latest_t = max(self._latest_t, t_now)
        out: list[WindowResult] = []
        for k in sorted(self._pending):
            p = self._pending[k]
            face_known = p.face is not None or p.no_face or (
                self._last_face_k is not None and self._last_face_k > k)
            mel_known = p.mel is not None or p.no_audio or (
                self._last_mel_k is not None and self._last_mel_k > k)
            if not (face_known and mel_known) and self._latest_t - p.t_ref < self.wait_s:
                continue
            del self._pending[k]
            own = (p.face is not None, p.mel is not None)
            if p.face is None and p.mel is None:     # no-face and no-audio words: nothing
                self._given_up.add(k)
            elif self.policy == 'nearest' and self._fill(k, p):
                self.counts.filled += 1
                out.extend(self._complete(k, p.face, p.mel, own))
            elif self.policy == 'single':
                self.counts.face_only += own[0]
                self.counts.audio_only += own[1]
                out.extend(self._complete(k, *fill_missing(p.face, p.mel, self.features), own))
            else:
                self.counts.dropped += not p.no_face    # no person: counted as no_face
                self._given_up.add(k)
        self._prune()
        return out

    # --- internals ---------------------------------------------------------------------------
    def _backwards(self, k: int, last_k: int | None) -> bool:
        """True when the input must be ignored; resets the caches on a jump backwards."""
        if last_k is None or k > last_k:
            if k in self._logits or k in self._given_up:
                self.counts.late += 1
                return True
            return False
        if k == last_k:
            self.counts.duplicates += 1
            return True
        if k in self._logits or k in self._given_up:
            self.counts.late += 1
            return True
        self.counts.resets += 1
        self._clear()
        return False

    def _after_hole(self, k: int, t: float, last_t: float | None) -> None:
        """A stream's input for segment k, stamped `t`, follows its previous one, stamped
        `last_t`: when the two are at least break_s apart, forget what was cached before k
        (the windows start again).

        Measured between the stamps, as the fusion node's stall warning measures silence
        between arrivals, so an outage /diagnostics reports always restarts the windows
        (counting only whole segments missed between the two would overlook up to one T).
        """
        if last_t is None or t - last_t < self.break_s - 1e-9:
            return
        self.counts.breaks += 1
        for d in (self._logits, self._faces, self._mels, self._frame_ids, self._own):
            for j in [j for j in d if j < k]:
                del d[j]

    def _pending_for(self, k: int) -> _Pending:
        if k not in self._pending:
            self._pending[k] = _Pending(t_ref=reference_time(k, self.segment_s, self.reference))
        return self._pending[k]

    def _after_push(self, k: int, t: float) -> list[WindowResult]:
        out: list[WindowResult] = []
        p = self._pending[k]
        if p.face is not None and p.mel is not None:
            del self._pending[k]
            out.extend(self._complete(k, p.face, p.mel, (True, True)))
        out.extend(self.poll(t))
        return out

    def _fill(self, k: int, p: _Pending) -> bool:
        source = self._faces if p.face is None else self._mels
        near = [j for j in source if j != k and abs(j - k) <= self.nearest_max]
        if not near:
            return False
        j = min(near, key=lambda i: (abs(i - k), i))    # nearest; the earlier one on a tie
        if p.face is None:
            p.face = source[j]
        else:
            p.mel = source[j]
        return True

    def _complete(self, k: int, face: np.ndarray, mel: np.ndarray,
                  own: tuple[bool, bool]) -> list[WindowResult]:
        """own: whether the segment had its own (face, audio), for the window's counts."""
        logits = np.asarray(self._segment_logits(face, mel), dtype=np.float64)
        if not np.isfinite(logits).all():
            self.counts.invalid += 1
            self._given_up.add(k)
            return []
        self._logits[k] = logits
        self._own[k] = own
        if self.segment_listener is not None:
            self.segment_listener(k, reference_time(k, self.segment_s, self.reference), face,
                                  mel, logits)
        self.counts.used += 1
        if self._emitted_k is not None and k <= self._emitted_k:
            return []                      # too late for its own window; later ones use it
        ks = tuple(j for j in window_indices(k, self.n_segments) if j in self._logits)
        if len(ks) < self.min_segments:
            return []
        probs = np.asarray(self._fuse(np.stack([self._logits[j] for j in ks])),
                           dtype=np.float64)
        if not is_probability_vector(probs):
            self.counts.invalid += 1
            return []
        self._emitted_k = k
        self.counts.windows += 1
        self.counts.partial += len(ks) < self.n_segments
        frame_id = self._frame_ids.get(k) or next(
            (self._frame_ids[j] for j in reversed(ks) if j in self._frame_ids), '')
        return [WindowResult(k_last=k, t_ref=reference_time(k, self.segment_s, self.reference),
                             probs=probs, segments=ks, frame_id=frame_id,
                             with_face=sum(self._own[j][0] for j in ks),
                             with_audio=sum(self._own[j][1] for j in ks))]

    def _prune(self) -> None:
        newest = max([*self._logits, *self._pending, *self._faces, *self._mels], default=None)
        if newest is None:
            return
        # The oldest window still to come ends at the oldest pending segment (one stream may
        # run segments ahead of the other), so keep the N before that.
        base = min(self._pending, default=newest)
        keep_logits = base - self.n_segments
        keep_inputs = base - self.n_segments - self.nearest_max
        for d, floor in ((self._logits, keep_logits), (self._faces, keep_inputs),
                         (self._mels, keep_inputs), (self._frame_ids, keep_logits),
                         (self._own, keep_logits)):
            for j in [j for j in d if j < floor]:
                del d[j]
        self._given_up = {j for j in self._given_up if j >= keep_inputs}


def fill_missing(face: np.ndarray | None, mel: np.ndarray | None,
                 features: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """One segment's (face, log-mel) with a missing one (None) replaced by its input defined in
    `core.missing` for `features` (the model's): a float32 (1, H, W) face input, which the
    model callables take beside uint8 crops (`core.backend.face_batch`), or the log-mel of
    digital silence. What policy 'single' fuses; anything else that hands the model one
    modality of a segment (a listener's face without their voice) calls it too."""
    if face is None and mel is None:
        raise ValueError('a segment needs at least one modality to fill the other')
    return (missing_face_input(features) if face is None else face,
            missing_audio_input(features) if mel is None else mel)


def is_probability_vector(probs: np.ndarray, tolerance: float = 1e-6) -> bool:
    """float (C,): every entry finite and >= 0, summing to 1 within `tolerance`: what every
    `emotion` message must carry."""
    p = np.asarray(probs, dtype=np.float64)
    return bool(p.ndim == 1 and p.size and np.isfinite(p).all() and (p >= 0).all()
                and abs(p.sum() - 1.0) <= tolerance)


# What a consumer should suspect when one input of the fusion stops (stall_status messages).
_STALL_CAUSE = {'face_crop': 'the face_crop node, the camera or their link is down',
                'log_mel': 'the audio_feature node, the microphone or their link is down'}


def stall_status(silent_s: dict[str, float], warn_s: float,
                 error_s: float) -> tuple[str, str]:
    """The health of two inputs from how long each has been silent.

    Args:
        silent_s: input name ('face_crop', 'log_mel') -> seconds since its last message (since
            the node started, for one never seen). warn_s <= error_s, seconds.
    Returns:
        ('ok' | 'warn' | 'error', message). An input silent for warn_s (error_s) while the
        other flows (silent for less than warn_s) is a stall: 'warn' ('error'), with a message
        naming it and what is likely down. Both flowing, or both silent (nothing to fuse:
        sensors off, a replay paused), is 'ok'.
    """
    flowing = [name for name, age in silent_s.items() if age < warn_s]
    if len(flowing) != 1:
        return 'ok', '' if flowing else 'no input on face_crop or log_mel'
    (stalled, age), = ((n, a) for n, a in silent_s.items() if n not in flowing)
    level = 'error' if age >= error_s else 'warn'
    return level, (f'{stalled} silent for {age:.1f} s while {flowing[0]} flows: '
                   f'{_STALL_CAUSE.get(stalled, "its source is down")}')
