"""The environment scripts/setup.sh builds, and the package metadata colcon reads."""
import ast
import importlib
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


def test_setup_installs_what_colcon_expects():
    text = (REPO / 'setup.py').read_text(encoding='utf-8')
    for data_dir in ('launch', 'config', 'models', 'resource_index/packages'):
        assert data_dir in text
    for executable in ('lightmer =', 'face_crop_node =', 'audio_feature_node =',
                       'fusion_node ='):
        assert executable in text
    cfg = (REPO / 'setup.cfg').read_text(encoding='utf-8')
    assert 'script_dir=$base/lib/lightmer' in cfg
    assert 'install_scripts=$base/lib/lightmer' in cfg
    assert (REPO / 'resource' / 'lightmer').is_file()


def test_sources_pass_ruff():
    result = subprocess.run(
        [sys.executable, '-m', 'ruff', 'check', 'src', 'test', 'launch'],
        cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
