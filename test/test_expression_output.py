"""`publish_expression`: the fusion node (real node, real DDS on loopback) also publishes each
window as hri_msgs/Expression on `expression`, with a REP-155 name and the window's own
probability of it as the confidence."""
from __future__ import annotations

import threading

import numpy as np
import rclpy
import torch
from hri_msgs.msg import Expression
from rclpy.executors import SingleThreadedExecutor
from vision_msgs.msg import Classification

import ros_helpers as rh
from lightmer.core.messages import HRI_EXPRESSIONS, expression_fields
from lightmer.ros.fusion_node import FusionNode
from lightmer.ros.qos import output_qos
from polling import wait_until

RNG = np.random.default_rng(1)


def test_each_window_is_also_an_hri_expression(tmp_path):
    torch.set_num_threads(1)
    context = rclpy.Context()
    rclpy.init(context=context)
    checkpoint = rh.make_checkpoint(tmp_path / 'model.pt')
    node = FusionNode(context=context, cli_args=[
        '--ros-args', '-r', '__ns:=/expr', '-p', f'model_path:={checkpoint}',
        '-p', 'publish_expression:=true', '-p', 'min_segments:=2'])
    listener = rclpy.create_node('expression_listener', context=context)
    got: dict[str, list] = {'expression': [], 'emotion': []}
    lock = threading.Lock()

    def keep(name):
        def callback(msg):
            with lock:
                got[name].append(msg)
        return callback

    listener.create_subscription(Expression, '/expr/expression', keep('expression'),
                                 output_qos(50))
    listener.create_subscription(Classification, '/expr/emotion', keep('emotion'),
                                 output_qos(50))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    executor.add_node(listener)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    segments = iter(range(100, 10_000))

    def feed() -> None:
        k = next(segments)
        node.face_callback(rh.face_crop_msg(k, RNG))
        node.mel_callback(rh.log_mel_msg(k, RNG))

    def counts() -> tuple[int, int]:
        with lock:
            return len(got['expression']), len(got['emotion'])

    try:
        wait_until(lambda: listener.count_publishers('/expr/expression'), 30,
                   'the expression publisher')
        # each segment at the inputs' own pace; the counts are what is awaited
        wait_until(lambda: min(counts()) >= 3, 30, 'three expressions and three emotions',
                   each=feed, interval_s=0.1, describe=counts)
        with lock:
            expressions, emotions = list(got['expression']), list(got['emotion'])
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)
        node.destroy_node()
        listener.destroy_node()
        rclpy.shutdown(context=context)
    assert len(expressions) >= 3, f'{len(expressions)} expressions, {len(emotions)} emotions'
    # The REP-155 names lightmer's classes map to, read from the message's own constants.
    rep155 = {getattr(Expression, n) for n in ('NEUTRAL', 'ANGRY', 'SAD', 'HAPPY', 'SURPRISED',
                                               'DISGUSTED', 'SCARED')}
    assert set(HRI_EXPRESSIONS.values()) <= rep155
    by_stamp = {(m.header.stamp.sec, m.header.stamp.nanosec): m for m in emotions}
    for e in expressions:
        assert e.expression in rep155
        window = by_stamp[(e.header.stamp.sec, e.header.stamp.nanosec)]    # the same window
        probs = np.array([h.score for h in window.results])
        labels = tuple(h.class_id for h in window.results)
        name, confidence = expression_fields(probs, labels)
        assert e.expression == name
        assert abs(e.confidence - confidence) < 1e-6 and 0 < e.confidence <= 1
