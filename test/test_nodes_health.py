"""The fusion node's own health on /diagnostics (real node, real DDS on loopback): a stalled
input goes WARN then ERROR and back to OK when it returns, "no face in view" is not a stall,
and every window says how many of its N segments it used."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import Header

import ros_helpers as rh
from lightmer.ros.conversions import float_to_time, no_face_image
from lightmer.ros.fusion_node import FusionNode
from polling import wait_until

WARN_S, ERROR_S = 0.6, 1.5
RNG = np.random.default_rng(0)


@pytest.fixture(scope='module')
def fusion(tmp_path_factory):
    torch.set_num_threads(1)
    context = rclpy.Context()
    rclpy.init(context=context)
    checkpoint = rh.make_checkpoint(tmp_path_factory.mktemp('health') / 'model.pt')
    node = FusionNode(context=context, cli_args=[
        '--ros-args', '-r', '__ns:=/health', '-p', f'model_path:={checkpoint}',
        '-p', 'min_segments:=2', '-p', f'stall_warn_s:={WARN_S}',
        '-p', f'stall_error_s:={ERROR_S}', '-p', 'diagnostics_period_s:=0.1'])
    # The node's executor runs its diagnostics timer; the test thread calls its callbacks, as
    # messages would.
    statuses: list[DiagnosticStatus] = []
    listener = rclpy.create_node('health_listener', context=context)
    listener.create_subscription(
        DiagnosticArray, '/diagnostics',
        lambda m: statuses.extend(s for s in m.status if s.name == '/health/fusion'), 50)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(listener)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node, statuses
    executor.shutdown(timeout_sec=5.0)
    thread.join(timeout=5.0)
    node.destroy_node()
    listener.destroy_node()
    rclpy.shutdown(context=context)


def _feed_until(node, k: int, face: bool, mel: bool, predicate, what: str,
                timeout_s: float = 15.0) -> int:
    """Feed one segment every 0.1 s of wall time (faces and/or log-mels), from segment k, until
    `predicate()`; returns the next segment to feed."""
    fed = [k]

    def feed() -> None:
        if face:
            node.face_callback(rh.face_crop_msg(fed[-1], RNG))
        if mel:
            node.mel_callback(rh.log_mel_msg(fed[-1], RNG))
        fed.append(fed[-1] + 1)

    # the inputs' own pace; the predicate is what is waited for
    wait_until(predicate, timeout_s, what, each=feed, interval_s=0.1,
               describe=node.reporter.status)
    return fed[-1]


def _level(node) -> bytes:
    return node.reporter.status()[0]


def test_a_silent_input_goes_warn_then_error_and_clears_when_it_returns(fusion):
    node, statuses = fusion
    k = _feed_until(node, 100, True, True, lambda: node.fuser.counts.windows >= 4,
                    'windows from both inputs')
    assert _level(node) == DiagnosticStatus.OK
    assert node.diagnostic_counts()['window_segments'] == '5/5'
    # the face input stops; audio keeps flowing
    k = _feed_until(node, k, False, True, lambda: _level(node) == DiagnosticStatus.WARN,
                    'WARN for the silent face input')
    level, message = node.reporter.status()
    assert 'face_crop silent' in message and 'camera' in message
    k = _feed_until(node, k, False, True, lambda: _level(node) == DiagnosticStatus.ERROR,
                    'ERROR for the silent face input')
    k = _feed_until(node, k, False, True, lambda: any(
        s.level == DiagnosticStatus.ERROR and 'face_crop silent' in s.message
        for s in list(statuses)), 'the ERROR on /diagnostics')
    # faces return: OK again, and the windows after the outage restart from its end
    windows = node.fuser.counts.windows
    _feed_until(node, k, True, True, lambda: node.fuser.counts.windows >= windows + 3,
                'windows after the face input returned')
    assert _level(node) == DiagnosticStatus.OK
    assert node.fuser.counts.breaks >= 1
    assert node.diagnostic_counts()['window_segments'] in ('3/5', '4/5'), \
        'the first windows after an outage use only segments after it'


def test_no_face_in_view_is_not_a_stall(fusion):
    node, _ = fusion
    no_face_before = node.fuser.counts.no_face

    def no_face_and_mel(k0: int, n: int) -> None:
        for k in range(k0, k0 + n):
            node.face_callback(no_face_image(Header(stamp=float_to_time(k * 0.5 + 0.1))))
            node.mel_callback(rh.log_mel_msg(k, RNG))
            time.sleep(0.1)

    no_face_and_mel(5000, int(2 * ERROR_S / 0.1))          # longer than the ERROR delay
    level, message = node.reporter.status()
    assert level == DiagnosticStatus.OK and message == 'no face in view'
    counts = node.diagnostic_counts()
    assert counts['no_face'] - no_face_before == int(2 * ERROR_S / 0.1)
    assert node.fuser.pending_segments == (), 'each no-face segment was settled at once'
    assert int(counts['rejected']) == 0, 'the no-face word is not a malformed crop'
