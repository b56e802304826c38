"""Plain-text facts about a document that every format shows: its title, and alt text for its images."""
from __future__ import annotations

import re

from dreamgen.document import Document, ImageBlock, InputImage, TextBlock

TITLE_MAX = 90
ALT_MAX = 80  # a short caption: screen readers read alt text whole
IMAGE_PLACEHOLDER = "<image>"  # where a prompt places an input picture (dreamgen.model.special_tokens)
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_MARKUP = re.compile(r"[#*_`>\[\]!~|<]+")


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
    """Alt text per image index: a short caption naming the picture, "Picture 2: Autumn forest", by its number and
    what it illustrates (the heading it sits under, else the document's title). Not the text around it: a screen
    reader reads that already, and would read it twice. No Markdown punctuation or backslashes, so every renderer
    shows it as is."""
    alts, topic = {}, document_title(doc)
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            for line in block.text.splitlines():
                match = _HEADING.match(line)
                if match and plain(match.group(1)):
                    topic = plain(match.group(1))
        elif isinstance(block, ImageBlock):
            alts[block.index] = _alt_safe(shorten(f"Picture {block.index + 1}: {topic}", ALT_MAX))
    return alts


def input_alt_text(given: InputImage) -> str:
    """Alt text of a picture the prompt gave: which one, by its file's name."""
    return _alt_safe(shorten(f"Input picture {given.index + 1}: {plain(given.name) or 'unnamed'}", ALT_MAX))


def prompt_parts(doc: Document) -> list[str | InputImage]:
    """The prompt as the model read it, its text pieces and input pictures in order: each picture where the
    prompt's `<image>` stands, or all before the prompt when it has none (generation.prompting does the same)."""
    pieces = doc.prompt.split(IMAGE_PLACEHOLDER)
    given = list(doc.input_images)
    if len(pieces) - 1 != len(given):
        pieces = [""] * len(given) + [doc.prompt]
    parts: list[str | InputImage] = []
    for piece, picture in zip(pieces, given + [None]):
        if piece.strip():
            parts.append(piece.strip())
        if picture is not None:
            parts.append(picture)
    return parts


def _alt_safe(text: str) -> str:
    """No character a Markdown renderer would take as an escape or an entity (Hugo's shows `\\.` as is)."""
    return " ".join(text.replace("\\", " ").replace("&", " and ").split())
