"""Which queues a live worker consumes: every worker process checks in every few seconds, for each of its queues.

Issue 33: with no worker, `submit --wait` waited in silence and `status` said "queued" forever. Now both say
"no worker is consuming <queue>" when no worker has checked in for that queue within STALE_S. Times are Redis's
own (TIME), so the clocks of the workers' machines do not matter.
"""
from __future__ import annotations

import logging
import threading

from .broker import key_prefix

log = logging.getLogger(__name__)

BEAT_S = 2.0  # how often a worker checks in
STALE_S = 10.0  # a worker not heard from for this long is taken for gone (a killed one, a lost machine)


class QueueConsumers:
    """Owns <prefix>:consumers:<queue>: a sorted set of worker names (Celery's node names), scored by the Redis
    time of their last check-in."""

    def __init__(self, client, queue: str):
        self.client, self.queue = client, queue
        self.key = f"{key_prefix()}:consumers:{queue}"

    def check_in(self, worker: str) -> None:
        now = self._now()
        pipe = self.client.pipeline(transaction=False)
        pipe.zadd(self.key, {worker: now})
        pipe.zremrangebyscore(self.key, "-inf", now - STALE_S)  # the gone, so the set stays small
        pipe.expire(self.key, int(STALE_S * 6))
        pipe.execute()

    def leave(self, worker: str) -> None:
        self.client.zrem(self.key, worker)

    def alive(self) -> list[str]:
        """The workers that checked in for this queue within STALE_S."""
        return self.client.zrangebyscore(self.key, self._now() - STALE_S, "+inf")

    def _now(self) -> float:
        seconds, micros = self.client.time()
        return seconds + micros / 1e6


def no_consumer(client, queue: str) -> str | None:
    """What to tell a person waiting on `queue` when no worker consumes it; None when one does."""
    if QueueConsumers(client, queue).alive():
        return None
    return (f"no worker is consuming {queue} (none has checked in for {STALE_S:g} s): the job waits until one "
            f"starts, e.g. `dreamgen worker -Q {queue}`")


class CheckIns:
    """A worker process's check-ins: a daemon thread that checks in for its queues every BEAT_S until stopped;
    stopping leaves at once, so a worker shut down cleanly is not counted for STALE_S more."""

    def __init__(self, client, worker: str, queues: list[str]):
        self.worker = worker
        self.consumers = [QueueConsumers(client, q) for q in queues]
        self._stop = threading.Event()
        self._stopping = False  # set by stop_soon, from a signal handler
        self._thread = threading.Thread(target=self._run, name="dreamgen-check-ins", daemon=True)

    def start(self) -> "CheckIns":
        self._thread.start()
        return self

    def stop_soon(self) -> None:
        """Check in no more, from the next beat on (safe in a signal handler: talks to nothing and takes no lock.
        Event.set takes one, and a second SIGTERM arriving while the first handler held it deadlocked the worker's
        warm shutdown: the launcher passes SIGTERM on to a worker that its process group's signal also reached)."""
        self._stopping = True

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=BEAT_S * 2)
        for consumers in self.consumers:
            try:
                consumers.leave(self.worker)
            except Exception:  # Redis is down: the entry goes stale by itself
                pass

    def _run(self) -> None:
        while not (self._stopping or self._stop.is_set()):
            try:
                for consumers in self.consumers:
                    consumers.check_in(self.worker)
            except Exception as e:  # Redis restarting: keep trying; `status` meanwhile says what it sees
                log.warning("could not check in with the broker: %s", e)
            self._stop.wait(BEAT_S)
