"""The three nodes' processing chain in one object, without ROS or DDS.

`OfflinePipeline` pushes camera frames and audio chunks, in stamp order, through the processors
the nodes wrap (`lightmer.streaming`): FaceSegmenter (frame choice + MTCNN) and AudioSegmenter
feed SegmentFuser, exactly as face_crop, audio_feature and fusion do over DDS. One thread, no
queues, so the result is deterministic. eval-bag offline runs it; anything else that wants
"what the nodes would say about these frames and this audio" can too.
"""
from __future__ import annotations

import numpy as np

from lightmer.features import FaceCropper
from lightmer.streaming import (
    AudioSegmenter,
    FaceSegmenter,
    SegmentFuser,
    StreamSettings,
    WindowResult,
    model_functions,
)


class OfflinePipeline:
    """face_crop + audio_feature + fusion over numpy.

    Args:
        model: LightmerNet (eval mode is set); meta: its CheckpointMeta (features, N, T).
        settings: the nodes' processing settings (the ROS parameters' defaults if omitted).
        cropper: a FaceCropper to share (one is built with settings.min_face_size otherwise).
        frame_id: frame_id of the windows (the camera's).
    Attributes `faces`, `audio`, `fuser` are the processors; their `counts` are what the nodes
    publish on /diagnostics.
    """

    def __init__(self, model, meta, settings: StreamSettings | None = None,
                 cropper: FaceCropper | None = None, frame_id: str = ''):
        settings = settings or StreamSettings()
        segment_s = meta.segment_s
        self.frame_id = frame_id
        cropper = cropper or FaceCropper(meta.features, min_face_size=settings.min_face_size)
        self.faces = FaceSegmenter(cropper, segment_s, settings)
        self.audio = AudioSegmenter(meta.features, segment_s, settings)
        segment_logits, fuse = model_functions(model)
        self.fuser = SegmentFuser(segment_logits, fuse, meta.n_segments, segment_s, settings)

    def push_image(self, t: float, frame: np.ndarray) -> list[WindowResult]:
        """A camera frame (uint8 (H, W, 3) RGB) stamped `t` seconds -> windows it completed."""
        out = []
        for r in self.faces.push(t, frame):
            if r.crop is not None:
                out.extend(self.fuser.push_face(r.t_frame, r.crop, self.frame_id))
        return out

    def push_audio(self, t: float, samples: np.ndarray, sr: int) -> list[WindowResult]:
        """An audio chunk (float (n,) mono, first sample at `t` s, `sr` Hz) -> windows."""
        out = []
        for _k, t_ref, mel in self.audio.push(t, samples, sr):
            out.extend(self.fuser.push_mel(t_ref, mel))
        return out
