"""A distributed job's live state in Redis. Storage (job.json, the done markers) stays the source of truth for
documents; this record is what makes `status`, `cancel` and `retry` cheap while a job runs, and it expires.

Each class names the keys it owns; nothing else writes them.
"""
from __future__ import annotations

import json
import time
from enum import Enum

from .. import settings
from .broker import key_prefix


def record_ttl() -> int:
    """Seconds a record lives ($DREAMGEN_JOB_TTL, a week: long enough to look back on last week's jobs; job.json
    keeps the rest)."""
    return settings.job_ttl_s()


class JobStatus(str, Enum):
    QUEUED = "queued"  # chunks are on the queue, none has started
    RUNNING = "running"
    CANCELLING = "cancelling"  # the flag is set; chunks still on the queue drain without generating
    FINISHED = "finished"  # every chunk ended; some documents may have failed (see the failures)
    CANCELLED = "cancelled"
    FAILED = "failed"  # every chunk ended, but the job's storage refused its end (the record's `error` says why)

    @property
    def final(self) -> bool:
        return self in (JobStatus.FINISHED, JobStatus.CANCELLED, JobStatus.FAILED)


class ChunkState(str, Enum):
    RUNNING = "running"
    FINISHED = "finished"  # every document done or recorded as failed
    CANCELLED = "cancelled"
    TIMED_OUT = "timed-out"
    GAVE_UP = "gave-up"  # started too many times without ending (it kept killing its worker)
    ERROR = "error"  # could not run at all (model or storage unusable); its documents are recorded failed

    @property
    def final(self) -> bool:
        return self is not ChunkState.RUNNING


# Compare the status and set it in one step, so a late chunk cannot turn a cancelled job back to running.
_SET_STATUS_IF = """
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'status', ARGV[2])
  return 1
end
return 0
"""

# Claim a new round of a job in one step (issue 33): two submits of one job id at once both passed a separate
# check, and both queued every document. Refused (with the status) while a round is queued, running or cancelling.
_START_ROUND = """
local status = redis.call('HGET', KEYS[1], 'status')
if status and status ~= 'finished' and status ~= 'cancelled' and status ~= 'failed' then
  return {0, status}
end
local rnd = redis.call('HINCRBY', KEYS[1], 'round', 1)
if rnd <= tonumber(ARGV[1]) then
  rnd = tonumber(ARGV[1]) + 1
  redis.call('HSET', KEYS[1], 'round', rnd)
end
redis.call('HSET', KEYS[1], 'status', 'queued')
return {1, rnd}
"""


# The end of a job's chunks is counted here (issue 33: submit streams its chunks, no chord holds them). Each chunk
# key counts once however often its task is delivered; the round is closed once the count reaches the total, which
# only submit knows, when it has sent everything (it "seals" the round). Of the chunk ends and the seal, exactly
# one sees the count complete first: it takes the `finalizer` field (HSETNX) and sends the finalize task. The same
# taker asking again gets yes while the round is not closed: had it been killed between this step and its send,
# its redelivery sends it (finalize_job is idempotent), so the job is never left open.
_FINALIZE_DUE = """
local total = tonumber(redis.call('HGET', KEYS[1], 'sealed') or '')
if not total or redis.call('SCARD', KEYS[2]) < total then
  return 0
end
if redis.call('HSETNX', KEYS[1], 'finalizer', ARGV[2]) == 1 then
  return 1
end
local status = redis.call('HGET', KEYS[1], 'status')
if redis.call('HGET', KEYS[1], 'finalizer') == ARGV[2] and status ~= 'finished' and status ~= 'cancelled'
   and status ~= 'failed' then
  return 1
end
return 0
"""

# KEYS: the job's hash, its set of ended chunks; ARGV: round, chunk key, ttl. A chunk of another round is ignored.
_CHUNK_ENDED = """
if redis.call('HGET', KEYS[1], 'round') ~= ARGV[1] then
  return 0
end
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[3]))
""" + _FINALIZE_DUE

# KEYS: the job's hash, its set of ended chunks; ARGV: round, "submit", chunks, documents queued.
_SEAL = """
if redis.call('HGET', KEYS[1], 'round') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'chunks', ARGV[3], 'queued', ARGV[4], 'sealed', ARGV[3])
""" + _FINALIZE_DUE


class JobActive(Exception):
    """A round of the job is under way: it cannot be started again now."""

    def __init__(self, job_id: str, status: "JobStatus"):
        super().__init__(f"job {job_id} is {status.value}")
        self.job_id, self.status = job_id, status


class JobRecord:
    """One job's record. Keys (all expire together, `DREAMGEN_JOB_TTL`, default 7 days):

        <prefix>:job:<id>             hash: status, out, location, total, round, chunks, created, started, finished,
                                      done, failed (counts at the end), error (why a failed job failed), config
                                      (JSON, to retry)
        <prefix>:job:<id>:done        set of the ids of finished documents
        <prefix>:job:<id>:failed      hash: document id -> its last error (removed when it later succeeds)
        <prefix>:job:<id>:chunks      hash: chunk key "<round>.<n>" -> JSON state (state, worker, counts, result)
        <prefix>:job:<id>:attempts    hash: chunk key -> how many times a worker started it
        <prefix>:job:<id>:ended       set of the current round's chunk keys that have ended (the hash's `sealed`:
                                      how many there are, set once submit sent them all; `finalizer`: who
                                      sent the finalize task)
        <prefix>:job:<id>:cancel      set while the job is being cancelled
        <prefix>:job:<id>:lock:<key>  held by the worker running a chunk (SET NX with expiry)
    """

    def __init__(self, client, job_id: str):
        self.client = client
        self.job_id = job_id
        self.key = f"{key_prefix()}:job:{job_id}"
        self.done_key = f"{self.key}:done"
        self.failed_key = f"{self.key}:failed"
        self.chunks_key = f"{self.key}:chunks"
        self.attempts_key = f"{self.key}:attempts"
        self.cancel_key = f"{self.key}:cancel"
        self.ended_key = f"{self.key}:ended"

    def lock_key(self, chunk: str) -> str:
        return f"{self.key}:lock:{chunk}"

    @property
    def _record_keys(self) -> list[str]:
        """The keys that live as long as the record (the cancel flag and the locks have their own expiry)."""
        return [self.key, self.done_key, self.failed_key, self.chunks_key, self.attempts_key, self.ended_key]

    # ------------------------------------------------------------------------------------ the job
    def exists(self) -> bool:
        return bool(self.client.exists(self.key))

    def read(self) -> dict:
        """The hash, decoded ({} when there is no record)."""
        data = self.client.hgetall(self.key)
        if data.get("config"):
            data["config"] = json.loads(data["config"])
        return data

    @property
    def status(self) -> JobStatus | None:
        value = self.client.hget(self.key, "status")
        return JobStatus(value) if value else None

    def start_round(self, fields: dict, done_ids=(), after: int = 0) -> int:
        """(Re)start the job: set its fields, status queued, a new round number; clear the cancel flag and the
        failures (their documents are queued again). `done_ids` are documents stored before this round. The round
        is above `after` (job.json's last), so chunk keys never repeat when Redis lost the record (a restart
        without persistence) while chunks of the lost round may still write theirs. The check that no round is
        under way and the claim of the new one are one step: of two submits at once, one raises JobActive."""
        ttl = record_ttl()
        now = time.time()
        claimed, value = self.client.eval(_START_ROUND, 1, self.key, after)
        if not claimed:
            raise JobActive(self.job_id, JobStatus(value))
        rnd = int(value)
        pipe = self.client.pipeline(transaction=False)
        values = {**fields, "status": JobStatus.QUEUED.value, "updated": now}
        if isinstance(values.get("config"), dict):
            values["config"] = json.dumps(values["config"])
        pipe.hset(self.key, mapping={k: ("" if v is None else v) for k, v in values.items()})
        pipe.hdel(self.key, "started", "finished", "done", "failed", "error", "sealed", "finalizer")
        # every document not done is queued again; the ends counted are the new round's
        pipe.delete(self.cancel_key, self.failed_key, self.ended_key)
        ids = list(done_ids)
        for start in range(0, len(ids), 5000):
            pipe.sadd(self.done_key, *ids[start:start + 5000])
        for key in self._record_keys:
            pipe.expire(key, ttl)
        recent = RecentJobs(self.client)
        pipe.zadd(recent.key, {self.job_id: now})
        pipe.zremrangebyrank(recent.key, 0, -recent.KEEP - 1)
        pipe.execute()
        return rnd

    def set_fields(self, **fields) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key, mapping={k: ("" if v is None else v) for k, v in fields.items()})
        pipe.expire(self.key, record_ttl())
        pipe.execute()

    def set_status_if(self, expected: JobStatus, new: JobStatus) -> bool:
        return bool(self.client.eval(_SET_STATUS_IF, 1, self.key, expected.value, new.value))

    def mark_started(self) -> None:
        """The first chunk to start moves a queued job to running."""
        if self.set_status_if(JobStatus.QUEUED, JobStatus.RUNNING):
            self.client.hsetnx(self.key, "started", time.time())

    def finish(self, status: JobStatus, counts: dict, rnd: int | None = None) -> bool:
        """Record the end of round `rnd` (ignored if a newer round has begun since). Refreshes the expiry."""
        if rnd is not None and str(rnd) != (self.client.hget(self.key, "round") or ""):
            return False
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key, mapping={"status": status.value, "finished": time.time(), "updated": time.time(),
                                     **{k: v for k, v in counts.items()}})
        pipe.delete(self.cancel_key)
        for key in self._record_keys:
            pipe.expire(key, record_ttl())
        pipe.execute()
        return True

    def seal(self, rnd: int, chunks: int, queued: int) -> bool:
        """Submit has sent all `chunks` (`queued` documents) of round `rnd`: from now on the round closes when that
        many have ended. True when they all have already: the caller sends the finalize task (only it was told)."""
        return bool(self.client.eval(_SEAL, 2, self.key, self.ended_key, str(rnd), "submit", chunks, queued))

    def chunk_ended(self, chunk: str, rnd: int) -> bool:
        """Count the end of `chunk` of round `rnd` (once, however often it is delivered). True when the caller is
        the one to send the finalize task: the round is sealed and every chunk of it has ended."""
        return bool(self.client.eval(_CHUNK_ENDED, 2, self.key, self.ended_key, str(rnd), chunk, record_ttl()))

    def ended_chunks(self) -> int:
        return self.client.scard(self.ended_key)

    # ------------------------------------------------------------------------------------ cancel
    def request_cancel(self) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.cancel_key, time.time(), ex=record_ttl())
        pipe.hset(self.key, "status", JobStatus.CANCELLING.value)
        pipe.execute()

    def cancel_requested(self) -> bool:
        return bool(self.client.exists(self.cancel_key))

    # ------------------------------------------------------------------------------------ documents
    def document_done(self, doc_id: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(self.done_key, doc_id)
        pipe.hdel(self.failed_key, doc_id)
        pipe.expire(self.done_key, record_ttl())
        pipe.execute()

    def document_failed(self, doc_id: str, error: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.failed_key, doc_id, error)
        pipe.expire(self.failed_key, record_ttl())
        pipe.execute()

    def counts(self) -> tuple[int, int]:
        """(done, failed) documents so far."""
        pipe = self.client.pipeline(transaction=False)
        pipe.scard(self.done_key)
        pipe.hlen(self.failed_key)
        done, failed = pipe.execute()
        return done, failed

    def failures(self, limit: int | None = None) -> dict[str, str]:
        if limit is None:
            return self.client.hgetall(self.failed_key)
        found = {}
        for doc_id, error in self.client.hscan_iter(self.failed_key, count=max(limit, 10)):
            found[doc_id] = error
            if len(found) >= limit:
                break
        return found

    # ------------------------------------------------------------------------------------ chunks
    def chunk_state(self, chunk: str) -> dict | None:
        value = self.client.hget(self.chunks_key, chunk)
        return json.loads(value) if value else None

    def chunk_states(self) -> dict[str, dict]:
        return {k: json.loads(v) for k, v in self.client.hgetall(self.chunks_key).items()}

    def set_chunk_state(self, chunk: str, state: dict) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.chunks_key, chunk, json.dumps({**state, "updated": time.time()}))
        pipe.expire(self.chunks_key, record_ttl())
        pipe.expire(self.key, record_ttl())  # a job that runs for longer than the TTL keeps its record
        pipe.execute()

    def count_attempt(self, chunk: str) -> int:
        pipe = self.client.pipeline(transaction=False)
        pipe.hincrby(self.attempts_key, chunk, 1)
        pipe.expire(self.attempts_key, record_ttl())
        return pipe.execute()[0]

    def chunk_lock(self, chunk: str, ttl_s: float):
        """A redis-py Lock (SET NX PX with a token; extended and released only by its owner)."""
        return self.client.lock(self.lock_key(chunk), timeout=ttl_s, blocking=False, thread_local=False)


class RecentJobs:
    """Owns <prefix>:jobs, a sorted set of job ids by creation time: what `dreamgen jobs` lists.
    Ids whose record has expired are dropped as they are met."""

    KEEP = 10_000  # the oldest ids beyond these are forgotten (their records have long expired)

    def __init__(self, client):
        self.client = client
        self.key = f"{key_prefix()}:jobs"

    def newest(self, limit: int) -> list[dict]:
        ids = self.client.zrevrange(self.key, 0, max(limit, 1) * 2 - 1)
        pipe = self.client.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(JobRecord(self.client, job_id).key)
            pipe.scard(JobRecord(self.client, job_id).done_key)
            pipe.hlen(JobRecord(self.client, job_id).failed_key)
        answers = pipe.execute()
        found, expired = [], []
        for index, job_id in enumerate(ids):
            data, done, failed = answers[3 * index: 3 * index + 3]
            if not data:
                expired.append(job_id)
                continue
            found.append({**data, "id": job_id, "done_now": done, "failed_now": failed})
        if expired:
            self.client.zrem(self.key, *expired)
        return found[:limit]
