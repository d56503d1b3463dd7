"""face_crop_node: camera frames in, one 98x80 grayscale face crop per segment out.

Subscribes `image` (sensor_msgs/Image; or `image/compressed` with compressed_input), keeps per
segment the frame nearest the segment's reference time (streaming.FrameSelector), runs MTCNN on
that frame only, and publishes the crop as mono8 on `face_crop` with the source frame's header.
A segment without a usable face (none found, or its frame would not decode) publishes the
empty no-face image instead (conversions.no_face_image), so every segment is announced.
"""
from __future__ import annotations

from functools import partial

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
        self._cropper = face_cropper(path, self.params.min_face_size, self.params.torch_threads)
        self._selector = FrameSelector(segment_s, self.params.reference,
                                       jump_s=self.params.stamp_jump_s)
        # The first MTCNN call is slower (allocations, lazy imports): pay for it now.
        self._cropper([np.zeros((120, 160, 3), dtype=np.uint8)])
        # undecodable: selected frames that failed to convert (also counted in rejected)
        self.counts = {'frames': 0, 'segments': 0, 'published': 0, 'no_face': 0,
                       'rejected': 0, 'undecodable': 0, 'resets': 0, 'jumps': 0}
        self.reporter = Reporter(self, self.params.diagnostics_period_s, lambda: self.counts)
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
        self.counts['frames'] += 1
        try:
            check(msg)
        except ConversionError as exc:
            self.counts['rejected'] += 1
            self.reporter.error(f'frame dropped: {exc}')
            return
        resets, jumps = self._selector.resets, self._selector.jumps
        chosen = self._selector.push(time_to_float(msg.header.stamp), msg)
        if self._selector.resets != resets:
            self.counts['resets'] += 1
            self.reporter.warn('image stamps went backwards (a bag looping?): segments reset')
        if self._selector.jumps != jumps:
            self.counts['jumps'] += 1
            self.reporter.note(f'image stamps jumped forward by {self.params.stamp_jump_s} s '
                               'or more (clock set, replay seek?)')
        for _, _, selected in chosen:
            self.counts['segments'] += 1
            crop = self._crop(selected)                            # uint8 (98, 80) or None
            if crop is None:
                self._pub.publish(no_face_image(selected.header))
                continue
            self._pub.publish(array_to_image(crop, selected.header))
            self.counts['published'] += 1
            self.reporter.clear()                                  # recovered

    def _crop(self, selected) -> np.ndarray | None:
        try:
            frame = self._convert(selected)                        # uint8 (H, W, 3) RGB
        except ConversionError as exc:
            self.counts['rejected'] += 1
            self.counts['undecodable'] += 1
            self.reporter.error(f'selected frame dropped, no crop for its segment: {exc}')
            return None
        crop = self._cropper([frame])[0]
        if crop is None:
            self.counts['no_face'] += 1
        return crop


def main(args=None) -> int:
    return run_node(FaceCropNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
