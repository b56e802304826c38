"""`dreamgen worker`: start the `celery worker` processes of one machine and watch them.

    --gpus 0,1   one process per GPU, pinned with CUDA_VISIBLE_DEVICES (it sees its GPU as cuda:0), all consuming
                 the shared generation queue; plus one small process for the light queue
    no --gpus    one process for every queue asked (a CPU machine, or a GPU given with --device)

Each generation process holds a few chunk tasks at once in Celery's threads pool, and their documents share one
slot pool (dreamgen.distributed.pool), so its slots stay full across chunks; `--pool prefork` runs one chunk
at a time per process instead (with Celery's hard time limit, which a threads pool does not have).

Why one shared generation queue rather than one per GPU: with prefetch 1 a GPU takes a chunk only when it is
free, so a shared queue balances itself across GPUs and machines, and a GPU that dies strands nothing; per-GPU
queues would make the submitter route chunks without knowing which GPUs are alive or busy.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

from dreamgen import settings

from .settings import GPU_QUEUE, LIGHT_QUEUE


@dataclass
class WorkerProcess:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment

    def describe(self) -> str:
        """The command line to show a person: the broker's password hidden."""
        from dreamgen.distributed.broker import redact

        env = " ".join(f"{k}={redact(v) if k == settings.BROKER_URL.name else v}" for k, v in self.env.items())
        return f"{env} {' '.join(self.argv)}".strip()


POOLS = ("threads", "prefork", "solo")
CHUNKS_HELD = 3  # chunk tasks a threads-pool process holds at once: enough that its slots refill across chunks


def plan_workers(gpus: list[str] | None = None, queues: list[str] | None = None, concurrency: int | None = None,
                 name: str = "dreamgen", model: str | None = None, dtype: str | None = None,
                 device: str | None = None, broker_url: str | None = None, pool: str = "threads",
                 loglevel: str = "INFO", slots: int | None = None, events: bool = True) -> list[WorkerProcess]:
    """The processes to start (nothing is started). `concurrency`: chunk tasks held at once (threads, which share
    one slot pool) or processes (prefork, each with its own model). With `events` they send task events (-E),
    which `celery events`, Flower and Prometheus exporters read."""
    queues = queues or [GPU_QUEUE, LIGHT_QUEUE]
    concurrency = concurrency or (CHUNKS_HELD if pool == "threads" else 1)
    common = {k: v for k, v in {settings.BROKER_URL.name: broker_url, settings.MODEL.name: model,
                                settings.DTYPE.name: dtype, settings.WORKER_POOL.name: pool,
                                settings.WORKER_SLOTS.name: slots and str(slots)}.items() if v}
    if not events:
        common[settings.WORKER_EVENTS.name] = "0"

    def celery(node: str, node_queues: list[str], procs: int) -> list[str]:
        return [sys.executable, "-m", "celery", "-A", "dreamgen.workers.app", "worker", "-Q", ",".join(node_queues),
                "-c", str(procs), "-P", pool, "-n", f"{node}@%h", "-l", loglevel] + (["-E"] if events else [])

    if not gpus:
        env = {**common, **({settings.WORKER_DEVICE.name: device} if device else {})}
        if GPU_QUEUE not in queues:
            env[settings.WORKER_PRELOAD.name] = "0"
        return [WorkerProcess(name, celery(name, queues, concurrency), env)]
    heavy = [q for q in queues if q != LIGHT_QUEUE]
    plan = [WorkerProcess(f"{name}-gpu{gpu}", celery(f"{name}-gpu{gpu}", heavy, concurrency),
                          {**common, "CUDA_VISIBLE_DEVICES": gpu, settings.WORKER_DEVICE.name: "cuda"})
            for gpu in gpus] if heavy else []
    if LIGHT_QUEUE in queues:
        light = [sys.executable, "-m", "celery", "-A", "dreamgen.workers.app", "worker", "-Q", LIGHT_QUEUE, "-c", "2",
                 "-P", "prefork", "-n", f"{name}-light@%h", "-l", loglevel] + (["-E"] if events else [])
        plan.append(WorkerProcess(f"{name}-light", light, {**common, "CUDA_VISIBLE_DEVICES": "",
                                                           settings.WORKER_POOL.name: "prefork",
                                                           settings.WORKER_PRELOAD.name: "0"}))
    return plan


def run_workers(plan: list[WorkerProcess], echo=print) -> int:
    """Start every process and return when they have all stopped. The first SIGINT/SIGTERM asks them for a
    warm shutdown (running chunks finish); a second one for a cold shutdown (running chunks are stopped and
    handed back to Redis at once). If one process exits on its own, the others are stopped too: a supervisor
    such as systemd restarts the lot. Returns 0 after a requested stop, else the first failing exit code."""
    children = []
    for worker in plan:
        echo(f"starting {worker.name}: {worker.describe()}")
        # Each in a process group of its own, so a signal reaches it once, passed on by stop() below: a terminal's
        # Ctrl-C (or a kill of this group) also reached it directly, and celery's handler, run a second time
        # inside the first, deadlocked its warm shutdown now and then.
        children.append(subprocess.Popen(worker.argv, env={**os.environ, **worker.env}, process_group=0))
    requested = []

    def stop(signum=None, frame=None):
        if signum is not None:
            requested.append(signum)
        # Never SIGKILL a worker: its chunk would wait out the visibility timeout (hours) before redelivery.
        signal_to_send = signal.SIGQUIT if len(requested) > 1 else signal.SIGTERM
        for child in children:
            if child.poll() is None:
                child.send_signal(signal_to_send)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        if not requested:
            exited = next(c for c in children if c.poll() is not None)
            echo(f"a worker process exited with code {exited.returncode}; stopping the others")
            stop()
        for child in children:
            child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    stopped_by_us = {0, -signal.SIGTERM, -signal.SIGINT, -signal.SIGQUIT}
    failures = [code for code in (c.returncode for c in children) if code not in stopped_by_us]
    if requested and not failures:
        return 0
    return abs(failures[0]) if failures else 1
