"""`lightmer bringup`: the launch file's three nodes in one process, without launch_ros.

The nodes, names, parameter files, overrides and remappings come from
`description.resolve`, exactly as the launch file gets them. rclpy has no composable nodes, so
each node gets its own single-threaded executor in its own thread (a multi-threaded executor
fires timers irregularly, and one shared executor would let MTCNN block the fusion node).
"""
from __future__ import annotations

import importlib
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from .description import resolve


@dataclass
class Bringup:
    """Running nodes; `stop()` ends their executors and destroys them."""

    nodes: list = field(default_factory=list)
    executors: list = field(default_factory=list)
    threads: list = field(default_factory=list)

    def node(self, name: str):
        return next(n for n in self.nodes if n.get_name() == name)

    def stop(self) -> None:
        for executor in self.executors:
            executor.shutdown(timeout_sec=5.0)
        for thread in self.threads:
            thread.join(timeout=5.0)
        for node in self.nodes:
            node.destroy_node()
        self.nodes.clear()


def _spin(executor: SingleThreadedExecutor) -> None:
    try:
        executor.spin()
    except ExternalShutdownException:
        pass


def start_bringup(values: dict[str, str] | None = None, context=None) -> Bringup:
    """Build the three nodes from the launch arguments `values` and spin each in a thread.

    Raises ValueError (parameters, checkpoint) with the node's message; nodes already built are
    destroyed first.
    """
    running = Bringup()
    try:
        for inv in resolve(values):
            cls = getattr(importlib.import_module(inv.description.module),
                          inv.description.class_name)
            running.nodes.append(cls(cli_args=inv.ros_args(), context=context,
                                     use_global_arguments=False))
    except BaseException:
        running.stop()
        raise
    for node in running.nodes:
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        thread = threading.Thread(target=_spin, args=(executor,), name=node.get_name(),
                                  daemon=True)
        thread.start()
        running.executors.append(executor)
        running.threads.append(thread)
    return running


def run_bringup(params_file: Path | None = None, model: Path | None = None,
                camera_topic: str | None = None, audio_topic: str | None = None,
                audio_msg: str | None = None, use_sim_time: bool = False,
                namespace: str = '') -> int:
    """Run until Ctrl-C or SIGTERM; exit status 0, or 1 with a message on a setup error."""
    values = {'use_sim_time': 'true' if use_sim_time else 'false', 'namespace': namespace}
    for key, value in (('params_file', params_file), ('model', model),
                       ('camera_topic', camera_topic), ('audio_topic', audio_topic),
                       ('audio_msg', audio_msg)):
        if value is not None:
            values[key] = str(value)
    rclpy.init()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        running = start_bringup(values)
    except ValueError as exc:
        print(f'lightmer bringup: {exc}', file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    try:
        while not stop.wait(0.5) and rclpy.ok():
            pass
    except KeyboardInterrupt:
        pass
    finally:
        running.stop()
        rclpy.try_shutdown()
    return 0
