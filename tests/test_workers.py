"""Real `celery worker` processes on a real Redis: the distributed path writes what `dreamgen run` writes,
workers share a job, a chunk survives the death of its worker, and one that keeps killing workers gives up."""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dreamgen.cli import cli
from tests.celery_support import (
    MODEL,
    Namespace,
    first_quick_then_long,
    manifest_ids,
    one_torch_thread,
    quick_prompts,
    wait_for_job,
    wait_until,
    write_prompts,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ns(tmp_path_factory, dreamgen_home, installed_tiny):
    # A dead worker's chunk lock frees itself in 3 s, so the redelivery test does not wait long.
    with Namespace(tmp_path_factory.mktemp("workers"), dreamgen_home, DREAMGEN_CHUNK_LOCK_TTL=3,
                   DREAMGEN_MAX_ATTEMPTS=3) as namespace:
        for name in ("w1", "w2"):  # both start at once, then both are waited for
            namespace.worker(name, wait=False)
        yield namespace


def _document(folder):
    """document.json less what differs between runs by design; pixels are compared apart (within 1 level),
    so the images' sha256 are left out too."""
    data = json.loads((folder / "document.json").read_text())
    for volatile in ("job_id", "created", "timings"):
        data.pop(volatile)
    for block in data["blocks"]:
        block.pop("sha256", None)
    return data


def test_cli_submit_gives_the_documents_of_run(ns, tmp_path):
    ns.worker("w1"), ns.worker("w2")
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(6))
    submitted = CliRunner().invoke(cli, ["submit", str(prompts), "--out", str(tmp_path / "dist"), "-b", "3",
                                         "--job-id", "dist-1", "--wait"])
    assert submitted.exit_code == 0, submitted.output
    assert submitted.stdout.splitlines()[0] == "dist-1"
    assert "Job dist-1: finished" in submitted.output and "6 done, 0 failed, 0 pending" in submitted.output

    with one_torch_thread():
        ran = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "local"), "-b", "3",
                                       "--job-id", "local-1"])
    assert ran.exit_code == 0, ran.output

    dist, local = tmp_path / "dist" / "dist-1", tmp_path / "local" / "local-1"
    assert sorted(manifest_ids(tmp_path / "dist", "dist-1")) == sorted(manifest_ids(tmp_path / "local", "local-1"))
    for doc_id in manifest_ids(tmp_path / "dist", "dist-1"):
        assert _document(dist / doc_id) == _document(local / doc_id)
        for png in sorted((local / doc_id / "images").glob("*.png")):
            a = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
            b = np.asarray(Image.open(dist / doc_id / "images" / png.name).convert("RGB"), dtype=np.int16)
            assert a.shape == b.shape and np.abs(a - b).max() <= 1, f"{doc_id}/{png.name}"
    job = json.loads((dist / "job.json").read_text())
    assert job["status"] == "finished" and job["done"] == 6 and job["failed"] == 0
    assert (dist / "index.html").exists()


def test_two_workers_share_one_job(ns, tmp_path):
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.dispatch import send_chunks

    ns.worker("w1"), ns.worker("w2")
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(10, tokens=16))
    job_id = submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), model=MODEL,
                                  batch_size=1), send_chunks)
    report = wait_for_job(job_id)
    assert (report.status, report.done, report.failed) == ("finished", 10, 0)
    states = JobRecord(ns.redis, job_id).chunk_states()
    assert len(states) == 10 and {s["state"] for s in states.values()} == {"finished"}
    assert {s["worker"] for s in states.values()} == {"w1@testhost", "w2@testhost"}
    assert sorted(manifest_ids(tmp_path / "out", job_id)) == sorted(report_ids(prompts))


def report_ids(prompts):
    from dreamgen.prompts.files import iter_prompt_file

    return [s.id for s in iter_prompt_file(prompts, {}, "tiny-random")]


def test_a_threads_worker_keeps_its_slots_full_across_chunks(ns, tmp_path):
    """One process holding three chunk tasks at once feeds one slot pool: documents of different chunks are in
    flight together, and every document comes out as `dreamgen run` makes it, once."""
    pooled = ns.worker("pooled", pool="threads", concurrency=3, DREAMGEN_WORKER_SLOTS=6)
    try:
        _pooled_job(ns, tmp_path)
    finally:  # the module's later tests expect only their own workers
        pooled.stop()
        del ns.workers["pooled"]


def _pooled_job(ns, tmp_path):
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.dispatch import send_chunks

    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(9, tokens=60))
    job_id = submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), model=MODEL, batch_size=3),
                        send_chunks)
    record = JobRecord(ns.redis, job_id)
    together = []  # chunks running with documents left, seen at once

    def finished():
        running = [c for c in record.chunk_states().values()
                   if c["state"] == "running" and c["done"] + c["failed"] < c["total"]]
        together.append(len(running))
        return record.status and record.status.final

    wait_until(finished, interval=0.05, what="the job's end")
    assert max(together) >= 2  # one pool served several chunks at once
    assert "SharedPool with 6 slots" in ns.workers["pooled"].text()
    with one_torch_thread():
        ran = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "local"), "--job-id", "local"])
    assert ran.exit_code == 0, ran.output
    ids = manifest_ids(tmp_path / "out", job_id)
    assert len(ids) == len(set(ids)) == 9 and sorted(ids) == sorted(manifest_ids(tmp_path / "local", "local"))
    for doc_id in ids:
        assert _document(tmp_path / "out" / job_id / doc_id) == _document(tmp_path / "local" / "local" / doc_id)


def test_chunk_of_a_killed_worker_is_redelivered_to_the_other(ns, tmp_path):
    """SIGKILL the process running a chunk after its first document is stored. The late-acked message goes
    back to the queue (reject on worker lost); the other worker takes it once the dead one's lock expires,
    skips the stored document and generates the rest: every document once in the manifest."""
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.app import client_app
    from dreamgen.workers.dispatch import send_chunks

    ns.worker("w1"), ns.worker("w2")
    prompts = write_prompts(tmp_path / "p.jsonl", first_quick_then_long(2))
    job_id = submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), model=MODEL,
                                  batch_size=3), send_chunks)
    record = JobRecord(ns.redis, job_id)

    def first_document_stored():
        state = record.chunk_state("1.0")
        return state if state and state["state"] == "running" and state["done"] >= 1 else None

    state = wait_until(first_document_stored, what="the chunk's first document")

    # Celery's own view of the running task: state PROGRESS with the chunk's counts. The worker writes the chunk's
    # record, then the task's state: one Redis write behind, so wait for it rather than race it.
    def progress_meta():
        keys = ns.redis.keys(f"{ns.prefix}:celery:celery-task-meta-{job_id}.1.0.*")
        meta = json.loads(ns.redis.get(keys[0])) if len(keys) == 1 else None
        return meta if meta and meta["status"] == "PROGRESS" and meta["result"]["done"] >= 1 else None

    meta = wait_until(progress_meta, what="the task's PROGRESS state")
    assert meta["result"]["total"] == 3
    victim = ns.workers[state["worker"].split("@")[0]]
    survivor = ns.workers["w2" if victim.name == "w1" else "w1"]
    # The victim's main process stays up to requeue the message; it must not take the chunk back itself.
    replies = client_app().control.cancel_consumer("dreamgen.gpu", destination=[victim.node], reply=True,
                                                   timeout=10)
    assert replies, "the victim did not answer the cancel_consumer request"
    for pid in victim.pool_pids():
        os.kill(pid, signal.SIGKILL)

    report = wait_for_job(job_id)
    assert (report.status, report.done, report.failed) == ("finished", 3, 0)
    ids = manifest_ids(tmp_path / "out", job_id)
    assert len(ids) == len(set(ids)) == 3
    final = record.chunk_state("1.0")
    assert final["worker"] == survivor.node
    assert final["attempt"] == 2
    assert final["result"]["skipped"] >= 1 and final["result"]["done"] + final["result"]["skipped"] == 3
    assert "SIGKILL" in victim.text() or "WorkerLostError" in victim.text()
    victim.stop()  # its model is gone and it consumes nothing now; the next test starts a fresh one


def test_a_chunk_that_keeps_killing_workers_gives_up(ns, tmp_path):
    """The attempt counter: a chunk started more than DREAMGEN_MAX_ATTEMPTS times records its documents as
    failed instead of being redelivered forever. (Its earlier deaths are played by presetting the counter.)"""
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.dispatch import send_chunks

    ns.worker("w1"), ns.worker("w2")
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(2))
    record = JobRecord(ns.redis, "doomed-1")
    ns.redis.hset(record.attempts_key, "1.0", 3)  # three workers died on it already
    submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), model=MODEL, job_id="doomed-1",
                         batch_size=2), send_chunks)
    report = wait_for_job("doomed-1")
    # every document failed: the job failed (issue 33), it did not finish
    assert (report.status, report.done, report.failed) == ("failed", 0, 2)
    assert all("ChunkGaveUp" in error for error in report.failures.values())
    errors = [json.loads(line) for line in (tmp_path / "out" / "doomed-1" / "errors.jsonl").read_text().splitlines()]
    assert len(errors) == 2 and {e["error"] for e in errors} == {"ChunkGaveUp"}
    assert record.chunk_state("1.0")["state"] == "gave-up"


def test_chunk_of_a_worker_killed_whole_comes_back_after_the_visibility_timeout(ns, tmp_path):
    """SIGKILL a whole worker (main process and child, as when its machine dies): nobody requeues its chunk,
    so Redis hands it to the next worker once the visibility timeout has passed since its delivery."""
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.dispatch import send_chunks

    for name in list(ns.workers):  # only the victim may take the chunk
        ns.workers.pop(name).stop()
    victim = ns.worker("victim")
    prompts = write_prompts(tmp_path / "p.jsonl", first_quick_then_long(2))
    job_id = submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), model=MODEL,
                                  batch_size=3), send_chunks)
    record = JobRecord(ns.redis, job_id)
    wait_until(lambda: (state := record.chunk_state("1.0")) and state["done"] >= 1 and state["state"] == "running",
               what="the chunk's first document")
    os.killpg(victim.process.pid, signal.SIGKILL)
    victim.stop()
    killed_at = time.monotonic()
    # A short visibility timeout for the worker that sweeps (it must exceed its own task time limit).
    survivor = ns.worker("survivor", DREAMGEN_TASK_TIME_LIMIT=20, DREAMGEN_VISIBILITY_TIMEOUT=22)
    report = wait_for_job(job_id)
    assert (report.status, report.done, report.failed) == ("finished", 3, 0)
    assert time.monotonic() - killed_at >= 10  # it was not requeued at once: nobody was left to do it
    ids = manifest_ids(tmp_path / "out", job_id)
    assert len(ids) == len(set(ids)) == 3
    final = record.chunk_state("1.0")
    assert (final["worker"], final["attempt"]) == (survivor.node, 2)
    assert final["result"]["skipped"] >= 1
    survivor.stop()


def children_of(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc: no pgrep needed)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_worker_command_starts_a_celery_worker(ns, tmp_path):
    """`dreamgen worker` on a CPU machine: one celery worker process, which finishes a job."""
    import subprocess
    import sys

    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.dispatch import send_chunks

    for name in list(ns.workers):  # only the launched worker may take this job
        ns.workers.pop(name).stop()
    log = open(tmp_path / "launcher.log", "wb")
    launcher = subprocess.Popen([sys.executable, "-m", "dreamgen", "worker", "--name", "launched", "-l", "INFO"],
                                env={**os.environ, **ns.env}, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(2))
        job_id = submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), model=MODEL,
                                      batch_size=2), send_chunks)
        report = wait_for_job(job_id)
        assert (report.status, report.done) == ("finished", 2)
        os.killpg(launcher.pid, signal.SIGTERM)  # the launcher passes it on: a warm shutdown
        assert launcher.wait(timeout=60) == 0
    finally:
        # its workers run in process groups of their own (launcher.py): find them before the launcher goes
        for pid in [launcher.pid] + children_of(launcher.pid):
            try:
                os.killpg(pid, signal.SIGKILL)  # it and anything left in its group
            except ProcessLookupError:
                pass
        launcher.wait()
        log.close()
    text = (tmp_path / "launcher.log").read_text()
    assert "launched@" in text and "starting launched" in text


# -------------------------------------------------------------------------------------------- no services
def test_settings_for_long_gpu_tasks(monkeypatch):
    from dreamgen.errors import DreamgenError
    from dreamgen.workers.settings import celery_settings

    monkeypatch.setenv("DREAMGEN_TASK_TIME_LIMIT", "7200")
    monkeypatch.delenv("DREAMGEN_VISIBILITY_TIMEOUT", raising=False)
    s = celery_settings("redis://:pw@redis.internal:6380/2")
    assert s["broker_url"] == s["result_backend"] == "redis://:pw@redis.internal:6380/2"
    assert (s["worker_prefetch_multiplier"], s["task_acks_late"], s["task_reject_on_worker_lost"]) == (1, True, True)
    # a running chunk goes on through a broker restart (test_redis_restart.py)
    assert not s["worker_cancel_long_running_tasks_on_connection_loss"] and s["task_track_started"]
    assert s["task_time_limit"] == 7200
    assert s["broker_transport_options"]["visibility_timeout"] == 7200 + 300
    assert s["result_backend_transport_options"]["visibility_timeout"] == 7200 + 300
    assert s["task_serializer"] == s["result_serializer"] == "json" and s["accept_content"] == ["json"]
    assert s["result_expires"] > 0 and "broker_use_ssl" not in s
    tls = celery_settings("rediss://:pw@redis.internal:6380/0")
    assert tls["broker_use_ssl"]["ssl_cert_reqs"] == tls["redis_backend_use_ssl"]["ssl_cert_reqs"] != 0
    assert "broker_use_ssl" not in celery_settings("rediss://h:6380/0?ssl_cert_reqs=required")
    monkeypatch.setenv("DREAMGEN_VISIBILITY_TIMEOUT", "7000")
    with pytest.raises(DreamgenError, match="must exceed the task time limit"):
        celery_settings()


def test_a_chunk_carries_its_specs_not_the_file(tmp_path):
    from dreamgen.distributed.chunks import spec_from_wire, spec_to_wire
    from dreamgen.prompts.files import iter_prompt_file

    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a", "seed": 3, "guidance": 5},
                                                   {"id": "My Doc", "prompt": "b", "title": "B"}])
    specs = list(iter_prompt_file(prompts, {"steps": 4}, "tiny-random"))
    wire = [json.loads(json.dumps(spec_to_wire(s))) for s in specs]
    assert wire[0]["params"] == {"seed": 3, "guidance": 5, "steps": 4}  # defaults left out
    assert [spec_from_wire(w) for w in wire] == specs


def test_broker_urls_are_printed_without_password():
    from dreamgen.distributed.broker import redact

    assert redact("redis://:s3cret@host:6379/0") == "redis://:***@host:6379/0"
    assert redact("rediss://user:s3cret@host/1") == "rediss://user:***@host/1"
    assert redact("redis://localhost:6379/0") == "redis://localhost:6379/0"


def test_worker_plan_pins_one_process_per_gpu():
    from dreamgen.workers.launcher import plan_workers

    plan = plan_workers(["0", "1"], broker_url="redis://:pw@h:6379/0")
    assert [p.name for p in plan] == ["dreamgen-gpu0", "dreamgen-gpu1", "dreamgen-light"]
    assert [p.env["CUDA_VISIBLE_DEVICES"] for p in plan] == ["0", "1", ""]
    assert plan[0].argv[plan[0].argv.index("-Q") + 1] == "dreamgen.gpu"
    assert plan[0].env["DREAMGEN_WORKER_DEVICE"] == "cuda" and plan[2].env["DREAMGEN_WORKER_PRELOAD"] == "0"
    assert "pw" not in plan[0].describe() and ":***@h" in plan[0].describe()
    [cpu] = plan_workers(None)
    assert cpu.argv[cpu.argv.index("-Q") + 1] == "dreamgen.gpu,dreamgen.light" and "CUDA_VISIBLE_DEVICES" not in cpu.env


def test_workers_send_task_events_unless_told_not_to():
    from dreamgen.workers.launcher import plan_workers
    from dreamgen.workers.settings import celery_settings

    assert all("-E" in p.argv for p in plan_workers(["0"]))
    [quiet] = plan_workers(None, events=False)
    assert "-E" not in quiet.argv and quiet.env["DREAMGEN_WORKER_EVENTS"] == "0"
    assert celery_settings()["worker_send_task_events"] and celery_settings()["task_send_sent_event"]
    dry = CliRunner().invoke(cli, ["worker", "--dry-run", "--no-events"])
    assert dry.exit_code == 0 and "DREAMGEN_WORKER_EVENTS=0" in dry.output and " -E" not in dry.output
    assert " -E" in CliRunner().invoke(cli, ["worker", "--dry-run"]).output
