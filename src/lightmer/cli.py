"""`lightmer` command line: the only place that parses argv.

Each subcommand has a `_add_<name>` that declares its options and a `_run_<name>` that turns
the parsed options into the implementing module's call; both go into COMMANDS. Implementations
are imported lazily so that `lightmer --help` and light subcommands do not pay for torch or
rclpy imports.

Errors: a `_run_<name>` does not catch anything. What a user can cause and fix (a wrong path, a
damaged or foreign file, a bad setting) is raised by the library as one of USER_ERRORS with a
message that says what to do, and `main` prints it as one line, `lightmer <command>: <message>`,
and exits 2. Anything else is a bug and keeps its traceback. LIGHTMER_TRACEBACK=1 shows the
traceback of user errors too.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DATASETS = ('crema-d', 'ravdess')
# The library's errors for input a user can fix: OSError (missing, unreadable or existing files,
# a worker that died: ChildProcessError) and ValueError (bad settings, and its subclasses
# CheckpointError, BagFormatError, MediaError, ConversionError, ExportError).
USER_ERRORS = (OSError, ValueError)
EXIT_USER_ERROR = 2


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f'expected a positive integer, got {text}')
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f'expected a positive number, got {text}')
    return value


def _fold(text: str) -> int | None:
    if text == 'all':
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fold index or 'all', got {text!r}") \
            from None


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f'expected an integer >= 0, got {text}')
    return value


def _shard(text: str) -> tuple[int, int]:
    """'I/K' -> (I, K), shard I (0-based) of K."""
    try:
        i, k = (int(x) for x in text.split('/'))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected I/K such as 0/2, got {text!r}") from None
    if not 0 <= i < k:
        raise argparse.ArgumentTypeError(f'shard I/K needs 0 <= I < K, got {text}')
    return i, k


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True))


def _keep_dds_on_loopback() -> None:
    """The commands that start lightmer's nodes and talk to them (eval-bag --live, bench,
    demo) keep this process's DDS on this machine, as its children's: set here, at the
    program's entry, before anything creates a DDS participant (which reads them)."""
    from lightmer.ros.rig import LOOPBACK

    os.environ.update(LOOPBACK)


# --- summary -------------------------------------------------------------------------------
def _add_summary(sub) -> None:
    p = sub.add_parser('summary', help='parameter count and float32 size of the model')
    p.add_argument('--classes', type=_positive_int, required=True, help='number of classes C')
    p.add_argument('--json', action='store_true', help='print JSON')


def _run_summary(args) -> int:
    from lightmer.model import LightmerNet, ModelConfig, count_parameters, layer_table

    model = LightmerNet(ModelConfig(n_classes=args.classes))
    n_params = count_parameters(model)
    # size_mib is the paper's "10.3 MB" (2^20 bytes); size_mb uses 10^6 bytes.
    info = {'classes': args.classes, 'parameters': n_params,
            'size_mb': n_params * 4 / 1e6, 'size_mib': n_params * 4 / 2**20}
    if args.json:
        _print_json(info)
    else:
        print(layer_table(model))
        print(f'total parameters: {n_params}  ({info["size_mib"]:.2f} MiB as float32; '
              'the same for any number of segments N: the networks are shared)')
    return 0


# --- export --------------------------------------------------------------------------------
def _add_export(sub) -> None:
    p = sub.add_parser('export', help='export the per-segment and fusion parts for small robots')
    p.add_argument('--checkpoint', type=Path, required=True)
    p.add_argument('--format', choices=('torchscript', 'onnx'), default='torchscript',
                   help='onnx: what the nodes run without torch (docs/RUNTIME.md)')
    p.add_argument('--out', type=Path, default=None,
                   help='output directory (default: next to the checkpoint)')


def _run_export(args) -> int:
    from lightmer.export import export_checkpoint

    paths = export_checkpoint(args.checkpoint, args.format, args.out)
    for path in paths:
        print(path)
    return 0


# --- bench ---------------------------------------------------------------------------------
def _add_bench(sub) -> None:
    p = sub.add_parser('bench', help='measure per-stage cost, incremental vs recompute, nodes')
    p.add_argument('--json', action='store_true', help='print JSON (a markdown table otherwise)')
    p.add_argument('--repeats', type=_positive_int, default=20, help='repeats per stage')
    p.add_argument('--threads', type=_positive_int, default=None,
                   help='torch threads (default: torch default, stated in the output)')
    p.add_argument('--checkpoint', type=Path, default=None,
                   help='a .pt checkpoint for the figures (default: an untrained model); '
                        'bench exports it to ONNX itself for the onnxruntime figures')
    p.add_argument('--no-nodes', action='store_true', help='skip the live-node measurements')
    p.add_argument('--out', type=Path, default=None, help='directory for bench.json and PNGs')


def _run_bench(args) -> int:
    from lightmer.backend import backend_of
    from lightmer.bench import run_bench

    if args.checkpoint is not None and backend_of(args.checkpoint) != 'torch':
        print(f'lightmer bench: --checkpoint {args.checkpoint} is an ONNX export; give its .pt '
              'checkpoint: bench runs it on torch and exports it for onnxruntime itself',
              file=sys.stderr)
        return 2
    if not args.no_nodes:
        _keep_dds_on_loopback()
    return run_bench(repeats=args.repeats, threads=args.threads, checkpoint=args.checkpoint,
                     nodes=not args.no_nodes, out_dir=args.out, as_json=args.json)


# --- synth ---------------------------------------------------------------------------------
def _add_synth(sub) -> None:
    p = sub.add_parser('synth', help='generate a small corpus in the CREMA-D or RAVDESS layout')
    p.add_argument('--layout', choices=DATASETS, required=True)
    p.add_argument('--out', type=Path, required=True)
    p.add_argument('--actors', type=_positive_int, default=None, help='number of actors')
    p.add_argument('--clips-per-emotion', type=_positive_int, default=None,
                   help='clips per actor and emotion')
    p.add_argument('--seed', type=int, default=0)


def _run_synth(args) -> int:
    from lightmer.datasets.synth import synthesize

    report = synthesize(args.layout, args.out, actors=args.actors,
                        clips_per_emotion=args.clips_per_emotion, seed=args.seed)
    print(report)
    return 0


# --- prepare -------------------------------------------------------------------------------
def _add_prepare(sub) -> None:
    p = sub.add_parser('prepare', help='decode clips, crop faces, store a training cache')
    p.add_argument('--dataset', choices=DATASETS, required=True)
    p.add_argument('--root', type=Path, required=True, help='dataset root as downloaded')
    p.add_argument('--cache', type=Path, required=True)
    p.add_argument('--workers', type=_positive_int, default=None,
                   help='processes (default: available cores)')
    p.add_argument('--shard', type=_shard, default=None, metavar='I/K',
                   help='prepare only shard I of K (a fixed rule on clip ids, the same on every '
                        'machine); then `lightmer merge-shards` on the gathered cache')


def _run_prepare(args) -> int:
    from lightmer.datasets.prepare import prepare

    summary = prepare(args.dataset, args.root, args.cache, workers=args.workers,
                      shard=args.shard)
    print(summary)
    return 0


def _add_merge_shards(sub) -> None:
    p = sub.add_parser('merge-shards', help='merge the shard indexes of `prepare --shard` '
                       'into one cache index')
    p.add_argument('--cache', type=Path, required=True,
                   help='cache folder holding every shard\'s clips/ and index.shard-*.json')


def _run_merge_shards(args) -> int:
    from lightmer.datasets.prepare import merge_shards

    print(merge_shards(args.cache))
    return 0


# --- train ---------------------------------------------------------------------------------
def _add_train(sub) -> None:
    p = sub.add_parser('train', help='train with uncertainty sampling (Algorithm 1) or fully')
    p.add_argument('--dataset', choices=DATASETS, required=True)
    p.add_argument('--cache', type=Path, required=True)
    p.add_argument('--out', type=Path, required=True, help='run directory')
    p.add_argument('--strategy', choices=('uncertainty', 'full'), default='uncertainty')
    p.add_argument('--folds', type=_positive_int, default=5)
    p.add_argument('--fold', type=_fold, default=None, help="fold index (0-based) or 'all'")
    p.add_argument('--epochs', type=_positive_int, default=100)
    # Two spellings: torchrun rejects `--nu` after `-m lightmer` (an ambiguous abbreviation of
    # its own --numa-binding), so the long one is the one to use there.
    p.add_argument('--nu', '--n-uncertain', dest='nu', type=_positive_int, default=None,
                   help='uncertain samples per epoch N_u (default: the preset\'s)')
    p.add_argument('--segments', type=_positive_int, default=None,
                   help='temporal segments N (default: the preset\'s)')
    p.add_argument('--batch-size', type=_positive_int, default=16,
                   help='global batch: under torchrun the K ranks share it (default: the '
                        "paper's 16)")
    p.add_argument('--lr', type=_positive_float, default=1e-4)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--device', choices=('cpu', 'cuda'), default='cpu',
                   help='under torchrun each rank takes the GPU of its local rank')
    p.add_argument('--mel-norm', choices=('window', 'dataset'), default='window',
                   help="log-mel normalisation: 'window' standardises each window (level "
                        "removed); 'dataset' uses the training clips' dB statistics, stored in "
                        'the checkpoint (level kept; see docs/DATASETS.md)')
    p.add_argument('--amp', action='store_true',
                   help='mixed precision on CUDA (bfloat16 where supported, else float16 with '
                        'a gradient scaler); refused on CPU')
    p.add_argument('--workers', type=_non_negative_int, default=0,
                   help='DataLoader worker processes per rank (results do not depend on it)')
    p.add_argument('--parallel', type=_positive_int, default=1,
                   help='with --fold all: train this many folds at once as separate processes')
    p.add_argument('--dist-timeout', type=_positive_float, default=600.0, metavar='SECONDS',
                   help='under torchrun: how long a rank waits for the others before giving up')


def _run_train(args) -> int:
    from lightmer.distributed import launched_ranks
    from lightmer.train import TrainConfig, train

    cfg = TrainConfig.for_dataset(
        args.dataset, cache=args.cache, out=args.out, strategy=args.strategy,
        n_folds=args.folds, fold=args.fold, epochs=args.epochs, n_uncertain=args.nu,
        n_segments=args.segments, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        resume=args.resume, device=args.device, mel_norm=args.mel_norm, amp=args.amp,
        workers=args.workers, dist_timeout_s=args.dist_timeout)
    ranks = launched_ranks()
    if args.parallel > 1:
        from lightmer.fold_launcher import train_folds_in_parallel

        summary = train_folds_in_parallel(cfg, args.parallel)
    elif ranks.active:
        # torchrun's failure summary then shows this rank's traceback, not only its exit code.
        from torch.distributed.elastic.multiprocessing.errors import record

        summary = record(train)(cfg)
    else:
        summary = train(cfg)
    if ranks.is_main:
        _print_json(summary)
    return 1 if summary.get('failed_folds') else 0


def _add_merge_folds(sub) -> None:
    p = sub.add_parser('merge-folds', help='merge the finished folds of a run into '
                       'summary.json/png and comparison.png (after one job per fold)')
    p.add_argument('--out', type=Path, required=True, help='run directory of `lightmer train`')


def _run_merge_folds(args) -> int:
    from lightmer.train import summarize_run

    _print_json(summarize_run(args.out))
    return 0


# --- make-bag / eval-bag --------------------------------------------------------------------
def _add_make_bag(sub) -> None:
    p = sub.add_parser('make-bag', help='lay dataset clips on one timeline in a rosbag2')
    p.add_argument('--dataset', choices=DATASETS, required=True)
    p.add_argument('--root', type=Path, required=True)
    p.add_argument('--out', type=Path, required=True, help='bag directory to create')
    p.add_argument('--actors', nargs='+', default=None, help='actor ids to include')
    p.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    p.add_argument('--gap', type=float, default=1.0, help='seconds of silence between clips')
    p.add_argument('--occlude', type=float, default=0.0,
                   help='fraction of camera frames to blank (seeded), to test the '
                        'missing-modality policies')
    p.add_argument('--seed', type=int, default=0, help='seed of --occlude')
    p.add_argument('--compressed', choices=('jpeg', 'png'), default=None,
                   help='write the camera as sensor_msgs/CompressedImage on '
                        '/camera/image_raw/compressed (as robots record it) instead of raw Image')
    p.add_argument('--two-people', action='store_true',
                   help='two actors (the two --actors, else the first two) side by side '
                        'taking turns, one leaving and re-entering; per-person rows in the '
                        'labels CSV (docs/PEOPLE.md)')


def _run_make_bag(args) -> int:
    from lightmer.bags import make_bag

    print(make_bag(args.dataset, args.root, args.out, actors=args.actors, storage=args.storage,
                   gap_s=args.gap, occlude=args.occlude, seed=args.seed,
                   compressed=args.compressed, two_people=args.two_people))
    return 0


def _add_eval_bag(sub) -> None:
    p = sub.add_parser('eval-bag', help='score a bag against a labels CSV')
    p.add_argument('--bag', type=Path, required=True)
    p.add_argument('--labels', type=Path, required=True, help='CSV: start,end,label,clip_id')
    p.add_argument('--checkpoint', type=Path, required=True,
                   help='a checkpoint (.pt, torch) or its ONNX export (.onnx, onnxruntime)')
    p.add_argument('--live', action='store_true', help='through the three nodes over DDS')
    p.add_argument('--out', type=Path, default=None, help='directory for JSON and PNGs')
    p.add_argument('--json', action='store_true')
    p.add_argument('--image-topic', default='/camera/image_raw')
    p.add_argument('--audio-topic', default='/audio/audio_stamped')
    p.add_argument('--audio-info-topic', default='/audio/audio_info')
    p.add_argument('--reference', choices=('centre', 'start'), default=None,
                   help="segment reference time (default: the nodes', centre)")
    p.add_argument('--rate', type=_positive_float, default=1.0,
                   help='--live playback speed, x real time (the report says if the nodes '
                   'kept up)')
    p.add_argument('--one-participant', action='store_true',
                   help='--live: publish camera and audio from one DDS participant, as '
                   '`ros2 bag play` does (default: audio from a participant of its own)')
    p.add_argument('--missing-policy', choices=('skip', 'nearest'), default=None,
                   help="missing-modality policy of the fusion node (default: the node's)")
    p.add_argument('--min-segments', type=_positive_int, default=None,
                   help="publish windows with at least this many of N segments (default: "
                   "the node's)")
    p.add_argument('--people', action='store_true',
                   help='track every face (max_faces 4) and score per person; the labels '
                        'CSV needs a person column (make-bag --two-people)')
    p.add_argument('--audio-to', choices=('all', 'largest'), default='all',
                   help="--people: which faces a segment's audio is fused with")


def _run_eval_bag(args) -> int:
    from lightmer.evaluate import EvalConfig, evaluate_bag
    from lightmer.streaming import StreamSettings

    given = {'reference': args.reference, 'missing_policy': args.missing_policy,
             'min_segments': args.min_segments}
    settings = StreamSettings(**{k: v for k, v in given.items() if v is not None})
    if args.live:
        _keep_dds_on_loopback()
    cfg = EvalConfig(bag=args.bag, labels=args.labels, checkpoint=args.checkpoint,
                     live=args.live, out=args.out, image_topic=args.image_topic,
                     audio_topic=args.audio_topic, audio_info_topic=args.audio_info_topic,
                     settings=settings, rate=args.rate,
                     one_participant=args.one_participant, people=args.people,
                     audio_to=args.audio_to)
    result = evaluate_bag(cfg)
    if args.json:
        _print_json(result)
    else:
        def fmt(x):
            return 'n/a' if x is None else f'{x:.3f}'

        p50 = result['latency_ms']['p50']
        print(f"window accuracy {fmt(result['window_accuracy'])}  "
              f"clip accuracy {fmt(result['clip_accuracy'])}  windows {result['windows']}  "
              f"latency p50 {'n/a' if p50 is None else f'{p50:.1f} ms'}")
        if args.people:
            per = '  '.join(f"{name} {fmt(r['clip_accuracy'])}"
                            for name, r in result['people'].items())
            print(f"per person clip accuracy: {per}  id switches {result['id_switches']}  "
                  f"ids {result['ids']}")
    return 0


# --- bringup / demo -------------------------------------------------------------------------
def _add_bringup(sub) -> None:
    p = sub.add_parser('bringup', help='run the three nodes in one process (launch without '
                       'launch_ros)')
    p.add_argument('--params-file', type=Path, default=None, help='ROS parameter YAML')
    p.add_argument('--model', default=None,
                   help='checkpoint (.pt, torch) or ONNX export (.onnx, onnxruntime, no torch): '
                   'a path, or the name of one in the installed models/ folder')
    p.add_argument('--camera-topic', default=None)
    p.add_argument('--audio-topic', default=None)
    p.add_argument('--audio-info-topic', default=None)
    p.add_argument('--audio-msg', choices=('ros-drivers', 'mgonzs13'), default=None)
    p.add_argument('--use-sim-time', action='store_true')
    p.add_argument('--namespace', default=None)
    p.add_argument('--respawn', action=argparse.BooleanOptionalAction, default=None,
                   help='rebuild a node that died, in this process (default: on, as the '
                   'launch file); --no-respawn ends the process with status 1 instead')
    p.add_argument('--respawn-delay', type=float, default=None, metavar='S',
                   help='seconds before a rebuild (default 1.0)')


def _run_bringup(args) -> int:
    from lightmer.ros.bringup import run_bringup

    values = {'use_sim_time': 'true' if args.use_sim_time else None,
              'respawn': None if args.respawn is None else str(args.respawn).lower()}
    for name in ('params_file', 'model', 'camera_topic', 'audio_topic', 'audio_info_topic',
                 'audio_msg', 'namespace', 'respawn_delay'):
        values[name] = getattr(args, name)
    return run_bringup({k: str(v) for k, v in values.items() if v is not None})


def _add_demo(sub) -> None:
    p = sub.add_parser('demo', help='the whole system end to end on generated data')
    p.add_argument('--out', type=Path, default=Path('demo-out'))
    p.add_argument('--quick', action='store_true', help='smaller corpus, fewer epochs')
    p.add_argument('--json', action='store_true')


def _run_demo(args) -> int:
    from lightmer.demo import run_demo

    _keep_dds_on_loopback()
    result = run_demo(args.out, quick=args.quick)
    if args.json:
        _print_json(result)
    return 0


COMMANDS = {
    'summary': (_add_summary, _run_summary),
    'export': (_add_export, _run_export),
    'bench': (_add_bench, _run_bench),
    'synth': (_add_synth, _run_synth),
    'prepare': (_add_prepare, _run_prepare),
    'merge-shards': (_add_merge_shards, _run_merge_shards),
    'train': (_add_train, _run_train),
    'merge-folds': (_add_merge_folds, _run_merge_folds),
    'make-bag': (_add_make_bag, _run_make_bag),
    'eval-bag': (_add_eval_bag, _run_eval_bag),
    'bringup': (_add_bringup, _run_bringup),
    'demo': (_add_demo, _run_demo),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='lightmer', description='Lightweight audio-visual emotion recognition for ROS 2.')
    sub = parser.add_subparsers(dest='command', required=True, metavar='COMMAND')
    for add, _ in COMMANDS.values():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _, run = COMMANDS[args.command]
    try:
        return run(args)
    except KeyboardInterrupt:
        print('interrupted', file=sys.stderr)
        return 130
    except USER_ERRORS as e:
        if os.environ.get('LIGHTMER_TRACEBACK'):
            raise
        print(f'lightmer {args.command}: {one_line(e)}', file=sys.stderr)
        return EXIT_USER_ERROR


def one_line(error: BaseException) -> str:
    """The error's message on one line (messages that list several things join them with ';')."""
    text = str(error) or type(error).__name__
    return '; '.join(part.strip() for part in text.splitlines() if part.strip())


if __name__ == '__main__':
    sys.exit(main())
