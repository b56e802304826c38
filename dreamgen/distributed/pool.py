"""One slot pool for every chunk a worker process holds, so its slots stay full across chunk tasks.

A worker that runs several chunk tasks at once (Celery's threads pool, `dreamgen worker` on a GPU) hands each
chunk's documents to one SharedPool: its thread streams them, in arrival order, through one Generator, and a
slot that frees takes the next document of whichever chunk is next. Each task thread waits for its own
documents and stores them itself as they finish, so the task is acknowledged only when its documents are stored
(late ack), its chunk lock and attempt count work as before, and a cancelled or timed-out chunk drops only its
own documents, between steps.

SoloPool is the same interface over the calling thread (one chunk at a time: prefork pools, tests).

Issue 33: a pool that is replaced (a job asks for another model, dtype or backend) is closed: it takes no new
chunk, waits for the chunks in flight to end, stops and joins its thread (whose run holds the KV pool) and lets go
of its generator, so the old weights and pool can be freed before the new ones load.
"""
from __future__ import annotations

import dataclasses
import logging
import queue
import threading
from typing import Callable

from ..generation.generator import NOTHING_YET
from ..jobs.run import picture_failure, read_picture, run_items
from ..jobs.spec import WorkItem

log = logging.getLogger(__name__)

IDLE_WAIT_S = 0.2  # how long the pool thread blocks for work when it has none
KEEPALIVE_S = 5.0  # how often a waiting task thread runs its own keepalive (the chunk lock)


class PoolClosed(RuntimeError):
    """The pool was replaced before this call queued anything: ask for the held one again."""


class SoloPool:
    def __init__(self, generator, slots: int | None = None):
        self.generator, self.slots = generator, slots

    def run_items(self, items: list[WorkItem], keepalive: Callable[[], None] | None = None) -> None:
        generator = self.generator
        if generator is None:
            raise PoolClosed("the pool was replaced")
        run_items(generator, items, slots=self.slots)

    def close(self) -> None:
        """Its process runs one chunk at a time, so nothing is in flight when another job replaces it."""
        self.generator = None


class SharedPool:
    def __init__(self, generator, slots: int | None = None):
        self.generator, self.slots = generator, slots
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._users = 0  # run_items calls in progress
        self._closing = False
        self._drained = threading.Condition()  # guards _users and _closing
        self._stop = threading.Event()  # the pool thread ends its run once its queue is empty

    def run_items(self, items: list[WorkItem], keepalive: Callable[[], None] | None = None) -> None:
        """Queue `items` for the pool and return when every one has ended (done, failed or dropped). The
        items' callbacks run in this thread. Their input pictures are read here, each item's before it is
        queued (issue 33): a slow or failing store holds this chunk, never the pool every chunk shares. Raises
        PoolClosed, having queued nothing, once close() began."""
        with self._drained:
            if self._closing:
                raise PoolClosed("the pool was replaced")
            self._users += 1
        try:
            self._run_items(items, keepalive)
        finally:
            with self._drained:
                self._users -= 1
                self._drained.notify_all()

    def close(self) -> None:
        """Drain, stop and let go: new calls are refused, the calls in flight end as they would have (their
        documents done, failed or dropped by a cancel or time limit), then the pool thread ends its run and is
        joined, and the generator is dropped."""
        with self._drained:
            self._closing = True
            self._drained.wait_for(lambda: self._users == 0)
        self._stop.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join()
        self.generator = None

    def _run_items(self, items: list[WorkItem], keepalive: Callable[[], None] | None) -> None:
        events: queue.Queue = queue.Queue()
        left = len(items)
        for item in items:
            ready = with_pictures(item)
            if keepalive:
                keepalive()  # reading pictures may take a while: the chunk's lock stays held
            if ready is None:  # failed or dropped here: it has ended
                left -= 1
                continue
            self._queue.put(_relay(ready, events))
            self._start()
        while left:
            try:
                callback = events.get(timeout=KEEPALIVE_S)
            except queue.Empty:
                if keepalive:
                    keepalive()
                continue
            ended = callback()
            left -= bool(ended)

    def _start(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._serve, name="dreamgen-pool", daemon=True)
                self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                run_items(self.generator, self._source(), slots=self.slots)
            except Exception:  # keep serving; the documents in flight were failed by run_items
                log.exception("the shared pool's run failed")

    def _source(self):
        """Items as they arrive; NOTHING_YET when none is queued, after waiting a little only if the pool is idle
        (a busy pool must not stop stepping). Ends when the pool is closing and nothing is queued: the run
        then finishes the documents it holds and returns."""
        while True:
            if self._stop.is_set() and self._queue.empty():
                return
            idle = self.generator.stats.busy == 0
            try:
                yield self._queue.get(timeout=IDLE_WAIT_S) if idle else self._queue.get_nowait()
            except queue.Empty:
                yield NOTHING_YET


def with_pictures(item: WorkItem) -> WorkItem | None:
    """`item` with its input pictures read (in the calling thread), or None once it has ended here: dropped (its
    chunk stopped) or failed (a picture could not be read: its document alone fails, naming it)."""
    if item.stop and item.stop():
        item.dropped()
        return None
    if not item.spec.images:
        return item
    read = []  # (record, pixels) of each picture, in the prompt's order
    for index, location in enumerate(item.spec.images):
        if item.stop and item.stop():  # cancelled or out of time between two pictures
            item.dropped()
            return None
        try:
            read.append(read_picture(item, location, index))
        except Exception as e:  # whatever reading raised is this document's failure, as in run_items
            item.fail(e, picture_failure(e))
            return None
    return dataclasses.replace(item, read_picture=lambda location, index: read[index])


def _relay(item: WorkItem, events: queue.Queue) -> WorkItem:
    """The item as the pool thread sees it: each callback is sent to the task thread to run there.
    A callback's result says whether the item has ended."""

    def send(callback, ends: bool):
        def relayed(*args):
            events.put(lambda: (callback(*args), ends)[1])
        return relayed

    return WorkItem(item.spec, done=send(item.done, True), fail=send(item.fail, True), stop=item.stop,
                    dropped=send(item.dropped, True), image=send(item.image, False), endpoint_url=item.endpoint_url,
                    read_picture=item.read_picture)
