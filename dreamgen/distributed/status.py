"""Where distributed jobs stand, and stopping them: what `dreamgen status`, `jobs` and `cancel` show and do.

    job_status  from the Redis record while it lives; from job.json and the done markers in storage after
    list_jobs   the newest records
    cancel_job  the cancel flag the workers check between steps
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..clock import utc_text
from ..errors import BrokerUnavailable, JobNotFound, JobStateError
from ..jobs.output import JobOutput
from ..jobs.storage import open_storage, shared_location
from . import broker
from .records import ChunkState, JobRecord, JobStatus, RecentJobs, record_ttl

FAILURES_SHOWN = 20


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
    failures: dict = field(default_factory=dict)  # document id -> error (the first few)
    created: str | None = None
    finished: str | None = None

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed)

    @property
    def final(self) -> bool:
        return self.status in (JobStatus.FINISHED.value, JobStatus.CANCELLED.value)


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
               endpoint_url: str | None = None, failures: int = FAILURES_SHOWN) -> JobReport:
    """Where `job_id` stands. From its Redis record while it lives; else (expired, or Redis down) from
    job.json and the markers under `out`."""
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
            return _report_from_record(record, data, failures)
    if out is None:
        raise not_found(job_id, url)
    return _report_from_storage(job_id, out, endpoint_url, failures)


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
    return JobReport(id=record.job_id, status=data.get("status", "?"), total=_int(data.get("total")), done=done,
                     failed=failed, location=data.get("location", ""), out=data.get("out", ""), source="redis",
                     round=rnd, chunks=dict(by_state), running=running, failures=record.failures(failures),
                     created=data.get("created"), finished=_time(data.get("finished")))


def _report_from_storage(job_id: str, out: str, endpoint_url: str | None, failures: int) -> JobReport:
    output = JobOutput(open_storage(shared_location(out), endpoint_url), job_id)
    stored = output.read_job()
    if stored is None:
        raise JobNotFound(f"no job {job_id} in {out} (no {output.url_for('job.json')})")
    failed_entries = output.failed()
    done = stored["done"] if "done" in stored and stored.get("status") in ("finished", "cancelled") \
        else len(output.done_ids())
    return JobReport(id=job_id, status=stored.get("status", "?"), total=_int(stored.get("total")), done=done,
                     failed=len(failed_entries), out=out, source="storage",
                     location=output.location(stored.get("formats") or ["html"]),
                     failures={e["id"]: f"{e['error']}: {e['message']}" for e in failed_entries[:failures]},
                     created=stored.get("created"), finished=stored.get("finished"))


def refuse_if_active(record: JobRecord, doing: str = "submit it again") -> None:
    status = record.status
    if status is not None and not status.final:
        raise JobStateError(f"job {record.job_id} is {status.value}; wait for it to end, or cancel it, "
                            f"before you {doing}")


def not_found(job_id: str, url: str) -> JobNotFound:
    days = record_ttl() / 86400
    return JobNotFound(f"no record of job {job_id} at {broker.redact(url)} (records expire after {days:g} days); "
                       "give --out to read its job.json from storage")


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
