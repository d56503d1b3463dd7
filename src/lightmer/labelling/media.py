"""What a labelling page shows of one pooled window, as files a browser plays: the face crops
the model saw as one PNG strip, the window's audio with context as a WAV, and the camera
frames of the window as an animated GIF (when the bag is still where it was pooled).

Shared by `lightmer label` (served) and the Label Studio export (written beside the tasks).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from lightmer.active.pool import Pool, WindowView
from lightmer.core.atomic_io import wav_bytes
from lightmer.evaluation.bags import BagTopics, bag_path, read_bag

CONTEXT_S = 1.0          # audio before and after the window's own 1.5 s spans
STRIP_GAP_PX = 4         # grey gap between two face crops in the strip
MISSING_GREY = 96        # a segment without a face (published with fewer than N segments)
CLIP_FPS = 10            # frames per second of the camera clip (one in three at 30 fps)
CLIP_MAX_SIDE = 320      # pixels: enough to see a face, small enough to load at once
CLIP_MARGIN_S = 2.0      # bag (receive) time read around the stamps: bags record late


def face_strip_png(view: WindowView, scale: int = 2) -> bytes:
    """The window's N face crops, oldest first, side by side (uint8 98x80 each, enlarged
    `scale` times; a missing segment drawn as flat grey) -> PNG bytes."""
    n, h, w = view.crops.shape
    strip = np.full((h, n * w + (n - 1) * STRIP_GAP_PX), 255, np.uint8)
    for i in range(n):
        x = i * (w + STRIP_GAP_PX)
        strip[:, x:x + w] = view.crops[i] if view.present[i] else MISSING_GREY
    image = Image.fromarray(strip, 'L')
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    image.save(buf, format='PNG')
    return buf.getvalue()


def window_audio_span(view: WindowView, context_s: float = CONTEXT_S) -> tuple[float, float]:
    """(start, end) stamp seconds of the audio a page plays: the window's with context."""
    return view.audio_s[0] - context_s, view.audio_s[1] + context_s


def window_wav(pool: Pool, view: WindowView, context_s: float = CONTEXT_S) -> bytes:
    """The 16 kHz audio the nodes used for the window, `context_s` before and after -> WAV."""
    start, end = window_audio_span(view, context_s)
    audio, sr = pool.audio(view.recording, start, end)
    return wav_bytes(audio, sr)


def camera_frames(view: WindowView, fps: float = CLIP_FPS) -> list[np.ndarray]:
    """RGB uint8 frames of the window's camera time (`view.frames_s`, header stamps), at most
    `fps` a second, read from the bag it was pooled from; [] when that bag is gone."""
    try:
        bag_path(view.bag)
    except FileNotFoundError:
        return []
    start, end = view.frames_s
    margin = CLIP_MARGIN_S
    topics = BagTopics(view.topics['image'], view.topics['audio'], view.topics['audio_info'])
    frames, next_s = [], start
    for m in read_bag(view.bag, topics, kinds=('image',),
                      bag_time_ns=(int((start - margin) * 1e9), int((end + margin) * 1e9))):
        t = m.stamp_ns / 1e9
        if start <= t < end and t >= next_s:
            frames.append(m.data)
            next_s = t + 1 / fps - 1e-6
    return frames


def camera_clip_gif(view: WindowView, fps: float = CLIP_FPS) -> bytes | None:
    """The window's camera frames as a looping animated GIF in grey (as the model sees them;
    and a grey GIF needs no colour quantisation, which cost seconds a clip), longer side at
    most CLIP_MAX_SIDE; None when the bag is gone or holds no frame in that time."""
    frames = camera_frames(view, fps)
    if not frames:
        return None
    images = []
    for f in frames:
        im = Image.fromarray(f, 'RGB').convert('L')
        im.thumbnail((CLIP_MAX_SIDE, CLIP_MAX_SIDE))
        images.append(im)
    buf = io.BytesIO()
    images[0].save(buf, format='GIF', save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0)
    return buf.getvalue()
