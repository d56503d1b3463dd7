"""rosbag2 writing/reading (evaluation.bags): timeline layout, type hashes and CDR bytes equal to
rclpy's, clear errors for bags lightmer cannot use, labels CSV."""
from __future__ import annotations

import io

import numpy as np
import pytest
import rclpy
from audio_common_msgs.msg import AudioDataStamped, AudioInfo
from PIL import Image as PILImage
from rclpy.context import Context
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from sensor_msgs.msg import Image

from lightmer.cli import main
from lightmer.core.messages import ConversionError
from lightmer.evaluation import bags

FPS = 25.0


def _clip(rng, clip_id: str, label: str, n_frames: int, audio_s: float) -> bags.BagClip:
    frames = rng.integers(0, 256, (n_frames, 48, 64, 3), dtype=np.uint8)
    audio = (0.3 * rng.standard_normal(int(audio_s * bags.SAMPLE_RATE))).astype(np.float32)
    return bags.BagClip(clip_id, label, frames, np.arange(n_frames) / FPS, FPS, audio)


@pytest.fixture(scope='module')
def clips():
    rng = np.random.default_rng(7)
    # The second clip's video outlasts its audio: the clip spans the longer of the two.
    return [_clip(rng, 'a1', 'happy', 30, 1.3), _clip(rng, 'a2', 'sad', 40, 1.1)]


@pytest.fixture(scope='module', params=['mcap', 'sqlite3'])
def written(request, tmp_path_factory, clips):
    out = tmp_path_factory.mktemp(request.param) / 'bag'
    summary = bags.write_bag(clips, out, storage=request.param, gap_s=0.5)
    return request.param, out, summary


def test_layout_round_trip(written, clips):
    storage, out, summary = written
    info = bags.bag_info(out)
    assert info.storage == storage
    assert info.start_ns == bags.DEFAULT_START_NS
    fmt = info.audio_format
    assert (fmt.channels, fmt.sample_rate, fmt.dtype) == (1, 16000, np.dtype('<i2'))
    rows = bags.read_labels(summary['labels'], info.start_s)
    assert [(r.label, r.clip_id) for r in rows] == [('happy', 'a1'), ('sad', 'a2')]
    t0 = info.start_s
    assert rows[0].start == pytest.approx(t0 + 0.5, abs=1e-6)
    assert rows[0].end == pytest.approx(t0 + 1.8, abs=1e-6)           # audio 1.3 s > 30/25 s
    assert rows[1].start == pytest.approx(t0 + 2.3, abs=1e-6)
    assert rows[1].end - rows[1].start == pytest.approx(40 / FPS, abs=1e-4)  # video 1.6 s

    msgs = list(bags.read_bag(out))
    assert [m.t_ns for m in msgs] == sorted(m.t_ns for m in msgs)
    images = [m for m in msgs if m.kind == 'image']
    audio = [m for m in msgs if m.kind == 'audio']
    assert summary['messages'][bags.IMAGE_TOPIC] == len(images)

    # Clip frames arrive unchanged at clip start + their own time; gap frames are grey.
    for row, clip in zip(rows, clips, strict=True):
        inside = [m for m in images if row.start - 1e-6 <= m.stamp_ns / 1e9 < row.end]
        got = [m for m in inside if not np.all(m.data == bags.GAP_GREY)]
        assert len(got) == len(clip.frames)
        for m, frame, t in zip(got, clip.frames, clip.frame_times, strict=True):
            np.testing.assert_array_equal(m.data, frame)
            assert m.stamp_ns / 1e9 == pytest.approx(row.start + t, abs=1e-6)
    gap_frames = [m for m in images if m.stamp_ns / 1e9 < rows[0].start]
    assert len(gap_frames) == 12           # 0, 40, ..., 440 ms; the clip's first is at 500
    assert all(np.all(m.data == bags.GAP_GREY) for m in gap_frames)
    assert all(m.t_ns == m.stamp_ns for m in images)

    # Audio: whole chunks on a gapless sample grid, received once complete.
    chunk_ns = bags.AUDIO_CHUNK * 1_000_000_000 // 16000
    assert all(len(m.data) == bags.AUDIO_CHUNK and m.sample_rate == 16000 for m in audio)
    stamps = np.array([m.stamp_ns for m in audio])
    assert stamps[0] == info.start_ns
    assert np.all(np.diff(stamps) == chunk_ns)
    assert all(m.t_ns == m.stamp_ns + chunk_ns for m in audio)
    stream = np.concatenate([m.data for m in audio])
    for row, clip in zip(rows, clips, strict=True):
        i0 = round((row.start - t0) * 16000)
        seg = stream[i0:i0 + len(clip.audio)]
        np.testing.assert_allclose(seg, np.clip(clip.audio, -1, 1), atol=1 / 16000)
    assert np.all(stream[:round(0.5 * 16000)] == 0)                       # leading silence
    i_end = round((rows[-1].end - t0) * 16000)
    assert np.all(stream[i_end:] == 0)                                    # trailing silence
    assert len(stream) >= round((rows[-1].end - t0 + 0.5) * 16000)


def test_type_hashes_equal_rclpys(written):
    """The hashes in the bag equal those rclpy's generated type support reports on the graph."""
    _, out, _ = written
    with bags._open_reader(out) as reader:
        in_bag = {c.msgtype: c.digest for c in reader.connections}
    ctx = Context()
    rclpy.init(context=ctx)
    try:
        node = rclpy.create_node('hash_probe', context=ctx)
        reported = {}
        for i, cls in enumerate((Image, AudioDataStamped, AudioInfo)):
            node.create_publisher(cls, f'probe_{i}', 1)
            (endpoint,) = node.get_publishers_info_by_topic(f'/probe_{i}')
            reported[endpoint.topic_type] = str(endpoint.topic_type_hash)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=ctx)
    assert in_bag == reported
    assert all(h.startswith('RIHS01_') for h in in_bag.values())


def _assert_same_cdr(rclpy_msg, raw: bytes) -> None:
    """The bag's CDR bytes are rclpy's, except alignment padding: rclpy (Fast CDR) leaves the
    padding bytes uninitialised (seen: b'U' after a uint8), rosbags writes zeros there."""
    ours = serialize_message(rclpy_msg)
    assert len(ours) == len(raw)
    diff = [i for i, (a, b) in enumerate(zip(ours, raw, strict=True)) if a != b]
    assert all(raw[i] == 0 for i in diff)
    assert len(diff) <= 3 * 4                   # a few pad bytes at most, never payload
    assert deserialize_message(raw, type(rclpy_msg)) == rclpy_msg


def test_cdr_bytes_equal_rclpys(written, clips):
    _, out, _ = written
    firsts: dict[str, tuple[int, bytes]] = {}
    for topic, _msgtype, t_ns, raw in bags.iter_raw(out):
        if topic == bags.IMAGE_TOPIC and raw.endswith(bytes([bags.GAP_GREY]) * 64):
            continue                            # skip the grey gap frames
        firsts.setdefault(topic, (t_ns, raw))
    assert set(firsts) == {bags.IMAGE_TOPIC, bags.AUDIO_TOPIC, bags.AUDIO_INFO_TOPIC}

    info = AudioInfo(channels=1, sample_rate=16000, sample_format='S16LE', bitrate=256000,
                     coding_format='wave')
    _assert_same_cdr(info, firsts[bags.AUDIO_INFO_TOPIC][1])

    frame = clips[0].frames[0]
    t_ns, raw = firsts[bags.IMAGE_TOPIC]
    img = Image(height=frame.shape[0], width=frame.shape[1], encoding='rgb8', is_bigendian=0,
                step=frame.shape[1] * 3, data=frame.tobytes())
    img.header.frame_id = 'camera'
    img.header.stamp.sec, img.header.stamp.nanosec = divmod(t_ns, 1_000_000_000)
    _assert_same_cdr(img, raw)

    _, raw = firsts[bags.AUDIO_TOPIC]           # the first chunk: leading silence
    aud = AudioDataStamped()
    aud.header.frame_id = bags.MIC_FRAME
    aud.header.stamp.sec, aud.header.stamp.nanosec = divmod(bags.DEFAULT_START_NS,
                                                            1_000_000_000)
    aud.audio.data = bytes(2 * bags.AUDIO_CHUNK)
    _assert_same_cdr(aud, raw)


def _smooth_clip(clip_id: str, n_frames: int) -> bags.BagClip:
    """Frames JPEG keeps close to the original (gradients, not noise)."""
    y, x = np.mgrid[0:48, 0:64]
    frames = np.stack([np.stack([(x * 4 + i) % 256, (y * 5) % 256, (x + y + 3 * i) % 256], -1)
                       for i in range(n_frames)]).astype(np.uint8)
    audio = np.zeros(int(n_frames / FPS * bags.SAMPLE_RATE), np.float32)
    return bags.BagClip(clip_id, 'happy', frames, np.arange(n_frames) / FPS, FPS, audio)


@pytest.mark.parametrize('fmt', ['jpeg', 'png'])
def test_compressed_bags_are_written_and_read(tmp_path, fmt):
    clip = _smooth_clip('c1', 10)
    bag = tmp_path / 'bag'
    bags.write_bag([clip], bag, gap_s=0.2, compressed=fmt)
    info = bags.bag_info(bag)         # the default topic's /compressed sibling is found
    assert info.image_topic == bags.IMAGE_TOPIC + '/compressed'
    assert info.image_compressed
    assert info.topics[info.image_topic][0] == bags.COMPRESSED_TYPE
    assert bags.IMAGE_TOPIC not in info.topics
    raw = [(topic, data) for topic, _, _, data in bags.iter_raw(bag)
           if topic == info.image_topic]
    assert len(raw) == info.topics[info.image_topic][1]
    store = bags.typestore()
    msg = store.deserialize_cdr(raw[0][1], bags.COMPRESSED_TYPE)
    assert msg.format == f'rgb8; {fmt} compressed bgr8'      # compressed_image_transport's
    images = [m for m in bags.read_bag(bag) if m.kind == 'image']
    in_clip = [m for m in images if m.data.std() > 0]        # not the grey gap frames
    assert len(in_clip) == 10
    for m, frame in zip(in_clip, clip.frames, strict=True):
        assert m.data.dtype == np.uint8 and m.data.shape == frame.shape
        if fmt == 'png':
            np.testing.assert_array_equal(m.data, frame)      # lossless
        else:
            assert np.abs(m.data.astype(int) - frame).mean() < 4
    first = store.deserialize_cdr(raw[0][1], bags.COMPRESSED_TYPE)
    with PILImage.open(io.BytesIO(bytes(first.data))) as img:
        assert img.format == {'jpeg': 'JPEG', 'png': 'PNG'}[fmt]


def test_compressed_frames_are_bounded_in_size(tmp_path):
    bag = tmp_path / 'bag'
    bags.write_bag([_smooth_clip('c1', 3)], bag, gap_s=0.1, compressed='png')
    with pytest.raises(ConversionError, match='refused before decoding'):
        list(bags.read_bag(bag, max_image_pixels=48 * 64 - 1))
    assert len(list(bags.read_bag(bag, max_image_pixels=48 * 64))) > 3


def test_cli_make_bag_compressed(tiny_corpus, tmp_path):
    assert main(['make-bag', '--dataset', 'crema-d', '--root', str(tiny_corpus), '--actors',
                 '1002', '--out', str(tmp_path / 'bag'), '--compressed', 'jpeg']) == 0
    info = bags.bag_info(tmp_path / 'bag')
    assert info.image_topic == '/camera/image_raw/compressed' and info.image_compressed


def test_write_refuses_existing_and_cleans_up_on_error(tmp_path, clips):
    out = tmp_path / 'bag'
    with pytest.raises(ValueError, match='no clips'):
        bags.write_bag([], out)
    assert not out.exists()                     # no half-made bag left behind
    out.mkdir()
    with pytest.raises(FileExistsError, match='never overwritten'):
        bags.write_bag(clips, out)


# --- bags lightmer must refuse, each with a message that says what to do ---------------------
def _custom_bag(path, *, image=True, audio=True, info: dict | None = None,
                info_topic_only=False, audio_type=bags.AUDIO_TYPE):
    store = bags.typestore()
    t = bags.DEFAULT_START_NS
    with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        if image:
            c = w.add_connection(bags.IMAGE_TOPIC, bags.IMAGE_TYPE, typestore=store)
            msg = bags.image_message(store, t, np.zeros((4, 4, 3), np.uint8))
            w.write(c, t, store.serialize_cdr(msg, bags.IMAGE_TYPE))
        if audio:
            c = w.add_connection(bags.AUDIO_TOPIC, audio_type, typestore=store)
            if audio_type == bags.AUDIO_TYPE:
                msg = bags.audio_message(store, t, np.zeros(16, np.int16))
                w.write(c, t, store.serialize_cdr(msg, audio_type))
        if info is not None:
            c = w.add_connection(bags.AUDIO_INFO_TOPIC, bags.AUDIO_INFO_TYPE, typestore=store)
            if not info_topic_only:
                msg = bags.audio_info_message(store, **info)
                w.write(c, t, store.serialize_cdr(msg, bags.AUDIO_INFO_TYPE))
    return path


WAVE = {}


@pytest.mark.parametrize('kwargs, pattern', [
    ({'audio': False, 'info': WAVE}, r'no audio topic /audio/audio_stamped.*--audio-topic'),
    ({'image': False, 'info': WAVE}, r'no camera topic /camera/image_raw.*--image-topic'),
    ({}, r'no audio info topic /audio/audio_info.*--audio-info-topic'),
    ({'info': WAVE, 'info_topic_only': True}, r'has no AudioInfo message'),
    ({'info': {'coding_format': 'mp3'}}, r"'mp3', not raw PCM.*format:=wave"),
    ({'info': {'sample_format': 'S24LE'}}, r"unsupported sample_format 'S24LE'.*S16LE"),
    ({'info': WAVE, 'audio_type': 'std_msgs/msg/String'},
     r'carries std_msgs/msg/String, expected audio_common_msgs/msg/AudioDataStamped'),
])
def test_unusable_bags_are_refused(tmp_path, kwargs, pattern):
    bag = _custom_bag(tmp_path / 'bag', **kwargs)
    with pytest.raises(bags.BagFormatError, match=pattern):
        bags.bag_info(bag)
    with pytest.raises(bags.BagFormatError, match=pattern):
        next(bags.read_bag(bag))


def test_minimal_valid_bag_reads(tmp_path):
    bag = _custom_bag(tmp_path / 'bag', info=WAVE)
    kinds = [m.kind for m in bags.read_bag(bag)]
    assert sorted(kinds) == ['audio', 'image']


def test_not_a_bag(tmp_path):
    with pytest.raises(FileNotFoundError, match='not a rosbag2 bag'):
        bags.bag_info(tmp_path)
    with pytest.raises(FileNotFoundError, match='no such bag'):
        bags.bag_info(tmp_path / 'missing.bag')
    (tmp_path / 'notes.txt').write_text('hello')
    with pytest.raises(FileNotFoundError, match='not a rosbag2 bag'):
        bags.bag_info(tmp_path / 'notes.txt')
    (tmp_path / 'ros1.bag').write_bytes(b'#ROSBAG V2.0\n')
    with pytest.raises(FileNotFoundError, match='ROS 1 bag'):
        bags.bag_info(tmp_path / 'ros1.bag')


@pytest.mark.parametrize('storage, suffix', [('mcap', '.mcap'), ('sqlite3', '.db3')])
def test_bags_open_whatever_their_name_and_as_single_files(tmp_path, clips, storage, suffix):
    """A rosbag2 directory named *.bag (as `--out eval.bag` makes) is rosbag2, not ROS 1; the
    storage file inside it opens on its own too (as `ros2 bag` allows)."""
    named = tmp_path / 'eval.bag'
    bags.write_bag(clips, named, storage=storage, gap_s=0.5)
    reference = [(m.kind, m.t_ns, m.stamp_ns) for m in bags.read_bag(named)]
    assert len(reference) > 20
    (single,) = named.glob(f'*{suffix}')
    for path in (named, single):
        info = bags.bag_info(path)
        assert info.storage == storage
        assert [(m.kind, m.t_ns, m.stamp_ns) for m in bags.read_bag(path)] == reference
        assert [t for t, *_ in bags.iter_raw(path)] != []


def test_labels_csv(tmp_path):
    path = tmp_path / 'l.csv'
    rows = [bags.LabelRow(12.5, 14.0, 'sad', 'b'), bags.LabelRow(10.0, 11.25, 'happy', 'a')]
    bags.write_labels(path, rows)
    got = bags.read_labels(path)
    assert [(r.start, r.end, r.label, r.clip_id) for r in got] == [
        (10.0, 11.25, 'happy', 'a'), (12.5, 14.0, 'sad', 'b')]
    # A hand-made CSV in seconds from the bag's start is shifted onto the bag's clock.
    shifted = bags.read_labels(path, bag_start_s=1000.0)
    assert shifted[0].start == 1010.0 and shifted[1].end == 1014.0
    assert bags.read_labels(path, bag_start_s=11.0)[0].start == 10.0   # already absolute
    path.write_text('start,end,label\n1,2,sad\n')
    with pytest.raises(ValueError, match=r"missing column\(s\) \['clip_id'\]"):
        bags.read_labels(path)
    path.write_text('start,end,label,clip_id\n2,1,sad,x\n')
    with pytest.raises(ValueError, match='must be after start'):
        bags.read_labels(path)


def test_cli_errors_name_the_fix(tmp_path, capsys):
    assert main(['make-bag', '--dataset', 'crema-d', '--root', str(tmp_path / 'nowhere'),
                 '--out', str(tmp_path / 'bag')]) == 2
    assert 'does not exist' in capsys.readouterr().err
    bag = _custom_bag(tmp_path / 'mp3', info={'coding_format': 'mp3'})
    labels = tmp_path / 'l.csv'
    labels.write_text('start,end,label,clip_id\n0,1,happy,a\n')
    assert main(['eval-bag', '--bag', str(bag), '--labels', str(labels),
                 '--checkpoint', str(tmp_path / 'none.pt')]) == 2
    assert "'mp3', not raw PCM" in capsys.readouterr().err
