"""The model a worker process holds: loaded once per process, after the fork, and reused by every chunk.

CUDA must not be touched in the parent of a prefork pool (a forked child cannot use its context), so loading
happens in `worker_process_init`, which runs in each child. A job asking for another model, dtype or backend
replaces the held one: a GPU's memory holds one model at a time.

Settings (dreamgen.settings): DREAMGEN_MODEL / DREAMGEN_DTYPE / DREAMGEN_BACKEND (what to preload),
DREAMGEN_WORKER_DEVICE (cpu, cuda; `dreamgen worker --gpus` pins each process to one GPU, which it sees as cuda:0),
DREAMGEN_WORKER_PRELOAD=0 for processes that only finalize.
"""
from __future__ import annotations

import gc
import logging
import time

from celery.signals import worker_process_init

from dreamgen import settings

log = logging.getLogger(__name__)

_held: tuple[tuple, object] | None = None  # ((model, dtype, device, backend), Generator)


def generator_for(model: str, dtype: str, device: str, backend: str = "torch"):
    """The Generator for this key: the held one, or a newly loaded one that replaces it."""
    global _held
    key = (model, dtype, device, backend)
    if _held is not None and _held[0] == key:
        return _held[1]
    if _held is not None:
        _held = None
        _release_memory(device)
    from dreamgen.jobs.run import load_generator

    started = time.perf_counter()
    generator = load_generator(model, dtype, device, backend)
    log.info("loaded %s (%s, %s, %s) in %.1f s", model, dtype, device, backend, time.perf_counter() - started)
    _held = (key, generator)
    return generator


def generator_for_job(job):
    """A job's model on this worker's device: the submitter does not know the workers' hardware."""
    config = job.config
    return generator_for(config.model, config.dtype, settings.worker_device(), config.backend)


@worker_process_init.connect
def preload_model(**_):
    if not settings.worker_preload():
        return
    try:
        generator_for(settings.MODEL.get(), settings.DTYPE.get(), settings.worker_device(), settings.BACKEND.get())
    except Exception:  # a chunk will try again and record the error on its documents
        log.exception("could not preload the model")


def _release_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch
        torch.cuda.empty_cache()
