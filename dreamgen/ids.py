"""Job ids and document ids: stable, and safe to use as one part of a path or an S3 key."""
from __future__ import annotations

import hashlib
import json
import re
import secrets
import unicodedata
from datetime import datetime, timezone
from typing import Iterable

from .errors import ParamsError
from .params import PARAM_NAMES, GenerationParams

DOCUMENT_ID_HEX = 16  # 64 bits: collisions are negligible for any job size we will see
MAX_ID_LENGTH = 100
_UNSAFE_HASH_HEX = 10

# Alphanumeric first (so never ".", "..", a hidden file or "_state" folders the job layout owns),
# then a conservative set every file system and S3 accepts without quoting.
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: "$" would allow a final "\n"
# Windows refuses these as file names, with or without an extension.
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
# Files a job folder owns (jobs.output); a document folder with one of these names would collide with them, so
# a prompt file's id equal to one is refused (prompts.files), compared ignoring case.
JOB_FILES = ("job.json", "manifest.jsonl", "errors.jsonl", "index.html", "results.jsonl")
_FLOAT_PARAMS = {"temperature", "top_p", "guidance", "cache_until", "guidance_until"}
# Parameters added after documents had ids: they take part in an id only when given.
NEWER_PARAMS = ("cache_interval", "cache_until", "guidance_until")


def canonical_json(value) -> str:
    """JSON with sorted keys and no spaces: the same value always gives the same text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def document_id(model_id: str, prompt: str, params: GenerationParams, images: Iterable[str] = (),
                title: str | None = None, image_only: bool = False) -> str:
    """The id of the document this model, prompt, params and input images produce (16 hex chars).

    `images` are stable identities of the input pictures (e.g. a content hash or an s3:// URL).
    A title, text-to-image and the painting parameters added later (NEWER_PARAMS) take part only when given (an
    explicit cache interval 1 too: unset is the model's own, which may be another), so documents without them keep
    their old ids.
    """
    params_dict = {name: getattr(params, name) for name in PARAM_NAMES}  # asdict() is 10x slower
    for name in NEWER_PARAMS:  # unset: documents keep the ids they had before the parameter
        if params_dict.get(name) is None:
            del params_dict[name]
    # guidance=7 and guidance=7.0 generate the same document, so they must hash the same.
    for name in _FLOAT_PARAMS & params_dict.keys():
        if params_dict[name] is not None:  # None (unset): the model's own, which the model id pins
            params_dict[name] = float(params_dict[name])
    payload = {"model": model_id, "prompt": prompt, "params": params_dict, "images": list(images)}
    if title is not None:
        payload["title"] = title
    if image_only:
        payload["image_only"] = True
    # surrogatepass: an id is still defined for text that is not valid UTF-8 (a prompt given as a command-line
    # argument of undecodable bytes); valid text hashes as before. Prompt files reject such text when checked.
    return hashlib.sha256(canonical_json(payload).encode("utf-8", "surrogatepass")).hexdigest()[:DOCUMENT_ID_HEX]


def derived_seed(doc_id: str) -> int:
    """The seed of a document given none: from its id, so the documents of a job start from noise of their own
    (not all from seed 0), and running a job again gives each document the same seed."""
    digest = hashlib.sha256(f"dreamgen-seed:{doc_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # in [0, 2^63), as GenerationParams.seed must be


def is_safe_id(value: str) -> bool:
    """True when `value` can be used as is as one path part on any OS and as an S3 key part."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH or not _SAFE_ID.fullmatch(value):
        return False
    if ".." in value or value.endswith("."):  # Windows drops a trailing dot
        return False
    lower = value.lower()
    return lower.split(".")[0] not in _WINDOWS_RESERVED and lower not in JOB_FILES


def safe_document_id(user_id: str) -> str:
    """A safe path part for an id the user wrote: unchanged when already safe, else a slug + a hash.

    The hash is of the original text, so two different unsafe ids never map to the same result.
    """
    if is_safe_id(user_id):
        return user_id
    digest = hashlib.sha256(user_id.encode("utf-8", "surrogatepass")).hexdigest()[:_UNSAFE_HASH_HEX]
    return f"{_slug(user_id)}-{digest}"


def _slug(text: str) -> str:
    # No dots: then no "..", no trailing dot, and no "con.txt-..." that Windows would still read as CON.
    ascii_text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", ascii_text)
    slug = re.sub(r"-{2,}", "-", slug).strip("-_")[:MAX_ID_LENGTH - _UNSAFE_HASH_HEX - 1].rstrip("-_")
    return slug or "id"


def new_job_id(now: datetime | None = None) -> str:
    """A new job id that sorts by creation time, e.g. job-20261128-053757-3fa9c1."""
    now = now or datetime.now(timezone.utc)
    return f"job-{now:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"


def check_job_id(job_id: str) -> str:
    """Return `job_id` if it is safe as a folder name and S3 key part; raise ParamsError saying why not."""
    if is_safe_id(job_id):
        return job_id
    raise ParamsError(
        f"job id {job_id!r} is not usable as a folder name: use 1-{MAX_ID_LENGTH} letters, digits, '.', '_' "
        "or '-', starting with a letter or digit, without '..', and not a reserved name")
