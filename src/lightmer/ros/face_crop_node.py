"""face_crop_node: camera frames in, one 98x80 grayscale face crop per segment out.

Subscribes `image` (sensor_msgs/Image; or `image/compressed` with compressed_input), keeps per
segment the frame nearest the segment's reference time and runs MTCNN on that frame only
(streaming.FaceSegmenter), and publishes the crop as mono8 on `face_crop` with the source frame's
header. A segment without a usable face (none found, or its frame would not decode) publishes
the empty no-face image instead (conversions.no_face_image), so every segment is announced.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image

from lightmer.backend import face_cropper
from lightmer.streaming import FaceSegmenter

from .common import Reporter, run_node
from .conversions import (
    ConversionError,
    array_to_image,
    check_compressed,
    check_image,
    compressed_to_rgb,
    image_to_rgb,
    no_face_image,
    time_to_float,
)
from .params import FaceCropParams, declare_and_read, load_for_node
from .qos import input_qos, output_qos


class FaceCropNode(Node):
    def __init__(self, **kwargs):
        super().__init__('face_crop', **kwargs)
        self.params = declare_and_read(self, FaceCropParams)
        # Subscribe first, then spend seconds importing torch and loading MTCNN: DDS discovery
        # runs meanwhile and frames wait in the subscription's queue, so a (re)started node
        # has its first segment at once instead of after discovery. Callbacks only run once
        # the executor spins, after this constructor.
        self._pub = self.create_publisher(Image, 'face_crop', output_qos())
        qos = input_qos(self.params.qos_reliability, self.params.qos_depth)
        if self.params.compressed_input:
            self._convert = partial(compressed_to_rgb, max_pixels=self.params.max_image_pixels)
            self._sub = self.create_subscription(CompressedImage, 'image/compressed',
                                                 self.compressed_callback, qos)
        else:
            self._convert = image_to_rgb
            self._sub = self.create_subscription(Image, 'image', self.image_callback, qos)
        path, _, segment_s = load_for_node(self.params)
        # facenet-pytorch's MTCNN for a checkpoint, the export's MTCNN nets on onnxruntime for
        # an ONNX export (equal boxes); no torch import in the latter.
        cropper = face_cropper(path, self.params.min_face_size, self.params.torch_threads)
        # The first MTCNN call is slower (allocations, lazy imports): pay for it now.
        cropper([np.zeros((120, 160, 3), dtype=np.uint8)])
        self.faces = FaceSegmenter(cropper, segment_s, self.params.stream_settings())
        self.reporter = Reporter(self, self.params.diagnostics_period_s,
                                 lambda: dataclasses.asdict(self.faces.counts))
        self.get_logger().info(
            f'T={segment_s:.3f} s, reference {self.params.reference}, '
            f'subscribing {self._sub.topic_name} ({self.params.qos_reliability})')

    def image_callback(self, msg: Image) -> None:
        self._on_frame(msg, check_image)

    def compressed_callback(self, msg: CompressedImage) -> None:
        self._on_frame(msg, check_compressed)

    def _on_frame(self, msg, check) -> None:
        # Only one frame per segment is ever used, so the message itself waits in the selector
        # and only the chosen ones are converted (a full JPEG decode for compressed input).
        # The copy-free check here still reports malformed input on arrival.
        try:
            check(msg)
        except ConversionError as exc:
            self.faces.reject()
            self.reporter.error(f'frame dropped: {exc}')
            return
        counts = self.faces.counts
        resets, jumps = counts.resets, counts.jumps
        results = self.faces.push(time_to_float(msg.header.stamp), msg, self._convert)
        if counts.resets != resets:
            self.reporter.warn('image stamps went backwards (a bag looping?): segments reset')
        if counts.jumps != jumps:
            self.reporter.note(f'image stamps jumped forward by {self.params.stamp_jump_s} s '
                               'or more (clock set, replay seek?)')
        for r in results:
            if r.error:
                self.reporter.error(f'selected frame dropped, no crop for its segment: '
                                    f'{r.error}')
            if r.crop is None:
                self._pub.publish(no_face_image(r.payload.header))
            else:                                                  # uint8 (98, 80)
                self._pub.publish(array_to_image(r.crop, r.payload.header))
                self.reporter.clear()                              # recovered


def main(args=None) -> int:
    return run_node(FaceCropNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
