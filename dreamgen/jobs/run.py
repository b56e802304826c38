"""Running a job in this process: prompt file in, stored documents out. The embedded runner and the Celery chunk
tasks both call `generate_batch`, so one code path writes every document whichever way the job runs.

    check the whole prompt file (spec.check_job)  ->  load the model  ->  job.json  ->  batches of `batch_size`
    documents not yet done  ->  Generator (lockstep)  ->  each document stored as it finishes  ->  manifest, index

The one room of dreamgen.jobs that imports generation (and so torch).
"""
from __future__ import annotations

import io
import itertools
import logging
import time
from typing import Callable

from PIL import Image

from exporters import FORMATS

from ..clock import utc_now
from ..document import Document
from ..errors import GenerationCancelled, JobInterrupted, StorageError
from ..generation.generator import DocumentRequest, Generator
from ..ids import document_id
from ..params import GenerationParams
from ..prompts.files import PromptSpec, iter_prompt_file
from .output import GENERATE_OUT, DocumentFolder, JobOutput
from .spec import JobConfig, JobSummary, batched, check_job, record_running
from .storage import open_storage

log = logging.getLogger(__name__)

EventCallback = Callable[[str, dict], None]  # ("document", {...}) | ("failed", {...}) | ("image", {...})


# -------------------------------------------------------------------------------------------- one batch
def load_input_image(location: str, endpoint_url: str | None = None) -> Image.Image:
    if location.startswith("s3://"):
        bucket, _, key = location[len("s3://"):].partition("/")
        data = open_storage(f"s3://{bucket}", endpoint_url).read_bytes(key)
        return Image.open(io.BytesIO(data)).convert("RGB")
    with Image.open(location) as image:
        return image.convert("RGB")


def generate_batch(generator: Generator, output: JobOutput, specs: list[PromptSpec], formats=FORMATS,
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


def run_job(config: JobConfig, on_event: EventCallback | None = None,
            make_generator: Callable[[JobConfig], Generator] | None = None,
            should_stop: Callable[[], bool] | None = None) -> JobSummary:
    """Run a whole job in this process. Documents already stored are skipped, so running a job again, or
    resuming it after Ctrl-C, produces each document once."""
    started = time.perf_counter()
    output, total = check_job(config)
    done_before = output.done_ids()
    pending = batched((s for s in iter_prompt_file(config.prompts, config.defaults, config.model)
                       if s.id not in done_before), config.batch_size)
    emit = on_event or (lambda kind, info: None)
    emit("start", {"job_id": config.job_id, "total": total, "skipped": len(done_before)})
    first = next(pending, None)
    generator = None
    if first is not None:  # load the model only when there is something to do, and before writing anything:
        emit("loading", {"model": config.model})  # a bad --model leaves no job behind
        generator = (make_generator or job_generator)(config)
    record_running(output, config, total)
    status = "finished"
    try:
        for batch in itertools.chain([first] if first is not None else [], pending):
            generate_batch(generator, output, batch, config.formats, config.self_contained, config.endpoint_url,
                           on_event, should_stop)
    except (KeyboardInterrupt, GenerationCancelled):
        status = "interrupted"
    record = {**(output.read_job() or config.record()), "status": status, "finished": utc_now()}
    output.write_job(record)  # first, so the index page shows when the job finished
    counts = output.finalize(config.formats)
    output.write_job({**record, **counts})
    summary = JobSummary(job_id=config.job_id, total=total, done=counts["done"], failed=counts["failed"],
                         skipped=len(done_before), location=output.location(config.formats),
                         seconds=time.perf_counter() - started, status=status)
    if status == "interrupted":
        raise JobInterrupted(summary)
    return summary


def generate_document(generator: Generator, prompt: str, params: GenerationParams, out: str | None, model_id: str,
                      image_only: bool = False, images: list[str] | None = None,
                      on_progress: Callable[[str], None] | None = None) -> tuple[Document, DocumentFolder]:
    """One document for `prompt` (with input pictures at local paths `images`), stored as the document folder
    `out` (default: out/generate/<document id>); returns it and the folder it went to."""
    images = images or []
    request = DocumentRequest(prompt=prompt, params=params, image_only=image_only,
                              images=[load_input_image(p) for p in images],
                              id=document_id(model_id, prompt, params, images))
    # issue 15: a document folder (document.json, images/, index.md, index.html), not a whole job folder
    folder = DocumentFolder(open_storage(out or f"{GENERATE_OUT}/{request.id}"))
    folder.storage.check()  # before the model works, not after
    doc = generator.generate([request], on_progress=lambda kind, _: on_progress and on_progress(kind))[0]
    folder.save(doc)
    return doc, folder


def load_generator(model: str, dtype: str = "fp32", device: str = "cpu", backend: str = "torch",
                   report: Callable[[str], None] | None = None) -> Generator:
    """The model on a backend, ready to generate; report(line) hears which backend was chosen and why."""
    from ..engines import select_backend
    from ..model.loader import load_model

    loaded = load_model(model, dtype=dtype, device=device)
    components, message = select_backend(backend, loaded)
    (report or log.info)(message)
    return Generator(loaded, components)


def job_generator(config: JobConfig, report: Callable[[str], None] | None = None) -> Generator:
    """The model of a job, on the job's device and backend."""
    return load_generator(config.model, config.dtype, config.device, config.backend, report)
