"""A microphone stream cut into segments: per segment the log-mel of the window centred on its
reference time (what the audio_feature node does, without ROS)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lightmer.core.config import FeatureConfig
from lightmer.core.features import (
    audio_window,
    is_digital_silence,
    log_mel,
    resample,
)
from lightmer.core.segments import (
    reference_time,
    segment_index,
)
from lightmer.stream.settings import StreamSettings


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
        for building the resampler and the mel filters."""
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
