"""numpy -> ROS messages: crops, log-mels, stamps, classification outputs, diagnostics and the
several-people messages, built as rclpy's types.

Reading messages (images, audio, stamps) is `core.messages`, which bag replay shares with the
nodes; this module adds what only a node does: building messages to publish, and the FaceCrops
message both ways (its crops are read with core.messages). Errors are
`core.messages.ConversionError`.
"""
from __future__ import annotations

import sys

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from sensor_msgs.msg import Image, RegionOfInterest
from std_msgs.msg import Header
from vision_msgs.msg import Classification, LabelInfo, ObjectHypothesis, VisionClass

from lightmer.core.messages import (
    ConversionError,
    check_face_id,
    expression_fields,
    image_to_array,
    valence_arousal,
)
from lightmer.stream.people import TrackedFace


# --- time ------------------------------------------------------------------------------------
def float_to_time(t: float) -> Time:
    """Seconds -> builtin_interfaces/Time, rounded to the nearest nanosecond."""
    total_ns = int(round(t * 1e9))
    sec, nanosec = divmod(total_ns, 1_000_000_000)
    return Time(sec=sec, nanosec=nanosec)


# --- images ----------------------------------------------------------------------------------
def no_face_image(header: Header) -> Image:
    """The face_crop node's word for "this segment's frame holds no usable face": an empty
    (0 x 0) mono8 image with the frame's header. One message per segment either way, so the
    fusion node settles the segment at once and can tell "no person" from "no face node"."""
    return Image(header=header, height=0, width=0, encoding='mono8', step=0)


def array_to_image(array: np.ndarray, header: Header) -> Image:
    """uint8 (H, W) -> mono8 Image; float32 (H, W) -> 32FC1 Image (native byte order)."""
    a = np.ascontiguousarray(array)
    if a.ndim != 2:
        raise ConversionError(f'expected a 2-D array, got shape {a.shape}')
    if a.dtype == np.uint8:
        encoding = 'mono8'
    elif a.dtype == np.float32:
        encoding = '32FC1'
    else:
        raise ConversionError(f'expected uint8 or float32, got {a.dtype}')
    msg = Image(header=header, height=a.shape[0], width=a.shape[1], encoding=encoding,
                is_bigendian=int(sys.byteorder == 'big'), step=a.shape[1] * a.itemsize)
    msg.data = a.tobytes()
    return msg


# --- outputs ---------------------------------------------------------------------------------
def classification_msg(probs: np.ndarray, labels: tuple[str, ...],
                       header: Header) -> Classification:
    """float (C,) probabilities -> Classification with one hypothesis per class, label order."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.shape[0] != len(labels):
        raise ConversionError(f'{p.shape[0]} probabilities for {len(labels)} labels')
    return Classification(header=header, results=[
        ObjectHypothesis(class_id=label, score=float(score))
        for label, score in zip(labels, p, strict=True)])


def label_info_msg(labels: tuple[str, ...], header: Header) -> LabelInfo:
    """The class map beside `emotion`: class_id i <-> labels[i]; threshold 0 (all published)."""
    return LabelInfo(header=header, threshold=0.0, class_map=[
        VisionClass(class_id=i, class_name=label) for i, label in enumerate(labels)])


def diagnostics_msg(stamp: Time, name: str, counts: dict[str, int | float | str],
                    message: str = '', level: bytes | None = None):
    """One node's per-segment counts as a diagnostic_msgs/DiagnosticArray: one status named
    `name` with `message` ('ok' when empty) at `level` (default: OK, or WARN with a
    message)."""
    if level is None:
        level = DiagnosticStatus.WARN if message else DiagnosticStatus.OK
    status = DiagnosticStatus(
        level=level, name=name, message=message or 'ok', hardware_id='lightmer',
        values=[KeyValue(key=k, value=str(v)) for k, v in counts.items()])
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])


# --- several people (lightmer_msgs/FaceCrops, ROS4HRI) -----------------------------------------
def face_crops_msg(header: Header, faces, detected: int):
    """A segment's tracked faces (people.TrackedFace, largest first) -> lightmer_msgs/FaceCrops
    with the segment frame's header; no faces: the segment had nobody in view."""
    # lightmer_msgs is built with the package and absent where only one person is followed
    # (a pip install): imported by the several-people path only, here and in the nodes.
    from lightmer_msgs.msg import FaceCrop, FaceCrops

    out = []
    for f in faces:
        x1, y1, x2, y2 = (float(v) for v in f.box)
        roi = RegionOfInterest(x_offset=max(0, int(round(x1))), y_offset=max(0, int(round(y1))),
                               width=max(0, int(round(x2 - x1))),
                               height=max(0, int(round(y2 - y1))))
        times, motion = f.mouth if f.mouth is not None else ((), ())
        out.append(FaceCrop(id=f.face_id, roi=roi, confidence=float(f.prob),
                            crop=array_to_image(f.crop, header),
                            mouth_motion=[float(v) for v in motion],
                            mouth_times=[float(v) for v in times]))
    return FaceCrops(header=header, faces=out, detected=max(int(detected), len(out)))


def faces_from_msg(msg, shape: tuple[int, int]) -> tuple[list[TrackedFace], list[str]]:
    """lightmer_msgs/FaceCrops -> ([people.TrackedFace], [why each refused face was refused]).
    A face is refused for a crop that is not mono8 of `shape`, an id that cannot name a
    topic or a confidence that is NaN or infinite; the others are kept. Mouth motion (empty:
    not measured) that is not finite or not as long as its times is dropped, the face kept
    without it, and said in the errors."""
    faces, errors = [], []
    for f in msg.faces:
        try:
            check_face_id(f.id)
            if not np.isfinite(f.confidence):
                raise ConversionError(f'confidence {f.confidence} is not a finite number')
            if f.crop.encoding != 'mono8':
                raise ConversionError(f'expected a mono8 crop, got {f.crop.encoding!r}')
            crop = image_to_array(f.crop)
            if crop.shape != shape:
                raise ConversionError(f'expected a {shape} crop, got {crop.shape}: was it made '
                                      'with the same checkpoint?')
        except ConversionError as exc:
            errors.append(f'face {f.id!r}: {exc}')
            continue
        box = np.array([f.roi.x_offset, f.roi.y_offset, f.roi.x_offset + f.roi.width,
                        f.roi.y_offset + f.roi.height], dtype=np.float64)
        mouth, error = _mouth_of(f)
        if error:
            errors.append(f'face {f.id!r}: {error}')
        faces.append(TrackedFace(f.id, crop, box, float(f.confidence), mouth))
    return faces, errors


# More mouth samples than a camera gives in a few seconds: not a face node's (a 1000 Hz camera
# over the compared span would give 750).
_MOUTH_SAMPLES_MAX = 1000


def _mouth_of(face) -> tuple[tuple[np.ndarray, np.ndarray] | None, str]:
    """A FaceCrop's (mouth_times, mouth_motion) as arrays, or None with why (nothing measured:
    None without a reason)."""
    motion = np.asarray(face.mouth_motion, dtype=np.float32)
    times = np.asarray(face.mouth_times, dtype=np.float64)
    if motion.size == 0 and times.size == 0:
        return None, ''
    if motion.size > _MOUTH_SAMPLES_MAX:
        return None, f'mouth motion ignored: {motion.size} samples, at most {_MOUTH_SAMPLES_MAX}'
    if motion.shape != times.shape:
        return None, (f'mouth motion ignored: {motion.size} values for {times.size} times')
    if not (np.isfinite(motion).all() and np.isfinite(times).all()):
        return None, 'mouth motion ignored: not finite'
    return (times, motion), ''


def expression_msg(probs: np.ndarray, labels: tuple[str, ...], header: Header):
    """hri_msgs/Expression of a window: the most probable class's REP-155 name and its
    probability as confidence; valence and arousal the probabilities' expected point on the
    circumplex (messages.valence_arousal)."""
    from hri_msgs.msg import Expression  # optional: not every robot has ROS4HRI

    expression, confidence = expression_fields(probs, labels)
    valence, arousal = valence_arousal(probs, labels)
    return Expression(header=header, expression=expression, confidence=confidence,
                      valence=valence, arousal=arousal)


def ids_list_msg(ids, header: Header):
    """hri_msgs/IdsList of `ids` (str)."""
    from hri_msgs.msg import IdsList  # optional, as in expression_msg

    return IdsList(header=header, ids=list(ids))
