"""Issue 33, workers shared by many jobs, against a real Redis (and a real worker where one runs): two submits of
one job id at once queue one round; a schedule does not pile up jobs while its previous one is under way; a job
whose queue nobody consumes says so."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from tests.celery_support import MODEL, ROOT, Namespace, quick_prompts, wait_for_job, wait_until, write_prompts

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def ns(tmp_path_factory, dreamgen_home, installed_tiny):
    with Namespace(tmp_path_factory.mktemp("guards"), dreamgen_home) as namespace:
        yield namespace


def _at_once(calls: list) -> list:
    """Run the calls in threads released together; each one's result, or the exception it raised."""
    barrier = threading.Barrier(len(calls))
    answers = [None] * len(calls)

    def run(index, call):
        barrier.wait()
        try:
            answers[index] = call()
        except Exception as e:  # the answer under test
            answers[index] = e

    threads = [threading.Thread(target=run, args=(i, call)) for i, call in enumerate(calls)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return answers


def test_two_submits_of_one_job_id_at_once_queue_one_round(ns, tmp_path):
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import submit_job
    from dreamgen.errors import JobStateError
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.dispatch import send_chunks

    # No worker consumes: every chunk message either submit sent stays on the queue, to be counted.
    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(16))
    for attempt in range(3):
        job_id = f"twice-{attempt}"
        before = ns.queue_length()
        answers = _at_once([lambda: submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"),
                                                         job_id=job_id, model=MODEL, batch_size=4), send_chunks)
                            for _ in range(2)])
        accepted = [a for a in answers if a == job_id]
        refused = [a for a in answers if isinstance(a, JobStateError)]
        assert (len(accepted), len(refused)) == (1, 1), answers
        assert str(refused[0]) == (f"job {job_id} is queued; wait for it to end, or cancel it, "
                                   "before you submit it again")
        assert ns.queue_length() - before == 4  # 16 documents in chunks of 4, once
        record = JobRecord(ns.redis, job_id).read()
        assert (record["round"], record["queued"], record["chunks"]) == ("1", "16", "4")


# -------------------------------------------------------------------------------------------- no worker, no word
def test_a_job_nobody_consumes_says_so_within_ten_seconds(ns, tmp_path):
    from dreamgen.distributed.consumers import QueueConsumers

    prompts = write_prompts(tmp_path / "p.jsonl", quick_prompts(2))
    submitting = subprocess.Popen([sys.executable, "-m", "dreamgen", "submit", str(prompts), "--out", str(tmp_path / "out"),
                                   "--job-id", "nobody-1", "--wait"], cwd=ROOT, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True,
                                  env={**os.environ, **ns.env, "PYTHONUNBUFFERED": "1"})
    lines = []  # (when, line)
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in submitting.stdout),
                              daemon=True)
    reader.start()
    try:
        submitted = wait_until(lambda: next((t for t, line in lines if line.strip() == "nobody-1"), None),
                               what="the job id")
        warned = wait_until(lambda: next((t for t, line in lines if "no worker is consuming dreamgen.gpu" in line),
                                         None), timeout=30, what="the warning")
        assert warned - submitted < 10
        assert submitting.poll() is None  # it goes on waiting, now with word
    finally:
        submitting.kill()
        submitting.wait()
    warning = next(line for _, line in lines if "dreamgen.gpu" in line)
    assert warning.strip() == ("Warning: no worker is consuming dreamgen.gpu (none has checked in for 10 s): "
                               "the job waits until one starts, e.g. `dreamgen worker -Q dreamgen.gpu`")

    shown = CliRunner().invoke(cli, ["status", "nobody-1"])
    assert shown.exit_code == 0, shown.output
    assert "Job nobody-1: queued" in shown.output
    assert "  no worker is consuming dreamgen.gpu (none has checked in" in shown.output
    assert "  no worker is consuming dreamgen.light (none has checked in" in shown.output

    worker = ns.worker("w1")
    try:
        assert sorted(QueueConsumers(ns.redis, q).alive() for q in ("dreamgen.gpu", "dreamgen.light")) == \
            [["w1@testhost"], ["w1@testhost"]]
        report = wait_for_job("nobody-1")
        assert (report.status, report.done) == ("finished", 2)
        shown = CliRunner().invoke(cli, ["status", "nobody-1"])
        assert "no worker" not in shown.output
    finally:
        worker.stop()
        del ns.workers["w1"]
    assert QueueConsumers(ns.redis, "dreamgen.gpu").alive() == []  # a worker shut down cleanly leaves at once

    # One killed outright is forgotten STALE_S (10 s) after its last check-in.
    killed = ns.worker("w2", queues="dreamgen.gpu")
    try:
        assert QueueConsumers(ns.redis, "dreamgen.gpu").alive() == ["w2@testhost"]
        killed._signal_group(signal.SIGKILL)
        gone = time.monotonic()
        wait_until(lambda: not QueueConsumers(ns.redis, "dreamgen.gpu").alive(), timeout=30, interval=0.5,
                   what="the killed worker to be forgotten")
        assert time.monotonic() - gone < 12
    finally:
        killed.stop()
        del ns.workers["w2"]


# -------------------------------------------------------------------------------------------- schedules
def _utc(hour, minute, second=0):
    return datetime(2026, 12, 1, hour, minute, second, tzinfo=timezone.utc)


def test_a_schedule_skips_a_firing_while_its_previous_job_is_under_way(ns, tmp_path, caplog):
    from dreamgen.distributed.records import JobRecord, JobStatus
    from dreamgen.distributed.schedules import Schedule, fire
    from dreamgen.workers.dispatch import send_chunks

    write_prompts(tmp_path / "p.jsonl", quick_prompts(2))
    schedule = Schedule(name="every-minute", cron="* * * * *", prompts=str(tmp_path / "p.jsonl"),
                        out=str(tmp_path / "out"), model=MODEL, batch_size=2)
    assert fire(schedule, send_chunks, now=_utc(6, 0, 5)) == "every-minute-20261201-0600"
    queued = ns.queue_length()
    caplog.set_level(logging.INFO, logger="dreamgen.distributed.schedules")
    for minute in (1, 2):  # nobody consumes: the first job stays queued, and the next firings are skipped
        assert fire(schedule, send_chunks, now=_utc(6, minute, 3)) is None
        assert f"schedule every-minute: skipped the firing of 2026-12-01 06:0{minute}: its previous job " \
               "every-minute-20261201-0600 is still queued" in caplog.text
        assert not JobRecord(ns.redis, f"every-minute-20261201-060{minute}").exists()
    assert ns.queue_length() == queued

    worker = ns.worker("w1")
    try:
        assert wait_for_job("every-minute-20261201-0600").status == "finished"
        # Once it has ended, the next firing submits; two fire times fired at once (a backlog) submit one job.
        answers = _at_once([lambda: fire(schedule, send_chunks, now=_utc(6, 3, 1)),
                            lambda: fire(schedule, send_chunks, now=_utc(6, 4, 1))])
        submitted = [a for a in answers if a]
        assert len(submitted) == 1 and answers.count(None) == 1, answers
        assert wait_for_job(submitted[0]).status == "finished"
        assert JobRecord(ns.redis, submitted[0]).status is JobStatus.FINISHED
    finally:
        worker.stop()
        del ns.workers["w1"]


def test_stopping_check_ins_from_a_signal_handler_takes_no_lock():
    """A worker's warm shutdown hung 1 time in 4 (tests/test_workers.py's launched worker): SIGTERM reached the
    celery worker twice (its process group's, and the launcher's passing it on), and the second handler ran inside
    the first's Event.set, which holds a lock. stop_soon must take none: here it returns while that lock is held."""
    from dreamgen.distributed.consumers import CheckIns

    check_ins = CheckIns(client=None, worker="w@h", queues=[])
    with check_ins._stop._cond:  # as when a signal arrives inside Event.set
        stopper = threading.Thread(target=check_ins.stop_soon, daemon=True)
        stopper.start()
        stopper.join(timeout=2)
        assert not stopper.is_alive()
    check_ins.start()  # stopped before it started: the thread checks in no more and ends
    check_ins._thread.join(timeout=5)
    assert not check_ins._thread.is_alive()
