"""Running a job: prompt file in, stored documents out. The embedded runner and the Celery tasks both call
`generate_chunk`, so one code path writes every document whichever way the job runs.

    validate the whole prompt file  ->  job.json  ->  chunks of `batch_size` documents not yet done
    ->  Generator (lockstep)  ->  each document stored as it finishes  ->  manifest, errors, index
"""
from __future__ import annotations

import io
import itertools
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from PIL import Image

from exporters import FORMATS, parse_formats

from .errors import DreamgenError, StorageError
from .generation import DocumentRequest, GenerationCancelled, Generator
from .ids import check_job_id, new_job_id
from .joboutput import JobOutput, utc_now
from .prompts import PromptSpec, iter_prompt_file, validate_prompt_file
from .registry import DEFAULT_MODEL
from .storage import open_storage

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict], None]  # ("document", {...}) | ("failed", {...}) | ("image", {...})


@dataclass
class JobConfig:
    """Everything that defines a job; stored as job.json so `--resume JOB` needs nothing else."""

    prompts: str
    out: str = "out"
    job_id: str | None = None
    model: str = DEFAULT_MODEL
    defaults: dict = field(default_factory=dict)  # parameter values from flags; lines override them
    batch_size: int = 8
    formats: tuple = FORMATS
    self_contained: bool = False
    endpoint_url: str | None = None
    dtype: str = "fp32"
    device: str = "cpu"
    backend: str = "torch"

    def __post_init__(self):
        self.prompts = str(Path(self.prompts).expanduser().resolve())  # so a resume works from anywhere
        self.formats = parse_formats(self.formats)
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise DreamgenError(f"batch size {self.batch_size!r} must be a positive integer")
        if self.job_id is not None:
            check_job_id(self.job_id)

    def record(self, **extra) -> dict:
        data = asdict(self)
        data["formats"] = list(self.formats)
        data.pop("endpoint_url")  # a deployment detail, not part of the job
        return {**data, **extra}

    @classmethod
    def from_record(cls, record: dict, **overrides) -> "JobConfig":
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
    status: str  # finished | interrupted


class JobInterrupted(DreamgenError):
    def __init__(self, summary: JobSummary):
        self.summary = summary
        super().__init__(f"job {summary.job_id} interrupted with {summary.done}/{summary.total} documents done")


def chunks(items: Iterable, size: int) -> Iterator[list]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


# -------------------------------------------------------------------------------------------- one chunk
def load_input_image(location: str, endpoint_url: str | None = None) -> Image.Image:
    if location.startswith("s3://"):
        bucket, _, key = location[len("s3://"):].partition("/")
        data = open_storage(f"s3://{bucket}", endpoint_url).read_bytes(key)
        return Image.open(io.BytesIO(data)).convert("RGB")
    with Image.open(location) as image:
        return image.convert("RGB")


def generate_chunk(generator: Generator, output: JobOutput, specs: list[PromptSpec], formats=FORMATS,
                   self_contained: bool = False, endpoint_url: str | None = None,
                   on_event: EventCallback | None = None, should_stop: Callable[[], bool] | None = None) -> list[dict]:
    """Generate and store `specs` in lockstep; each document is stored the moment it finishes. A document that
    fails is recorded in the job's errors and the others go on. Returns one {id, status, error} per spec."""
    emit = on_event or (lambda kind, info: None)
    results: dict[str, dict] = {}

    def fail(spec: PromptSpec, error: BaseException | str, message: str | None = None):
        entry = output.record_error(spec.id, spec.custom_id, error, message)
        results[spec.id] = {"id": spec.id, "status": "failed", "error": f"{entry['error']}: {entry['message']}"}
        emit("failed", {"id": spec.id, "error": results[spec.id]["error"]})

    requests, runnable = [], []
    for spec in specs:
        try:
            images = [load_input_image(loc, endpoint_url) for loc in spec.images]
        except (OSError, StorageError) as e:
            fail(spec, e, f"input image: {e}")
            continue
        requests.append(DocumentRequest(prompt=spec.prompt, params=spec.params, id=spec.id, title=spec.title,
                                        images=images))
        runnable.append(spec)

    def store(index: int, doc):
        spec = runnable[index]
        doc.custom_id = spec.custom_id
        output.save_document(doc, formats, self_contained)
        results[spec.id] = {"id": spec.id, "status": "done", "error": None}
        emit("document", {"id": spec.id, "images": len(doc.images)})

    def progress(kind: str, index: int):
        if kind == "image":
            emit("image", {"id": runnable[index].id})

    try:
        generator.generate(requests, on_progress=progress, should_stop=should_stop, on_document=store)
    except (GenerationCancelled, KeyboardInterrupt):
        raise
    except Exception as e:  # one bad document must not sink its batch: find it by running each alone
        log.warning("batch of %d failed (%s: %s); retrying its documents one by one", len(requests), type(e).__name__, e)
        for index, (spec, req) in enumerate(zip(runnable, requests)):
            if spec.id in results:
                continue
            try:
                generator.generate([req], should_stop=should_stop, on_document=lambda _, doc, i=index: store(i, doc))
            except (GenerationCancelled, KeyboardInterrupt):
                raise
            except Exception as e_one:
                fail(spec, e_one)
    return [results[s.id] for s in specs if s.id in results]


# -------------------------------------------------------------------------------------------- a whole job
def open_job(config: JobConfig) -> tuple[JobOutput, int]:
    """Check the prompt file whole and the output location, before anything is generated; record the job."""
    output, total = check_job(config)
    record_running(output, config, total)
    return output, total


def check_job(config: JobConfig) -> tuple[JobOutput, int]:
    """The prompt file checked whole, the job id chosen and the output location checked; nothing written."""
    total = validate_prompt_file(config.prompts, config.defaults, config.model)
    config.job_id = config.job_id or new_job_id()
    storage = open_storage(config.out, config.endpoint_url)
    storage.check()  # a missing bucket or a read-only folder is reported now, not after the first document
    return JobOutput(storage, config.job_id), total


def record_running(output: JobOutput, config: JobConfig, total: int) -> None:
    previous = output.read_job() or {}
    output.write_job(config.record(created=previous.get("created") or utc_now(), total=total, status="running"))


def resume_config(job_id: str, out: str, endpoint_url: str | None = None, **overrides) -> JobConfig:
    """The config of a stored job, to finish what it left undone."""
    output = JobOutput(open_storage(out, endpoint_url), check_job_id(job_id))
    record = output.read_job()
    if record is None:
        raise DreamgenError(f"no job {job_id} in {out} (no {output.url_for('job.json')})")
    return JobConfig.from_record({**record, "out": out, "job_id": job_id, "endpoint_url": endpoint_url}, **overrides)


def run_job(config: JobConfig, on_event: EventCallback | None = None,
            make_generator: Callable[[JobConfig], Generator] | None = None,
            should_stop: Callable[[], bool] | None = None) -> JobSummary:
    """Run a whole job in this process. Documents already stored are skipped, so running a job again, or
    resuming it after Ctrl-C, produces each document once."""
    started = time.perf_counter()
    output, total = check_job(config)
    done_before = output.done_ids()
    pending = chunks((s for s in iter_prompt_file(config.prompts, config.defaults, config.model)
                      if s.id not in done_before), config.batch_size)
    emit = on_event or (lambda kind, info: None)
    emit("start", {"job_id": config.job_id, "total": total, "skipped": len(done_before)})
    first = next(pending, None)
    generator = None
    if first is not None:  # load the model only when there is something to do, and before writing anything:
        emit("loading", {"model": config.model})  # a bad --model leaves no job behind
        generator = (make_generator or default_generator)(config)
    record_running(output, config, total)
    status = "finished"
    try:
        for chunk in itertools.chain([first] if first is not None else [], pending):
            generate_chunk(generator, output, chunk, config.formats, config.self_contained, config.endpoint_url,
                           on_event, should_stop)
    except (KeyboardInterrupt, GenerationCancelled):
        status = "interrupted"
    record = {**(output.read_job() or config.record()), "status": status, "finished": utc_now()}
    output.write_job(record)  # first, so the index page shows when the job finished
    counts = output.finalize(config.formats)
    output.write_job({**record, **counts})
    summary = JobSummary(job_id=config.job_id, total=total, done=counts["done"], failed=counts["failed"],
                         skipped=len(done_before), location=output.url_for("index.html" if "html" in config.formats
                                                                           else "manifest.jsonl"),
                         seconds=time.perf_counter() - started, status=status)
    if status == "interrupted":
        raise JobInterrupted(summary)
    return summary


def default_generator(config: JobConfig, report: Callable[[str], None] | None = None) -> Generator:
    """The model on the job's backend; report(line) hears which backend was chosen and why."""
    from .checkpoint import load_model
    from .engines import select_backend

    model = load_model(config.model, dtype=config.dtype, device=config.device)
    components, message = select_backend(config.backend, model)
    (report or log.info)(message)
    return Generator(model, components)
