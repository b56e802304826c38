"""One `dreamgen run` of a job at a time: a lock in the job's folder, kept alive by a heartbeat (issue 33).

    <job>/_lock/<n>.json    {"pid", "host", "started", "heartbeat", "command"}, rewritten every HEARTBEAT_S

A run takes the lock by creating the next number create-once (a hard link locally, `If-None-Match: *` on S3), so
of two runs that start together exactly one gets it; the other is refused, naming the holder. A holder is gone
when its process is dead (same host) or its heartbeat is older than STALE_S (another host): its lock is stale, the
next run takes number n+1, and `dreamgen status` shows the job as stopped, with the command that resumes it.
A holder whose lock was taken over (it stalled past STALE_S) sees the higher number and stops.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time

from ..clock import utc_text
from ..errors import JobLocked, StorageError
from .output import JobOutput

log = logging.getLogger(__name__)

LOCK_DIR = "_lock"
HEARTBEAT_S = 10.0
STALE_S = 90.0  # a heartbeat this old, from another host, is a holder that is gone


def _number(key: str) -> int | None:
    name = key.rsplit("/", 1)[-1]
    stem = name[:-len(".json")] if name.endswith(".json") else ""
    return int(stem) if stem.isdigit() else None


def current_holder(output: JobOutput) -> tuple[int, dict] | None:
    """The newest lock of the job (number, entry), or None; entries that cannot be read count as absent."""
    numbers = sorted(n for n in (_number(k) for k in output.storage.list(output.key(LOCK_DIR) + "/"))
                     if n is not None)
    for number in reversed(numbers):
        try:
            return number, json.loads(output.storage.read_bytes(output.key(LOCK_DIR, f"{number}.json")))
        except (StorageError, ValueError):
            continue
    return None


def holder_gone(entry: dict, now: float | None = None) -> str | None:
    """Why the holder of `entry` no longer runs the job, or None while it does."""
    now = time.time() if now is None else now
    age = now - float(entry.get("heartbeat") or 0)
    who = f"pid {entry.get('pid')} on {entry.get('host')}"
    if entry.get("host") == socket.gethostname():
        if not _alive(int(entry.get("pid") or 0)):
            return f"{who} is gone (last heartbeat {utc_text(float(entry.get('heartbeat') or 0))})"
        return None  # alive here: its heartbeat may lag behind a long step, it is still the job's
    if age > STALE_S:
        return f"{who} sent no heartbeat for {age:.0f} s (since {utc_text(float(entry.get('heartbeat') or 0))})"
    return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def stopped_run(output: JobOutput) -> str | None:
    """For a job whose job.json says a local run is running: why nothing runs it any more (its lock is stale or
    gone), or None while a live run holds it."""
    held = current_holder(output)
    if held is None:
        return "no run holds its lock (the process that ran it is gone)"
    return holder_gone(held[1])


def describe(entry: dict) -> str:
    age = time.time() - float(entry.get("heartbeat") or 0)
    return (f"pid {entry.get('pid')} on {entry.get('host')} (started {utc_text(float(entry.get('started') or 0))}, "
            f"last heartbeat {max(age, 0):.0f} s ago)")


class JobLock:
    """The lock of one job for this process: `acquire()`, then `release()` at the end (a `with` block)."""

    def __init__(self, output: JobOutput, command: str = "dreamgen run"):
        self.output, self.command = output, command
        self.number: int | None = None
        self.lost = False  # another run took the lock over (this one stalled past STALE_S): stop
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._entry = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                       "command": command}

    def check(self) -> tuple[int, dict] | None:
        """JobLocked if a live run holds the job; else its stale lock, if any (number, entry)."""
        held = current_holder(self.output)
        if held is not None:
            why = holder_gone(held[1])
            if why is None:
                raise JobLocked(f"job {self.output.job_id} is already being run by {describe(held[1])}; wait for "
                                "it to end, or stop it, then run it again")
        return held

    def acquire(self) -> "JobLock":
        for _ in range(3):  # another run may take it between our look and our create
            held = self.check()
            if held is not None:
                log.warning("job %s: taking over from %s", self.output.job_id, holder_gone(held[1]))
            number = held[0] + 1 if held else 1
            if self.output.storage.create_once(self._key(number), self._payload()):
                self.number = number
                for older in range(1, number):  # the stale ones: only the newest counts
                    self.output.storage.delete(self._key(older))
                self._thread = threading.Thread(target=self._beat, name="dreamgen-job-lock", daemon=True)
                self._thread.start()
                return self
        raise JobLocked(f"job {self.output.job_id} is being started by another run at the same moment")

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_S)
        if self.number is not None and not self.lost:
            try:
                self.output.storage.delete(self._key(self.number))
            except StorageError as e:  # the job's own end says what stopped it; a stale lock shows as stopped
                log.warning("job %s: could not remove its lock: %s", self.output.job_id, e)
        self.number = None

    def __enter__(self) -> "JobLock":
        return self.acquire() if self.number is None else self

    def __exit__(self, *exc) -> None:
        self.release()

    def _key(self, number: int) -> str:
        return self.output.key(LOCK_DIR, f"{number}.json")

    def _payload(self) -> bytes:
        return json.dumps({**self._entry, "heartbeat": time.time()}).encode()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = current_holder(self.output)
                if held is not None and held[0] > (self.number or 0):
                    log.warning("job %s: another run took the lock over; stopping", self.output.job_id)
                    self.lost = True
                    return
                self.output.storage.write_bytes(self._key(self.number), self._payload())
            except StorageError as e:  # a storage hiccup: the next beat tries again, the job's own writes decide
                log.warning("job %s: lock heartbeat failed: %s", self.output.job_id, e)
