"""The experiments layer: whole runs that tell a story with figures.

`lightmer demo` (demo) and `lightmer simulate-robot` (robot_sim), timed in stages (stages).
Imports any layer; only the CLI imports it.
"""
