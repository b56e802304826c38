"""Distributed jobs: a prompt file submitted to Celery workers, then watched, cancelled, retried, listed.

    submit_job  validate the whole file (open_job) -> record in Redis -> chunks of batch_size in a chord
    workers     run each chunk (dreamgen.chunks) -> the chord's callback calls finalize_job
    job_status  from the Redis record while it lives; from job.json and the done markers in storage after

Celery is imported only where a job is sent (workers.dispatch), so status and listing stay light.
"""
from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from . import broker
from .chunks import JobWire, spec_to_wire
from .errors import BrokerUnavailable, JobNotFound, JobStateError
from .jobrecord import ChunkState, JobRecord, JobStatus, RecentJobs, record_ttl
from .joboutput import JobOutput, utc_now
from .prompts import iter_prompt_file, validate_prompt_file
from .storage import open_storage

if TYPE_CHECKING:
    from .runner import JobConfig  # importing the runner imports torch: only where a job is queued

FAILURES_SHOWN = 20

__all__ = ["JobReport", "JobStatus", "cancel_job", "finalize_job", "job_status", "list_jobs", "retry_job",
           "submit_job"]


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


# -------------------------------------------------------------------------------------------- submit
def submit_job(config: JobConfig, broker_url: str | None = None) -> str:
    """Validate `config`'s whole prompt file, then queue its documents (those not stored yet) for the workers.
    Returns the job id. Raises PromptFileError / ParamsError for a bad file before anything is queued, and
    BrokerUnavailable within seconds when Redis does not answer."""
    from .runner import open_job

    url = broker.broker_url(broker_url)
    client = broker.connect(url)
    config.out = shared_location(config.out)
    if config.job_id:
        _refuse_if_active(JobRecord(client, config.job_id))
    output, total = open_job(config)
    _queue(client, url, config, output, total)
    return config.job_id


def retry_job(job_id: str, broker_url: str | None = None, out: str | None = None,
              endpoint_url: str | None = None) -> int:
    """Queue again the documents of an ended job that are not done (the failed ones, and those a cancel
    skipped). Done documents are never generated again. Returns how many were queued (0: nothing to do).
    Reads the job's prompt file again, so it must still be there."""
    from .runner import JobConfig

    url = broker.broker_url(broker_url)
    client = broker.connect(url)
    record = JobRecord(client, job_id)
    data = record.read()
    if data:
        _refuse_if_active(record, "retry it")
        out = data.get("out") or out
        endpoint_url = endpoint_url or (data.get("config") or {}).get("endpoint_url") or None
    elif out is None:
        raise _not_found(job_id, url)
    output = JobOutput(open_storage(out, endpoint_url), job_id)
    stored = output.read_job()
    if stored is None:
        raise JobNotFound(f"no job {job_id} in {out} (no {output.url_for('job.json')})")
    config = JobConfig.from_record({**stored, "out": out, "job_id": job_id, "endpoint_url": endpoint_url})
    total = validate_prompt_file(config.prompts, config.defaults, config.model)
    return _queue(client, url, config, output, total)


def _queue(client, url: str, config: JobConfig, output: JobOutput, total: int) -> int:
    from workers.dispatch import send_chunks

    from .runner import chunks

    done_before = output.done_ids()
    stored = output.read_job() or config.record()
    location = output.url_for("index.html" if "html" in config.formats else "manifest.jsonl")
    record = JobRecord(client, config.job_id)
    rnd = record.start_round({"out": config.out, "location": location, "total": total, "prompts": config.prompts,
                              "model": config.model, "created": stored.get("created") or utc_now(),
                              "config": {**config.record(), "endpoint_url": config.endpoint_url},
                              "chunks": 0, "queued": 0}, done_ids=done_before)
    previous_end = ("finished", "done", "failed")  # of an earlier round; finalize writes them anew
    output.write_job({**{k: v for k, v in stored.items() if k not in previous_end},
                      "status": JobStatus.QUEUED.value, "submitted": utc_now()})
    job = JobWire(id=config.job_id, out=config.out, round=rnd, formats=list(config.formats),
                  self_contained=config.self_contained, endpoint_url=config.endpoint_url, model=config.model,
                  dtype=config.dtype, backend=config.backend)
    pending = (spec_to_wire(s) for s in iter_prompt_file(config.prompts, config.defaults, config.model)
               if s.id not in done_before)
    try:
        n_chunks, n_docs = send_chunks(url, job, chunks(pending, config.batch_size))
    except BaseException:  # nothing (or part) went out: close the job, so it can be submitted again
        record.request_cancel()
        record.finish(JobStatus.CANCELLED, {}, rnd)
        raise
    record.set_fields(chunks=n_chunks, queued=n_docs)
    if n_chunks == 0:  # everything was stored already
        finalize_job(job, client)
    return n_docs


def shared_location(out: str) -> str:
    """`out` as every worker must see it: an s3:// URL as is, a local folder made absolute (so it must be on
    a file system the workers share)."""
    if out.startswith("s3://"):
        return out
    return str(Path(out).expanduser().resolve())


# -------------------------------------------------------------------------------------------- the end
def finalize_job(job: JobWire, client) -> dict:
    """Close a round of a job (the chord's callback): rebuild manifest, errors and index from the markers,
    write job.json's status and counts, mark the record finished or cancelled. Idempotent."""
    endpoint = os.environ.get("DREAMGEN_S3_ENDPOINT_URL") or job.endpoint_url
    output = JobOutput(open_storage(job.out, endpoint), job.id)
    counts = output.finalize(job.formats)
    record = JobRecord(client, job.id)
    current_round = client.hget(record.key, "round")
    if current_round is not None and current_round != str(job.round):
        return {"job": job.id, "status": "superseded", **counts}  # a newer round owns the job now
    cancelled = record.cancel_requested() or record.status is JobStatus.CANCELLING
    status = JobStatus.CANCELLED if cancelled else JobStatus.FINISHED
    output.write_job({**(output.read_job() or {}), "status": status.value, "finished": utc_now(), **counts})
    record.finish(status, counts, job.round)
    return {"job": job.id, "status": status.value, **counts}


# -------------------------------------------------------------------------------------------- control
def cancel_job(job_id: str, broker_url: str | None = None) -> JobReport:
    """Ask the workers to stop `job_id`: running chunks stop at their next step, queued ones generate nothing.
    The job turns `cancelled` once its chunks have drained. Stored documents stay; `retry` finishes the rest."""
    url = broker.broker_url(broker_url)
    client = broker.connect(url)
    record = JobRecord(client, job_id)
    data = record.read()
    if not data:
        raise _not_found(job_id, url)
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
        raise _not_found(job_id, url)
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
    formats = stored.get("formats") or ["html"]
    return JobReport(id=job_id, status=stored.get("status", "?"), total=_int(stored.get("total")), done=done,
                     failed=len(failed_entries), out=out, source="storage",
                     location=output.url_for("index.html" if "html" in formats else "manifest.jsonl"),
                     failures={e["id"]: f"{e['error']}: {e['message']}" for e in failed_entries[:failures]},
                     created=stored.get("created"), finished=stored.get("finished"))


def _refuse_if_active(record: JobRecord, doing: str = "submit it again") -> None:
    status = record.status
    if status is not None and not status.final:
        raise JobStateError(f"job {record.job_id} is {status.value}; wait for it to end, or cancel it, "
                            f"before you {doing}")


def _not_found(job_id: str, url: str) -> JobNotFound:
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
    from datetime import datetime, timezone

    try:
        stamp = datetime.fromtimestamp(float(value), timezone.utc)
    except ValueError:
        return str(value)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")
