"""audio_feature_node: stamped audio in, one 128x43 log-mel per segment out.

Default input (audio_msg 'ros-drivers', REP-155's audio_common): `audio`
(audio_common_msgs/AudioDataStamped) described by `audio_info` (AudioInfo, transient local).
PCM S16LE, S32LE, F32LE or U8, any channel count (averaged) and any rate (resampled per window).
With audio_msg 'mgonzs13' it reads mgonzs13/audio_common's AudioStamped, which carries its own
format; that package is not installed where lightmer is tested, so the node then refuses to start
unless `audio_common_msgs.msg.AudioStamped` is importable.
For each segment, once audio reaches its reference time + d/2, publishes the log-mel as a 32FC1
Image on `log_mel` stamped with the reference time. Windows the audio does not cover are counted
(`audio_gap`, in segments; a stamp jump of stamp_jump_s or more counts once in `jumps`) and
skipped; windows whose power overflows are refused (`invalid`); windows of digital silence are
published and counted (`silent`).
"""
from __future__ import annotations

import dataclasses
import time
from collections import deque

from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from lightmer.core.features import to_mono
from lightmer.core.messages import (
    AudioFormat,
    ConversionError,
    audio_format_from_info,
    check_sample_rate,
    mgonzs13_to_samples,
    pcm_to_samples,
    time_to_float,
)
from lightmer.stream.audio import AudioSegmenter

from .common import Reporter, run_node
from .conversions import array_to_image, float_to_time
from .params import AudioFeatureParams, declare_and_read, load_for_node
from .qos import input_qos, latched_qos, output_qos

# How long chunks may come before the first AudioInfo without a word in the log, seconds, and
# how many of them are kept for when it comes (2 s of chunks at up to 100 chunks a second).
AUDIO_INFO_WAIT_S = 2.0
EARLY_CHUNKS = 200


class AudioFeatureNode(Node):
    def __init__(self, **kwargs):
        super().__init__('audio_feature', **kwargs)
        self.params = declare_and_read(self, AudioFeatureParams)
        # Subscribe first, load second: chunks queue up while the model's metadata and the mel
        # filters load (the subscription's depth), as in face_crop_node.
        self._pub = self.create_publisher(Image, 'log_mel', output_qos())
        self._subscribe()
        # Only the metadata: numpy does the rest, so with an ONNX export nothing here
        # imports torch or onnxruntime.
        _, meta, segment_s = load_for_node(self.params)
        self._segmenter = AudioSegmenter(meta.features, segment_s,
                                         self.params.stream_settings())
        self._segmenter.warm_up()
        self._format: AudioFormat | None = None
        # Chunks that came before any AudioInfo: the latched AudioInfo often arrives a few ms
        # after the first chunk (at every start and respawn). Kept, and pushed once the format
        # is known; a warning only when none came within AUDIO_INFO_WAIT_S.
        self._info_seen = False
        self._waiting_since: float | None = None
        self._early: deque = deque(maxlen=EARLY_CHUNKS)
        self.reporter = Reporter(self, self.params.diagnostics_period_s, self.diagnostic_counts)

    def _subscribe(self) -> None:
        qos = input_qos(self.params.qos_reliability, self.params.qos_depth)
        # Two incompatible packages are both named audio_common_msgs: import the variant
        # chosen, here, where the other one's absence is expected.
        if self.params.audio_msg == 'ros-drivers':
            from audio_common_msgs.msg import AudioDataStamped, AudioInfo

            self._sub = self.create_subscription(AudioDataStamped, 'audio',
                                                 self.audio_callback, qos)
            self._info_sub = self.create_subscription(AudioInfo, 'audio_info',
                                                      self.info_callback, latched_qos())
        else:
            try:   # mgonzs13's package only: the ros-drivers one has no AudioStamped
                from audio_common_msgs.msg import AudioStamped
            except ImportError:
                raise ValueError(
                    "audio_msg is 'mgonzs13' but audio_common_msgs here is the ros-drivers "
                    'package (no AudioStamped); build mgonzs13/audio_common, or set '
                    "audio_msg:=ros-drivers") from None
            self._sub = self.create_subscription(AudioStamped, 'audio',
                                                 self.mgonzs13_callback, qos)

    def diagnostic_counts(self) -> dict:
        fmt = self._format
        return {**dataclasses.asdict(self._segmenter.counts),
                'format': 'none' if fmt is None else
                f'{fmt.channels}ch {fmt.sample_rate} Hz {fmt.dtype}'}

    def info_callback(self, msg) -> None:
        try:
            fmt = audio_format_from_info(msg.channels, msg.sample_rate, msg.sample_format,
                                         msg.coding_format)
        except ConversionError as exc:
            self._format, self._info_seen = None, True
            self.reporter.error(f'audio refused: {exc}')
            return
        if fmt != self._format:
            self.get_logger().info(f'audio format: {fmt.channels} ch, {fmt.sample_rate} Hz, '
                                   f'{msg.sample_format}')
            self._segmenter.reset()
            self._format = fmt
            self.reporter.clear()
        self._info_seen = True
        early, self._early = list(self._early), deque(maxlen=EARLY_CHUNKS)
        for chunk in early:                    # what came before the format, in order
            self.audio_callback(chunk)

    def audio_callback(self, msg) -> None:
        if self._format is None:
            self._before_format(msg)
            return
        try:
            samples = pcm_to_samples(msg.audio.data, self._format)     # (n, channels)
        except ConversionError as exc:
            self._drop(str(exc))
            return
        self._push(msg.header, samples, self._format.sample_rate)

    def _before_format(self, msg) -> None:
        """A chunk without a usable format: kept quietly while the first AudioInfo may still
        come, then counted as rejected with a warning (an error once an AudioInfo was
        refused: that one said why)."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        if not self._info_seen and now - self._waiting_since < AUDIO_INFO_WAIT_S:
            self._early.append(msg)
            return
        self._segmenter.reject()
        text = ('audio dropped: no usable AudioInfo on audio_info (is audio_capture running '
                'with format:=wave?)')
        if self._info_seen:
            self.reporter.error(text)
        else:
            self.reporter.warn(f'{text}; waited {AUDIO_INFO_WAIT_S:g} s')

    def mgonzs13_callback(self, msg) -> None:
        info = msg.audio.info
        try:
            samples = mgonzs13_to_samples(msg.audio.audio_data, info.format, info.channels)
            rate = check_sample_rate(info.rate)
        except ConversionError as exc:
            self._drop(str(exc))
            return
        self._push(msg.header, samples, rate)

    def _push(self, header: Header, samples, sample_rate: int) -> None:
        counts = self._segmenter.counts
        resets, jumps, invalid = counts.resets, counts.jumps, counts.invalid
        try:
            mels = self._segmenter.push(time_to_float(header.stamp), to_mono(samples),
                                        sample_rate)
        except ValueError as exc:
            self._drop(str(exc))
            return
        if counts.invalid != invalid:
            self.reporter.error('audio window refused: its power spectrum is not finite '
                                '(samples far beyond full scale?)')
        if counts.resets != resets:
            self.reporter.warn('audio stamps went backwards (a bag looping?): buffer reset')
        if counts.jumps != jumps:
            self.reporter.note(f'audio stamps jumped forward by {self.params.stamp_jump_s} s '
                               'or more (clock set, replay seek?): a new run, not a gap')
        for _, t_ref, mel in mels:                                    # mel float32 (128, 43)
            out = Header(stamp=float_to_time(t_ref), frame_id=header.frame_id)
            self._pub.publish(array_to_image(mel, out))
            self.reporter.clear()                                      # recovered

    def _drop(self, reason: str) -> None:
        self._segmenter.reject()
        self.reporter.error(f'audio chunk dropped: {reason}')


def main(args=None) -> int:
    return run_node(AudioFeatureNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
