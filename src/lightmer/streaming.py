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
from typing import Any

import numpy as np

from lightmer.config import FeatureConfig
from lightmer.features import (
    audio_window,
    face_to_input,
    is_digital_silence,
    log_mel,
    resample,
)
from lightmer.segments import reference_time, segment_index, window_indices

MISSING_POLICIES = ('skip', 'nearest')
# A forward stamp step at least this long is a jump (a clock set, a replay seek, an outage of
# hours), logged and counted once rather than as the segments it skipped. Seconds.
DEFAULT_JUMP_S = 10.0
# A hole at least this long in one input stream of the fuser (its node restarting, its sensor
# stalled) ends the run of windows: no window averages segments from both sides. Seconds.
DEFAULT_BREAK_S = 3.0


def segment_of_reference(t_ref: float, segment_s: float, anchor: str) -> int:
    """Inverse of `segments.reference_time`: the id k whose reference time is `t_ref`.

    Rounds instead of flooring, because a reference time that went through a message stamp
    (integer nanoseconds) can land a hair below k*T with anchor 'start'.
    """
    offset = 0.5 if anchor == 'centre' else 0.0
    reference_time(0, segment_s, anchor)   # validates the anchor with a helpful message
    return int(round(t_ref / segment_s - offset))


class FrameSelector:
    """Per segment, the frame nearest its reference time, emitted once.

    Frames arrive in stamp order. A segment is emitted as soon as a frame at or after its
    reference time arrives (later frames can only be farther), or when a frame of a later
    segment arrives; so with anchor 'start' the first frame of a segment is emitted at once.
    The payload is opaque (the node keeps the unconverted message there, so only emitted frames
    are ever decoded).
    A stamp earlier than the previous one (a bag looping) resets the selector and counts it; a
    step forward of at least `jump_s` is counted in `jumps` (the caller logs it).
    """

    def __init__(self, segment_s: float, anchor: str = 'centre', jump_s: float = DEFAULT_JUMP_S):
        reference_time(0, segment_s, anchor)   # validate early, with the grid's own message
        self.segment_s = segment_s
        self.anchor = anchor
        self.jump_s = jump_s
        self.resets = 0
        self.jumps = 0
        self._clear()

    def _clear(self) -> None:
        self._last_t: float | None = None
        self._k: int | None = None                      # segment of the held candidate
        self._candidate: tuple[float, Any] | None = None  # (t, payload) nearest so far
        self._done_k: int | None = None                  # last segment emitted

    def reset(self) -> None:
        self._clear()

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
        ref = reference_time(k, self.segment_s, self.anchor)
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
class AudioCounts:
    published: int = 0
    gaps: int = 0        # segments whose window a hole (shorter than jump_s) left uncovered
    jumps: int = 0       # forward stamp jumps of at least jump_s (not counted in gaps)
    resets: int = 0      # stamps went backwards
    discontinuities: int = 0
    invalid: int = 0     # windows refused: their power spectrum overflowed (huge samples)
    silent: int = 0      # published windows of digital silence (features.is_digital_silence)


class AudioSegmenter:
    """Stamped mono chunks in; per segment the log-mel of the window centred on its reference.

    Chunks are placed back to back while each stamp agrees with the end of the previous chunk
    within `gap_tolerance_s` (capture stamps jitter; the sample count is the better clock).
    A later stamp starts a new run: segments whose window needs the missing audio are counted
    in `counts.gaps` and skipped, unless the step is a jump of at least `jump_s` (counted once
    in `counts.jumps`: a clock set or a replay seek is not billions of lost segments). An
    earlier stamp beyond the tolerance resets everything. A window whose power spectrum
    overflows is refused (`counts.invalid`); windows of digital silence are published and
    counted (`counts.silent`).
    Audio is kept at its own rate; each window is resampled to cfg.sample_rate with a margin on
    both sides, so chunk edges never touch the resampler's edge effects.
    """

    # Extra audio resampled on each side of a window when the input is not at cfg.sample_rate.
    RESAMPLE_MARGIN_S = 0.05

    def __init__(self, cfg: FeatureConfig, segment_s: float, anchor: str = 'centre',
                 gap_tolerance_s: float = 0.05, jump_s: float = DEFAULT_JUMP_S):
        reference_time(0, segment_s, anchor)
        if gap_tolerance_s < 0:
            raise ValueError(f'gap_tolerance_s must be >= 0, got {gap_tolerance_s}')
        if not jump_s > gap_tolerance_s:
            raise ValueError(f'jump_s ({jump_s}) must exceed gap_tolerance_s '
                             f'({gap_tolerance_s})')
        self.cfg = cfg
        self.segment_s = segment_s
        self.anchor = anchor
        self.gap_tolerance_s = gap_tolerance_s
        self.jump_s = jump_s
        self.counts = AudioCounts()
        self._clear()

    def _clear(self) -> None:
        self._sr: int | None = None
        self._run_t0 = 0.0                 # stamp of the run's first sample
        self._base = 0                     # samples of the run already dropped from the buffer
        self._buf = np.zeros(0, dtype=np.float32)
        self._next_k: int | None = None    # first segment not yet published or skipped
        self._broken = False               # the next chunk starts a new run

    def reset(self) -> None:
        self._clear()

    def warm_up(self) -> None:
        """Compute one window of silence at 8 kHz, so that the first real segment does not pay
        for importing librosa, the resampler and the mel filters (seconds on a small CPU)."""
        silence = np.zeros(int(self.cfg.window_s * 8000) + 1, dtype=np.float32)
        log_mel(audio_window(resample(silence, 8000, self.cfg.sample_rate),
                             self.cfg.window_s / 2, self.cfg), self.cfg)

    def discontinuity(self) -> None:
        """The caller dropped a chunk: the next chunk starts a new run (windows across it skip)."""
        self.counts.discontinuities += 1
        self._broken = True

    @property
    def _end_t(self) -> float:
        return self._run_t0 + (self._base + self._buf.shape[0]) / self._sr

    def push(self, t_start: float, samples: np.ndarray,
             sr: int) -> list[tuple[int, float, np.ndarray]]:
        """Add a chunk; return [(k, t_ref, mel float32 (n_mels, mel_frames))] ready now.

        Args:
            t_start: stamp of the chunk's first sample, seconds.
            samples: float (n,) mono in [-1, 1] (features.to_mono makes it).
            sr: the chunk's sample rate in Hz.
        Raises ValueError (state unchanged) on non-finite samples, a non-1-D array or sr <= 0.
        """
        x = np.asarray(samples, dtype=np.float32)
        if x.ndim != 1:
            raise ValueError(f'expected mono (n,) samples, got shape {x.shape}; use to_mono')
        if sr <= 0:
            raise ValueError(f'sample rate must be positive, got {sr}')
        if not np.isfinite(x).all():
            raise ValueError('audio chunk holds NaN or infinite samples; dropped')
        if not math.isfinite(t_start):
            raise ValueError(f'chunk stamp is not finite: {t_start}')
        if self._sr is not None and sr != self._sr:
            self._clear()                  # a new stream format: start over, nothing to mix
        if self._sr is None:
            self._start_run(t_start, x, sr, first=True)
        else:
            delta = t_start - self._end_t
            if delta < -self.gap_tolerance_s:
                self.counts.resets += 1
                self._clear()
                self._start_run(t_start, x, sr, first=True)
            elif delta >= self.jump_s:
                self.counts.jumps += 1
                self._start_run(t_start, x, sr, first=True)
            elif delta > self.gap_tolerance_s or self._broken:
                self._start_run(t_start, x, sr, first=False)
            else:
                self._buf = np.concatenate([self._buf, x])
        return self._drain()

    def _start_run(self, t0: float, x: np.ndarray, sr: int, first: bool) -> None:
        self._sr = sr
        self._run_t0 = t0
        self._base = 0
        self._buf = x.copy()
        self._broken = False
        # The first segment whose window lies wholly inside this run.
        k0 = self._first_covered(t0)
        if first or self._next_k is None:
            self._next_k = k0
        elif k0 > self._next_k:
            self.counts.gaps += k0 - self._next_k
            self._next_k = k0

    def _first_covered(self, t0: float) -> int:
        half = self.cfg.window_s / 2
        k = segment_index(t0 + half, self.segment_s) - 1
        while reference_time(k, self.segment_s, self.anchor) - half < t0 - 1e-9:
            k += 1
        return k

    def _drain(self) -> list[tuple[int, float, np.ndarray]]:
        out = []
        half = self.cfg.window_s / 2
        margin = 0.0 if self._sr == self.cfg.sample_rate else self.RESAMPLE_MARGIN_S
        while True:
            ref = reference_time(self._next_k, self.segment_s, self.anchor)
            if self._end_t < ref + half + margin:
                break
            window = self._window_at(ref, margin)
            try:
                mel = log_mel(window, self.cfg)
            except ValueError:                 # power overflow: this window only is refused
                self.counts.invalid += 1
            else:
                out.append((self._next_k, ref, mel))
                self.counts.published += 1
                self.counts.silent += is_digital_silence(window)
            self._next_k += 1
        # Keep only what the next window can still need.
        ref = reference_time(self._next_k, self.segment_s, self.anchor)
        keep_from = math.floor((ref - half - margin - self._run_t0) * self._sr) - self._base
        if keep_from > 0:
            keep_from = min(keep_from, self._buf.shape[0])
            self._buf = self._buf[keep_from:]
            self._base += keep_from
        return out

    def _window_at(self, ref: float, margin: float) -> np.ndarray:
        """The float32 (window_samples,) window centred on `ref`, at cfg.sample_rate."""
        half = self.cfg.window_s / 2
        sr = self._sr
        i0 = max(0, math.floor((ref - half - margin - self._run_t0) * sr) - self._base)
        i1 = min(self._buf.shape[0],
                 math.ceil((ref + half + margin - self._run_t0) * sr) - self._base + 1)
        piece = resample(self._buf[i0:i1], sr, self.cfg.sample_rate)
        centre = ref - self._run_t0 - (self._base + i0) / sr   # seconds from piece[0]
        return audio_window(piece, centre, self.cfg)


@dataclass(frozen=True)
class WindowResult:
    """One sliding-window output: probabilities over the classes for the segments it used."""

    k_last: int                    # the window's last segment
    t_ref: float                   # that segment's reference time, seconds
    probs: np.ndarray              # float64 (C,), sums to 1
    segments: tuple[int, ...]      # the cached segment ids that were averaged
    frame_id: str = ''


@dataclass
class FusionCounts:
    used: int = 0        # segments with logits (both modalities, or filled per the policy)
    filled: int = 0      # of those, segments completed with a neighbour's modality ('nearest')
    dropped: int = 0     # segments given up after the wait (policy 'skip', or nothing near)
    no_face: int = 0     # segments the face stream reported without a face (no person)
    invalid: int = 0     # segments dropped for a non-finite log-mel or non-finite logits
    duplicates: int = 0  # a second input for a segment that already has that modality
    late: int = 0        # an input for a segment already completed or given up
    resets: int = 0
    breaks: int = 0      # outages of one stream (>= break_s) that restarted the windows
    windows: int = 0
    partial: int = 0     # of those, windows fused from fewer than N segments
    model_calls: int = 0


@dataclass
class _Pending:
    t_ref: float
    face: np.ndarray | None = None        # uint8 (98, 80)
    mel: np.ndarray | None = None         # float32 (128, 43)
    frame_id: str = ''
    no_face: bool = False                 # the face stream said: no face in this segment


class SegmentFuser:
    """Pairs a face crop and a log-mel per segment id, runs the model once per segment, caches
    its (C,) logits and emits the window probabilities over the cached last N segments.

    Missing modality: a segment holding one modality is resolved as soon as the other stream
    has moved past it (streams are in order, so nothing will come), or, if that stream has
    stalled, once the newest stamp seen is `wait_s` past its reference time. Then policy 'skip'
    drops it; policy 'nearest' pairs it
    with the same modality's input of the nearest segment within `nearest_max` segments (a
    real face or a real sound from a moment earlier or later, which the model was trained on,
    unlike zeros), and drops it when there is none.
    A window is emitted when a segment completes in order (never for a segment older than one
    already emitted) and at least `min_segments` of its N segments are cached.

    Guards (the output is always finite, non-negative and sums to 1): a non-finite log-mel, or
    a segment whose logits are not finite, is dropped and counted in `counts.invalid`; a
    fused result that is not a probability vector is not emitted (also `invalid`). A face
    stream that says "no face in segment k" (`push_no_face`) settles k at once. When one
    stream resumes after a hole of at least `break_s` (its node restarted, its sensor
    stalled), the segments cached before the hole are forgotten (`counts.breaks`): a window
    never averages segments from both sides of an outage.
    """

    def __init__(self, segment_logits: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 fuse: Callable[[np.ndarray], np.ndarray], n_segments: int, segment_s: float,
                 anchor: str = 'centre', min_segments: int | None = None,
                 policy: str = 'skip', wait_s: float = 1.0, nearest_max: int = 2,
                 break_s: float = DEFAULT_BREAK_S):
        reference_time(0, segment_s, anchor)
        if policy not in MISSING_POLICIES:
            raise ValueError(f'missing-modality policy must be one of {MISSING_POLICIES}, '
                             f'got {policy!r}')
        min_segments = n_segments if min_segments is None else min_segments
        if not 1 <= min_segments <= n_segments:
            raise ValueError(f'min_segments must be in 1..{n_segments}, got {min_segments}')
        self._segment_logits = segment_logits
        self._fuse = fuse
        self.n_segments = n_segments
        self.segment_s = segment_s
        self.anchor = anchor
        self.min_segments = min_segments
        self.policy = policy
        self.wait_s = wait_s
        self.nearest_max = nearest_max
        self.break_s = break_s
        self.counts = FusionCounts()
        self._clear()

    def _clear(self) -> None:
        self._pending: dict[int, _Pending] = {}
        self._faces: dict[int, np.ndarray] = {}   # recent inputs, for the 'nearest' policy
        self._mels: dict[int, np.ndarray] = {}
        self._logits: dict[int, np.ndarray] = {}
        self._frame_ids: dict[int, str] = {}
        self._given_up: set[int] = set()
        self._last_face_k: int | None = None
        self._last_mel_k: int | None = None
        self._latest_t = -math.inf
        self._emitted_k: int | None = None

    def reset(self) -> None:
        self._clear()

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
        self._after_hole(k, self._last_face_k)
        self._last_face_k = k
        p = self._pending_for(k)
        p.face = np.asarray(crop)
        p.frame_id = frame_id
        self._faces[k] = p.face
        if frame_id:
            self._frame_ids[k] = frame_id
        return self._after_push(k, t)

    def push_no_face(self, t: float, frame_id: str = '') -> list[WindowResult]:
        """The face stream's word that the frame stamped `t` (seconds), its segment's chosen
        frame, holds no usable face: the segment is settled now (skipped, or filled by the
        'nearest' policy) instead of after the wait."""
        k = segment_index(t, self.segment_s)
        if self._backwards(k, self._last_face_k):
            return self.poll(t)
        self._after_hole(k, self._last_face_k)
        self._last_face_k = k
        self.counts.no_face += 1
        p = self._pending_for(k)
        p.no_face = True
        p.frame_id = frame_id
        return self._after_push(k, t)

    def push_mel(self, t_ref: float, mel: np.ndarray) -> list[WindowResult]:
        """A log-mel (float32 (128, 43)) stamped with its segment's reference time (seconds).
        A mel holding NaN or inf is dropped and counted (`counts.invalid`)."""
        k = segment_of_reference(t_ref, self.segment_s, self.anchor)
        if self._backwards(k, self._last_mel_k):
            return self.poll(t_ref)
        self._after_hole(k, self._last_mel_k)
        self._last_mel_k = k
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
        Otherwise (that stream stalled) after `wait_s` of stamp time past the reference time.
        """
        self._latest_t = max(self._latest_t, t_now)
        out: list[WindowResult] = []
        for k in sorted(self._pending):
            p = self._pending[k]
            face_known = p.face is not None or p.no_face or (
                self._last_face_k is not None and self._last_face_k > k)
            mel_known = p.mel is not None or (
                self._last_mel_k is not None and self._last_mel_k > k)
            if not (face_known and mel_known) and self._latest_t - p.t_ref < self.wait_s:
                continue
            del self._pending[k]
            if p.face is None and p.mel is None:     # a no-face word whose audio never came
                self._given_up.add(k)
            elif self.policy == 'nearest' and self._fill(k, p):
                self.counts.filled += 1
                out.extend(self._complete(k, p.face, p.mel))
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

    def _after_hole(self, k: int, last_k: int | None) -> None:
        """A stream reaches segment k after its last input at `last_k`: after a hole of at
        least break_s, forget what was cached before it (the windows start again)."""
        if last_k is None or (k - last_k - 1) * self.segment_s < self.break_s - 1e-9:
            return
        self.counts.breaks += 1
        for d in (self._logits, self._faces, self._mels, self._frame_ids):
            for j in [j for j in d if j < k]:
                del d[j]

    def _pending_for(self, k: int) -> _Pending:
        if k not in self._pending:
            self._pending[k] = _Pending(t_ref=reference_time(k, self.segment_s, self.anchor))
        return self._pending[k]

    def _after_push(self, k: int, t: float) -> list[WindowResult]:
        out: list[WindowResult] = []
        p = self._pending[k]
        if p.face is not None and p.mel is not None:
            del self._pending[k]
            out.extend(self._complete(k, p.face, p.mel))
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

    def _complete(self, k: int, face: np.ndarray, mel: np.ndarray) -> list[WindowResult]:
        logits = np.asarray(self._segment_logits(face, mel), dtype=np.float64)
        self.counts.model_calls += 1
        if not np.isfinite(logits).all():
            self.counts.invalid += 1
            self._given_up.add(k)
            return []
        self._logits[k] = logits
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
        return [WindowResult(k_last=k, t_ref=reference_time(k, self.segment_s, self.anchor),
                             probs=probs, segments=ks, frame_id=frame_id)]

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
                         (self._mels, keep_inputs), (self._frame_ids, keep_logits)):
            for j in [j for j in d if j < floor]:
                del d[j]
        self._given_up = {j for j in self._given_up if j >= keep_inputs}


def is_probability_vector(probs: np.ndarray, tolerance: float = 1e-6) -> bool:
    """float (C,): every entry finite and >= 0, summing to 1 within `tolerance`: what every
    `emotion` message must carry."""
    p = np.asarray(probs, dtype=np.float64)
    return bool(p.ndim == 1 and p.size and np.isfinite(p).all() and (p >= 0).all()
                and abs(p.sum() - 1.0) <= tolerance)


def model_functions(model) -> tuple[Callable, Callable]:
    """(segment_logits, fuse) callables over numpy for a LightmerNet in eval mode.

    segment_logits: uint8 (98, 80) crop, float32 (128, 43) mel -> float64 (C,) logits.
    fuse: float64 (n, C) cached logits -> float64 (C,) probabilities.
    """
    import torch

    from lightmer.model import fuse as torch_fuse

    model.eval()

    def segment_logits(face: np.ndarray, mel: np.ndarray) -> np.ndarray:
        faces = torch.from_numpy(face_to_input(face[None]))                     # (1, 1, 98, 80)
        mels = torch.from_numpy(np.ascontiguousarray(mel, dtype=np.float32))[None, None]
        with torch.inference_mode():
            return model.segment_logits(faces, mels)[0].double().numpy()        # (C,)

    def fuse(logits: np.ndarray) -> np.ndarray:
        return torch_fuse(torch.from_numpy(np.asarray(logits, dtype=np.float64))).numpy()

    return segment_logits, fuse


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
