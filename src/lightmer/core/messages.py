"""ROS message fields -> numpy: images, audio chunks and stamps, for any object that carries a
message's fields.

The nodes pass rclpy messages, bag replay passes the messages `rosbags` deserialises (the same
fields), so both decode with this one implementation and see the very same arrays; nothing here
imports ROS. Conversions are numpy only: the five image encodings the nodes accept are plain
byte layouts that numpy reads exactly, so cv_bridge (not installable from PyPI, and a second
code path that could disagree) is not needed. Building messages is `ros.conversions`'s job.
Errors are `ConversionError` (a ValueError) with a message that says what to change.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

# encoding -> (channels, how to reach RGB from the stored channel order)
IMAGE_ENCODINGS = {
    'rgb8': (3, (0, 1, 2)),
    'bgr8': (3, (2, 1, 0)),
    'rgba8': (4, (0, 1, 2)),
    'bgra8': (4, (2, 1, 0)),
    'mono8': (1, None),
}

# ros-drivers AudioInfo.sample_format -> numpy dtype of one sample
SAMPLE_FORMATS = {
    'S16LE': np.dtype('<i2'),
    'S32LE': np.dtype('<i4'),
    'F32LE': np.dtype('<f4'),
    'U8': np.dtype('u1'),
}
# Usable capture rates, Hz: telephone audio up to the highest rate sound cards offer.
MIN_SAMPLE_RATE, MAX_SAMPLE_RATE = 1000, 384_000
# coding_format values that mean raw interleaved PCM
PCM_CODINGS = ('wave', 'wav', 'raw', 'pcm', '')

# mgonzs13 AudioInfo.format (PortAudio sample format flags) -> AudioData field and dtype
MGONZS13_FORMATS = {
    1: ('float32_data', np.dtype(np.float32)),
    2: ('int32_data', np.dtype(np.int32)),
    8: ('int16_data', np.dtype(np.int16)),
    16: ('int8_data', np.dtype(np.int8)),
    32: ('uint8_data', np.dtype(np.uint8)),
}


class ConversionError(ValueError):
    """A message that cannot be converted; the text says what to change at the source."""


# Largest compressed image decoded by default: 8K UHD (7680 x 4320), 100 MB as RGB.
DEFAULT_MAX_PIXELS = 7680 * 4320
# What PIL raises on corrupt data: its parsers' internal errors (struct, EOF, index, syntax)
# become OSError (UnidentifiedImageError on open, "truncated" on load); ValueError for
# arguments it cannot use. Decompression bombs get an Exception of their own (caught apart).
# What PIL's decoders raise on hostile bytes: OSError and ValueError mostly, but a PNG with a
# broken chunk id raises SyntaxError, and a cut stream EOFError (found by test_conversions'
# generated corruptions).
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError)


# --- time ------------------------------------------------------------------------------------
def stamp_to_seconds(sec: int, nanosec: int) -> float:
    """A stamp's two fields -> seconds (float64). The one place this sum is written, so that
    the nodes and the offline bag replay see the very same floats."""
    return sec + nanosec * 1e-9


def stamp_ns_to_seconds(stamp_ns: int) -> float:
    """Integer nanoseconds (a bag's stamps) -> seconds exactly as the nodes read a header stamp."""
    return stamp_to_seconds(*divmod(int(stamp_ns), 1_000_000_000))


def time_to_float(stamp) -> float:
    """builtin_interfaces/Time -> seconds (float64)."""
    return stamp_to_seconds(stamp.sec, stamp.nanosec)


# --- images ----------------------------------------------------------------------------------
def image_to_rgb(msg) -> np.ndarray:
    """sensor_msgs/Image (rgb8, bgr8, rgba8, bgra8, mono8) -> uint8 (H, W, 3) RGB, a new array.

    Rows may be padded (`step` > width * channels). Raises ConversionError for what
    `check_image` refuses.
    """
    channels, order = _rgb_encoding(msg)
    pixels = _image_array(msg, channels, np.dtype(np.uint8))          # (H, W, channels)
    if order is None:
        return np.repeat(pixels, 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, list(order)])


def image_green(msg, step: int = 2) -> np.ndarray:
    """sensor_msgs/Image (the encodings image_to_rgb reads) -> uint8 (ceil(H/step),
    ceil(W/step)): its green channel (mono8: its grey) at every `step`-th pixel, a new array.
    A cheap luminance read straight from the message's bytes, without converting the whole
    image (what the face node keeps of every frame for mouth motion). ConversionError for
    what `check_image` refuses."""
    channels, order = _rgb_encoding(msg)
    h, _, row_step, row = _image_layout(msg, channels, 1)
    data = memoryview(msg.data).cast('B') if not isinstance(msg.data, bytes) else msg.data
    buf = np.frombuffer(data, dtype=np.uint8, count=h * row_step).reshape(h, row_step)
    green = 0 if order is None else order[1]       # the byte of G within a pixel
    return buf[::step, green:row:channels * step].copy()


def check_image(msg) -> None:
    """What image_to_rgb would refuse, found without touching the pixels: an unsupported
    encoding, an empty image, a step shorter than a row, data shorter than height * step."""
    channels, _ = _rgb_encoding(msg)
    _image_layout(msg, channels, 1)


def image_to_array(msg) -> np.ndarray:
    """mono8 -> uint8 (H, W); 32FC1 -> float32 (H, W) (a new array)."""
    if msg.encoding == 'mono8':
        return _image_array(msg, 1, np.dtype(np.uint8))[:, :, 0].copy()
    if msg.encoding == '32FC1':
        dtype = np.dtype('>f4' if msg.is_bigendian else '<f4')
        return _image_array(msg, 1, dtype)[:, :, 0].astype(np.float32)
    raise ConversionError(f'expected a mono8 or 32FC1 image, got {msg.encoding!r}; this topic '
                          'is written by lightmer nodes, check the remappings')


def _rgb_encoding(msg) -> tuple[int, tuple[int, ...] | None]:
    enc = msg.encoding.lower()
    if enc not in IMAGE_ENCODINGS:
        raise ConversionError(f'unsupported image encoding {msg.encoding!r}; publish one of '
                              f'{sorted(IMAGE_ENCODINGS)} (e.g. set the camera driver to rgb8)')
    return IMAGE_ENCODINGS[enc]


def _image_layout(msg, channels: int, itemsize: int) -> tuple[int, int, int, int]:
    """(height, width, step, row bytes) of a consistent image, or ConversionError."""
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * channels * itemsize
    if h == 0 or w == 0:
        raise ConversionError(f'empty image ({w}x{h}); the camera sent no pixels')
    if step < row:
        raise ConversionError(f'image step {step} is smaller than width*channels*bytes {row}')
    if len(msg.data) < h * step:
        raise ConversionError(f'truncated image: {len(msg.data)} bytes for {h} rows of {step} '
                              f'bytes ({msg.encoding} {w}x{h})')
    return h, w, step, row


def _image_array(msg, channels: int, dtype: np.dtype) -> np.ndarray:
    h, w, step, row = _image_layout(msg, channels, dtype.itemsize)
    data = memoryview(msg.data).cast('B') if not isinstance(msg.data, bytes) else msg.data
    buf = np.frombuffer(data, dtype=np.uint8, count=h * step).reshape(h, step)[:, :row]
    return buf.copy().view(dtype).reshape(h, w, channels)


# Leading bytes of the formats compressed_image_transport writes (and PIL reads).
_COMPRESSED_MAGIC = (b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n')


def check_compressed(msg) -> None:
    """Cheap arrival check of a CompressedImage: non-empty, starting like a JPEG or PNG file."""
    head = bytes(msg.data[:8])
    if not head:
        raise ConversionError(f'empty compressed image (format {msg.format!r}); the camera sent '
                              'no bytes')
    if not head.startswith(_COMPRESSED_MAGIC):
        raise ConversionError(f'compressed image (format {msg.format!r}) is neither JPEG nor '
                              'PNG data; publish jpeg or png (image_transport compressed)')


def compressed_to_rgb(msg, *,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """sensor_msgs/CompressedImage (jpeg, png: anything PIL reads) -> uint8 (H, W, 3) RGB.

    The width and height the file's header declares are checked against `max_pixels` before
    anything is decoded (a few bytes can claim 60000x60000 and ask for gigabytes). Every
    failure, whatever the decoder raises on hostile bytes, is a ConversionError.
    """
    from PIL import Image as PILImage  # only the face node decodes compressed images

    try:
        with PILImage.open(io.BytesIO(bytes(msg.data))) as img:
            width, height = img.size
            if width * height > max_pixels:
                raise ConversionError(
                    f'compressed image (format {msg.format!r}) declares {width}x{height} '
                    f'pixels, more than max_image_pixels ({max_pixels}); refused before '
                    'decoding (raise max_image_pixels for a larger camera)')
            return np.asarray(img.convert('RGB'), dtype=np.uint8).copy()
    except ConversionError:
        raise
    except PILImage.DecompressionBombError as exc:   # PIL's own bound, checked on open
        raise ConversionError(f'compressed image (format {msg.format!r}) declares more pixels '
                              f'than max_image_pixels ({max_pixels}): {exc}; refused before '
                              'decoding') from exc
    except _DECODE_ERRORS as exc:
        raise ConversionError(f'cannot decode compressed image (format {msg.format!r}): '
                              f'{type(exc).__name__}: {exc}; publish jpeg or png') from exc


def is_no_face_image(msg) -> bool:
    return msg.height == 0 and msg.width == 0 and msg.encoding == 'mono8'


# --- audio -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AudioFormat:
    """A validated PCM stream description."""

    channels: int
    sample_rate: int          # Hz
    dtype: np.dtype           # one sample, with its byte order


def audio_format_from_info(channels: int, sample_rate: int, sample_format: str,
                           coding_format: str) -> AudioFormat:
    """Validate ros-drivers AudioInfo fields. Raises ConversionError that names the fix."""
    coding = coding_format.strip().lower()
    if coding not in PCM_CODINGS:
        raise ConversionError(
            f'audio stream is {coding_format!r}, not raw PCM; lightmer needs wave samples: '
            'run audio_capture with format:=wave (e.g. sample_format:=S16LE '
            'sample_rate:=16000 channels:=1)')
    fmt = sample_format.strip().upper()
    if fmt not in SAMPLE_FORMATS:
        raise ConversionError(f'unsupported sample_format {sample_format!r}; use one of '
                              f'{sorted(SAMPLE_FORMATS)} (audio_capture sample_format:=S16LE)')
    if channels < 1:
        raise ConversionError(f'AudioInfo says {channels} channels; it must be at least 1')
    return AudioFormat(channels=int(channels), sample_rate=check_sample_rate(sample_rate),
                       dtype=SAMPLE_FORMATS[fmt])


def check_sample_rate(sample_rate: int) -> int:
    """A capture rate in Hz within [MIN_SAMPLE_RATE, MAX_SAMPLE_RATE], or ConversionError.

    Anything outside is a broken or uninitialised field (4294967295 is an unsigned -1), and
    resampling from it would cost gigabytes.
    """
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise ConversionError(f'audio sample_rate {sample_rate} Hz is not a usable rate (must '
                              f'be {MIN_SAMPLE_RATE}..{MAX_SAMPLE_RATE}); publish the real '
                              'capture rate (e.g. 16000)')
    return int(sample_rate)


def pcm_to_samples(data, fmt: AudioFormat) -> np.ndarray:
    """Interleaved PCM bytes -> (n, channels) samples in their stored dtype (a new array).

    Raises ConversionError when the byte count is not a whole number of frames.
    """
    raw = bytes(data)
    frame_bytes = fmt.dtype.itemsize * fmt.channels
    if len(raw) % frame_bytes:
        raise ConversionError(f'{len(raw)} audio bytes are not whole frames of {frame_bytes} '
                              f'bytes ({fmt.channels} x {fmt.dtype}); does AudioInfo match?')
    return np.frombuffer(raw, dtype=fmt.dtype).reshape(-1, fmt.channels).copy()


def mgonzs13_to_samples(audio_data, fmt_code: int, channels: int) -> np.ndarray:
    """mgonzs13 AudioData (the field named by the format code) -> (n, channels) samples."""
    if fmt_code not in MGONZS13_FORMATS:
        raise ConversionError(f'unsupported mgonzs13 audio format {fmt_code}; use one of '
                              f'{sorted(MGONZS13_FORMATS)} (1 = float32, 8 = int16)')
    if channels < 1:
        raise ConversionError(f'AudioInfo says {channels} channels; it must be at least 1')
    name, dtype = MGONZS13_FORMATS[fmt_code]
    a = np.asarray(getattr(audio_data, name), dtype=dtype)
    if a.size % channels:
        raise ConversionError(f'{a.size} samples are not whole frames of {channels} channels')
    return a.reshape(-1, channels).copy()


# --- outputs ---------------------------------------------------------------------------------
def diagnostics_counts(msg) -> dict[str, dict[str, str]]:
    """DiagnosticArray -> {status name: {key: value}} (what tests and tools read back)."""
    return {s.name: {kv.key: kv.value for kv in s.values} for s in msg.status}


# lightmer label -> hri_msgs/Expression constant (REP-155 has no 'calm': its nearest is neutral)
HRI_EXPRESSIONS = {
    'angry': 'angry', 'disgusted': 'disgusted', 'fearful': 'scared', 'happy': 'happy',
    'neutral': 'neutral', 'sad': 'sad', 'surprised': 'surprised', 'calm': 'neutral',
}


def expression_fields(probs: np.ndarray, labels: tuple[str, ...]) -> tuple[str, float]:
    """(hri expression constant, confidence) of the most probable class.

    Probabilities of labels mapped to the same constant (calm and neutral) are added first.
    """
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    merged: dict[str, float] = {}
    for label, score in zip(labels, p, strict=True):
        key = HRI_EXPRESSIONS.get(label, label)
        merged[key] = merged.get(key, 0.0) + float(score)
    best = max(merged, key=merged.__getitem__)
    return best, merged[best]


# Each class's point on the affect circumplex (valence, arousal), from the angles of Russell's
# (1980) direct circular scaling of emotion words (J. A. Russell, "A circumplex model of
# affect", Journal of Personality and Social Psychology 39(6):1161-1178, Fig. 2 / Table 3): a
# word at angle a (degrees, counter-clockwise from pleasure) sits at (cos a, sin a) on the
# unit circle. The word used per class: happy 'happy' 7.8, surprised 'astonished' 69.8,
# angry 'angry' 99.0, fearful 'afraid' 116.8, sad 'sad' 207.5, calm 'calm' 316.2. disgusted
# is not among Russell's 28 words: it is placed at 'distressed' (137.6), unpleasant and
# moderately aroused (lightmer's choice, docs/PEOPLE.md). neutral is the circumplex's centre.
CIRCUMPLEX_DEGREES = {'happy': 7.8, 'surprised': 69.8, 'angry': 99.0, 'fearful': 116.8,
                      'disgusted': 137.6, 'sad': 207.5, 'calm': 316.2}
CIRCUMPLEX = {**{label: (float(np.cos(np.radians(a))), float(np.sin(np.radians(a))))
                 for label, a in CIRCUMPLEX_DEGREES.items()}, 'neutral': (0.0, 0.0)}


def valence_arousal(probs: np.ndarray, labels: tuple[str, ...]) -> tuple[float, float]:
    """The class probabilities' expected point on the circumplex (CIRCUMPLEX): (valence,
    arousal), each in [-1, 1]. A class without a point counts as the centre."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    points = np.array([CIRCUMPLEX.get(label, (0.0, 0.0)) for label in labels])   # (C, 2)
    valence, arousal = (p[:, None] * points).sum(axis=0)
    return float(np.clip(valence, -1, 1)), float(np.clip(arousal, -1, 1))


# --- several people ---------------------------------------------------------------------------
# Longest face id accepted. A topic name may hold 247 characters (rmw's limit, beyond which
# rclpy refuses to create the topic); ROS4HRI's ids are 5 characters. 64 leaves any prefix up
# to ~160 characters room for /<id>/expression.
MAX_FACE_ID_LENGTH = 64


def check_face_id(face_id: str) -> str:
    """A face id that can be one token of a topic name (/humans/faces/<id>/...): a letter,
    then letters, digits or underscores (ROS4HRI's ids are such), at most MAX_FACE_ID_LENGTH
    characters. ConversionError otherwise (its message shows at most 40 characters of it)."""
    shown = repr(face_id[:40]) + ('...' if len(face_id) > 40 else '')
    if len(face_id) > MAX_FACE_ID_LENGTH:
        raise ConversionError(f'face id {shown} is {len(face_id)} characters long; ids may '
                              f'have at most {MAX_FACE_ID_LENGTH} to name a topic')
    if not (face_id[:1].isascii() and face_id[:1].isalpha()
            and all(c.isascii() and (c.isalnum() or c == '_') for c in face_id)):
        raise ConversionError(f'face id {shown} cannot name a topic: ids must be a '
                              'letter followed by letters, digits or underscores')
    return face_id
