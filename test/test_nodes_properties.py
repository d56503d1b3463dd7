"""Property-based checks of the two invariants on the real node classes, in one process:

1. no input on any subscribed topic ends a node (a callback never raises: in an executor, an
   escaped exception ends the node's thread, and with it the node);
2. every `emotion` message is finite, non-negative and sums to 1.

Hypothesis generates the messages field by field (image encoding, width, height, step, data
length; AudioInfo fields; audio chunk bytes and float contents; stamps anywhere in the
builtin_interfaces/Time range), and the examples of one test run through the same node
instances, as a stream of garbage would. The nodes' callbacks are called directly from the
test thread; what they publish travels over real DDS (loopback) to a probe node.
After the garbage, ordinary input must still work.
"""
from __future__ import annotations

import io
import struct
import threading
import zlib

import numpy as np
import pytest
import rclpy
import torch
from audio_common_msgs.msg import AudioData, AudioDataStamped, AudioInfo
from builtin_interfaces.msg import Time
from hri_msgs.msg import IdsList
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lightmer_msgs.msg import FaceCrop, FaceCrops
from PIL import Image as PILImage
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import CompressedImage, Image, RegionOfInterest
from std_msgs.msg import Header
from vision_msgs.msg import Classification

import ros_helpers as rh
from lightmer.core.messages import time_to_float
from lightmer.ros.audio_feature_node import AudioFeatureNode
from lightmer.ros.conversions import float_to_time
from lightmer.ros.face_crop_node import MAX_TRACKED_IDS, FaceCropNode
from lightmer.ros.fusion_node import FusionNode
from lightmer.ros.qos import output_qos
from lightmer.stream.fuser import is_probability_vector
from polling import wait_until

SETTINGS = settings(max_examples=120, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])

# --- strategies --------------------------------------------------------------------------------
stamps = st.builds(Time, sec=st.integers(-2**31, 2**31 - 1), nanosec=st.integers(0, 2**32 - 1))
near_stamps = st.builds(lambda t: float_to_time(t), st.floats(1000.0, 1060.0))
any_stamp = st.one_of(near_stamps, near_stamps, stamps)
encodings = st.sampled_from(['rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'RGB8', 'yuv422',
                             '16UC1', '32FC1', '', 'jpeg'])
sizes = st.sampled_from([0, 1, 2, 3, 5, 39, 40, 41, 64, 97, 120])


@st.composite
def images(draw):
    """sensor_msgs/Image with each field drawn on its own: consistent or not."""
    encoding = draw(encodings)
    height, width = draw(sizes), draw(sizes)
    if draw(st.booleans()):
        height, width = draw(st.sampled_from([(3, 5000), (5000, 3), (1, 1), (2, 4000)]))
    channels = {'mono8': 1, 'rgba8': 4, 'bgra8': 4}.get(encoding.lower(), 3)
    step = draw(st.one_of(st.just(width * channels), st.integers(0, width * channels + 8)))
    length = draw(st.one_of(st.just(height * step), st.integers(0, height * step + 16)))
    fill = draw(st.integers(0, 255))
    return Image(header=Header(stamp=draw(any_stamp), frame_id='cam'), height=height,
                 width=width, encoding=encoding, is_bigendian=draw(st.integers(0, 1)),
                 step=step, data=bytes([fill]) * length)


@st.composite
def compressed(draw):
    kind = draw(st.sampled_from(['jpeg', 'png', 'garbage', 'empty', 'claims']))
    if kind in ('jpeg', 'png'):
        h, w = draw(st.sampled_from([(1, 1), (3, 500), (48, 64), (120, 160)]))
        buf = io.BytesIO()
        PILImage.fromarray(np.full((h, w, 3), draw(st.integers(0, 255)), np.uint8)).save(
            buf, format=kind.upper())
        data = buf.getvalue()
        data = data[:draw(st.integers(1, len(data)))]          # maybe truncated
    elif kind == 'claims':
        data = _png_header_claiming(draw(st.sampled_from([60000, 20000, 9000])))
    elif kind == 'garbage':
        data = draw(st.sampled_from([b'\xff\xd8\xff', b'\x89PNG\r\n\x1a\n'])) + draw(
            st.binary(max_size=200))
    else:
        data = b''
    return CompressedImage(header=Header(stamp=draw(any_stamp)), format=kind, data=data)


def _png_header_claiming(side: int) -> bytes:
    ihdr = b'IHDR' + struct.pack('>IIBBBBB', side, side, 8, 2, 0, 0, 0)
    return (b'\x89PNG\r\n\x1a\n' + struct.pack('>I', 13) + ihdr
            + struct.pack('>I', zlib.crc32(ihdr)) + b'\x00' * 32)


sample_formats = st.sampled_from(['S16LE', 'S32LE', 'F32LE', 'U8', 'S24LE', 'mp3', '', 'f32le'])
infos = st.builds(
    lambda ch, rate, fmt, coding: AudioInfo(channels=ch, sample_rate=rate, sample_format=fmt,
                                            bitrate=0, coding_format=coding),
    st.integers(0, 255),
    st.one_of(st.sampled_from([16000, 44100, 8000, 48000, 1000, 384000]),
              st.integers(0, 2**32 - 1)),
    sample_formats, st.sampled_from(['wave', 'mp3', 'raw', '', 'WAV']))
floats32 = st.one_of(st.floats(-1, 1, width=32),
                     st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -3e38, 0.0, 1e-40]))


@st.composite
def chunks(draw):
    """AudioDataStamped: raw bytes of any length, or float32 samples with extremes."""
    if draw(st.booleans()):
        data = draw(st.binary(max_size=3000))
    else:
        n = draw(st.integers(0, 1600))
        value = draw(floats32)
        samples = np.full(n, value, np.float32)
        if n and draw(st.booleans()):
            samples = (0.3 * np.sin(np.arange(n) / 7.0)).astype(np.float32)
            samples[draw(st.integers(0, n - 1))] = value
        data = samples.tobytes()
    msg = AudioDataStamped(header=Header(stamp=draw(any_stamp), frame_id='mic'))
    msg.audio = AudioData(data=data)
    return msg


@st.composite
def fusion_inputs(draw):
    """What the fusion subscribes to: face_crop (mono8 98x80, the empty no-face word, or
    anything else) and log_mel (32FC1 128x43 holding anything, or anything else). Stamps
    mostly fall on a few segments, so that faces and log-mels meet and windows form."""
    face = draw(st.booleans())
    k = draw(st.integers(2000, 2012))
    on_grid = float_to_time(k * 0.5 + 0.1 if face else (k + 0.5) * 0.5)
    stamp = draw(st.one_of(st.just(on_grid), st.just(on_grid), any_stamp))
    if face:
        kind = draw(st.sampled_from(['crop', 'crop', 'no_face', 'odd']))
        shape = {'crop': (98, 80), 'no_face': (0, 0)}.get(kind, (draw(sizes), draw(sizes)))
        encoding = 'mono8' if kind != 'odd' else draw(encodings)
        pixels = np.full(shape, draw(st.integers(0, 255)), np.uint8)
        msg = Image(header=Header(stamp=stamp, frame_id='cam'), height=shape[0],
                    width=shape[1], encoding=encoding, step=shape[1], data=pixels.tobytes())
        return 'face', msg
    shape = draw(st.sampled_from([(128, 43), (128, 43), (128, 43), (43, 128), (0, 0),
                                  (1, 1)]))
    mel = np.random.default_rng(draw(st.integers(0, 1000))).standard_normal(shape)
    mel = mel.astype(np.float32)
    if mel.size and draw(st.booleans()):
        mel.flat[draw(st.integers(0, mel.size - 1))] = draw(floats32)
    if draw(st.booleans()) and mel.size:
        with np.errstate(over='ignore', invalid='ignore'):      # inf is one of the inputs
            mel *= draw(st.sampled_from([1e30, 1e10, -1e38, 1.0]))
    msg = Image(header=Header(stamp=stamp), height=shape[0], width=shape[1],
                encoding=draw(st.sampled_from(['32FC1', '32FC1', 'mono8'])),
                is_bigendian=draw(st.sampled_from([0, 0, 1])), step=shape[1] * 4,
                data=mel.tobytes())
    return 'mel', msg


# Face ids as a face pipeline might send them: usable ones, ones too long for a topic name
# (a topic name holds 247 characters), characters no topic name takes, and repeats.
face_ids = st.one_of(
    st.from_regex(r'[A-Za-z][A-Za-z0-9_]{0,70}', fullmatch=True),
    st.sampled_from(['f1', 'f2', 'abcde']),
    st.integers(60, 400).map(lambda n: 'f' * n),
    st.text(max_size=300),
    st.sampled_from(['', '1abc', 'a b', 'a/b', 'a//b', '~a', 'ü', 'a-b', '{a}', '_a', 'a\x00']))
confidences = st.one_of(st.floats(0, 1, width=32),
                        st.sampled_from([np.nan, np.inf, -np.inf, -1.0, 1e30]))


@st.composite
def face_crops(draw):
    """lightmer_msgs/FaceCrops of one segment: 0-4 faces with drawn ids and confidences and a
    usable 98x80 crop each."""
    k = draw(st.integers(3000, 3012))
    header = Header(stamp=float_to_time(k * 0.5 + 0.1), frame_id='cam')
    faces = []
    for _ in range(draw(st.integers(0, 4))):
        side = draw(st.integers(20, 200))
        crop = Image(header=header, height=98, width=80, encoding='mono8', step=80,
                     data=bytes([draw(st.integers(0, 255))]) * (98 * 80))
        faces.append(FaceCrop(id=draw(face_ids), roi=RegionOfInterest(width=side, height=side),
                              confidence=draw(confidences), crop=crop))
    return FaceCrops(header=header, faces=faces, detected=len(faces))


# --- the nodes -----------------------------------------------------------------------------------
class _EmotionProbe:
    """Collects `emotion` (and face_crop) over DDS in a thread of its own."""

    def __init__(self, context, namespace: str):
        self.node = rclpy.create_node('property_probe', namespace=namespace, context=context)
        self.lock = threading.Lock()
        self.emotion: list = []
        self.crops: list = []
        qos = output_qos(1000)
        self.node.create_subscription(Classification, 'emotion', self._keep(self.emotion), qos)
        self.node.create_subscription(Image, 'face_crop', self._keep(self.crops), qos)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _keep(self, store: list):
        def callback(msg):
            with self.lock:
                store.append(msg)
        return callback

    def wait(self, attr: str, at_least: int, timeout_s: float = 20.0) -> list:
        """Every `attr` message ('emotion', 'crops') received, once there are `at_least`."""
        def received() -> list:
            with self.lock:
                return list(getattr(self, attr))

        def enough() -> tuple[list] | None:          # a tuple: truthy even when at_least is 0
            got = received()
            return (got,) if len(got) >= at_least else None

        [got] = wait_until(enough, timeout_s, f'at least {at_least} {attr} messages',
                           describe=lambda: f'{len(received())} {attr} messages')
        return got

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


@pytest.fixture(scope='module')
def ros(tmp_path_factory):
    torch.set_num_threads(1)
    context = rclpy.Context()
    rclpy.init(context=context)
    checkpoint = rh.make_checkpoint(tmp_path_factory.mktemp('properties') / 'model.pt', seed=5)
    yield {'context': context, 'checkpoint': checkpoint}
    rclpy.shutdown(context=context)


def _node(cls, ros, namespace: str, *params: str):
    args = ['--ros-args', '-r', f'__ns:={namespace}', '-p', f'model_path:={ros["checkpoint"]}',
            '-p', 'min_segments:=1']
    for p in params:
        args += ['-p', p]
    return cls(context=ros['context'], cli_args=args)


def _emotion_invariant(msgs) -> None:
    for m in msgs:
        probs = np.array([h.score for h in m.results])
        assert is_probability_vector(probs), probs


@pytest.mark.parametrize('backend', ['torch', 'onnxruntime'])
def test_face_crop_node_survives_any_image_and_compressed_image(ros, onnx_export, backend):
    if backend == 'onnxruntime':     # the export's MTCNN on onnxruntime instead of facenet's
        ros = {**ros, 'checkpoint': onnx_export[1]}
    ns = f'/prop_face_{backend}'
    raw = _node(FaceCropNode, ros, ns)
    packed = _node(FaceCropNode, ros, f'{ns}_c', 'compressed_input:=true',
                   'max_image_pixels:=1000000')
    probe = _EmotionProbe(ros['context'], ns)
    try:
        @SETTINGS
        @given(st.lists(images(), min_size=1, max_size=6))
        def run_raw(msgs):
            for msg in msgs:
                raw.image_callback(msg)

        @SETTINGS
        @given(st.lists(compressed(), min_size=1, max_size=6))
        def run_compressed(msgs):
            for msg in msgs:
                packed.compressed_callback(msg)

        run_raw()
        run_compressed()
        assert raw.faces.counts.rejected > 0 and packed.faces.counts.rejected > 0
        for node in (raw, packed):
            c = node.faces.counts
            assert c.segments == c.published + c.no_face + c.undecodable, c
        # every segment the face node settles is announced on face_crop: a crop or no-face
        crops = probe.wait('crops', raw.faces.counts.segments)
        assert {(c.height, c.width) for c in crops} <= {(98, 80), (0, 0)}
        # ordinary frames with a face still give crops
        before = raw.faces.counts.published
        clip = rh.make_clip(0.5)
        for i, t in enumerate(clip.frame_times[:12]):
            raw.image_callback(_rgb(clip.frames[i], 5000.0 + float(t) - rh.T0))
        assert raw.faces.counts.published >= before + 2
    finally:
        probe.close()
        raw.destroy_node()
        packed.destroy_node()


def _rgb(frame: np.ndarray, t: float) -> Image:
    h, w = frame.shape[:2]
    return Image(header=Header(stamp=float_to_time(t), frame_id='cam'), height=h, width=w,
                 encoding='rgb8', step=w * 3, data=frame.tobytes())


def test_audio_feature_node_survives_any_audio_info_and_chunk(ros):
    node = _node(AudioFeatureNode, ros, '/prop_audio')
    events = st.lists(st.one_of(infos.map(lambda m: ('info', m)),
                                chunks().map(lambda m: ('audio', m)),
                                chunks().map(lambda m: ('audio', m))), min_size=1, max_size=8)
    try:
        @SETTINGS
        @given(events)
        def run(seq):
            for kind, msg in seq:
                if kind == 'info':
                    node.info_callback(msg)
                else:
                    node.audio_callback(msg)

        run()
        counts = node.diagnostic_counts()
        assert int(counts['rejected']) > 0
        # the stream recovers: a valid format and a few seconds of speech-like audio
        node.info_callback(AudioInfo(channels=1, sample_rate=16000, sample_format='S16LE',
                                     bitrate=0, coding_format='wave'))
        published = node.diagnostic_counts()['published']
        audio = rh.make_clip(0.5).audio
        for s in range(0, len(audio), 1600):
            msg = AudioDataStamped(header=Header(stamp=float_to_time(9000.0 + s / 16000)))
            msg.audio = AudioData(data=audio[s:s + 1600].tobytes())
            node.audio_callback(msg)
        assert node.diagnostic_counts()['published'] >= published + 4
    finally:
        node.destroy_node()


def test_fusion_node_survives_any_input_and_every_emotion_is_a_probability_vector(ros):
    node = _node(FusionNode, ros, '/prop_fusion')
    probe = _EmotionProbe(ros['context'], '/prop_fusion')
    try:
        @SETTINGS
        @given(st.lists(fusion_inputs(), min_size=1, max_size=10))
        def run(seq):
            for kind, msg in seq:
                (node.face_callback if kind == 'face' else node.mel_callback)(msg)

        run()
        windows = node.fuser.counts.windows
        assert windows > 0 and node.fuser.counts.invalid > 0, node.fuser.counts
        received = probe.wait('emotion', windows)
        _emotion_invariant(received)
        # non-finite stamps never reach the fuser; finite ones keep working afterwards
        rng = np.random.default_rng(0)
        for k in range(20000, 20004):
            stamp = float_to_time(k * 0.5 + 0.1)
            node.face_callback(Image(header=Header(stamp=stamp), height=98, width=80,
                                     encoding='mono8', step=80,
                                     data=rng.integers(0, 256, 98 * 80, np.uint8).tobytes()))
            mel = rng.standard_normal((128, 43)).astype(np.float32)
            node.mel_callback(Image(header=Header(stamp=float_to_time((k + 0.5) * 0.5)),
                                    height=128, width=43, encoding='32FC1', step=43 * 4,
                                    data=mel.tobytes()))
        received = probe.wait('emotion', node.fuser.counts.windows)
        assert any(abs(time_to_float(m.header.stamp) - 10001.75) < 1e-6 for m in received)
        _emotion_invariant(received)
    finally:
        probe.close()
        node.destroy_node()


def test_fusion_node_survives_any_face_id_and_confidence(ros):
    """max_faces 3: FaceCrops with ids of any length and characters, NaN or infinite
    confidences. Ids that cannot name a topic and non-finite confidences are refused and
    counted; the node lives and every emotion message stays a probability vector."""
    node = _node(FusionNode, ros, '/prop_fusion_ids', 'max_faces:=3')
    probe = _EmotionProbe(ros['context'], '/prop_fusion_ids')
    rng = np.random.default_rng(1)
    try:
        @settings(SETTINGS, max_examples=50)      # each example runs the networks
        @given(st.lists(face_crops(), min_size=1, max_size=6))
        def run(seq):
            for msg in seq:
                node.faces_callback(msg)
                mel = rng.standard_normal((128, 43)).astype(np.float32)
                stamp = float_to_time(time_to_float(msg.header.stamp) + 0.15)
                node.mel_callback(Image(header=Header(stamp=stamp), height=128, width=43,
                                        encoding='32FC1', step=43 * 4, data=mel.tobytes()))

        run()
        assert node.fuser.counts.rejected > 0, node.fuser.counts
        assert node.reporter.errors > 0
        _emotion_invariant(probe.wait('emotion', 0))
        assert all(len(i) <= 64 for i in node.people_outputs.ids)
    finally:
        probe.close()
        node.destroy_node()


def test_face_crop_node_survives_any_tracked_id_list_and_bounds_its_work(ros):
    """face_source ros4hri: IdsList of any ids. Unusable ids are refused and counted, at most
    MAX_TRACKED_IDS are followed (subscribed to) at once, and their subscriptions go when the
    ids do; a list of 10,000 ids opens no more subscriptions than that."""
    node = _node(FaceCropNode, ros, '/prop_hri', 'face_source:=ros4hri')
    clock = iter(range(10**6))

    def tracked(ids) -> IdsList:
        return IdsList(header=Header(stamp=float_to_time(4000.0 + 0.1 * next(clock))),
                       ids=list(ids))
    try:
        @settings(SETTINGS, max_examples=40)      # each list opens up to 32 subscriptions
        @given(st.lists(st.lists(face_ids, max_size=40), min_size=1, max_size=4))
        def run(lists):
            for ids in lists:
                node.tracked_callback(tracked(ids))
                assert len(node._face_subs) <= MAX_TRACKED_IDS

        run()
        assert node.faces.counts.rejected > 0
        node.tracked_callback(tracked(f'face{i}' for i in range(10_000)))
        assert _face_subscriptions(node) == MAX_TRACKED_IDS
        assert node.reporter._counts()['ids_ignored'] >= 10_000 - MAX_TRACKED_IDS
        node.tracked_callback(tracked([]))          # everyone gone: so are the subscriptions
        assert _face_subscriptions(node) == 0
    finally:
        node.destroy_node()


def _face_subscriptions(node) -> int:
    """The node's real subscriptions to per-face image topics."""
    return sum(1 for sub in node.subscriptions if sub.topic_name.endswith('/cropped'))
