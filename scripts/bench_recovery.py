"""How fast each node process is back: start-to-first-output and kill-to-/emotion, per node.

The three node executables run as processes (started from the launch description, as in the
tests); a camera (10 fps, 640x480, a face) and a microphone (0.1 s chunks) stream in real time
with wall-clock stamps. For each node, `--runs` times:

- start-to-first-output: the node is stopped (SIGINT), started again, and timed from the
  process start to its first output (face_crop: a crop; audio_feature: a log-mel; fusion: an
  emotion message) while the other two keep running;
- kill-to-/emotion: the node is killed (SIGKILL) and started again at once (launch adds its
  respawn_delay, 1 s by default), and timed from the kill to the first emotion message whose
  window ends after the kill (a window built from data captured after it).

Also per node, in a process of its own: the seconds spent importing the node module and
constructing the node (torch, the checkpoint, MTCNN or librosa warm-up). Medians over the runs.

Usage: bash scripts/loopback.sh .venv/bin/python scripts/bench_recovery.py --out runs/recovery
Writes OUT/recovery.json and OUT/recovery.png; prints a markdown table. A benchmark, not a
test: figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.messages import time_to_float
from lightmer.core.plots import save_figure
from lightmer.harness.rig import NodeProcesses, Rig, info_msg, loopback_env
from lightmer.ros.description import NODES as DESCRIBED

# The tests' generated model and live stream (test/ros_helpers.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'test'))
import ros_helpers as rh  # noqa: E402

NODES = ('face_crop', 'audio_feature', 'fusion')
OUTPUT = {'face_crop': 'crops', 'audio_feature': 'mels', 'fusion': 'emotion'}
TIMEOUT_S = 120.0

# Imports and builds one node in a fresh interpreter; prints the two durations as JSON.
PHASES = r'''
import json, sys, time
t0 = time.perf_counter()
import importlib, rclpy
module = importlib.import_module(sys.argv[1])
t1 = time.perf_counter()
rclpy.init()
node = getattr(module, sys.argv[2])(cli_args=['--ros-args', '-p', 'model_path:=' + sys.argv[3]])
t2 = time.perf_counter()
node.destroy_node()
rclpy.shutdown()
print(json.dumps({'import_s': t1 - t0, 'construct_s': t2 - t1}))
'''


def _until(predicate, what: str, timeout_s: float = TIMEOUT_S) -> float:
    """Poll `predicate()` every 20 ms; return time.time() when it first holds."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return time.time()
        time.sleep(0.02)
    raise TimeoutError(f'timed out waiting for {what}')


def _first_after(rig: Rig, attr: str, t: float, by_stamp: bool) -> bool:
    """An output `attr` stamped after `t` (by_stamp) or arrived after `t` (wall seconds)."""
    received = getattr(rig.snapshot(), attr)
    if by_stamp:
        return any(time_to_float(r.msg.header.stamp) > t for r in received)
    return any(r.wall_s > t for r in received)


def start_to_first_output(nodes: NodeProcesses, rig: Rig, name: str) -> float:
    nodes.kill(name, signal.SIGINT, timeout_s=30)
    t0 = time.time()
    nodes.start(name)
    return _until(lambda: _first_after(rig, OUTPUT[name], t0, False),
                  f'the first output of {name}') - t0


def kill_to_emotion(nodes: NodeProcesses, rig: Rig, name: str) -> float:
    t_kill = time.time()
    nodes.kill(name, signal.SIGKILL, timeout_s=30)
    nodes.start(name)
    return _until(lambda: _first_after(rig, 'emotion', t_kill, True),
                  f'emotion after killing {name}') - t_kill


def phases(name: str, checkpoint: Path) -> dict:
    d = next(n for n in DESCRIBED if n.name == name)
    out = subprocess.run([sys.executable, '-c', PHASES, d.module, d.class_name,
                          str(checkpoint)], capture_output=True, text=True, check=True,
                         env=loopback_env(), timeout=TIMEOUT_S)
    return json.loads(out.stdout.strip().splitlines()[-1])


def plot(summary: dict, path: Path) -> None:
    import matplotlib  # only for the figure: the measurement runs without it

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    x = np.arange(len(NODES))
    for i, key in enumerate(('import_s', 'construct_s', 'start_to_first_output_s',
                             'kill_to_emotion_s')):
        ax.bar(x + (i - 1.5) * 0.2, [summary[n][key] for n in NODES], 0.2, label=key)
    ax.set_xticks(x, NODES)
    ax.set_ylabel('seconds (median)')
    ax.grid(axis='y', alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', type=Path, required=True)
    parser.add_argument('--runs', type=int, default=3)
    parser.add_argument('--checkpoint', type=Path, default=None,
                        help='default: an untrained model (the timings do not depend on it)')
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint = args.checkpoint or rh.make_checkpoint(args.out / 'model.pt')
    params = {'/**': {'ros__parameters': {'diagnostics_period_s': 0.5}},
              '/**/face_crop': {'ros__parameters': {'qos_reliability': 'reliable'}}}
    raw: dict[str, dict[str, list[float]]] = {n: {} for n in NODES}
    for name in NODES:
        for _ in range(args.runs):
            for key, value in phases(name, checkpoint).items():
                raw[name].setdefault(key, []).append(value)
    nodes = NodeProcesses({'model': str(checkpoint)}, args.out, params=params)
    rig = Rig(nodes=nodes, name='recovery_rig')
    stream = None
    try:
        rig.wait_ready(timeout_s=TIMEOUT_S)
        rig.publish('info', info_msg())
        rig.wait_format('1ch 16000 Hz int16')
        stream = rh.LiveStream(rig)
        _until(lambda: _first_after(rig, 'emotion', time.time() - 5, True), 'first emotion')
        for name in NODES:
            for run in range(args.runs):
                for key, measure in (('start_to_first_output_s', start_to_first_output),
                                     ('kill_to_emotion_s', kill_to_emotion)):
                    value = measure(nodes, rig, name)
                    raw[name].setdefault(key, []).append(value)
                    print(f'{name} run {run}: {key} {value:.2f}', flush=True)
                    nodes.check_alive()
    finally:
        if stream is not None:
            stream.close()
        rig.close()
        nodes.stop(timeout_s=5)
    summary = {n: {k: round(float(np.median(v)), 2) for k, v in raw[n].items()} for n in NODES}
    atomic_save_json(args.out / 'recovery.json', {
        'median_s': summary, 'runs': raw, 'cpu_count': os.cpu_count(),
        'load_average': os.getloadavg(),
        'definitions': {
            'import_s': 'import of the node module (rclpy, numpy, messages; not torch)',
            'construct_s': 'node constructor: torch, checkpoint, MTCNN/librosa warm-up',
            'start_to_first_output_s': 'process start to its first output, others running',
            'kill_to_emotion_s': 'SIGKILL to the first emotion whose window ends after it, '
                                 'restarted at once (launch adds respawn_delay)'}})
    plot(summary, args.out / 'recovery.png')
    print('| node | import | construct | start to first output | kill to /emotion |')
    print('|---|---:|---:|---:|---:|')
    for n in NODES:
        s = summary[n]
        print(f"| {n} | {s['import_s']:.2f} s | {s['construct_s']:.2f} s | "
              f"{s['start_to_first_output_s']:.2f} s | {s['kill_to_emotion_s']:.2f} s |")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
