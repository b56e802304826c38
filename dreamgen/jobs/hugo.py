"""A stored job as a Hugo section, to drop into a site's `content/`:

    <dir>/<job>/_index.md                 the section: front matter title and date (the job's)
    <dir>/<job>/<doc>/index.md            a leaf bundle: front matter title, date, ...; the text; image links
    <dir>/<job>/<doc>/images/NN.png       its pictures, as stored (parameters inside)
    <dir>/<job>/<doc>/inputs/NN.*         the pictures its prompt gave the model, as given

Only what Hugo should publish. The job folder itself is not a content folder: Hugo would publish every file of
a bundle as a page resource (document.json, the markers, job.json), and it reads `.html` files as content, so
a document's own index.html would fight its index.md for one URL.
"""
from __future__ import annotations

from dreamgen.exporters.markdown import front_matter, to_markdown

from ..errors import StorageError
from .output import JobOutput
from .storage import Storage


def export_hugo(job: JobOutput, dest: Storage) -> int:
    """Write every finished document of `job` into `dest` as the section `<job>/`; returns how many."""
    record = job.read_job()
    done = sorted(job.done_ids())
    if not done and record is None:
        raise StorageError(f"no job {job.job_id!r} in {job.storage.location}")
    record = record or {}
    section = {"title": record.get("title") or job.job_id, "date": record.get("created"), "job": job.job_id}
    dest.write_bytes(f"{job.job_id}/_index.md",
                     front_matter({k: v for k, v in section.items() if v is not None}).encode())
    for doc_id in done:
        doc = job.load_document(doc_id)
        for path in [given.path for given in doc.input_images] + [block.path for block in doc.images]:
            picture = job.storage.read_bytes(job.doc_key(doc_id, path))
            dest.write_bytes(f"{job.job_id}/{doc_id}/{path}", picture)
        dest.write_bytes(f"{job.job_id}/{doc_id}/index.md", to_markdown(doc, job.job_id).encode())
    return len(done)
