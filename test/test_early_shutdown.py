"""Ctrl-C while a node executable is still importing (its first ~1.5 s, and again after each
respawn) ends it quietly with status 0: the executables install the clean-shutdown handler
before they import their node module.

Each executable is run as its console script runs it (the entry point named in setup.py), and
SIGINT is sent once numpy is mapped into the process, i.e. in the middle of the node module's
imports (rclpy, the backends and the stream processors follow numpy).
"""
from __future__ import annotations

import ast
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from polling import wait_until

ROOT = Path(__file__).resolve().parents[1]
EXECUTABLES = ('face_crop_node', 'audio_feature_node', 'fusion_node')


def console_scripts() -> dict[str, str]:
    """name -> 'module:function' of setup.py's console_scripts."""
    tree = ast.parse((ROOT / 'setup.py').read_text(encoding='utf-8'))
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if isinstance(key, ast.Constant) and key.value == 'console_scripts':
                    entries = ast.literal_eval(value)
                    return dict(e.replace(' ', '').split('=', 1) for e in entries)
    raise AssertionError('setup.py has no console_scripts')


def _numpy_mapped(pid: int) -> bool:
    try:
        with open(f'/proc/{pid}/maps', encoding='ascii', errors='replace') as f:
            return '_multiarray_umath' in f.read()
    except FileNotFoundError:
        return False


@pytest.mark.slow      # starts node processes
@pytest.mark.parametrize('executable', EXECUTABLES)
@pytest.mark.parametrize('signals', [1, 2], ids=['one SIGINT', 'two SIGINTs (ros2 launch)'])
def test_ctrl_c_during_the_imports_exits_cleanly(executable, signals, ros_env, tmp_path):
    module, function = console_scripts()[executable].split(':')
    # What the console script setuptools writes does: import the entry point, call it.
    code = f'import sys\nfrom {module} import {function}\nsys.exit({function}())\n'
    proc = subprocess.Popen([sys.executable, '-c', code, '--ros-args', '-p',
                             f'model_path:={tmp_path / "absent.pt"}'], env=ros_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_until(lambda: _numpy_mapped(proc.pid) or proc.poll() is not None, 30,
                   f'{executable} to start importing', interval_s=0.005)
        assert proc.poll() is None, 'the process ended before the signal: nothing was tested'
        for _ in range(signals):
            proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert 'Traceback' not in output and 'KeyboardInterrupt' not in output, output


def test_the_start_module_names_every_node_executable():
    scripts = console_scripts()
    for name in EXECUTABLES:
        assert scripts[name] == f'lightmer.ros.start:{name}'
