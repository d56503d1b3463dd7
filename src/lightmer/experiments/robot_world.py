"""The simulated robot's world, shared by the experiments that measure learning: studio base
models trained with a recipe and a seed, independent draws of the robot's people recorded under
a domain shift, their sessions pooled, any model scored on them, and intervals over replicates.

Replicates. A *draw* is a new set of the robot's people (other generated actors, other clips):
its pool session and its held-out session are recorded under one `DomainShift` and laid into
bags, one per person and session, as `make-bag` lays a robot's recordings. Draws of one shift
use disjoint actor index ranges, so no person appears in two draws; the draw's number also seeds
the corpus. A *training seed* varies the base model (its folds, initialisation, batches and
draws). Studio actors (indices below `PEOPLE_FIRST_ACTOR`) never appear among the people.

Everything is written under one directory and kept: a stage whose output exists is not run
again, so an interrupted experiment continues where it stopped.

Scoring. A draw's sessions are pooled once per feature configuration (the nodes' own
processing through `active.pool`: MTCNN crops and log-mels per segment, the windows the fusion
node publishes); a model is then scored on the pooled segments without running MTCNN again,
which gives the same windows and probabilities as `eval-bag` offline (tested in test_pool).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from lightmer.active.pool import Pool, PoolConfig, build_pool, recording_id
from lightmer.active.query import pool_probs, segment_scorer
from lightmer.core.atomic_io import atomic_save_json
from lightmer.core.backend import read_meta
from lightmer.datasets.loaders import index_dataset
from lightmer.datasets.prepare import prepare
from lightmer.datasets.synth import DomainShift, synthesize
from lightmer.evaluation import bags
from lightmer.evaluation.bag_corpus import make_bag
from lightmer.evaluation.scoring import score
from lightmer.stream.settings import StreamSettings
from lightmer.training.train import TrainConfig, train

DATASET = 'crema-d'
# The robot's people are actors from this index on: never one of a studio corpus's actors.
PEOPLE_FIRST_ACTOR = 40
# CREMA-D's layout holds actors 0..90 (ids 1001..1091).
LAST_ACTOR = 90


@dataclass(frozen=True)
class WorldSize:
    """How big the simulated world is (the studio corpus, the people of one draw)."""

    base_actors: int = 10     # studio actors of a base model (the demo's corpus)
    base_clips: int = 2       # per studio actor and emotion
    base_epochs: int = 20
    base_lr: float = 3e-4     # the demo's recipe for the generated corpus (demo.DemoSize)
    base_batch: int = 4
    people: int = 4           # the robot's people per draw
    pool_clips: int = 3       # per person and emotion, in the pool session
    eval_clips: int = 4       # per person and emotion, in the held-out session
    min_segments: int = 3     # as the demo's bag evaluation: generated clips last 1.4-3.2 s
    gap_s: float = 1.0        # silence and grey frames between clips in a bag


@dataclass(frozen=True)
class BaseModel:
    checkpoint: Path
    cache: Path
    train_clips: tuple[str, ...]
    test_clips: tuple[str, ...]      # the studio actors the model never saw


@dataclass(frozen=True)
class Draw:
    shift: str
    number: int
    people: tuple[str, ...]          # actor ids
    pool_bags: tuple[Path, ...]
    eval_bags: tuple[Path, ...]

    @property
    def bags(self) -> tuple[Path, ...]:
        return self.pool_bags + self.eval_bags

    @property
    def eval_recordings(self) -> tuple[str, ...]:
        return tuple(recording_id(b) for b in self.eval_bags)


# --- the studio ------------------------------------------------------------------------------
def studio_cache(root: Path, size: WorldSize) -> Path:
    """The studio corpus (seed 0, actors 0 .. base_actors-1) prepared as a training cache."""
    cache = root / 'studio' / 'cache'
    if not (cache / 'index.json').is_file():
        corpus = root / 'studio' / 'corpus'
        print(synthesize(DATASET, corpus, actors=size.base_actors,
                         clips_per_emotion=size.base_clips, seed=0))
        print(prepare(DATASET, corpus, cache, workers=None))
    return cache


def base_model(root: Path, size: WorldSize, recipe: str, seed: int,
               overrides: dict | None = None) -> BaseModel:
    """A base model trained on the studio corpus with `recipe` (a name for TrainConfig
    `overrides`, e.g. augmentation settings) and training seed `seed`: fold 0 of the
    actor-disjoint folds, the full training set (strategy 'full'), the demo's recipe otherwise.
    The run directory records the overrides; asking for the same name with others fails."""
    cache = studio_cache(root, size)
    run = root / 'base' / f'{recipe}_seed{seed}'
    recorded = run / 'recipe.json'
    overrides = dict(overrides or {})
    if recorded.is_file() and json.loads(recorded.read_text('utf-8')) != overrides:
        raise ValueError(f'{run} was trained with other settings than recipe {recipe!r} now '
                         'names; use another recipe name or remove the directory')
    fold = run / 'full' / 'fold_0'
    if not (fold / 'result.json').is_file():
        run.mkdir(parents=True, exist_ok=True)
        atomic_save_json(recorded, overrides)
        train(TrainConfig.for_dataset(
            DATASET, cache=cache, out=run, strategy='full', fold=0, epochs=size.base_epochs,
            lr=size.base_lr, batch_size=size.base_batch, seed=seed, resume=True,
            progress=False, **overrides))
    split = json.loads((fold / 'split.json').read_text(encoding='utf-8'))
    return BaseModel(fold / 'last.pt', cache, tuple(split['clips']['d0'] + split['clips']['pool']),
                     tuple(split['clips']['test']))


# --- the robot's people ----------------------------------------------------------------------
def people_draw(root: Path, size: WorldSize, shift_name: str, shift: DomainShift | None,
                number: int, first_actor: int = PEOPLE_FIRST_ACTOR) -> Draw:
    """Draw `number` of the robot's people under `shift`: actors first_actor + number * people
    onwards, corpus seed 1000 + number; a pool and a held-out session per person, as bags."""
    start = first_actor + number * size.people
    if start < PEOPLE_FIRST_ACTOR or start + size.people - 1 > LAST_ACTOR:
        raise ValueError(f'draw {number} of {size.people} people from actor {first_actor} '
                         f'leaves actors {PEOPLE_FIRST_ACTOR}..{LAST_ACTOR}')
    out = root / 'people' / f'{shift_name}_draw{number}'
    done = out / 'draw.json'
    if done.is_file():
        d = json.loads(done.read_text(encoding='utf-8'))
        return Draw(shift_name, number, tuple(d['people']),
                    tuple(Path(p) for p in d['pool']), tuple(Path(p) for p in d['eval']))
    corpus = out / 'corpus'
    print(synthesize(DATASET, corpus, actors=size.people,
                     clips_per_emotion=size.pool_clips + size.eval_clips, seed=1000 + number,
                     first_actor=start, shift=shift))
    roots = split_sessions(corpus, out / 'sessions', size.eval_clips)
    people = tuple(str(1001 + start + i) for i in range(size.people))
    made: dict[str, list[str]] = {'pool': [], 'eval': []}
    shutil.rmtree(out / 'bags', ignore_errors=True)
    for session, session_root in roots.items():
        for person in people:
            bag = out / 'bags' / f'{session}_{person}'
            print(make_bag(DATASET, session_root, bag, actors=[person], gap_s=size.gap_s))
            made[session].append(str(bag))
    atomic_save_json(done, {'people': list(people), 'shift': _shift_dict(shift), **made})
    return people_draw(root, size, shift_name, shift, number, first_actor)


def _shift_dict(shift: DomainShift | None) -> dict | None:
    return None if shift is None else asdict(shift)


def split_sessions(corpus: Path, out: Path, eval_clips: int) -> dict[str, Path]:
    """Split a people corpus into a pool session and a held-out session (CREMA-D layout roots
    of symbolic links): per person and emotion the last `eval_clips` clips by id are held out."""
    records, _ = index_dataset(DATASET, corpus)
    groups: dict[tuple[str, str], list] = {}
    for r in records:
        groups.setdefault((r.actor, r.label), []).append(r)
    roots = {'pool': out / 'pool', 'eval': out / 'eval'}
    for root in roots.values():
        shutil.rmtree(root, ignore_errors=True)
        (root / 'VideoFlash').mkdir(parents=True)
        (root / 'AudioWAV').mkdir(parents=True)
    for clips in groups.values():
        clips = sorted(clips, key=lambda r: r.clip_id)
        for i, r in enumerate(clips):
            root = roots['eval' if i >= len(clips) - eval_clips else 'pool']
            for src in (r.video_path, r.audio_path):
                (root / src.parent.name / src.name).symlink_to(src.resolve())
    return roots


# --- pooling and scoring ---------------------------------------------------------------------
def pooled(root: Path, draw: Draw, checkpoint: Path, settings: StreamSettings) -> Pool:
    """The draw's sessions pooled through the nodes' processing with the features of
    `checkpoint` and `settings`; one pool per (features, N, T, settings), shared by every model
    of that configuration (the segments do not depend on the weights)."""
    meta = read_meta(checkpoint)
    key = hashlib.sha1(json.dumps(
        {'features': meta.features.to_dict(), 'n': meta.n_segments, 't': meta.segment_s,
         'settings': asdict(settings)}, sort_keys=True).encode()).hexdigest()[:10]
    path = root / 'pools' / f'{draw.shift}_draw{draw.number}_{key}'
    if not (path / 'pool.json').is_file() or len(Pool(path).recording_ids) < len(draw.bags):
        build_pool(PoolConfig(bags=draw.bags, checkpoint=checkpoint, out=path,
                              settings=settings))
    return Pool(path)


def score_on_pool(pool: Pool, checkpoint: Path, recordings: Sequence[str] | None = None,
                  probs: np.ndarray | None = None) -> dict:
    """Window and clip accuracy of `checkpoint` on the pool's windows of `recordings` (default:
    all), each against its bag's labels CSV. `probs` (W, C): window probabilities computed
    elsewhere (a model in memory, a modality left out) instead of the checkpoint's."""
    if probs is None:
        meta, logits_of, fuse = segment_scorer(checkpoint)
        pool.check_checkpoint(meta, checkpoint)
        probs = pool_probs(pool, logits_of, fuse)
    labels = read_meta(checkpoint).labels
    table = pool.table
    per_rec = []
    for rec in recordings if recordings is not None else pool.recording_ids:
        info = pool.recording(rec)
        rows = bags.read_labels(bags.default_labels_path(info['bag']), info['bag_start_ns'] / 1e9)
        mine = table.rec == table.rec_ids.index(rec)
        per_rec.append(score(table.t_ref[mine], probs[mine], rows, labels))
    return _pooled_scores(per_rec)


def _pooled_scores(results: list[dict]) -> dict:
    """Recordings' scores merged: accuracies over all scored windows and all clips."""
    windows = sum(r['windows_scored'] for r in results)
    clips = sum(r['clips'] for r in results)
    return {
        'window_accuracy': (sum((r['window_accuracy'] or 0.0) * r['windows_scored']
                                for r in results) / windows) if windows else None,
        'clip_accuracy': (sum((r['clip_accuracy'] or 0.0) * r['clips'] for r in results)
                          / clips) if clips else None,
        'windows_scored': windows, 'clips': clips,
        'clips_without_windows': sum(r['clips_without_windows'] for r in results)}


# --- intervals over replicates ---------------------------------------------------------------
def interval(values: Sequence[float], level: float = 0.90) -> dict:
    """Mean and its `level` confidence interval over independent replicates (Student's t;
    the replicates are the unit of the interval, never the windows inside one)."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {'mean': None, 'low': None, 'high': None, 'n': 0}
    mean = float(v.mean())
    if v.size == 1:
        return {'mean': mean, 'low': None, 'high': None, 'n': 1}
    half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
    return {'mean': mean, 'low': mean - half, 'high': mean + half, 'n': int(v.size)}


def paired_interval(a: Sequence[float], b: Sequence[float], level: float = 0.90) -> dict:
    """The interval of the mean difference a - b over replicates measured on the same data."""
    if len(a) != len(b):
        raise ValueError('paired replicates need equal lengths')
    return interval([x - y for x, y in zip(a, b, strict=True)], level)
