"""`lightmer train --fold all --parallel N`: the folds of one run as N processes at a time.

Each fold is an independent job (its own split, model and files under RUN/<strategy>/fold_K),
so folds parallelise without any communication: N spawned processes, each training one fold
with `train.train` and then taking the next, with the CPU cores split between them and, on
GPUs, one visible device per process (round robin over the visible ones). When they are done,
`train.summarize_run` merges whatever folds finished; a fold that fails is reported and does
not stop the others.

On a cluster the same split is one job per fold (`lightmer train --fold K`, e.g. an array
job) and `lightmer merge-folds --out RUN` at the end.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import sys
from multiprocessing.connection import wait

import torch
from tqdm import tqdm

from lightmer.training.distributed import launched_ranks
from lightmer.training.train import TrainConfig, claim_run_dir, plan_run, summarize_run, train


def _visible_gpus() -> list[str]:
    """Device ids a child may be given in CUDA_VISIBLE_DEVICES, honouring the parent's."""
    visible = os.environ.get('CUDA_VISIBLE_DEVICES')
    if visible is not None:
        return [d for d in visible.split(',') if d.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _fold_job(cfg: TrainConfig, threads: int, gpu: str | None) -> None:
    """Child process: one fold, `threads` torch threads, one GPU when given."""
    if gpu is not None:   # before the child's first CUDA call, which reads it
        os.environ['CUDA_VISIBLE_DEVICES'] = gpu
    torch.set_num_threads(threads)
    train(cfg)


def train_folds_in_parallel(cfg: TrainConfig, parallel: int) -> dict:
    """Train every fold of `cfg` (cfg.fold must be None), `parallel` processes at a time.

    -> summarize_run's merge of the finished folds plus 'failed_folds' (fold -> exit code).
    """
    if cfg.fold is not None:
        raise ValueError('--parallel trains several folds at once; use it with --fold all')
    if parallel < 1:
        raise ValueError(f'--parallel must be >= 1, got {parallel}')
    if launched_ranks().active:
        raise ValueError('--parallel starts its own processes and cannot run under torchrun; '
                         'under torchrun the ranks share each fold instead')
    _, _, plans = plan_run(cfg)    # cache and settings errors before any process starts
    claim_run_dir(cfg)
    gpus = _visible_gpus() if cfg.device == 'cuda' else []
    if cfg.device == 'cuda' and not gpus:
        raise ValueError('--device cuda was asked for but no GPU is visible; use --device cpu')
    threads = max(1, len(os.sched_getaffinity(0)) // parallel)
    ctx = multiprocessing.get_context('spawn')   # children start clean: no inherited threads
    waiting = list(plans)
    running: dict = {}                           # process sentinel -> (fold, process, slot)
    free_slots = list(range(min(parallel, len(waiting))))
    failed: dict[int, int] = {}
    bar = tqdm(total=len(waiting), desc=f'folds ({parallel} at a time)', unit='fold',
               disable=not cfg.progress)
    try:
        while waiting or running:
            while waiting and free_slots:
                fold, slot = waiting.pop(0), free_slots.pop(0)
                gpu = gpus[slot % len(gpus)] if gpus else None
                job = dataclasses.replace(cfg, fold=fold, progress=False)
                proc = ctx.Process(target=_fold_job, args=(job, threads, gpu),
                                   name=f'lightmer-fold-{fold}')
                proc.start()
                running[proc.sentinel] = (fold, proc, slot)
            for sentinel in wait(list(running)):
                fold, proc, slot = running.pop(sentinel)
                proc.join()
                if proc.exitcode != 0:
                    failed[fold] = proc.exitcode
                    print(f'lightmer train: fold {fold} failed (exit code {proc.exitcode}); '
                          'its error is above; the other folds go on', file=sys.stderr)
                free_slots.append(slot)
                bar.update()
    finally:
        bar.close()
        for _, proc, _ in running.values():   # interrupted: stop the folds still running
            proc.terminate()
            proc.join()
    summary = summarize_run(cfg.out)
    return {**summary, 'failed_folds': failed}
