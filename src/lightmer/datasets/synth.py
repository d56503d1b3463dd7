"""A generated corpus in the exact on-disk layout of CREMA-D or RAVDESS.

Nobody here has the real datasets, so tests and the demo run the real loaders, `prepare` and
training on this corpus instead. It proves that the pipeline works end to end; the accuracy
reached on it says nothing about real-world emotion recognition.

Layouts and containers:
- CREMA-D: `VideoFlash/<actor>_<sentence>_<emotion>_<level>.flv` (FLV1 = Sorenson H.263,
  480x360, 30 fps, with an MP3 audio track (44.1 kHz mono), as the real files carry one) and
  `AudioWAV/<same>.wav` (16 kHz, 16-bit PCM, mono). `write_mp3` makes the `AudioMP3/` form.
- RAVDESS: `Actor_XX/01-01-EE-II-SS-RR-XX.mp4`, H.264 (libx264) with an AAC 48 kHz stereo track,
  29.97 fps. Frames are 640x360 instead of the real 1280x720 to keep face detection cheap.

Faces: `skimage.data.astronaut()` (a real photograph, so MTCNN finds the face), placed per actor
(scale, offset, mirror, brightness, gamma, tint) and changed per emotion by local warps and
shading of the brows and mouth that stay visible in the grayscale crop. Small head motion,
speech-driven mouth opening and a time-varying expression strength make the frames of a clip
differ, so drawing a random frame per segment matters.

Speech: espeak-ng, one voice variant, base pitch and rate per actor, prosody (pitch and rate)
per emotion, with per-clip jitter.

The emotion is only partly in each modality: the face has 3 states (4 for RAVDESS) and the voice
2, and every emotion is one (face, voice) pair (tables `CREMA_CUES`, `RAVDESS_CUES`). A perfect
face-only classifier is right on at most 1/2 of the clips, a voice-only one on 1/3 (CREMA-D) or
1/4 (RAVDESS) (`cue_ceilings`); only the pair identifies every emotion. Per-clip jitter of
strength, pitch, rate, lighting and noise keeps it from being trivial.

Domain shift (`DomainShift`, off by default): the same people recorded by another camera
(light, contrast, face size, sensor noise, head roll and turn) in another room (reverberation,
background noise, microphone gain), as a robot records them; `first_actor` makes people other
than a corpus's first ones (another face placement and another espeak-ng voice).
"""
from __future__ import annotations

import io
import multiprocessing
import os
import subprocess
import tempfile
import time
import wave
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image
from scipy.ndimage import map_coordinates, uniform_filter1d
from scipy.signal import butter, fftconvolve, lfilter, sosfilt
from skimage import data

from lightmer.core.atomic_io import atomic_write, atomic_write_wav
from lightmer.core.features import resample
from lightmer.datasets.names import (
    CREMA_EMOTIONS,
    CREMA_SENTENCES,
    RAVDESS_EMOTIONS,
    RAVDESS_STATEMENTS,
)

# Per emotion code: (face state, voice state). Each face state occurs with both voice states and
# each voice state with every face state, so neither modality alone separates the classes.
CREMA_CUES = {
    'ANG': ('tense', 'high'), 'DIS': ('tense', 'low'),
    'FEA': ('open', 'high'), 'SAD': ('open', 'low'),
    'HAP': ('smile', 'high'), 'NEU': ('smile', 'low'),
}
RAVDESS_CUES = {
    '01': ('still', 'low'), '08': ('still', 'high'),      # neutral, surprised
    '02': ('smile', 'low'), '03': ('smile', 'high'),      # calm, happy
    '04': ('open', 'low'), '06': ('open', 'high'),        # sad, fearful
    '07': ('tense', 'low'), '05': ('tense', 'high'),      # disgust, angry
}

# Landmarks of the astronaut's face in the 512x512 photo, measured once with MTCNN:
# eyes, nose, mouth corners (x, y) and the face box width.
_EYE_L, _EYE_R = np.array([205.0, 101.7]), np.array([246.8, 103.7])
_MOUTH_L, _MOUTH_R = np.array([201.7, 139.2]), np.array([245.3, 141.9])
_FACE_CENTRE = np.array([224.4, 117.1])
_FACE_WIDTH = 86.7
# Canvas pixels around the frame on every side: room for the head's sway.
_MARGIN = 8

# Seed-sequence tag of the DomainShift draws (camera and room), apart from the clip's own.
_SHIFT_STREAM = 7

# espeak-ng voice variants (`en+<variant>`), one per actor, reused cyclically past 24 actors.
# Audio codecs' frame sizes (samples) and the rate of the FLVs' MP3 track (a rate FLV allows).
AAC_FRAME, MP3_FRAME = 1024, 1152
FLV_AUDIO_RATE = 44100

_VARIANTS = ('m1', 'f1', 'm2', 'f2', 'm3', 'f3', 'm4', 'f4', 'm5', 'f5', 'm6', 'm7', 'm8',
             'adam', 'anika', 'belinda', 'benjamin', 'david', 'edward', 'john', 'linda',
             'paul', 'robert', 'steph')


@dataclass(frozen=True)
class Layout:
    name: str
    width: int
    height: int
    fps: Fraction
    codes: tuple[str, ...]
    cues: dict
    max_actors: int
    default_actors: int
    default_clips: int
    lead_s: tuple[float, float]     # silence before the speech, uniform range (s)
    trail_s: tuple[float, float]    # silence after it


LAYOUTS = {
    # Defaults: prepare must finish in <= 2 minutes on 2 cores (measured in the README).
    'crema-d': Layout('crema-d', 480, 360, Fraction(30), CREMA_EMOTIONS, CREMA_CUES, 91,
                      default_actors=8, default_clips=2, lead_s=(0.15, 0.35),
                      trail_s=(0.15, 0.35)),
    'ravdess': Layout('ravdess', 640, 360, Fraction(30000, 1001), RAVDESS_EMOTIONS,
                      RAVDESS_CUES, 24, default_actors=6, default_clips=1, lead_s=(0.5, 0.8),
                      trail_s=(0.3, 0.6)),
}


@dataclass(frozen=True)
class DomainShift:
    """Another camera and another room than the corpus's studio; the defaults change nothing.

    Camera: `light` multiplies brightness; `contrast` scales around mid-grey; `face_scale`
    multiplies the face size (a camera farther away); `pixel_noise` is the std of extra sensor
    noise in grey levels; per clip the head is rolled by U(-head_roll_deg, +head_roll_deg)
    degrees and turned away by squeezing the face horizontally by U(0, head_turn) (a frontal
    photo cannot really turn). Room: `reverb_s` is the RT60 (seconds) of an exponentially
    decaying noise impulse response; background noise (low-passed, like a fan or traffic) at
    `noise_snr_db` below the speech's RMS (None: none); `mic_gain` multiplies the signal,
    clipped at full scale as a converter clips.
    A second kind of camera and room (all off by default): `colour_cast` multiplies the R, G,
    B channels (a white balance gone wrong); `motion_blur_px` averages each frame over that
    many pixels horizontally (a panning or shaking camera); `jpeg_quality` encodes and decodes
    every frame as JPEG at that quality (a compressed stream); `echo_ms` / `echo_gain` add a
    discrete echo (a hard wall at a distance: a slap-back, not a diffuse tail); `band_hz`
    band-passes the microphone (a 2nd-order Butterworth between the two frequencies: a
    telephone-grade capsule).
    """

    light: float = 1.0
    contrast: float = 1.0
    face_scale: float = 1.0
    pixel_noise: float = 0.0
    head_roll_deg: float = 0.0
    head_turn: float = 0.0
    reverb_s: float = 0.0
    noise_snr_db: float | None = None
    mic_gain: float = 1.0
    colour_cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    motion_blur_px: int = 0
    jpeg_quality: int | None = None
    echo_ms: float = 0.0
    echo_gain: float = 0.0
    band_hz: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not (self.light > 0 and self.contrast > 0 and self.face_scale > 0
                and self.mic_gain > 0):
            raise ValueError('light, contrast, face_scale and mic_gain must be positive')
        if self.pixel_noise < 0 or self.head_roll_deg < 0 or self.reverb_s < 0:
            raise ValueError('pixel_noise, head_roll_deg and reverb_s must be >= 0')
        if not 0 <= self.head_turn < 1:
            raise ValueError(f'head_turn must be in [0, 1), got {self.head_turn}')
        if (min(self.colour_cast) <= 0 or self.motion_blur_px < 0 or self.echo_ms < 0
                or self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 95):
            raise ValueError('colour_cast must be positive, motion_blur_px and echo_ms >= 0, '
                             'jpeg_quality in [1, 95] or None')


@dataclass(frozen=True)
class Actor:
    actor_id: str
    scale: float            # canvas pixels per photo pixel
    offset: tuple[float, float]   # face centre offset from the frame centre (px)
    mirror: bool
    gain: float             # brightness
    gamma: float
    tint: tuple[float, float, float]
    variant: str            # espeak-ng voice variant
    pitch: float            # espeak-ng base pitch 0..99
    rate: float             # words per minute


@dataclass(frozen=True)
class ClipSpec:
    layout: str
    actor: Actor
    code: str               # emotion code
    text: str               # sentence spoken
    video_path: Path
    audio_path: Path | None  # CREMA-D WAV; None for RAVDESS (audio in the MP4)
    seed: int
    extra_wav: Path | None = None   # RAVDESS separate speech WAV (03-01-...) when asked for
    shift: DomainShift | None = None  # another camera and room (None: the studio)


@dataclass(frozen=True)
class SynthReport:
    layout: str
    out: Path
    actors: int
    clips: int
    emotions: int
    seconds: float
    durations: tuple[float, float]

    def __str__(self) -> str:
        lo, hi = self.durations
        return (f'{self.layout} corpus in {self.out}: {self.clips} clips = {self.actors} actors x '
                f'{self.emotions} emotions, clip length {lo:.2f}-{hi:.2f} s, made in '
                f'{self.seconds:.1f} s (generated data: proves the pipeline, not accuracy)')


def cue_ceilings(layout: str) -> dict[str, float]:
    """Best accuracy a perfect single-modality classifier can reach on balanced classes."""
    cues = LAYOUTS[layout].cues
    faces = {f for f, _ in cues.values()}
    voices = {v for _, v in cues.values()}
    return {'face': len(faces) / len(cues), 'voice': len(voices) / len(cues), 'both': 1.0}


def _make_actor(layout: Layout, index: int, actor_id: str, seed: int) -> Actor:
    rng = np.random.default_rng([seed, 1, index])
    return Actor(
        actor_id=actor_id,
        # A face ~130-190 px wide in a 360 px high frame, as in CREMA-D's close-ups.
        scale=float(rng.uniform(1.5, 2.2)),
        offset=(float(rng.uniform(-40, 40)), float(rng.uniform(-15, 15))),
        mirror=bool(rng.integers(2)),
        gain=float(rng.uniform(0.75, 1.15)),
        gamma=float(rng.uniform(0.8, 1.25)),
        tint=tuple(float(x) for x in rng.uniform(0.9, 1.1, size=3)),
        variant=_VARIANTS[index % len(_VARIANTS)],
        pitch=float(rng.uniform(35, 65)),
        rate=float(rng.uniform(150, 175)),
    )


def _plan(layout: Layout, out: Path, n_actors: int, n_clips: int, seed: int,
          speech_wavs: bool, first_actor: int = 0,
          shift: DomainShift | None = None) -> list[ClipSpec]:
    specs = []
    for a in range(first_actor, first_actor + n_actors):
        if layout.name == 'crema-d':
            actor = _make_actor(layout, a, f'{1001 + a}', seed)
            sentences = list(CREMA_SENTENCES)
            for e, code in enumerate(layout.codes):
                for k in range(n_clips):
                    sentence = sentences[(k + a + e) % len(sentences)]
                    # IEO is the one sentence the real actors spoke at three levels.
                    level = 'MD' if sentence == 'IEO' and code != 'NEU' else 'XX'
                    clip_id = f'{actor.actor_id}_{sentence}_{code}_{level}'
                    specs.append(ClipSpec(
                        'crema-d', actor, code, CREMA_SENTENCES[sentence],
                        out / 'VideoFlash' / f'{clip_id}.flv',
                        out / 'AudioWAV' / f'{clip_id}.wav', _clip_seed(seed, clip_id),
                        shift=shift))
        else:
            actor = _make_actor(layout, a, f'{a + 1:02d}', seed)
            folder = out / f'Actor_{actor.actor_id}'
            for code in layout.codes:
                # Takes as in RAVDESS: statement, repetition, then intensity (none strong for
                # neutral), so at most 8 takes per emotion and 4 for neutral.
                pairs = ('01', '02')
                takes = [(i, s, r) for i in pairs for s in pairs for r in pairs
                         if not (code == '01' and i == '02')]
                for intensity, statement, rep in takes[:n_clips]:
                    take = f'{code}-{intensity}-{statement}-{rep}-{actor.actor_id}'
                    specs.append(ClipSpec(
                        'ravdess', actor, code, RAVDESS_STATEMENTS[statement],
                        folder / f'01-01-{take}.mp4', None, _clip_seed(seed, take),
                        extra_wav=folder / f'03-01-{take}.wav' if speech_wavs else None,
                        shift=shift))
    return specs


def _clip_seed(seed: int, clip_id: str) -> int:
    # A stable per-clip seed (Python's hash() is salted per process).
    return (seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(clip_id))) % 2**32


def synthesize(layout: str, out: str | Path, actors: int | None = None,
               clips_per_emotion: int | None = None, seed: int = 0,
               workers: int | None = None, speech_wavs: bool = False, first_actor: int = 0,
               shift: DomainShift | None = None) -> SynthReport:
    """Write a generated corpus under `out` in the layout of `layout` ('crema-d' | 'ravdess').

    Args:
        actors: number of actors (default: the layout's small default, see `LAYOUTS`).
        clips_per_emotion: clips per actor and emotion (default likewise).
        seed: everything (faces, voices, prosody, noise) follows from it.
        workers: processes (default: available cores).
        speech_wavs: RAVDESS only: also write the separate speech WAVs `03-01-....wav`.
        first_actor: 0-based index of the first actor: actors first_actor .. first_actor +
            actors - 1 (ids 1001 + index / index + 1), other people than a corpus from 0 with
            the same seed (their face placement and espeak-ng voice come from the index).
        shift: record them with another camera and in another room (`DomainShift`).
    Existing files are overwritten; every file is written atomically.
    """
    if layout not in LAYOUTS:
        raise ValueError(f'unknown layout {layout!r}; choose one of {sorted(LAYOUTS)}')
    spec = LAYOUTS[layout]
    n_actors = spec.default_actors if actors is None else actors
    n_clips = spec.default_clips if clips_per_emotion is None else clips_per_emotion
    if not 1 <= n_actors or not 0 <= first_actor or first_actor + n_actors > spec.max_actors:
        raise ValueError(f'{layout} has actors 1..{spec.max_actors}; got --actors {n_actors} '
                         f'from index {first_actor}')
    max_clips = len(CREMA_SENTENCES) if layout == 'crema-d' else 8
    if not 1 <= n_clips <= max_clips:
        raise ValueError(f'{layout} has at most {max_clips} clips per actor and emotion '
                         f'(distinct file names); got --clips-per-emotion {n_clips}')
    _check_espeak()
    out = Path(out)
    start = time.monotonic()
    specs = _plan(spec, out, n_actors, n_clips, seed, speech_wavs, first_actor, shift)
    workers = workers or len(os.sched_getaffinity(0))
    # A pool pays a few seconds of process start-up: only worth it beyond a handful of clips.
    if workers > 1 and len(specs) >= 4 * workers:
        # spawn: a clean child even when the caller runs threads (ROS executors, torch pools).
        ctx = multiprocessing.get_context('spawn')
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            durations = list(pool.map(write_clip, specs, chunksize=2))
    else:
        durations = [write_clip(s) for s in specs]
    return SynthReport(layout, out, n_actors, len(specs), len(spec.codes),
                       time.monotonic() - start, (min(durations), max(durations)))


def _check_espeak() -> None:
    try:
        subprocess.run(['espeak-ng', '--version'], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as e:
        # FileNotFoundError: a missing program the user can install (one line on the CLI)
        raise FileNotFoundError('espeak-ng is needed to generate speech: install it '
                                f'(Debian: apt-get install espeak-ng) ({e})') from None


# --- one clip --------------------------------------------------------------------------------
def write_clip(spec: ClipSpec) -> float:
    """Render, encode and write one clip; returns its duration in seconds."""
    layout = LAYOUTS[spec.layout]
    rng = np.random.default_rng(spec.seed)
    voice = layout.cues[spec.code][1]
    speech, sr = _speak(spec.text, spec.actor, voice, rng)
    lead = rng.uniform(*layout.lead_s)
    trail = rng.uniform(*layout.trail_s)
    n_frames = int(np.ceil((lead + len(speech) / sr + trail) * layout.fps))
    duration = n_frames / layout.fps
    audio = np.zeros(int(round(float(duration) * sr)), np.float32)
    i0 = int(round(lead * sr))
    audio[i0:i0 + len(speech)] = speech[:len(audio) - i0]
    audio += rng.normal(0.0, 0.002, size=audio.shape).astype(np.float32)   # room noise
    frames = _render_frames(spec, layout, audio, sr, n_frames, rng)
    if spec.shift is not None:
        audio = _room(audio, sr, i0, len(speech), spec.shift,
                      np.random.default_rng([spec.seed, _SHIFT_STREAM, 1]))
    if spec.layout == 'crema-d':
        _write_flv(spec.video_path, frames, layout.fps, resample(audio, sr, FLV_AUDIO_RATE),
                   FLV_AUDIO_RATE)
        atomic_write_wav(spec.audio_path, resample(audio, sr, 16000), 16000)
    else:
        a48 = resample(audio, sr, 48000)
        _write_mp4(spec.video_path, frames, layout.fps, a48, 48000)
        if spec.extra_wav is not None:
            atomic_write_wav(spec.extra_wav, a48, 48000)
    return float(duration)


def _speak(text: str, actor: Actor, voice: str, rng: np.random.Generator
           ) -> tuple[np.ndarray, int]:
    """espeak-ng speech as float32 mono and its rate (22050 Hz)."""
    # Arousal: high = higher pitch, faster; low = lower, slower; jitter keeps clips distinct.
    shift, speed = (14.0, 1.22) if voice == 'high' else (-14.0, 0.82)
    pitch = int(np.clip(actor.pitch + shift + rng.uniform(-5, 5), 0, 99))
    rate = int(actor.rate * speed * rng.uniform(0.93, 1.07))
    with tempfile.TemporaryDirectory(prefix='lightmer-espeak-') as tmp:
        path = Path(tmp) / 'speech.wav'
        cmd = ['espeak-ng', '-w', str(path), '-v', f'en+{actor.variant}', '-p', str(pitch),
               '-s', str(rate), '-a', '120', text]
        try:
            subprocess.run(cmd, check=True, capture_output=True, timeout=60)
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f'espeak-ng failed: {e.stderr.decode(errors="replace")}') from None
        with wave.open(str(path), 'rb') as w:
            sr, raw = w.getframerate(), w.readframes(w.getnframes())
    speech = np.frombuffer(raw, dtype='<i2').astype(np.float32) / 32768.0
    # espeak pads with silence; trim it so that lead/trail control the clip length.
    voiced = np.flatnonzero(np.abs(speech) > 0.01)
    if voiced.size:
        speech = speech[voiced[0]:voiced[-1] + 1]
    return speech * rng.uniform(0.7, 1.0), sr


def _room(audio: np.ndarray, sr: int, i0: int, n_speech: int, shift: DomainShift,
          rng: np.random.Generator) -> np.ndarray:
    """float32 (n,) clip audio at `sr` as another room and microphone record it.

    Reverberation: convolution with a direct path plus exponentially decaying Gaussian noise
    reaching -60 dB at reverb_s, its energy a quarter of the direct path's. Background noise:
    white noise low-passed by a one-pole filter, scaled noise_snr_db below the RMS of the
    speech (samples i0 .. i0 + n_speech). Then the microphone gain, clipped at full scale.
    """
    out = np.asarray(audio, np.float64)
    if shift.reverb_s > 0:
        t = np.arange(max(1, int(shift.reverb_s * sr))) / sr
        ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / shift.reverb_s)
        ir *= 0.5 / max(float(np.sqrt(np.sum(ir ** 2))), 1e-12)
        ir[0] = 1.0
        out = fftconvolve(out, ir)[:len(out)]
    if shift.noise_snr_db is not None:
        speech = out[i0:i0 + n_speech]
        level = float(np.sqrt(np.mean(speech ** 2))) if speech.size else 0.01
        hum = lfilter([0.05], [1.0, -0.95], rng.standard_normal(len(out)))
        hum *= level / max(float(np.sqrt(np.mean(hum ** 2))), 1e-12)
        out = out + hum / 10 ** (shift.noise_snr_db / 20)
    if shift.echo_ms > 0 and shift.echo_gain:
        k = int(shift.echo_ms * sr / 1000)
        out = out + shift.echo_gain * np.concatenate([np.zeros(k), out[:max(0, len(out) - k)]])
    if shift.band_hz is not None:
        out = sosfilt(butter(2, shift.band_hz, 'bandpass', fs=sr, output='sos'), out)
    return np.clip(out * shift.mic_gain, -1.0, 1.0).astype(np.float32)


# --- faces -----------------------------------------------------------------------------------
def _render_frames(spec: ClipSpec, layout: Layout, audio: np.ndarray, sr: int, n_frames: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """uint8 (H, W, 3) RGB frames of one clip."""
    h, w, shift = layout.height, layout.width, spec.shift
    # The shift draws from a stream of its own, so that a corpus without it is unchanged.
    shift_rng = np.random.default_rng([spec.seed, _SHIFT_STREAM]) if shift else None
    pose = _pose(spec.actor, layout, rng, shift, shift_rng)
    canvas = _canvas(spec.actor, pose, layout, rng, shift)
    face = _face_levels(LAYOUTS[spec.layout].cues[spec.code][0], pose, canvas)
    noise, sensor = _noise(layout, rng, shift, shift_rng)
    motion = _Motion(strength=rng.uniform(0.65, 1.0), onset=rng.uniform(0.2, 0.6),
                     phase=rng.uniform(0, 2 * np.pi, size=2))
    envelope = _speech_envelope(audio, sr, n_frames, layout.fps)
    fps = float(layout.fps)
    frames = []
    for i in range(n_frames):
        t = i / fps
        img = face.on(canvas, motion.amount(t), envelope[i])
        ox, oy = motion.offset(t)
        frame = img[oy:oy + h, ox:ox + w] + noise[int(rng.integers(len(noise)))]
        if sensor is not None:
            frame = frame + sensor[int(shift_rng.integers(len(sensor)))]
        frames.append(_second_camera(np.clip(frame, 0, 255), shift))
    return frames


def _second_camera(frame: np.ndarray, shift: DomainShift | None) -> np.ndarray:
    """float (H, W, 3) frame in [0, 255] -> uint8, through the shift's colour cast, motion
    blur and JPEG (each only when set: the studio and the first shift are unchanged)."""
    if shift is not None and shift.colour_cast != (1.0, 1.0, 1.0):
        frame = np.clip(frame * np.asarray(shift.colour_cast, np.float32), 0, 255)
    if shift is not None and shift.motion_blur_px > 1:
        frame = uniform_filter1d(frame, shift.motion_blur_px, axis=1, mode='nearest')
    out = frame.astype(np.uint8)
    if shift is None or shift.jpeg_quality is None:
        return out
    buf = io.BytesIO()
    Image.fromarray(out).save(buf, format='JPEG', quality=shift.jpeg_quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert('RGB'), dtype=np.uint8).copy()


@dataclass(frozen=True)
class _Pose:
    """Where the photo's face lies on the canvas: the frame plus _MARGIN pixels on every side,
    room for the head's sway."""

    scale: float            # canvas pixels per photo pixel
    roll: float             # head roll, radians
    squeeze: float          # horizontal factor of the head turned away (1: frontal)
    centre: np.ndarray      # (2,) canvas x, y of the face centre
    mirror: bool
    shifted: bool           # a DomainShift rolls and turns the head

    def to_canvas(self, p: np.ndarray) -> np.ndarray:
        """Photo (x, y) -> canvas (x, y)."""
        d = (p - _FACE_CENTRE) * self.scale
        if self.mirror:
            d[0] = -d[0]
        if self.shifted:   # the turn, then the roll
            d = np.array([d[0] * self.squeeze, d[1]])
            d = np.array([np.cos(self.roll) * d[0] - np.sin(self.roll) * d[1],
                          np.sin(self.roll) * d[0] + np.cos(self.roll) * d[1]])
        return self.centre + d


def _pose(actor: Actor, layout: Layout, rng: np.random.Generator, shift: DomainShift | None,
          shift_rng: np.random.Generator | None) -> _Pose:
    """The actor's placement, jittered per clip; rolled and turned by the shift."""
    s = actor.scale * rng.uniform(0.97, 1.03)
    roll, squeeze = 0.0, 1.0
    if shift is not None:
        s *= shift.face_scale
        roll = float(np.deg2rad(shift_rng.uniform(-shift.head_roll_deg, shift.head_roll_deg)))
        squeeze = 1.0 - float(shift_rng.uniform(0.0, shift.head_turn))
    centre = np.array([layout.width / 2 + actor.offset[0] + _MARGIN,
                       layout.height / 2 + actor.offset[1] + _MARGIN])
    return _Pose(s, roll, squeeze, centre, actor.mirror, shift is not None)


def _canvas(actor: Actor, pose: _Pose, layout: Layout, rng: np.random.Generator,
            shift: DomainShift | None) -> np.ndarray:
    """float32 (H + 2 _MARGIN, W + 2 _MARGIN, 3): the photo placed by `pose`, in the actor's
    light (and the shifted camera's)."""
    h, w = layout.height, layout.width
    photo = data.astronaut().astype(np.float32)
    # Backward affine map canvas -> photo.
    ys, xs = np.mgrid[0:h + 2 * _MARGIN, 0:w + 2 * _MARGIN].astype(np.float32)
    sx, sy = (xs - pose.centre[0]) / pose.scale, (ys - pose.centre[1]) / pose.scale
    if pose.shifted:   # undo the roll, then the turn
        c, n = np.cos(pose.roll), np.sin(pose.roll)
        sx, sy = (c * sx + n * sy) / pose.squeeze, -n * sx + c * sy
    if pose.mirror:
        sx = -sx
    src = np.stack([sy + _FACE_CENTRE[1], sx + _FACE_CENTRE[0]])
    canvas = np.stack([map_coordinates(photo[..., c], src, order=1, mode='nearest')
                       for c in range(3)], axis=-1)
    gain = actor.gain * rng.uniform(0.93, 1.07)
    canvas = (255.0 * (np.clip(canvas * gain / 255.0, 0, 1) ** actor.gamma)
              * np.array(actor.tint)).astype(np.float32)
    if shift is not None:
        canvas = (np.clip((canvas - 128.0) * shift.contrast + 128.0, 0, 255)
                  * shift.light).astype(np.float32)
    return canvas


@dataclass(frozen=True)
class _FaceLevels:
    """The canvas's face region warped at a few expression amounts, and its shading at amount
    1 and for the speaking mouth (both linear in their amount)."""

    roi: tuple[int, int, int, int]   # canvas rows y0:y1 and columns x0:x1
    levels: np.ndarray               # float (L,) expression amounts in [0, 1]
    warped: list[np.ndarray]         # per level float32 (y1 - y0, x1 - x0, 3)
    shade_unit: np.ndarray           # float32 (y1 - y0, x1 - x0) grey levels at amount 1
    shade_speak: np.ndarray          # likewise, the mouth fully open

    def on(self, canvas: np.ndarray, amount: float, speech: float) -> np.ndarray:
        """A copy of `canvas` showing the expression at `amount`, the mouth open by `speech`
        (both in [0, 1]); the warp is the nearest level's."""
        y0, y1, x0, x1 = self.roi
        face_roi = (self.warped[int(np.argmin(np.abs(self.levels - amount)))]
                    + (amount * self.shade_unit + speech * self.shade_speak)[..., None])
        img = canvas.copy()
        img[y0:y1, x0:x1] = face_roi
        return img


def _face_levels(face: str, pose: _Pose, canvas: np.ndarray) -> _FaceLevels:
    """Face state `face` ('smile', 'tense', 'open', 'still') rendered on `canvas`."""
    u = _FACE_WIDTH * pose.scale                    # face width in canvas pixels
    marks = {k: pose.to_canvas(v) for k, v in
             (('eye_l', _EYE_L), ('eye_r', _EYE_R), ('mouth_l', _MOUTH_L), ('mouth_r', _MOUTH_R))}
    bumps, shades, speak_shade = _expression(face, marks, u)
    roi = _face_region(marks, u, canvas.shape)
    y0, y1, x0, x1 = roi
    ry, rx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    # Displacement and shading are linear in the expression amount: fields at amount 1.
    dx, dy = _bump_field(bumps, rx, ry)
    shade_unit = _shade_field(shades, rx, ry)
    shade_speak = _shade_field([speak_shade], rx, ry)
    # The warp is the costly part: render it at a few amounts and use the nearest per frame.
    levels = np.linspace(0.0, 1.0, 9)
    warped = [np.stack([map_coordinates(canvas[..., ch], np.stack([ry - q * dy, rx - q * dx]),
                                        order=1, mode='nearest') for ch in range(3)], axis=-1)
              for q in levels]
    return _FaceLevels(roi, levels, warped, shade_unit, shade_speak)


def _noise(layout: Layout, rng: np.random.Generator, shift: DomainShift | None,
           shift_rng: np.random.Generator | None) -> tuple[list, list | None]:
    """Four float32 (H, W, 1) fields of the studio camera's noise, and four (H, W, 3) of the
    shifted camera's sensor noise (None without it); each frame takes one of each."""
    h, w = layout.height, layout.width
    noise = [2.0 * rng.standard_normal((h, w, 1), np.float32) for _ in range(4)]
    sensor = ([shift.pixel_noise * shift_rng.standard_normal((h, w, 3)).astype(np.float32)
               for _ in range(4)] if shift is not None and shift.pixel_noise > 0 else None)
    return noise, sensor


@dataclass(frozen=True)
class _Motion:
    """A clip's expression over time and the head's sway."""

    strength: float         # the expression's full amount
    onset: float            # s until the expression is full
    phase: np.ndarray       # (2,) of the sway in x and in y

    def amount(self, t: float) -> float:
        """The expression amount at `t` s: rising to full over `onset`, slightly pulsing."""
        return (self.strength * (0.45 + 0.55 * min(1.0, t / self.onset))
                * (0.9 + 0.1 * np.sin(5 * t)))

    def offset(self, t: float) -> tuple[int, int]:
        """Canvas (x, y) of the frame's top-left corner at `t` s."""
        ox = int(round(_MARGIN + 4 * np.sin(2 * np.pi * 0.7 * t + self.phase[0])))
        oy = int(round(_MARGIN + 3 * np.sin(2 * np.pi * 0.5 * t + self.phase[1])))
        return ox, oy


def _speech_envelope(audio: np.ndarray, sr: int, n_frames: int, fps: Fraction) -> np.ndarray:
    """Per video frame, the speech RMS scaled to [0, 1] (drives the mouth opening)."""
    edges = (np.arange(n_frames + 1) * sr / float(fps)).astype(int)
    rms = np.array([np.sqrt(np.mean(audio[a:b] ** 2)) if b > a else 0.0
                    for a, b in zip(edges[:-1], edges[1:], strict=True)])
    return np.clip(rms / max(float(rms.max()), 1e-6), 0, 1)


def _expression(face: str, marks: dict, u: float) -> tuple[list, list, tuple]:
    """The face state at full strength, in canvas pixels.

    Returns displacement bumps [(centre (2,), (dx, dy), sigma)], shading bumps
    [(centre, delta grey level, (sigma_x, sigma_y))] and the speaking mouth's shading bump.
    """
    ml, mr = marks['mouth_l'], marks['mouth_r']
    el, er = marks['eye_l'], marks['eye_r']
    mouth = (ml + mr) / 2
    inward = np.sign(er[0] - el[0])      # +1 when the left eye is on the image's left
    brow_l, brow_r = el + [0, -0.2 * u], er + [0, -0.2 * u]
    # Speech moves the mouth whatever the emotion: a dark gap between the lips.
    speak = (mouth + [0, 0.03 * u], -70.0, (0.11 * u, 0.035 * u))
    bumps, shades = [], []
    if face == 'smile':
        bumps += [(ml, (-0.05 * u * inward, -0.09 * u), 0.10 * u),
                  (mr, (0.05 * u * inward, -0.09 * u), 0.10 * u)]
        shades += [(ml + [-0.04 * u * inward, -0.12 * u], 25.0, (0.08 * u, 0.06 * u)),
                   (mr + [0.04 * u * inward, -0.12 * u], 25.0, (0.08 * u, 0.06 * u))]
    elif face == 'tense':
        bumps += [(ml, (0, 0.08 * u), 0.09 * u), (mr, (0, 0.08 * u), 0.09 * u),
                  (brow_l, (0.04 * u * inward, 0.07 * u), 0.10 * u),
                  (brow_r, (-0.04 * u * inward, 0.07 * u), 0.10 * u)]
        shades += [((brow_l + brow_r) / 2 + [0, 0.05 * u], -45.0, (0.07 * u, 0.09 * u))]
    elif face == 'open':
        bumps += [(brow_l, (0, -0.10 * u), 0.13 * u), (brow_r, (0, -0.10 * u), 0.13 * u),
                  (mouth + [0, 0.1 * u], (0, 0.07 * u), 0.1 * u)]
        shades += [(mouth + [0, 0.05 * u], -80.0, (0.09 * u, 0.07 * u))]
    elif face != 'still':
        raise ValueError(f'unknown face state {face!r}')
    return bumps, shades, speak


def _face_region(marks: dict, u: float, shape: tuple) -> tuple[int, int, int, int]:
    """Canvas rows y0:y1 and columns x0:x1 holding the brows and the mouth with a border."""
    pts = np.array(list(marks.values()))
    pad = 0.4 * u
    x0, y0 = np.floor(pts.min(axis=0) - pad).astype(int)
    x1, y1 = np.ceil(pts.max(axis=0) + pad).astype(int)
    return max(y0, 0), min(y1, shape[0]), max(x0, 0), min(x1, shape[1])


def _bump_field(bumps: list, xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = np.zeros_like(xs), np.zeros_like(ys)
    for c, (vx, vy), sigma in bumps:
        g = np.exp(-((xs - c[0]) ** 2 + (ys - c[1]) ** 2) / (2 * sigma ** 2))
        dx += vx * g
        dy += vy * g
    return dx, dy


def _shade_field(shades: list, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    out = np.zeros_like(xs)
    for c, delta, (sgx, sgy) in shades:
        out += delta * np.exp(-((xs - c[0]) ** 2) / (2 * sgx ** 2)
                              - ((ys - c[1]) ** 2) / (2 * sgy ** 2))
    return out


# --- writers ---------------------------------------------------------------------------------
def _write_flv(path: Path, frames: list[np.ndarray], fps: Fraction,
               audio: np.ndarray | None = None, sr: int = FLV_AUDIO_RATE) -> None:
    """FLV1 video, plus an MP3 mono track when `audio` (float32 (n,) at `sr`) is given."""
    def write(tmp: Path) -> None:
        with av.open(str(tmp), 'w', format='flv') as container:
            stream = container.add_stream('flv', rate=fps)      # FLV1, Sorenson H.263
            stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
            stream.pix_fmt = 'yuv420p'
            stream.bit_rate = 1_500_000
            astream = None
            if audio is not None:
                astream = container.add_stream('libmp3lame', rate=sr)
                astream.layout = 'mono'
            _encode_video(container, stream, frames, fps)
            if astream is not None:
                _encode_audio(container, astream, audio[None], sr, MP3_FRAME)

    atomic_write(path, write)


def write_mp3(path: str | Path, audio: np.ndarray, sr: int) -> None:
    """An MP3 file (libmp3lame, mono) of float32 (n,) samples at `sr` Hz, as CREMA-D's
    `AudioMP3/` folder holds."""
    def write(tmp: Path) -> None:
        with av.open(str(tmp), 'w', format='mp3') as container:
            stream = container.add_stream('libmp3lame', rate=sr)
            stream.layout = 'mono'
            _encode_audio(container, stream, np.asarray(audio, np.float32)[None], sr, MP3_FRAME)

    atomic_write(Path(path), write)


def _write_mp4(path: Path, frames: list[np.ndarray], fps: Fraction, audio: np.ndarray,
               sr: int) -> None:
    def write(tmp: Path) -> None:
        with av.open(str(tmp), 'w', format='mp4') as container:
            stream = container.add_stream('libx264', rate=fps,
                                          options={'preset': 'veryfast', 'crf': '20'})
            stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
            stream.pix_fmt = 'yuv420p'
            astream = container.add_stream('aac', rate=sr)
            astream.layout = 'stereo'
            _encode_video(container, stream, frames, fps)
            _encode_audio(container, astream, np.stack([audio, audio]), sr, AAC_FRAME)

    atomic_write(path, write)


def _encode_audio(container, stream, planar: np.ndarray, sr: int, frame_size: int) -> None:
    """Encode float (channels, n) samples in codec frames of `frame_size` and mux them."""
    planar = planar.astype(np.float32)
    layout = 'mono' if planar.shape[0] == 1 else 'stereo'
    for i in range(0, planar.shape[1], frame_size):
        chunk = np.ascontiguousarray(planar[:, i:i + frame_size])
        frame = av.AudioFrame.from_ndarray(chunk, format='fltp', layout=layout)
        frame.sample_rate = sr
        frame.pts = i
        frame.time_base = Fraction(1, sr)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)


def _encode_video(container, stream, frames: list[np.ndarray], fps: Fraction) -> None:
    for i, rgb in enumerate(frames):
        frame = av.VideoFrame.from_ndarray(rgb, format='rgb24')
        frame.pts = i
        frame.time_base = 1 / fps
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode(None):
        container.mux(packet)
