"""Redis restarted under a running job, with a real `redis-server` of the test's own (never the shared one) and a
real worker: with persistence the job finishes by itself, each document once; without it `status --out` says the
queue was lost and the one command that resumes it, and that command finishes it. A killed worker's chunk shows
as lost, with when Redis redelivers it. And the defaults that make redelivery minutes, not hours."""
from __future__ import annotations

import os
import signal
import time

import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from tests.celery_support import (
    MODEL,
    SLOW,
    Namespace,
    RedisServer,
    first_quick_then_long,
    manifest_ids,
    wait_until,
    write_prompts,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def submit(tmp_path, items, batch_size=1) -> str:
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.dispatch import send_chunks

    prompts = write_prompts(tmp_path / "p.jsonl", items)
    return submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), model=MODEL,
                                batch_size=batch_size), send_chunks)


def running(record, chunk: str):
    state = record.chunk_state(chunk)
    return state if state and state["state"] == "running" else None


def ended_report(job_id: str, out=None):
    """The job's report once it has ended; None while it runs or while Redis does not answer yet."""
    from dreamgen.distributed.status import job_status
    from dreamgen.errors import BrokerUnavailable

    try:
        report = job_status(job_id, out=out)
    except BrokerUnavailable:
        return None
    return report if report.final else None


def stored_done(out, job_id: str) -> int:
    folder = out / job_id / "_done"
    return len(list(folder.glob("*.json"))) if folder.exists() else 0


def test_a_redis_restart_with_persistence_needs_no_action(tmp_path, dreamgen_home, installed_tiny):
    from dreamgen.distributed.records import JobRecord

    server = RedisServer(tmp_path / "redis", appendonly=True).start()
    try:
        with Namespace(tmp_path, dreamgen_home, redis_url=server.url) as ns:
            ns.worker("w1")
            job_id = submit(tmp_path, first_quick_then_long(2))
            record = JobRecord(ns.redis, job_id)
            wait_until(lambda: running(record, "1.1"), what="the second chunk to run")
            server.restart()  # mid-chunk: its worker loses the broker and its record for a moment
            report = wait_until(lambda: ended_report(job_id), what=f"job {job_id} to end by itself")
            assert (report.status, report.done, report.failed) == ("finished", 3, 0)
            ids = manifest_ids(tmp_path / "out", job_id)
            assert len(ids) == len(set(ids)) == 3
            # the chunk that ran through the restart went on: it was not cancelled and started again
            assert record.chunk_state("1.1")["attempt"] == 1
            assert "Connection to broker lost" in ns.workers["w1"].text()
    finally:
        server.stop()


def test_without_persistence_status_says_the_queue_is_lost_and_retry_resumes(tmp_path, dreamgen_home,
                                                                              installed_tiny):
    from dreamgen.distributed.records import JobRecord

    server = RedisServer(tmp_path / "redis", appendonly=False).start()
    out = tmp_path / "out"
    try:
        with Namespace(tmp_path, dreamgen_home, redis_url=server.url) as ns:
            ns.worker("w1")
            job_id = submit(tmp_path, first_quick_then_long(2))
            record = JobRecord(ns.redis, job_id)
            wait_until(lambda: running(record, "1.1"), what="the second chunk to run")
            server.restart()  # empty: the queue, the chord and the record are gone
            # the chunk that was running finishes its document; nothing else will run
            wait_until(lambda: stored_done(out, job_id) >= 2, what="the running chunk's document")
            time.sleep(3)
            assert stored_done(out, job_id) == 2

            without_out = CliRunner().invoke(cli, ["status", job_id])
            assert without_out.exit_code == 1
            assert "no record of job" in without_out.output and "Redis was started at" in without_out.output

            result = CliRunner().invoke(cli, ["status", job_id, "--out", str(out)])
            assert result.exit_code == 0, result.output
            assert f"Job {job_id}: lost" in result.output
            assert "Redis was restarted at" in result.output and "its queued chunks are lost" in result.output
            assert f"resume with: dreamgen retry {job_id} --out {out}" in result.output

            retried = CliRunner().invoke(cli, ["retry", job_id, "--out", str(out)])
            assert retried.exit_code == 0, retried.output
            assert f"Re-queued 1 documents of job {job_id}." in retried.output
            report = wait_until(lambda: ended_report(job_id), what=f"job {job_id} to end after the retry")
            assert (report.status, report.done, report.failed) == ("finished", 3, 0)
            ids = manifest_ids(out, job_id)
            assert len(ids) == len(set(ids)) == 3
            assert int(record.read()["round"]) == 2  # above job.json's round 1: no chunk key of the lost round
    finally:
        server.stop()


def test_a_killed_workers_chunk_shows_as_lost_with_its_redelivery(tmp_path, dreamgen_home, installed_tiny):
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.status import job_status, redelivery_by

    with Namespace(tmp_path, dreamgen_home, DREAMGEN_CHUNK_LOCK_TTL=3) as ns:
        victim = ns.worker("victim")
        job_id = submit(tmp_path, first_quick_then_long(2), batch_size=3)
        record = JobRecord(ns.redis, job_id)
        wait_until(lambda: (state := running(record, "1.0")) and state["done"] >= 1, what="the first document")
        assert job_status(job_id).chunks == {"running": 1}
        os.killpg(victim.process.pid, signal.SIGKILL)  # the whole worker: nobody renews the lock any more
        victim.stop()
        report = wait_until(lambda: (r := job_status(job_id)).lost and r, timeout=SLOW, what="the chunk to be lost")
        assert report.chunks == {"lost": 1} and report.running == []
        (lost,) = report.lost
        assert lost["chunk"] == "1.0" and lost["worker"] == victim.node
        assert redelivery_by(lost) == pytest.approx(lost["started"] + 35 * 60)  # the default visibility timeout
        shown = CliRunner().invoke(cli, ["status", job_id])
        assert "chunks: 1 lost" in shown.output
        assert f"1.0 lost: {victim.node} stopped renewing its lock" in shown.output
        assert "Redis hands it to another worker by" in shown.output


def test_default_limits_bring_a_lost_chunk_back_in_minutes(monkeypatch):
    from dreamgen import settings
    from dreamgen.workers.settings import celery_settings

    for name in ("DREAMGEN_TASK_TIME_LIMIT", "DREAMGEN_VISIBILITY_TIMEOUT", "DREAMGEN_CHUNK_LOCK_TTL"):
        monkeypatch.delenv(name, raising=False)
    s = celery_settings("redis://127.0.0.1:6379/0")
    assert s["task_time_limit"] == 30 * 60
    assert s["broker_transport_options"]["visibility_timeout"] == 35 * 60  # a whole worker died: 35 minutes
    assert settings.chunk_lock_ttl_s() == 300  # its pool process died: back after the lock's 5 minutes


def test_a_job_whose_storage_refuses_its_end_is_recorded_failed(tmp_path, dreamgen_home, installed_tiny,
                                                                 s3_endpoint, s3_bucket):
    """The chord's callback cannot write the manifest (S3 answers SlowDown past the retries): the record says
    failed, and why, instead of running forever; retry is then allowed."""
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from tests.celery_support import quick_prompts
    from tests.s3_faults import faulty_s3
    from dreamgen.workers.dispatch import send_chunks

    def manifest_puts(method: str, path: str) -> bool:
        return method == "PUT" and path.split("?")[0].endswith("/manifest.jsonl")

    with faulty_s3(s3_endpoint, rate=1.0, rule=manifest_puts) as proxy, \
            Namespace(tmp_path, dreamgen_home, DREAMGEN_S3_RETRY_S=1, DREAMGEN_S3_ENDPOINT_URL=proxy.url,
                      DREAMGEN_WORKER_S3_WRITE=s3_bucket) as ns:  # the worker's own endpoint and bucket
        ns.worker("w1")
        prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(2))
        job_id = submit_job(JobConfig(prompts=str(prompts), out=f"s3://{s3_bucket}/a", model=MODEL, batch_size=2,
                                      endpoint_url=proxy.url), send_chunks)
        report = wait_until(lambda: ended_report(job_id), what=f"job {job_id} to end")
        assert (report.status, report.done) == ("failed", 2)
        assert "SlowDown" in report.error and "manifest.jsonl" in report.error
        shown = CliRunner().invoke(cli, ["status", job_id])
        assert f"Job {job_id}: failed" in shown.output and "error: S3 error on s3://" in shown.output
        assert proxy.faults >= 2  # retried, then given up
