"""Message <-> array conversions: image encodings, audio sample formats, stamps, outputs."""
from __future__ import annotations

import io
import struct
import zlib
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightmer_msgs.msg import FaceCrop, FaceCrops
from PIL import Image as PILImage
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from lightmer.core.features import to_mono
from lightmer.core.messages import (
    ConversionError,
    audio_format_from_info,
    check_face_id,
    check_sample_rate,
    compressed_to_rgb,
    expression_fields,
    image_to_array,
    image_to_rgb,
    mgonzs13_to_samples,
    pcm_to_samples,
    time_to_float,
)
from lightmer.ros.conversions import (
    array_to_image,
    classification_msg,
    faces_from_msg,
    float_to_time,
    label_info_msg,
)

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (7, 5, 3), dtype=np.uint8)


def _image(pixels: np.ndarray, encoding: str, pad: int = 0) -> Image:
    h, w = pixels.shape[:2]
    row = pixels.reshape(h, -1)
    padded = np.concatenate([row, np.full((h, pad), 77, np.uint8)], axis=1)
    msg = Image(height=h, width=w, encoding=encoding, step=padded.shape[1])
    msg.data = padded.tobytes()
    return msg


@pytest.mark.parametrize('pad', [0, 3])
@pytest.mark.parametrize('encoding,stored', [
    ('rgb8', RGB),
    ('bgr8', RGB[:, :, ::-1]),
    ('rgba8', np.concatenate([RGB, np.full((7, 5, 1), 9, np.uint8)], axis=2)),
    ('bgra8', np.concatenate([RGB[:, :, ::-1], np.full((7, 5, 1), 9, np.uint8)], axis=2)),
])
def test_color_encodings_give_the_same_rgb(encoding, stored, pad):
    out = image_to_rgb(_image(np.ascontiguousarray(stored), encoding, pad))
    assert out.dtype == np.uint8 and out.shape == (7, 5, 3)
    np.testing.assert_array_equal(out, RGB)


def test_mono8_becomes_grey_rgb():
    grey = RGB[:, :, 0].copy()
    out = image_to_rgb(_image(grey, 'mono8', pad=2))
    np.testing.assert_array_equal(out, np.repeat(grey[:, :, None], 3, axis=2))


@pytest.mark.parametrize('encoding', ['yuv422', '16UC1', 'bayer_rggb8'])
def test_unsupported_encoding_is_refused_with_the_accepted_list(encoding):
    with pytest.raises(ConversionError, match='rgb8'):
        image_to_rgb(_image(RGB, encoding))


def test_zero_size_and_truncated_images_are_refused():
    empty = Image(height=0, width=0, encoding='rgb8', step=0)
    with pytest.raises(ConversionError, match='empty'):
        image_to_rgb(empty)
    msg = _image(RGB, 'rgb8')
    msg.data = bytes(msg.data)[:-4]
    with pytest.raises(ConversionError, match='truncated'):
        image_to_rgb(msg)
    msg = _image(RGB, 'rgb8')
    msg.step = 4
    with pytest.raises(ConversionError, match='step'):
        image_to_rgb(msg)


@pytest.mark.parametrize('fmt,tolerance', [('PNG', 0), ('JPEG', 8)])
def test_compressed_images_decode(fmt, tolerance):
    y, x = np.mgrid[0:16, 0:24]
    smooth = np.stack([x * 10, y * 15, 255 - x * 10], axis=2).astype(np.uint8)   # JPEG-friendly
    buf = io.BytesIO()
    options = {'quality': 100, 'subsampling': 0} if fmt == 'JPEG' else {}
    PILImage.fromarray(smooth).save(buf, format=fmt, **options)
    out = compressed_to_rgb(CompressedImage(format=fmt.lower(), data=buf.getvalue()))
    assert out.shape == (16, 24, 3)
    assert np.abs(out.astype(int) - smooth.astype(int)).max() <= tolerance
    with pytest.raises(ConversionError, match='decode'):
        compressed_to_rgb(CompressedImage(format='jpeg', data=b'not an image'))


def test_crop_and_mel_images_round_trip():
    crop = RNG.integers(0, 256, (98, 80), dtype=np.uint8)
    mel = RNG.standard_normal((128, 43)).astype(np.float32)
    header = Header(stamp=float_to_time(12.5), frame_id='cam')
    msg = array_to_image(crop, header)
    assert (msg.encoding, msg.height, msg.width, msg.header.frame_id) == ('mono8', 98, 80, 'cam')
    np.testing.assert_array_equal(image_to_array(msg), crop)
    msg = array_to_image(mel, header)
    assert msg.encoding == '32FC1' and msg.step == 43 * 4
    np.testing.assert_array_equal(image_to_array(msg), mel)
    with pytest.raises(ConversionError):
        image_to_array(_image(RGB, 'rgb8'))


def test_stamps_round_trip_to_the_nanosecond():
    for t in (0.0, 1.5, 1_732_000_000.123456789, 1000.3 + 1e-9):
        stamp = float_to_time(t)
        assert 0 <= stamp.nanosec < 1_000_000_000
        assert abs(time_to_float(stamp) - t) < 1e-6
    assert float_to_time(2.9999999999).sec == 3


# --- audio -----------------------------------------------------------------------------------
SIGNAL = (0.5 * np.sin(np.linspace(0, 20, 400))).astype(np.float32)   # (400,) in [-0.5, 0.5]


@pytest.mark.parametrize('sample_format,encode,tolerance', [
    ('S16LE', lambda x: (x * 32767).astype('<i2'), 1e-4),
    ('S32LE', lambda x: (x * 2147483647).astype('<i4'), 1e-6),
    ('F32LE', lambda x: x.astype('<f4'), 0),
    ('U8', lambda x: (x * 127 + 128).round().astype('u1'), 1e-2),
])
@pytest.mark.parametrize('channels', [1, 2, 3])
def test_pcm_formats_and_channels_decode_to_the_same_mono(sample_format, encode, tolerance,
                                                         channels):
    fmt = audio_format_from_info(channels, 48000, sample_format, 'wave')
    frames = np.repeat(encode(SIGNAL)[:, None], channels, axis=1)        # interleaved
    samples = pcm_to_samples(frames.tobytes(), fmt)
    assert samples.shape == (400, channels)
    np.testing.assert_allclose(to_mono(samples), SIGNAL, atol=tolerance + 1e-7)


def test_mp3_and_bad_audio_info_are_refused_naming_the_fix():
    with pytest.raises(ConversionError, match='format:=wave'):
        audio_format_from_info(1, 16000, 'S16LE', 'mp3')
    with pytest.raises(ConversionError, match='sample_format'):
        audio_format_from_info(1, 16000, 'S24LE', 'wave')
    with pytest.raises(ConversionError, match='rate'):
        audio_format_from_info(1, 0, 'S16LE', 'wave')
    with pytest.raises(ConversionError, match='channels'):
        audio_format_from_info(0, 16000, 'S16LE', 'wave')
    fmt = audio_format_from_info(2, 16000, 'S16LE', 'wave')
    with pytest.raises(ConversionError, match='whole frames'):
        pcm_to_samples(b'\x00' * 6, fmt)


def test_mgonzs13_audio_data_decodes_by_format_code():
    data = SimpleNamespace(float32_data=[0.5, -0.5, 0.25, -0.25], int32_data=[],
                           int16_data=[16384, -16384], int8_data=[], uint8_data=[])
    np.testing.assert_allclose(to_mono(mgonzs13_to_samples(data, 1, 2)), [0.0, 0.0])
    np.testing.assert_allclose(to_mono(mgonzs13_to_samples(data, 8, 1)), [0.5, -0.5])
    with pytest.raises(ConversionError, match='format'):
        mgonzs13_to_samples(data, 3, 1)


# --- outputs ---------------------------------------------------------------------------------
def test_classification_has_every_class_in_label_order():
    labels = ('angry', 'disgusted', 'fearful', 'happy', 'neutral', 'sad')
    probs = np.array([0.1, 0.2, 0.05, 0.4, 0.15, 0.1])
    msg = classification_msg(probs, labels, Header(frame_id='cam'))
    assert [h.class_id for h in msg.results] == list(labels)
    assert abs(sum(h.score for h in msg.results) - 1) < 1e-12
    info = label_info_msg(labels, Header())
    assert [(c.class_id, c.class_name) for c in info.class_map] == list(enumerate(labels))
    with pytest.raises(ConversionError):
        classification_msg(probs[:3], labels, Header())


def test_expression_merges_calm_into_neutral():
    labels = ('neutral', 'calm', 'happy', 'sad', 'angry', 'fearful', 'disgusted', 'surprised')
    probs = np.array([0.2, 0.2, 0.3, 0.1, 0.05, 0.05, 0.05, 0.05])
    assert expression_fields(probs, labels) == ('neutral', pytest.approx(0.4))
    assert expression_fields(np.eye(8)[5], labels)[0] == 'scared'


def _png_claiming(width: int, height: int) -> bytes:
    """A real 4x4 PNG whose IHDR is rewritten to claim width x height (CRC fixed up), as a
    hostile or broken camera could send: PIL reads the size from the header alone."""
    buf = io.BytesIO()
    PILImage.fromarray(np.zeros((4, 4, 3), np.uint8)).save(buf, format='PNG')
    data = bytearray(buf.getvalue())
    at = data.index(b'IHDR')
    data[at + 4:at + 12] = struct.pack('>II', width, height)
    data[at + 17:at + 21] = struct.pack('>I', zlib.crc32(bytes(data[at:at + 17])))
    return bytes(data)


def _jpeg_claiming(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format='JPEG')
    data = bytearray(buf.getvalue())
    at = data.index(b'\xff\xc0')                       # SOF0: length, precision, height, width
    data[at + 5:at + 9] = struct.pack('>HH', height, width)
    return bytes(data)


@pytest.mark.parametrize('make', [_png_claiming, _jpeg_claiming])
def test_compressed_image_claiming_huge_dimensions_is_refused_before_decoding(make):
    msg = CompressedImage(format='png', data=make(60000, 60000))
    with pytest.raises(ConversionError, match='max_image_pixels'):
        compressed_to_rgb(msg, max_pixels=4096 * 4096)
    with pytest.raises(ConversionError, match='max_image_pixels'):
        compressed_to_rgb(msg)                         # the default bound refuses it too
    with pytest.raises(ConversionError, match='12000x9000'):
        compressed_to_rgb(CompressedImage(format='png', data=make(12000, 9000)))
    small = CompressedImage(format='png', data=make(64, 48))
    with pytest.raises(ConversionError, match='max_image_pixels'):
        compressed_to_rgb(small, max_pixels=64 * 48 - 1)


def test_compressed_image_within_the_bound_that_fails_to_decode_is_a_conversion_error():
    # header says 640x480, the pixel data is a 4x4 image's: truncated for PIL
    with pytest.raises(ConversionError, match='decode'):
        compressed_to_rgb(CompressedImage(format='png', data=_png_claiming(640, 480)),
                          max_pixels=640 * 480)


def test_absurd_sample_rates_are_refused():
    for rate in (4294967295, 10_000_000, 999):
        with pytest.raises(ConversionError, match='sample_rate'):
            audio_format_from_info(1, rate, 'S16LE', 'wave')
    assert audio_format_from_info(1, 384000, 'S16LE', 'wave').sample_rate == 384000
    for rate in (-16000, 0, 2**31 - 1):
        with pytest.raises(ConversionError, match='rate'):
            check_sample_rate(rate)
    assert check_sample_rate(48000) == 48000


def _valid_compressed() -> list[bytes]:
    out = []
    for fmt in ('PNG', 'JPEG'):
        buf = io.BytesIO()
        PILImage.fromarray(RNG.integers(0, 256, (12, 16, 3), dtype=np.uint8)).save(buf, fmt)
        out.append(buf.getvalue())
    return out


VALID_COMPRESSED = _valid_compressed()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(base=st.sampled_from(VALID_COMPRESSED),
       edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=8),
       cut=st.integers(0, 10_000), tail=st.binary(max_size=64))
def test_any_corruption_of_a_compressed_image_decodes_or_is_a_conversion_error(base, edits,
                                                                              cut, tail):
    """Flipped bytes, truncation and trailing garbage on real PNG/JPEG files: the decoder
    returns an RGB image or raises ConversionError, never anything else."""
    data = bytearray(base)
    for at, value in edits:
        data[at % len(data)] = value
    data = bytes(data[:max(1, len(data) - cut % len(data))]) + tail
    try:
        rgb = compressed_to_rgb(CompressedImage(format='png', data=data), max_pixels=1 << 20)
    except ConversionError:
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert rgb.shape[0] * rgb.shape[1] <= 1 << 20


def test_a_png_whose_chunk_lengths_lie_is_a_conversion_error():
    """An IDAT chunk claiming 16 bytes: PIL reads the next "chunk" from inside the pixel data
    and raises SyntaxError (not OSError or ValueError), which must not end the face node."""
    data = bytearray(VALID_COMPRESSED[0])
    at = data.index(b'IDAT')
    data[at - 4:at] = (16).to_bytes(4, 'big')
    with pytest.raises(ConversionError, match='cannot decode'):
        compressed_to_rgb(CompressedImage(format='png', data=bytes(data)))


@pytest.mark.parametrize('confidence', [float('nan'), float('inf'), float('-inf')])
def test_a_face_with_a_non_finite_confidence_is_refused_with_its_reason(confidence):
    crop = Image(height=98, width=80, encoding='mono8', step=80, data=bytes(98 * 80))
    msg = FaceCrops(faces=[FaceCrop(id='f1', confidence=confidence, crop=crop),
                           FaceCrop(id='f2', confidence=0.9, crop=crop)], detected=2)
    faces, errors = faces_from_msg(msg, (98, 80))
    assert [f.face_id for f in faces] == ['f2']
    assert len(errors) == 1 and 'not a finite number' in errors[0]


@pytest.mark.parametrize('face_id', ['f' * 65, 'f' * 300, 'a b', '1a', ''])
def test_an_id_that_cannot_name_a_topic_is_refused(face_id):
    with pytest.raises(ConversionError):
        check_face_id(face_id)
    assert check_face_id('f' * 64) == 'f' * 64
