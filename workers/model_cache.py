"""The model a worker process holds: loaded once per process, after the fork, and reused by every chunk.

CUDA must not be touched in the parent of a prefork pool (a forked child cannot use its context), so loading
happens in `worker_process_init`, which runs in each child; a threads or solo pool runs tasks in the worker's
own process, which loads it when it is ready. A job asking for another model, dtype or backend replaces the held
one: a GPU's memory holds one model at a time.

The pool over it: in a threads pool one SharedPool, whose slot pool every chunk task of the process feeds
(slots stay full across chunks); in a prefork or solo pool, where a process runs one task at a time, a
SoloPool in the task's thread.

Settings (dreamgen.settings): DREAMGEN_MODEL / DREAMGEN_DTYPE / DREAMGEN_BACKEND (what to preload),
DREAMGEN_WORKER_DEVICE (cpu, cuda; `dreamgen worker --gpus` pins each process to one GPU, which it sees as cuda:0),
DREAMGEN_WORKER_PRELOAD=0 for processes that only finalize.
"""
from __future__ import annotations

import gc
import logging
import threading
import time

from celery.signals import worker_process_init, worker_ready

from dreamgen import settings

log = logging.getLogger(__name__)

_held: tuple[tuple, object] | None = None  # ((model, dtype, device, backend), pool)
_loading = threading.Lock()  # task threads of a threads pool ask at once


def pool_key(model: str, dtype: str, device: str, backend: str = "torch") -> tuple:
    """What tells two pools apart: the dtype as it resolves on the device (auto and fp32 are one model on a
    CPU, so a job that says fp32 must not reload the one preloaded as auto)."""
    import torch

    from dreamgen.model.checkpoint import resolve_dtype

    return model, resolve_dtype(dtype, torch.device(device)), device, backend


def pool_for(model: str, dtype: str, device: str, backend: str = "torch"):
    """The pool for this key: the held one, or one over a newly loaded model that replaces it. The one it
    replaces is closed first (its chunks in flight end, its thread is joined) and freed: a worker holds one
    model at a time, whatever the number of switches."""
    global _held
    key = pool_key(model, dtype, device, backend)
    with _loading:
        if _held is not None and _held[0] == key:
            return _held[1]
        if _held is not None:
            (old_model, *_), old = _held
            _held = None
            started = time.perf_counter()
            old.close()
            del old
            _release_memory(device)
            log.info("released %s in %.1f s, for %s", old_model, time.perf_counter() - started, model)
        from dreamgen.distributed.pool import SharedPool, SoloPool
        from dreamgen.jobs.run import load_generator

        started = time.perf_counter()
        generator = load_generator(model, key[1], device, backend)
        slots = settings.worker_slots()
        pool = (SharedPool if settings.worker_pool() == "threads" else SoloPool)(generator, slots)
        log.info("loaded %s (%s, %s, %s) in %.1f s; %s with %d slots", model, key[1], device, backend,
                 time.perf_counter() - started, type(pool).__name__, slots or generator.slots)
        _held = (key, pool)
        return pool


class HeldPool:
    """A chunk's handle on its model: runs the chunk's items on the pool held for that key when they are
    queued. Another task thread may have replaced (closed) the pool between the load and then; nothing was
    queued on it, so the model is asked for again."""

    def __init__(self, key: tuple):
        self.key = key

    def run_items(self, items, keepalive=None) -> None:
        from dreamgen.distributed.pool import PoolClosed

        while True:
            try:
                return pool_for(*self.key).run_items(items, keepalive=keepalive)
            except PoolClosed:
                continue


def pool_for_job(job) -> HeldPool:
    """A job's model on this worker's device (the submitter does not know the workers' hardware), loaded now."""
    config = job.config
    key = (config.model, config.dtype, settings.worker_device(), config.backend)
    pool_for(*key)
    return HeldPool(key)


@worker_process_init.connect
def preload_in_pool_process(**_):
    preload_model()


@worker_ready.connect
def preload_in_worker(**_):
    if settings.worker_pool() != "prefork":  # a prefork parent must never touch the model (or CUDA)
        preload_model()


def preload_model():
    if not settings.worker_preload():
        return
    try:
        pool_for(settings.MODEL.get(), settings.DTYPE.get(), settings.worker_device(), settings.BACKEND.get())
    except Exception:  # a chunk will try again and record the error on its documents
        log.exception("could not preload the model")


def _release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch
        torch.cuda.empty_cache()
