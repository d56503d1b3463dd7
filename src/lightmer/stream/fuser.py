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

from lightmer.core.config import FeatureConfig
from lightmer.core.features import (
    MIN_FACE_SIZE,
    audio_window,
    face_to_input,
    is_digital_silence,
    log_mel,
    resample,
)
from lightmer.core.segments import (
    REFERENCES,
    reference_time,
    segment_index,
    segment_of_reference,
    window_indices,
)

MISSING_POLICIES = ('skip', 'nearest')


@dataclass(frozen=True)
class StreamSettings:
    """How the three nodes process their streams, beyond what the checkpoint fixes.

    Named and defaulted as the nodes' ROS parameters, and defined only here: `ros.params`
    declares the parameters with these defaults, and eval-bag, the benchmark and the demo build
    the processors (or the nodes' parameter file) from an instance.
    """

    reference: str = 'centre'          # segment reference time: 'centre' (as trained) | 'start'
    min_face_size: int = MIN_FACE_SIZE  # smallest face MTCNN looks for, pixels
    gap_tolerance_s: float = 0.05      # chunk stamp mismatch still continuous audio, seconds
    # Publish a window once this many of its N segments are cached (at most N; 0 = all N).
    # 2: a 1.5 s utterance holds 3 segments at T = 0.5 s (CREMA-D models) but may hold only 2
    # at T = 0.6 s (RAVDESS); measured against accuracy in docs/ROBOT_OPERATIONS.md.
    min_segments: int = 2
    missing_policy: str = 'skip'       # a segment with one modality: 'skip' it | 'nearest'
    missing_wait_s: float = 2.0        # how long (stamp seconds) a half segment waits
    nearest_max_segments: int = 2      # 'nearest': the farthest segment to borrow from
    # A forward stamp step at least this long is a jump (a clock set, a replay seek, an outage
    # of hours), logged and counted once rather than as the segments it skipped. Seconds.
    stamp_jump_s: float = 10.0
    # A hole at least this long in one input stream of the fuser (its node restarting, its
    # sensor stalled) ends the run of windows: no window averages segments from both sides;
    # the fusion node's /diagnostics also warns after this long. Seconds.
    stall_warn_s: float = 3.0

    def __post_init__(self) -> None:
        if self.reference not in REFERENCES:
            raise ValueError(f'reference must be one of {REFERENCES}, got {self.reference!r}')
        if self.missing_policy not in MISSING_POLICIES:
            raise ValueError(f'missing_policy must be one of {MISSING_POLICIES}, '
                             f'got {self.missing_policy!r}')
        if self.min_face_size < 1 or self.min_segments < 0 or self.nearest_max_segments < 1:
            raise ValueError('min_face_size must be >= 1, min_segments >= 0 and '
                             'nearest_max_segments >= 1')
        if self.gap_tolerance_s < 0 or self.missing_wait_s < 0:
            raise ValueError('gap_tolerance_s and missing_wait_s must be >= 0')
        if not self.stamp_jump_s > self.gap_tolerance_s:
            raise ValueError(f'stamp_jump_s ({self.stamp_jump_s}) must exceed '
                             f'gap_tolerance_s ({self.gap_tolerance_s})')
        if not self.stall_warn_s > 0:
            raise ValueError(f'stall_warn_s must be > 0, got {self.stall_warn_s}')

    def window_minimum(self, n_segments: int) -> int:
        """Segments a window needs before it is published: min_segments, at most N (0 = N)."""
        return min(self.min_segments or n_segments, n_segments)


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

    def __init__(self, segment_s: float, reference: str, jump_s: float = 10.0):
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


@dataclass(frozen=True)
class FaceResult:
    """The outcome of one segment's chosen frame."""

    k: int
    t_frame: float                 # the chosen frame's stamp, seconds
    crop: np.ndarray | None        # uint8 (98, 80); None: no face, or the frame was refused
    payload: Any                   # what was pushed with the frame
    error: str = ''                # why the chosen frame could not be decoded


class FaceSegmenter:
    """Per segment, the face crop of the frame nearest its reference time: `FrameSelector`
    chooses the frame, then the detector runs on that frame alone."""

    def __init__(self, cropper: Callable[[list[np.ndarray]], list[np.ndarray | None]],
                 segment_s: float, settings: StreamSettings):
        self._cropper = cropper
        self._selector = FrameSelector(segment_s, settings.reference, settings.stamp_jump_s)
        self.counts = FaceCounts()

    def reject(self) -> None:
        """The caller refused a frame before offering it (malformed message)."""
        self.counts.frames += 1
        self.counts.rejected += 1

    def push(self, t: float, payload: Any,
             decode: Callable[[Any], np.ndarray] | None = None) -> list[FaceResult]:
        """Offer a frame stamped `t` (seconds). `decode(payload)` gives the uint8 (H, W, 3) RGB
        frame (the payload itself by default) and may raise ValueError; it runs only on the
        chosen frames. Returns the segments whose frame was chosen now."""
        self.counts.frames += 1
        resets, jumps = self._selector.resets, self._selector.jumps
        chosen = self._selector.push(t, payload)
        self.counts.resets += self._selector.resets - resets
        self.counts.jumps += self._selector.jumps - jumps
        out = []
        for k, t_frame, selected in chosen:
            self.counts.segments += 1
            try:
                frame = selected if decode is None else decode(selected)
            except ValueError as exc:
                self.counts.rejected += 1
                self.counts.undecodable += 1
                out.append(FaceResult(k, t_frame, None, selected, str(exc)))
                continue
            crop = self._cropper([frame])[0]
            if crop is None:
                self.counts.no_face += 1
            else:
                self.counts.published += 1
            out.append(FaceResult(k, t_frame, crop, selected))
        return out


@dataclass
class AudioCounts:
    published: int = 0   # log-mels computed
    audio_gap: int = 0   # segments whose window a hole (< stamp_jump_s) left uncovered
    jumps: int = 0       # forward stamp jumps of at least stamp_jump_s (not in audio_gap)
    resets: int = 0      # stamps went backwards
    rejected: int = 0    # chunks refused (malformed, non-finite, no usable format)
    invalid: int = 0     # windows refused: their power spectrum overflowed (huge samples)
    silent: int = 0      # published windows of digital silence (features.is_digital_silence)


class AudioSegmenter:
    """Stamped mono chunks in; per segment the log-mel of the window centred on its reference.

    Chunks are placed back to back while each stamp agrees with the end of the previous chunk
    within `gap_tolerance_s` (capture stamps jitter; the sample count is the better clock).
    A later stamp starts a new run: segments whose window needs the missing audio are counted
    in `counts.audio_gap` and skipped, unless the step is a jump of at least `stamp_jump_s`
    (counted once in `counts.jumps`: a clock set or a replay seek is not billions of lost
    segments). An earlier stamp beyond the tolerance resets everything. A window whose power
    spectrum overflows is refused (`counts.invalid`); windows of digital silence are published
    and counted (`counts.silent`).
    Audio is kept at its own rate; each window is resampled to cfg.sample_rate with a margin on
    both sides, so chunk edges never touch the resampler's edge effects.
    """

    # Extra audio resampled on each side of a window when the input is not at cfg.sample_rate.
    RESAMPLE_MARGIN_S = 0.05

    def __init__(self, cfg: FeatureConfig, segment_s: float, settings: StreamSettings):
        reference_time(0, segment_s, settings.reference)
        self.cfg = cfg
        self.segment_s = segment_s
        self.reference = settings.reference
        self.gap_tolerance_s = settings.gap_tolerance_s
        self.jump_s = settings.stamp_jump_s
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
        """Forget the stream (a new audio format): the next chunk starts from scratch."""
        self._clear()

    def warm_up(self) -> None:
        """Compute one window of silence at 8 kHz, so that the first real segment does not pay
        for importing librosa, the resampler and the mel filters (seconds on a small CPU)."""
        silence = np.zeros(int(self.cfg.window_s * 8000) + 1, dtype=np.float32)
        log_mel(audio_window(resample(silence, 8000, self.cfg.sample_rate),
                             self.cfg.window_s / 2, self.cfg), self.cfg)

    def reject(self) -> None:
        """The caller dropped a chunk: the next chunk starts a new run (windows across it skip)."""
        self.counts.rejected += 1
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
        Raises ValueError (state unchanged) on non-finite samples, a non-1-D array or sr <= 0;
        the caller then calls `reject()`.
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
            self.counts.audio_gap += k0 - self._next_k
            self._next_k = k0

    def _first_covered(self, t0: float) -> int:
        half = self.cfg.window_s / 2
        k = segment_index(t0 + half, self.segment_s) - 1
        while reference_time(k, self.segment_s, self.reference) - half < t0 - 1e-9:
            k += 1
        return k

    def _drain(self) -> list[tuple[int, float, np.ndarray]]:
        out = []
        half = self.cfg.window_s / 2
        margin = 0.0 if self._sr == self.cfg.sample_rate else self.RESAMPLE_MARGIN_S
        while True:
            ref = reference_time(self._next_k, self.segment_s, self.reference)
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
        ref = reference_time(self._next_k, self.segment_s, self.reference)
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
    used: int = 0        # segments with logits, i.e. model calls (both modalities, or filled)
    filled: int = 0      # of those, segments completed with a neighbour's modality ('nearest')
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


class SegmentFuser:
    """Pairs a face crop and a log-mel per segment id, runs the model once per segment, caches
    its (C,) logits and emits the window probabilities over the cached last N segments.

    Missing modality: a segment holding one modality is resolved as soon as the other stream
    has moved past it (streams are in order, so nothing will come), or, if that stream has
    stalled, once the newest stamp seen is `missing_wait_s` past its reference time. Then
    policy 'skip' drops it; policy 'nearest' pairs it with the same modality's input of the
    nearest segment within `nearest_max_segments` (a real face or a real sound from a moment
    earlier or later, which the model was trained on, unlike zeros), and drops it when there is
    none.
    A window is emitted when a segment completes in order (never for a segment older than one
    already emitted) and enough of its N segments are cached (`StreamSettings.window_minimum`).

    Guards (the output is always finite, non-negative and sums to 1): a non-finite log-mel, or
    a segment whose logits are not finite, is dropped and counted in `counts.invalid`; a
    fused result that is not a probability vector is not emitted (also `invalid`). A face
    stream that says "no face in segment k" (`push_no_face`) settles k at once. When one
    stream resumes after a hole of at least `stall_warn_s` (its node restarted, its sensor
    stalled), the segments cached before the hole are forgotten (`counts.breaks`): a window
    never averages segments from both sides of an outage.
    """

    def __init__(self, segment_logits: Callable[[np.ndarray, np.ndarray], np.ndarray],
                 fuse: Callable[[np.ndarray], np.ndarray], n_segments: int, segment_s: float,
                 settings: StreamSettings):
        reference_time(0, segment_s, settings.reference)
        if n_segments < 1:
            raise ValueError(f'n_segments must be >= 1, got {n_segments}')
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
        self._given_up: set[int] = set()
        self._last_face_k: int | None = None
        self._last_mel_k: int | None = None
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
        self._after_hole(k, self._last_face_k)
        self._last_face_k = k
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
        self._after_hole(k, self._last_face_k)
        self._last_face_k = k
        self.counts.no_face += 1
        self._pending_for(k).no_face = True
        return self._after_push(k, t)

    def push_mel(self, t_ref: float, mel: np.ndarray) -> list[WindowResult]:
        """A log-mel (float32 (128, 43)) stamped with its segment's reference time (seconds).
        A mel holding NaN or inf is dropped and counted (`counts.invalid`)."""
        k = segment_of_reference(t_ref, self.segment_s, self.reference)
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
        Otherwise (that stream stalled) after `missing_wait_s` of stamp time past the reference
        time.
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
            self._pending[k] = _Pending(t_ref=reference_time(k, self.segment_s, self.reference))
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
        if not np.isfinite(logits).all():
            self.counts.invalid += 1
            self._given_up.add(k)
            return []
        self._logits[k] = logits
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

    from lightmer.core.model import fuse as torch_fuse

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
