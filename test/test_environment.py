"""The environment scripts/setup.sh builds, and the package metadata colcon reads."""
import ast
import importlib
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Importable ROS packages that are not in this venv's ament index (no PyPI wheel), but that the
# code may import when present on a robot.
ROS_PACKAGES_NOT_ON_PYPI = {'launch', 'launch_ros', 'cv_bridge', 'hri_msgs'}


@pytest.mark.parametrize('module', [
    'rclpy', 'torch', 'torchvision', 'facenet_pytorch', 'librosa', 'rosbags', 'av',
    'vision_msgs.msg', 'audio_common_msgs.msg', 'lightmer'])
def test_venv_imports(module):
    importlib.import_module(module)


def _ament_packages() -> set[str]:
    index = Path(sys.prefix) / 'share' / 'ament_index' / 'resource_index' / 'packages'
    return {p.name for p in index.iterdir()} if index.is_dir() else set()


def _imported_top_level_modules(paths) -> dict[str, str]:
    """Top-level module names imported anywhere in `paths` -> one file that imports it."""
    found = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding='utf-8'), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split('.')[0], str(path.relative_to(REPO)))
    return found


def test_package_xml_declares_every_imported_ros_package():
    root = ET.parse(REPO / 'package.xml').getroot()
    assert root.get('format') == '3'
    assert root.findtext('name') == 'lightmer'
    assert root.find('export/build_type').text == 'ament_python'
    declared = {e.text for tag in ('depend', 'exec_depend') for e in root.iter(tag)}
    assert 'pytest' in {e.text for e in root.iter('test_depend')} or \
        'python3-pytest' in {e.text for e in root.iter('test_depend')}

    sources = list((REPO / 'src').rglob('*.py')) + list((REPO / 'launch').glob('*.py'))
    ros_packages = _ament_packages() | ROS_PACKAGES_NOT_ON_PYPI
    imported = _imported_top_level_modules(sources)
    undeclared = {name: where for name, where in imported.items()
                  if name in ros_packages and name not in declared and name != 'lightmer'}
    assert not undeclared, f'ROS packages imported but not declared in package.xml: {undeclared}'


def _setup_arguments() -> dict:
    """The keyword arguments setup.py hands to setuptools.setup, read by running it."""
    probe = ('import json, setuptools\n'
             'setuptools.setup = lambda **kw: print(json.dumps({k: kw[k] for k in '
             '("data_files", "entry_points")}))\n'
             'exec(compile(open("setup.py").read(), "setup.py", "exec"))\n')
    out = subprocess.run([sys.executable, '-c', probe], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    return json.loads(out)


def test_setup_installs_what_colcon_expects():
    args = _setup_arguments()
    installed = {(Path(dest) / Path(src).name).as_posix()
                 for dest, sources in args['data_files'] for src in sources}
    wanted = {'share/ament_index/resource_index/packages/lightmer', 'share/lightmer/package.xml'}
    for folder in ('launch', 'config'):       # every file a robot user is told to use
        wanted |= {f'share/lightmer/{folder}/{p.name}' for p in (REPO / folder).iterdir()
                   if p.is_file() and p.suffix != '.pyc'}
    assert wanted <= installed, sorted(wanted - installed)
    scripts = {entry.split('=')[0].strip() for entry in args['entry_points']['console_scripts']}
    assert {'lightmer', 'face_crop_node', 'audio_feature_node', 'fusion_node'} <= scripts
    cfg = (REPO / 'setup.cfg').read_text(encoding='utf-8')
    assert 'script_dir=$base/lib/lightmer' in cfg
    assert 'install_scripts=$base/lib/lightmer' in cfg
    assert (REPO / 'resource' / 'lightmer').is_file()


def test_sources_pass_ruff():
    result = subprocess.run(
        [sys.executable, '-m', 'ruff', 'check', 'src', 'test', 'launch'],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
