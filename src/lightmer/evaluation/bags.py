"""rosbag2 files through `rosbags` (no ROS install needed): writing dataset clips as a bag that
`ros2 bag play` accepts, reading a bag's camera and audio streams back as numpy, labels CSV.

Bag layout written by `make_bag` (the topics a robot with a camera and an audio_common capture
node records):

- `/camera/image_raw`  sensor_msgs/msg/Image, rgb8, frame_id `camera`, each clip frame at its own
  timestamp; between clips the camera keeps streaming mid-grey frames (no face) at the first
  clip's frame rate, as a real camera would. With `compressed` ('jpeg' / 'png'):
  `/camera/image_raw/compressed` sensor_msgs/msg/CompressedImage instead, encoded as
  image_transport's compressed plugin does by default (JPEG quality 95, PNG level 3; format
  string 'rgb8; jpeg compressed bgr8').
- `/audio/audio_stamped`  audio_common_msgs/msg/AudioDataStamped (ros-drivers), S16LE mono
  16 kHz, `AUDIO_CHUNK` samples per message, header stamp = time of the chunk's first sample;
  silence between clips (a real microphone keeps sending).
- `/audio/audio_info`  audio_common_msgs/msg/AudioInfo, once, offered transient local.

Times: header stamps are capture times. A message's bag (log) time is when it could first have
been received: an image at its stamp, an audio chunk once its last sample exists (stamp + chunk
duration), so replay never delivers audio before it was recorded.

Reading: a bag is a rosbag2 directory (whatever its name, `*.bag` included) or a single .mcap /
.db3 file. The camera topic may carry Image or CompressedImage (JPEG, PNG); when the camera
topic asked for is absent but its `/compressed` sibling exists, that one is read. Compressed
frames are decoded by the face node's own `compressed_to_rgb`, bounded by `max_image_pixels`.

Labels CSV beside the bag (`<bag>.labels.csv`): `start,end,label,clip_id`; start/end in seconds
of ROS time (the header-stamp clock), label the class name. A bag of several people
(`two_people.py`) adds a `person` column naming whose interval a row is ('left' / 'right').
A hand-made CSV may instead give seconds from the bag's start: `read_labels` treats a file
whose every start lies before the bag's start time as offsets from it.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import heapq
import io
import math
import shutil
import sys
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image as PILImage
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

from lightmer.core.atomic_io import atomic_write_text
from lightmer.core.features import to_mono
from lightmer.core.messages import (
    DEFAULT_MAX_PIXELS,
    AudioFormat,
    ConversionError,
    audio_format_from_info,
    compressed_to_rgb,
    image_to_rgb,
    pcm_to_samples,
)

IMAGE_TOPIC = '/camera/image_raw'
AUDIO_TOPIC = '/audio/audio_stamped'
AUDIO_INFO_TOPIC = '/audio/audio_info'
IMAGE_TYPE = 'sensor_msgs/msg/Image'
COMPRESSED_TYPE = 'sensor_msgs/msg/CompressedImage'
COMPRESSED_SUFFIX = '/compressed'          # image_transport's topic for the compressed plugin
# compressed_image_transport's defaults (jpeg_quality, png_level)
COMPRESSION = {'jpeg': ('JPEG', {'quality': 95}), 'png': ('PNG', {'compress_level': 3})}
AUDIO_TYPE = 'audio_common_msgs/msg/AudioDataStamped'
AUDIO_INFO_TYPE = 'audio_common_msgs/msg/AudioInfo'
CAMERA_FRAME = 'camera'
MIC_FRAME = 'microphone'
SAMPLE_RATE = 16000            # Hz, audio_common's wave capture default
AUDIO_CHUNK = 1024             # samples per message (64 ms), a common capture buffer size
# Bags start at a fixed, realistic epoch time so that files are reproducible and nothing may
# assume that time starts at zero.
DEFAULT_START_NS = 1_700_000_000 * 1_000_000_000
GAP_GREY = 128                 # value of the no-face frames the camera sends between clips
LABELS_HEADER = ('start', 'end', 'label', 'clip_id')
PERSON_COLUMN = 'person'       # optional: whose interval a row labels (several people in view)
_NS_PER_SAMPLE = 1_000_000_000 // SAMPLE_RATE   # 62500 ns, exact at 16 kHz


class BagFormatError(ValueError):
    """The bag lacks a topic lightmer needs or carries data in a format it cannot use."""


# --- types -------------------------------------------------------------------------------
def _interface_msg_dirs(package: str) -> list[Path]:
    """Where the package's .msg files may be: the environment's share dir (where the venv's
    interface packages are installed), then the source tree's interfaces/."""
    # Editable checkout: <repo>/src/lightmer/evaluation/bags.py -> <repo>/interfaces/...
    return [Path(sys.prefix) / 'share' / package / 'msg',
            Path(__file__).resolve().parents[3] / 'interfaces' / package / 'msg']


@lru_cache(maxsize=1)
def typestore():
    """A rosbags Jazzy typestore with audio_common_msgs (ros-drivers) registered from the same
    .msg files the rclpy package is generated from, so definitions and RIHS01 hashes agree."""
    store = get_typestore(Stores.ROS2_JAZZY)
    for msg_dir in _interface_msg_dirs('audio_common_msgs'):
        files = sorted(msg_dir.glob('*.msg'))
        if files:
            break
    else:
        raise FileNotFoundError(
            'audio_common_msgs .msg files not found; run scripts/setup.sh (it builds '
            'interfaces/audio_common_msgs into the venv)')
    types = {}
    for f in files:
        types.update(get_types_from_msg(f.read_text(encoding='utf-8'),
                                        f'audio_common_msgs/msg/{f.stem}'))
    store.register(types)
    return store


def _qos(reliable: bool, transient_local: bool, depth: int):
    zero = QosTime(0, 0)   # 0 = the rmw default (infinite) for deadline/lifespan/lease
    return Qos(history=QosHistory.KEEP_LAST, depth=depth,
               reliability=QosReliability.RELIABLE if reliable else QosReliability.BEST_EFFORT,
               durability=(QosDurability.TRANSIENT_LOCAL if transient_local
                           else QosDurability.VOLATILE),
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def _stamp(store, t_ns: int):
    time_cls = store.types['builtin_interfaces/msg/Time']
    return time_cls(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)


def image_message(store, t_ns: int, frame: np.ndarray, frame_id: str = CAMERA_FRAME):
    """rosbags sensor_msgs/Image (rgb8) from a uint8 (H, W, 3) RGB frame stamped t_ns."""
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f'expected a uint8 (H, W, 3) RGB frame, got {frame.dtype} '
                         f'{frame.shape}')
    height, width, _ = frame.shape
    header = store.types['std_msgs/msg/Header'](stamp=_stamp(store, t_ns), frame_id=frame_id)
    return store.types[IMAGE_TYPE](
        header=header, height=height, width=width, encoding='rgb8', is_bigendian=0,
        step=width * 3, data=np.ascontiguousarray(frame).reshape(-1))


def compressed_image_message(store, t_ns: int, frame: np.ndarray, fmt: str,
                             frame_id: str = CAMERA_FRAME):
    """rosbags sensor_msgs/CompressedImage ('jpeg' or 'png') of a uint8 (H, W, 3) RGB frame."""
    if fmt not in COMPRESSION:
        raise ValueError(f'compressed must be one of {sorted(COMPRESSION)}, got {fmt!r}')
    pil_format, options = COMPRESSION[fmt]
    buf = io.BytesIO()
    PILImage.fromarray(np.ascontiguousarray(frame)).save(buf, format=pil_format, **options)
    header = store.types['std_msgs/msg/Header'](stamp=_stamp(store, t_ns), frame_id=frame_id)
    return store.types[COMPRESSED_TYPE](
        header=header, format=f'rgb8; {fmt} compressed bgr8',
        data=np.frombuffer(buf.getvalue(), np.uint8))


def audio_message(store, t_ns: int, samples_s16: np.ndarray, frame_id: str = MIC_FRAME):
    """rosbags AudioDataStamped from int16 (n,) mono samples whose first sample is at t_ns."""
    header = store.types['std_msgs/msg/Header'](stamp=_stamp(store, t_ns), frame_id=frame_id)
    data = np.ascontiguousarray(samples_s16.astype('<i2')).view(np.uint8)
    audio = store.types['audio_common_msgs/msg/AudioData'](data=data)
    return store.types[AUDIO_TYPE](header=header, audio=audio)


def audio_info_message(store, sample_rate: int = SAMPLE_RATE, channels: int = 1,
                       coding_format: str = 'wave', sample_format: str = 'S16LE'):
    return store.types[AUDIO_INFO_TYPE](
        channels=channels, sample_rate=sample_rate, sample_format=sample_format,
        bitrate=sample_rate * channels * 16, coding_format=coding_format)


def to_s16(audio: np.ndarray) -> np.ndarray:
    """float32 (n,) in [-1, 1] -> int16 (n,), clipped (a capture card saturates, it does not
    wrap)."""
    return np.clip(np.round(audio * 32767.0), -32768, 32767).astype(np.int16)


# --- writing -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BagClip:
    """One clip to lay on the bag's timeline.

    frames: uint8 (F, H, W, 3) RGB; frame_times: float64 (F,) seconds from the clip start;
    audio: float32 (n,) mono at SAMPLE_RATE in [-1, 1]; label: class name, or '' for a stretch
    laid on the timeline without a labels row; person: who the label is about ('' when one person
    is in view).
    """

    clip_id: str
    label: str
    frames: np.ndarray
    frame_times: np.ndarray
    fps: float
    audio: np.ndarray
    person: str = ''

    @property
    def duration_s(self) -> float:
        video_end = float(self.frame_times[-1]) + 1.0 / self.fps if len(self.frame_times) else 0
        return max(len(self.audio) / SAMPLE_RATE, video_end)


@dataclass(frozen=True)
class LabelRow:
    start: float     # s
    end: float       # s
    label: str
    clip_id: str
    person: str = ''


class _BagSink:
    """Writes messages in bag-time order: events go to a heap and leave it only once no event
    with an earlier bag time can still come (audio chunks are stamped when complete)."""

    def __init__(self, writer, store, connections: dict[str, object]):
        self._writer, self._store, self._conns = writer, store, connections
        self._heap: list[tuple[int, int, str, object]] = []
        self._seq = 0   # tie-breaker keeps equal-time events in insertion order
        self.counts = {topic: 0 for topic in connections}

    def push(self, t_ns: int, topic: str, msg) -> None:
        heapq.heappush(self._heap, (t_ns, self._seq, topic, msg))
        self._seq += 1

    def flush(self, before_ns: int | None = None) -> None:
        while self._heap and (before_ns is None or self._heap[0][0] < before_ns):
            t_ns, _, topic, msg = heapq.heappop(self._heap)
            conn = self._conns[topic]
            self._writer.write(conn, t_ns, self._store.serialize_cdr(msg, conn.msgtype))
            self.counts[topic] += 1


def write_bag(clips: Iterable[BagClip], out, storage: str = 'mcap', gap_s: float = 1.0,
              start_ns: int = DEFAULT_START_NS, labels_path=None,
              compressed: str | None = None) -> dict:
    """Lay `clips` on one timeline, `gap_s` of silence and no-face frames before, between and
    after them, and write the bag `out` plus its labels CSV. `compressed` 'jpeg' / 'png':
    CompressedImage on IMAGE_TOPIC + '/compressed' instead of raw Image on IMAGE_TOPIC.

    Returns a summary dict: bag, labels, storage, clips, duration_s, messages per topic.
    Raises FileExistsError if `out` exists (rosbag2 never overwrites).
    """
    if gap_s < 0:
        raise ValueError(f'gap_s must be >= 0, got {gap_s}')
    plugins = {'mcap': StoragePlugin.MCAP, 'sqlite3': StoragePlugin.SQLITE3}
    if storage not in plugins:
        raise ValueError(f"storage must be one of {sorted(plugins)}, got {storage!r}")
    if compressed is not None and compressed not in COMPRESSION:
        raise ValueError(f'compressed must be one of {sorted(COMPRESSION)}, got {compressed!r}')
    out = Path(out)
    if out.exists():
        raise FileExistsError(f'{out} exists; rosbag2 bags are never overwritten, remove it '
                              'or choose another --out')
    labels_path = Path(labels_path) if labels_path is not None else default_labels_path(out)
    store = typestore()

    try:
        summary = _write(Writer(out, version=9, storage_plugin=plugins[storage]), store, clips,
                         gap_s, start_ns, compressed)
    except BaseException:
        # Leave no half-written bag behind: a later run would refuse to overwrite it.
        shutil.rmtree(out, ignore_errors=True)
        raise
    write_labels(labels_path, summary.pop('rows'))
    return {'bag': str(out), 'labels': str(labels_path), 'storage': storage, **summary}


def _write(writer, store, clips: Iterable[BagClip], gap_s: float, start_ns: int,
           compressed: str | None) -> dict:
    """Lay `clips` on the bag's timeline and write it (see write_bag); the summary has the
    label rows under 'rows'."""
    gap_samples = int(round(gap_s * SAMPLE_RATE))
    with writer:
        sink = _BagSink(writer, store, _connections(writer, store, compressed))
        sink.push(start_ns, AUDIO_INFO_TOPIC, audio_info_message(store))
        timeline = _Timeline(sink, store, start_ns, compressed)
        for clip in clips:
            timeline.add_clip(clip, gap_samples)
        timeline.finish()
    return {'clips': timeline.clips, 'duration_s': timeline.cursor / SAMPLE_RATE,
            'messages': dict(sink.counts), 'rows': timeline.rows}


def _camera(compressed: str | None) -> tuple[str, str]:
    """The camera's topic and message type: raw Image, or CompressedImage on
    image_transport's '/compressed' topic."""
    if compressed is None:
        return IMAGE_TOPIC, IMAGE_TYPE
    return IMAGE_TOPIC + COMPRESSED_SUFFIX, COMPRESSED_TYPE


def _connections(writer, store, compressed: str | None) -> dict[str, object]:
    """The bag's three topics, each offered with its publisher's QoS (AudioInfo latched)."""
    camera_topic, camera_type = _camera(compressed)
    return {
        camera_topic: writer.add_connection(
            camera_topic, camera_type, typestore=store,
            offered_qos_profiles=[_qos(reliable=True, transient_local=False, depth=10)]),
        AUDIO_TOPIC: writer.add_connection(
            AUDIO_TOPIC, AUDIO_TYPE, typestore=store,
            offered_qos_profiles=[_qos(reliable=True, transient_local=False, depth=10)]),
        AUDIO_INFO_TOPIC: writer.add_connection(
            AUDIO_INFO_TOPIC, AUDIO_INFO_TYPE, typestore=store,
            offered_qos_profiles=[_qos(reliable=True, transient_local=True, depth=1)]),
    }


class _Timeline:
    """Clips laid one after another on a bag's timeline, positions in audio samples from
    `start_ns`: each clip's frames and audio, and around them gaps in which the camera keeps
    sending no-face frames and the microphone silence. The microphone sends whole
    AUDIO_CHUNKs only, each once its last sample exists. Messages go to `sink`."""

    def __init__(self, sink: _BagSink, store, start_ns: int, compressed: str | None):
        self._sink, self._store, self._start_ns = sink, store, start_ns
        self._compressed = compressed
        self._camera_topic = _camera(compressed)[0]
        self._pending = np.zeros(0, np.int16)   # audio not yet sent as a full chunk
        self._pending_at = 0                    # sample index of pending[0] on the timeline
        self._cam_period_ns: int | None = None  # the gap camera's, set by the first clip
        self._cam_shape: tuple[int, ...] | None = None
        self._next_cam_ns = start_ns            # next no-face frame time while in a gap
        self.cursor = 0                         # sample index where the next region starts
        self.clips = 0
        self.rows: list[LabelRow] = []

    def add_clip(self, clip: BagClip, gap_samples: int) -> None:
        """The clip's frames and audio at the cursor, then a gap of `gap_samples`."""
        if len(clip.frames) == 0:
            raise ValueError(f'clip {clip.clip_id} has no frames')
        if self._cam_period_ns is None:
            # The gap camera runs at the first clip's rate and size; the leading gap is laid
            # now that both are known.
            self._cam_period_ns = int(round(1e9 / clip.fps))
            self._cam_shape = clip.frames.shape[1:]
            self._add_gap(gap_samples)
        clip_start = self.cursor
        n_clip = int(math.ceil(clip.duration_s * SAMPLE_RATE))
        for t_rel, frame in zip(clip.frame_times, clip.frames, strict=True):
            t_ns = self._t_of(clip_start) + int(round(float(t_rel) * 1e9))
            self._sink.push(t_ns, self._camera_topic, self._image(t_ns, frame))
        audio = np.zeros(n_clip, np.int16)
        audio[:len(clip.audio)] = to_s16(np.asarray(clip.audio, np.float32))[:n_clip]
        self._add_audio(audio)
        self.cursor += n_clip
        if clip.label:
            self.rows.append(LabelRow(self._t_of(clip_start) / 1e9, self._t_of(self.cursor) / 1e9,
                                      clip.label, clip.clip_id, clip.person))
        # The camera's no-face frames resume where the clip ends.
        self._next_cam_ns = self._t_of(self.cursor)
        self._add_gap(gap_samples)
        self.clips += 1

    def finish(self) -> None:
        """Send the last partial chunk and everything still held back."""
        if self.clips == 0:
            raise ValueError('no clips to write: check --root, --dataset and --actors')
        # Pad the last partial chunk with silence: a microphone only sends whole buffers.
        if len(self._pending):
            self._add_audio(np.zeros(AUDIO_CHUNK - len(self._pending), np.int16))
        self._sink.flush()

    def _t_of(self, sample: int) -> int:
        return self._start_ns + sample * _NS_PER_SAMPLE

    def _image(self, t_ns: int, frame: np.ndarray):
        if self._compressed is None:
            return image_message(self._store, t_ns, frame)
        return compressed_image_message(self._store, t_ns, frame, self._compressed)

    def _add_gap(self, n_samples: int) -> None:
        """No-face frames and silence from the cursor for `n_samples`."""
        end_ns = self._t_of(self.cursor + n_samples)
        grey = np.full(self._cam_shape, GAP_GREY, np.uint8)
        # Stop half a period before the next clip's first frame (at end_ns), so that the
        # stream never carries two frames closer than that.
        while self._next_cam_ns < end_ns - self._cam_period_ns // 2:
            self._sink.push(self._next_cam_ns, self._camera_topic,
                            self._image(self._next_cam_ns, grey))
            self._next_cam_ns += self._cam_period_ns
        self._add_audio(np.zeros(n_samples, np.int16))
        self.cursor += n_samples

    def _add_audio(self, samples: np.ndarray) -> None:
        """Append `samples` (int16) to the microphone; send every chunk now complete, and
        every held-back message no later chunk can precede."""
        chunk_ns = AUDIO_CHUNK * _NS_PER_SAMPLE
        self._pending = np.concatenate([self._pending, samples])
        n_full = len(self._pending) // AUDIO_CHUNK
        for i in range(n_full):
            t_ns = self._t_of(self._pending_at + i * AUDIO_CHUNK)
            chunk = self._pending[i * AUDIO_CHUNK:(i + 1) * AUDIO_CHUNK]
            self._sink.push(t_ns + chunk_ns, AUDIO_TOPIC, audio_message(self._store, t_ns, chunk))
        self._pending = self._pending[n_full * AUDIO_CHUNK:]
        self._pending_at += n_full * AUDIO_CHUNK
        self._sink.flush(before_ns=self._t_of(self._pending_at) + chunk_ns)


def default_labels_path(bag) -> Path:
    bag = Path(bag)
    return bag.with_name(bag.name + '.labels.csv')


def write_labels(path, rows: Sequence[LabelRow]) -> Path:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator='\n')
    with_person = any(r.person for r in rows)
    w.writerow(LABELS_HEADER + ((PERSON_COLUMN,) if with_person else ()))
    for r in rows:
        # Microseconds: finer than one audio sample, and exact-looking at epoch magnitudes.
        w.writerow([f'{r.start:.6f}', f'{r.end:.6f}', r.label, r.clip_id]
                   + ([r.person] if with_person else []))
    return atomic_write_text(path, buf.getvalue())


def read_labels(path, bag_start_s: float | None = None) -> list[LabelRow]:
    """Rows of a labels CSV, sorted by start. If every start lies before `bag_start_s`, the
    times are taken as seconds from the bag's start (a hand-made CSV) and shifted onto it."""
    path = Path(path)
    with open(path, newline='', encoding='utf-8') as f:
        reader = csv.DictReader(f)
        missing = set(LABELS_HEADER) - set(reader.fieldnames or ())
        if missing:
            raise ValueError(f'{path}: missing column(s) {sorted(missing)}; expected the header '
                             f'{",".join(LABELS_HEADER)}')
        rows = []
        for i, rec in enumerate(reader, start=2):
            try:
                start, end = float(rec['start']), float(rec['end'])
            except ValueError:
                raise ValueError(f'{path}:{i}: start/end must be numbers (seconds), got '
                                 f'{rec["start"]!r}, {rec["end"]!r}') from None
            if not end > start:
                raise ValueError(f'{path}:{i}: end {end} must be after start {start}')
            rows.append(LabelRow(start, end, rec['label'].strip(), rec['clip_id'].strip(),
                                 (rec.get(PERSON_COLUMN) or '').strip()))
    if not rows:
        raise ValueError(f'{path}: no labelled intervals')
    if bag_start_s is not None and all(r.start < bag_start_s for r in rows):
        rows = [dataclasses.replace(r, start=r.start + bag_start_s, end=r.end + bag_start_s)
                for r in rows]
    return sorted(rows, key=lambda r: r.start)


# --- reading -----------------------------------------------------------------------------
@dataclass(frozen=True)
class BagTopics:
    image: str = IMAGE_TOPIC
    audio: str = AUDIO_TOPIC
    audio_info: str = AUDIO_INFO_TOPIC


@dataclass(frozen=True)
class BagInfo:
    path: Path
    storage: str
    start_ns: int
    end_ns: int
    topics: dict          # topic -> (msgtype, message count)
    audio_format: AudioFormat   # of the audio info
    image_topic: str      # the camera topic read (the one asked for, or its /compressed)
    image_compressed: bool   # its messages are CompressedImage

    @property
    def start_s(self) -> float:
        return self.start_ns / 1e9


@dataclass(frozen=True)
class BagMessage:
    """One camera or audio message as numpy.

    kind 'image': data uint8 (H, W, 3) RGB (decoded when compressed); kind 'audio': data
    float32 (n,) mono in [-1, 1] at `sample_rate`. t_ns: bag (receive) time; stamp_ns: header
    stamp (capture time).
    """

    kind: str
    t_ns: int
    stamp_ns: int
    data: np.ndarray
    sample_rate: int = 0


STORAGE_SUFFIXES = {'.mcap': 'mcap', '.db3': 'sqlite3'}


def bag_path(path) -> Path:
    """`path` checked to be a rosbag2 bag: a directory holding metadata.yaml (whatever its
    name: `--out eval.bag` makes one), or a single .mcap / .db3 storage file. FileNotFoundError
    saying what to pass otherwise."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f'no such bag: {path}')
    if path.is_dir():
        if (path / 'metadata.yaml').exists():
            return path
        raise FileNotFoundError(f'{path} is not a rosbag2 bag (a directory without '
                                'metadata.yaml); pass the directory that `lightmer make-bag` '
                                'or `ros2 bag record` created, or its .mcap / .db3 file')
    if path.suffix.lower() in STORAGE_SUFFIXES:
        return path
    with open(path, 'rb') as f:
        if f.read(8) == b'#ROSBAG ':
            raise FileNotFoundError(f'{path} is a ROS 1 bag; lightmer reads rosbag2: convert '
                                    f'it with `rosbags-convert --src {path} --dst <new dir>`')
    raise FileNotFoundError(f'{path} is not a rosbag2 bag; pass a bag directory (with '
                            'metadata.yaml) or a single .mcap / .db3 file')


@contextlib.contextmanager
def _open_reader(path):
    """An open rosbags Reader of the bag at `path` (see `bag_path`). rosbags' AnyReader is not
    used: it takes any path ending in .bag for a ROS 1 bag file."""
    path = bag_path(path)
    reader = Reader(path)
    try:
        reader.open()
    except ReaderError as e:
        raise BagFormatError(f'cannot read the bag {path}: {e}') from None
    try:
        yield reader
    finally:
        reader.close()


def _decode(raw, msgtype: str):
    """CDR bytes -> a rosbags message, with lightmer's typestore (the definitions the bag's
    type hashes are checked against in `_check_topic`)."""
    return typestore().deserialize_cdr(raw, msgtype)


def _camera_topic(reader, topic: str) -> str:
    """`topic`, or its image_transport '/compressed' sibling when only that one is recorded."""
    present = {c.topic for c in reader.connections}
    if topic not in present and topic + COMPRESSED_SUFFIX in present:
        return topic + COMPRESSED_SUFFIX
    return topic


def _check_topic(reader, topic: str, expected: str | tuple[str, ...], option: str, what: str):
    """The connections of `topic`, checked to carry one of the `expected` types with the
    definitions lightmer's typestore holds."""
    expected = (expected,) if isinstance(expected, str) else tuple(expected)
    conns = [c for c in reader.connections if c.topic == topic]
    if not conns:
        present = ', '.join(f'{c.topic} ({c.msgtype})' for c in reader.connections) or 'none'
        raise BagFormatError(f'the bag has no {what} topic {topic}; topics present: {present}. '
                             f'Pass the right one with {option}.')
    wrong = [c.msgtype for c in conns if c.msgtype not in expected]
    if wrong:
        hint = ''
        if 'AudioStamped' in wrong[0] or 'msg/Audio' in wrong[0]:
            hint = (' This looks like the mgonzs13 audio_common; record ros-drivers '
                    'audio_common (AudioDataStamped + AudioInfo, wave S16LE) instead.')
        raise BagFormatError(f'{what} topic {topic} carries {wrong[0]}, expected '
                             f'{" or ".join(expected)}.' + hint)
    store = typestore()
    for c in conns:
        # rosbag2 v9 stores the RIHS01 hash; an older bag stores '' and is judged by type name.
        want_hash = store.hash_rihs01(c.msgtype)
        if c.digest.startswith('RIHS01_') and c.digest != want_hash:
            raise BagFormatError(
                f'{topic}: the bag\'s {c.msgtype} definition (hash {c.digest}) differs from '
                f'the ros-drivers audio_common / sensor_msgs one ({want_hash}); the messages '
                'cannot be decoded as lightmer expects.')
    return conns


def _audio_format(reader, topic: str):
    """The bag's first AudioInfo, validated by the nodes' own conversion (raw PCM only)."""
    conns = _check_topic(reader, topic, AUDIO_INFO_TYPE, '--audio-info-topic', 'audio info')
    for conn, _, raw in reader.messages(connections=conns):
        msg = _decode(raw, conn.msgtype)
        break
    else:
        raise BagFormatError(f'{topic} has no AudioInfo message; record the bag with the '
                             'audio_info topic (it is transient local, so a recorder started '
                             'after the capture node still gets it)')
    try:
        return audio_format_from_info(int(msg.channels), int(msg.sample_rate),
                                      str(msg.sample_format), str(msg.coding_format))
    except ConversionError as e:
        raise BagFormatError(f'the bag cannot be used ({topic}): {e}') from None


def bag_info(path, topics: BagTopics = BagTopics()) -> BagInfo:
    """Check that the bag has usable camera, audio and audio-info topics; BagFormatError (with
    what to do) otherwise."""
    with _open_reader(path) as reader:
        image_topic = _camera_topic(reader, topics.image)
        camera = _check_topic(reader, image_topic, (IMAGE_TYPE, COMPRESSED_TYPE),
                              '--image-topic', 'camera')
        _check_topic(reader, topics.audio, AUDIO_TYPE, '--audio-topic', 'audio')
        fmt = _audio_format(reader, topics.audio_info)
        counts = {t: (info.msgtype, info.msgcount) for t, info in reader.topics.items()}
        storage = _storage_of(Path(path))
        return BagInfo(Path(path), storage, reader.start_time, reader.end_time, counts, fmt,
                       image_topic, camera[0].msgtype == COMPRESSED_TYPE)


def _storage_of(path: Path) -> str:
    files = list(path.iterdir()) if path.is_dir() else [path]
    for suffix, storage in STORAGE_SUFFIXES.items():
        if any(f.suffix.lower() == suffix for f in files):
            return storage
    return 'unknown'


def iter_raw(path, topics: BagTopics = BagTopics()) -> Iterator[tuple[str, str, int, bytes]]:
    """(topic, msgtype, bag time ns, CDR bytes) of the camera, audio and audio-info topics, in
    bag-time order, after the same checks as `bag_info`."""
    info = bag_info(path, topics)
    with _open_reader(path) as reader:
        wanted = {info.image_topic, topics.audio, topics.audio_info}
        conns = [c for c in reader.connections if c.topic in wanted]
        for conn, t_ns, raw in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, t_ns, bytes(raw)


def read_bag(path, topics: BagTopics = BagTopics(),
             max_image_pixels: int | None = None, kinds: tuple[str, ...] = ('image', 'audio'),
             bag_time_ns: tuple[int, int] | None = None) -> Iterator[BagMessage]:
    """Camera frames and audio chunks of the bag as numpy, in bag-time order, decoded by the
    nodes' own conversions (lightmer.core.messages; rosbags messages carry the same fields).
    Compressed frames larger than `max_image_pixels` (default: the face node's) are refused
    before decoding. Raises ConversionError (a ValueError) at a message the nodes would drop.
    `kinds` limits the topics read ('image', 'audio'); `bag_time_ns` (start, stop) the bag
    (receive) times, so that a few seconds of a long bag are read without the rest."""
    info = bag_info(path, topics)
    fmt = info.audio_format
    bound = DEFAULT_MAX_PIXELS if max_image_pixels is None else max_image_pixels

    def to_rgb(msg) -> np.ndarray:
        if info.image_compressed:
            return compressed_to_rgb(msg, max_pixels=bound)
        return image_to_rgb(msg)

    with _open_reader(path) as reader:
        wanted = {'image': info.image_topic, 'audio': topics.audio}
        conns = [c for c in reader.connections
                 if c.topic in {wanted[k] for k in kinds}]
        start, stop = bag_time_ns if bag_time_ns is not None else (None, None)
        for conn, t_ns, raw in reader.messages(connections=conns, start=start, stop=stop):
            msg = _decode(raw, conn.msgtype)
            stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
            if conn.topic == info.image_topic:
                yield BagMessage('image', t_ns, stamp, to_rgb(msg))
            else:
                samples = to_mono(pcm_to_samples(msg.audio.data, fmt))
                yield BagMessage('audio', t_ns, stamp, samples, fmt.sample_rate)
