"""Submit streams its chunk tasks (issue 33): no chord, the job's Redis record counts chunk ends once per chunk key,
and exactly one of the chunk ends and submit's seal sends the finalize task. Against a real Redis and real
`celery worker` processes: a job finishes with every document and one finalize; a chunk task that fails, or is
killed by the hard time limit, still lets the job close; a redelivered chunk counts once and finalizes nothing.
And submit's memory does not grow with the number of prompts."""
from __future__ import annotations

import json
import os
import signal
import time
import tracemalloc
import uuid

import pytest

from tests.celery_support import (
    MODEL,
    REDIS_URL,
    Namespace,
    delete_prefix,
    first_quick_then_long,
    manifest_ids,
    quick_prompts,
    redis_client,
    wait_for_job,
    wait_until,
    write_prompts,
)


def _config(tmp_path, prompts, **extra):
    from dreamgen.jobs.spec import JobConfig

    return JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), model=MODEL, **extra)


def _finalize_runs(worker, job_id: str) -> int:
    """How many finalize tasks of `job_id` the worker ran (its log says each)."""
    return sum(1 for line in worker.text().splitlines()
               if f"dreamgen.finalize[{job_id}.finalize." in line and " succeeded in " in line)


# -------------------------------------------------------------------------------------------- the count, alone
@pytest.fixture
def record(monkeypatch):
    from dreamgen.distributed.records import JobRecord

    client = redis_client()
    prefix = f"dgtest-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("DREAMGEN_REDIS_PREFIX", prefix)
    yield JobRecord(client, "counted")
    delete_prefix(client, prefix)


def test_each_chunk_counts_once_and_one_caller_is_told_to_finalize(record):
    rnd = record.start_round({"total": 3})
    assert record.chunk_ended(f"{rnd}.0", rnd) is False  # not sealed: nobody knows the total yet
    assert record.chunk_ended(f"{rnd}.0", rnd) is False  # redelivered
    assert record.ended_chunks() == 1
    assert record.seal(rnd, chunks=3, queued=3) is False  # two of three still running
    assert record.chunk_ended(f"{rnd}.1", rnd) is False
    assert record.chunk_ended(f"{rnd}.1", rnd) is False and record.ended_chunks() == 2
    assert record.chunk_ended(f"{rnd - 1}.2", rnd - 1) is False  # a chunk of an older round changes nothing
    assert record.ended_chunks() == 2
    assert record.chunk_ended(f"{rnd}.2", rnd) is True  # the last one: it sends the finalize task
    # others redelivered now are not told; the one told is told again until the round is closed (had it been
    # killed before it sent the task, its redelivery sends it)
    assert record.chunk_ended(f"{rnd}.0", rnd) is False and record.chunk_ended(f"{rnd}.1", rnd) is False
    assert record.chunk_ended(f"{rnd}.2", rnd) is True
    from dreamgen.distributed.records import JobStatus

    record.finish(JobStatus.FINISHED, {}, rnd)
    assert record.chunk_ended(f"{rnd}.2", rnd) is False
    assert record.ended_chunks() == 3
    data = record.read()
    assert (data["chunks"], data["queued"], data["finalizer"]) == ("3", "3", f"{rnd}.2")


def test_the_seal_finalizes_when_every_chunk_ended_first_and_a_new_round_counts_anew(record):
    from dreamgen.distributed.records import JobStatus

    rnd = record.start_round({"total": 2})
    assert [record.chunk_ended(f"{rnd}.{i}", rnd) for i in range(2)] == [False, False]
    assert record.seal(rnd, chunks=2, queued=2) is True  # submit was slower than the workers: it sends finalize
    assert record.chunk_ended(f"{rnd}.1", rnd) is False  # taken by the seal: a redelivered chunk is not told
    record.finish(JobStatus.FINISHED, {}, rnd)
    again = record.start_round({"total": 2})
    assert record.ended_chunks() == 0 and "sealed" not in record.read() and "finalizer" not in record.read()
    assert record.chunk_ended(f"{rnd}.0", rnd) is False and record.ended_chunks() == 0  # the old round's, late
    assert record.seal(again, chunks=1, queued=2) is False
    assert record.chunk_ended(f"{again}.0", again) is True


# -------------------------------------------------------------------------------------------- with workers
@pytest.fixture(scope="module")
def ns(tmp_path_factory, dreamgen_home, installed_tiny):
    with Namespace(tmp_path_factory.mktemp("streamed"), dreamgen_home, DREAMGEN_CHUNK_LOCK_TTL=3) as namespace:
        yield namespace


@pytest.mark.integration
@pytest.mark.slow
def test_a_streamed_job_finishes_and_a_redelivered_chunk_neither_counts_nor_finalizes_again(ns, tmp_path):
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.workers.app import client_app
    from dreamgen.workers.dispatch import send_chunks
    from dreamgen.workers.settings import CHUNK_TASK

    worker = ns.worker("w1")
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(7, tokens=16))
    sent = []

    def recording(url, job, chunks):  # the real sender; keeps a copy of one chunk to deliver again
        def tee():
            for specs in chunks:
                if not sent:
                    sent.append((job.to_dict(), specs))
                yield specs

        return send_chunks(url, job, tee())

    job_id = submit_job(_config(tmp_path, prompts, batch_size=2, job_id="streamed-1"), recording)
    report = wait_for_job(job_id)
    assert (report.status, report.done, report.failed) == ("finished", 7, 0)
    assert sorted(manifest_ids(tmp_path / "out", job_id)) == sorted(set(manifest_ids(tmp_path / "out", job_id)))
    assert len(manifest_ids(tmp_path / "out", job_id)) == 7
    record = JobRecord(ns.redis, job_id)
    assert record.ended_chunks() == 4 and record.read()["chunks"] == "4"
    wait_until(lambda: _finalize_runs(worker, job_id) == 1, what="the finalize task's log line")
    finished = record.read()["finished"]
    job_json = json.loads((tmp_path / "out" / job_id / "job.json").read_text())

    # Chunk 1.0 delivered again after the job's end (as Redis does after a visibility timeout, late ack):
    job, specs = sent[0]
    again = f"{job_id}.1.0.again"
    client_app().send_task(CHUNK_TASK, args=(job, "1.0", specs), task_id=again)
    meta_key = f"{ns.prefix}:celery:celery-task-meta-{again}"
    wait_until(lambda: (raw := ns.redis.get(meta_key)) and json.loads(raw)["status"] == "SUCCESS",
               what="the redelivered chunk to end")
    time.sleep(3)  # time for a finalize task it might have sent to run (the worker is idle)
    assert ns.queue_length("dreamgen.light") == 0
    assert _finalize_runs(worker, job_id) == 1
    assert record.ended_chunks() == 4
    assert record.read()["finished"] == finished
    assert json.loads((tmp_path / "out" / job_id / "job.json").read_text()) == job_json


@pytest.mark.integration
@pytest.mark.slow
def test_a_chunk_task_that_fails_still_lets_the_job_close(ns, tmp_path):
    """A chunk whose task raises (here: specs it cannot read) is acknowledged and never comes back: its on_failure
    counts its end, and the job closes with the other chunks' documents."""
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.workers.dispatch import send_chunks

    worker = ns.worker("w1")
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(4, tokens=16))

    def spoiling_the_first(url, job, chunks):
        return send_chunks(url, job, ([{"id": s["id"]} for s in specs] if index == 0 else specs
                                      for index, specs in enumerate(chunks)))

    job_id = submit_job(_config(tmp_path, prompts, batch_size=2, job_id="spoilt-1"), spoiling_the_first)
    report = wait_for_job(job_id)
    assert (report.status, report.done) == ("finished", 2)
    state = JobRecord(ns.redis, job_id).chunk_state("1.0")
    assert state["state"] == "error" and "KeyError" in state["error"]
    assert JobRecord(ns.redis, job_id).ended_chunks() == 2
    wait_until(lambda: _finalize_runs(worker, job_id) == 1, what="the finalize task's log line")


@pytest.mark.integration
@pytest.mark.slow
def test_a_chunk_killed_by_the_hard_time_limit_still_lets_the_job_close(ns, tmp_path):
    """The chunk's process hangs (SIGSTOP: no step, no soft deadline) until the worker kills it at the hard time
    limit. Celery then calls the task's on_failure in the worker's main process: the chunk is recorded timed out,
    its end counted, and the job closes once the next chunk has ended."""
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.workers.dispatch import send_chunks

    for name in list(ns.workers):  # only the limited worker may take the chunks
        ns.workers.pop(name).stop()
    limited = ns.worker("limited", DREAMGEN_TASK_TIME_LIMIT=12, DREAMGEN_VISIBILITY_TIMEOUT=60)
    prompts = write_prompts(tmp_path / "p.jsonl", first_quick_then_long(2) + quick_prompts(2, tokens=16))
    job_id = submit_job(_config(tmp_path, prompts, batch_size=3, job_id="hung-1"), send_chunks)
    record = JobRecord(ns.redis, job_id)
    wait_until(lambda: (state := record.chunk_state("1.0")) and state["done"] >= 1 and state["state"] == "running",
               what="the chunk's first document")
    (child,) = limited.pool_pids()
    os.kill(child, signal.SIGSTOP)
    report = wait_for_job(job_id)
    assert (report.status, report.done) == ("finished", 3)  # the first document of 1.0, and chunk 1.1's two
    state = record.chunk_state("1.0")
    assert state["state"] == "timed-out" and "hard time limit" in state["error"], state
    assert record.chunk_state("1.1")["state"] == "finished"
    assert record.ended_chunks() == 2
    assert "Hard time limit (12" in limited.text()
    wait_until(lambda: _finalize_runs(limited, job_id) == 1, what="the finalize task's log line")
    limited.stop()
    del ns.workers["limited"]


# -------------------------------------------------------------------------------------------- memory
def _submit(tmp_path, count: int, traced: bool = True) -> int:
    """submit_job of `count` prompts in chunks of 8, queued where no worker is; tracemalloc's peak (bytes)."""
    from dreamgen.distributed.submit import submit_job
    from dreamgen.workers.dispatch import send_chunks

    prompts = write_prompts(tmp_path / f"p{count}.jsonl",
                            [{"prompt": f"A note about harbour {i}, its ships and its tides", "seed": i}
                             for i in range(count)])
    config = _config(tmp_path / str(count), prompts, batch_size=8)
    if not traced:
        submit_job(config, send_chunks, REDIS_URL)
        return 0
    tracemalloc.start()
    try:
        submit_job(config, send_chunks, REDIS_URL)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_submit_memory_does_not_grow_with_the_prompts(tmp_path, monkeypatch):
    """10x the prompts, the same peak (~7 MB here; the chord held every chunk's signature, so ~10x the memory).
    Only the set of ids that validation keeps to find repeats grows, by ~140 bytes an id."""
    client = redis_client()
    prefix = f"dgtest-{uuid.uuid4().hex[:10]}"
    monkeypatch.setenv("DREAMGEN_BROKER_URL", REDIS_URL)
    monkeypatch.setenv("DREAMGEN_REDIS_PREFIX", prefix)
    try:
        _submit(tmp_path, 100, traced=False)  # imports, the model's card and the client app: not measured
        small, large = _submit(tmp_path, 1_000), _submit(tmp_path, 10_000)
    finally:
        delete_prefix(client, prefix)
    assert large < small + 2_000_000, (small, large)
