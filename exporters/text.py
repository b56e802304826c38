"""Plain-text facts about a document that every format shows: its title, and alt text for its images."""
from __future__ import annotations

import re

from dreamgen.document import Document, ImageBlock, TextBlock

TITLE_MAX = 90
ALT_MAX = 125  # screen readers read alt text whole; keep it to about a sentence
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_MARKUP = re.compile(r"[#*_`>\[\]!~|<]+")


def plain(text: str) -> str:
    """Text without Markdown punctuation and with whitespace collapsed (for titles and alt text)."""
    text = re.sub(r"\]\([^)]*\)", "]", text)  # keep a link's words, drop its target
    return " ".join(_MARKUP.sub(" ", text).split())


def shorten(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit - 1].rsplit(" ", 1)[0]
    return (cut or text[:limit - 1]).rstrip(" ,;:") + "…"


def leading_heading(doc: Document) -> str | None:
    """The model's own title, if its text opens with a Markdown heading."""
    first = next((b.text for b in doc.blocks if isinstance(b, TextBlock) and b.text.strip()), "")
    match = _HEADING.match(first.lstrip("\n"))
    return plain(match.group(1)) if match and first.lstrip().startswith("#") else None


def document_title(doc: Document) -> str:
    """The given title; else the model's opening heading; else the start of the prompt; else the id."""
    for candidate in (doc.title, leading_heading(doc), doc.prompt):
        text = plain(candidate or "")
        if text:
            return shorten(text, TITLE_MAX)
    return doc.id


def image_alt_texts(doc: Document) -> dict[int, str]:
    """Alt text per image index: the last sentence of the text that comes before it."""
    alts, before = {}, []
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            before.append(block.text)
        elif isinstance(block, ImageBlock):
            text = plain(" ".join(before))
            sentences = [s for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]
            alts[block.index] = shorten(sentences[-1], ALT_MAX) if sentences else f"Illustration {block.index + 1}"
            before = []
    return alts
