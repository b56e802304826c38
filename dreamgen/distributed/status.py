"""Where distributed jobs stand, and stopping them: what `dreamgen status`, `jobs` and `cancel` show and do.

    job_status  from the Redis record while it lives; from job.json and the done markers in storage after
    list_jobs   the newest records
    cancel_job  the cancel flag the workers check between steps
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from .. import settings
from ..clock import parse_utc, utc_text
from ..errors import BrokerUnavailable, JobNotFound, JobStateError
from ..jobs.lock import stopped_run
from ..jobs.output import JobOutput
from ..jobs.storage import open_storage, shared_location
from . import broker
from .consumers import no_consumer
from .records import ChunkState, JobRecord, JobStatus, RecentJobs, record_ttl

FAILURES_SHOWN = 20
LOST = "lost"  # a report's status, never a record's: Redis forgot an unfinished job
STOPPED = "stopped"  # a report's status: the local run of a job died without recording its end


@dataclass
class JobReport:
    """What `dreamgen status` shows."""

    id: str
    status: str
    total: int
    done: int
    failed: int
    location: str = ""
    out: str = ""
    source: str = "redis"  # redis (live) | storage (job.json, after the record expired)
    round: int = 0
    chunks: dict = field(default_factory=dict)  # chunk state -> how many, in the current round
    running: list = field(default_factory=list)  # states of the running chunks (worker, counts)
    lost: list = field(default_factory=list)  # states of "running" chunks whose lock expired: their worker died
    lost_queue: str | None = None  # why nothing runs this unfinished job any more (Redis lost its record)
    resume: str | None = None  # the command that resumes it
    failures: dict = field(default_factory=dict)  # document id -> error (the first few)
    created: str | None = None
    finished: str | None = None
    submitted: float | None = None  # epoch seconds of the last submission (job.json), for a report from storage
    error: str | None = None  # why a failed job failed
    context_full: int = 0  # of the done: cut short by the model's context (counted when a round finishes)
    no_worker: list = field(default_factory=list)  # "no worker is consuming <queue>" for each queue it waits on

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed)

    @property
    def final(self) -> bool:  # "lost": it will not move by itself either
        return self.status in (JobStatus.FINISHED.value, JobStatus.CANCELLED.value, JobStatus.FAILED.value, LOST,
                               STOPPED)


# -------------------------------------------------------------------------------------------- control
def cancel_job(job_id: str, broker_url: str | None = None) -> JobReport:
    """Ask the workers to stop `job_id`: running chunks stop at their next step, queued ones generate nothing.
    The job turns `cancelled` once its chunks have drained. Stored documents stay; `retry` finishes the rest."""
    url = broker.broker_url(broker_url)
    client = broker.connect(url)
    record = JobRecord(client, job_id)
    data = record.read()
    if not data:
        raise not_found(job_id, url)
    status = JobStatus(data["status"])
    if status.final:
        raise JobStateError(f"job {job_id} is already {status.value}; nothing to cancel")
    record.request_cancel()
    return _report_from_record(record, record.read())


def job_status(job_id: str, broker_url: str | None = None, out: str | None = None,
               endpoint_url: str | None = None, failures: int = FAILURES_SHOWN,
               queues: tuple[str, str] | None = None) -> JobReport:
    """Where `job_id` stands. From its Redis record while it lives; else (expired, or Redis down) from
    job.json and the markers under `out`. `queues`: (the chunks' queue, the finalizing queue), to say which of
    those the unfinished job waits on with no worker consuming it."""
    url = broker.broker_url(broker_url)
    try:
        client = broker.connect(url)
    except BrokerUnavailable:
        if out is None:
            raise
        client = None
    if client is not None:
        record = JobRecord(client, job_id)
        data = record.read()
        if data:
            report = _report_from_record(record, data, failures)
            if queues and not report.final:
                _note_idle_queues(report, client, *queues)
            return report
    if out is None:
        raise not_found(job_id, url, client)
    report = _report_from_storage(job_id, out, endpoint_url, failures)
    if client is not None:  # Redis answers and has no record of it: is it a distributed job that never ended?
        _note_a_lost_queue(report, client, out)
    return report


def list_jobs(broker_url: str | None = None, limit: int = 20) -> list[JobReport]:
    """The newest jobs whose records have not expired, newest first."""
    client = broker.connect(broker.broker_url(broker_url))
    return [JobReport(id=d["id"], status=d.get("status", "?"), total=_int(d.get("total")), done=d["done_now"],
                      failed=d["failed_now"], location=d.get("location", ""), out=d.get("out", ""),
                      round=_int(d.get("round")), created=d.get("created"), finished=_time(d.get("finished")))
            for d in RecentJobs(client).newest(limit)]


# -------------------------------------------------------------------------------------------- reports
def _report_from_record(record: JobRecord, data: dict, failures: int = FAILURES_SHOWN) -> JobReport:
    done, failed = record.counts()
    rnd = _int(data.get("round"))
    states = {k: v for k, v in record.chunk_states().items() if k.split(".")[0] == str(rnd)}
    by_state = Counter(v["state"] for v in states.values())
    queued_chunks = _int(data.get("chunks")) - len(states)
    if queued_chunks > 0:
        by_state["queued"] = queued_chunks
    running = sorted((v for v in states.values() if v["state"] == ChunkState.RUNNING.value),
                     key=lambda v: int(v["chunk"].split(".")[1]))
    # The chunk lock is the heartbeat: its worker extends it while it works, so a "running" chunk without one
    # lost its worker (redelivered at once if only the pool process died, after the visibility timeout if the
    # whole worker did).
    pipe = record.client.pipeline(transaction=False)
    for state in running:
        pipe.exists(record.lock_key(state["chunk"]))
    alive = pipe.execute() if running else []
    lost = [state for state, held in zip(running, alive) if not held]
    running = [state for state, held in zip(running, alive) if held]
    if lost:
        by_state[ChunkState.RUNNING.value] -= len(lost)
        by_state[LOST] = len(lost)
        by_state = +by_state  # drop states counted down to none
    return JobReport(id=record.job_id, status=data.get("status", "?"), total=_int(data.get("total")), done=done,
                     failed=failed, location=data.get("location", ""), out=data.get("out", ""), source="redis",
                     round=rnd, chunks=dict(by_state), running=running, lost=lost,
                     failures=record.failures(failures), error=data.get("error") or None,
                     created=data.get("created"), finished=_time(data.get("finished")),
                     context_full=_int(data.get("context_full")))


def _report_from_storage(job_id: str, out: str, endpoint_url: str | None, failures: int) -> JobReport:
    output = JobOutput(open_storage(shared_location(out), endpoint_url), job_id)
    stored = output.read_job()
    if stored is None:
        raise JobNotFound(f"no job {job_id} in {out} (no {output.url_for('job.json')})")
    failed_entries = output.failed()
    done = stored["done"] if "done" in stored and stored.get("status") in ("finished", "cancelled") \
        else len(output.done_ids())
    report = JobReport(id=job_id, status=stored.get("status", "?"), total=_int(stored.get("total")), done=done,
                       failed=len(failed_entries), out=out, source="storage",
                       submitted=_parsed(stored.get("submitted")),
                       location=output.location(stored.get("formats") or ["html"]),
                       failures={e["id"]: f"{e['error']}: {e['message']}" for e in failed_entries[:failures]},
                       created=stored.get("created"), finished=stored.get("finished"),
                       context_full=_int(stored.get("context_full")))
    if report.status == JobStatus.RUNNING.value and report.submitted is None:  # a `dreamgen run`: is it alive?
        why = stopped_run(output)
        if why:  # issue 33: killed (kill -9, a machine lost) without a word; its job.json cannot say so itself
            report.status, report.lost_queue = STOPPED, f"{why}; job.json still says running"
            report.resume = f"dreamgen run --resume {job_id} --out {out}"
    return report


def _note_idle_queues(report: JobReport, client, chunk_queue: str, finalize_queue: str) -> None:
    """Issue 33: a job whose queue nobody consumes would wait in silence."""
    waiting_on = [finalize_queue]  # every unfinished job is closed by a finalize task
    if report.status == JobStatus.QUEUED.value or report.chunks.get("queued") or report.chunks.get(LOST):
        waiting_on.insert(0, chunk_queue)
    report.no_worker = [note for note in (no_consumer(client, q) for q in dict.fromkeys(waiting_on)) if note]


def redelivery_by(state: dict) -> float:
    """When Redis hands a lost chunk to another worker at the latest: the visibility timeout after its start."""
    return float(state.get("started") or state.get("updated") or time.time()) + settings.visibility_timeout_s()


def _note_a_lost_queue(report: JobReport, client, out: str) -> None:
    """A job submitted to the workers whose job.json says it has not ended, while Redis has no record of it:
    nothing will run it again (its queue and its count of ended chunks went with the record). Say why, and how to
    resume it."""
    stored_status = report.status
    if report.submitted is None or stored_status in (JobStatus.FINISHED.value, JobStatus.CANCELLED.value,
                                                     JobStatus.FAILED.value):
        return
    redis_started = _redis_started(client)
    if redis_started is not None and redis_started > report.submitted:
        why = (f"Redis was restarted at {utc_text(redis_started)}, after the job was submitted, and kept none of "
               "it (no persistence): its queued chunks are lost")
    else:
        why = "Redis holds no record of this unfinished job (expired or deleted): nothing will run its chunks"
    report.status, report.lost_queue = LOST, f"{why}; job.json still says {stored_status}"
    report.resume = f"dreamgen retry {report.id} --out {out}"


def _redis_started(client) -> float | None:
    try:
        seconds, micros = client.time()
        return seconds + micros / 1e6 - float(client.info("server")["uptime_in_seconds"])
    except Exception:  # a managed Redis may refuse INFO: then say less
        return None


def refuse_if_active(record: JobRecord, doing: str = "submit it again") -> None:
    status = record.status
    if status is not None and not status.final:
        raise active_error(record.job_id, status, doing)


def active_error(job_id: str, status: JobStatus, doing: str = "submit it again") -> JobStateError:
    return JobStateError(f"job {job_id} is {status.value}; wait for it to end, or cancel it, before you {doing}")


def not_found(job_id: str, url: str, client=None) -> JobNotFound:
    days = record_ttl() / 86400
    started = _redis_started(client) if client is not None else None
    restart = f"; Redis was started at {utc_text(started)} and keeps nothing across a restart without persistence" \
        if started is not None else ""
    return JobNotFound(f"no record of job {job_id} at {broker.redact(url)} (records expire after {days:g} days"
                       f"{restart}); give --out to read its job.json from storage")


def _parsed(text: str | None) -> float | None:
    try:
        return parse_utc(text).timestamp() if text else None
    except ValueError:
        return None


def _int(value) -> int:
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return 0


def _time(value) -> str | None:
    """A record's epoch seconds as UTC ISO text."""
    if not value:
        return None
    try:
        return utc_text(float(value))
    except ValueError:
        return str(value)
