"""Distributed jobs: a prompt file submitted to Celery workers, retried, and finalized when its chunks end.

    submit_job    validate the whole file (jobs.spec.check_job) -> a new round in Redis, claimed in one step (two
                  submits of one job id at once: one is refused) -> job.json -> chunks of batch_size, streamed
                  from the prompt file and sent one by one by the caller's ChunkSender (workers.dispatch.send_chunks),
                  which then seals the round with their number (JobRecord.seal); memory stays flat
    workers       run each chunk (chunks.run_chunk) and count its end (JobRecord.chunk_ended) -> the end that
                  completes the sealed round (or the seal itself) sends the task that calls finalize_job
    retry_job     the same, for the documents of an ended job that are not done

Nothing here imports Celery or workers/: the sender is passed in, so the library never reaches up into the
process that hosts it.
"""
from __future__ import annotations

from typing import Callable, Iterable

from .. import settings
from ..clock import utc_now
from ..errors import StorageError
from ..jobs.output import JobOutput
from ..jobs.spec import JobConfig, batched, check_job, stored_config
from ..jobs.storage import shared_location
from ..prompts.files import iter_prompt_file, validate_prompt_file
from . import broker
from .chunks import JobWire, spec_to_wire
from .records import JobActive, JobRecord, JobStatus
from .status import active_error, not_found, refuse_if_active

# Queues a job's chunks (lists of wire specs) for the workers as they come, keeping none, then seals the round
# (JobRecord.seal, sending the finalize task if told to); returns (chunks, documents) queued. With no chunks it sends
# and seals nothing (the job is then finalized by the caller).
ChunkSender = Callable[[str, JobWire, Iterable[list[dict]]], tuple[int, int]]


def submit_job(config: JobConfig, send_chunks: ChunkSender, broker_url: str | None = None) -> str:
    """Validate `config`'s whole prompt file, then queue its documents (those not stored yet) for the workers.
    Returns the job id. Raises PromptFileError / ParamsError for a bad file before anything is queued, and
    BrokerUnavailable within seconds when Redis does not answer."""
    url = broker.broker_url(broker_url)
    client = broker.connect(url)
    config.out = shared_location(config.out)
    if config.job_id:
        refuse_if_active(JobRecord(client, config.job_id))  # early, before reading the whole file
    output, total = check_job(config, settings.task_time_limit_s())  # a document a chunk cannot hold: refused
    previous = output.read_job() or {}
    stored = {**config.record(created=previous.get("created") or utc_now(), total=total),
              "round": previous.get("round") or 0}
    _queue(client, url, config, output, total, send_chunks, stored)
    return config.job_id


def retry_job(job_id: str, send_chunks: ChunkSender, broker_url: str | None = None, out: str | None = None,
              endpoint_url: str | None = None) -> int:
    """Queue again the documents of an ended job that are not done (the failed ones, and those a cancel
    skipped). Done documents are never generated again. Returns how many were queued (0: nothing to do).
    Reads the job's prompt file again, so it must still be there."""
    url = broker.broker_url(broker_url)
    client = broker.connect(url)
    record = JobRecord(client, job_id)
    data = record.read()
    if data:
        refuse_if_active(record, "retry it")
        out = data.get("out") or out
        endpoint_url = endpoint_url or (data.get("config") or {}).get("endpoint_url") or None
    elif out is None:
        raise not_found(job_id, url)
    config = stored_config(job_id, out, endpoint_url)
    output = config.output()
    total = validate_prompt_file(config.prompts, config.defaults, config.model)
    done = output.done_ids()
    if all(spec.id in done for spec in iter_prompt_file(config.prompts, config.defaults, config.model)):
        return 0  # nothing to retry: the job's record, job.json, manifest and chunk history stay as they are
    return _queue(client, url, config, output, total, send_chunks, output.read_job() or config.record(),
                  "retry it")


def _queue(client, url: str, config: JobConfig, output: JobOutput, total: int, send_chunks: ChunkSender,
           stored: dict, doing: str = "submit it again") -> int:
    """Claim a new round of the job in Redis (refused if one is under way: JobStateError), then write job.json
    (`stored`, the job as it is to be recorded) and queue the documents not done."""
    done_before = output.done_ids()
    record = JobRecord(client, config.job_id)
    try:
        rnd = record.start_round({"out": config.out, "location": output.location(config.formats), "total": total,
                                  "prompts": config.prompts, "model": config.model,
                                  "created": stored.get("created") or utc_now(), "config": config.wire(),
                                  "chunks": 0, "queued": 0}, done_ids=done_before, after=int(stored.get("round") or 0))
    except JobActive as active:  # another submit of this job id won the race; nothing of ours was written
        raise active_error(config.job_id, active.status, doing) from None
    previous_end = ("finished", "done", "failed")  # of an earlier round; finalize writes them anew
    output.write_job({**{k: v for k, v in stored.items() if k not in previous_end},
                      "status": JobStatus.QUEUED.value, "submitted": utc_now(), "round": rnd})
    job = JobWire(config, rnd)
    pending = (spec_to_wire(s) for s in iter_prompt_file(config.prompts, config.defaults, config.model)
               if s.id not in done_before)
    try:
        n_chunks, n_docs = send_chunks(url, job, batched(pending, config.batch_size))
    except BaseException:  # nothing (or part) went out: close the job, so it can be submitted again
        record.request_cancel()
        record.finish(JobStatus.CANCELLED, {}, rnd)
        raise
    if n_chunks == 0:  # everything was stored already
        finalize_job(job, client, output)  # here, with the submitter's own access
    return n_docs


def finalize_job(job: JobWire, client, output: JobOutput | None = None) -> dict:
    """Close a round of a job (the finalize task, once every chunk of the round has ended): rebuild manifest,
    errors and index from the markers, write job.json's status and counts, mark the record finished or cancelled.
    Idempotent. When the storage refuses (S3 past its retries, a full disk), the record says the job failed and
    why: never "running" forever."""
    record = JobRecord(client, job.id)
    try:
        output = output or job.output()  # a worker's: as its settings allow (access.py), or refused
        counts = output.finalize(job.config.formats)
    except StorageError as e:
        done, failed = record.counts()
        record.finish(JobStatus.FAILED, {"done": done, "failed": failed, "error": str(e)}, job.round)
        return {"job": job.id, "status": JobStatus.FAILED.value, "error": str(e), "done": done, "failed": failed}
    current_round = client.hget(record.key, "round")
    if current_round is not None and current_round != str(job.round):
        return {"job": job.id, "status": "superseded", **counts}  # a newer round owns the job now
    cancelled = record.cancel_requested() or record.status is JobStatus.CANCELLING
    status = JobStatus.CANCELLED if cancelled else JobStatus.FINISHED
    ended = dict(counts)
    if status is JobStatus.FINISHED and counts["failed"] and not counts["done"]:  # issue 33: not "finished"
        status, ended["error"] = JobStatus.FAILED, f"every document failed ({counts['failed']})"
    output.write_job({**(output.read_job() or {}), "status": status.value, "finished": utc_now(), **ended})
    record.finish(status, ended, job.round)
    return {"job": job.id, "status": status.value, **ended}
