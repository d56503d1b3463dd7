"""The fusion node's per-person outputs on ROS4HRI topics (REP-155), created as ids appear and
removed when their state is dropped.

Per id: `<prefix>/<id>/expression` (hri_msgs/Expression) and `<prefix>/<id>/emotion`
(vision_msgs/Classification, every class); once per segment `<prefix>/tracked`
(hri_msgs/IdsList), unless the robot's face pipeline owns that topic (face_source ros4hri).

Voices (`VoiceOutputs`, audio_to speaker): REP-155 makes voices entities of their own, matched
to faces with a confidence. lightmer has one microphone and credits its voice to the faces
whose mouths move with it (stream.speaker), so a voice here is "the voice of face <id>", id
`voice_<face id>`, created the first time that face is credited. Per speaker estimate (one
per segment with faces): `<humans>/voices/tracked` (hri_msgs/IdsList: the voices of the faces
in view that have spoken), each one's `<humans>/voices/<voice>/is_speaking` (std_msgs/Bool),
and for each face credited now `<humans>/candidate_matches` (hri_msgs/IdsMatch: the voice,
type VOICE, and the face, type FACE, the estimate's score as the confidence). An estimate
that knows nothing (state 'unknown') publishes nothing. `<humans>` is the parent of
humans_prefix (/humans for /humans/faces).
"""
from __future__ import annotations

import numpy as np
from rclpy.node import Node
from std_msgs.msg import Bool, Header
from vision_msgs.msg import Classification

from .conversions import classification_msg, expression_msg, ids_list_msg
from .qos import output_qos


class PeopleOutputs:
    def __init__(self, node: Node, prefix: str, labels: tuple[str, ...], tracked: bool):
        # optional: not every robot has ROS4HRI; the fusion node builds this only per person
        from hri_msgs.msg import Expression, IdsList

        self._node, self._prefix, self._labels = node, prefix, labels
        self._expression_type = Expression
        self._tracked = (node.create_publisher(IdsList, f'{prefix}/tracked', output_qos())
                         if tracked else None)
        self._pubs: dict[str, tuple] = {}       # id -> (expression, emotion) publishers

    @property
    def ids(self) -> tuple[str, ...]:
        return tuple(self._pubs)

    def tracked(self, header: Header, ids) -> None:
        if self._tracked is not None:
            self._tracked.publish(ids_list_msg(ids, header))

    def publish(self, face_id: str, probs: np.ndarray, header: Header) -> None:
        """One window of person `face_id`: its expression and its class probabilities."""
        if face_id not in self._pubs:
            base = f'{self._prefix}/{face_id}'
            # ids are checked (core.messages.check_face_id) before they get here
            self._pubs[face_id] = (
                self._node.create_publisher(self._expression_type, f'{base}/expression',
                                            output_qos()),
                self._node.create_publisher(Classification, f'{base}/emotion', output_qos()))
        expression_pub, emotion_pub = self._pubs[face_id]
        expression_pub.publish(expression_msg(probs, self._labels, header))
        emotion_pub.publish(classification_msg(probs, self._labels, header))

    def forget(self, ids) -> None:
        """The ids' state was dropped: their topics go too."""
        for face_id in ids:
            for pub in self._pubs.pop(face_id, ()):
                self._node.destroy_publisher(pub)


def voice_id(face_id: str) -> str:
    """The id of the voice credited to face `face_id` (a topic-name token as the face's)."""
    return f'voice_{face_id}'


class VoiceOutputs:
    def __init__(self, node: Node, faces_prefix: str):
        # optional: not every robot has ROS4HRI; built only with audio_to speaker
        from hri_msgs.msg import IdsList, IdsMatch

        self._node, self._match_type = node, IdsMatch
        humans = faces_prefix.rstrip('/').rpartition('/')[0]
        self._voices = f'{humans}/voices'
        self._tracked = node.create_publisher(IdsList, f'{self._voices}/tracked', output_qos())
        self._matches = node.create_publisher(IdsMatch, f'{humans}/candidate_matches',
                                              output_qos())
        self._speaking: dict[str, object] = {}     # face id -> its voice's is_speaking publisher

    @property
    def voices(self) -> tuple[str, ...]:
        return tuple(voice_id(f) for f in self._speaking)

    def publish(self, estimate, faces_in_view, header: Header) -> None:
        """One speaker.SpeakerEstimate of a segment whose faces were `faces_in_view`."""
        if estimate.state == 'unknown':
            return
        for face_id in estimate.speaking:
            if face_id not in self._speaking:
                self._speaking[face_id] = self._node.create_publisher(
                    Bool, f'{self._voices}/{voice_id(face_id)}/is_speaking', output_qos())
        heard = [f for f in faces_in_view if f in self._speaking]
        self._tracked.publish(ids_list_msg([voice_id(f) for f in heard], header))
        for face_id in heard:
            self._speaking[face_id].publish(Bool(data=face_id in estimate.speaking))
        for face_id in estimate.speaking:
            # IdsMatch has no header (upstream definition): a match is current when it comes
            self._matches.publish(self._match_type(
                id1=voice_id(face_id), id1_type=self._match_type.VOICE,
                id2=face_id, id2_type=self._match_type.FACE,
                confidence=float(estimate.scores.get(face_id, 0.0))))

    def forget(self, ids) -> None:
        """The faces' state was dropped: their voices go too."""
        for face_id in ids:
            pub = self._speaking.pop(face_id, None)
            if pub is not None:
                self._node.destroy_publisher(pub)
