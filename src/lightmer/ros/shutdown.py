"""Ctrl-C and SIGTERM as a request to stop: the first code a node executable runs.

Standard library only, so that `start` can install the handler before the node module's
imports (rclpy, numpy, torch: about 1.5 s), during which a default SIGINT used to print a
KeyboardInterrupt traceback and end the process with status -2.
"""
from __future__ import annotations

import signal
import threading


class ShutdownRequest:
    """SIGINT and SIGTERM set `event` instead of raising KeyboardInterrupt or ending the process.

    `ros2 launch` on Ctrl-C delivers SIGINT twice (the terminal's to the process group, then its
    own), and escalates to SIGTERM: the second signal used to land in `destroy_node()` or in
    torch's atexit hooks and print a traceback, or, once Python had restored the default
    handlers while exiting, end the process with status -2. So the first signal sets the event
    and makes the process ignore both signals from then on: cleanup finishes and it exits 0
    (SIGKILL, launch's last resort, still ends it). Build it in the main thread before
    rclpy.init(signal_handler_options=NO), so that rclpy installs no handler of its own.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.event = threading.Event()
        for sig in self.SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        # SIG_IGN, unlike a Python handler, survives interpreter shutdown.
        for sig in self.SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        self.event.set()


_process_request: ShutdownRequest | None = None


def process_request() -> ShutdownRequest:
    """The process's one ShutdownRequest, installed on the first call (main thread only):
    `start` installs it before the imports and `run_node` reuses it, so a signal that came
    while the node module was loading still stops the node."""
    global _process_request
    if _process_request is None:
        _process_request = ShutdownRequest()
    return _process_request
