"""The tasks: thin shells over the library (dreamgen.distributed: chunks, submit, schedules).

Library imports happen inside the tasks so the parent of a prefork pool stays light and never loads a model.
A task returns {status, error}-style results instead of raising. A chunk's end is counted in the job's record
whichever way it ends (workers.dispatch says how the job is then closed): after run_chunk, or from the task's
on_failure (killed by the hard time limit: Celery 5.7 calls it in the worker's main process; or an error).
"""
from __future__ import annotations

import logging

from . import check_ins  # noqa: F401 (connects its signals)
from .app import app
from .model_cache import pool_for_job
from .settings import CHUNK_TASK, FINALIZE_TASK, FIRE_SCHEDULE_TASK

log = logging.getLogger(__name__)


class ChunkTask(app.Task):
    """The chunk task's class: its on_failure counts the end of a chunk that did not end through run_chunk."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        from billiard.exceptions import TimeLimitExceeded

        from dreamgen.distributed.broker import connect
        from dreamgen.distributed.chunks import JobWire, chunk_failed

        from .dispatch import send_finalize, token_of

        job, chunk = args[0], args[1]  # as dispatch sends them
        timed_out = isinstance(exc, TimeLimitExceeded)
        error = (f"killed by the hard time limit ({exc})" if timed_out else f"{type(exc).__name__}: {exc}")
        try:
            if chunk_failed(JobWire.from_dict(job), chunk, connect(check=False), self.request.hostname or "worker",
                            error, timed_out):
                send_finalize(self.app, job, token_of(task_id))
        except Exception:  # in the worker's main process (hard time limit): log, never break its timeout handling
            log.exception("could not count the end of chunk %s of job %s", chunk, job.get("job_id"))


@app.task(name=CHUNK_TASK, bind=True, base=ChunkTask)
def generate_chunk_task(self, job: dict, chunk: str, specs: list[dict]) -> dict:
    """Generate one chunk of a job's documents (see dreamgen.distributed.chunks.run_chunk), then count its end."""
    from dreamgen.distributed.broker import connect
    from dreamgen.distributed.chunks import ChunkLimits, JobWire, run_chunk, spec_from_wire
    from dreamgen.distributed.records import JobRecord
    from dreamgen.errors import ChunkBusy

    from .dispatch import send_finalize, token_of

    def report(meta: dict) -> None:
        self.update_state(state="PROGRESS", meta=meta)

    wire, client = JobWire.from_dict(job), connect(check=False)
    try:
        result = run_chunk(wire, chunk, [spec_from_wire(s) for s in specs], client,
                           worker=self.request.hostname or "worker", load_pool=pool_for_job, report=report,
                           limits=ChunkLimits.from_settings())
    except ChunkBusy as busy:  # a redelivery while its first worker still holds it (or its lock has not expired)
        raise self.retry(countdown=busy.retry_after, max_retries=None)
    # Counted after its state is final: killed before this, its redelivery returns the same result and counts it.
    if JobRecord(client, wire.id).chunk_ended(chunk, wire.round):
        send_finalize(self.app, job, token_of(self.request.id))
    return result


@app.task(name=FINALIZE_TASK)
def finalize_task(job: dict) -> dict:
    """Sent once every chunk of a round has ended (workers.dispatch): manifest, index page, job.json and the
    record's status."""
    from dreamgen.distributed.broker import connect
    from dreamgen.distributed.chunks import JobWire
    from dreamgen.distributed.submit import finalize_job

    return finalize_job(JobWire.from_dict(job), connect(check=False))


@app.task(name=FIRE_SCHEDULE_TASK)
def fire_schedule_task(schedule: dict, sent_at: str | None = None) -> str | None:
    """Sent by `dreamgen beat` at a fire time (`sent_at`): submit the schedule's job for that time, once however
    often it is fired. Returns the job id, or None when this fire time already has its job."""
    from dreamgen.clock import parse_utc
    from dreamgen.distributed.schedules import Schedule, fire

    from .dispatch import send_chunks

    return fire(Schedule.from_dict(schedule), send_chunks, now=parse_utc(sent_at) if sent_at else None)
