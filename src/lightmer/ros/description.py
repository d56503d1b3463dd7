"""The one description of lightmer's three nodes, used by the launch file and `lightmer bringup`.

`resolve(values)` turns the launch arguments (strings, as `ros2 launch` gives them) into one
`NodeInvocation` per node: executable, name, namespace, parameter files, parameter overrides,
remappings and respawn settings. `launch/emotion.launch.py` hands these to launch_ros `Node`
actions; `bringup.py` hands `NodeInvocation.ros_args()` (what launch_ros puts on the command
line) to the node classes in one process. Nothing here imports rclpy or launch.

Why the overrides travel in a file of their own: rclpy applies the parameter-file blocks that
match a node in the order their keys first appeared, across all files and `-p` rules. launch_ros
writes a `parameters` dict under `/**` (and `-p` means `/**` too), which the user's file has
already used, so a node-specific block of that file (`/**/audio_feature:`) came later and won
over `audio_msg:=...`. The override file repeats every key of the user's files that can match
the node, plus `/**/<name>`: an existing key takes the new value in place, a new one is
applied last, so the launch argument wins whatever form the file uses.
"""
from __future__ import annotations

import hashlib
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from lightmer.core.atomic_io import atomic_write_text

PACKAGE = 'lightmer'
CONFIG_FILE = 'lightmer.yaml'


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str
    kind: type = str                  # the parameter's type: launch values are strings


LAUNCH_ARGUMENTS = (
    LaunchArgument('model', '', 'lightmer checkpoint (.pt, torch) or its ONNX export (.onnx, '
                   'onnxruntime): a path, or the bare name of one in the installed models/ '
                   'folder; sets model_path of every node'),
    LaunchArgument('params_file', '', 'parameter YAML (default: the installed '
                   'config/lightmer.yaml; crema_d.yaml and ravdess.yaml are presets)'),
    LaunchArgument('camera_topic', '/camera/image_raw', 'sensor_msgs/Image topic of the camera'),
    LaunchArgument('audio_topic', '/audio/audio_stamped', 'stamped audio topic '
                   '(audio_common_msgs/AudioDataStamped, or AudioStamped for mgonzs13)'),
    LaunchArgument('audio_info_topic', '/audio/audio_info', 'audio_common_msgs/AudioInfo topic '
                   '(ros-drivers variant only)'),
    LaunchArgument('audio_msg', 'ros-drivers', "audio message variant: 'ros-drivers' or "
                   "'mgonzs13'"),
    LaunchArgument('use_sim_time', 'false', 'use /clock (bag replay)'),
    LaunchArgument('namespace', '', 'namespace of the three nodes and their outputs'),
    LaunchArgument('respawn', 'true', 'restart a node whose process ends (perception nodes '
                   'should come back by themselves)'),
    LaunchArgument('respawn_delay', '1.0', 'seconds to wait before restarting a node'),
    # Several people (docs/PEOPLE.md); empty: the parameter file's value (one person).
    LaunchArgument('max_faces', '', 'faces followed per segment (1: one person on emotion); '
                   'more: one emotion stream per face on /humans/faces/<id>/...', int),
    LaunchArgument('face_source', '', "'mtcnn' (detect in the camera image) or 'ros4hri' "
                   "(hri_face_detect's face crops and ids)"),
    LaunchArgument('audio_to', '', "per person: fuse the audio with the face that speaks "
                   "('speaker'), 'all' faces or the 'largest'"),
    LaunchArgument('primary', '', "per person: whose window emotion carries, 'largest' or "
                   "'oldest'"),
)
_KINDS = {a.name: a.kind for a in LAUNCH_ARGUMENTS}


@dataclass(frozen=True)
class NodeDescription:
    executable: str                            # console script (setup.py entry point)
    module: str                                # its module; `main` is the entry point
    class_name: str                            # the rclpy Node subclass in `module`
    name: str                                  # node name
    remappings: tuple[tuple[str, str], ...]    # (topic the node uses, launch argument)
    arg_parameters: tuple[tuple[str, str], ...]  # (parameter, launch argument)


NODES = (
    NodeDescription('face_crop_node', 'lightmer.ros.face_crop_node', 'FaceCropNode',
                    'face_crop', remappings=(('image', 'camera_topic'),),
                    arg_parameters=(('model_path', 'model'), ('max_faces', 'max_faces'),
                                    ('face_source', 'face_source'))),
    NodeDescription('audio_feature_node', 'lightmer.ros.audio_feature_node',
                    'AudioFeatureNode', 'audio_feature',
                    remappings=(('audio', 'audio_topic'), ('audio_info', 'audio_info_topic')),
                    arg_parameters=(('model_path', 'model'), ('audio_msg', 'audio_msg'))),
    NodeDescription('fusion_node', 'lightmer.ros.fusion_node', 'FusionNode', 'fusion',
                    remappings=(), arg_parameters=(
                        ('model_path', 'model'), ('max_faces', 'max_faces'),
                        ('face_source', 'face_source'), ('audio_to', 'audio_to'),
                        ('primary', 'primary'))),
)


@dataclass(frozen=True)
class NodeInvocation:
    """One node as it is started: what launch_ros's `Node` action takes."""

    description: NodeDescription
    namespace: str
    params_files: tuple[str, ...]
    parameters: dict                        # overrides, after the files
    remappings: tuple[tuple[str, str], ...]
    respawn: bool = True                    # restart the node when its process ends
    respawn_delay: float = 1.0              # seconds before that restart

    @property
    def executable(self) -> str:
        return self.description.executable

    @property
    def name(self) -> str:
        return self.description.name

    def override_keys(self) -> list[str]:
        """Keys of the parameter files that may address this node (the last part of the key is
        its name or a wildcard), then `/**/<name>`: where the overrides are written."""
        keys = [key for path in self.params_files for key in _node_keys(path)
                if key.rstrip('/').rsplit('/', 1)[-1] in (self.name, '*', '**')]
        return list(dict.fromkeys([*keys, f'/**/{self.name}']))

    def overrides_yaml(self) -> str:
        # one dict per key: rcl's parser refuses YAML aliases, which a shared one would make
        return yaml.safe_dump({key: {'ros__parameters': dict(self.parameters)}
                               for key in self.override_keys()}, sort_keys=False)

    def parameter_files(self) -> list[str]:
        """The user's parameter files, then the overrides file: what launch_ros and
        `ros_args` pass as --params-file, in this order."""
        return [*self.params_files, _write_overrides(self.overrides_yaml())]

    def ros_args(self) -> list[str]:
        """The node's command-line arguments, as launch_ros builds them."""
        args = ['--ros-args', '-r', f'__node:={self.name}']
        if self.namespace:
            args += ['-r', f'__ns:={self.namespace}']
        for path in self.parameter_files():
            args += ['--params-file', path]
        for src, dst in self.remappings:
            args += ['-r', f'{src}:={dst}']
        return args


def _node_keys(path: str) -> list[str]:
    """The node keys of a ROS parameter file, nested namespaces joined with '/'."""
    try:
        doc = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f'cannot read parameter file {path}: {exc}; pass an existing '
                         'params_file') from exc
    keys: list[str] = []

    def walk(mapping, prefix: str) -> None:
        for key, value in mapping.items():
            if key == 'ros__parameters':
                keys.append(prefix)
            elif isinstance(value, dict):
                walk(value, f'{prefix}/{key}' if prefix else str(key))
    if isinstance(doc, dict):
        walk(doc, '')
    return keys


# One token of a ROS name: a letter or underscore, then letters, digits or underscores.
_TOKEN = re.compile(r'[A-Za-z_][A-Za-z0-9_]*')


def check_ros_name(argument: str, name: str, *, namespace: bool = False) -> None:
    """ValueError naming the launch argument unless `name` is a ROS topic name (relative,
    absolute, or `~/` private) or, with `namespace`, a namespace: '/'-separated tokens, each
    a letter or underscore followed by letters, digits or underscores (rcl's rule; rcl would
    refuse the remapping only when the node is built, with a traceback)."""
    body = name[1:] if name.startswith('/') else name
    if not namespace and body.startswith('~'):
        body = body[2:] if body.startswith('~/') else body[1:]
    tokens = body.split('/') if body else []
    if (not tokens and not namespace) or not all(_TOKEN.fullmatch(t) for t in tokens):
        what = 'namespace' if namespace else 'topic name'
        raise ValueError(f'launch argument {argument} {name!r} is not a ROS {what}: use '
                         "'/'-separated parts, each a letter or '_' followed by letters, "
                         "digits or '_'")


def check_params_file(path: str) -> None:
    """ValueError with one line unless `path` is a ROS parameter file rcl can read: YAML, a
    mapping of node names (nested namespaces allowed) to `ros__parameters` mappings, whose
    lists hold one type each. Plain text is valid YAML (a string) but no parameter file."""
    try:
        doc = yaml.safe_load(Path(path).read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f'cannot read params_file {path}: {exc}') from None
    except yaml.YAMLError as exc:
        where = getattr(exc, 'problem_mark', None)
        line = f' at line {where.line + 1}' if where is not None else ''
        problem = getattr(exc, 'problem', None) or type(exc).__name__
        raise ValueError(f'params_file {path} is not valid YAML{line}: {problem}') from None
    shape = ("a ROS parameter file maps node names to 'ros__parameters:' "
             "(e.g. '/**:' then '  ros__parameters:' then '    name: value')")
    if not isinstance(doc, dict):
        raise ValueError(f'params_file {path} is not a ROS parameter file: {shape}')
    problem = _params_problem(doc, '')
    if problem is None and not _node_keys(path):
        problem = "no 'ros__parameters' in it"
    if problem is not None:
        raise ValueError(f'params_file {path}: {problem}; {shape}')


def _params_problem(mapping: dict, prefix: str) -> str | None:
    """What rcl would refuse in a node level of a parameter file, or None."""
    for key, value in mapping.items():
        where = f'{prefix}/{key}' if prefix else str(key)
        if key == 'ros__parameters':
            if not isinstance(value, dict):
                return f"'ros__parameters' under {prefix or '/'} is not a mapping"
            problem = _values_problem(value, where)
        elif isinstance(value, dict):
            problem = _params_problem(value, where)
        else:
            problem = f"{where} holds a value outside any 'ros__parameters'"
        if problem is not None:
            return problem
    return None


def _values_problem(mapping: dict, prefix: str) -> str | None:
    for key, value in mapping.items():
        where = f'{prefix}/{key}'
        if isinstance(value, dict):
            problem = _values_problem(value, where)
            if problem is not None:
                return problem
        elif isinstance(value, list) and len({type(v) for v in value}) > 1:
            return f'the list {where} mixes types (rcl wants one type per list)'
    return None


def _write_overrides(text: str) -> str:
    """Write launch overrides to a file named by its content (the same overrides reuse one
    file; launch_ros leaves its own parameter files in the temporary directory too)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / 'lightmer-launch' / f'overrides-{digest}.yaml'
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text)
    return str(path)


def defaults() -> dict[str, str]:
    return {a.name: a.default for a in LAUNCH_ARGUMENTS}


def _as_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ('true', '1', 'yes'):
        return True
    if lowered in ('false', '0', 'no', ''):
        return False
    raise ValueError(f'launch argument {name} must be true or false, got {text!r}')


def _typed(name: str, text: str):
    kind = _KINDS.get(name, str)
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f'launch argument {name} must be {kind.__name__}, got {text!r}') from None


def share_dirs() -> list[Path]:
    """Where lightmer's installed files may be, first match first: the ament index's share
    directory (colcon / apt), this Python's prefix (pip), then the source tree (a checkout)."""
    dirs = []
    try:   # ament_index_python comes with a ROS install, not with pip: optional here
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            dirs.append(Path(get_package_share_directory(PACKAGE)))
        except (PackageNotFoundError, OSError, ValueError):   # OSError: no AMENT_PREFIX_PATH
            pass
    except ImportError:
        pass
    dirs += [Path(sys.prefix) / 'share' / PACKAGE, Path(__file__).resolve().parents[3]]
    return list(dict.fromkeys(dirs))


def default_params_file() -> str:
    """config/lightmer.yaml: the installed share directory's, else the source tree's."""
    for share in share_dirs():
        path = share / 'config' / CONFIG_FILE
        if path.is_file():
            return str(path)
    raise ValueError(f'cannot find {CONFIG_FILE}: pass params_file:=/path/to/{CONFIG_FILE}')


def resolve(values: dict[str, str] | None = None) -> list[NodeInvocation]:
    """Launch argument values (strings; missing ones take their defaults) -> the three nodes.

    Empty `model` leaves model_path to the parameter file; empty `params_file` means
    config/lightmer.yaml.
    """
    v = defaults()
    unknown = sorted(set(values or {}) - set(v))
    if unknown:
        raise ValueError(f'unknown launch arguments {unknown}; known: {sorted(v)}')
    v.update({k: str(x) for k, x in (values or {}).items()})
    params_file = v['params_file'] or default_params_file()
    check_params_file(params_file)
    use_sim_time = _as_bool('use_sim_time', v['use_sim_time'])
    respawn = _as_bool('respawn', v['respawn'])
    try:
        respawn_delay = float(v['respawn_delay'])
    except ValueError:
        respawn_delay = -1.0
    if not respawn_delay >= 0:
        raise ValueError(f'launch argument respawn_delay must be seconds >= 0, got '
                         f'{v["respawn_delay"]!r}')
    namespace = v['namespace'].strip()
    if namespace and not namespace.startswith('/'):
        namespace = '/' + namespace
    check_ros_name('namespace', namespace, namespace=True)
    for argument in sorted({arg for node in NODES for _, arg in node.remappings}):
        check_ros_name(argument, v[argument])
    out = []
    for node in NODES:
        parameters: dict = {'use_sim_time': use_sim_time}
        for param, arg in node.arg_parameters:
            if v[arg]:
                parameters[param] = _typed(arg, v[arg])
        out.append(NodeInvocation(
            description=node, namespace=namespace, params_files=(params_file,),
            parameters=parameters,
            remappings=tuple((src, v[arg]) for src, arg in node.remappings),
            respawn=respawn, respawn_delay=respawn_delay))
    return out
