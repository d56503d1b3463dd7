"""fusion_node: face crops and log-mels in, sliding-window emotion probabilities out.

Pairs `face_crop` and `log_mel` by segment id, runs VN, AN and FC once per segment, caches the
segment logits and, on each completed segment, publishes on `emotion` a vision_msgs/
Classification with every class (scores sum to 1) fused over the cached last N segments,
stamped with that segment's reference time and the camera's frame_id. `emotion/label_info`
(LabelInfo) is latched. With publish_expression and hri_msgs importable, also
hri_msgs/Expression on `expression`.

A plain node, not a lifecycle node: nothing here provides a lifecycle manager (launch_ros's
event handlers, nav2's manager), so a lifecycle node would sit unconfigured under `ros2 launch`
and under `lightmer bringup` alike; loading the checkpoint in the constructor and failing
there with a message that says what to set behaves the same everywhere.
"""
from __future__ import annotations

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Classification, LabelInfo

from lightmer.backend import load_model
from lightmer.streaming import SegmentFuser, WindowResult

from .common import Reporter, run_node
from .conversions import (
    ConversionError,
    classification_msg,
    expression_fields,
    float_to_time,
    image_to_array,
    label_info_msg,
    time_to_float,
)
from .params import FusionParams, declare_and_read, load_for_node
from .qos import latched_qos, output_qos


class FusionNode(Node):
    def __init__(self, **kwargs):
        super().__init__('fusion', **kwargs)
        self.params = declare_and_read(self, FusionParams)
        path, meta, segment_s = load_for_node(self.params)
        n = self.params.n_segments or meta.n_segments
        if self.params.min_segments > n:
            raise ValueError(f'min_segments {self.params.min_segments} exceeds the window of '
                             f'{n} segments; lower it or raise n_segments')
        self.labels = tuple(meta.labels)
        self._face_shape = (meta.features.face_height, meta.features.face_width)
        self._mel_shape = (meta.features.n_mels, meta.features.mel_frames)
        # torch for a checkpoint, onnxruntime for an ONNX export: the same numpy callables.
        model = load_model(path, self.params.torch_threads)
        segment_logits, fuse = model.segment_logits, model.fuse
        # The first forward pass is slower (allocator, kernels): pay for it now.
        segment_logits(np.zeros(self._face_shape, np.uint8), np.zeros(self._mel_shape, np.float32))
        self.fuser = SegmentFuser(
            segment_logits, fuse, n_segments=n, segment_s=segment_s,
            anchor=self.params.reference, min_segments=self.params.min_segments or n,
            policy=self.params.missing_policy, wait_s=self.params.missing_wait_s,
            nearest_max=self.params.nearest_max_segments)
        self._rejected = 0
        self._resets_seen = 0
        self.reporter = Reporter(self, self.params.diagnostics_period_s, self._counts)
        self._pub = self.create_publisher(Classification, 'emotion', output_qos())
        self._info_pub = self.create_publisher(LabelInfo, 'emotion/label_info', latched_qos())
        self._info_pub.publish(label_info_msg(self.labels,
                                              Header(stamp=self.get_clock().now().to_msg())))
        self._expression_pub = self._expression_publisher()
        qos = output_qos(self.params.queue_depth)
        self._face_sub = self.create_subscription(Image, 'face_crop', self.face_callback, qos)
        self._mel_sub = self.create_subscription(Image, 'log_mel', self.mel_callback, qos)
        self.get_logger().info(f'{meta.preset}: {len(self.labels)} classes, N={n}, '
                               f'T={segment_s:.3f} s, policy {self.params.missing_policy}')

    def _expression_publisher(self):
        if not self.params.publish_expression:
            return None
        try:
            from hri_msgs.msg import Expression
        except ImportError:
            self.get_logger().warning('publish_expression is set but hri_msgs is not '
                                      'installed: publishing emotion only')
            return None
        return self.create_publisher(Expression, 'expression', output_qos())

    def _counts(self) -> dict:
        c = self.fuser.counts
        return {'used': c.used, 'filled': c.filled, 'dropped': c.dropped,
                'windows': c.windows, 'duplicates': c.duplicates, 'late': c.late,
                'resets': c.resets, 'rejected': self._rejected}

    def face_callback(self, msg: Image) -> None:
        crop = self._read(msg, 'mono8', self._face_shape)
        if crop is not None:
            self._publish(self.fuser.push_face(time_to_float(msg.header.stamp), crop,
                                               msg.header.frame_id))

    def mel_callback(self, msg: Image) -> None:
        mel = self._read(msg, '32FC1', self._mel_shape)
        if mel is not None:
            self._publish(self.fuser.push_mel(time_to_float(msg.header.stamp), mel))

    def _read(self, msg: Image, encoding: str, shape: tuple[int, int]):
        try:
            if msg.encoding != encoding:
                raise ConversionError(f'expected {encoding}, got {msg.encoding!r}')
            array = image_to_array(msg)
            if array.shape != shape:
                raise ConversionError(f'expected {shape}, got {array.shape}: was it made with '
                                      'the same checkpoint?')
        except ConversionError as exc:
            self._rejected += 1
            self.reporter.error(f'input dropped: {exc}')
            return None
        return array

    def _publish(self, results: list[WindowResult]) -> None:
        resets = self.fuser.counts.resets
        if resets != self._resets_seen:
            self._resets_seen = resets
            self.reporter.warn('segment stamps went backwards (a bag looping?): caches reset')
        for r in results:
            header = Header(stamp=float_to_time(r.t_ref), frame_id=r.frame_id)
            self._pub.publish(classification_msg(r.probs, self.labels, header))
            self.reporter.clear()                                      # recovered
            if self._expression_pub is not None:
                from hri_msgs.msg import Expression

                expression, confidence = expression_fields(r.probs, self.labels)
                self._expression_pub.publish(Expression(header=header, expression=expression,
                                                        confidence=confidence))


def main(args=None) -> int:
    return run_node(FusionNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
