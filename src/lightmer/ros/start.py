"""The node executables (setup.py console scripts, and `python -m lightmer.ros.start <name>`).

Each installs the clean-shutdown handler (`shutdown.process_request`) before it imports its
node module, so Ctrl-C or SIGTERM at any moment after Python itself has started ends the
process quietly with status 0; a signal that came during the imports ends it before rclpy
starts. The imports below sit inside the functions on purpose: they are what the handler must
precede. What remains unguarded is the interpreter's own start-up (its `site` import and the
console script's first lines, a few tens of milliseconds).
"""
from __future__ import annotations

import sys

from .shutdown import process_request


def face_crop_node() -> int:
    if process_request().event.is_set():
        return 0
    from . import face_crop_node as node  # after the handler: see the module docstring
    return node.main()


def audio_feature_node() -> int:
    if process_request().event.is_set():
        return 0
    from . import audio_feature_node as node  # after the handler: see the module docstring
    return node.main()


def fusion_node() -> int:
    if process_request().event.is_set():
        return 0
    from . import fusion_node as node  # after the handler: see the module docstring
    return node.main()


EXECUTABLES = {'face_crop_node': face_crop_node, 'audio_feature_node': audio_feature_node,
               'fusion_node': fusion_node}


def main(argv: list[str]) -> int:
    """`python -m lightmer.ros.start <executable> [--ros-args ...]`."""
    if len(argv) < 2 or argv[1] not in EXECUTABLES:
        print(f'usage: python -m lightmer.ros.start {{{",".join(EXECUTABLES)}}} [--ros-args ...]',
              file=sys.stderr)
        return 2
    return EXECUTABLES[argv[1]]()


if __name__ == '__main__':
    raise SystemExit(main(sys.argv))
