"""The models/ folder: checkpoints placed there install to share/lightmer/models/, and a bare
name (`model:=crema_d_fold0`) finds them there as a path would."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import ros_helpers as rh
from lightmer.ros.description import LAUNCH_ARGUMENTS
from lightmer.ros.params import model_dirs, resolve_model_path

ROOT = Path(__file__).resolve().parents[1]


def test_a_path_is_taken_as_it_is_and_a_bare_name_is_looked_up(tmp_path):
    shelf = tmp_path / 'shelf'
    shelf.mkdir()
    (shelf / 'crema_d_fold0.pt').write_bytes(b'x')
    (shelf / 'other.pt').write_bytes(b'x')
    elsewhere = tmp_path / 'mine.pt'
    elsewhere.write_bytes(b'x')
    assert resolve_model_path(str(elsewhere), [shelf]) == elsewhere
    assert resolve_model_path('crema_d_fold0', [shelf]) == shelf / 'crema_d_fold0.pt'
    assert resolve_model_path('crema_d_fold0.pt', [shelf]) == shelf / 'crema_d_fold0.pt'
    # the first folder that has it wins (the installed share directory comes first)
    first = tmp_path / 'first'
    first.mkdir()
    (first / 'other.pt').write_bytes(b'x')
    assert resolve_model_path('other', [first, shelf]) == first / 'other.pt'
    with pytest.raises(ValueError) as err:
        resolve_model_path('crema_d_fold9', [shelf])
    text = str(err.value)
    assert str(shelf) in text and 'crema_d_fold0' in text and 'other' in text
    # something that looks like a path is never looked up by name
    with pytest.raises(ValueError, match='no checkpoint or export at'):
        resolve_model_path(str(tmp_path / 'missing.pt'), [shelf])
    with pytest.raises(ValueError, match='model_path is empty'):
        resolve_model_path('', [shelf])
    # an ONNX export by its bare name; a checkpoint of the same name comes first
    (shelf / 'ravdess_fold1.onnx').write_bytes(b'x')
    assert resolve_model_path('ravdess_fold1', [shelf]) == shelf / 'ravdess_fold1.onnx'
    (shelf / 'ravdess_fold1.pt').write_bytes(b'x')
    assert resolve_model_path('ravdess_fold1', [shelf]) == shelf / 'ravdess_fold1.pt'


def test_an_unknown_name_lists_models_only_and_folders_that_exist(tmp_path):
    """An ONNX export's parts are not models; a folder that does not exist is not named as
    holding anything."""
    shelf, missing = tmp_path / 'shelf', tmp_path / 'not_installed'
    shelf.mkdir()
    for name in ('fold0.pt', 'robot.onnx', 'robot.onnx.json', 'robot.fusion.onnx',
                 'robot.mtcnn_onet.onnx', 'robot.mtcnn_pnet.onnx'):
        (shelf / name).write_bytes(b'x')
    with pytest.raises(ValueError) as err:
        resolve_model_path('fold9', [missing, shelf])
    text = str(err.value)
    assert "(there: ['fold0', 'robot'])" in text, text
    assert str(missing) not in text and str(shelf) in text
    with pytest.raises(ValueError) as err:
        resolve_model_path('fold9', [missing])
    assert 'no models/ folder is installed' in str(err.value)


def test_the_model_launch_argument_names_both_kinds():
    text = next(a.description for a in LAUNCH_ARGUMENTS if a.name == 'model')
    assert '.pt' in text and '.onnx' in text and 'models/' in text


def test_the_source_tree_models_folder_is_searched():
    assert ROOT / 'models' in model_dirs()


def test_an_installed_model_is_found_by_its_bare_name(tmp_path, ros_env):
    """Install the package's data files as colcon's ament_python build does (setup.py
    data_files into a prefix) from a copy of the tree holding one checkpoint in models/, then
    load that checkpoint by its bare name through the nodes' own loader, in a process that
    sees only that prefix's ament index."""
    tree = tmp_path / 'tree'
    tree.mkdir()
    for name in ('setup.py', 'package.xml'):
        shutil.copy(ROOT / name, tree / name)
    for name in ('resource', 'launch', 'config', 'models'):
        shutil.copytree(ROOT / name, tree / name)
    (tree / 'src').mkdir()
    rh.make_checkpoint(tree / 'models' / 'installed_fixture.pt', seed=11)
    prefix = tmp_path / 'install'
    subprocess.run([sys.executable, 'setup.py', '-q', 'install_data', '-d', str(prefix)],
                   cwd=tree, check=True, capture_output=True, timeout=120)
    installed = prefix / 'share' / 'lightmer' / 'models'
    assert (installed / 'installed_fixture.pt').is_file()
    assert (installed / 'README.md').is_file()
    code = ('from lightmer.ros.params import FusionParams, load_for_node, resolve_model_path\n'
            'print(resolve_model_path("installed_fixture"))\n'
            'model, meta, _ = load_for_node(FusionParams(model_path="installed_fixture"))\n'
            'print(meta.provenance["dataset"])\n')
    env = dict(ros_env, AMENT_PREFIX_PATH=str(prefix))
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == [str(installed / 'installed_fixture.pt'), 'test-fixture']
