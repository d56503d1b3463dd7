"""`lightmer bringup`: the launch file's three nodes in one process, without launch_ros.

The nodes, names, parameter files, overrides, remappings and respawn settings come from
`description.resolve`, exactly as the launch file gets them. rclpy has no composable nodes, so
each node gets its own single-threaded executor in its own thread (a multi-threaded executor
fires timers irregularly, and one shared executor would let MTCNN block the fusion node).

A node never dies unnoticed: an exception escaping one of its callbacks ends its thread, and
`supervise` then either rebuilds that node in this process after respawn_delay (respawn on, as
launch restarts a node process) or ends the whole process with status 1 and one line naming
the node, for systemd, a container or launch to restart.
"""
from __future__ import annotations

import importlib
import sys
import threading
from collections import Counter
from dataclasses import dataclass, field

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions

from .description import NodeInvocation, resolve
from .shutdown import ShutdownRequest


@dataclass
class _Slot:
    """One node with its executor and thread; `error` is what ended the thread, if anything."""

    invocation: NodeInvocation
    node: object
    executor: SingleThreadedExecutor | None = None
    thread: threading.Thread | None = None
    error: BaseException | None = None


@dataclass
class Bringup:
    """Running nodes; `stop()` ends their executors and destroys them."""

    context: object = None
    slots: list[_Slot] = field(default_factory=list)
    restarts: Counter = field(default_factory=Counter)     # node name -> in-process rebuilds
    died: threading.Event = field(default_factory=threading.Event)

    @property
    def nodes(self) -> list:
        return [s.node for s in self.slots]

    @property
    def threads(self) -> list[threading.Thread]:
        return [s.thread for s in self.slots if s.thread is not None]

    def node(self, name: str):
        """The node named `name` (None while it is being rebuilt)."""
        return next(s.node for s in self.slots if s.invocation.name == name)

    def dead(self) -> list[_Slot]:
        return [s for s in self.slots if s.error is not None]

    def start(self, slot: _Slot) -> None:
        slot.error = None
        slot.executor = SingleThreadedExecutor(context=self.context)
        slot.executor.add_node(slot.node)
        slot.thread = threading.Thread(target=self._spin, args=(slot,),
                                       name=slot.node.get_name(), daemon=True)
        slot.thread.start()

    def _spin(self, slot: _Slot) -> None:
        try:
            slot.executor.spin()
        except ExternalShutdownException:
            pass
        except Exception as exc:     # noqa: BLE001 - whatever escaped a callback: report it
            slot.error = exc
            self.died.set()

    def rebuild(self, slot: _Slot) -> None:
        """Replace a dead node by a new one built from the same invocation, and spin it.
        Raises ValueError (parameters, checkpoint) when the node cannot be built again."""
        _stop_slot(slot)
        slot.node = None
        slot.node = _build(slot.invocation, self.context)
        self.restarts[slot.invocation.name] += 1
        self.start(slot)

    def stop(self) -> None:
        for slot in self.slots:
            _stop_slot(slot)
        self.slots.clear()


def _build(inv: NodeInvocation, context):
    cls = getattr(importlib.import_module(inv.description.module), inv.description.class_name)
    return cls(cli_args=inv.ros_args(), context=context, use_global_arguments=False)


def _stop_slot(slot: _Slot) -> None:
    if slot.executor is not None:
        slot.executor.shutdown(timeout_sec=5.0)
    if slot.thread is not None and slot.thread is not threading.current_thread():
        slot.thread.join(timeout=5.0)
    if slot.node is not None:
        slot.node.destroy_node()
    slot.executor, slot.thread = None, None


def start_bringup(values: dict[str, str] | None = None, context=None) -> Bringup:
    """Build the three nodes from the launch arguments `values` and spin each in a thread.

    Raises ValueError (parameters, checkpoint) with the node's message; nodes already built are
    destroyed first.
    """
    running = Bringup(context=context)
    try:
        for inv in resolve(values):
            running.slots.append(_Slot(inv, _build(inv, context)))
    except BaseException:
        running.stop()
        raise
    for slot in running.slots:
        running.start(slot)
    return running


def supervise(running: Bringup, stop: threading.Event) -> int:
    """Watch the node threads until `stop` is set (exit status 0). A node whose thread died is
    reported in one line on stderr; with its invocation's respawn it is rebuilt after
    respawn_delay, otherwise this returns 1 (as also when rebuilding fails)."""
    while not stop.is_set():
        running.died.wait(0.2)
        running.died.clear()
        for slot in running.dead():
            inv, exc = slot.invocation, slot.error
            name = f'{inv.namespace}/{inv.name}'
            what = f'lightmer bringup: node {name} died: {type(exc).__name__}: {exc}'
            if not inv.respawn:
                print(what, file=sys.stderr, flush=True)
                return 1
            print(f'{what}; restarting it in this process in {inv.respawn_delay:g} s '
                  f'(restart {running.restarts[inv.name] + 1})', file=sys.stderr, flush=True)
            if stop.wait(inv.respawn_delay):
                return 0
            try:
                running.rebuild(slot)
            except ValueError as err:
                print(f'lightmer bringup: node {inv.name} cannot be rebuilt: {err}',
                      file=sys.stderr, flush=True)
                return 1
    return 0


def run_bringup(values: dict[str, str] | None = None) -> int:
    """Run until Ctrl-C or SIGTERM (exit status 0, however many signals come), or until a node
    dies without respawn (1); 1 with a message on a setup error. `values` are launch arguments
    (description.LAUNCH_ARGUMENTS), as strings."""
    shutdown = ShutdownRequest()
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    try:
        try:
            running = start_bringup(values)
        except ValueError as exc:
            print(f'lightmer bringup: {exc}', file=sys.stderr)
            return 1
        try:
            return supervise(running, shutdown.event)
        finally:
            running.stop()
    finally:
        rclpy.try_shutdown()
