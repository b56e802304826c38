"""Putting a job's chunks on the queue: one chunk task per list of specs, in a chord whose callback finalizes.

Measured on 12,500 chunks (100,000 prompts, chunks of 8): Celery's chord sends them over one connection in ~8 s.
Most of the time Celery would otherwise spend is in repr() of every message's arguments for its logs, so we
give it a short `argsrepr` ourselves.
"""
from __future__ import annotations

import secrets
from typing import Iterable

from dreamgen.distributed.broker import unavailable
from dreamgen.distributed.chunks import JobWire, chunk_key

from .app import client_app
from .settings import CHUNK_TASK, FINALIZE_TASK


def send_chunks(url: str, job: JobWire, chunks: Iterable[list[dict]]) -> tuple[int, int]:
    """Queue the chunks (lists of wire specs) of `job`; returns (chunks, documents) queued. With no chunks,
    nothing is sent: the caller finalizes the job itself."""
    from celery import chord
    from kombu.exceptions import OperationalError

    app = client_app(url)
    job_dict = job.to_dict()
    token = secrets.token_hex(3)  # task ids stay unique even if a job's record expired and its round restarts
    header, documents = [], 0
    for index, specs in enumerate(chunks):
        key = chunk_key(job.round, index)
        header.append(app.signature(CHUNK_TASK, args=(job_dict, key, specs), task_id=f"{job.id}.{key}.{token}",
                                    argsrepr=f"({job.id!r}, {key!r}, <{len(specs)} documents>)", kwargsrepr="{}"))
        documents += len(specs)
    if not header:
        return 0, 0
    # Readable ids like the chunks' (JOB.finalize.ROUND.TOKEN), so `celery events` and Flower name the job.
    argsrepr = f"({job.id!r}, round {job.round})"
    finalize = app.signature(FINALIZE_TASK, args=(job_dict,), immutable=True, argsrepr=argsrepr, kwargsrepr="{}",
                             task_id=f"{job.id}.finalize.{job.round}.{token}")
    # Also on error: a chunk killed by the hard time limit fails the chord, and the job must still be closed.
    finalize.on_error(app.signature(FINALIZE_TASK, args=(job_dict,), immutable=True, argsrepr=argsrepr,
                                    kwargsrepr="{}", task_id=f"{job.id}.finalize-on-error.{job.round}.{token}"))
    try:
        chord(header, app=app)(finalize)
    except OperationalError as e:
        raise unavailable(url, e) from None
    return len(header), documents
