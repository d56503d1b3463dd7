"""The one description of lightmer's three nodes, used by the launch file and `lightmer bringup`.

`resolve(values)` turns the launch arguments (strings, as `ros2 launch` gives them) into one
`NodeInvocation` per node: executable, name, namespace, parameter files, parameter overrides
and remappings. `launch/emotion.launch.py` hands these to launch_ros `Node` actions;
`bringup.py` hands `NodeInvocation.ros_args()` (what launch_ros puts on the command line) to the
node classes in one process. Nothing here imports rclpy or launch.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = 'lightmer'
CONFIG_FILE = 'lightmer.yaml'


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


LAUNCH_ARGUMENTS = (
    LaunchArgument('model', '', 'lightmer checkpoint (.pt); sets model_path of every node'),
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
)


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
                    arg_parameters=(('model_path', 'model'),)),
    NodeDescription('audio_feature_node', 'lightmer.ros.audio_feature_node',
                    'AudioFeatureNode', 'audio_feature',
                    remappings=(('audio', 'audio_topic'), ('audio_info', 'audio_info_topic')),
                    arg_parameters=(('model_path', 'model'), ('audio_msg', 'audio_msg'))),
    NodeDescription('fusion_node', 'lightmer.ros.fusion_node', 'FusionNode', 'fusion',
                    remappings=(), arg_parameters=(('model_path', 'model'),)),
)


@dataclass(frozen=True)
class NodeInvocation:
    """One node as it is started: what launch_ros's `Node` action takes."""

    description: NodeDescription
    namespace: str
    params_files: tuple[str, ...]
    parameters: dict                        # overrides, after the files
    remappings: tuple[tuple[str, str], ...]

    @property
    def executable(self) -> str:
        return self.description.executable

    @property
    def name(self) -> str:
        return self.description.name

    def ros_args(self) -> list[str]:
        """The node's command-line arguments, as launch_ros builds them."""
        args = ['--ros-args', '-r', f'__node:={self.name}']
        if self.namespace:
            args += ['-r', f'__ns:={self.namespace}']
        for path in self.params_files:
            args += ['--params-file', path]
        for key, value in self.parameters.items():
            text = ('true' if value else 'false') if isinstance(value, bool) else str(value)
            args += ['-p', f'{key}:={text}']
        for src, dst in self.remappings:
            args += ['-r', f'{src}:={dst}']
        return args


def defaults() -> dict[str, str]:
    return {a.name: a.default for a in LAUNCH_ARGUMENTS}


def _as_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ('true', '1', 'yes'):
        return True
    if lowered in ('false', '0', 'no', ''):
        return False
    raise ValueError(f'launch argument {name} must be true or false, got {text!r}')


def default_params_file() -> str:
    """config/lightmer.yaml: the installed share directory's, else the source tree's."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory

        try:
            path = Path(get_package_share_directory(PACKAGE)) / 'config' / CONFIG_FILE
            if path.is_file():
                return str(path)
        except (PackageNotFoundError, OSError):   # OSError: no AMENT_PREFIX_PATH (pip)
            pass
    except ImportError:
        pass
    for path in (Path(sys.prefix) / 'share' / PACKAGE / 'config' / CONFIG_FILE,
                 Path(__file__).resolve().parents[3] / 'config' / CONFIG_FILE):
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
    use_sim_time = _as_bool('use_sim_time', v['use_sim_time'])
    namespace = v['namespace'].strip()
    if namespace and not namespace.startswith('/'):
        namespace = '/' + namespace
    out = []
    for node in NODES:
        parameters: dict = {'use_sim_time': use_sim_time}
        for param, arg in node.arg_parameters:
            if v[arg]:
                parameters[param] = v[arg]
        out.append(NodeInvocation(
            description=node, namespace=namespace, params_files=(params_file,),
            parameters=parameters,
            remappings=tuple((src, v[arg]) for src, arg in node.remappings)))
    return out
