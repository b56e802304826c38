"""Job control against a real Redis and a real worker: retry, cancel, status after the record expires, the
job list, refusals, and a down broker."""
from __future__ import annotations

import json
import socket
import time

import pytest
from click.testing import CliRunner
from PIL import Image

from dreamgen.cli import cli
from dreamgen.distributed.broker import redact
from tests.celery_support import (
    REDIS_URL,
    Namespace,
    first_quick_then_long,
    manifest_ids,
    quick_prompts,
    wait_for_job,
    wait_until,
    write_prompts,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ns(tmp_path_factory, dreamgen_home, installed_tiny):
    # the workers read input pictures from the tests' own folders only (issue 33: DREAMGEN_WORKER_INPUT_DIRS)
    with Namespace(tmp_path_factory.mktemp("jobs"), dreamgen_home, DREAMGEN_CHUNK_LOCK_TTL=5,
                   DREAMGEN_WORKER_INPUT_DIRS=tmp_path_factory.getbasetemp()) as namespace:
        yield namespace


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_retry_finishes_only_the_failed_documents(ns, tmp_path):
    picture = tmp_path / "pictures" / "harbour.png"
    picture.parent.mkdir()
    Image.new("RGB", (32, 32), (20, 90, 160)).save(picture)
    items = quick_prompts(3)
    items.append({"prompt": "Describe this harbour", "images": ["pictures/harbour.png"], "seed": 9,
                  "max_new_tokens": 16, "steps": 2})
    prompts = write_prompts(tmp_path / "p.jsonl", items)
    out = tmp_path / "out"

    # No worker runs yet: the picture vanishes after the job is accepted and before it is generated.
    submitted = invoke("submit", prompts, "--out", out, "--job-id", "retry-1", "-b", "2")
    assert submitted.exit_code == 0, submitted.output
    picture.rename(picture.with_suffix(".moved"))
    ns.worker("w1")
    report = wait_for_job("retry-1")
    assert (report.status, report.done, report.failed) == ("finished", 3, 1)
    [error] = report.failures.values()
    assert error == f"InputImageError: input image {picture} not found"
    done_files = {p: p.stat().st_mtime_ns for p in out.glob("retry-1/*/document.json")}
    assert len(done_files) == 3

    status = invoke("status", "retry-1")
    assert status.exit_code == 0 and "3 done, 1 failed, 0 pending, 4 in all" in status.output
    assert f"input image {picture} not found" in status.output

    picture.with_suffix(".moved").rename(picture)
    retried = invoke("retry", "retry-1")
    assert retried.exit_code == 0, retried.output
    assert retried.output.strip() == "Re-queued 1 documents of job retry-1."
    watched = invoke("status", "retry-1", "--watch")  # returns when the job has ended
    assert watched.exit_code == 0, watched.output
    assert "Job retry-1: finished" in watched.output and "4 done, 0 failed, 0 pending" in watched.output
    report = wait_for_job("retry-1")
    assert (report.status, report.done, report.failed) == ("finished", 4, 0)
    assert {p: p.stat().st_mtime_ns for p in done_files} == done_files  # the done ones were not redone
    ids = manifest_ids(out, "retry-1")
    assert len(ids) == len(set(ids)) == 4
    assert (out / "retry-1" / "errors.jsonl").read_text() == ""

    # A finished job with nothing to retry: the retry changes nothing, in Redis or in storage.
    def state():
        files = {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "retry-1").rglob("*") if p.is_file()}
        keys = sorted(k for k in ns.redis.scan_iter(match=f"{ns.prefix}:*") if "retry-1" in k)
        redis = {k: ns.redis.hgetall(k) if ns.redis.type(k) == "hash" else ns.redis.dump(k) for k in keys}
        return files, redis

    before = state()
    assert any(k.endswith(":job:retry-1") for k in before[1])
    assert invoke("retry", "retry-1").output.strip() == "Nothing to retry: every document of job retry-1 is done."
    assert state() == before


def test_cancel_stops_a_running_job(ns, tmp_path):
    """The running chunk stops between steps after its first document; the queued ones generate nothing."""
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.status import job_status

    ns.worker("w1")
    prompts = write_prompts(tmp_path / "p.jsonl", first_quick_then_long(2) + quick_prompts(6))
    out = tmp_path / "out"
    assert invoke("submit", prompts, "--out", out, "--job-id", "cancel-1", "-b", "3").exit_code == 0

    wait_until(lambda: job_status("cancel-1").done >= 1, what="a first document")
    cancelled = invoke("cancel", "cancel-1")
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.output.startswith("Cancelling job cancel-1:")
    assert "(cancelled; resume with: dreamgen retry cancel-1)" in cancelled.output
    report = wait_for_job("cancel-1")
    assert report.status == "cancelled"
    status = invoke("status", "cancel-1")  # the 8 not run are not "pending": nothing will run them but a retry
    assert "1 done, 0 failed, 8 cancelled (resume with: dreamgen retry cancel-1), 9 in all" in status.output, \
        status.output
    assert report.done == 1 and report.failed == 0
    assert report.chunks == {"cancelled": 3}
    record = JobRecord(ns.redis, "cancel-1")
    first = record.chunk_state("1.0")["result"]
    assert (first["status"], first["done"], first["cancelled"]) == ("cancelled", 1, 2)
    assert record.chunk_state("1.2")["result"]["cancelled"] == 3
    assert json.loads((out / "cancel-1" / "job.json").read_text())["status"] == "cancelled"
    assert len(manifest_ids(out, "cancel-1")) == 1
    again = invoke("cancel", "cancel-1")
    assert again.exit_code == 1 and "already cancelled" in again.output

    # What the cancel skipped is not failed: retry queues it, and the job finishes.
    assert invoke("retry", "cancel-1").output.strip() == "Re-queued 8 documents of job cancel-1."
    report = wait_for_job("cancel-1")
    assert (report.status, report.done, report.failed) == ("finished", 9, 0)


def test_status_reads_storage_after_the_record_expires(ns, tmp_path):
    from dreamgen.distributed.records import JobRecord

    ns.worker("w1")
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(2))
    out = tmp_path / "out"
    assert invoke("submit", prompts, "--out", out, "--job-id", "old-1", "--wait").exit_code == 0
    record = JobRecord(ns.redis, "old-1")
    ns.redis.delete(record.key, record.done_key, record.failed_key, record.chunks_key, record.attempts_key)

    missing = invoke("status", "old-1")
    assert missing.exit_code == 1
    assert f"no record of job old-1 at {redact(REDIS_URL)}" in missing.output and "--out" in missing.output
    status = invoke("status", "old-1", "--out", out)
    assert status.exit_code == 0, status.output
    assert "Job old-1: finished" in status.output and "2 done, 0 failed" in status.output
    assert f"open: file://{out}/old-1/index.html" in status.output
    # the same with no broker at all
    status = invoke("status", "old-1", "--out", out, "--broker-url", f"redis://127.0.0.1:{_closed_port()}/0")
    assert status.exit_code == 0 and "2 done, 0 failed" in status.output


def test_jobs_lists_recent_jobs(ns, tmp_path):
    ns.worker("w1")
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(1, start=50))
    assert invoke("submit", prompts, "--out", tmp_path / "out", "--job-id", "listed-1", "--wait").exit_code == 0
    listing = invoke("jobs", "--limit", "3")
    assert listing.exit_code == 0
    lines = listing.output.splitlines()
    assert 2 <= len(lines) <= 4  # a header row, then the jobs, newest first
    assert lines[0].split() == ["JOB", "STATUS", "DONE", "FAILED", "TOTAL", "CREATED"]
    assert lines[1].split()[:5] == ["listed-1", "finished", "1", "0", "1"]
    assert lines[1].index("finished") == lines[0].index("STATUS")  # the columns line up under the header


def test_a_bad_file_is_rejected_before_anything_is_queued(ns, tmp_path):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": "bad steps", "steps": 0}\n')
    result = invoke("submit", prompts, "--out", tmp_path / "out", "--job-id", "bad-1")
    assert result.exit_code == 1
    assert f"{prompts}:2: field 'steps':" in result.output
    assert not ns.redis.exists(f"{ns.prefix}:job:bad-1")
    assert ns.queue_length() == 0


def test_an_active_job_cannot_be_submitted_or_retried_again(ns, tmp_path):
    from dreamgen.distributed.records import JobRecord, JobStatus

    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(1))
    JobRecord(ns.redis, "busy-1").start_round({"out": str(tmp_path / "out"), "total": 1})
    assert JobRecord(ns.redis, "busy-1").status is JobStatus.QUEUED
    for args in (("submit", prompts, "--out", tmp_path / "out", "--job-id", "busy-1"), ("retry", "busy-1")):
        result = invoke(*args)
        assert result.exit_code == 1 and "job busy-1 is queued; wait for it to end, or cancel it" in result.output


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when this returns: nothing listens there


@pytest.mark.parametrize("command", [["submit", "PROMPTS", "--out", "OUT"], ["status", "job-1"], ["jobs"],
                                     ["cancel", "job-1"], ["retry", "job-1"]])
def test_no_broker_is_a_one_line_error_within_seconds(tmp_path, command):
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(1))
    port = _closed_port()
    args = [str(prompts) if a == "PROMPTS" else str(tmp_path / "out") if a == "OUT" else a for a in command]
    started = time.monotonic()
    result = invoke(*args, "--broker-url", f"redis://:hunter2@127.0.0.1:{port}/0")
    assert time.monotonic() - started < 5
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith(f"Error: cannot reach the broker at redis://:***@127.0.0.1:{port}/0: ")
    assert "Connection refused" in line and "hunter2" not in line
    assert not (tmp_path / "out").exists()  # nothing written either

