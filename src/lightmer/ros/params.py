"""Node parameters: one frozen dataclass per node, declared and read once by one helper.

Defaults live here; `config/*.yaml` only overrides them. Every field carries its description
in `metadata`, which `declare_and_read` hands to ROS, so `ros2 param describe` explains it.
Zero means "take it from the checkpoint" for `segment_s` and `n_segments`, because a node needs
only the checkpoint path to compute exactly what the model was trained on.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from lightmer.segments import ANCHORS
from lightmer.streaming import MISSING_POLICIES

from .qos import RELIABILITIES

AUDIO_MSG_VARIANTS = ('ros-drivers', 'mgonzs13')


def _p(default: Any, description: str) -> Any:
    return field(default=default, metadata={'description': description})


@dataclass(frozen=True)
class CommonParams:
    """Parameters all three nodes read (the YAML's `/**:` block sets them for all)."""

    model_path: str = _p('', 'the lightmer model: a checkpoint (.pt, run on torch) or the '
                         '<stem>.onnx of `lightmer export --format onnx` (run on '
                         'onnxruntime, no torch); every node reads its feature and segment '
                         'settings from it')
    expected_preset: str = _p('', "if set ('crema-d' or 'ravdess'), refuse a checkpoint "
                              'trained on another preset')
    segment_s: float = _p(0.0, 'segment length T in seconds; 0 = the checkpoint preset\'s')
    reference: str = _p('centre', "segment reference time: 'centre' (as trained at "
                        "inference) or 'start' (lower latency)")
    torch_threads: int = _p(1, 'intra-op threads of this node\'s runtime, torch or '
                            'onnxruntime (nodes share few cores)')
    diagnostics_period_s: float = _p(1.0, 'period of the /diagnostics counts, wall seconds')

    def __post_init__(self) -> None:
        if self.reference not in ANCHORS:
            raise ValueError(f'reference must be one of {ANCHORS}, got {self.reference!r}')
        if self.segment_s < 0:
            raise ValueError(f'segment_s must be >= 0 (0 = from the checkpoint), '
                             f'got {self.segment_s}')
        if self.torch_threads < 1 or not self.diagnostics_period_s > 0:
            raise ValueError('torch_threads must be >= 1 and diagnostics_period_s > 0')


@dataclass(frozen=True)
class FaceCropParams(CommonParams):
    compressed_input: bool = _p(False, 'subscribe sensor_msgs/CompressedImage on '
                                'image/compressed instead of Image on image')
    qos_reliability: str = _p('best_effort', "image subscription: 'best_effort' (sensor "
                              "data, matches any publisher) or 'reliable'")
    qos_depth: int = _p(10, 'image subscription queue depth')
    min_face_size: int = _p(40, 'smallest face MTCNN looks for, in pixels of the image it '
                            'runs on (the frame, or its copy downscaled to the model\'s '
                            'detect_max_side)')

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_qos(self.qos_reliability, self.qos_depth)
        if self.min_face_size < 1:
            raise ValueError(f'min_face_size must be >= 1, got {self.min_face_size}')


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
    gap_tolerance_s: float = _p(0.05, 'stamp mismatch between consecutive chunks still '
                                'treated as continuous audio, seconds')

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_qos(self.qos_reliability, self.qos_depth)
        if self.audio_msg not in AUDIO_MSG_VARIANTS:
            raise ValueError(f'audio_msg must be one of {AUDIO_MSG_VARIANTS}, '
                             f'got {self.audio_msg!r}')
        if self.gap_tolerance_s < 0:
            raise ValueError(f'gap_tolerance_s must be >= 0, got {self.gap_tolerance_s}')


@dataclass(frozen=True)
class FusionParams(CommonParams):
    n_segments: int = _p(0, 'segments N per window; 0 = the checkpoint\'s')
    min_segments: int = _p(0, 'publish a window only when at least this many of its N '
                           'segments are cached; 0 = all N')
    missing_policy: str = _p('skip', "a segment with one modality after missing_wait_s: "
                             "'skip' it, or 'nearest' (pair it with the nearest segment's "
                             'input of the missing modality)')
    missing_wait_s: float = _p(2.0, 'how long (stamp seconds past its reference time) a '
                               'segment waits for its other modality')
    nearest_max_segments: int = _p(2, "'nearest' policy: farthest segment to borrow from")
    queue_depth: int = _p(20, 'face_crop and log_mel subscription depth (reliable)')
    publish_expression: bool = _p(False, 'also publish hri_msgs/Expression on expression '
                                  '(needs hri_msgs)')

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.missing_policy not in MISSING_POLICIES:
            raise ValueError(f'missing_policy must be one of {MISSING_POLICIES}, '
                             f'got {self.missing_policy!r}')
        if self.n_segments < 0 or self.min_segments < 0 or self.nearest_max_segments < 1:
            raise ValueError('n_segments and min_segments must be >= 0, '
                             'nearest_max_segments >= 1')
        if self.missing_wait_s < 0 or self.queue_depth < 1:
            raise ValueError('missing_wait_s must be >= 0 and queue_depth >= 1')


def _check_qos(reliability: str, depth: int) -> None:
    if reliability not in RELIABILITIES:
        raise ValueError(f'qos_reliability must be one of {RELIABILITIES}, got {reliability!r}')
    if depth < 1:
        raise ValueError(f'qos_depth must be >= 1, got {depth}')


P = TypeVar('P', bound=CommonParams)


def parameter_names(cls: type[CommonParams]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


def declare_and_read(node, cls: type[P]) -> P:
    """Declare every field of `cls` on `node` (with its description, read-only) and return the
    values as a frozen `cls`. Raises ValueError naming the parameter when a value is invalid.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    values = {}
    for f in dataclasses.fields(cls):
        descriptor = ParameterDescriptor(description=f.metadata['description'], read_only=True)
        node.declare_parameter(f.name, f.default, descriptor)
        values[f.name] = node.get_parameter(f.name).value
    return cls(**values)


def load_for_node(params: CommonParams):
    """The model named by `model_path`, a checkpoint or an ONNX export: (its path, its metadata,
    segment_s) for a node, which then loads the part it runs from the path
    (`lightmer.backend`). Reading the metadata of an export imports neither torch nor
    onnxruntime.

    Raises ValueError with a message that says what to set.
    """
    from pathlib import Path

    from lightmer.backend import read_meta

    if not params.model_path:
        raise ValueError('parameter model_path is empty: pass the model, e.g. '
                         '`model:=/path/to/model.pt` (or its ONNX export, model.onnx) to the '
                         'launch file or --model to `lightmer bringup` (`lightmer train` '
                         'writes one, `lightmer export --format onnx` exports it)')
    path = Path(params.model_path)
    meta = read_meta(path)
    if params.expected_preset and meta.preset != params.expected_preset:
        raise ValueError(f'{params.model_path} was trained on preset {meta.preset!r} but the '
                         f'parameters expect {params.expected_preset!r}; use the matching '
                         f'config file or model')
    segment_s = params.segment_s or meta.segment_s
    return path, meta, segment_s
