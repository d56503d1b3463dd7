"""Shared pieces of the node tests: a fixture model, a generated clip, its offline expectation
and its sensor stream. The nodes are driven and watched through `lightmer.harness.rig`."""
from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image as PILImage
from sensor_msgs.msg import Image
from skimage import data
from std_msgs.msg import Header

from lightmer.core.checkpoint import load_checkpoint, meta_for_preset, save_checkpoint
from lightmer.core.features import FaceCropper, face_to_input, log_mel_at, to_mono
from lightmer.core.messages import time_to_float
from lightmer.core.model import LightmerNet, fuse
from lightmer.core.segments import (
    reference_time,
    segment_index,
    segment_of_reference,
    window_indices,
)
from lightmer.harness.rig import Event, audio_msg, image_msg, sensor_events
from lightmer.ros.conversions import float_to_time

T0 = 1000.3          # clip start, stamp seconds (not on the segment grid)
FPS = 10.0
DURATION_S = 4.5
SR = 16000
CHUNK = 1600         # 0.1 s audio chunks
FRAME_ID = 'camera_optical'


def make_checkpoint(path: Path, preset: str = 'crema-d', seed: int = 0) -> Path:
    """An untrained, seeded LightmerNet saved as a checkpoint (a fixture model)."""
    torch.manual_seed(seed)
    meta = meta_for_preset(preset, dataset='test-fixture')
    save_checkpoint(path, LightmerNet(meta.model), meta)
    return path


@dataclass
class Clip:
    """Frames (constant within each segment, so any frame of a segment gives the same crop)
    and int16 mono audio of one generated clip starting at T0."""

    frame_times: np.ndarray            # (F,) stamp seconds
    frames: list[np.ndarray]           # uint8 (480, 640, 3) RGB
    audio: np.ndarray                  # int16 (n,)
    segment_s: float

    def audio_float(self) -> np.ndarray:
        return to_mono(self.audio)


def _face_image(size: int) -> np.ndarray:
    face = data.astronaut()[:300, 110:410]                          # head and shoulders
    return np.asarray(PILImage.fromarray(face).resize((size, size),
                                                      PILImage.Resampling.BILINEAR))


def make_clip(segment_s: float = 0.5, seed: int = 0, face: bool = True) -> Clip:
    rng = np.random.default_rng(seed)
    portrait = _face_image(260)
    n_frames = int(DURATION_S * FPS)
    times = T0 + np.arange(n_frames) / FPS
    frames = []
    for t in times:
        k = segment_index(float(t), segment_s)
        frame = np.full((480, 640, 3), 90, dtype=np.uint8)
        if face:
            # The face moves and brightens per segment, so every segment's crop differs.
            x, y = 60 + (k * 37) % 300, 40 + (k * 23) % 160
            shade = np.clip(portrait.astype(np.int16) + (k % 5) * 12 - 24, 0, 255)
            frame[y:y + 260, x:x + 260] = shade.astype(np.uint8)
        frames.append(frame)
    n = int(DURATION_S * SR)
    t = np.arange(n) / SR
    pitch = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)                # a gliding "voice"
    phase = 2 * np.pi * np.cumsum(pitch) / SR
    voice = sum(np.sin(h * phase) / h for h in range(1, 6)) * (0.5 + 0.5 * np.sin(3.1 * t))
    audio = 0.3 * voice + 0.02 * rng.standard_normal(n)
    return Clip(times, frames, (np.clip(audio, -1, 1) * 32000).astype(np.int16), segment_s)


def expected_windows(clip: Clip, checkpoint: Path, n_segments: int, min_segments: int,
                     reference: str = 'centre') -> dict[int, np.ndarray]:
    """Offline model output per window last-segment id: the clip's segments computed from the
    whole clip (crops by FaceCropper on the segment's frame, log-mel of the whole audio),
    segment logits by LightmerNet, fused over the segments of each window."""
    model, meta = load_checkpoint(checkpoint)
    cfg = meta.features
    half = cfg.window_s / 2
    end = T0 + len(clip.audio) / SR
    audio = clip.audio_float()
    cropper = FaceCropper(cfg)
    ks = sorted({segment_index(float(t), clip.segment_s) for t in clip.frame_times})
    logits = {}
    for k in ks:
        ref = reference_time(k, clip.segment_s, reference)
        if ref - half < T0 - 1e-9 or ref + half > end + 1e-9:
            continue                                    # the audio does not cover its window
        if not any(t >= ref for t in clip.frame_times):
            continue                                    # the selector never closes it
        i = int(np.argmin(np.abs(clip.frame_times - ref)))
        crop = cropper([clip.frames[i]])[0]
        assert crop is not None, 'the test face must be found'
        mel = log_mel_at(audio, ref - T0, cfg)
        with torch.inference_mode():
            logits[k] = model.segment_logits(torch.from_numpy(face_to_input(crop[None])),
                                             torch.from_numpy(mel)[None, None])[0]
    out = {}
    for k in logits:
        ids = [j for j in window_indices(k, n_segments) if j in logits]
        if len(ids) >= min_segments:
            out[k] = fuse(torch.stack([logits[j] for j in ids])).double().numpy()
    return out


def clip_events(clip: Clip, offset_s: float = 0.0) -> Iterator[Event]:
    """The clip as a camera and a microphone would deliver it (`rig.sensor_events`): frames
    at their stamps, 0.1 s audio chunks once captured; stamps shifted by `offset_s`."""
    frames = ((float(t) + offset_s, f) for t, f in zip(clip.frame_times, clip.frames,
                                                      strict=True))
    return sensor_events(frames, T0 + offset_s, clip.audio, SR, CHUNK, FRAME_ID)


def emotion_by_segment(received, segment_s: float,
                       reference: str = 'centre') -> dict[int, np.ndarray]:
    """Received Classification messages -> {window's last segment id: probabilities (C,)}."""
    out = {}
    for r in received:
        k = segment_of_reference(time_to_float(r.msg.header.stamp), segment_s, reference)
        out[k] = np.array([h.score for h in r.msg.results])
    return out


def stamps(received, lo: float, hi: float) -> list[float]:
    """Header stamps (seconds) of the received messages stamped within [lo, hi] that carry
    data (not the face node's empty no-face word)."""
    return [t for t in (time_to_float(r.msg.header.stamp) for r in received
                        if r.msg.width) if lo <= t <= hi]


class LiveStream:
    """Camera (10 fps, a generated clip's frames, looped) and microphone (0.1 s chunks)
    published through `rig` in real time with wall-clock stamps until `close()`: what a
    robot's drivers keep sending while a node restarts."""

    def __init__(self, rig, segment_s: float = 0.5):
        self.rig = rig
        self.clip = make_clip(segment_s, seed=8)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        audio, frames = self.clip.audio, self.clip.frames
        t0 = time.time()
        i = 0
        while not self.stop.is_set():
            t = t0 + i / FPS
            self.rig.publish('image', image_msg(t, frames[i % len(frames)], FRAME_ID))
            s = (i * CHUNK) % (len(audio) - CHUNK)
            self.rig.publish('audio', audio_msg(t, audio[s:s + CHUNK].tobytes()))
            i += 1
            time.sleep(max(0.0, t0 + i / FPS - time.time()))

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


def face_crop_msg(k: int, rng: np.random.Generator, frame_id: str = 'cam'):
    """A random 98x80 mono8 face crop for segment k (T = 0.5 s), as face_crop publishes it."""
    return Image(header=Header(stamp=float_to_time(k * 0.5 + 0.1), frame_id=frame_id),
                 height=98, width=80, encoding='mono8', step=80,
                 data=rng.integers(0, 256, 98 * 80, np.uint8).tobytes())


def log_mel_msg(k: int, rng: np.random.Generator):
    """A random 128x43 32FC1 log-mel for segment k (T = 0.5 s, centre reference), as
    audio_feature publishes it."""
    mel = rng.standard_normal((128, 43)).astype(np.float32)
    return Image(header=Header(stamp=float_to_time((k + 0.5) * 0.5)), height=128, width=43,
                 encoding='32FC1', step=43 * 4, data=mel.tobytes())
