"""Exporters: a stored Document -> Markdown, HTML, and the body of an OpenAI Batch API result line; a job's documents
-> an EPUB book. Functions of a
document; no model, no job logic.

May import dreamgen.document and dreamgen.errors only (and templates/ as files).
"""
from __future__ import annotations

from typing import Iterable

from dreamgen.errors import ParamsError

FORMATS = ("md", "html")  # the default: a page of each document in both
KNOWN_FORMATS = FORMATS + ("epub",)  # epub: one book of the whole job (<job>/<job>.epub), made as the job ends
RESULTS = ("none", "openai")  # `--results openai`: also results.jsonl in the OpenAI Batch API's output shape


def parse_formats(value: str | Iterable[str]) -> tuple[str, ...]:
    """"md,html" -> ("md", "html"); an unknown or empty list is a ParamsError naming the known ones."""
    names = value.split(",") if isinstance(value, str) else list(value)
    formats = []
    for name in (n.strip().lower() for n in names):
        if not name:
            continue
        if name not in KNOWN_FORMATS:
            raise ParamsError(f"unknown format {name!r}; choose from {', '.join(KNOWN_FORMATS)}")
        if name not in formats:
            formats.append(name)
    if not formats:
        raise ParamsError(f"no format given; choose from {', '.join(KNOWN_FORMATS)}")
    return tuple(formats)


def check_results(value: str) -> str:
    if value not in RESULTS:
        raise ParamsError(f"unknown results format {value!r}; choose from {', '.join(RESULTS)}")
    return value
