"""Exporters: a stored Document -> Markdown and HTML. Functions of a document; no model, no job logic."""
from __future__ import annotations

from typing import Iterable

from dreamgen.errors import ParamsError, StorageError

FORMATS = ("md", "html")


def parse_formats(value: str | Iterable[str]) -> tuple[str, ...]:
    """"md,html" -> ("md", "html"); an unknown or empty list is a ParamsError naming the known ones."""
    names = value.split(",") if isinstance(value, str) else list(value)
    formats = []
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        if name not in FORMATS:
            raise ParamsError(f"unknown format {name!r}; choose from {', '.join(FORMATS)}")
        if name not in formats:
            formats.append(name)
    if not formats:
        raise ParamsError(f"no format given; choose from {', '.join(FORMATS)}")
    return tuple(formats)


def export_job(storage, job_id: str, formats: Iterable[str] = FORMATS, self_contained: bool = False) -> int:
    """Re-render every finished document of a stored job (local or S3) from its document.json, then the
    job's manifest, errors and index. Returns how many documents were rendered."""
    from dreamgen.joboutput import JobOutput  # the job layout uses these exporters; import it late

    formats = parse_formats(formats)
    job = JobOutput(storage, job_id)
    done = sorted(job.done_ids())
    if not done and job.read_job() is None:
        raise StorageError(f"no job {job_id!r} in {storage.location}")
    for doc_id in done:
        job.write_exports(job.load_document(doc_id), formats, self_contained=self_contained)
    job.finalize(formats)
    return len(done)
