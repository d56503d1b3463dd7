"""The three nodes' processing chain in one object, without ROS or DDS.

`OfflinePipeline` pushes camera frames and audio chunks, in stamp order, through the processors
the nodes wrap (`lightmer.stream.fuser`): FaceSegmenter (frame choice + MTCNN) and AudioSegmenter
feed SegmentFuser, exactly as face_crop, audio_feature and fusion do over DDS, on the model's
own backend (a checkpoint on torch, an ONNX export on onnxruntime: `lightmer.core.backend`). One
thread, no queues, so the result is deterministic. eval-bag offline runs it; anything else
that wants "what the nodes would say about these frames and this audio" can too.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from lightmer.core.backend import face_cropper, load_model
from lightmer.core.features import FaceCropper
from lightmer.stream.audio import AudioSegmenter
from lightmer.stream.faces import FaceSegmenter
from lightmer.stream.follow import FollowSettings
from lightmer.stream.fuser import SegmentFuser, WindowResult
from lightmer.stream.people import MultiFaceSegmenter, PeopleFuser, PersonWindow, with_mouths
from lightmer.stream.settings import StreamSettings
from lightmer.stream.speaker import MouthHistory
from lightmer.stream.tracking import TrackerSettings


class OfflinePipeline:
    """face_crop + audio_feature + fusion over numpy.

    Args:
        model_path: a checkpoint (.pt) or its ONNX export (.onnx), as the nodes' model_path.
        settings: the nodes' processing settings (the ROS parameters' defaults if omitted).
        threads: intra-op threads of the model's runtime.
        cropper: a FaceCropper to share (one is built for the model otherwise).
        frame_id: frame_id of the windows (the camera's).
    Attributes: `meta` (the model's CheckpointMeta) and the processors `faces`, `audio`,
    `fuser`, whose `counts` are what the nodes publish on /diagnostics.
    """

    def __init__(self, model_path, settings: StreamSettings | None = None, threads: int = 1,
                 cropper: FaceCropper | None = None, frame_id: str = ''):
        settings = settings or StreamSettings()
        model = load_model(model_path, threads)          # the one read of the model file
        self.meta = meta = model.meta
        self.frame_id = frame_id
        cropper = cropper or face_cropper(model_path, settings.min_face_size, threads, meta)
        self.faces = FaceSegmenter(cropper, meta.segment_s, settings)
        self.audio = AudioSegmenter(meta.features, meta.segment_s, settings)
        self.fuser = SegmentFuser(model.segment_logits, model.fuse, meta.n_segments,
                                  meta.segment_s, settings, meta.features)

    def push_image(self, t: float, frame: np.ndarray) -> list[WindowResult]:
        """A camera frame (uint8 (H, W, 3) RGB) stamped `t` seconds -> windows it completed."""
        out = []
        for r in self.faces.push(t, frame):
            if r.crop is None:             # the face node's no-face word settles the segment
                out.extend(self.fuser.push_no_face(r.t_frame))
            else:
                out.extend(self.fuser.push_face(r.t_frame, r.crop, self.frame_id))
        return out

    def counts(self) -> dict[str, dict[str, int]]:
        """What each node would publish on /diagnostics so far: {'face_crop', 'audio_feature',
        'fusion'} -> their counts as dicts."""
        return {'face_crop': dataclasses.asdict(self.faces.counts),
                'audio_feature': dataclasses.asdict(self.audio.counts),
                'fusion': dataclasses.asdict(self.fuser.counts)}

    def push_audio(self, t: float, samples: np.ndarray, sr: int) -> list[WindowResult]:
        """An audio chunk (float (n,) mono, first sample at `t` s, `sr` Hz) -> windows."""
        out = []
        for _k, t_ref, mel in self.audio.push(t, samples, sr):
            out.extend(self.fuser.push_mel(t_ref, mel))
        return out


class OfflinePeoplePipeline:
    """The nodes with several people (max_faces > 1, face_source mtcnn) over numpy: every face
    tracked (people.MultiFaceSegmenter), one window per face id (people.PeopleFuser).

    Attributes: `meta`; the processors `faces`, `audio`, `people`; `centres_x`: per id the x
    centres (frame pixels) of its faces, one per segment, to tell who an id is.
    """

    def __init__(self, model_path, settings: StreamSettings | None = None, threads: int = 1,
                 max_faces: int = 4, audio_to: str = 'speaker', forget_after_s: float = 3.0,
                 tracker: TrackerSettings | None = None, frame_id: str = ''):
        settings = settings or StreamSettings()
        model = load_model(model_path, threads)          # the one read of the model file
        self.meta = meta = model.meta
        self.frame_id = frame_id
        cropper = face_cropper(model_path, settings.min_face_size, threads, meta)
        self.faces = MultiFaceSegmenter(cropper, meta.segment_s, settings.reference, max_faces,
                                        tracker, jump_s=settings.stamp_jump_s,
                                        follow=FollowSettings.of(settings))
        self.audio = AudioSegmenter(meta.features, meta.segment_s, settings)
        self.people = PeopleFuser.for_model(model, meta.n_segments, meta.segment_s, settings,
                                            audio_to, forget_after_s)
        self.centres_x: dict[str, list[float]] = {}
        self.mouths = MouthHistory()          # every frame's mouth regions, as the face node

    def push_image(self, t: float, frame: np.ndarray) -> list[PersonWindow]:
        """A camera frame (uint8 (H, W, 3) RGB) stamped `t` -> people.PersonWindow completed."""
        out = []
        self.mouths.push(t, frame)
        for r in self.faces.push(t, frame):
            faces = with_mouths(r.faces, self.mouths, r.t_frame)
            for f in faces:
                self.centres_x.setdefault(f.face_id, []).append(float(f.box[0] + f.box[2]) / 2)
            windows, _ = self.people.push_faces(r.t_frame, list(faces), self.frame_id)
            out.extend(windows)
        return out

    def push_audio(self, t: float, samples: np.ndarray, sr: int) -> list[PersonWindow]:
        """An audio chunk (float (n,) mono, first sample at `t` s) -> people.PersonWindow."""
        out = []
        for _k, t_ref, mel in self.audio.push(t, samples, sr):
            out.extend(self.people.push_mel(t_ref, mel))
        return out
