"""The fusion node's per-person outputs on ROS4HRI topics (REP-155), created as ids appear and
removed when their state is dropped.

Per id: `<prefix>/<id>/expression` (hri_msgs/Expression) and `<prefix>/<id>/emotion`
(vision_msgs/Classification, every class); once per segment `<prefix>/tracked`
(hri_msgs/IdsList), unless the robot's face pipeline owns that topic (face_source ros4hri).
"""
from __future__ import annotations

import numpy as np
from rclpy.node import Node
from std_msgs.msg import Header
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
