"""Celery settings for long GPU tasks on Redis (see reference/serving.md, "Celery workers that hold a model").

The environment variables they read are dreamgen.settings' (broker URL, task time limit, visibility timeout,
result expiry, Redis prefix: kombu's queues are prefixed only when DREAMGEN_REDIS_PREFIX is set).
"""
from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit

from dreamgen import settings as env

GPU_QUEUE = "dreamgen.gpu"  # generation; every GPU worker of every machine consumes it
LIGHT_QUEUE = "dreamgen.light"  # finalize, schedules: no model, quick

CHUNK_TASK = "dreamgen.chunk"
FINALIZE_TASK = "dreamgen.finalize"
FIRE_SCHEDULE_TASK = "dreamgen.fire_schedule"

MODEL_LOAD_TIMEOUT_S = 600  # a 7B checkpoint from a network disk takes minutes; the pool must wait for it


def celery_settings(url: str | None = None, client: bool = False) -> dict:
    """Settings of the app; `client` for a process that only submits (fail in seconds when Redis is down,
    where a worker keeps reconnecting)."""
    url = env.broker_url(url)
    limit, visibility = env.task_time_limit_s(), env.visibility_timeout_s()
    prefix = env.REDIS_PREFIX.given()
    transport = {
        "visibility_timeout": visibility,
        # Sweep for tasks of dead workers often enough that a short visibility timeout (tests) is honoured.
        "unacked_restore_interval": max(1, min(60, visibility // 10)),
        "unacked_restore_throttle": 1,
        "socket_connect_timeout": 3,
        "socket_timeout": 30,
        "socket_keepalive": True,
    }
    backend_transport = {"visibility_timeout": visibility}
    if prefix:
        transport["global_keyprefix"] = f"{prefix}:kombu:"
        backend_transport["global_keyprefix"] = f"{prefix}:celery:"
    settings = {
        "broker_url": url,
        "result_backend": url,
        "broker_transport_options": transport,
        "result_backend_transport_options": backend_transport,
        "redis_socket_connect_timeout": 3,
        "redis_socket_timeout": 30,
        "broker_connection_retry_on_startup": True,
        # JSON only: a task's arguments are data, never pickles
        "task_serializer": "json", "result_serializer": "json", "accept_content": ["json"],
        # one chunk at a time per process, acknowledged when it ends, given back if its process dies
        "worker_prefetch_multiplier": 1,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # Issue 16: a running chunk goes on through a broker restart (its record client retries; storage is the
        # truth). Cancelling it would end it as failed and strand its message until the visibility timeout.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_deduplicate_successful_tasks": True,
        "task_track_started": True,
        # task events (sent, received, started, succeeded, ...) for `celery events`, Flower and Prometheus exporters,
        # on from the start: turning them on later means a restart or a broadcast to every worker
        "worker_send_task_events": env.worker_events(),
        "task_send_sent_event": True,
        "task_time_limit": limit,
        "result_expires": env.result_expires_s(),
        "worker_proc_alive_timeout": MODEL_LOAD_TIMEOUT_S,
        "task_default_queue": LIGHT_QUEUE,
        "task_routes": {CHUNK_TASK: {"queue": GPU_QUEUE}, FINALIZE_TASK: {"queue": LIGHT_QUEUE},
                        FIRE_SCHEDULE_TASK: {"queue": LIGHT_QUEUE}},
        "timezone": "UTC",
        "enable_utc": True,
    }
    if client:
        fail_fast = {"max_retries": 2, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}
        transport.update(fail_fast)
        backend_transport["retry_policy"] = dict(fail_fast)
        settings["task_publish_retry_policy"] = dict(fail_fast)
    settings.update(_tls_settings(url))
    return settings


def _tls_settings(url: str) -> dict:
    """Celery refuses a rediss:// URL that does not say how to check certificates; default to checking them."""
    parts = urlsplit(url)
    if parts.scheme != "rediss" or "ssl_cert_reqs" in parse_qs(parts.query):
        return {}
    return {"broker_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED},
            "redis_backend_use_ssl": {"ssl_cert_reqs": ssl.CERT_REQUIRED}}
