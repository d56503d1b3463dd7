"""Node parameters: one frozen dataclass per node, declared and read once by one helper.

Defaults live here, except those of the processing settings, which come from
`stream.settings.StreamSettings` (the one definition eval-bag, the benchmark and the demo share);
`config/*.yaml` only overrides them. Every field carries its description in `metadata`, which
`declare_and_read` hands to ROS, so `ros2 param describe` explains it. Zero means "take it from
the checkpoint" for `segment_s` and `n_segments`, because a node needs only the checkpoint path
to compute exactly what the model was trained on.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rcl_interfaces.msg import ParameterDescriptor

from lightmer.core.backend import LoadedModel, load_model, read_meta
from lightmer.core.checkpoint import CheckpointMeta
from lightmer.core.messages import DEFAULT_MAX_PIXELS
from lightmer.stream.people import AUDIO_TO, PRIMARY_RULES
from lightmer.stream.settings import StreamSettings
from lightmer.stream.tracking import TrackerSettings

from .description import share_dirs
from .qos import RELIABILITIES

AUDIO_MSG_VARIANTS = ('ros-drivers', 'mgonzs13')
DEFAULTS = StreamSettings()
_SETTINGS = tuple(f.name for f in dataclasses.fields(StreamSettings))


def _p(default: Any, description: str) -> Any:
    return field(default=default, metadata={'description': description})


@dataclass(frozen=True)
class CommonParams:
    """Parameters all three nodes read (the YAML's `/**:` block sets them for all)."""

    model_path: str = _p('', 'the lightmer model: a checkpoint (.pt, run on torch) or the '
                         '<stem>.onnx of `lightmer export --format onnx` (run on '
                         'onnxruntime, no torch), as a path or as the bare name of one in '
                         'the installed models/ folder; every node reads its feature and '
                         'segment settings from it')
    expected_preset: str = _p('', "if set ('crema-d' or 'ravdess'), refuse a checkpoint "
                              'trained on another preset')
    segment_s: float = _p(0.0, 'segment length T in seconds; 0 = the checkpoint preset\'s')
    reference: str = _p(DEFAULTS.reference, "segment reference time: 'centre' (as trained "
                        "at inference) or 'start' (lower latency)")
    torch_threads: int = _p(1, 'intra-op threads of this node\'s runtime, torch or '
                            'onnxruntime (nodes share few cores)')
    diagnostics_period_s: float = _p(1.0, 'period of the /diagnostics counts, wall seconds')
    stamp_jump_s: float = _p(DEFAULTS.stamp_jump_s, 'a forward step of input stamps at least '
                             'this long is a jump (clock set, replay seek): logged and '
                             'counted once, not as lost segments; seconds')

    def __post_init__(self) -> None:
        self.stream_settings()                 # validates the processing settings
        if self.segment_s < 0:
            raise ValueError(f'segment_s must be >= 0 (0 = from the checkpoint), '
                             f'got {self.segment_s}')
        if self.torch_threads < 1 or not self.diagnostics_period_s > 0:
            raise ValueError('torch_threads must be >= 1 and diagnostics_period_s > 0')

    def stream_settings(self) -> StreamSettings:
        """The processors' settings: this node's values; the defaults for other nodes' ones."""
        return StreamSettings(**{name: getattr(self, name) for name in _SETTINGS
                                 if hasattr(self, name)})


FACE_SOURCES = ('mtcnn', 'ros4hri')
ROS4HRI_IMAGES = ('cropped', 'aligned')


@dataclass(frozen=True)
class PeopleParams(CommonParams):
    """Several people (docs/PEOPLE.md): read by the face and fusion nodes alike."""

    max_faces: int = _p(1, 'faces followed per segment; 1 = one person (the largest face, '
                        'on face_crop and emotion only); more: every face tracked, one '
                        'emotion stream per person on the ROS4HRI topics')
    face_source: str = _p('mtcnn', "where faces come from: 'mtcnn' (detected in the camera "
                          "image) or 'ros4hri' (the crops and ids of the robot's face "
                          'pipeline, hri_face_detect); ros4hri implies per-person outputs')
    humans_prefix: str = _p('/humans/faces', 'namespace of the ROS4HRI face topics '
                            '(<prefix>/tracked, <prefix>/<id>/...)')

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_faces < 1:
            raise ValueError(f'max_faces must be >= 1, got {self.max_faces}')
        if self.face_source not in FACE_SOURCES:
            raise ValueError(f'face_source must be one of {FACE_SOURCES}, '
                             f'got {self.face_source!r}')
        if not self.humans_prefix.startswith('/') or self.humans_prefix.endswith('/'):
            raise ValueError(f"humans_prefix must be an absolute topic namespace such as "
                             f"'/humans/faces', got {self.humans_prefix!r}")

    @property
    def per_person(self) -> bool:
        """Faces travel on face_crops with ids and fusion keeps one window per id."""
        return self.max_faces > 1 or self.face_source == 'ros4hri'


@dataclass(frozen=True)
class FaceCropParams(PeopleParams):
    compressed_input: bool = _p(False, 'subscribe sensor_msgs/CompressedImage on '
                                'image/compressed instead of Image on image')
    qos_reliability: str = _p('best_effort', "image subscription: 'best_effort' (sensor "
                              "data, matches any publisher) or 'reliable'")
    qos_depth: int = _p(10, 'image subscription queue depth')
    min_face_size: int = _p(DEFAULTS.min_face_size, 'smallest face MTCNN looks for, in pixels '
                            'of the image it runs on (the frame, or its copy downscaled to '
                            'the model\'s detect_max_side)')
    follow_every: int = _p(DEFAULTS.follow_every, 'MTCNN follows the faces of the last segment '
                           '(searches boxes around them, docs/RUNTIME.md) and searches the '
                           'whole frame at least every this many segments; 1 = every segment')
    max_image_pixels: int = _p(DEFAULT_MAX_PIXELS, 'compressed_input: largest width x height '
                               'a compressed frame may declare; larger ones are refused '
                               'before decoding')

    ros4hri_image: str = _p('cropped', "face_source ros4hri: which image of each face to "
                            "read, <prefix>/<id>/'cropped' or 'aligned'")
    track_iou_min: float = _p(0.3, 'max_faces > 1: box overlap (IoU) with a track\'s last box '
                              'that continues its id')
    track_centre_max: float = _p(1.0, 'max_faces > 1: centre distance, in face widths, that '
                                 'continues an id when the boxes do not overlap enough')
    track_max_missed: int = _p(3, 'max_faces > 1: segments an id survives without its face '
                               'before a face there gets a new id')

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_qos(self.qos_reliability, self.qos_depth)
        if self.ros4hri_image not in ROS4HRI_IMAGES:
            raise ValueError(f'ros4hri_image must be one of {ROS4HRI_IMAGES}, '
                             f'got {self.ros4hri_image!r}')
        self.tracker_settings()                # validates the tracker's
        if self.max_image_pixels < 1:
            raise ValueError(f'max_image_pixels must be >= 1, got {self.max_image_pixels}')

    def tracker_settings(self) -> TrackerSettings:
        return TrackerSettings(self.track_iou_min, self.track_centre_max, self.track_max_missed)


@dataclass(frozen=True)
class AudioFeatureParams(CommonParams):
    audio_msg: str = _p('ros-drivers', "audio message variant: 'ros-drivers' "
                        "(AudioDataStamped + AudioInfo) or 'mgonzs13' (AudioStamped)")
    # Reliable by default, unlike images: one lost chunk skips every window across it (3
    # segments at T = 0.5 s), and best effort lost 2 of 45 chunks between processes here.
    # audio_capture (ros-drivers) publishes reliable; mgonzs13's capturer needs best_effort.
    qos_reliability: str = _p('reliable', "audio subscription: 'reliable' (ros-drivers "
                              "audio_capture) or 'best_effort' (any publisher)")
    qos_depth: int = _p(100, 'audio subscription queue depth (chunks are small and frequent)')
    gap_tolerance_s: float = _p(DEFAULTS.gap_tolerance_s, 'stamp mismatch between '
                                'consecutive chunks still treated as continuous audio, seconds')

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_qos(self.qos_reliability, self.qos_depth)
        if self.audio_msg not in AUDIO_MSG_VARIANTS:
            raise ValueError(f'audio_msg must be one of {AUDIO_MSG_VARIANTS}, '
                             f'got {self.audio_msg!r}')


@dataclass(frozen=True)
class FusionParams(PeopleParams):
    n_segments: int = _p(0, 'segments N per window; 0 = the checkpoint\'s')
    min_segments: int = _p(DEFAULTS.min_segments, 'publish a window once at least this many '
                           'of its N segments are cached (at most N); 0 = all N. Fewer: '
                           'windows on short utterances; more: each window sees more')
    missing_policy: str = _p(DEFAULTS.missing_policy, "a segment with one modality after "
                             "missing_wait_s: 'skip' it, 'nearest' (pair it with the "
                             "nearest segment's input of the missing modality) or 'single' "
                             "(fuse it with the missing modality's defined input: for models "
                             "trained with modality dropout)")
    missing_wait_s: float = _p(DEFAULTS.missing_wait_s, 'how long (stamp seconds past its '
                               'reference time) a segment waits for its other modality')
    nearest_max_segments: int = _p(DEFAULTS.nearest_max_segments, "'nearest' policy: "
                                   'farthest segment to borrow from')
    queue_depth: int = _p(20, 'face_crop and log_mel subscription depth (reliable)')
    publish_expression: bool = _p(False, 'also publish hri_msgs/Expression on expression '
                                  '(needs hri_msgs)')
    stall_warn_s: float = _p(DEFAULTS.stall_warn_s, 'one input (face_crop or log_mel) silent '
                             'this long while the other flows: /diagnostics WARN; an input '
                             'gap this long in stamp time also restarts the windows; seconds')
    stall_error_s: float = _p(10.0, 'one input silent this long while the other flows: '
                              '/diagnostics ERROR (its node or sensor is down); seconds')
    audio_to: str = _p('speaker', "per person: which faces a segment's audio is fused with: "
                       "the 'speaker' (the faces whose mouths move with the voice), 'all' in "
                       "view or the 'largest' (the others: silence)")
    primary: str = _p('largest', "per person: whose window `emotion` carries, the "
                      "'largest' face of the latest segment or the 'oldest' in view")
    forget_after_s: float = _p(3.0, 'per person: drop an id\'s windows after its face has '
                               'been absent this long (stamp seconds)')

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_segments < 0 or self.queue_depth < 1:
            raise ValueError('n_segments must be >= 0 and queue_depth >= 1')
        if self.audio_to not in AUDIO_TO or self.primary not in PRIMARY_RULES:
            raise ValueError(f'audio_to must be one of {AUDIO_TO} and primary one of '
                             f'{PRIMARY_RULES}, got {self.audio_to!r}, {self.primary!r}')
        if not self.forget_after_s > 0:
            raise ValueError(f'forget_after_s must be > 0, got {self.forget_after_s}')
        if not self.stall_warn_s <= self.stall_error_s:
            raise ValueError(f'need stall_warn_s <= stall_error_s, got '
                             f'{self.stall_warn_s} and {self.stall_error_s}')


def _check_qos(reliability: str, depth: int) -> None:
    if reliability not in RELIABILITIES:
        raise ValueError(f'qos_reliability must be one of {RELIABILITIES}, got {reliability!r}')
    if depth < 1:
        raise ValueError(f'qos_depth must be >= 1, got {depth}')


P = TypeVar('P', bound=CommonParams)


def declare_and_read(node, cls: type[P]) -> P:
    """Declare every field of `cls` on `node` (with its description, read-only) and return the
    values as a frozen `cls`. Raises ValueError naming the parameter when a value is invalid.
    """
    values = {}
    for f in dataclasses.fields(cls):
        descriptor = ParameterDescriptor(description=f.metadata['description'], read_only=True)
        node.declare_parameter(f.name, f.default, descriptor)
        values[f.name] = node.get_parameter(f.name).value
    return cls(**values)


# Model files a bare name may stand for: a checkpoint (torch), then an ONNX export.
MODEL_SUFFIXES = ('.pt', '.onnx')


def model_dirs() -> list[Path]:
    """The models/ folders a bare model name is looked up in: installed share directory first
    (see description.share_dirs), then the source tree's."""
    return [share / 'models' for share in share_dirs()]


def resolve_model_path(value: str, search: Sequence[Path] | None = None,
                       suffixes: Sequence[str] = MODEL_SUFFIXES) -> Path:
    """`model_path` as given -> the file to load.

    A value with a directory part or that names an existing file is a path, taken as it is.
    Anything else is a bare name (`crema_d_fold0`, `crema_d_fold0.pt`) looked up, as it is
    and then with each suffix in order (a checkpoint before an export), in `search` (default
    `model_dirs()`), first folder first. Raises ValueError saying what was searched and what
    is there.
    """
    if not value:
        raise ValueError('parameter model_path is empty: pass the model, e.g. '
                         '`model:=/path/to/model.pt` (or its ONNX export, model.onnx, or the '
                         'name of one in the installed models/ folder) to the launch file or '
                         '--model to `lightmer bringup` (`lightmer train` writes one, '
                         '`lightmer export --format onnx` exports it)')
    path = Path(value).expanduser()
    if path.is_file() or path.name != value:
        if not path.is_file():
            raise ValueError(f'no checkpoint or export at {path}; train one with `lightmer '
                             'train` or give the path of an existing file')
        return path
    folders = list(model_dirs() if search is None else search)
    for folder in folders:
        for name in (value, *(value + s for s in suffixes if not value.endswith(s))):
            if (folder / name).is_file():
                return folder / name
    existing = [f for f in folders if f.is_dir()]
    found = sorted({f.stem for folder in existing for f in folder.iterdir()
                    if _is_model_file(f, suffixes)})
    where = (f'in {[str(f) for f in existing]} (there: {found or "nothing"})' if existing else
             f'and no models/ folder is installed (looked for {[str(f) for f in folders]})')
    raise ValueError(f'no model named {value!r} {where}; give a path, or put the checkpoint '
                     'in models/ and rebuild (see models/README.md)')


def _is_model_file(path: Path, suffixes: Sequence[str]) -> bool:
    """A file a bare name may stand for: a checkpoint, or an ONNX export's main file (the
    one with its metadata `<name>.onnx.json` beside it; not the export's parts such as
    `<stem>.fusion.onnx` or `<stem>.mtcnn_onet.onnx`)."""
    if path.suffix not in suffixes or not path.is_file():
        return False
    return path.suffix != '.onnx' or path.with_name(path.name + '.json').is_file()


def load_for_node(params: CommonParams) -> tuple[Path, CheckpointMeta, float]:
    """The model named by `model_path` (a path, or a bare name in models/), a checkpoint or
    an ONNX export: (its path, its metadata, segment_s) for a node that needs only the
    metadata and the path (`lightmer.core.backend.face_cropper` takes both). Reading the
    metadata builds no network, and for an export imports neither torch nor onnxruntime.

    Raises ValueError with a message that says what to set.
    """
    path = resolve_model_path(params.model_path)
    meta = read_meta(path)
    return path, meta, _segment_s(params, meta)


def load_model_for_node(params: CommonParams) -> tuple[LoadedModel, float]:
    """The model named by `model_path`, ready to run (`lightmer.core.backend.load_model`, on
    `torch_threads`), and segment_s: one read of the file gives the networks and the metadata.

    Raises ValueError with a message that says what to set.
    """
    model = load_model(resolve_model_path(params.model_path), params.torch_threads)
    return model, _segment_s(params, model.meta)


def _segment_s(params: CommonParams, meta: CheckpointMeta) -> float:
    """The node's segment length for the model `meta` describes, once the model is checked
    against `expected_preset`."""
    if params.expected_preset and meta.preset != params.expected_preset:
        raise ValueError(f'{params.model_path} was trained on preset {meta.preset!r} but the '
                         f'parameters expect {params.expected_preset!r}; use the matching '
                         f'config file or model')
    return params.segment_s or meta.segment_s
