"""face_crop_node: camera frames in, one 98x80 grayscale face crop per segment out.

Subscribes `image` (sensor_msgs/Image; or `image/compressed` with compressed_input), keeps per
segment the frame nearest the segment's reference time and runs MTCNN on that frame only
(faces.FaceSegmenter), and publishes the crop as mono8 on `face_crop` with the source frame's
header. A segment without a usable face (none found, or its frame would not decode) publishes
the empty no-face image instead (conversions.no_face_image), so every segment is announced.

Several people (max_faces > 1 or face_source ros4hri; docs/PEOPLE.md): one
lightmer_msgs/FaceCrops per segment on `face_crops` instead, every tracked face with its id
(people.MultiFaceSegmenter on the camera image; with ros4hri no detector runs:
people.Ros4hriFaceSegmenter on hri_face_detect's <prefix>/tracked and <prefix>/<id>/cropped).
"""
from __future__ import annotations

import dataclasses
import secrets
import string
from collections.abc import Callable
from functools import partial

import numpy as np
from rclpy.exceptions import InvalidTopicNameException
from rclpy.node import Node
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from lightmer.core.backend import face_cropper
from lightmer.core.messages import (
    ConversionError,
    check_compressed,
    check_face_id,
    check_image,
    compressed_to_rgb,
    image_green,
    image_to_rgb,
    time_to_float,
)
from lightmer.stream.faces import FaceSegmenter
from lightmer.stream.follow import FollowSettings
from lightmer.stream.people import MultiFaceSegmenter, Ros4hriFaceSegmenter, with_mouths
from lightmer.stream.speaker import MouthHistory

from .common import Reporter, run_node
from .conversions import array_to_image, face_crops_msg, float_to_time, no_face_image
from .params import FaceCropParams, declare_and_read, load_for_node
from .qos import input_qos, output_qos

# face_source ros4hri: most ids of one tracked list followed (subscribed to) at once, unless
# max_faces is larger; the others are counted (`ids_ignored`) and ignored.
MAX_TRACKED_IDS = 32


class FaceCropNode(Node):
    def __init__(self, **kwargs):
        super().__init__('face_crop', **kwargs)
        self.params = declare_and_read(self, FaceCropParams)
        # Subscribe first, then spend seconds importing torch and loading MTCNN: DDS discovery
        # runs meanwhile and frames wait in the subscription's queue, so a (re)started node
        # has its first segment at once instead of after discovery. Callbacks only run once
        # the executor spins, after this constructor.
        people = self.params.per_person
        self._pub = self.create_publisher(self._crops_type() if people else Image,
                                          'face_crops' if people else 'face_crop', output_qos())
        qos = input_qos(self.params.qos_reliability, self.params.qos_depth)
        self.mouths = None
        if self.params.face_source == 'ros4hri':
            self._start_ros4hri(qos)
            return
        if self.params.compressed_input:
            self._convert = partial(compressed_to_rgb, max_pixels=self.params.max_image_pixels)
            self._sub = self.create_subscription(CompressedImage, 'image/compressed',
                                                 self.compressed_callback, qos)
        else:
            self._convert = image_to_rgb
            self._sub = self.create_subscription(Image, 'image', self.image_callback, qos)
        path, meta, segment_s = load_for_node(self.params)
        # facenet-pytorch's MTCNN for a checkpoint, the export's MTCNN nets on onnxruntime for
        # an ONNX export (equal boxes); no torch import in the latter. The metadata just read
        # gives the feature settings: the file is read once.
        cropper = face_cropper(path, self.params.min_face_size, self.params.torch_threads, meta)
        # The first MTCNN call is slower (allocations, lazy imports): pay for it now.
        cropper([np.zeros((120, 160, 3), dtype=np.uint8)])
        # With several people every frame's mouth regions are kept for the speaker estimate
        # (stream.speaker; the fusion node compares them with the voice).
        self.mouths = MouthHistory() if people else None
        if people:
            # A random prefix per run: ids are not reused across restarts either.
            prefix = ''.join(secrets.choice(string.ascii_lowercase) for _ in range(3))
            self.faces = MultiFaceSegmenter(cropper, segment_s, self.params.reference,
                                            self.params.max_faces,
                                            self.params.tracker_settings(), prefix,
                                            self.params.stamp_jump_s,
                                            FollowSettings.of(self.params.stream_settings()))
        else:
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

    @staticmethod
    def _crops_type():
        # lightmer_msgs is built with the package and absent where only one person is
        # followed (a pip install): needed only with several people.
        from lightmer_msgs.msg import FaceCrops

        return FaceCrops

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
        if self.mouths is not None:
            self._keep_mouths(msg)
        results = self._offer('image', partial(self.faces.push, time_to_float(msg.header.stamp),
                                               msg, self._convert))
        if self.params.per_person:
            self._publish_faces(results)
            return
        for r in results:
            if r.error:
                self.reporter.error(f'selected frame dropped, no crop for its segment: '
                                    f'{r.error}')
            if r.crop is None:
                self._pub.publish(no_face_image(r.payload.header))
            else:                                                  # uint8 (98, 80)
                self._pub.publish(array_to_image(r.crop, r.payload.header))
                self.reporter.clear()                              # recovered

    def _keep_mouths(self, msg) -> None:
        """Every frame into the mouth history: a raw image's green plane read from its bytes,
        a compressed one decoded whole (a JPEG decode per frame). A frame that will not decode
        is left out; the segmenter reports it if it is a segment's frame."""
        t = time_to_float(msg.header.stamp)
        try:
            if self.params.compressed_input:
                self.mouths.push(t, self._convert(msg))
            else:
                self.mouths.push_plane(t, image_green(msg, self.mouths.step))
        except ConversionError:
            pass

    def _offer(self, what: str, push: Callable[[], list]) -> list:
        """`push()` offers one input to the segmenter; its results, with a log line when the
        input's stamp went backwards or jumped forward."""
        counts = self.faces.counts
        resets, jumps = counts.resets, counts.jumps
        results = push()
        if counts.resets != resets:
            self.reporter.warn(f'{what} stamps went backwards (a bag looping?): segments reset')
        if counts.jumps != jumps:
            self.reporter.note(f'{what} stamps jumped forward by {self.params.stamp_jump_s} s '
                               'or more (clock set, replay seek?)')
        return results

    def _publish_faces(self, results) -> None:
        """One FaceCrops per settled segment (people.FacesResult), empty when nobody is in
        view or its frame would not decode."""
        for r in results:
            if r.error:
                self.reporter.error(f'selected frame dropped, no faces for its segment: '
                                    f'{r.error}')
            header = self._segment_header(r)
            faces = r.faces
            if self.mouths is not None:                            # mtcnn: frames are seen
                faces = with_mouths(faces, self.mouths, r.t_frame)
            self._pub.publish(face_crops_msg(header, faces, r.detected))
            if r.faces:
                self.reporter.clear()                              # recovered

    def _segment_header(self, r):
        if self.params.face_source == 'ros4hri':                  # payload: the id list
            return Header(stamp=float_to_time(r.t_frame), frame_id=self._ros4hri_frame_id)
        return r.payload.header

    # --- face_source ros4hri -------------------------------------------------------------
    def _start_ros4hri(self, qos) -> None:
        """Subscribe hri_face_detect's id lists now, and each face's image once listed."""
        from hri_msgs.msg import IdsList  # optional: only robots with ROS4HRI have it

        _, meta, segment_s = load_for_node(self.params)
        self._qos = qos
        self._face_subs: dict[str, object] = {}
        # ids followed at once: hri_face_detect tracks a handful of faces; a list of thousands
        # would otherwise open as many subscriptions (docs/PEOPLE.md)
        self._ids_cap = max(self.params.max_faces, MAX_TRACKED_IDS)
        self._ids_ignored = 0
        self._ros4hri_frame_id = ''
        self.faces = Ros4hriFaceSegmenter(meta.features, segment_s, self.params.reference,
                                          self.params.max_faces, image_to_rgb,
                                          self.params.stamp_jump_s)
        self.reporter = Reporter(self, self.params.diagnostics_period_s,
                                 lambda: {**dataclasses.asdict(self.faces.counts),
                                          'subscribed': len(self._face_subs),
                                          'ids_ignored': self._ids_ignored})
        self._sub = self.create_subscription(IdsList, f'{self.params.humans_prefix}/tracked',
                                             self.tracked_callback, qos)
        self.get_logger().info(f'T={segment_s:.3f} s, faces from {self._sub.topic_name} and '
                               f'<id>/{self.params.ros4hri_image} (face_source ros4hri)')

    def tracked_callback(self, msg) -> None:
        listed = self._usable_ids(msg.ids)
        for face_id in listed:
            if face_id not in self._face_subs:
                self._subscribe_face(face_id)
        listed = [i for i in listed if i in self._face_subs]
        self._ros4hri_frame_id = msg.header.frame_id or self._ros4hri_frame_id
        self._publish_faces(self._offer('tracked-face list', partial(
            self.faces.push_tracked, time_to_float(msg.header.stamp), listed)))
        # Faces no longer listed: their subscriptions go once their crops are forgotten.
        for face_id in set(self._face_subs) - set(listed) - self.faces.buffered_ids:
            self.destroy_subscription(self._face_subs.pop(face_id))

    def _usable_ids(self, ids) -> list[str]:
        """The listed ids this node follows: ids that cannot name a topic are refused
        (counted in `rejected`), repeats dropped, and at most `_ids_cap` kept, those already
        followed first; the rest are counted in `ids_ignored`. One list's work stays bounded
        however many ids it holds."""
        valid: dict[str, None] = {}
        for face_id in ids:
            try:
                valid[check_face_id(face_id)] = None
            except ConversionError as exc:
                self.faces.counts.rejected += 1
                self.reporter.error(f'tracked face dropped: {exc}')
        ordered = sorted(valid, key=lambda i: i not in self._face_subs)   # followed ones first
        if len(ordered) > self._ids_cap:
            self._ids_ignored += len(ordered) - self._ids_cap
            self.reporter.warn(f'{len(ordered)} ids in one tracked list: following '
                               f'{self._ids_cap}, ignoring the rest')
        return ordered[:self._ids_cap]

    def _subscribe_face(self, face_id: str) -> None:
        topic = f'{self.params.humans_prefix}/{face_id}/{self.params.ros4hri_image}'
        try:
            self._face_subs[face_id] = self.create_subscription(
                Image, topic, partial(self.face_image_callback, face_id), self._qos)
        except InvalidTopicNameException:     # a long humans_prefix leaves no room for the id
            self.faces.counts.rejected += 1
            self.reporter.error(f'tracked face {face_id!r} dropped: {topic!r} is no valid '
                                'topic name (too long?)')

    def face_image_callback(self, face_id: str, msg: Image) -> None:
        try:
            check_image(msg)          # odd encodings and sizes: counted and logged here
        except ConversionError as exc:
            self.faces.counts.rejected += 1
            self.reporter.error(f'face {face_id} image dropped: {exc}')
            return
        self.faces.push_crop(face_id, time_to_float(msg.header.stamp), msg)


def main(args=None) -> int:
    return run_node(FaceCropNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
