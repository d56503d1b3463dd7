"""Training-time augmentation and modality dropout, drawn per segment and seeded.

A model trained on studio recordings meets another camera and another room on a robot. Each
training segment's face crop and audio window can be changed as such a robot would change them,
so the model learns what does not depend on them. The draws come from a generator seeded by
(seed, epoch, clip index, tag): the same under a seed, on every rank and worker, and after a
resume, and disjoint from the segment-choice draws (the paper's path is unchanged with 'none').

Kinds (`AUGMENTS`): 'none' (the paper: random frame and +-10 ms jitter only), 'face', 'audio',
'both'. Each segment gets its own parameters; every transform below is applied with the stated
probability, so a share of segments stays close to the studio's look and sound.

Face crop (uint8 98 x 80 grey, the MTCNN crop; order as a camera makes them: optics,
sensor, processing, compression). Ranges are lightmer's own, from what robot cameras do:
- shift +-8 % of the crop, scale 0.85-1.15 per axis, rotation +-15 degrees (p 0.8): another
  detector box on another camera moves by a few pixels and changes its margin; people roll
  their heads; the axes scale apart because a turned head is narrower.
- resolution loss (p 0.4): down by 1.5-4x and back (bilinear): a face 25-60 px wide on a
  wide-angle robot camera, upscaled to 80 px by the crop.
- Gaussian blur sigma 0.3-1.5 px (p 0.3): focus and motion.
- brightness x 2^U(-1.3, 0.6) (p 0.8): dim rooms and back light cost more than a stop;
  over-exposure is rarer (auto exposure), hence the asymmetric range.
- contrast x U(0.5, 1.3) around the crop's mean (p 0.6): haze, flat light, cheap lenses.
- gamma U(0.7, 1.5) (p 0.5): cameras' tone curves differ.
- sensor noise, Gaussian std U(1, 10) grey levels (p 0.6): small sensors at high gain.
- JPEG quality 15-85 (p 0.5): compressed camera streams (image_transport compressed).
Audio window (float32 24000 samples at 16 kHz, before the log-mel; order as a room and a
microphone make them):
- room impulse response (p 0.6): `room_impulse_response`, RT60 0.2-1.0 s (one of a bank of 48),
  direct-to-reverberant ratio -3 to +12 dB: living rooms to halls, speaker 1-4 m away.
- additive noise (p 0.7) at SNR U(0, 30) dB to the window's RMS, white, pink or brown
  (equally likely): fans and motors (brown), rooms and traffic (pink), electronics (white).
- low-pass 4th-order Butterworth, cut-off U(2.5, 7) kHz (p 0.4), and a high-pass at
  U(80, 300) Hz (p 0.4): small MEMS microphones and cheap codecs.
- gain 10^(U(-15, 10)/20) (p 0.8): another microphone's level; the result is clipped to
  [-1, 1] as a converter clips. Per-window standardisation removes gain; 'dataset' norm does not.
Modality dropout: with probability P a segment loses one modality, its face or its audio
(equally likely), replaced by `core.missing`'s input: what the nodes give when it is missing.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter
from scipy import signal

from lightmer.core.config import AUGMENTS

# Tags of the per-(seed, epoch, index) generators; the segment choice uses none.
_TAG_AUGMENT, _TAG_DROPOUT = 101, 102


@dataclass(frozen=True)
class AugmentConfig:
    """What training does to its segments beyond the paper's random frame and jitter."""

    augment: str = 'none'            # one of core.config.AUGMENTS
    modality_dropout: float = 0.0    # share of segments that lose their face or their audio

    def __post_init__(self) -> None:
        if self.augment not in AUGMENTS:
            raise ValueError(f'augment must be one of {AUGMENTS}, got {self.augment!r}')
        if not 0.0 <= self.modality_dropout < 1.0:
            raise ValueError(f'modality dropout must be in [0, 1), got {self.modality_dropout}')

    @property
    def faces(self) -> bool:
        return self.augment in ('face', 'both')

    @property
    def audio(self) -> bool:
        return self.augment in ('audio', 'both')

    @property
    def active(self) -> bool:
        return self.augment != 'none' or self.modality_dropout > 0


def segment_rng(seed: int, epoch: int, index: int, segment: int,
                modality: str) -> np.random.Generator:
    """The augmentation generator of one segment's 'face' or 'audio': (seed, epoch, index,
    segment, modality) only, never the rank, the worker or what ran before."""
    which = ('face', 'audio').index(modality)
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index, _TAG_AUGMENT, segment,
                                  which])


def dropout_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The modality-dropout generator of one training sample, apart from augmentation's so the
    two settings do not change each other's draws."""
    return np.random.default_rng([seed & 0xFFFFFFFF, epoch, index, _TAG_DROPOUT])


def drop_modalities(n_segments: int, share: float, rng: np.random.Generator) -> np.ndarray:
    """int8 (N,) per segment: 0 keeps both modalities, 1 drops the face, 2 drops the audio.

    Each segment independently loses one modality with probability `share`, face or audio
    equally likely; never both (a segment with neither carries no information)."""
    lose = rng.random(n_segments) < share
    which = rng.integers(1, 3, size=n_segments)
    return np.where(lose, which, 0).astype(np.int8)


# --- face ------------------------------------------------------------------------------------
def augment_face(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W) grey crop -> a new uint8 (H, W) crop as another camera could give it."""
    c = np.asarray(crop)
    if c.dtype != np.uint8 or c.ndim != 2:
        raise ValueError(f'expected a uint8 (H, W) crop, got {c.dtype} {c.shape}')
    img = Image.fromarray(c)
    if rng.random() < 0.8:
        img = _geometry(img, rng)
    if rng.random() < 0.4:
        factor = rng.uniform(1.5, 4.0)
        small = (max(4, round(img.width / factor)), max(4, round(img.height / factor)))
        img = img.resize(small, Image.Resampling.BILINEAR).resize(
            c.shape[::-1], Image.Resampling.BILINEAR)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.3, 1.5)))
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = _photometric(x, rng)
    if rng.random() < 0.6:
        x = x + rng.normal(0.0, rng.uniform(1.0, 10.0) / 255.0, size=x.shape)
    out = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        out = _jpeg(out, int(rng.integers(15, 86)))
    return out


def _geometry(img: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Shift, per-axis scale and rotation about the centre; borders filled with edge grey."""
    w, h = img.size
    angle = np.deg2rad(rng.uniform(-15.0, 15.0))
    sx, sy = rng.uniform(0.85, 1.15, size=2)
    dx, dy = rng.uniform(-0.08, 0.08) * w, rng.uniform(-0.08, 0.08) * h
    # PIL maps output (x, y) to input by the inverse affine: undo the shift, rotation, scale.
    cos, sin = np.cos(angle), np.sin(angle)
    a, b = cos / sx, sin / sx
    d, e = -sin / sy, cos / sy
    cx, cy = w / 2.0, h / 2.0
    ox, oy = cx + dx, cy + dy
    c = cx - a * ox - b * oy
    f = cy - d * ox - e * oy
    fill = int(np.median(np.asarray(img)[[0, -1], :]))
    return img.transform((w, h), Image.Transform.AFFINE, (a, b, c, d, e, f),
                         resample=Image.Resampling.BILINEAR, fillcolor=fill)


def _photometric(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast and gamma of a float (H, W) image in [0, 1]."""
    if rng.random() < 0.8:
        x = x * 2.0 ** rng.uniform(-1.3, 0.6)
    if rng.random() < 0.6:
        mean = float(x.mean())
        x = mean + (x - mean) * rng.uniform(0.5, 1.3)
    x = np.clip(x, 0.0, 1.0)
    if rng.random() < 0.5:
        x = x ** rng.uniform(0.7, 1.5)
    return x


def _jpeg(crop: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(crop).save(buf, format='JPEG', quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert('L'), dtype=np.uint8).copy()


# --- audio -----------------------------------------------------------------------------------
def augment_audio(window: np.ndarray, sr: int, rng: np.random.Generator) -> np.ndarray:
    """float32 (n,) window at `sr` Hz -> a new float32 (n,) as another room and microphone
    could record it (see the module docstring for the ranges).

    The costly parts are drawn from banks built once per process from fixed seeds (room
    reverberation tails, coloured noise) and filter designs are cached at 50 Hz steps, so an
    augmented segment costs about as much as its log-mel; the segment's generator picks from
    them, so the draws stay a function of the seed."""
    x = np.asarray(window, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f'expected a mono (n,) window, got shape {x.shape}')
    if rng.random() < 0.6:
        tails = _reverb_bank(sr)
        tail = tails[int(rng.integers(len(tails)))]
        rir = tail * np.sqrt(10.0 ** (-rng.uniform(-3.0, 12.0) / 10.0))   # unit-energy tail
        rir[0] += 1.0                                                    # the direct path
        x = signal.fftconvolve(x, rir)[:x.shape[0]]
    if rng.random() < 0.7:
        x = x + _noise_at_snr(x, rng.uniform(0.0, 30.0), rng, sr)
    if rng.random() < 0.4:
        x = signal.sosfilt(_butter(4, _step(rng.uniform(2500.0, 7000.0)), 'lowpass', sr).copy(),
                           x)
    if rng.random() < 0.4:
        x = signal.sosfilt(_butter(2, _step(rng.uniform(80.0, 300.0)), 'highpass', sr).copy(),
                           x)
    if rng.random() < 0.8:
        x = x * 10.0 ** (rng.uniform(-15.0, 10.0) / 20.0)
    return np.clip(x, -1.0, 1.0).astype(np.float32)     # a converter clips at full scale


# Banks: 48 reverberant tails (RT60 evenly over 0.2-1.0 s, each its own seed) and 8 s of each
# noise colour; built once per process from these seeds, so every process has the same ones.
_BANK_SEED, _REVERB_BANK, _NOISE_BANK_S = 24_2026, 48, 8.0


def _step(hz: float) -> float:
    return 50.0 * round(hz / 50.0)


@functools.lru_cache(maxsize=256)
def _butter(order: int, cutoff: float, kind: str, sr: int) -> np.ndarray:
    return signal.butter(order, cutoff, kind, fs=sr, output='sos')   # callers copy it


@functools.lru_cache(maxsize=4)
def _reverb_bank(sr: int) -> tuple[np.ndarray, ...]:
    """Unit-energy reverberant parts (direct path removed) of `room_impulse_response`."""
    bank = []
    for k, rt60 in enumerate(np.linspace(0.2, 1.0, _REVERB_BANK)):
        rir = room_impulse_response(sr, float(rt60), 0.0, np.random.default_rng([_BANK_SEED, k]))
        rir[0] -= 1.0
        rir.setflags(write=False)
        bank.append(rir)
    return tuple(bank)


@functools.lru_cache(maxsize=4)
def _noise_bank(sr: int) -> tuple[np.ndarray, ...]:
    """Unit-RMS white, pink (1/f) and brown (1/f^2) noise, _NOISE_BANK_S seconds each."""
    n = int(_NOISE_BANK_S * sr)
    rng = np.random.default_rng([_BANK_SEED, 1000])
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1]
    bank = []
    for colour in range(3):                   # 0 white, 1 pink, 2 brown
        noise = np.fft.irfft(np.fft.rfft(rng.normal(size=n)) / freqs ** (colour / 2.0), n)
        noise /= np.sqrt(np.mean(noise ** 2))
        noise.setflags(write=False)
        bank.append(noise)
    return tuple(bank)


def room_impulse_response(sr: int, rt60_s: float, drr_db: float,
                          rng: np.random.Generator) -> np.ndarray:
    """float64 (n,) impulse response of a room, unit direct path at sample 0.

    A documented statistical model, not a geometric one: a direct path; 4-10 early
    reflections at 2-40 ms, each weaker with its delay and of random sign (walls, table,
    floor); then a diffuse tail of Gaussian noise that decays by 60 dB in `rt60_s` and whose
    high frequencies decay faster (air and soft furnishings absorb them: the tail is low-passed
    progressively, the cut-off falling from 7 to 1.5 kHz over the RT60). Its energy relative
    to the direct path is set by `drr_db` (direct-to-reverberant ratio, dB).
    """
    n = int(sr * min(rt60_s, 1.2))
    t = np.arange(n) / sr
    tail = rng.normal(size=n) * 10.0 ** (-3.0 * t / rt60_s)        # -60 dB at rt60
    bright = signal.sosfilt(signal.butter(2, 7000.0, 'lowpass', fs=sr, output='sos'), tail)
    dark = signal.sosfilt(signal.butter(2, 1500.0, 'lowpass', fs=sr, output='sos'), tail)
    mix = np.clip(t / rt60_s, 0.0, 1.0)
    tail = (1.0 - mix) * bright + mix * dark
    tail[: int(0.002 * sr)] = 0.0                                 # the tail starts after 2 ms
    early = np.zeros(n)
    for delay in rng.uniform(0.002, 0.040, size=int(rng.integers(4, 11))):
        k = int(delay * sr)
        early[k] += rng.choice((-1.0, 1.0)) * rng.uniform(0.2, 0.7) * (0.002 / delay) ** 0.5
    reverberant = tail + early
    energy = float(np.sum(reverberant ** 2))
    reverberant *= np.sqrt(10.0 ** (-drr_db / 10.0) / energy) if energy > 0 else 0.0
    rir = reverberant
    rir[0] += 1.0
    return rir


def _noise_at_snr(x: np.ndarray, snr_db: float, rng: np.random.Generator,
                  sr: int) -> np.ndarray:
    """White, pink or brown noise (equally likely, a random stretch of the bank's) at `snr_db`
    below the RMS of `x`."""
    n = x.shape[0]
    noise = _noise_bank(sr)[int(rng.integers(3))]
    start = int(rng.integers(0, max(1, noise.shape[0] - n)))
    stretch = noise[start:start + n]
    if stretch.shape[0] < n:                 # a window longer than the bank: repeat it
        stretch = np.resize(noise, n)
    rms_x = float(np.sqrt(np.mean(x ** 2)))
    if rms_x == 0.0:                          # silence stays silence: no level to match
        return np.zeros(n)
    return stretch * rms_x * 10.0 ** (-snr_db / 20.0)
