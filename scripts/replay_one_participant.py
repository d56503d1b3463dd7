"""Play a 640x480 rgb8 camera at 30 fps and a 16 kHz microphone from ONE DDS participant, as
`ros2 bag play` publishes a bag, to lightmer nodes already running; print what came back.

Run it in a process of its own: Fast DDS reads FASTRTPS_DEFAULT_PROFILES_FILE once per process,
at its first participant, so this is how a profile reaches the player alone. Under
scripts/loopback.sh, with the nodes on their default topics:

  python scripts/replay_one_participant.py SECONDS CHECKPOINT [two]

`two` publishes the microphone from a participant of its own instead (as separate drivers do),
for comparison. Prints JSON: the fusion node's counters over the run (`late`, `dropped`, ...),
the segments whose window never came (`missing_segments`), and each window's latency in ms
(arrival minus the capture of the newest data it used).
"""
from __future__ import annotations

import json
import sys

from lightmer.core.checkpoint import load_checkpoint
from lightmer.core.segments import segment_of_reference
from lightmer.harness.bench_inputs import camera_frame
from lightmer.harness.bench_nodes import latency_run
from lightmer.harness.rig import Rig, WallClockSensors
from lightmer.stream.settings import StreamSettings


def replay(seconds: float, checkpoint: str, one_participant: bool = True) -> dict:
    meta = load_checkpoint(checkpoint)[1]
    reference = StreamSettings().reference
    with Rig(own_mic_participant=not one_participant, name='lightmer_replay') as rig:
        sensors = WallClockSensors(rig, camera_frame())
        before = {}

        def start_counts() -> None:
            before.update(rig.snapshot().counts(rig.node_name('fusion')))

        latencies = latency_run(sensors, seconds, meta, on_start=start_counts)
        after = rig.snapshot().counts(rig.node_name('fusion'))
    ks = sorted(segment_of_reference(t, meta.segment_s, reference) for t in latencies)
    return {
        'one_participant': one_participant,
        'seconds': seconds,
        'fusion': {key: after[key] - before.get(key, 0) for key in after},
        'windows': len(ks),
        'missing_segments': sorted(set(range(ks[0], ks[-1] + 1)) - set(ks)) if ks else [],
        'latency_ms': [round(v, 1) for _, v in sorted(latencies.items())],
    }


if __name__ == '__main__':
    print(json.dumps(replay(float(sys.argv[1]), sys.argv[2],
                            one_participant=sys.argv[3:] != ['two'])))
