"""The Celery app: `celery -A dreamgen.workers.app worker` (or `dreamgen worker`, which starts that per GPU).

Broker and result backend are the Redis of $DREAMGEN_BROKER_URL (default redis://localhost:6379/0).
"""
from __future__ import annotations

import functools

from celery import Celery
from celery.backends.redis import RedisBackend

from dreamgen.distributed.broker import broker_url, key_prefix

from .settings import celery_settings

app = Celery("dreamgen", include=["dreamgen.workers.tasks"])
app.conf.update(celery_settings())


class SendOnlyRedisBackend(RedisBackend):
    """The result backend of a process that sends tasks and never waits on them. Celery's Redis backend
    subscribes to the result channel of every task it sends or builds a result for, in case someone waits:
    12,500 SUBSCRIBEs for a 100,000-prompt job, and as many UNSUBSCRIBEs when the results are collected
    (which fail noisily at interpreter exit)."""

    def on_task_call(self, producer, task_id):
        pass

    def add_pending_result(self, result, weak=False, start_drainer=True):
        return result


def client_app(url: str | None = None) -> Celery:
    """An app that only sends tasks (by name) to the broker at `url`, failing fast when it is down."""
    return _client_app(broker_url(url), key_prefix())


@functools.lru_cache(maxsize=4)
def _client_app(url: str, prefix: str) -> Celery:  # the prefix names the queues: part of the key
    client = Celery("dreamgen-client", set_as_current=False)
    client.conf.update(celery_settings(url, client=True))
    client.conf.result_backend = f"{__name__}:SendOnlyRedisBackend+{url}"
    return client
