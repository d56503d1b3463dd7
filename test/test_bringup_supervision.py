"""`lightmer bringup` never hides a dead node: when an exception escapes a node's callback (made
here by a fault put into the fusion's processor, as any unforeseen bug would), the process
either ends with a one-line reason naming the node (respawn off) or rebuilds that node in
process and reports it (respawn on, the default), and the rebuilt node works."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from rclpy.executors import SingleThreadedExecutor
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Classification

import ros_helpers as rh
from lightmer.ros.bringup import start_bringup, supervise
from lightmer.ros.conversions import float_to_time
from lightmer.ros.qos import output_qos
from polling import wait_until

# Slow tier (bringup processes): not in `make test-fast`.
pytestmark = pytest.mark.slow

RNG = np.random.default_rng(0)


class _Feeder:
    """Publishes face crops and log-mels straight to the fusion node over DDS; collects
    `emotion`."""

    def __init__(self, context, namespace: str):
        self.node = rclpy.create_node('feeder', namespace=namespace, context=context)
        self.faces = self.node.create_publisher(Image, 'face_crop', output_qos())
        self.mels = self.node.create_publisher(Image, 'log_mel', output_qos())
        self.emotion: list = []
        self.node.create_subscription(Classification, 'emotion', self.emotion.append,
                                      output_qos())
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def segment(self, k: int) -> None:
        face = RNG.integers(0, 256, 98 * 80, np.uint8).tobytes()
        self.faces.publish(Image(header=Header(stamp=float_to_time(k * 0.5 + 0.1)), height=98,
                                 width=80, encoding='mono8', step=80, data=face))
        mel = RNG.standard_normal((128, 43)).astype(np.float32)
        self.mels.publish(Image(header=Header(stamp=float_to_time((k + 0.5) * 0.5)),
                                height=128, width=43, encoding='32FC1', step=172,
                                data=mel.tobytes()))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()


@pytest.fixture
def bringup(tmp_path):
    torch.set_num_threads(1)
    context = rclpy.Context()
    rclpy.init(context=context)
    checkpoint = rh.make_checkpoint(tmp_path / 'model.pt')
    params = tmp_path / 'params.yaml'
    params.write_text('/**/fusion:\n  ros__parameters:\n    min_segments: 1\n')
    yield context, checkpoint, params
    rclpy.shutdown(context=context)


def _inject_fault(running) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError('injected fault')

    running.node('fusion').fuser.push_mel = broken


def test_a_dead_node_ends_the_process_with_a_line_naming_it(bringup, capsys):
    context, checkpoint, params = bringup
    running = start_bringup({'model': str(checkpoint), 'params_file': str(params),
                             'namespace': 'sv1', 'respawn': 'false'}, context=context)
    feeder = _Feeder(context, '/sv1')
    stop = threading.Event()
    try:
        _inject_fault(running)
        poker = threading.Thread(target=wait_until, daemon=True, args=(
            stop.is_set, 30, 'the supervisor'), kwargs={
                'each': lambda: feeder.segment(10), 'interval_s': 0.1})
        poker.start()
        code = supervise(running, stop)
        stop.set()
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1
        assert len(err) == 1 and '/sv1/fusion' in err[0] and 'RuntimeError: injected fault' \
            in err[0], err
        # the other two nodes were running; all are stopped by the caller as usual
        assert {n.get_name() for n in running.nodes} == {'face_crop', 'audio_feature',
                                                          'fusion'}
    finally:
        stop.set()
        feeder.close()
        running.stop()


def test_respawn_rebuilds_the_dead_node_in_process_and_it_works(bringup, capsys):
    context, checkpoint, params = bringup
    running = start_bringup({'model': str(checkpoint), 'params_file': str(params),
                             'namespace': 'sv2', 'respawn_delay': '0.2'}, context=context)
    feeder = _Feeder(context, '/sv2')
    stop = threading.Event()
    result = {}
    supervisor = threading.Thread(target=lambda: result.update(code=supervise(running, stop)),
                                  daemon=True)
    supervisor.start()
    try:
        old = running.node('fusion')
        _inject_fault(running)
        k = iter(range(100, 10_000))
        wait_until(lambda: running.node('fusion') not in (old, None), 30,
                   'the fusion node rebuilt', each=lambda: feeder.segment(next(k)),
                   interval_s=0.1)
        assert running.restarts['fusion'] == 1
        wait_until(lambda: len(feeder.emotion) > 0, 30, 'emotion from the rebuilt node',
                   each=lambda: feeder.segment(next(k)), interval_s=0.1)
        assert all(t.is_alive() for t in running.threads)
        err = capsys.readouterr().err
        assert '/sv2/fusion' in err and 'injected fault' in err and 'restart' in err
    finally:
        stop.set()
        supervisor.join(timeout=10)
        feeder.close()
        running.stop()
    assert result == {'code': 0}


def test_bringup_process_ends_cleanly_on_two_sigints(tmp_path, ros_env):
    """`lightmer bringup` as a user runs it: Ctrl-C twice in a row (as a terminal and a
    supervisor may both send it) ends it with status 0 and no traceback."""
    checkpoint = rh.make_checkpoint(tmp_path / 'model.pt')
    log = tmp_path / 'bringup.log'
    with open(log, 'w') as out:
        proc = subprocess.Popen([sys.executable, '-m', 'lightmer.cli', 'bringup', '--model',
                                 str(checkpoint), '--namespace', 'sigint'], env=ros_env,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        # the fusion node is built last and logs its classes: all three nodes are up
        wait_until(lambda: 'classes, N=' in log.read_text() or proc.poll() is not None, 120,
                   'the bringup nodes to start', interval_s=0.1)
        assert proc.poll() is None, log.read_text()
        proc.send_signal(signal.SIGINT)
        time.sleep(0.1)                 # the second one lands while the first is handled
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0, log.read_text()
        text = log.read_text()
        assert 'Traceback' not in text and 'KeyboardInterrupt' not in text, text
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
