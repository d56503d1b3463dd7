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

# The options' choices: the parser needs these names whatever the command (numpy, no torch).
from lightmer.active.oracles import ORACLES
from lightmer.active.selection import DEFAULT_STRATEGY, STRATEGIES
from lightmer.core.config import AUGMENTS, DEFAULT_AUGMENT, DEFAULT_MODALITY_DROPOUT

DATASETS = ('crema-d', 'ravdess')
# The library's errors for input a user can fix: OSError (missing, unreadable or existing files,
# a worker that died: ChildProcessError) and ValueError (bad settings, and its subclasses
# CheckpointError, BagFormatError, MediaError, ConversionError, ExportError).
USER_ERRORS = (OSError, ValueError)
EXIT_USER_ERROR = 2
EXIT_WAITING_FOR_ANSWERS = 3   # `finetune`: a batch waits for people; answer it, then --resume


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


def _unit_share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f'expected a share in [0, 1), got {text}')
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
    from lightmer.harness.rig import LOOPBACK

    os.environ.update(LOOPBACK)


# --- summary -------------------------------------------------------------------------------
def _add_summary(sub) -> None:
    p = sub.add_parser('summary', help='parameter count and float32 size of the model')
    p.add_argument('--classes', type=_positive_int, required=True, help='number of classes C')
    p.add_argument('--json', action='store_true', help='print JSON')


def _run_summary(args) -> int:
    from lightmer.core.model import LightmerNet, ModelConfig, count_parameters, layer_table

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
    from lightmer.core.export import export_checkpoint

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
    from lightmer.core.backend import backend_of
    from lightmer.harness.bench import run_bench

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
    p.add_argument('--augment', choices=AUGMENTS, default=DEFAULT_AUGMENT,
                   help="per-segment augmentation of the training face crops and audio "
                        "windows (another camera and room; docs/ROBUSTNESS.md); 'none' is the "
                        "paper's recipe")
    p.add_argument('--modality-dropout', type=_unit_share,
                   default=DEFAULT_MODALITY_DROPOUT, metavar='P',
                   help='share of training segments that lose their face or their audio (the '
                        "nodes' missing-modality input instead); 0 is the paper's recipe")
    p.add_argument('--workers', type=_non_negative_int, default=0,
                   help='DataLoader worker processes per rank (results do not depend on it)')
    p.add_argument('--parallel', type=_positive_int, default=1,
                   help='with --fold all: train this many folds at once as separate processes')
    p.add_argument('--dist-timeout', type=_positive_float, default=600.0, metavar='SECONDS',
                   help='under torchrun: how long a rank waits for the others before giving up')


def _run_train(args) -> int:
    from lightmer.training.distributed import launched_ranks
    from lightmer.training.fold_launcher import train_folds_in_parallel
    from lightmer.training.train import TrainConfig, train

    cfg = TrainConfig.for_dataset(
        args.dataset, cache=args.cache, out=args.out, strategy=args.strategy,
        n_folds=args.folds, fold=args.fold, epochs=args.epochs, n_uncertain=args.nu,
        n_segments=args.segments, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        resume=args.resume, device=args.device, mel_norm=args.mel_norm, amp=args.amp,
        augment=args.augment, modality_dropout=args.modality_dropout,
        workers=args.workers, dist_timeout_s=args.dist_timeout)
    ranks = launched_ranks()
    if args.parallel > 1:
        summary = train_folds_in_parallel(cfg, args.parallel)
    elif ranks.active:
        # torchrun's failure summary then shows this rank's traceback, not only its exit code.
        from torch.distributed.elastic.multiprocessing.errors import record  # torchrun only

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
    from lightmer.training.train import summarize_run

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
    from lightmer.evaluation.bag_corpus import make_bag

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
    _add_replay_options(p)
    p.add_argument('--rate', type=_positive_float, default=1.0,
                   help='--live playback speed, x real time (the report says if the nodes '
                   'kept up)')
    p.add_argument('--one-participant', action='store_true',
                   help='--live: publish camera and audio from one DDS participant, as '
                   '`ros2 bag play` does (default: audio from a participant of its own)')


def _add_replay_options(p) -> None:
    """Bag topics and node settings of a replay through the nodes' processors."""
    p.add_argument('--image-topic', default='/camera/image_raw')
    p.add_argument('--audio-topic', default='/audio/audio_stamped')
    p.add_argument('--audio-info-topic', default='/audio/audio_info')
    p.add_argument('--reference', choices=('centre', 'start'), default=None,
                   help="segment reference time (default: the nodes', centre)")
    p.add_argument('--missing-policy', choices=('skip', 'nearest', 'single'), default=None,
                   help="missing-modality policy of the fusion node (default: the node's; "
                   "single: one modality alone, for models trained with modality dropout)")
    p.add_argument('--min-segments', type=_positive_int, default=None,
                   help="publish windows with at least this many of N segments (default: "
                   "the node's)")
    p.add_argument('--people', action='store_true',
                   help='track every face (max_faces 4) and score per person; the labels '
                        'CSV needs a person column (make-bag --two-people)')
    p.add_argument('--audio-to', choices=('speaker', 'all', 'largest'), default='speaker',
                   help="--people: which faces a segment's audio is fused with")


def _stream_settings(args):
    """The nodes' StreamSettings with the replay options given on the command line."""
    from lightmer.stream.settings import StreamSettings

    given = {'reference': args.reference, 'missing_policy': args.missing_policy,
             'min_segments': args.min_segments}
    return StreamSettings(**{k: v for k, v in given.items() if v is not None})


def _run_eval_bag(args) -> int:
    from lightmer.evaluation.evaluate import EvalConfig, evaluate_bag

    settings = _stream_settings(args)
    evaluate = evaluate_bag
    if args.live:           # the live implementation is the only one that needs rclpy
        from lightmer.harness.live_eval import evaluate_bag_live as evaluate

        _keep_dds_on_loopback()
    cfg = EvalConfig(bag=args.bag, labels=args.labels, checkpoint=args.checkpoint,
                     live=args.live, out=args.out, image_topic=args.image_topic,
                     audio_topic=args.audio_topic, audio_info_topic=args.audio_info_topic,
                     settings=settings, rate=args.rate,
                     one_participant=args.one_participant, people=args.people,
                     audio_to=args.audio_to)
    result = evaluate(cfg)
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


# --- pool / query / finetune (learning from the robot's own recordings) ----------------------
def _add_pool(sub) -> None:
    p = sub.add_parser('pool', help="replay a robot's bags through the nodes' processors and "
                       'store their segments and windows for labelling')
    p.add_argument('--bag', type=Path, nargs='+', required=True, help='rosbag2 directories')
    p.add_argument('--checkpoint', type=Path, required=True,
                   help='model whose features and segment grid the pool uses (a checkpoint '
                   '.pt or its ONNX export .onnx)')
    p.add_argument('--out', type=Path, required=True,
                   help='pool directory (created, or extended with new bags)')
    _add_replay_options(p)
    p.add_argument('--json', action='store_true')


def _run_pool(args) -> int:
    from lightmer.active.pool import PoolConfig, build_pool
    from lightmer.evaluation.bags import BagTopics

    summary = build_pool(PoolConfig(
        bags=tuple(args.bag), checkpoint=args.checkpoint, out=args.out,
        topics=BagTopics(args.image_topic, args.audio_topic, args.audio_info_topic),
        settings=_stream_settings(args)))
    if args.json:
        _print_json(summary)
    else:
        rate = summary['recording_s_per_s']
        print(f"{summary['pool']}: added {len(summary['added'])} recording(s), skipped "
              f"{len(summary['skipped'])} already pooled; {summary['segments']} segments, "
              f"{summary['windows']} windows from {summary['recording_s']:.1f} s of recording"
              + (f' ({rate:.2f} s of recording per second)' if rate else ''))
    return 0


def _add_query(sub) -> None:
    p = sub.add_parser('query', help='pick the pooled windows people should label next')
    p.add_argument('--pool', type=Path, required=True)
    p.add_argument('--checkpoint', type=Path, required=True)
    p.add_argument('--n', type=_positive_int, required=True, help='windows to pick')
    p.add_argument('--strategy', choices=STRATEGIES, default=DEFAULT_STRATEGY,
                   help='which windows to ask (docs/ACTIVE_LEARNING.md); default staged: '
                   'typical (cold start) with no label yet, then cluster-margin')
    p.add_argument('--labels', type=Path, default=None,
                   help='answers file: no window sharing a segment with one answered there '
                   'is picked')
    p.add_argument('--out', type=Path, default=None,
                   help='batch manifest (default: POOL/batches/<time>-<strategy>.json)')
    p.add_argument('--max-per-recording', type=_positive_int, default=None,
                   help='most picks from one recording (default: twice its fair share)')
    p.add_argument('--seed', type=int, default=0,
                   help='seed of the draws: random, and the k-means starts of the embedding '
                   'strategies')
    p.add_argument('--export', nargs=2, metavar=('FORMAT', 'DIR'), default=None,
                   help="also write the batch for another tool: 'label-studio DIR' (tasks "
                   'with pre-annotations, labelling config, media files)')
    p.add_argument('--export-url-prefix', default=None,
                   help="URL prefix of the exported media in the tasks (default: Label "
                   "Studio's local files, /data/local-files/?d=<DIR name>/)")
    p.add_argument('--json', action='store_true')


def _run_query(args) -> int:
    from lightmer.active.query import QueryConfig, run_query
    from lightmer.labelling.label_studio import export_tasks

    if args.export is not None and args.export[0] != 'label-studio':
        raise ValueError(f"--export knows 'label-studio' only, got {args.export[0]!r}")
    manifest = run_query(QueryConfig(
        pool=args.pool, checkpoint=args.checkpoint, n=args.n, strategy=args.strategy,
        answers=args.labels, out=args.out, seed=args.seed,
        max_per_recording=args.max_per_recording))
    if args.export is not None:
        manifest['export'] = export_tasks(manifest, args.export[1], args.export_url_prefix)
        if not args.json:
            print(f"Label Studio: {manifest['export']['n']} tasks in "
                  f"{manifest['export']['tasks']}, config {manifest['export']['config']}")
    if args.json:
        _print_json(manifest)
        return 0
    print(f"{manifest['n_selected']} of {manifest['candidates']} unanswered windows "
          f"({manifest['score']}); batch in {manifest['path']}")
    for item in manifest['items']:
        print(f"  {item['window_id']:<40} {manifest['score']} {item['score']:.3f}  "
              f"predicted {item['predicted']}")
    return 0


def _add_label(sub) -> None:
    p = sub.add_parser('label', help='a local web page to answer a batch of windows with the '
                       'keyboard')
    p.add_argument('--pool', type=Path, required=True)
    p.add_argument('--batch', type=Path, default=None,
                   help='batch manifest of `lightmer query` (default: the newest in '
                   'POOL/batches)')
    p.add_argument('--labels', type=Path, default=None,
                   help="answers file the answers go to, the one `finetune --labels` reads "
                   "(default: the batch's answers file, else POOL/answers.csv)")
    p.add_argument('--who', default=os.environ.get('USER', ''),
                   help='name written with each answer (default: $USER)')
    p.add_argument('--host', default='127.0.0.1',
                   help='address to listen on (default 127.0.0.1: this machine only)')
    p.add_argument('--port', type=int, default=8765, help='0: any free port')


def _run_label(args) -> int:
    from lightmer.labelling.server import (
        LabelSession,
        is_loopback,
        load_batch,
        make_server,
        newest_batch,
    )

    if not 0 <= args.port <= 65535:
        raise ValueError(f'--port must be 0..65535 (0: any free port), got {args.port}')
    batch = args.batch or newest_batch(args.pool)
    answers = args.labels
    if answers is None:
        answers = Path(load_batch(batch).get('answers_file') or args.pool / 'answers.csv')
    session = LabelSession(args.pool, batch, answers, args.who)
    server = make_server(session, args.host, args.port)
    if not is_loopback(args.host):
        print(f'warning: listening on {args.host}: anyone who reaches this address can read '
              'the recordings and write answers', file=sys.stderr)
    host, port = server.server_address[:2]
    print(f'labelling {len(session.items)} windows of {batch} into {answers}')
    print(f'open http://{host}:{port}/  (Ctrl-C to stop; every answer is already saved)',
          flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0


def _add_import_labels(sub) -> None:
    p = sub.add_parser('import-labels', help="read answers given in another tool into the "
                       'answers file')
    p.add_argument('--label-studio', type=Path, required=True, metavar='EXPORT.json',
                   help='a Label Studio JSON export of tasks from `query --export label-studio`')
    p.add_argument('--pool', type=Path, required=True)
    p.add_argument('--labels', type=Path, required=True, help='answers file to append to')
    p.add_argument('--json', action='store_true')


def _run_import_labels(args) -> int:
    from lightmer.labelling.label_studio import import_export

    summary = import_export(args.label_studio, args.pool, args.labels)
    if args.json:
        _print_json(summary)
    else:
        print(f"{summary['written']} new answer(s) in {summary['answers_file']} from "
              f"{summary['tasks']} task(s): {summary['answered']} answered, "
              f"{summary['cancelled']} skipped in Label Studio, {summary['unanswered']} open")
    return 0


def _add_adapt(sub) -> None:
    p = sub.add_parser('adapt', help="adapt a model to a robot's recordings without labels "
                       "(BatchNorm statistics re-estimated on the pool's segments)")
    p.add_argument('--checkpoint', type=Path, required=True, help='model to adapt (.pt)')
    p.add_argument('--pool', type=Path, required=True,
                   help='pool of the robot\'s recordings (with --bag: created or extended)')
    p.add_argument('--bag', type=Path, nargs='+', default=(),
                   help='rosbag2 directories to pool first (recordings already pooled are kept)')
    p.add_argument('--exclude', nargs='+', default=(),
                   help='held-out recordings (ids or bag paths): their segments are never read')
    p.add_argument('--out', type=Path, required=True, help='the adapted checkpoint (.pt)')
    p.add_argument('--seed', type=int, default=0, help='order of the segments in batches')
    _add_replay_options(p)
    p.add_argument('--json', action='store_true')


def _run_adapt(args) -> int:
    from lightmer.active.adapt import AdaptConfig, adapt
    from lightmer.evaluation.bags import BagTopics

    summary = adapt(AdaptConfig(
        checkpoint=args.checkpoint, pool=args.pool, out=args.out, bags=tuple(args.bag),
        exclude=tuple(args.exclude), settings=_stream_settings(args) if args.bag else None,
        topics=BagTopics(args.image_topic, args.audio_topic, args.audio_info_topic),
        seed=args.seed))
    if args.json:
        _print_json(summary)
    else:
        print(f"{summary['checkpoint']}: BatchNorm statistics from {summary['segments']} "
              f"segments of {len(summary['recordings'])} recording(s), "
              f"{len(summary['excluded'])} held out; {summary['seconds']['total']:.1f} s")
    return 0


def _add_finetune(sub) -> None:
    p = sub.add_parser('finetune', help='continue training on pooled windows people labelled '
                       '(Algorithm 1 with a human oracle)')
    p.add_argument('--checkpoint', type=Path, required=True, help='model to start from')
    p.add_argument('--pool', type=Path, required=True)
    p.add_argument('--labels', type=Path, required=True,
                   help='answers file (window_id,label,who,when); new answers are appended')
    p.add_argument('--out', type=Path, required=True, help='run directory')
    p.add_argument('--base-cache', type=Path, default=None,
                   help='the training cache of the checkpoint, mixed in against forgetting')
    p.add_argument('--mix', type=float, default=1.0,
                   help='base-cache clips per labelled window in each pass (0: none)')
    p.add_argument('--rounds', type=int, default=1,
                   help='query-answer-train rounds (0: train on the answers given so far)')
    p.add_argument('--per-round', type=_positive_int, default=12, help='windows asked per round')
    p.add_argument('--strategy', choices=STRATEGIES, default=DEFAULT_STRATEGY,
                   help='which windows to ask (docs/ACTIVE_LEARNING.md); default staged: '
                   'typical (cold start) with no label yet, then cluster-margin')
    p.add_argument('--oracle', choices=ORACLES, default='answers',
                   help="who answers: 'answers' = people, through the answers file; "
                   "'bag-labels' = each bag's labels CSV (scripted runs, simulations)")
    p.add_argument('--eval-windows', type=int, default=40,
                   help='held-out windows for the before/after accuracy (0: none)')
    p.add_argument('--eval-recordings', nargs='+', default=(),
                   help='hold out these recordings (ids or bag paths) whole for evaluation')
    p.add_argument('--steps', type=_positive_int, default=40,
                   help='optimiser steps per round; every round starts again from the '
                   'adapted model')
    p.add_argument('--batch-size', type=_positive_int, default=8)
    p.add_argument('--lr', type=_positive_float, default=1e-4)
    p.add_argument('--l2sp', type=float, default=0.01,
                   help="weight of the squared distance from the adapted model's weights")
    p.add_argument('--tune', default='all',
                   help="what a round trains: 'all' weights, or 'head-bn' (the head and "
                   "BatchNorm's scales and shifts)")
    p.add_argument('--folds', type=_non_negative_int, default=3,
                   help='cross-validation folds over the answers that decide whether a '
                   'round is kept (0: keep every round)')
    p.add_argument('--keep-margin', type=_non_negative_int, default=0,
                   help='answers by which the cross-validated round must beat the adapted '
                   'model to be kept (0: a tie keeps it)')
    p.add_argument('--no-adapt', action='store_true',
                   help="round 0 keeps the base model's BatchNorm statistics (no adaptation)")
    p.add_argument('--max-per-recording', type=_positive_int, default=None)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--resume', action='store_true')
    p.add_argument('--json', action='store_true')


def _run_finetune(args) -> int:
    from lightmer.active.finetune import AnswersNeededError, FinetuneConfig, finetune

    try:
        report = finetune(FinetuneConfig(
            checkpoint=args.checkpoint, pool=args.pool, answers=args.labels, out=args.out,
            base_cache=args.base_cache, mix=args.mix, rounds=args.rounds,
            per_round=args.per_round, strategy=args.strategy, oracle=args.oracle,
            eval_windows=args.eval_windows, eval_recordings=tuple(args.eval_recordings),
            steps=args.steps, batch_size=args.batch_size, lr=args.lr, l2sp=args.l2sp,
            tune=args.tune, folds=args.folds, keep_margin=args.keep_margin,
            adapt=not args.no_adapt,
            max_per_recording=args.max_per_recording, seed=args.seed, resume=args.resume))
    except AnswersNeededError as e:      # not an error: people have a batch to answer
        print(f'lightmer finetune: {e}', file=sys.stderr)
        return EXIT_WAITING_FOR_ANSWERS
    if args.json:
        _print_json(report)
        return 0

    def fmt(x):
        return 'n/a' if x is None else f'{x:.3f}'

    print(f"held-out accuracy {fmt(report['before']['accuracy'])} -> "
          f"{fmt(report['after']['accuracy'])} on {report['after']['windows']} windows, "
          f"{report['labels_used']} labelled windows, {report['rounds_done']} round(s); "
          f"checkpoint {report['checkpoint']}")
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
    from lightmer.ros.description import resolve

    values = {'use_sim_time': 'true' if args.use_sim_time else None,
              'respawn': None if args.respawn is None else str(args.respawn).lower()}
    for name in ('params_file', 'model', 'camera_topic', 'audio_topic', 'audio_info_topic',
                 'audio_msg', 'namespace', 'respawn_delay'):
        values[name] = getattr(args, name)
    values = {k: str(v) for k, v in values.items() if v is not None}
    resolve(values)       # bad arguments (names, params file): one line and exit 2, before ROS
    return run_bringup(values)


def _add_demo(sub) -> None:
    p = sub.add_parser('demo', help='the whole system end to end on generated data')
    p.add_argument('--out', type=Path, default=Path('demo-out'))
    p.add_argument('--quick', action='store_true', help='smaller corpus, fewer epochs')
    p.add_argument('--robot', action='store_true',
                   help="also fine-tune the demo's model on a simulated robot's own people "
                   '(pool, query, finetune; a few minutes more)')
    p.add_argument('--json', action='store_true')


def _run_demo(args) -> int:
    from lightmer.experiments.demo import run_demo

    _keep_dds_on_loopback()
    result = run_demo(args.out, quick=args.quick, robot=args.robot)
    if args.json:
        _print_json(result)
    return 0


def _add_simulate_robot(sub) -> None:
    p = sub.add_parser('simulate-robot', help="evidence: adaptation and learning curves per "
                       "selection strategy over replicates of a simulated robot's people")
    p.add_argument('--out', type=Path, default=Path('robot-sim'),
                   help='directory (an interrupted run continues where it stopped)')
    p.add_argument('--quick', action='store_true',
                   help='one draw of 3 people, one training seed, default vs random to 24')
    p.add_argument('--base-from', type=Path, default=None,
                   help="a `lightmer demo` output directory whose model and cache to start "
                   'from (default: train base models first)')
    p.add_argument('--draws', type=_non_negative_int, nargs='+', default=None,
                   help='people draws (default 2 3 4 5 6; 0 and 1 are development draws)')
    p.add_argument('--training-seeds', type=int, nargs='+', default=None,
                   help='base model training seeds (default 0 1)')
    p.add_argument('--strategies', nargs='+', choices=STRATEGIES, default=None,
                   help='selection strategies (default: the default one, uncertainty, '
                   'margin, random)')
    p.add_argument('--budgets', type=_positive_int, nargs='+', default=None,
                   help='labelled windows at which accuracy is reported, multiples of 12 '
                   '(default 12 24 48)')
    p.add_argument('--adapt-only', action='store_true',
                   help='the 0-label points alone (base and adapted), no fine-tuning')
    p.add_argument('--variant', default='default',
                   help='fine-tuning settings: default, head-bn or keep1 (robot_sim.VARIANTS, '
                   'compared on the development draws 0 1; a variant writes '
                   'robot_sim_<variant>.json)')
    p.add_argument('--json', action='store_true')


def _run_simulate_robot(args) -> int:
    from lightmer.experiments.robot_sim import simulate_robot

    result = simulate_robot(args.out, quick=args.quick, base_from=args.base_from,
                            draws=args.draws, training_seeds=args.training_seeds,
                            strategies=() if args.adapt_only else args.strategies,
                            budgets=args.budgets, variant=args.variant)
    if args.json:
        _print_json(result)
    return 0


def _add_robust_study(sub) -> None:
    p = sub.add_parser('robust-study', help='evidence: zero-label accuracy of training recipes '
                       "(paper, augmentation, modality dropout) on a simulated robot's people, "
                       'unseen studio actors and a second shift')
    p.add_argument('--out', type=Path, default=Path('robust-study'),
                   help='directory (an interrupted run continues where it stopped)')
    p.add_argument('--size', choices=('full', 'quick'), default='full',
                   help='full: 3 seeds x 5 draws of 3 people, 20 epochs; quick: 1 seed, 1 '
                        'draw of 2 people, 8 epochs')
    p.add_argument('--seeds', type=int, nargs='+', default=None,
                   help="training seeds (default: the size's)")
    p.add_argument('--draws', type=_positive_int, default=None,
                   help="people draws per shift (default: the size's)")
    p.add_argument('--recipes', nargs='+', default=None,
                   help='recipes among paper, augment, augment_dropout, augment_face, '
                        'augment_audio, paper_dbnorm, augment_dbnorm (default: the first three)')
    p.add_argument('--json', action='store_true')


def _run_robust_study(args) -> int:
    from lightmer.experiments.robust_study import run_study, size_with

    size = size_with(args.size, seeds=args.seeds, draws=args.draws, recipes=args.recipes)
    report = run_study(args.out, size)
    if args.json:
        _print_json(report)
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
    'pool': (_add_pool, _run_pool),
    'query': (_add_query, _run_query),
    'label': (_add_label, _run_label),
    'import-labels': (_add_import_labels, _run_import_labels),
    'adapt': (_add_adapt, _run_adapt),
    'finetune': (_add_finetune, _run_finetune),
    'bringup': (_add_bringup, _run_bringup),
    'demo': (_add_demo, _run_demo),
    'simulate-robot': (_add_simulate_robot, _run_simulate_robot),
    'robust-study': (_add_robust_study, _run_robust_study),
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
