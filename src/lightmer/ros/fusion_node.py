"""fusion_node: face crops and log-mels in, sliding-window emotion probabilities out.

Pairs `face_crop` and `log_mel` by segment id, runs VN, AN and FC once per segment, caches the
segment logits and, on each completed segment, publishes on `emotion` a vision_msgs/
Classification with every class (scores sum to 1) fused over the cached last N segments,
stamped with that segment's reference time and the camera's frame_id. `emotion/label_info`
(LabelInfo) is latched. With publish_expression and hri_msgs importable, also
hri_msgs/Expression on `expression`.

Several people (max_faces > 1 or face_source ros4hri; docs/PEOPLE.md): `face_crops`
(lightmer_msgs/FaceCrops) instead of `face_crop`, one cache and window per face id
(people.PeopleFuser), `emotion` for the primary person only, and per person the ROS4HRI topics
of people_outputs.PeopleOutputs.

/diagnostics says how many of the N segments the last window used (`window_segments`, e.g.
'3/5') and how many of those had their own face and their own audio (`window_with_face`,
`window_with_audio`, e.g. '2/3': the rest were filled by missing_policy 'nearest' or
'single'; vision_msgs/Classification has no field for these), counts segments without a face
(`no_face`: nobody in view) apart from dropped ones, and goes WARN, then ERROR, when one input
stops while the other flows (stall_warn_s, stall_error_s): a node or sensor is down.

A plain node, not a lifecycle node: nothing here provides a lifecycle manager (launch_ros's
event handlers, nav2's manager), so a lifecycle node would sit unconfigured under `ros2 launch`
and under `lightmer bringup` alike; loading the checkpoint in the constructor and failing
there with a message that says what to set behaves the same everywhere.
"""
from __future__ import annotations

import dataclasses
import time

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header
from vision_msgs.msg import Classification, LabelInfo

from lightmer.core.messages import ConversionError, image_to_array, is_no_face_image, time_to_float
from lightmer.stream.fuser import SegmentFuser, WindowResult, stall_status
from lightmer.stream.people import PeopleFuser, PersonWindow

from .common import ERROR, OK, WARN, Reporter, run_node
from .conversions import (
    classification_msg,
    expression_msg,
    faces_from_msg,
    float_to_time,
    label_info_msg,
)
from .params import FusionParams, declare_and_read, load_model_for_node
from .people_outputs import PeopleOutputs, VoiceOutputs
from .qos import latched_qos, output_qos


class FusionNode(Node):
    def __init__(self, **kwargs):
        super().__init__('fusion', **kwargs)
        self.params = declare_and_read(self, FusionParams)
        # Subscribe first, load second: inputs queue up while the model loads (queue_depth),
        # as in face_crop_node.
        self._pub = self.create_publisher(Classification, 'emotion', output_qos())
        qos = output_qos(self.params.queue_depth)
        if self.params.per_person:
            # lightmer_msgs is built with the package and absent where only one person is
            # followed (a pip install): needed only here.
            from lightmer_msgs.msg import FaceCrops

            self._face_sub = self.create_subscription(FaceCrops, 'face_crops',
                                                      self.faces_callback, qos)
        else:
            self._face_sub = self.create_subscription(Image, 'face_crop', self.face_callback,
                                                      qos)
        self._mel_sub = self.create_subscription(Image, 'log_mel', self.mel_callback, qos)
        # torch for a checkpoint, onnxruntime for an ONNX export: the same numpy callables,
        # and the metadata, from one read of the file.
        model, segment_s = load_model_for_node(self.params)
        meta = model.meta
        n = self.params.n_segments or meta.n_segments
        self.labels = tuple(meta.labels)
        self._face_shape = (meta.features.face_height, meta.features.face_width)
        self._mel_shape = (meta.features.n_mels, meta.features.mel_frames)
        # The first forward pass is slower (allocator, kernels): pay for it now.
        model.segment_logits(np.zeros(self._face_shape, np.uint8),
                             np.zeros(self._mel_shape, np.float32))
        settings = self.params.stream_settings()
        self.fuser = SegmentFuser(model.segment_logits, model.fuse, n, segment_s, settings,
                                  meta.features)
        self.people = self.people_outputs = self.voices = None
        if self.params.per_person:
            self.people = PeopleFuser.for_model(model, n, segment_s, settings,
                                                self.params.audio_to, self.params.forget_after_s)
            self.people_outputs = PeopleOutputs(self, self.params.humans_prefix, self.labels,
                                                tracked=self.params.face_source == 'mtcnn')
            if self.params.audio_to == 'speaker':
                self.voices = VoiceOutputs(self, self.params.humans_prefix)
        self._faces_frame_id = ''
        self._resets_seen = 0
        self._breaks_seen = 0
        self._window = dict.fromkeys(('window_segments', 'window_with_face',
                                      'window_with_audio'), '')
        # Steady-clock arrival of each input (node start for one not seen yet), for stalls.
        self._arrived = dict.fromkeys(('face_crop', 'log_mel'), time.monotonic())
        self._face_in_view = True
        self.reporter = Reporter(self, self.params.diagnostics_period_s,
                                 self.diagnostic_counts, self.health)
        self._info_pub = self.create_publisher(LabelInfo, 'emotion/label_info', latched_qos())
        self._info_pub.publish(label_info_msg(self.labels,
                                              Header(stamp=self.get_clock().now().to_msg())))
        self._expression_pub = self._expression_publisher()
        self.get_logger().info(f'{meta.preset}: {len(self.labels)} classes, N={n}, '
                               f'T={segment_s:.3f} s, policy {self.params.missing_policy}')

    def _expression_publisher(self):
        if not self.params.publish_expression:
            return None
        try:
            from hri_msgs.msg import Expression  # optional: not every robot has ROS4HRI
        except ImportError:
            self.get_logger().warning('publish_expression is set but hri_msgs is not '
                                      'installed: publishing emotion only')
            return None
        return self.create_publisher(Expression, 'expression', output_qos())

    def diagnostic_counts(self) -> dict:
        if self.people is not None:
            counts = self.people.fusion_counts()
            counts['rejected'] += self.fuser.counts.rejected
            return {**counts, **dataclasses.asdict(self.people.counts), **self._window}
        return {**dataclasses.asdict(self.fuser.counts), **self._window}

    def health(self) -> tuple[bytes, str]:
        """(level, message) of the inputs: a stall (one silent while the other flows) is WARN
        or ERROR; otherwise OK, saying 'no face in view' when the face node reports none."""
        now = time.monotonic()
        level, message = stall_status({k: now - t for k, t in self._arrived.items()},
                                      self.params.stall_warn_s, self.params.stall_error_s)
        if level == 'ok' and not message and not self._face_in_view:
            message = 'no face in view'
        return {'ok': OK, 'warn': WARN, 'error': ERROR}[level], message

    def face_callback(self, msg: Image) -> None:
        self._arrived['face_crop'] = time.monotonic()
        t = time_to_float(msg.header.stamp)
        if is_no_face_image(msg):
            self._face_in_view = False
            self._publish(self.fuser.push_no_face(t))
            return
        crop = self._read(msg, 'mono8', self._face_shape)
        if crop is not None:
            self._face_in_view = True
            self._publish(self.fuser.push_face(t, crop, msg.header.frame_id))

    def faces_callback(self, msg) -> None:
        """One segment's tracked faces (lightmer_msgs/FaceCrops; none: nobody in view)."""
        self._arrived['face_crop'] = time.monotonic()
        faces, errors = faces_from_msg(msg, self._face_shape)
        unique: dict[str, object] = {}
        for face in faces:                 # the same id twice in one segment: keep the first
            if face.face_id in unique:
                errors.append(f'face {face.face_id!r}: listed twice in one segment')
            else:
                unique[face.face_id] = face
        faces = list(unique.values())
        if len(faces) > self.params.max_faces:       # a face publisher not honouring the cap
            errors.append(f'{len(faces)} faces in one segment, more than max_faces '
                          f'{self.params.max_faces}: the largest kept')
            faces = sorted(faces, key=lambda f: -f.area)[:self.params.max_faces]
        for error in errors:
            self.fuser.reject()
            self.reporter.error(f'face dropped: {error}')
        self._face_in_view = bool(faces)
        restarts = self.people.counts.restarts
        windows, gone = self.people.push_faces(time_to_float(msg.header.stamp), faces,
                                               msg.header.frame_id)
        if self.people.counts.restarts != restarts:
            self.reporter.warn('face segments went backwards (a bag looping?): every '
                               'person forgotten')
        self.people_outputs.forget(gone)
        self.people_outputs.tracked(msg.header, [f.face_id for f in faces])
        self._faces_frame_id = msg.header.frame_id
        if self.voices is not None:
            self.voices.forget(gone)
        self._publish_people(windows)

    def mel_callback(self, msg: Image) -> None:
        self._arrived['log_mel'] = time.monotonic()
        mel = self._read(msg, '32FC1', self._mel_shape)
        if mel is None:
            return
        if not np.isfinite(mel).all():      # the processors count it (`invalid`); say why
            self.reporter.error('log-mel dropped: it holds NaN or inf')
        if self.people is not None:
            self._publish_people(self.people.push_mel(time_to_float(msg.header.stamp), mel))
        else:
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
            self.fuser.reject()
            self.reporter.error(f'input dropped: {exc}')
            return None
        return array

    def _publish(self, results: list[WindowResult]) -> None:
        counts = self.fuser.counts
        if counts.resets != self._resets_seen:
            self._resets_seen = counts.resets
            self.reporter.warn('segment stamps went backwards (a bag looping?): caches reset')
        if counts.breaks != self._breaks_seen:
            self._breaks_seen = counts.breaks
            self.reporter.note(f'an input resumed after a gap of {self.params.stall_warn_s} s '
                               'or more in its stamps: windows start again after the gap')
        for r in results:
            self._describe(r)
            header = Header(stamp=float_to_time(r.t_ref), frame_id=r.frame_id)
            self._pub.publish(classification_msg(r.probs, self.labels, header))
            self.reporter.clear()                                      # recovered
            if self._expression_pub is not None:
                self._expression_pub.publish(expression_msg(r.probs, self.labels, header))

    def _describe(self, r: WindowResult) -> None:
        """The last window's segments on /diagnostics: how many of N, and of those how many
        had their own face and their own audio."""
        used = len(r.segments)
        self._window = {'window_segments': f'{used}/{self.fuser.n_segments}',
                        'window_with_face': f'{r.with_face}/{used}',
                        'window_with_audio': f'{r.with_audio}/{used}'}

    def _publish_people(self, windows: list[PersonWindow]) -> None:
        """Each person's window on their topics; the primary person's also on `emotion`; the
        speaker estimates made meanwhile on the voice topics."""
        for _k, t_ref, estimate, ids in self.people.take_estimates():
            if self.voices is not None:
                header = Header(stamp=float_to_time(t_ref), frame_id=self._faces_frame_id)
                self.voices.publish(estimate, ids, header)
        primary = self.people.primary(self.params.primary)
        for w in windows:
            r = w.window
            header = Header(stamp=float_to_time(r.t_ref), frame_id=r.frame_id)
            self.people_outputs.publish(w.face_id, r.probs, header)
            if w.face_id == primary:
                self._publish([r])


def main(args=None) -> int:
    return run_node(FusionNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
