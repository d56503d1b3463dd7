"""The launch file, checked without launch_ros (not installable here) by running it against
small stand-ins for the launch API, against the node description and the installed
executables. Also the parameter files against the nodes' declared parameters, and bringup's
error path."""
from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import inspect
import sys
import types
from pathlib import Path

import pytest
import yaml

from lightmer.ros import start
from lightmer.ros.description import LAUNCH_ARGUMENTS, NODES, PACKAGE, resolve
from lightmer.ros.params import (
    AudioFeatureParams,
    CommonParams,
    FaceCropParams,
    FusionParams,
)

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / 'launch' / 'emotion.launch.py'
PARAMS_OF = {'face_crop': FaceCropParams, 'audio_feature': AudioFeatureParams,
             'fusion': FusionParams}


def _console_scripts() -> dict[str, str]:
    """The executables the installed lightmer distribution declares (its entry points, as
    pip or colcon installed them from setup.py) -> 'module:function'."""
    return {e.name: e.value.replace(' ', '') for e in
            importlib.metadata.distribution('lightmer').entry_points
            if e.group == 'console_scripts'}


def test_every_described_node_is_a_setup_py_executable_with_main():
    """Each described node's executable enters through ros.start (the shutdown handler before
    the node module's imports), which runs that node module's main."""
    scripts = _console_scripts()
    for node in NODES:
        assert scripts.get(node.executable) == f'lightmer.ros.start:{node.executable}', \
            node.executable
        assert node.executable in start.EXECUTABLES
        source = inspect.getsource(start.EXECUTABLES[node.executable])
        assert f'import {node.module.rsplit(".", 1)[1]} as node' in source, node.executable
        module = importlib.import_module(node.module)
        assert callable(module.main) and hasattr(module, node.class_name)
    assert set(PARAMS_OF) == {n.name for n in NODES}


def test_launch_file_is_built_from_the_description(monkeypatch):
    """Whatever the description says is what the launch file declares and starts: with one
    more launch argument and one more node in the description (and nothing changed in the
    launch file), the extra argument is declared and the extra node started, remapped from
    that argument."""
    from lightmer.ros import description

    extra_arg = description.LaunchArgument('probe_topic', '/probe/in', 'a probe topic')
    extra_node = description.NodeDescription(
        'probe_node', 'lightmer.ros.probe_node', 'ProbeNode', 'probe',
        remappings=(('input', 'probe_topic'),), arg_parameters=(('model_path', 'model'),))
    monkeypatch.setattr(description, 'LAUNCH_ARGUMENTS', (*LAUNCH_ARGUMENTS, extra_arg))
    monkeypatch.setattr(description, 'NODES', (*NODES, extra_node))
    monkeypatch.setitem(description._KINDS, 'probe_topic', str)
    actions = _launch_actions(monkeypatch, {})
    declared = [a.args[0] for a in actions if type(a).__name__ == 'DeclareLaunchArgument']
    assert declared[-1] == 'probe_topic'
    (opaque,) = [a for a in actions if type(a).__name__ == 'OpaqueFunction']
    context = {a.name: a.default for a in description.LAUNCH_ARGUMENTS} | {
        'probe_topic': '/robot/probe', 'model': '/m/model.pt'}
    started = {n.kwargs['name']: n.kwargs for n in opaque.kwargs['function'](context)}
    assert list(started) == [n.name for n in NODES] + ['probe']
    assert started['probe']['executable'] == 'probe_node'
    assert started['probe']['remappings'] == [('input', '/robot/probe')]


class _Recorder:
    """Stand-in for a launch class: keeps its constructor arguments."""

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs


def _fake_launch_modules(values: dict[str, str]) -> dict[str, types.ModuleType]:
    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    mods = {name: types.ModuleType(name) for name in
            ('launch', 'launch.actions', 'launch.substitutions', 'launch_ros',
             'launch_ros.actions')}
    mods['launch'].LaunchDescription = _Recorder
    mods['launch.actions'].DeclareLaunchArgument = type('DeclareLaunchArgument', (_Recorder,), {})
    mods['launch.actions'].OpaqueFunction = type('OpaqueFunction', (_Recorder,), {})
    mods['launch.substitutions'].LaunchConfiguration = LaunchConfiguration
    mods['launch_ros.actions'].Node = type('Node', (_Recorder,), {})
    return mods


def _launch_actions(monkeypatch, values: dict[str, str]) -> list:
    """The actions of launch/emotion.launch.py's description, built with the stand-in launch
    modules (launch_ros is not installable here)."""
    for name, module in _fake_launch_modules(values).items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location('emotion_launch', LAUNCH)
    launch_module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(launch_module)
    return launch_module.generate_launch_description().args[0]


@pytest.mark.parametrize('values', [
    {},
    {'model': '/m/model.pt', 'camera_topic': '/cam/image', 'audio_topic': '/mic/audio',
     'audio_msg': 'mgonzs13', 'use_sim_time': 'true', 'namespace': 'robot1',
     'params_file': str(ROOT / 'config' / 'ravdess.yaml')},
])
def test_launch_file_starts_what_bringup_starts(values, monkeypatch):
    actions = _launch_actions(monkeypatch, values)
    declared = {a.args[0]: a.kwargs for a in actions
                if type(a).__name__ == 'DeclareLaunchArgument'}
    assert list(declared) == [a.name for a in LAUNCH_ARGUMENTS]
    assert all(d['description'] for d in declared.values())
    (opaque,) = [a for a in actions if type(a).__name__ == 'OpaqueFunction']
    context = {a.name: a.default for a in LAUNCH_ARGUMENTS} | values
    nodes = opaque.kwargs['function'](context)
    want = resolve(values)
    assert len(nodes) == len(want) == 3
    for node, inv in zip(nodes, want, strict=True):
        kw = node.kwargs
        assert kw['package'] == PACKAGE
        assert (kw['executable'], kw['name']) == (inv.executable, inv.name)
        assert kw['parameters'] == inv.parameter_files()
        assert kw['remappings'] == list(inv.remappings)
        assert (kw['namespace'] or '') == inv.namespace
    if values:
        face, audio, fusion = want
        assert ('image', '/cam/image') in face.remappings
        assert audio.parameters['audio_msg'] == 'mgonzs13'
        assert fusion.parameters == {'use_sim_time': True, 'model_path': '/m/model.pt'}
        assert face.namespace == '/robot1'
        assert face.params_files == (str(ROOT / 'config' / 'ravdess.yaml'),)
        args = face.ros_args()
        assert args[:3] == ['--ros-args', '-r', '__node:=face_crop']
        assert '__ns:=/robot1' in args and 'image:=/cam/image' in args
        overrides = yaml.safe_load(Path(face.parameter_files()[-1]).read_text())
        assert overrides['/**/face_crop']['ros__parameters']['use_sim_time'] is True


def test_resolve_refuses_unknown_arguments_and_bad_booleans():
    with pytest.raises(ValueError, match='unknown launch arguments'):
        resolve({'camera': '/x'})
    with pytest.raises(ValueError, match='use_sim_time'):
        resolve({'use_sim_time': 'maybe'})
    with pytest.raises(ValueError, match='max_faces must be int'):
        resolve({'max_faces': 'four'})
    # the several-people arguments reach face_crop and fusion, typed; empty leaves the file's
    face, audio, fusion = resolve({'max_faces': '3', 'audio_to': 'largest'})
    assert face.parameters['max_faces'] == fusion.parameters['max_faces'] == 3
    assert 'max_faces' not in audio.parameters and fusion.parameters['audio_to'] == 'largest'
    assert all('face_source' not in n.parameters for n in resolve({}))


@pytest.mark.parametrize('name', ['lightmer.yaml', 'crema_d.yaml', 'ravdess.yaml'])
def test_parameter_files_only_set_declared_parameters_of_the_right_type(name):
    doc = yaml.safe_load((ROOT / 'config' / name).read_text())
    common = doc.pop('/**')['ros__parameters']
    _check_types(CommonParams, common)
    for key, section in doc.items():
        node = key.removeprefix('/**/')
        assert node in PARAMS_OF, f'{name}: {key} names no lightmer node'
        values = section['ros__parameters']
        _check_types(PARAMS_OF[node], values)
        PARAMS_OF[node](**common, **values)           # and the values are valid together


def test_the_default_parameter_file_repeats_only_defaults():
    """config/lightmer.yaml shows the tunable parameters with their values: those must be the
    defaults, or the file and params.py would be two definitions that disagree."""
    doc = yaml.safe_load((ROOT / 'config' / 'lightmer.yaml').read_text())
    for key, section in doc.items():
        node = key.removeprefix('/**/')
        defaults = dataclasses.asdict(PARAMS_OF.get(node, CommonParams)())
        for name, value in section['ros__parameters'].items():
            assert value == defaults[name], f'{key} {name}: {value!r} != {defaults[name]!r}'


def _check_types(cls, values: dict) -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in values.items():
        assert key in defaults, f'{key} is not a parameter of {cls.__name__}'
        # ROS refuses an int for a double parameter (and the reverse)
        assert type(value) is type(defaults[key]), f'{key}: {value!r}'


def test_every_parameter_has_a_description():
    for cls in PARAMS_OF.values():
        for f in dataclasses.fields(cls):
            assert len(f.metadata.get('description', '')) > 10, f.name
        assert {f.name for f in dataclasses.fields(CommonParams)} <= {
            f.name for f in dataclasses.fields(cls)}


def test_bringup_without_a_model_exits_with_a_fix_it_message(capsys):
    from lightmer.ros.bringup import run_bringup

    assert run_bringup({'model': str(ROOT / 'no-such-model.pt')}) == 1
    err = capsys.readouterr().err
    assert 'no checkpoint' in err and 'lightmer train' in err
    assert run_bringup() == 1
    assert 'model_path is empty' in capsys.readouterr().err


# --- launch arguments beat the parameter file (rclpy's own override resolution) --------------
def _declared(inv, names: dict[str, object]) -> dict[str, object]:
    """The values a real rclpy node started with `inv.ros_args()` gets for `names`."""
    import rclpy

    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        node = rclpy.create_node(inv.name, context=context, cli_args=inv.ros_args(),
                                 use_global_arguments=False)
        try:
            return {n: (node.get_parameter(n) if node.has_parameter(n)      # use_sim_time
                        else node.declare_parameter(n, default)).value
                    for n, default in names.items()}
        finally:
            node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


# Every way a parameter file can address a node: all nodes, any namespace + name, the name,
# the fully qualified name; each sets the launch-mapped parameters to a YAML value.
_KEYS = ('/**', '/**/{name}', '{name}', '/{name}', '/robot1/{name}')


@pytest.mark.parametrize('key', _KEYS)
@pytest.mark.parametrize('namespace', ['', 'robot1'])
def test_launch_arguments_win_over_every_key_of_the_parameter_file(tmp_path, key, namespace):
    values = {'model': '/from/launch.pt', 'audio_msg': 'mgonzs13', 'use_sim_time': 'true',
              'namespace': namespace, 'max_faces': '3', 'face_source': 'ros4hri',
              'audio_to': 'largest', 'primary': 'oldest'}
    for node in NODES:
        # as in real files, an all-nodes block comes first (rclpy applies the blocks that match
        # a node in the order their keys first appear, launch_ros's overrides included)
        yaml_file = tmp_path / f'{node.name}.yaml'
        yaml_file.write_text(
            "/**:\n  ros__parameters:\n    diagnostics_period_s: 0.5\n"
            + yaml.safe_dump({key.format(name=node.name): {'ros__parameters': {
                'model_path': '/from/yaml.pt', 'audio_msg': 'ros-drivers',
                'use_sim_time': False, 'torch_threads': 3, 'max_faces': 1}}}))
        inv = next(i for i in resolve({**values, 'params_file': str(yaml_file)})
                   if i.name == node.name)
        got = _declared(inv, {'model_path': '', 'audio_msg': '', 'use_sim_time': False,
                              'torch_threads': 1, 'max_faces': 1, 'face_source': '',
                              'audio_to': '', 'primary': ''})
        # typed as the parameters are (max_faces is an int)
        want = {param: int(values[arg]) if arg == 'max_faces' else values[arg]
                for param, arg in node.arg_parameters}
        assert {k: got[k] for k in want} == want, (key, node.name)
        assert got['use_sim_time'] is True
        # a key naming the node with a namespace (none, or /robot1) applies in that one only
        applies = {'{name}': not namespace, '/{name}': not namespace,
                   '/robot1/{name}': namespace == 'robot1'}.get(key, True)
        assert got['torch_threads'] == (3 if applies else 1), 'the rest of the file still holds'


def test_the_shipped_parameter_file_does_not_hide_launch_arguments():
    """config/lightmer.yaml sets audio_msg under the node's own key; `audio_msg:=mgonzs13`
    must still reach the node (it used to read ros-drivers)."""
    (audio,) = [i for i in resolve({'audio_msg': 'mgonzs13', 'model': '/m.pt'})
                if i.name == 'audio_feature']
    assert _declared(audio, {'audio_msg': '', 'model_path': ''}) == {
        'audio_msg': 'mgonzs13', 'model_path': '/m.pt'}
    (fusion,) = [i for i in resolve({}) if i.name == 'fusion']
    assert _declared(fusion, {'missing_policy': ''}) == {'missing_policy': 'skip'}


def test_the_launch_file_passes_the_override_file_after_the_parameter_file(monkeypatch):
    actions = _launch_actions(monkeypatch, {})
    (opaque,) = [a for a in actions if type(a).__name__ == 'OpaqueFunction']
    values = {a.name: a.default for a in LAUNCH_ARGUMENTS} | {'audio_msg': 'mgonzs13'}
    for node, inv in zip(opaque.kwargs['function'](values), resolve(values), strict=True):
        files = node.kwargs['parameters']
        # launch_ros turns each path into --params-file, in order: the overrides come last
        assert files == inv.parameter_files() and files[-1] != inv.params_files[-1]
        assert all(isinstance(f, str) and Path(f).is_file() for f in files)


# --- respawn -----------------------------------------------------------------------------------
def test_respawn_is_on_by_default_and_reaches_every_node_action(monkeypatch):
    assert {i.respawn for i in resolve({})} == {True}
    assert {i.respawn_delay for i in resolve({})} == {1.0}
    off = resolve({'respawn': 'false', 'respawn_delay': '2.5'})
    assert {(i.respawn, i.respawn_delay) for i in off} == {(False, 2.5)}
    with pytest.raises(ValueError, match='respawn_delay'):
        resolve({'respawn_delay': '-1'})
    actions = _launch_actions(monkeypatch, {})
    declared = {a.args[0]: a.kwargs['default_value'] for a in actions
                if type(a).__name__ == 'DeclareLaunchArgument'}
    assert declared['respawn'] == 'true' and float(declared['respawn_delay']) == 1.0
    (opaque,) = [a for a in actions if type(a).__name__ == 'OpaqueFunction']
    values = {a.name: a.default for a in LAUNCH_ARGUMENTS} | {'respawn': 'false',
                                                              'respawn_delay': '4'}
    for node in opaque.kwargs['function'](values):
        # launch.actions.ExecuteProcess takes respawn (bool) and respawn_delay (float)
        assert node.kwargs['respawn'] is False and node.kwargs['respawn_delay'] == 4.0
