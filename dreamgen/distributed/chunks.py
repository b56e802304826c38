"""One chunk of a distributed job: what its task carries, and how a worker runs it.

A chunk task carries its PromptSpecs, not the prompt file's path: workers may not see the submitter's files.
Input images travel as the locations the specs hold (absolute local paths or s3:// URLs), so a local input
image must be readable at that same path on every worker (a shared folder), or live on S3.

Running a chunk is idempotent, because Celery redelivers (late ack, lost workers, visibility timeouts):

    already ended?  -> return the result it ended with (its end is counted once per chunk key)
    job cancelled?  -> end as cancelled, generate nothing
    lock (SET NX with expiry, kept alive while generating); held by another worker -> ChunkBusy, try later
    count the attempt; past the limit -> record its documents as failed (it keeps killing workers)
    skip documents already stored -> the rest through the worker's pool (pool.py), stored as each ends

Whatever way a chunk ends (run_chunk's result, or its task failing: killed by the hard time limit, see
`chunk_failed`), the task shell counts its end once in the job's record (JobRecord.chunk_ended); the one end that
completes a sealed round sends the finalize task.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

from .. import settings
from ..errors import ChunkBusy
from ..jobs.output import DONE_DIR, JobOutput
from ..jobs.spec import JobConfig, WorkItem
from ..params import GenerationParams
from ..prompts.files import PromptSpec
from .access import read_picture, worker_storage
from .records import ChunkState, JobRecord

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 0.25  # should_stop() is polled at every decode and denoising step; Redis is asked this often
_DEFAULT_PARAMS = GenerationParams().to_dict()


# -------------------------------------------------------------------------------------------- the wire format
@dataclass
class JobWire:
    """A job as each of its chunk tasks carries it: the job's own config (its `out` as the workers must see it;
    the submitter's S3 endpoint, which a worker never uses: access.py) and the round of submission the chunk
    belongs to."""

    config: JobConfig
    round: int

    @property
    def id(self) -> str:
        return self.config.job_id

    def to_dict(self) -> dict:
        return {**self.config.wire(), "round": self.round}

    @classmethod
    def from_dict(cls, data: dict) -> "JobWire":
        return cls(JobConfig.from_record(data), int(data["round"]))

    def output(self) -> JobOutput:
        """The job's files, as this worker may write them: through its own S3 endpoint and credentials, to a
        bucket its settings allow (access.py); never through the endpoint the job was submitted with."""
        return JobOutput(worker_storage(self.config.out), self.id)


def spec_to_wire(spec: PromptSpec) -> dict:
    """A PromptSpec as JSON; parameters at their default are left out (a 100,000-prompt job is 12,500 messages).
    getattr rather than asdict(): 10x faster, and submit serialises every spec of the file."""
    params = spec.params
    return {"line": spec.line, "id": spec.id, "custom_id": spec.custom_id, "prompt": spec.prompt,
            "title": spec.title, "images": list(spec.images),
            "params": {k: v for k, d in _DEFAULT_PARAMS.items() if (v := getattr(params, k)) != d},
            **({"request_url": spec.request_url} if spec.request_url else {})}


def spec_from_wire(data: dict) -> PromptSpec:
    return PromptSpec(line=data["line"], id=data["id"], custom_id=data.get("custom_id"), prompt=data["prompt"],
                      title=data.get("title"), params=GenerationParams.from_dict(data.get("params") or {}),
                      images=list(data.get("images") or []), request_url=data.get("request_url"))


def chunk_key(rnd: int, index: int) -> str:
    return f"{rnd}.{index}"


# -------------------------------------------------------------------------------------------- limits
@dataclass
class ChunkLimits:
    lock_ttl_s: float = 300.0  # a dead worker's lock frees itself this long after its last sign of life
    max_attempts: int = 3  # starts of one chunk before its documents are recorded as failed
    time_limit_s: float = 30 * 60.0  # the task's hard limit (workers.settings); the chunk stops a little before

    @classmethod
    def from_settings(cls) -> "ChunkLimits":
        return cls(lock_ttl_s=settings.chunk_lock_ttl_s(), max_attempts=settings.max_attempts(),
                   time_limit_s=float(settings.task_time_limit_s()))

    @property
    def soft_deadline_s(self) -> float:
        """Stop generating here, leaving time to record the unfinished documents before the hard kill."""
        return self.time_limit_s - min(60.0, 0.1 * self.time_limit_s)


# -------------------------------------------------------------------------------------------- running one
class _StopGuard:
    """The generator's should_stop(): true once the job is cancelled or the chunk's deadline passes. Asks Redis
    at most every CHECK_INTERVAL_S (or right after a document finishes), and keeps the chunk's lock alive."""

    def __init__(self, record: JobRecord, lock, limits: ChunkLimits):
        self.record, self.lock, self.limits = record, lock, limits
        self.deadline = time.monotonic() + limits.soft_deadline_s
        self.reason: ChunkState | None = None
        self.force = True
        self._last_check = self._last_extend = time.monotonic()

    def __call__(self) -> bool:
        if self.reason:
            return True
        now = time.monotonic()
        if now >= self.deadline:
            self.reason = ChunkState.TIMED_OUT
            return True
        if not self.force and now - self._last_check < CHECK_INTERVAL_S:
            return False
        self.force, self._last_check = False, now
        if self.record.cancel_requested():
            self.reason = ChunkState.CANCELLED
            return True
        if now - self._last_extend >= self.limits.lock_ttl_s / 3:
            self.keep_lock()
        return False

    def keep_lock(self) -> None:
        from redis.exceptions import LockError

        self._last_extend = time.monotonic()
        try:
            self.lock.reacquire()
        except LockError:  # it expired and someone took it: go on, storage writes are idempotent
            log.warning("lost the lock of %s; another worker may be running it too", self.lock.name)


def run_chunk(job: JobWire, chunk: str, specs: list[PromptSpec], client, worker: str,
              load_pool: Callable[[JobWire], object], report: Callable[[dict], None] | None = None,
              limits: ChunkLimits | None = None) -> dict:
    """Run one chunk and return its result: {chunk, status, error, worker, attempt, done, failed, skipped,
    cancelled, documents: [{id, status, error}]}. Never raises for a document's or the chunk's failure (they are
    recorded); raises ChunkBusy when another worker holds the chunk."""
    limits = limits or ChunkLimits.from_settings()
    record = JobRecord(client, job.id)
    previous = record.chunk_state(chunk)
    if previous and ChunkState(previous["state"]).final and previous.get("result"):
        return previous["result"]  # a redelivery of a chunk that ended: same answer, nothing redone

    run = _ChunkRun(job, chunk, specs, record, worker, report)
    if record.cancel_requested():
        return run.end(ChunkState.CANCELLED, attempt=0)

    lock = record.chunk_lock(chunk, limits.lock_ttl_s)
    if not lock.acquire():
        left_ms = client.pttl(lock.name)
        raise ChunkBusy(chunk, max(1.0, (left_ms if left_ms and left_ms > 0 else 1000) / 1000 + 0.5))
    try:
        attempt = record.count_attempt(chunk)
        return run.execute(attempt, lock, limits, load_pool)
    finally:
        try:
            lock.release()
        except Exception:  # expired meanwhile: nothing to release
            pass


def chunk_failed(job: JobWire, chunk: str, client, worker: str, error: str, timed_out: bool) -> bool:
    """A chunk whose task failed outside run_chunk's own bookkeeping: killed by the hard time limit (Celery calls the
    task's on_failure in the worker's main process then, the child being gone), or an error run_chunk could not
    record. Its state says so, unless it had ended already (a kill after its end), and its end is counted, so the
    job is still closed. Its documents not stored stay as they are (no storage is touched from the main process):
    neither done nor failed, `retry` queues them. Returns whether the caller sends the finalize task."""
    record = JobRecord(client, job.id)
    previous = record.chunk_state(chunk) or {}
    if not (previous and ChunkState(previous["state"]).final):
        state = ChunkState.TIMED_OUT if timed_out else ChunkState.ERROR
        record.set_chunk_state(chunk, {**previous, "job": job.id, "chunk": chunk, "state": state.value,
                                       "worker": previous.get("worker") or worker, "error": error})
    return record.chunk_ended(chunk, job.round)


class _ChunkRun:
    """The bookkeeping of one run of a chunk: per-document outcomes, mirrored to Redis as they happen."""

    def __init__(self, job: JobWire, chunk: str, specs: list[PromptSpec], record: JobRecord, worker: str, report):
        self.job, self.chunk, self.specs, self.record, self.worker = job, chunk, specs, record, worker
        self.report = report or (lambda meta: None)
        self.outcomes: dict[str, dict] = {}  # doc id -> {id, status, error}
        self.started = time.time()  # issue 16: `status` counts a lost chunk's redelivery from here

    def execute(self, attempt: int, lock, limits: ChunkLimits, load_pool) -> dict:
        try:
            output = self._output()
            todo = []
            for spec in self.specs:
                if _is_stored(output, spec.id):
                    self._outcome(spec.id, "skipped")
                else:
                    todo.append(spec)
            if attempt > limits.max_attempts:
                reason = (f"chunk {self.chunk} was started {attempt} times without ending "
                          f"(its worker died each time); giving up")
                self._fail_all(output, todo, "ChunkGaveUp", reason)
                return self.end(ChunkState.GAVE_UP, attempt, error=reason)
            self.record.mark_started()
            self._state(ChunkState.RUNNING, attempt)
            if not todo:
                return self.end(ChunkState.FINISHED, attempt)
            pool = load_pool(self.job)
            guard = _StopGuard(self.record, lock, limits)
            guard.keep_lock()  # loading the model may have taken a while
            pool.run_items([self._item(spec, output, attempt, guard) for spec in todo], keepalive=guard.keep_lock)
            if guard.reason is ChunkState.TIMED_OUT:
                left = [s for s in todo if s.id not in self.outcomes]
                self._fail_all(output, left, "TimeLimit", f"chunk {self.chunk} ran past its time limit "
                                                          f"({limits.time_limit_s:.0f} s)")
                return self.end(ChunkState.TIMED_OUT, attempt, error="time limit")
            if guard.reason is ChunkState.CANCELLED:
                return self.end(ChunkState.CANCELLED, attempt)
            return self.end(ChunkState.FINISHED, attempt)
        except Exception as e:  # the chunk could not run (model or storage unusable): record, don't raise
            error = f"{type(e).__name__}: {e}"
            log.exception("chunk %s of job %s failed", self.chunk, self.job.id)
            left = [s for s in self.specs if s.id not in self.outcomes]
            try:
                self._fail_all(self._output(), left, type(e).__name__, str(e))
            except Exception:  # storage itself is what failed: Redis still says why
                for spec in left:
                    self._outcome(spec.id, "failed", error)
            return self.end(ChunkState.ERROR, attempt, error=error)

    def _item(self, spec: PromptSpec, output: JobOutput, attempt: int, guard: "_StopGuard") -> WorkItem:
        """One document of the chunk for the pool: stored and mirrored to Redis the moment it ends."""
        config = self.job.config

        def done(doc):
            doc.custom_id, doc.request_url = spec.custom_id, spec.request_url
            output.save_document(doc, config.formats, config.self_contained, line=spec.line)
            self._outcome(spec.id, "done")
            guard.force = True  # between documents: look at the cancel flag now
            self._state(ChunkState.RUNNING, attempt)

        def fail(error, message=None):
            entry = output.record_error(spec.id, spec.custom_id, error, message, prompt=spec.prompt)
            self._outcome(spec.id, "failed", f"{entry['error']}: {entry['message']}")
            self._state(ChunkState.RUNNING, attempt)

        return WorkItem(spec, done, fail, stop=guard, read_picture=read_picture)  # as this worker may (access.py)

    # ------------------------------------------------------------------------------------ outcomes
    def _outcome(self, doc_id: str, status: str, error: str | None = None) -> None:
        self.outcomes[doc_id] = {"id": doc_id, "status": status, "error": error}
        if status in ("done", "skipped"):
            self.record.document_done(doc_id)
        elif status == "failed":
            self.record.document_failed(doc_id, error or "failed")

    def _fail_all(self, output, specs: list[PromptSpec], error_type: str, message: str) -> None:
        for spec in specs:
            output.record_error(spec.id, spec.custom_id, error_type, message, prompt=spec.prompt)
            self._outcome(spec.id, "failed", f"{error_type}: {message}")

    def _counts(self) -> dict:
        counts = {"done": 0, "failed": 0, "skipped": 0, "cancelled": 0}
        for outcome in self.outcomes.values():
            counts[outcome["status"]] += 1
        return counts

    def _state(self, state: ChunkState, attempt: int, result: dict | None = None) -> None:
        meta = {"job": self.job.id, "chunk": self.chunk, "state": state.value, "worker": self.worker,
                "attempt": attempt, "total": len(self.specs), "started": self.started, **self._counts()}
        self.record.set_chunk_state(self.chunk, {**meta, **({"result": result} if result else {})})
        self.report(meta)

    def end(self, state: ChunkState, attempt: int, error: str | None = None) -> dict:
        for spec in self.specs:
            self.outcomes.setdefault(spec.id, {"id": spec.id, "status": "cancelled", "error": None})
        result = {"chunk": self.chunk, "status": state.value, "error": error, "worker": self.worker,
                  "attempt": attempt, **self._counts(), "documents": [self.outcomes[s.id] for s in self.specs]}
        self._state(state, attempt, result)
        return result

    def _output(self) -> JobOutput:
        return self.job.output()


def _is_stored(output: JobOutput, doc_id: str) -> bool:
    """The document's done marker exists: written last, so everything else of it is stored."""
    return output.storage.exists(output.marker_key(DONE_DIR, doc_id))
