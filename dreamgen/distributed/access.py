"""What a worker touches on behalf of whoever submits to its queue (issue 33).

A task names an output location and input pictures; the worker reaches them with its own credentials. So it
reads and writes only through its own endpoint (DREAMGEN_S3_ENDPOINT_URL, else AWS), never the one a task
carries; writes only to the buckets its settings list; reads input pictures only from the buckets and local
folders they list. Anything else is refused with an error naming the location and the setting to change.
Local output folders are not limited here: a worker writes them with its own file permissions.
"""
from __future__ import annotations

import os
from pathlib import Path

from .. import settings
from ..errors import InputImageError, StorageError
from ..jobs.storage import Storage, open_storage


def _listed(allowed: frozenset[str]) -> str:
    return ", ".join(sorted(allowed)) or "none"


def worker_storage(out: str) -> Storage:
    """The storage of a job's output as this worker may use it; StorageError if its settings refuse it."""
    if out.startswith("s3://"):
        bucket = out[len("s3://"):].partition("/")[0]
        allowed = settings.worker_s3_write()
        if "*" not in allowed and bucket not in allowed:
            raise StorageError(f"this worker does not write to {out}: bucket {bucket!r} is not in "
                               f"{settings.WORKER_S3_WRITE.name} ({_listed(allowed)})")
    return open_storage(out, settings.worker_s3_endpoint_url())


def check_picture(location: str) -> str:
    """`location` (an s3:// URL or a local path) if this worker may read it, as it is to be read (a local path
    with its links resolved); else InputImageError naming it and the setting."""
    if location.startswith("s3://"):
        bucket = location[len("s3://"):].partition("/")[0]
        allowed = settings.worker_s3_read()
        if "*" not in allowed and bucket not in allowed:
            raise InputImageError(location, f"is refused: bucket {bucket!r} is not in "
                                            f"{settings.WORKER_S3_READ.name} ({_listed(allowed)})")
        return location
    real = Path(os.path.realpath(location))
    folders = settings.worker_input_dirs()
    if not any(real == folder or folder in real.parents for folder in folders):
        shown = os.pathsep.join(str(f) for f in folders) or "none"
        raise InputImageError(location, f"is refused: it is not inside a folder of "
                                        f"{settings.WORKER_INPUT_DIRS.name} ({shown})")
    return str(real)


def read_picture(location: str, index: int = 0):
    """Input picture `index` of a prompt, read as this worker may (check_picture), through its own endpoint:
    its record (InputImage) and pixels, as jobs.inputs.read_input_image returns them."""
    from ..jobs.inputs import read_input_image

    record, pixels = read_input_image(check_picture(location), index, settings.worker_s3_endpoint_url())
    record.name = location.rstrip("/").rsplit("/", 1)[-1]  # as the prompt named it, not where its link led
    return record, pixels
