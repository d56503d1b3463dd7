"""Node processes started on the ONNX export never import torch, librosa, scipy or numba (the
audio node not even onnxruntime); a bad model file ends a node with a message that says what
to do."""
from __future__ import annotations

import shutil
import signal
import subprocess
import sys

import pytest
import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor

from lightmer.ros.description import NODES
from polling import wait_until

# Slow tier (starts node processes on an ONNX export): not in `make test-fast`.
pytestmark = pytest.mark.slow

NODE_MODULES = {n.name: n.module for n in NODES}   # node name -> module run with -X importtime

# A torch import always maps these native libraries; onnxruntime's Python binding this one.
TORCH_LIBS = ('libtorch_cpu', 'libc10.so')
# What librosa drags in (its features are numpy + soxr in lightmer): scipy's and numba's
# extension modules, numba's LLVM.
HEAVY_AUDIO_LIBS = ('/scipy/', '/numba/', 'llvmlite')
NOT_IMPORTED = {'torch', 'torchvision', 'facenet_pytorch', 'librosa', 'scipy', 'numba'}
ORT_LIB = 'onnxruntime_pybind11_state'


def _start(args: list[str], env, log_path):
    # -X importtime: the interpreter logs every module it imports (its sys.modules, in order)
    # to stderr, from the real executable without changing it.
    log = open(log_path, 'w+')
    proc = subprocess.Popen([sys.executable, '-X', 'importtime', *args], env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    return proc, log


def _node_args(module: str, model, extra=()) -> list[str]:
    return ['-m', module, '--ros-args', '-p', f'model_path:={model}',
            '-p', 'diagnostics_period_s:=0.2', *extra]


def _text(log) -> str:
    log.seek(0)
    return log.read()


def _imported(log_text: str) -> set[str]:
    """Top-level package names from `-X importtime` lines ('import time: self | cum | name')."""
    names = set()
    for line in log_text.splitlines():
        if line.startswith('import time:') and line.count('|') == 2:
            names.add(line.rsplit('|', 1)[1].strip().split('.')[0])
    return names


def _wait_for_diagnostics(procs: dict, names: set[str], timeout_s: float = 90) -> None:
    """Until every node in `names` has published on /diagnostics (built, model loaded)."""
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('runtime_probe', context=context)
    seen: set[str] = set()
    node.create_subscription(DiagnosticArray, '/diagnostics',
                             lambda m: seen.update(s.name.strip('/') for s in m.status), 50)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    def spin() -> None:
        executor.spin_once(timeout_sec=0.2)
        for name, (p, log) in procs.items():
            assert p.poll() is None, f'{name} exited: {_text(log)[-3000:]}'

    try:
        wait_until(lambda: names <= seen, timeout_s, f'/diagnostics from {sorted(names)}',
                   each=spin, interval_s=0.0, describe=lambda: f'none from {names - seen}')
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def _stop(procs: dict) -> None:
    for p, log in procs.values():
        p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)
        log.close()


@pytest.mark.parametrize('layout', ['three processes', 'lightmer bringup'])
def test_nodes_on_the_onnx_export_import_no_torch_librosa_scipy_numba(onnx_export, ros_env,
                                                                      tmp_path, layout):
    export = onnx_export[1]
    if layout == 'three processes':
        procs = {name: _start(_node_args(module, export), ros_env, tmp_path / f'{name}.log')
                 for name, module in NODE_MODULES.items()}
    else:
        procs = {'bringup': _start(['-m', 'lightmer.cli', 'bringup', '--model', str(export)],
                                   ros_env, tmp_path / 'bringup.log')}
    try:
        # Ready means built: the audio node has computed its warm-up window (resampled from
        # 8 kHz, log-mel), the face node loaded MTCNN.
        _wait_for_diagnostics(procs, set(NODE_MODULES))
        for name, (p, log) in procs.items():
            with open(f'/proc/{p.pid}/maps', encoding='ascii') as f:
                maps = f.read()
            imported = _imported(_text(log))
            assert 'rclpy' in imported and 'lightmer' in imported, name   # the log is real
            assert not NOT_IMPORTED & imported, (name, NOT_IMPORTED & imported)
            assert not any(lib in maps for lib in TORCH_LIBS + HEAVY_AUDIO_LIBS), name
            # The audio node reads only the export's JSON: no onnxruntime either.
            assert (ORT_LIB in maps) == (name != 'audio_feature'), name
            assert ('onnxruntime' in imported) == (name != 'audio_feature'), name
    finally:
        _stop(procs)
    assert all(p.returncode == 0 for p, _ in procs.values()), 'a clean exit on SIGINT'


@pytest.mark.parametrize('case', ['truncated', 'other_preset', 'no_metadata'])
def test_a_bad_export_ends_the_node_with_a_clear_message(onnx_export, ros_env, tmp_path, case):
    export = onnx_export[1]
    for path in export.parent.glob('model.*'):
        shutil.copy(path, tmp_path / path.name)
    model = tmp_path / 'model.onnx'
    extra = ()
    if case == 'truncated':
        model.write_bytes(model.read_bytes()[:4096])
        expected = 'truncated, corrupt or not an ONNX file'
    elif case == 'other_preset':
        extra = ('-p', 'expected_preset:=ravdess')
        expected = "trained on preset 'crema-d' but the parameters expect 'ravdess'"
    else:
        (tmp_path / 'model.onnx.json').unlink()
        expected = 'no metadata file model.onnx.json beside it'
    p, log = _start(_node_args(NODE_MODULES['fusion'], model, extra), ros_env,
                    tmp_path / 'fusion.log')
    try:
        assert p.wait(timeout=60) == 1
        text = _text(log)
    finally:
        log.close()
    assert expected in text and 'Traceback' not in text
