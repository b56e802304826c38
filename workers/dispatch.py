"""Putting a job's chunks on the queue, one task at a time, and closing the job when they have all ended.

Submit streams (issue 33): each chunk task is sent as its specs are read from the prompt file, over one producer
connection, and nothing of it is kept. A chord would need its whole header in memory (Celery 5.7 materialises a
generator header), which grew with the file (figures below). Instead the job's Redis record counts the chunks
that have ended, once per chunk key (JobRecord.chunk_ended: a redelivered task counts once), and submit "seals" the
round with the number of chunks once it has sent them all (JobRecord.seal). Of the chunk ends and the seal, the one that
sees every chunk of the sealed round ended sends the finalize task, once (a field taken with HSETNX, in the same
Lua step). A chunk task that fails outside run_chunk's bookkeeping (killed by the hard time limit) counts its end
from its on_failure hook (workers.tasks), so the job is still closed.

Measured by bench/submit_memory.py (one run, 2-core dev machine, 200,000 prompts in chunks of 8 = 25,000 tasks):
the submitting process peaked at 399 MB RSS with the chord (+350 MB over its 49 MB before submit) and at 124 MB
streamed (+75 MB, 30 s). At 20,000 prompts: +421 MB with the chord, +50 MB streamed. The 25 MB streamed submit
adds from 20,000 to 200,000 prompts is the set of ids (a 64-bit hash and a line each, ~0.14 KB a prompt) that
validation keeps to find repeats; the rest is flat (tests/test_streamed_submit.py: tracemalloc's peak is the same
for 1,000 and 10,000 prompts).
Most of the time Celery would otherwise spend is in repr() of every message's arguments for its logs, so we
give it a short `argsrepr` ourselves.
"""
from __future__ import annotations

import secrets
from typing import Iterable

from dreamgen.distributed.broker import connect, unavailable
from dreamgen.distributed.chunks import JobWire, chunk_key
from dreamgen.distributed.records import JobRecord

from .app import client_app
from .settings import CHUNK_TASK, FINALIZE_TASK


def send_chunks(url: str, job: JobWire, chunks: Iterable[list[dict]]) -> tuple[int, int]:
    """Queue the chunks (lists of wire specs) of `job` as they come, then seal its round (and send the finalize
    task if its chunks have all ended already); returns (chunks, documents) queued. With no chunks, nothing is
    sent and nothing sealed: the caller finalizes the job itself."""
    from kombu.exceptions import OperationalError

    app = client_app(url)
    job_dict = job.to_dict()
    token = secrets.token_hex(3)  # task ids stay unique even if a job's record expired and its round restarts
    n_chunks = documents = 0
    try:
        with app.producer_or_acquire() as producer:  # one connection for the whole job
            for index, specs in enumerate(chunks):
                key = chunk_key(job.round, index)
                app.send_task(CHUNK_TASK, args=(job_dict, key, specs), task_id=chunk_task_id(job.id, key, token),
                              argsrepr=f"({job.id!r}, {key!r}, <{len(specs)} documents>)", kwargsrepr="{}",
                              producer=producer, add_to_parent=False)
                n_chunks += 1
                documents += len(specs)
        record = JobRecord(connect(url, check=False, patient=False), job.id)
        if n_chunks and record.seal(job.round, n_chunks, documents):
            send_finalize(app, job_dict, token)  # every chunk ended while the rest were being sent
    except OperationalError as e:
        raise unavailable(url, e) from None
    return n_chunks, documents


def chunk_task_id(job_id: str, key: str, token: str) -> str:
    """JOB.ROUND.INDEX.TOKEN: `celery events`, `inspect` and Flower name the job and the chunk."""
    return f"{job_id}.{key}.{token}"


def token_of(task_id: str) -> str:
    """The submit's token, the last part of any of its task ids."""
    return task_id.rsplit(".", 1)[-1]


def send_finalize(app, job: dict, token: str) -> None:
    """Send the task that closes round job["round"] of the job (finalize_job), with a readable id like the
    chunks' (JOB.finalize.ROUND.TOKEN). Called by whoever JobRecord told to (the seal, or the last chunk's end)."""
    job_id, rnd = job["job_id"], job["round"]
    app.send_task(FINALIZE_TASK, args=(job,), task_id=f"{job_id}.finalize.{rnd}.{token}",
                  argsrepr=f"({job_id!r}, round {rnd})", kwargsrepr="{}", add_to_parent=False)
