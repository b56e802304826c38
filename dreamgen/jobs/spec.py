"""What a job is, without running it: its config (job.json), the checks before anything is written, its summary.

Light on purpose (no torch): submitting, resuming, retrying and scheduling jobs all start here.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from dreamgen.exporters import FORMATS, check_results, parse_formats

from .. import settings
from ..clock import utc_now
from ..document import Document
from ..errors import DreamgenError, JobNotFound
from ..generation.config import BATCHING
from ..ids import check_job_id, new_job_id
from ..prompts.files import PromptSpec, validate_prompt_file
from .output import JobOutput
from .storage import open_storage


@dataclass
class JobConfig:
    """Everything that defines a job; stored as job.json so `--resume JOB` needs nothing else, and carried by
    every chunk task of a distributed job (see `wire`)."""

    prompts: str
    out: str = settings.OUT.default
    job_id: str | None = None
    model: str = settings.DEFAULT_MODEL
    defaults: dict = field(default_factory=dict)  # parameter values from flags; lines override them
    batch_size: int = 8
    formats: tuple = FORMATS
    self_contained: bool = False
    endpoint_url: str | None = None
    dtype: str = settings.DTYPE.default
    device: str = settings.DEVICE.default
    backend: str = settings.BACKEND.default
    slots: int | None = None  # documents in flight in `dreamgen run` (None: the device's default)
    batching: str = "continuous"  # or "lockstep": fixed batches of `slots`, the way before continuous batching
    results: str = "none"  # "openai": also results.jsonl in the Batch API's output shape

    def __post_init__(self):
        self.prompts = str(Path(self.prompts).expanduser().resolve())  # so a resume works from anywhere
        self.formats = parse_formats(self.formats)
        check_results(self.results)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DreamgenError(f"batch size {self.batch_size!r} must be a positive integer")
        if self.job_id is not None:
            check_job_id(self.job_id)
        if self.slots is not None and (not isinstance(self.slots, int) or self.slots < 1):
            raise DreamgenError(f"slots {self.slots!r} must be a positive integer")
        if self.batching not in BATCHING:
            raise DreamgenError(f"batching {self.batching!r}: use one of {', '.join(BATCHING)}")

    def record(self, **extra) -> dict:
        """The job as job.json holds it."""
        data = self.wire()
        data.pop("endpoint_url")  # a deployment detail, not part of the job
        return {**data, **extra}

    def wire(self) -> dict:
        """The job as a chunk task carries it: job.json's fields and the submitter's S3 endpoint."""
        data = asdict(self)
        data["formats"] = list(self.formats)
        return data

    def output(self) -> JobOutput:
        """The job's files (its job id must be chosen)."""
        return JobOutput(open_storage(self.out, self.endpoint_url), self.job_id)

    @classmethod
    def from_record(cls, record: dict, **overrides) -> "JobConfig":
        if "schedule" in record and "batching" not in record:  # job.json of 2026-12 and before
            record = {**record, "batching": record["schedule"]}
        known = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        return cls(**{**known, **{k: v for k, v in overrides.items() if v is not None}})


@dataclass
class JobSummary:
    job_id: str
    total: int
    done: int
    failed: int
    skipped: int  # already done before this run
    location: str  # where to open the job's index
    seconds: float
    status: str  # finished | interrupted | failed
    error: str | None = None  # why a failed job stopped
    context_full: int = 0  # of the done: cut short because the model's context filled
    failures: list = field(default_factory=list)  # of a job whose every document failed: their failure entries


def batched(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


def check_job(config: JobConfig, time_limit_s: float | None = None) -> tuple[JobOutput, int]:
    """The prompt file checked whole (prompt lengths against the model's context, where its card can be read
    here; with `time_limit_s`, a chunk's, each document's worst case against it), the job id chosen and the
    output location checked; nothing written."""
    from ..model.locate import find_model_card  # reads config.json and the tokenizer, never torch

    total = validate_prompt_file(config.prompts, config.defaults, config.model, find_model_card(config.model),
                                 s3_header=s3_header_reader(config.endpoint_url), time_limit_s=time_limit_s)
    config.job_id = config.job_id or new_job_id()
    storage = open_storage(config.out, config.endpoint_url)
    storage.check()  # a missing bucket or a read-only folder is reported now, not after the first document
    return JobOutput(storage, config.job_id), total


def s3_header_reader(endpoint_url: str | None):
    """(bucket, key, n) -> the first n bytes of an input picture on S3, through `endpoint_url` (else the
    environment's), for the check of a prompt file: an endpoint that does not answer is reported in seconds."""
    from .storage import CHECK_RETRY_S, S3Storage

    buckets: dict[str, S3Storage] = {}

    def read(bucket: str, key: str, size: int) -> bytes:
        if bucket not in buckets:
            buckets[bucket] = S3Storage(bucket, endpoint_url=settings.s3_endpoint_url(endpoint_url),
                                        retry_s=min(settings.s3_retry_s(), CHECK_RETRY_S))
        return buckets[bucket].read_head(key, size)

    return read


def record_running(output: JobOutput, config: JobConfig, total: int) -> None:
    previous = output.read_job() or {}
    output.write_job(config.record(created=previous.get("created") or utc_now(), total=total, status="running"))


def open_job(config: JobConfig, time_limit_s: float | None = None) -> tuple[JobOutput, int]:
    """Check the prompt file whole and the output location, before anything is generated; record the job."""
    output, total = check_job(config, time_limit_s)
    record_running(output, config, total)
    return output, total


def stored_config(job_id: str, out: str, endpoint_url: str | None = None, **overrides) -> JobConfig:
    """The config of a job stored under `out` (its job.json), to finish or retry what it left undone."""
    output = JobOutput(open_storage(out, endpoint_url), check_job_id(job_id))
    record = output.read_job()
    if record is None:
        raise JobNotFound(f"no job {job_id} in {out} (no {output.url_for('job.json')})")
    return JobConfig.from_record({**record, "out": out, "job_id": job_id, "endpoint_url": endpoint_url}, **overrides)


@dataclass
class WorkItem:
    """One document to generate and what to do as it ends: the generator's side of one PromptSpec."""

    spec: PromptSpec
    done: Callable[[Document], None]  # store it
    fail: Callable[[BaseException | str, str | None], None]  # record why it could not be made
    stop: Callable[[], bool] | None = None  # polled between steps: True drops it (its chunk was cancelled)
    dropped: Callable[[], None] = lambda: None
    image: Callable[[], None] = lambda: None  # one of its pictures is painted
    endpoint_url: str | None = None  # of its input pictures on S3
    # instead: how to read one (a worker's, with its checks): (location, index) -> (InputImage, pixels)
    read_picture: Callable[[str, int], tuple] | None = None
    inputs: list = field(default_factory=list)  # its input pictures' records (InputImage), once read
