"""Every DREAMGEN_* environment variable in one place: its name, its default and what it means.

Flags win over these, and these over the defaults (click reads the variables of the flags it has, by the names
here). Read at call time, not import time, so a test or a worker that sets one sees it at once.
Imports nothing of dreamgen but errors.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .errors import DreamgenError

DTYPES = ("auto", "fp32", "fp16", "bf16")  # auto: bf16 on CUDA, fp32 on the CPU
BACKENDS = ("auto", "torch", "onnx", "tensorrt")
ENGINE_BACKENDS = ("onnx", "tensorrt")  # the backends whose engines are built ahead (`dreamgen engines build`)
PRECISIONS = ("fp32", "fp16")  # of exported graphs and engines; the VAE's is always fp32


@dataclass(frozen=True)
class Setting:
    name: str
    default: str | None
    doc: str

    def get(self) -> str | None:
        """The variable's value, or the default when it is unset or empty."""
        return self.given() or self.default

    def given(self) -> str | None:
        """The variable's value; None when it is unset or empty."""
        return os.environ.get(self.name) or None


MODEL = Setting("DREAMGEN_MODEL", "shapes", "model of run, generate, submit and the workers' preload: a checkpoint "
                "directory, a built-in name (shapes, tiny-random) or a hub id")
OUT = Setting("DREAMGEN_OUT", "out", "where jobs are written: a folder or s3://bucket/prefix")
DTYPE = Setting("DREAMGEN_DTYPE", "auto", f"weights' precision: {', '.join(DTYPES)}; auto is bf16 on CUDA (with TF32 "
                "matmuls), fp32 on the CPU; the VAE stays fp32")
DEVICE = Setting("DREAMGEN_DEVICE", "cpu", "device of run and generate: cpu, cuda or cuda:N")
BACKEND = Setting("DREAMGEN_BACKEND", "torch", f"where the model runs: {', '.join(BACKENDS)}")
HOME = Setting("DREAMGEN_HOME", None, "caches: the tiny model, engines, beat's state, inline schedule prompts "
               "(default ~/.cache/dreamgen)")
MODEL_CONFIGS = Setting("DREAMGEN_MODEL_CONFIGS", None, "a folder of CLIP and SD configs searched before the "
                        "packaged ones, laid out as dreamgen/model/configs (clip-vit-large-patch14/config.json, "
                        "sd21-base/unet/...): for a checkpoint that names a tower of another size by the same hub id")
S3_ENDPOINT_URL = Setting("DREAMGEN_S3_ENDPOINT_URL", None, "endpoint of an S3-compatible server (default: AWS); "
                          "a worker uses its own only, never the one a job was submitted with")
BROKER_URL = Setting("DREAMGEN_BROKER_URL", "redis://localhost:6379/0",
                     "Redis of the workers: broker, result backend and job records")
REDIS_PREFIX = Setting("DREAMGEN_REDIS_PREFIX", "dreamgen", "namespace of every Redis key dreamgen writes")
JOB_TTL = Setting("DREAMGEN_JOB_TTL", str(7 * 24 * 3600), "seconds a job's record lives in Redis")
# Sized to a chunk's work: 8 documents of a 7B DreamLLM with 4 pictures of 50 steps take 2-5 minutes on one GPU,
# so 30 minutes is ample, and a chunk whose whole worker died comes back within 35 minutes, not hours. Raise
# both for big models on CPUs, or bigger chunks.
TASK_TIME_LIMIT = Setting("DREAMGEN_TASK_TIME_LIMIT", str(30 * 60), "hard time limit of one chunk task, seconds")
VISIBILITY_TIMEOUT = Setting("DREAMGEN_VISIBILITY_TIMEOUT", None, "seconds before Redis hands an unacknowledged "
                             "task to another worker; must exceed the time limit (default: limit + 5 min)")
RESULT_EXPIRES = Setting("DREAMGEN_RESULT_EXPIRES", str(24 * 3600), "seconds Celery keeps task results")
CHUNK_LOCK_TTL = Setting("DREAMGEN_CHUNK_LOCK_TTL", "300", "seconds a dead worker's chunk lock outlives its last "
                         "sign of life (the heartbeat `status` reads: a chunk without its lock is lost)")
S3_RETRY_S = Setting("DREAMGEN_S3_RETRY_S", "300", "seconds a transient S3 error (throttling, 5xx, a dropped "
                     "connection) is retried, with exponential backoff, before the job stops on it")
MAX_ATTEMPTS = Setting("DREAMGEN_MAX_ATTEMPTS", "3", "starts of one chunk before its documents are recorded failed")
WORKER_DEVICE = Setting("DREAMGEN_WORKER_DEVICE", "cpu", "device of a worker process (dreamgen worker sets it)")
WORKER_POOL = Setting("DREAMGEN_WORKER_POOL", "prefork", "the Celery pool of a worker process (dreamgen worker sets "
                      "it): threads shares one slot pool among the chunks the process holds")
WORKER_SLOTS = Setting("DREAMGEN_WORKER_SLOTS", None, "documents in flight in a worker process (default: the "
                       "device's, see dreamgen.generation.config.DEFAULT_SLOTS)")
KV_TOKENS = Setting("DREAMGEN_KV_TOKENS", None, "positions the KV cache of the slot pool holds, allocated once "
                    "(default: sized from memory, see the next two); documents enter while their worst case fits")
KV_MEMORY_FRACTION = Setting("DREAMGEN_KV_MEMORY_FRACTION", "0.9", "CUDA: share of the memory free after the "
                             "weights and one measured peak step that the KV pool takes")
KV_CPU_SHARE = Setting("DREAMGEN_KV_CPU_SHARE", "0.5", "CPU: the most of available memory the KV pool takes (it "
                       "never takes more than the job's documents can use)")
COMPILE = Setting("DREAMGEN_COMPILE", None, "1: torch.compile the decode buckets and the UNet; 0: never "
                  "(default: on CUDA only)")
PAINTING = Setting("DREAMGEN_PAINTING", "overlap", "overlap: pictures painted in a thread of their own (on CUDA a "
                   "stream of their own) while the LM writes; stepwise: a denoising step each generator step, in "
                   "the generator's thread; gather: every waiting picture painted at once while the text waits")
# What a worker may touch on behalf of whoever submits to its queue (issue 33): its own credentials and endpoint
# serve only these; anything else a task names is refused with an error naming it.
WORKER_S3_READ = Setting("DREAMGEN_WORKER_S3_READ", None, "buckets a worker reads input pictures from, "
                         "comma-separated (* any bucket its credentials reach); others are refused")
WORKER_S3_WRITE = Setting("DREAMGEN_WORKER_S3_WRITE", None, "buckets a worker writes jobs to, comma-separated "
                          "(* any bucket its credentials reach); others are refused")
WORKER_INPUT_DIRS = Setting("DREAMGEN_WORKER_INPUT_DIRS", None, "folders a worker reads local input pictures "
                            f"from, separated by {os.pathsep}; pictures elsewhere are refused")
WORKER_PRELOAD = Setting("DREAMGEN_WORKER_PRELOAD", "1", "0: a worker process loads no model at start")
WORKER_EVENTS = Setting("DREAMGEN_WORKER_EVENTS", "1", "0: workers send no task events (for celery events, Flower, "
                        "Prometheus exporters)")

ALL = (MODEL, OUT, DTYPE, DEVICE, BACKEND, HOME, S3_ENDPOINT_URL, S3_RETRY_S, BROKER_URL, REDIS_PREFIX, JOB_TTL,
       TASK_TIME_LIMIT, VISIBILITY_TIMEOUT, RESULT_EXPIRES, CHUNK_LOCK_TTL, MAX_ATTEMPTS, WORKER_DEVICE, WORKER_POOL,
       WORKER_SLOTS, KV_TOKENS, KV_MEMORY_FRACTION, KV_CPU_SHARE, COMPILE, PAINTING, WORKER_S3_READ,
       WORKER_S3_WRITE, WORKER_INPUT_DIRS, WORKER_PRELOAD, WORKER_EVENTS, MODEL_CONFIGS)
DEFAULT_MODEL = MODEL.default


VISIBILITY_MARGIN_S = 5 * 60  # past the time limit: a killed chunk's error callback has time to run


def _number(setting: Setting, kind=int):
    value = setting.get()
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise DreamgenError(f"{setting.name}={value!r} must be a number") from None


def home() -> Path:
    return Path(HOME.get() or Path.home() / ".cache" / "dreamgen")


def broker_url(given: str | None = None) -> str:
    return given or BROKER_URL.get()


def redis_prefix() -> str:
    return REDIS_PREFIX.get()


def s3_endpoint_url(given: str | None = None) -> str | None:
    """The endpoint given, else the variable's (None: AWS)."""
    return given or S3_ENDPOINT_URL.get()


def worker_s3_endpoint_url() -> str | None:
    """A worker's endpoint: its own variable, else AWS. Never the one its job was submitted with: the worker
    would sign requests with its own credentials for an address a submitter chose (issue 33)."""
    return S3_ENDPOINT_URL.get()


def _names(setting: Setting) -> frozenset[str]:
    return frozenset(name.strip() for name in (setting.get() or "").split(",") if name.strip())


def worker_s3_read() -> frozenset[str]:
    """Buckets a worker reads input pictures from ("*": any); empty: none."""
    return _names(WORKER_S3_READ)


def worker_s3_write() -> frozenset[str]:
    """Buckets a worker writes jobs to ("*": any); empty: none."""
    return _names(WORKER_S3_WRITE)


def worker_input_dirs() -> list[Path]:
    """Folders a worker reads local input pictures from, resolved; empty: none."""
    return [Path(p).expanduser().resolve() for p in (WORKER_INPUT_DIRS.get() or "").split(os.pathsep) if p.strip()]


def s3_retry_s() -> float:
    return _number(S3_RETRY_S, float)


def job_ttl_s() -> int:
    return _number(JOB_TTL)


def task_time_limit_s() -> int:
    return _number(TASK_TIME_LIMIT)


def visibility_timeout_s() -> int:
    limit = task_time_limit_s()
    visibility = limit + VISIBILITY_MARGIN_S if VISIBILITY_TIMEOUT.get() is None else _number(VISIBILITY_TIMEOUT)
    if visibility <= limit:
        raise DreamgenError(f"{VISIBILITY_TIMEOUT.name}={visibility} must exceed the task time limit ({limit} s), "
                            "or Redis hands running chunks to a second worker")
    return visibility


def result_expires_s() -> int:
    return _number(RESULT_EXPIRES)


def chunk_lock_ttl_s() -> float:
    return _number(CHUNK_LOCK_TTL, float)


def max_attempts() -> int:
    return _number(MAX_ATTEMPTS)


def worker_device() -> str:
    return WORKER_DEVICE.get()


def worker_pool() -> str:
    return WORKER_POOL.get()


def worker_slots() -> int | None:
    return None if WORKER_SLOTS.get() is None else _number(WORKER_SLOTS)


def kv_tokens() -> int | None:
    return None if KV_TOKENS.get() is None else _number(KV_TOKENS)


def _share(setting: Setting, given: float | None = None) -> float:
    value = given if given is not None else _number(setting, float)
    if not 0 < value <= 1:
        raise DreamgenError(f"{setting.name}={value!r} must be a share in (0, 1]")
    return value


def kv_memory_fraction(given: float | None = None) -> float:
    return _share(KV_MEMORY_FRACTION, given)


def kv_cpu_share(given: float | None = None) -> float:
    return _share(KV_CPU_SHARE, given)


def worker_preload() -> bool:
    return WORKER_PRELOAD.get() != "0"


def worker_events() -> bool:
    return WORKER_EVENTS.get() != "0"
