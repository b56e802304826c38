"""Real Celery workers on a real Redis for the integration tests (no eager mode).

Each test module gets its own namespace: Redis database 13 (or $TEST_REDIS_URL) with a unique key prefix (kombu's
queues included), cleaned before and after. Workers share the session's DREAMGEN_HOME, where conftest's
`installed_tiny` has written the tiny model, so they start fast.
Workers are `celery worker` processes in their own process groups, killed with their children at teardown.
A test that restarts Redis starts its own `redis-server` (RedisServer, on a free port, never the shared one) and
gives its URL to the Namespace.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# TEST_REDIS_URL points the suite at another Redis (or database), to run beside another user of 127.0.0.1:6379.
REDIS_URL = os.environ.get("TEST_REDIS_URL") or "redis://127.0.0.1:6379/13"
MODEL = "tiny-random"  # built in seconds, runs a chunk in about one; named, so a new default model changes nothing
CELERY = Path(sys.executable).parent / "celery"
SLOW = 180  # seconds: the test machine may be shared and busy; a chunk of the tiny model takes ~1 s when idle


def redis_client(url: str = REDIS_URL):
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2, decode_responses=True)
    try:
        client.ping()
    except redis.RedisError as e:
        pytest.skip(f"no Redis at {url} ({e}); .ci/run starts one")
    return client


class RedisServer:
    """A `redis-server` of the test's own, on a free port, with its data in `folder`: with `appendonly` it
    keeps everything across a restart (AOF, fsync always), without it nothing."""

    def __init__(self, folder: Path, appendonly: bool):
        server = shutil.which("redis-server")
        if server is None:
            pytest.skip("redis-server is not installed (.ci/run installs it)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.folder, self.appendonly, self.server = folder, appendonly, server
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None
        folder.mkdir(parents=True, exist_ok=True)

    def start(self) -> "RedisServer":
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.appendonly else ["--appendonly", "no"]
        self.process = subprocess.Popen([self.server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                         "--dir", str(self.folder), *persistence],
                                        stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT)
        wait_until(lambda: self._answers(), timeout=30, what=f"redis-server on port {self.port}")
        return self

    def _answers(self) -> bool:
        import redis

        if self.process.poll() is not None:
            pytest.fail(f"redis-server exited: {(self.folder / 'redis.log').read_text()[-2000:]}")
        try:
            return bool(redis.Redis(port=self.port, socket_connect_timeout=1).ping())
        except redis.RedisError:
            return False

    def stop(self) -> None:
        """SHUTDOWN as an operator's restart does (SIGTERM: with AOF on, everything written is kept)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=30)

    def restart(self) -> None:
        self.stop()
        self.start()


def delete_prefix(client, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start:start + 500])


class Namespace:
    """The environment shared by the test process and its workers."""

    def __init__(self, tmp: Path, home: Path, redis_url: str = REDIS_URL, **extra_env):
        self.prefix = f"dgtest-{uuid.uuid4().hex[:10]}"
        self.tmp = tmp
        # One torch thread per worker: two OpenMP threads spin-wait for each other on a busy 2-core machine,
        # which makes a chunk anything from 10 to 50 times slower.
        self.env = {"DREAMGEN_BROKER_URL": redis_url, "DREAMGEN_REDIS_PREFIX": self.prefix,
                    "DREAMGEN_HOME": str(home), "DREAMGEN_MODEL": MODEL, "OMP_NUM_THREADS": "1",
                    **{k: str(v) for k, v in extra_env.items()}}
        self.redis = redis_client(redis_url)
        self.workers: dict[str, WorkerProcess] = {}

    def __enter__(self):
        delete_prefix(self.redis, self.prefix)
        self._patch = pytest.MonkeyPatch()
        for name, value in self.env.items():
            if name != "OMP_NUM_THREADS":  # torch in this process has read it already; see one_torch_thread
                self._patch.setenv(name, value)
        self._patch.delenv("DREAMGEN_S3_ENDPOINT_URL", raising=False)
        return self

    def __exit__(self, *exc):
        for worker in list(self.workers.values()):
            worker.stop()
        self._patch.undo()
        delete_prefix(self.redis, self.prefix)

    def worker(self, name: str, queues: str = "dreamgen.gpu,dreamgen.light", wait: bool = True,
               pool: str = "prefork", concurrency: int = 1, **env) -> "WorkerProcess":
        """The running worker called `name`, started if it is not running."""
        current = self.workers.get(name)
        if current is None or not current.alive:
            current = WorkerProcess(name, queues, {**self.env, "DREAMGEN_WORKER_POOL": pool,
                                                   **{k: str(v) for k, v in env.items()}},
                                    self.tmp / f"{name}-{len(self.workers)}.log", pool, concurrency)
            self.workers[name] = current
        if wait:
            current.wait_ready()
        return current

    def queue_length(self, queue: str = "dreamgen.gpu") -> int:
        return self.redis.llen(f"{self.prefix}:kombu:{queue}")


class WorkerProcess:
    """`celery -A dreamgen.workers.app worker` (prefork with one child, unless told otherwise) in its own process group."""

    def __init__(self, name: str, queues: str, env: dict, log: Path, pool: str = "prefork", concurrency: int = 1):
        self.name, self.log = name, log
        self.node = f"{name}@testhost"
        command = [str(CELERY), "-A", "dreamgen.workers.app", "worker", "-P", pool, "-c", str(concurrency),
                   "-Q", queues,
                   "-n", self.node, "-l", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        self._log_file = open(log, "wb")
        self.process = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=self._log_file,
                                        stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = SLOW) -> None:
        """Until the worker consumes and its pool process holds the model."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if " ready." in text and (f"loaded {MODEL}" in text or "dreamgen.gpu" not in self._queues(text)):
                return
            if not self.alive:
                pytest.fail(f"worker {self.name} exited ({self.process.returncode}):\n{text[-3000:]}")
            time.sleep(0.2)
        pytest.fail(f"worker {self.name} not ready within {timeout} s:\n{self.text()[-3000:]}")

    @staticmethod
    def _queues(text: str) -> str:
        return text.split("[queues]", 1)[-1].split("[tasks]", 1)[0]

    def pool_pids(self) -> list[int]:
        """The pool (child) processes, which run the tasks."""
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(self.process.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self, timeout: float = 15) -> None:
        if self.alive:
            self._signal_group(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        self._signal_group(signal.SIGKILL)  # whatever is left of the group, children included
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()

    def _signal_group(self, sig) -> None:
        try:
            os.killpg(self.process.pid, sig)
        except ProcessLookupError:
            pass


# -------------------------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def one_torch_thread():
    """Run torch in this process as the workers do (the same documents need the same arithmetic)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_prompts(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def quick_prompts(count: int, tokens: int = 24, steps: int = 2, start: int = 0) -> list[dict]:
    """Prompts the tiny model finishes in well under a second each (on an idle machine)."""
    return [{"prompt": f"A short illustrated note about river {i}", "seed": i, "max_new_tokens": tokens,
             "steps": steps, "max_images": 2} for i in range(start, start + count)]


def first_quick_then_long(long: int = 2) -> list[dict]:
    """A chunk to interrupt: one document that ends at once, then `long` that fill the tiny model's context
    (~2.5 s each on an idle machine, whatever the seed), so there is time to act after the first is stored."""
    items = [{"prompt": "a note that ends at once", "seed": 1, "max_new_tokens": 2, "steps": 1}]
    return items + [{"prompt": f"a long story about lighthouse {i}", "seed": 10 + i, "max_new_tokens": 1000,
                     "steps": 10, "max_images": 2} for i in range(long)]


def wait_until(predicate, timeout: float = SLOW, interval: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def wait_for_job(job_id: str, timeout: float = SLOW):
    """The report of `job_id` once it has ended (it may not exist yet: a schedule's job is submitted by a worker)."""
    from dreamgen.distributed.status import job_status
    from dreamgen.errors import JobNotFound

    def ended():
        try:
            report = job_status(job_id)
        except JobNotFound:
            return None
        return report if report.final else None

    return wait_until(ended, timeout, what=f"job {job_id} to end")


def manifest_ids(out: Path, job_id: str) -> list[str]:
    lines = (out / job_id / "manifest.jsonl").read_text().splitlines()
    return [json.loads(line)["id"] for line in lines if line.strip()]
