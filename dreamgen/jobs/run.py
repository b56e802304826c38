"""Running a job in this process: prompt file in, stored documents out. The embedded runner and the Celery chunk
tasks both call `generate_documents`, so one code path writes every document whichever way the job runs.

    check the whole prompt file (spec.check_job)  ->  load the model  ->  job.json  ->  the documents not yet done
    stream through the Generator's slot pool  ->  each document stored as it finishes  ->  manifest, index

The one room of dreamgen.jobs that imports generation (and so torch).
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Callable, Iterable, Iterator

from PIL import Image

from dreamgen.exporters import FORMATS

from ..clock import utc_now
from ..document import Document, InputImage
from ..errors import GenerationCancelled, InputImageError, JobFailed, JobInterrupted, ParamsError, StorageError
from ..generation.config import GeneratorConfig, generator_config
from ..generation.generator import NOTHING_YET, DocumentRequest, Generator
from ..ids import document_id
from ..params import GenerationParams
from ..prompts.files import PromptSpec, iter_prompt_file
from .inputs import read_input_image
from .lock import JobLock
from .output import GENERATE_OUT, DocumentFolder, JobOutput, LiveListing
from .spec import JobConfig, JobSummary, WorkItem, check_job, record_running
from .storage import open_storage

log = logging.getLogger(__name__)

# ("start" | "loading" | "slots" | "memory" | "document" | "failed" | "image" | "stats", {...})
EventCallback = Callable[[str, dict], None]
STATS_EVERY_S = 0.5  # how often "stats" events (tokens/s, slots busy) are sent


# -------------------------------------------------------------------------------------------- documents
def load_input_image(location: str, endpoint_url: str | None = None) -> Image.Image:
    """The pixels of the picture at a local path or s3:// URL, decoded within bounds (dreamgen.pictures); any
    problem is an InputImageError naming it."""
    return read_input_image(location, endpoint_url=endpoint_url)[1]


def read_input_images(locations: Iterable[str], endpoint_url: str | None = None) -> tuple[list, list]:
    """The records (InputImage, for the document) and pixels (for the model) of a prompt's pictures, in order."""
    read = [read_input_image(location, index, endpoint_url) for index, location in enumerate(locations)]
    return [record for record, _ in read], [pixels for _, pixels in read]


def read_picture(item: WorkItem, location: str, index: int) -> tuple[InputImage, Image.Image]:
    """The record and pixels of input picture `index` of `item`: as the item says (a worker's reader, or pictures
    read ahead), else from its location."""
    if item.read_picture is not None:
        return item.read_picture(location, index)
    return read_input_image(location, index, item.endpoint_url)


def picture_failure(error: Exception) -> str:
    """The message a document's failure records for a picture that could not be read."""
    return str(error) if isinstance(error, InputImageError) else f"input image: {error}"


def run_items(generator: Generator, items: Iterable, should_stop: Callable[[], bool] | None = None,
              slots: int | None = None, on_stats: Callable | None = None, job_tokens: int | None = None) -> None:
    """Stream WorkItems through the generator's slot pool, in order; `items` may yield NOTHING_YET (a live
    queue with nothing in it now). If a step fails, the documents then in flight are run one by one (so one
    bad document does not sink the others) and the stream goes on."""
    pulled: dict[int, WorkItem] = {}  # index in this run -> item: taken by the generator, not yet ended

    def done(item, doc) -> None:
        doc.input_images = item.inputs  # stored beside the document, named in its files
        item.done(doc)

    def requests(source) -> Iterator:
        index = 0  # the generator numbers requests in the order it takes them
        while True:
            try:
                item = next(source)
            except StopIteration:
                return
            except Exception as e:  # the source itself failed (a prompt file changed under the job): not a step
                raise _SourceFailed(e) from e
            if item is NOTHING_YET:
                yield item
                continue
            if item.stop and item.stop():
                item.dropped()
                continue
            spec = item.spec
            try:
                read = [read_picture(item, location, n) for n, location in enumerate(spec.images)]
            except Exception as e:  # whatever a picture raises is its document's failure (issue 33): taken from
                item.fail(e, picture_failure(e))  # the source, every item ends done or failed, or a worker's
                continue  # chunk waits for it forever
            item.inputs, images = [record for record, _ in read], [pixels for _, pixels in read]
            pulled[index] = item
            index += 1
            yield DocumentRequest(prompt=spec.prompt, params=spec.params, id=spec.id, title=spec.title,
                                  images=images, should_stop=item.stop)

    def finished(index: int, doc) -> None:
        item = pulled.pop(index)
        try:
            done(item, doc)
        except (StorageError, GenerationCancelled, KeyboardInterrupt):
            raise  # the job's storage failing stops the job (see below)
        except Exception as e:  # this document's files could not be made (an exporter's error): it alone fails
            item.fail(e, None)

    def progress(kind: str, index: int):
        if kind == "image":
            pulled[index].image()
        elif kind == "dropped":
            pulled.pop(index).dropped()

    source = iter(items)
    while True:
        pulled.clear()
        try:
            generator.run(requests(source), on_document=finished,
                          on_progress=progress, should_stop=should_stop, on_stats=on_stats, slots=slots,
                          job_tokens=job_tokens,
                          on_failure=lambda index, e: pulled.pop(index).fail(e, None))
            return
        except _SourceFailed as e:
            raise e.error from None
        except (GenerationCancelled, KeyboardInterrupt, StorageError):  # storage failing is the job's, not a
            raise  # document's: stop rather than generate the rest for a disk that is full
        except Exception as e:
            log.warning("a step failed (%s: %s); running the %d documents in flight one by one, then going on",
                        type(e).__name__, e, len(pulled))
            for item in list(pulled.values()):
                try:
                    generator.run(requests(iter([item])), on_document=lambda _, doc, item=item: done(item, doc),
                                  should_stop=should_stop, slots=1)
                except (GenerationCancelled, KeyboardInterrupt, StorageError):
                    raise
                except Exception as e_one:
                    item.fail(e_one, None)


class _SourceFailed(Exception):
    def __init__(self, error: Exception):
        self.error = error


def generate_documents(generator: Generator, output: JobOutput, specs: Iterable[PromptSpec], formats=FORMATS,
                       self_contained: bool = False, endpoint_url: str | None = None,
                       on_event: EventCallback | None = None, should_stop: Callable[[], bool] | None = None,
                       slots: int | None = None, job_tokens: int | None = None,
                       live: LiveListing | None = None) -> list[dict]:
    """Generate `specs` of one job and store each document the moment it finishes; a document that fails is
    recorded in the job's errors and the others go on; `live` hears both, to keep the job's index current.
    Returns one {id, status, error} per spec that ended."""
    emit = on_event or (lambda kind, info: None)
    results: dict[str, dict] = {}

    def item(spec: PromptSpec) -> WorkItem:
        def done(doc):
            doc.custom_id, doc.request_url = spec.custom_id, spec.request_url
            entry = output.save_document(doc, formats, self_contained, line=spec.line)
            if live:
                live.done(entry)
            results[spec.id] = {"id": spec.id, "status": "done", "error": None}
            emit("document", {"id": spec.id, "images": len(doc.images)})

        def fail(error, message=None):
            entry = output.record_error(spec.id, spec.custom_id, error, message, prompt=spec.prompt)
            if live:
                live.failed(entry)
            results[spec.id] = {"id": spec.id, "status": "failed", "error": f"{entry['error']}: {entry['message']}"}
            emit("failed", {"id": spec.id, "error": results[spec.id]["error"]})

        return WorkItem(spec, done, fail, image=lambda: emit("image", {"id": spec.id}), endpoint_url=endpoint_url)

    last = [0.0]

    def stats(generator_stats):
        if live:  # an end that came inside the listing's quiet time is written now
            live.tick()
        if time.perf_counter() - last[0] >= STATS_EVERY_S:
            last[0] = time.perf_counter()
            emit("stats", stats_event(generator_stats))

    run_items(generator, (item(spec) for spec in specs), should_stop, slots, stats, job_tokens)
    return list(results.values())


def stats_event(stats) -> dict:
    return {"busy": stats.busy, "slots": stats.slots, "pictures": stats.pictures,
            "tokens_per_s": stats.new_tokens / max(stats.seconds, 1e-9)}


def run_job(config: JobConfig, on_event: EventCallback | None = None,
            make_generator: Callable[[JobConfig], Generator] | None = None,
            should_stop: Callable[[], bool] | None = None,
            checked: tuple[JobOutput, int] | None = None) -> JobSummary:
    """Run a whole job in this process. Documents already stored are skipped, so running a job again, or
    resuming it after Ctrl-C, produces each document once. `checked`: what check_job(config) returned, where the
    caller checked the job already (the CLI does, before torch is imported)."""
    started = time.perf_counter()
    output, total = checked or check_job(config)
    lock = JobLock(output)  # one run of a job at a time (issue 33)
    lock.check()  # a live run is named before the model loads; the lock is taken once it has loaded
    try:
        return _run_checked(config, output, total, started, on_event, make_generator, should_stop, lock)
    finally:
        lock.release()


def _run_checked(config: JobConfig, output: JobOutput, total: int, started: float, on_event, make_generator,
                 should_stop, lock: JobLock) -> JobSummary:
    done_before = output.done_ids()
    pending = (s for s in iter_prompt_file(config.prompts, config.defaults, config.model) if s.id not in done_before)
    emit = on_event or (lambda kind, info: None)
    emit("start", {"job_id": config.job_id, "total": total, "skipped": len(done_before),
                   "location": output.location(config.formats)})  # where to watch: the index grows as it goes
    first = next(pending, None)
    if first is not None:  # load the model only when there is something to do, and before writing anything:
        emit("loading", {"model": config.model})  # a bad --model leaves no job behind
        generator = (make_generator or job_generator)(config)
        slots = config.slots or generator.slots
        emit("slots", {"slots": slots, "batching": config.batching, "default": config.slots is None,
                       "device": str(generator.model.device)})
        # the pool holds no more than the job's documents can fill (each at most a whole context)
        job_tokens = min(max(1, total - len(done_before)), slots) * generator.model.max_positions
        emit("memory", {"lines": generator.memory_plan(slots, job_tokens).lines()})
    lock.acquire()  # before anything is written: of two runs started together, one goes on
    stop = lambda: lock.lost or bool(should_stop and should_stop())  # noqa: E731  (taken over: stop)
    record_running(output, config, total)
    status, error = "finished", None
    try:
        if first is not None:
            live = LiveListing(output, config.formats, config.self_contained)
            live.flush()  # the index exists (and says "running") before the first document ends
            generate_documents(generator, output, itertools.chain([first], pending), config.formats,
                               config.self_contained, config.endpoint_url, on_event, stop, slots=slots,
                               job_tokens=job_tokens, live=live)
    except (KeyboardInterrupt, GenerationCancelled):
        status = "interrupted"
    except Exception as e:  # issue 16: a job that stops never stays "running" (a full disk, S3 past its retries)
        status, error = "failed", f"{type(e).__name__}: {e}"
        log.warning("job %s stopped: %s", config.job_id, error)
    recorded, failures = True, []
    try:
        counts, status, error, failures = _record_end(output, config, status, error)
    except StorageError as e:
        counts = {"done": len(_done_ids_if_listable(output)), "failed": 0, "context_full": 0}
        if error is None:  # issue 33: the documents are stored, the job's own files are not: it did not finish
            status, error = "failed", f"the job's own files could not be written: {e}"
            recorded = _record_failure(output, error)
        else:  # the storage that stopped the job may refuse the record too: say so
            recorded, error = False, f"{error} (job.json could not be updated either: {e})"
    summary = JobSummary(job_id=config.job_id, total=total, done=counts["done"], failed=counts["failed"],
                         skipped=len(done_before), location=output.location(config.formats),
                         seconds=time.perf_counter() - started, status=status, error=error,
                         context_full=counts["context_full"],  # counted apart from plain successes
                         failures=failures)
    if status == "interrupted":
        raise JobInterrupted(summary)
    if status == "failed":
        raise JobFailed(summary, error, recorded)
    return summary


def _record_end(output: JobOutput, config: JobConfig, status: str,
                error: str | None) -> tuple[dict, str, str | None, list[dict]]:
    """job.json's end (status, finish time, why a failed job stopped), then the manifest, errors and index of
    what is done; returns the counts, the status and error (a job whose every document failed has failed:
    issue 33) and, then, the failures."""
    failures = []
    if status == "finished" and not output.done_ids():
        failures = output.failed()
        if failures:
            status, error = "failed", f"every document failed ({len(failures)})"
    record = {**(output.read_job() or config.record()), "status": status, "finished": utc_now()}
    if error:
        record["error"] = error
    output.write_job(record)  # first, so the index page shows when the job finished
    counts = output.finalize(config.formats)
    output.write_job({**record, **counts})
    return counts, status, error, failures


def _record_failure(output: JobOutput, error: str) -> bool:
    """job.json says the job failed, and why; False when the storage refuses that too."""
    try:
        output.write_job({**(output.read_job() or {}), "status": "failed", "finished": utc_now(), "error": error})
        return True
    except StorageError:
        return False


def _done_ids_if_listable(output: JobOutput) -> set[str]:
    """The documents done, or none known when the storage cannot even be listed."""
    try:
        return output.done_ids()
    except StorageError:
        return set()


def generate_document(generator: Generator, prompt: str, params: GenerationParams, out: str | None, model_id: str,
                      image_only: bool = False, images: list[str] | None = None,
                      on_progress: Callable[[str], None] | None = None,
                      derive_seed: bool = False) -> tuple[Document, DocumentFolder]:
    """One document for `prompt` (with input pictures at local paths `images`), stored as the document folder
    `out` (default: out/generate/<document id>); returns it and the folder it went to. `derive_seed`: no seed was
    given, so the document's comes from its id (as in a job). A prompt that does not fit the model's context is a
    ParamsError with its token count."""
    from ..ids import derived_seed
    from ..model.card import ModelCard
    from ..prompts.context import context_problem

    images = images or []
    doc_id = document_id(model_id, prompt, params, images, image_only=image_only)
    if derive_seed:
        params = params.replace(seed=derived_seed(doc_id))
    problem = context_problem(ModelCard.of(generator.model), prompt, params, len(images), image_only)
    if problem:
        raise ParamsError(f"the prompt {problem}", name="prompt", rule=problem)
    records, pixels = read_input_images(images)
    request = DocumentRequest(prompt=prompt, params=params, image_only=image_only, images=pixels, id=doc_id)
    # a document folder (document.json, images/, index.md, index.html), not a whole job folder
    folder = DocumentFolder(open_storage(out or f"{GENERATE_OUT}/{request.id}"))
    folder.storage.check()  # before the model works, not after
    doc = generator.generate([request], on_progress=lambda kind, _: on_progress and on_progress(kind))[0]
    if image_only:  # recorded with the parameters (document.json, the PNG's chunks), so the picture reproduces
        doc.params = {**doc.params, "image_only": True}
    doc.input_images = records
    folder.save(doc)
    return doc, folder


def load_generator(model: str, dtype: str = "fp32", device: str = "cpu", backend: str = "torch",
                   report: Callable[[str], None] | None = None, kv_fraction: float | None = None,
                   config: GeneratorConfig | None = None) -> Generator:
    """The model on a backend, ready to generate; report(line) hears which backend was chosen and why.
    config: the generator's (default: from the settings)."""
    from ..engines import select_backend
    from ..model.loader import load_model

    loaded = load_model(model, dtype=dtype, device=device)
    components, message = select_backend(backend, loaded)
    (report or log.info)(message)
    return Generator(loaded, components, config or generator_config(kv_fraction=kv_fraction))


def job_generator(config: JobConfig, report: Callable[[str], None] | None = None,
                  kv_fraction: float | None = None, compile: bool | None = None) -> Generator:
    """The model of a job, on the job's device and backend, with the job's slots and batching."""
    generator = generator_config(slots=config.slots, batching=config.batching, compile=compile,
                                    kv_fraction=kv_fraction)
    return load_generator(config.model, config.dtype, config.device, config.backend, report, config=generator)
