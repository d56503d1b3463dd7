"""What the three nodes share: a /diagnostics reporter and the `main()` of a node executable."""
from __future__ import annotations

import sys
from collections.abc import Callable

import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.clock import Clock, ClockType
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from .conversions import diagnostics_msg
from .shutdown import process_request

OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR

# Throttle period of repeated input errors in the log, seconds.
ERROR_THROTTLE_S = 5.0


class Reporter:
    """Publishes a node's counters on /diagnostics and logs input errors, throttled.

    The timer runs on the steady clock, so the counts keep coming while a bag replay (sim time)
    is paused. `problem` (the status message, level WARN) holds the latest input error until
    the node publishes a result again (`clear()`); the counts keep the history. `health`, when
    given, returns the node's own view of its state as (level, message) (level a
    diagnostic_msgs/DiagnosticStatus level byte; the fusion node reports stalled inputs there);
    the status carries the worse of the two.
    """

    def __init__(self, node: Node, period_s: float, counts: Callable[[], dict],
                 health: Callable[[], tuple[int, str]] | None = None):
        self._node = node
        self._counts = counts
        self._health = health
        self.problem = ''
        self.errors = 0
        self._pub = node.create_publisher(DiagnosticArray, '/diagnostics', 10)
        self._timer = node.create_timer(period_s, self.publish,
                                        clock=Clock(clock_type=ClockType.STEADY_TIME))

    def status(self) -> tuple[int, str]:
        """(level, message) now: OK 'ok', WARN with the latest input error, or the node's own
        health when that is worse."""
        level, message = (WARN, self.problem) if self.problem else (OK, 'ok')
        if self._health is not None:
            own_level, own_message = self._health()
            if own_level > level or (own_level == level and level == OK and own_message):
                level, message = own_level, own_message
        return level, message

    def publish(self) -> None:
        counts = dict(self._counts())
        counts['errors'] = self.errors
        level, message = self.status()
        self._pub.publish(diagnostics_msg(self._node.get_clock().now().to_msg(),
                                          self._node.get_fully_qualified_name(), counts,
                                          message, level))

    def error(self, text: str) -> None:
        """An input was dropped: count it, remember why, log it at most every few seconds."""
        self.errors += 1
        self.problem = text
        self._node.get_logger().error(text, throttle_duration_sec=ERROR_THROTTLE_S)

    def warn(self, text: str) -> None:
        self.problem = text
        self._node.get_logger().warning(text, throttle_duration_sec=ERROR_THROTTLE_S)

    def note(self, text: str) -> None:
        """Something worth a log line (throttled) but not a problem: a stamp jump."""
        self._node.get_logger().warning(text, throttle_duration_sec=ERROR_THROTTLE_S)

    def clear(self) -> None:
        self.problem = ''


def run_node(factory: Callable[[], Node], args: list[str] | None = None) -> int:
    """`main()` of a node executable: init, build, spin until Ctrl-C, SIGTERM or shutdown,
    clean up; exit status 0 however many signals arrive.

    A configuration error (ValueError from the parameters or the checkpoint) ends the process
    with its message and exit status 1 instead of a traceback. The executor is spun in short
    slices so that the signal flag is seen within 0.1 s.
    """
    shutdown = process_request()      # installed already when started through `start`
    if shutdown.event.is_set():       # Ctrl-C while the node module was loading
        return 0
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        try:
            node = factory()
        except ValueError as exc:
            print(f'lightmer: {exc}', file=sys.stderr)
            return 1
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        try:
            while not shutdown.event.is_set() and rclpy.ok():
                executor.spin_once(timeout_sec=0.1)
        except ExternalShutdownException:
            pass
        finally:
            executor.shutdown()
            node.destroy_node()
    finally:
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
