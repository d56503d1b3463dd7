"""Decoding clips with PyAV: video frames with their container timestamps, audio as mono float.

Times are seconds from `pts * time_base` of the video stream, as the container stores them
(never assumed from a nominal frame rate: CREMA-D's FLV stores millisecond stamps, RAVDESS's
29.97 fps MP4s do not land on multiples of 1/30). Audio sample j is at j / rate seconds.

`probe_video` reads only packet headers (no decoding), so `decode_video_at` can decode the
stream once and convert to RGB only the frames nearest the requested times: the face detector
then runs on exactly the frames that are used.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from lightmer.core.features import to_mono

LFS_MAGIC = b'version https://git-lfs.github.com/spec/v1'


class MediaError(ValueError):
    """A media file that cannot be used; the message names the file and the reason."""


@dataclass(frozen=True)
class VideoInfo:
    """What a demux pass learns about a video stream without decoding it."""

    pts: np.ndarray       # int64 (F,) presentation stamps in stream time_base units, ascending
    times: np.ndarray     # float64 (F,) seconds: pts * time_base
    fps: float            # the container's average frame rate (frames / s)
    width: int
    height: int


def is_lfs_pointer(path: str | Path) -> bool:
    """True when `path` is a git-lfs pointer text file instead of the media it stands for."""
    with open(path, 'rb') as f:
        return f.read(len(LFS_MAGIC)) == LFS_MAGIC


def _open(path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise MediaError(f'{path}: no such file')
    if is_lfs_pointer(path):
        raise MediaError(f'{path}: git-lfs pointer, not media (run `git lfs pull` in the '
                         'dataset checkout, or download the real files)')
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f'{path}: unreadable ({e})') from None


def _video_stream(container, path):
    if not container.streams.video:
        raise MediaError(f'{path}: no video stream')
    return container.streams.video[0]


def _fps(stream, times: np.ndarray) -> float:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if rate:
        return float(rate)
    if times.size >= 2:   # no rate in the header: the median frame interval
        return float(1.0 / np.median(np.diff(times)))
    raise MediaError('cannot tell the frame rate: no rate in the header and fewer than 2 frames')


def probe_video(path: str | Path) -> VideoInfo:
    """Demux (no decoding) the first video stream: frame stamps, fps and size."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        try:
            pts = [p.pts for p in container.demux(stream) if p.pts is not None and p.size > 0]
        except (av.FFmpegError, OSError) as e:
            raise MediaError(f'{path}: damaged video stream ({e})') from None
        if not pts:
            raise MediaError(f'{path}: the video stream has no frames')
        pts_arr = np.unique(np.asarray(pts, dtype=np.int64))   # sorted, B-frames reordered
        times = pts_arr * float(stream.time_base)
        return VideoInfo(pts=pts_arr, times=times, fps=_fps(stream, times),
                         width=stream.codec_context.width, height=stream.codec_context.height)


def _decode(path: str | Path, keep) -> tuple[list[np.ndarray], list[int], float, float]:
    """Decode every frame; convert to RGB those whose pts satisfies `keep(pts)`.

    Returns (frames, their pts, fps, time_base in seconds).
    """
    frames, pts = [], []
    with _open(path) as container:
        stream = _video_stream(container, path)
        tb = float(stream.time_base)
        try:
            for frame in container.decode(stream):
                if frame.pts is None or not keep(frame.pts):
                    continue
                frames.append(frame.to_ndarray(format='rgb24'))
                pts.append(int(frame.pts))
        except (av.FFmpegError, OSError) as e:
            raise MediaError(f'{path}: damaged video stream ({e})') from None
        fps = _fps(stream, np.asarray(pts, dtype=np.float64) * tb)
    return frames, pts, fps, tb


def decode_video(path: str | Path) -> tuple[np.ndarray, np.ndarray, float]:
    """All frames of the first video stream.

    Returns:
        frames uint8 (F, H, W, 3) RGB, times float64 (F,) seconds (ascending), fps float.
    """
    frames, pts, fps, tb = _decode(path, lambda p: True)
    if not frames:
        raise MediaError(f'{path}: the video stream has no decodable frames')
    order = np.argsort(pts, kind='stable')
    return np.stack(frames)[order], np.asarray(pts, dtype=np.int64)[order] * tb, fps


def decode_video_at(path: str | Path, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The frames whose stamps are `pts` (int (M,), values from `probe_video(path).pts`).

    Only those frames are converted to RGB (the rest are decoded, as inter-frame codecs need,
    and dropped). Returns frames uint8 (M, H, W, 3) and times float64 (M,) seconds, in the
    order of `pts`. Raises MediaError when one of them cannot be decoded.
    """
    wanted = [int(p) for p in np.asarray(pts).reshape(-1)]
    wanted_set = set(wanted)
    frames, got, _, tb = _decode(path, lambda p: p in wanted_set)
    by_pts = dict(zip(got, frames, strict=True))
    missing = [p for p in wanted if p not in by_pts]
    if missing:
        raise MediaError(f'{path}: the frame at {missing[0] * tb:.3f} s could not be decoded')
    if not wanted:
        return np.zeros((0, 0, 0, 3), np.uint8), np.zeros(0)
    return (np.stack([by_pts[p] for p in wanted]),
            np.asarray(wanted, dtype=np.int64) * tb)


def decode_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """The first audio stream as float32 mono (n,) (mean of the channels) and its rate in Hz.

    Works on WAV files and on the audio track of a video container alike.
    """
    with _open(path) as container:
        if not container.streams.audio:
            raise MediaError(f'{path}: no audio stream')
        stream = container.streams.audio[0]
        rate = int(stream.rate or stream.codec_context.sample_rate)
        # Planar float keeps each channel in its own row whatever the stored sample format.
        resampler = av.AudioResampler(format='fltp')
        chunks = []
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray())                  # (channels, n) float32
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray())
        except (av.FFmpegError, OSError) as e:
            raise MediaError(f'{path}: damaged audio stream ({e})') from None
    if not chunks:
        raise MediaError(f'{path}: the audio stream has no samples')
    planar = np.concatenate(chunks, axis=1)                            # (channels, n)
    return to_mono(planar.T), rate


def has_audio(path: str | Path) -> bool:
    """True when the container at `path` has an audio stream (MediaError if it does not open)."""
    with _open(path) as container:
        return bool(container.streams.audio)


def check_media(path: str | Path, video: bool, audio: bool) -> None:
    """Raise MediaError unless `path` opens and has the streams asked for.

    A cheap check for indexing: opens the container and decodes the first video frame (a
    header that opens but whose first frame does not decode is a damaged download).
    """
    with _open(path) as container:
        if audio and not container.streams.audio:
            raise MediaError(f'{path}: no audio stream')
        if video:
            stream = _video_stream(container, path)
            try:
                first = next(iter(container.decode(stream)), None)
            except (av.FFmpegError, OSError) as e:
                raise MediaError(f'{path}: damaged video stream ({e})') from None
            if first is None:
                raise MediaError(f'{path}: the video stream has no decodable frames')
