"""face_crop_node: camera frames in, one 98x80 grayscale face crop per segment out.

Subscribes `image` (sensor_msgs/Image; or `image/compressed` with compressed_input), keeps per
segment the frame nearest the segment's reference time (streaming.FrameSelector), runs MTCNN on
that frame only, and publishes the crop as mono8 on `face_crop` with the source frame's header.
A segment without a face publishes nothing and counts as `no_face`.
"""
from __future__ import annotations

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from lightmer.backend import face_cropper
from lightmer.streaming import FrameSelector

from .common import Reporter, run_node
from .conversions import (
    ConversionError,
    array_to_image,
    check_compressed,
    check_image,
    compressed_to_rgb,
    image_to_rgb,
    time_to_float,
)
from .params import FaceCropParams, declare_and_read, load_for_node
from .qos import input_qos, output_qos


class FaceCropNode(Node):
    def __init__(self, **kwargs):
        super().__init__('face_crop', **kwargs)
        self.params = declare_and_read(self, FaceCropParams)
        path, _, segment_s = load_for_node(self.params)
        # facenet-pytorch's MTCNN for a checkpoint, the export's MTCNN nets on onnxruntime for
        # an ONNX export (equal boxes); no torch import in the latter.
        self._cropper = face_cropper(path, self.params.min_face_size, self.params.torch_threads)
        self._selector = FrameSelector(segment_s, self.params.reference)
        # The first MTCNN call is slower (allocations, lazy imports): pay for it now.
        self._cropper([np.zeros((120, 160, 3), dtype=np.uint8)])
        self.counts = {'frames': 0, 'segments': 0, 'published': 0, 'no_face': 0,
                       'rejected': 0, 'resets': 0}
        self.reporter = Reporter(self, self.params.diagnostics_period_s, lambda: self.counts)
        self._pub = self.create_publisher(Image, 'face_crop', output_qos())
        qos = input_qos(self.params.qos_reliability, self.params.qos_depth)
        if self.params.compressed_input:
            self._sub = self.create_subscription(CompressedImage, 'image/compressed',
                                                 self.compressed_callback, qos)
        else:
            self._sub = self.create_subscription(Image, 'image', self.image_callback, qos)
        self.get_logger().info(
            f'T={segment_s:.3f} s, reference {self.params.reference}, '
            f'subscribing {self._sub.topic_name} ({self.params.qos_reliability})')

    def image_callback(self, msg: Image) -> None:
        self._on_frame(msg, check_image, image_to_rgb)

    def compressed_callback(self, msg: CompressedImage) -> None:
        self._on_frame(msg, check_compressed, compressed_to_rgb)

    def _on_frame(self, msg, check, convert) -> None:
        # Only one frame per segment is ever used, so the message itself waits in the selector
        # and only the chosen ones are converted (a full JPEG decode for compressed input).
        # The copy-free check here still reports malformed input on arrival.
        self.counts['frames'] += 1
        try:
            check(msg)
        except ConversionError as exc:
            self.counts['rejected'] += 1
            self.reporter.error(f'frame dropped: {exc}')
            return
        resets = self._selector.resets
        chosen = self._selector.push(time_to_float(msg.header.stamp), msg)
        if self._selector.resets != resets:
            self.counts['resets'] += 1
            self.reporter.warn('image stamps went backwards (a bag looping?): segments reset')
        for _, _, selected in chosen:
            self.counts['segments'] += 1
            try:
                frame = convert(selected)                          # uint8 (H, W, 3) RGB
            except ConversionError as exc:
                self.counts['rejected'] += 1
                self.reporter.error(f'selected frame dropped, no crop for its segment: {exc}')
                continue
            crop = self._cropper([frame])[0]                       # uint8 (98, 80) or None
            if crop is None:
                self.counts['no_face'] += 1
                continue
            self._pub.publish(array_to_image(crop, selected.header))
            self.counts['published'] += 1
            self.reporter.clear()                                  # recovered


def main(args=None) -> int:
    return run_node(FaceCropNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
