"""Plain-text facts about a document that every format shows: its title, and alt text for its images."""
from __future__ import annotations

import re

from dreamgen.document import Document, ImageBlock, TextBlock

TITLE_MAX = 90
ALT_MAX = 125  # screen readers read alt text whole; keep it to about a sentence
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_MARKUP = re.compile(r"[#*_`>\[\]!~|<]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def plain(text: str) -> str:
    """Text without Markdown punctuation and with whitespace collapsed (for titles and alt text)."""
    text = re.sub(r"\]\([^)]*\)", "]", text)  # keep a link's words, drop its target
    text = " ".join(_MARKUP.sub(" ", text).split())
    return re.sub(r" ([.,;:!?])", r"\1", text)  # "*large*." leaves no space before its full stop


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


def without_first_heading(text: str) -> str:
    """The text without its opening heading line (pages show the title themselves, as their <h1>)."""
    stripped = text.lstrip("\n")
    first, _, rest = stripped.partition("\n")
    return rest if first.lstrip().startswith("#") else text


def document_title(doc: Document) -> str:
    """The given title; else the model's opening heading; else the start of the prompt; else the id."""
    for candidate in (doc.title, leading_heading(doc), doc.prompt):
        text = plain(candidate or "")
        if text:
            return shorten(text, TITLE_MAX)
    return doc.id


def image_alt_texts(doc: Document) -> dict[int, str]:
    """Alt text per image index: what the text since the previous picture says, which is what the model painted
    from (its last sentences, up to ALT_MAX: "The blue square was small. It lived at the bottom on a white
    background.", not only the last one, which may not name the shape). Headings count as sentences. The text
    holds no Markdown punctuation or backslashes, so every renderer shows it as is."""
    alts, before = {}, []
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            before.append(block.text)
        elif isinstance(block, ImageBlock):
            alts[block.index] = _last_sentences(before, ALT_MAX) or f"Illustration {block.index + 1}"
            before = []
    return alts


def _last_sentences(texts: list[str], limit: int) -> str:
    lines = [_heading_sentence(line) or plain(line) for text in texts for line in text.splitlines()]
    sentences = [s for line in lines for s in _SENTENCE_END.split(_alt_safe(line)) if s.strip()]
    if not sentences:
        return ""
    kept = [sentences[-1]]
    for sentence in reversed(sentences[:-1]):
        if len(" ".join([sentence] + kept)) > limit:
            break
        kept.insert(0, sentence)
    return shorten(" ".join(kept), limit)


def _heading_sentence(line: str) -> str | None:
    """A heading is a sentence of its own: "# Autumn forest" -> "Autumn forest." """
    match = _HEADING.match(line)
    if not match:
        return None
    text = plain(match.group(1))
    return text if not text or text[-1] in ".!?:" else text + "."


def _alt_safe(text: str) -> str:
    """No character a Markdown renderer would take as an escape or an entity (Hugo's shows `\\.` as is)."""
    return " ".join(text.replace("\\", " ").replace("&", " and ").split())
