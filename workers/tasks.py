"""The tasks: thin shells over the library (dreamgen.distributed: chunks, submit, schedules).

Library imports happen inside the tasks so the parent of a prefork pool stays light and never loads a model.
A task returns {status, error}-style results instead of raising, so one bad chunk does not fail the chord.
"""
from __future__ import annotations

from . import check_ins  # noqa: F401 (connects its signals)
from .app import app
from .model_cache import pool_for_job
from .settings import CHUNK_TASK, FINALIZE_TASK, FIRE_SCHEDULE_TASK


@app.task(name=CHUNK_TASK, bind=True)
def generate_chunk_task(self, job: dict, chunk: str, specs: list[dict]) -> dict:
    """Generate one chunk of a job's documents (see dreamgen.distributed.chunks.run_chunk)."""
    from dreamgen.distributed.broker import connect
    from dreamgen.distributed.chunks import ChunkLimits, JobWire, run_chunk, spec_from_wire
    from dreamgen.errors import ChunkBusy

    def report(meta: dict) -> None:
        self.update_state(state="PROGRESS", meta=meta)

    try:
        return run_chunk(JobWire.from_dict(job), chunk, [spec_from_wire(s) for s in specs], connect(check=False),
                         worker=self.request.hostname or "worker", load_pool=pool_for_job, report=report,
                         limits=ChunkLimits.from_settings())
    except ChunkBusy as busy:  # a redelivery while its first worker still holds it (or its lock has not expired)
        raise self.retry(countdown=busy.retry_after, max_retries=None)


@app.task(name=FINALIZE_TASK)
def finalize_task(job: dict) -> dict:
    """The chord's callback (and its error callback): manifest, index page, job.json and the record's status."""
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
