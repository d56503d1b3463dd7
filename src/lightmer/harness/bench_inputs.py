"""What `lightmer bench` feeds the model and the nodes: camera frames of one or two people and an
untrained checkpoint. Kept apart from `bench_nodes` so that the model's figures (`bench
--no-nodes`) need no ROS.
"""
from __future__ import annotations

import functools
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image
from skimage import data

from lightmer.core.checkpoint import meta_for_preset, save_checkpoint
from lightmer.core.features import resample
from lightmer.core.model import LightmerNet
from lightmer.datasets.media import decode_audio, decode_video

FRAME_HW = (480, 640)          # the benchmark camera


def camera_frame(people: int = 1) -> np.ndarray:
    """uint8 (480, 640, 3): a camera image of one or two people on a grey canvas.

    One: the scikit-image astronaut photo (top 480 rows, her face in the top half), centred.
    Two: her head and shoulders twice, side by side (the right one mirrored), 300 px each.
    """
    photo = data.astronaut()
    frame = np.full((*FRAME_HW, 3), 128, dtype=np.uint8)
    if people == 1:
        x0 = (FRAME_HW[1] - photo.shape[1]) // 2
        frame[:, x0:x0 + photo.shape[1]] = photo[:FRAME_HW[0]]
    elif people == 2:
        head = photo[:300, 110:410]                      # (300, 300, 3)
        frame[90:390, 10:310] = head
        frame[90:390, 330:630] = head[:, ::-1]
    else:
        raise ValueError(f'people must be 1 or 2, got {people}')
    return frame


def bench_frame_720p() -> np.ndarray:
    """uint8 (720, 1280, 3): the astronaut's head and shoulders, face ~120 px wide, on grey."""
    head = Image.fromarray(data.astronaut()[:300, 110:410]).resize((420, 420))
    frame = np.full((720, 1280, 3), 128, dtype=np.uint8)
    frame[150:570, 430:850] = np.asarray(head)
    return frame


# The astronaut's head and shoulders (rows 0:300, columns 110:410 of data.astronaut()); her
# MTCNN box is about 0.29 of its side.
_HEAD = (slice(0, 300), slice(110, 410))


def moving_face_frame(t: float, hw: tuple[int, int] = FRAME_HW,
                      leave: tuple[float, float] = (14.0, 20.0)) -> np.ndarray:
    """uint8 (H, W, 3): the astronaut's head moving over a real photo (scikit-image's coffee) at
    time `t` seconds, as a camera facing a person who talks, sways, comes nearer and leaves.

    The head drifts sideways (0.2 W, 16 s period) and up and down, and grows and shrinks by a
    quarter (15 s period); during `leave` it slides out to the left within 2 s, stays away, and
    slides back within 2 s before `leave[1]`.
    """
    h, w = hw
    side = int(h * (0.55 + 0.14 * np.sin(2 * np.pi * t / 15)))
    cx = w * (0.5 + 0.2 * np.sin(2 * np.pi * t / 16))
    cy = h * (0.45 + 0.05 * np.sin(2 * np.pi * t / 7))
    away = float(np.clip(min(t - leave[0], leave[1] - t) / 2.0, 0.0, 1.0))   # 0 in, 1 out
    cx -= away * (cx + side)
    frame = _photo('coffee', (w, h))
    head = _photo('head', (side, side))
    x0, y0 = int(round(cx - side / 2)), int(round(cy - side / 2))
    fx0, fx1, fy0, fy1 = max(x0, 0), min(x0 + side, w), max(y0, 0), min(y0 + side, h)
    if fx1 > fx0 and fy1 > fy0:
        frame = frame.copy()
        frame[fy0:fy1, fx0:fx1] = head[fy0 - y0:fy1 - y0, fx0 - x0:fx1 - x0]
    return frame


@functools.lru_cache(maxsize=64)
def _photo(name: str, size: tuple[int, int]) -> np.ndarray:
    """A scikit-image photo resized to `size` (width, height), read-only and cached: the
    video's frames reuse the background and the few head sizes."""
    photo = data.coffee() if name == 'coffee' else data.astronaut()[_HEAD]
    out = np.asarray(Image.fromarray(photo).resize(size))
    out.setflags(write=False)
    return out


def write_moving_face_video(path: Path, seconds: float, fps: int = 10,
                            hw: tuple[int, int] = FRAME_HW, seed: int = 0) -> Path:
    """An H.264 video (.mp4, CRF 23) of `moving_face_frame`: camera noise (uniform, +-5
    grey levels) added, then compressed as a camera would: detection sees codec artefacts."""
    rng = np.random.default_rng(seed)
    with av.open(str(path), 'w', format='mp4') as container:
        stream = container.add_stream('libx264', rate=Fraction(fps),
                                      options={'preset': 'veryfast', 'crf': '23'})
        stream.width, stream.height, stream.pix_fmt = hw[1], hw[0], 'yuv420p'
        for i in range(int(round(seconds * fps))):
            noise = rng.integers(-5, 6, (*hw, 3), dtype=np.int16)
            noisy = np.clip(moving_face_frame(i / fps, hw) + noise, 0, 255).astype(np.uint8)
            frame = av.VideoFrame.from_ndarray(noisy, format='rgb24')
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def clips_as_stream(corpus: Path, clips: int, lead_s: float = 1.0, sr: int = 16000
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first `clips` clips of a CREMA-D-layout corpus played back to back as one camera
    and one microphone stream (a generated clip is shorter than a window), after `lead_s` of
    silence: frames uint8 (F, H, W, 3), their times float64 (F,) s, audio float32 (n,) at
    `sr` Hz from time 0."""
    frames, times, audio = [], [], [np.zeros(int(lead_s * sr), np.float32)]
    t0 = lead_s
    for path in sorted((corpus / 'VideoFlash').glob('*.flv'))[:clips]:
        video, stamps, _ = decode_video(path)
        sound, rate = decode_audio(corpus / 'AudioWAV' / f'{path.stem}.wav')
        sound = resample(sound, rate, sr)
        frames.append(video)
        times.append(t0 + stamps - stamps[0])
        audio.append(sound)
        t0 += sound.shape[0] / sr
    audio.append(np.zeros(int(lead_s * sr), np.float32))
    return np.concatenate(frames), np.concatenate(times), np.concatenate(audio)


def untrained_checkpoint(directory: Path) -> Path:
    """A CREMA-D-preset checkpoint of a freshly initialised model (seed 0) in `directory`."""
    torch.manual_seed(0)
    meta = meta_for_preset('crema-d', dataset='bench (untrained)')
    path = directory / 'bench_model.pt'
    save_checkpoint(path, LightmerNet(meta.model), meta)
    return path
