"""Is one-process replay lossless and timely? Camera (640x480 rgb8, 30 fps) and microphone from
one DDS participant, as `ros2 bag play` publishes a bag, with and without
config/fastdds_replay.xml.

Starts the three nodes once (an untrained model, default parameters, no Fast DDS profile), then
runs scripts/replay_one_participant.py RUNS times for each of: one participant with Fast DDS's
defaults; one participant with the profile (for the player only, as the README advises for
`ros2 bag play`); two participants (camera and microphone as separate drivers). Writes
OUT/replay.json and OUT/replay.png (every window's latency, per run) and prints a table.

  bash scripts/loopback.sh .venv/bin/python scripts/measure_replay.py [OUT] [RUNS] [SECONDS]
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.plots import plot_latency_groups
from lightmer.harness.bench_inputs import untrained_checkpoint
from lightmer.harness.rig import NodeProcesses, loopback_env

ROOT = Path(__file__).resolve().parents[1]
PROFILE = ROOT / 'config' / 'fastdds_replay.xml'
PLAYER = ROOT / 'scripts' / 'replay_one_participant.py'
CONFIGS = {  # name: (environment added for the player, its extra argument)
    'one participant, Fast DDS defaults': ({}, []),
    'one participant, fastdds_replay.xml': ({'FASTRTPS_DEFAULT_PROFILES_FILE': str(PROFILE)},
                                            []),
    'two participants': ({}, ['two']),
}


def main(out: Path, runs: int, seconds: float) -> int:
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = untrained_checkpoint(Path(tmp))
        with NodeProcesses({'model': str(checkpoint)}, out / 'nodes'):
            for run in range(runs):
                for name, (env, extra) in CONFIGS.items():
                    cmd = [sys.executable, str(PLAYER), str(seconds), str(checkpoint), *extra]
                    done = subprocess.run(cmd, env={**loopback_env(), **env},
                                          capture_output=True, text=True, timeout=600)
                    if done.returncode != 0:
                        raise RuntimeError(f'the player failed ({name}):\n{done.stderr[-3000:]}')
                    results[name].append(json.loads(done.stdout))
                    r = results[name][-1]
                    print(f"run {run}: {name}: late {r['fusion']['late']}, dropped "
                          f"{r['fusion']['dropped']}, missing {r['missing_segments']}, "
                          f"max {max(r['latency_ms'], default=0):.0f} ms", flush=True)
    atomic_save_json(out / 'replay.json', {'profile': str(PROFILE), 'runs': runs,
                                           'seconds': seconds, 'results': results})
    plot_latency_groups({f'{name} #{i}': r['latency_ms'] for name, rs in results.items()
                         for i, r in enumerate(rs)}, out / 'replay.png',
                        'window latency per run')
    print('| player | late | dropped | windows missing | latency p50 / p95 / max (ms) |')
    print('|---|---:|---:|---:|---:|')
    for name, rs in results.items():
        lat = np.concatenate([r['latency_ms'] for r in rs])
        print(f"| {name} | {sum(r['fusion']['late'] for r in rs)} | "
              f"{sum(r['fusion']['dropped'] for r in rs)} | "
              f"{sum(len(r['missing_segments']) for r in rs)} | "
              f"{np.percentile(lat, 50):.0f} / {np.percentile(lat, 95):.0f} / "
              f"{lat.max():.0f} |")
    return 0


if __name__ == '__main__':
    args = sys.argv[1:]
    raise SystemExit(main(Path(args[0]) if args else Path('replay-out'),
                          int(args[1]) if len(args) > 1 else 3,
                          float(args[2]) if len(args) > 2 else 20.0))
