"""The output layout of one job, over any Storage:

    <job>/job.json                       what was asked (jobs.spec)
    <job>/<doc>/images/NN.png            pictures, generation parameters in PNG text chunks
    <job>/<doc>/document.json            the Document
    <job>/<doc>/index.md, index.html     exports
    <job>/_done/<doc>.json               written create-once LAST: the document is finished
    <job>/_failed/<doc>.json             the last failure of a document that is not finished
    <job>/manifest.jsonl, errors.jsonl, index.html   rebuilt from the markers by finalize(); while `run` goes,
                                         kept current by LiveListing as documents end (prompt order)
    <job>/results.jsonl                  with --results openai: the Batch API's output shape (exporters.openai)
    <job>/<job>.epub                     with format epub: the finished documents as one book (exporters.epub)

S3 has no append, and several workers may finish documents at once, so the per-document markers are the
source of truth; a marker appears only after all of its document's files are stored, so nothing listed
is half-written. Document ids are safe path parts and never start with "_", so they cannot meet the
marker folders.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable

from dreamgen.exporters import FORMATS, check_results, parse_formats
from dreamgen.exporters.epub import job_book
from dreamgen.exporters.html import document_page, job_index_page
from dreamgen.exporters.markdown import to_markdown
from dreamgen.exporters.openai import error_line, result_line
from dreamgen.exporters.text import document_title

from ..clock import utc_now
from ..document import Document
from ..errors import KeyNotFound, StorageError
from ..ids import check_job_id, is_safe_id
from .png import encode_png
from .storage import PRESIGN_S, Storage, open_storage

CONTEXT_FULL = "context_full"  # the stop reason of a document the model's context cut short
GENERATE_OUT = "out/generate"  # where `dreamgen generate` puts a document folder when no --out is given
RESULTS_FILE = "results.jsonl"  # with --results openai
DONE_DIR = "_done"
FAILED_DIR = "_failed"
MESSAGE_MAX = 4000
LIVE_EVERY_S = 2.0  # a running job's manifest and index are rewritten at most this often
_READERS = 16  # parallel reads of markers: S3 answers each in tens of milliseconds


class JobOutput:
    """Reads and writes one job's files; safe to use from several processes at once."""

    def __init__(self, storage: Storage, job_id: str):
        self.storage = storage
        self.job_id = check_job_id(job_id)

    # ------------------------------------------------------------------------------------ keys
    def key(self, *parts: str) -> str:
        return "/".join((self.job_id,) + parts)

    def doc_key(self, doc_id: str, *parts: str) -> str:
        if not is_safe_id(doc_id):
            raise StorageError(f"document id {doc_id!r} is not a safe folder name")
        return self.key(doc_id, *parts)

    def marker_key(self, folder: str, doc_id: str) -> str:
        self.doc_key(doc_id)  # the same check as a document folder
        return self.key(folder, f"{doc_id}.json")

    def url_for(self, *parts: str) -> str:
        """Where a person opens a file of the job, e.g. url_for("index.html")."""
        return self.storage.url_for(self.key(*parts))

    def location(self, formats=FORMATS) -> str:
        """Where a person opens the whole job: its index page, or its manifest when no HTML is exported."""
        return self.url_for("index.html" if "html" in parse_formats(formats) else "manifest.jsonl")

    def open_link(self, formats=FORMATS, self_contained: bool = False) -> tuple[str, str | None]:
        """The link to print after a job, and why it may not open. A bucket is usually private, where its
        object URL answers 403: a self-contained index (its pictures inside it) gets a presigned link; any
        other page would not show its pictures through one (they are relative links, unsigned), so it is
        said instead."""
        name = "index.html" if "html" in parse_formats(formats) else "manifest.jsonl"
        plain = self.url_for(name)
        presign = getattr(self.storage, "presigned_url", None)
        if presign is None:  # a folder: a file:// link opens
            return plain, None
        if name == "index.html" and not self_contained:
            return plain, ("a private bucket answers this link with 403, and a presigned one would show no "
                           "pictures (the page links them relatively): export with --self-contained for a "
                           "presigned link to a page with its pictures inside")
        try:
            note = f"presigned: opens without credentials for {PRESIGN_S // 86400} days"
            if name == "index.html":  # its thumbnails are inside it; the pages it links to are not signed
                note += "; the document pages it links to need access to the bucket"
            return presign(self.key(name)), note
        except StorageError as e:
            return plain, f"not presigned ({e}); a private bucket answers this link with 403"

    # ------------------------------------------------------------------------------------ the job
    def write_job(self, job_record: dict) -> None:
        self.storage.write_bytes(self.key("job.json"), _json_bytes(job_record))

    def read_job(self) -> dict | None:
        try:
            return json.loads(self.storage.read_bytes(self.key("job.json")))
        except KeyNotFound:
            return None

    # ------------------------------------------------------------------------------------ documents
    def save_document(self, doc: Document, formats=FORMATS, self_contained: bool = False,
                      line: int | None = None) -> dict:
        """Store a generated document: images, document.json, exports, then its done marker.
        Sets each ImageBlock's path and sha256. Returns its manifest entry; `line` is its prompt's line in the
        prompt file, which orders the manifest and the index."""
        doc.job_id = doc.job_id or self.job_id
        doc.created = doc.created or utc_now()
        try:
            store_document(self.storage, lambda *parts: self.doc_key(doc.id, *parts), doc, formats, self_contained,
                           self.job_id)
            # last: the marker that says every file above is in place
            entry = self.manifest_entry(doc, line)
            self.storage.create_once(self.marker_key(DONE_DIR, doc.id), _json_bytes(entry))
        except StorageError:  # nothing half-written: the files stored so far go (and give back their space)
            self._remove_unfinished(doc.id)
            raise
        self.storage.delete(self.marker_key(FAILED_DIR, doc.id))  # a retry that succeeded
        return entry

    def _remove_unfinished(self, doc_id: str) -> None:
        """Best effort: delete a document's files unless it is done (another worker may have finished it)."""
        try:
            if not self.storage.exists(self.marker_key(DONE_DIR, doc_id)):
                for key in self.storage.list(self.doc_key(doc_id) + "/"):
                    self.storage.delete(key)
        except StorageError:
            pass

    def write_exports(self, doc: Document, formats=FORMATS, self_contained: bool = False, read_image=None) -> None:
        """(Re)write a stored document's index.md / index.html."""
        write_exports(self.storage, lambda *parts: self.doc_key(doc.id, *parts), doc, formats, self_contained,
                      self.job_id, read_image)

    def manifest_entry(self, doc: Document, line: int | None = None) -> dict:
        # stop_reason: eos, max_new_tokens, image_only, or context_full (cut short: the model's context filled)
        return {"id": doc.id, "custom_id": doc.custom_id, "line": line, "title": document_title(doc),
                "prompt": doc.prompt, "path": doc.id, "images": [f"{doc.id}/{b.path}" for b in doc.images],
                "sizes": [[b.width, b.height] for b in doc.images], "finished": utc_now(),
                "stop_reason": doc.stop_reason}

    def load_document(self, doc_id: str) -> Document:
        return Document.from_dict(json.loads(self.storage.read_bytes(self.doc_key(doc_id, "document.json"))))

    # ------------------------------------------------------------------------------------ failures
    def record_error(self, doc_id: str, custom_id: str | None, error, message: str | None = None,
                     prompt: str | None = None) -> dict:
        """Note that a document failed (an exception, or an error type name and a message); the job goes on.
        The latest failure of a document wins; a later success removes it. `prompt`, when given, is kept with it
        (the failures of a job are shown with their prompts)."""
        error_type = error if isinstance(error, str) else type(error).__name__
        if message is None:
            message = "" if isinstance(error, str) else str(error)
        if len(message) > MESSAGE_MAX:
            message = message[:MESSAGE_MAX - 1] + "…"
        entry = {"id": doc_id, "custom_id": custom_id, "error": error_type, "message": message, "time": utc_now()}
        if prompt is not None:
            entry["prompt"] = prompt
        self.storage.write_bytes(self.marker_key(FAILED_DIR, doc_id), _json_bytes(entry))
        return entry

    # ------------------------------------------------------------------------------------ state
    def done_ids(self) -> set[str]:
        return set(self._marker_ids(DONE_DIR))

    def manifest(self) -> list[dict]:
        """Every finished document's entry, in prompt-file order."""
        return in_prompt_order(self._read_markers(DONE_DIR, self._marker_ids(DONE_DIR)))

    def failed(self) -> list[dict]:
        """Failures of documents that are not (yet) finished, by id."""
        done = self.done_ids()
        ids = [i for i in self._marker_ids(FAILED_DIR) if i not in done]
        return sorted(self._read_markers(FAILED_DIR, ids), key=lambda e: e["id"])

    def finalize(self, formats=FORMATS, self_contained: bool | None = None, results: str | None = None) -> dict:
        """Rebuild manifest.jsonl, errors.jsonl, (with html) the job index and (with results "openai")
        results.jsonl from the markers. Idempotent; call it at the end of a run, a resume or an export. The index
        embeds its thumbnails when `self_contained` says so; None, for both, means as job.json asks. Returns the
        counts: done (every finished document), context_full (those of them the model's context cut short),
        failed."""
        formats = parse_formats(formats)
        record = self.read_job() or {"id": self.job_id}
        self_contained = bool(record.get("self_contained")) if self_contained is None else self_contained
        results = check_results((record.get("results") or "none") if results is None else results)
        entries, failed = self.manifest(), self.failed()
        self.write_listing(entries, failed, formats, record, self_contained)
        if "epub" in formats:
            self.write_book(entries, record)
        if results == "openai":
            self.write_openai_results(entries, failed)
        context_full = sum(1 for e in entries if e.get("stop_reason") == CONTEXT_FULL)
        return {"done": len(entries), "context_full": context_full, "failed": len(failed)}

    def write_listing(self, entries: list[dict], failed: list[dict], formats, record: dict, self_contained: bool,
                      live: bool = False, read_image=None) -> None:
        """manifest.jsonl, errors.jsonl and (with html) index.html of these entries, each file replaced whole.
        `live`: the job is still running (the index says so and reloads itself). A self-contained index reads its
        thumbnails through `read_image(path in the job)`, by default from the storage."""
        if "html" in parse_formats(formats):  # the page first: once the manifest is there, so is an index
            if self_contained:
                read_image = read_image or (lambda path: self.storage.read_bytes(self.key(path)))
            else:
                read_image = None
            page = job_index_page({"id": self.job_id, **record}, entries, failed, read_image=read_image, live=live)
            self.storage.write_bytes(self.key("index.html"), page.encode())
        self.storage.write_bytes(self.key("errors.jsonl"), _jsonl_bytes(failed))
        self.storage.write_bytes(self.key("manifest.jsonl"), _jsonl_bytes(entries))

    def book_key(self) -> str:
        return self.key(f"{self.job_id}.epub")

    def write_book(self, entries: list[dict], record: dict) -> None:
        """<job>/<job>.epub: the documents of `entries` (manifest entries, in their order) as one book."""
        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            docs = list(pool.map(self.load_document, [entry["id"] for entry in entries]))
        facts = " · ".join(f"{key}: {record[key]}" for key in ("model", "created", "finished")
                           if isinstance(record.get(key), str))
        book = job_book(self.job_id, record.get("title") or self.job_id, docs,
                        lambda doc, path: self.storage.read_bytes(self.doc_key(doc.id, path)),
                        modified=utc_now(), model=record.get("model"), facts=facts)
        self.storage.write_bytes(self.book_key(), book, "application/epub+zip")

    def write_openai_results(self, entries: list[dict], failed: list[dict]) -> None:
        """results.jsonl in the Batch API's output shape: a line per finished document, then one per failure."""
        def url_for(doc_id):
            return lambda path: self.storage.url_for(self.doc_key(doc_id, path))

        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            docs = list(pool.map(self.load_document, [entry["id"] for entry in entries]))
        lines = [result_line(doc, url_for(doc.id)) for doc in docs] + [error_line(entry) for entry in failed]
        self.storage.write_bytes(self.key(RESULTS_FILE), _jsonl_bytes(lines))

    def _marker_ids(self, folder: str) -> list[str]:
        prefix = self.key(folder) + "/"
        return [k[len(prefix):-len(".json")] for k in self.storage.list(prefix) if k.endswith(".json")]

    def _read_markers(self, folder: str, ids: list[str]) -> list[dict]:
        def read(doc_id):
            try:
                return json.loads(self.storage.read_bytes(self.marker_key(folder, doc_id)))
            except KeyNotFound:  # removed between list and read (a failure that was just retried)
                return None

        with ThreadPoolExecutor(max_workers=_READERS) as pool:
            return [entry for entry in pool.map(read, ids) if entry is not None]


def in_prompt_order(entries: Iterable[dict]) -> list[dict]:
    """Manifest entries by their prompt's line; entries written before lines were recorded last, oldest first."""
    return sorted(entries, key=lambda e: (e.get("line") or math.inf, e.get("finished") or "", e["id"]))


class LiveListing:
    """A running job's manifest.jsonl, errors.jsonl and index.html, rewritten as its documents end so a person can
    watch it grow: each file is replaced whole (LocalStorage renames a finished temp file into place; an S3 PUT is
    atomic), in prompt order, and at most once every `every_s` (an index of thousands of documents is not rebuilt
    per document; and never more often than ten times the last write took, so a huge index costs at most a tenth of
    the time). An end that falls inside the quiet time is written by the next `tick()` or `flush()`.

    One process's view: it starts from the markers stored when it begins and adds what this process finishes.
    finalize() rebuilds the same files from the markers at the end."""

    def __init__(self, output: JobOutput, formats=FORMATS, self_contained: bool = False,
                 every_s: float | None = None, clock=time.monotonic):
        self.output, self.formats, self.self_contained = output, parse_formats(formats), self_contained
        self.every_s, self.clock = LIVE_EVERY_S if every_s is None else every_s, clock
        self.entries = {e["id"]: e for e in output.manifest()}
        self.failures = {e["id"]: e for e in output.failed()}
        self.record = output.read_job() or {"id": output.job_id}
        self.dirty, self.last, self.quiet_s = True, -math.inf, self.every_s
        self.thumbnails: dict[str, bytes] = {}  # a self-contained index embeds them: each read once, not per write

    def done(self, entry: dict) -> None:
        self.entries[entry["id"]] = entry
        self.failures.pop(entry["id"], None)
        self.dirty = True
        self.tick()

    def failed(self, entry: dict) -> None:
        if entry["id"] not in self.entries:
            self.failures[entry["id"]] = entry
            self.dirty = True
        self.tick()

    def tick(self) -> None:
        """Write now if something changed and the quiet time is over."""
        if self.dirty and self.clock() - self.last >= self.quiet_s:
            self.flush()

    def flush(self) -> None:
        started = self.clock()
        self.output.write_listing(in_prompt_order(self.entries.values()),
                                  sorted(self.failures.values(), key=lambda e: e["id"]), self.formats, self.record,
                                  self.self_contained, live=True, read_image=self._thumbnail)
        self.dirty, self.last = False, self.clock()
        self.quiet_s = max(self.every_s, 10 * (self.last - started))

    def _thumbnail(self, path: str) -> bytes:
        if path not in self.thumbnails:
            self.thumbnails[path] = self.output.storage.read_bytes(self.output.key(path))
        return self.thumbnails[path]


class DocumentFolder:
    """One document of its own, as `dreamgen generate --out DIR` writes it: DIR/document.json, DIR/images/NN.png,
    DIR/index.md, DIR/index.html; no job around it. Writing another document there replaces the first."""

    def __init__(self, storage: Storage):
        self.storage = storage

    def save(self, doc: Document, formats=FORMATS) -> None:
        doc.created = doc.created or utc_now()
        store_document(self.storage, lambda *parts: "/".join(parts), doc, formats, job_id=None)
        kept = {block.path for block in doc.images} | {given.path for given in doc.input_images}
        for key in self.storage.list("images/") + self.storage.list("inputs/"):  # a document written here before
            if key not in kept:
                self.storage.delete(key)

    def url_for(self, name: str) -> str:
        return self.storage.url_for(name)


def export_job(storage: Storage, job_id: str, formats: Iterable[str] = FORMATS, self_contained: bool = False,
               results: str | None = None) -> int:
    """Re-render every finished document of a stored job (local or S3) from its document.json, then the
    job's manifest, errors, index and (results "openai", or as the job asked) results.jsonl. Returns how many
    documents were rendered."""
    formats = parse_formats(formats)
    job = JobOutput(storage, job_id)
    done = sorted(job.done_ids())
    if not done and job.read_job() is None:
        raise StorageError(f"no job {job_id!r} in {storage.location}")
    for doc_id in done:
        job.write_exports(job.load_document(doc_id), formats, self_contained=self_contained)
    job.finalize(formats, self_contained, results)
    return len(done)


def grouped_failures(entries: Iterable[dict]) -> list[tuple[str, list[dict]]]:
    """Failure entries grouped by their error (type and message), the largest group first."""
    groups: dict[str, list[dict]] = {}
    for entry in entries:
        groups.setdefault(f"{entry.get('error')}: {entry.get('message')}", []).append(entry)
    return sorted(groups.items(), key=lambda group: (-len(group[1]), group[0]))


def open_job_output(job_url: str, endpoint_url: str | None = None) -> JobOutput:
    """A JobOutput for a job folder given whole: `out/job-1` or `s3://bucket/prefix/job-1`."""
    url = job_url.rstrip("/")
    if not url.strip():  # "/" once read as "" (the working folder, issue 33): the root is no job folder
        raise StorageError(f"{job_url!r} is not a job folder: give OUT/JOB or s3://bucket/prefix/JOB")
    if url.startswith("s3://"):
        parent, _, job_id = url.rpartition("/")
        if parent == "s3:/" or "/" not in url[len("s3://"):]:
            raise StorageError(f"{job_url!r} names a bucket, not a job folder: s3://bucket/[prefix/]JOB")
        return JobOutput(open_storage(parent, endpoint_url), job_id)
    path = Path(url).expanduser().resolve()
    return JobOutput(open_storage(str(path.parent), endpoint_url), path.name)


def store_document(storage: Storage, key, doc: Document, formats=FORMATS, self_contained: bool = False,
                   job_id: str | None = None) -> None:
    """A document's files, at `key("images", "00.png")`, `key("document.json")`, ...: its input pictures (copied
    as given, to `inputs/`), its pictures (parameters inside), document.json, then its exports. Sets each
    ImageBlock's path and sha256."""
    stored = {}
    for given in doc.input_images:  # 0. the pictures the prompt gave, so the pages show them and the run reproduces
        if given.data is not None:
            storage.write_bytes(key(given.path), given.data)
            stored[given.path] = given.data
    for block in doc.images:  # 1. pictures, with their parameters inside
        if block.image is None:
            if not block.path:
                raise ValueError(f"document {doc.id}: image {block.index} has neither pixels nor a path")
            continue
        data = encode_png(doc, block)
        block.path, block.sha256 = f"images/{block.index:02d}.png", hashlib.sha256(data).hexdigest()
        storage.write_bytes(key(block.path), data, "image/png")
        stored[block.path] = data
    # 2. the document itself
    storage.write_bytes(key("document.json"), _json_bytes(doc.to_dict()))
    # 3. exports (a self-contained page embeds the bytes just written rather than reading them back)
    write_exports(storage, key, doc, formats, self_contained, job_id,
                  read_image=lambda path: stored.get(path) or storage.read_bytes(key(path)))


def write_exports(storage: Storage, key, doc: Document, formats=FORMATS, self_contained: bool = False,
                  job_id: str | None = None, read_image=None) -> None:
    """(Re)write a stored document's index.md / index.html at `key("index.md")`, `key("index.html")`."""
    formats = parse_formats(formats)
    if "md" in formats:
        storage.write_bytes(key("index.md"), to_markdown(doc, job_id).encode())
    if "html" in formats:
        read_image = read_image or (lambda path: storage.read_bytes(key(path)))
        page = document_page(doc, job_id, self_contained=self_contained, read_image=read_image)
        storage.write_bytes(key("index.html"), page.encode())


def _json_bytes(value) -> bytes:
    return (json.dumps(value, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _jsonl_bytes(entries: list[dict]) -> bytes:
    return "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries).encode("utf-8")
