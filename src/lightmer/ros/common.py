"""What the three nodes share: a /diagnostics reporter and the `main()` of a node executable."""
from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node

from .conversions import diagnostics_msg

# Throttle period of repeated input errors in the log, seconds.
ERROR_THROTTLE_S = 5.0


class Reporter:
    """Publishes a node's counters on /diagnostics and logs input errors, throttled.

    The timer runs on the steady clock, so the counts keep coming while a bag replay (sim time)
    is paused. `problem` (the status message, level WARN) holds the latest input error until
    the node publishes a result again (`clear()`); the counts keep the history.
    """

    def __init__(self, node: Node, period_s: float, counts: Callable[[], dict]):
        self._node = node
        self._counts = counts
        self.problem = ''
        self.errors = 0
        self._pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._timer = node.create_timer(period_s, self.publish,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))

    def publish(self) -> None:
        counts = dict(self._counts())
        counts['errors'] = self.errors
        self._pub.publish(diagnostics_msg(self._node.get_clock().now().to_msg(),
                                          self._node.get_fully_qualified_name(), counts,
                                          self.problem))

    def error(self, text: str) -> None:
        """An input was dropped: count it, remember why, log it at most every few seconds."""
        self.errors += 1
        self.problem = text
        self._node.get_logger().error(text, throttle_duration_sec=ERROR_THROTTLE_S)

    def warn(self, text: str) -> None:
        self.problem = text
        self._node.get_logger().warning(text)

    def clear(self) -> None:
        self.problem = ''


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """`main()` of a node executable: init, build, spin until Ctrl-C or shutdown, clean up.

    A configuration error (ValueError from the parameters or the checkpoint) ends the process
    with its message and exit status 1 instead of a traceback.
    """
    rclpy.init(args=args)
    try:
        node = factory()
    except ValueError as exc:
        print(f'lightmer: {exc}', file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        rclpy.spin(node)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


def node_with_own_participant(name: str, **kwargs) -> Node:
    """A node in a fresh context, i.e. a DDS participant of its own; end it with
    `close_own_participant`.

    Tools that play camera and microphone together (eval-bag, the node benchmark, the tests)
    publish them from two participants, as the separate driver processes on a robot do. From
    one participant, each 640x480 frame (sent as 64 KB fragments) filled the participant's
    outgoing buffers, shared memory and UDP alike, and audio chunks that found them full were
    lost until the next reliable heartbeat, 3 s later: their windows came seconds late.
    """
    context = rclpy.Context()
    rclpy.init(args=[], context=context)
    return rclpy.create_node(name, context=context, **kwargs)


def close_own_participant(node: Node) -> None:
    context = node.context
    node.destroy_node()
    rclpy.try_shutdown(context=context)
