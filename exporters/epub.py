"""A job's documents -> one EPUB 3 book: a chapter per document in the order given, every picture inside.

    mimetype                      first and stored, as the OCF container requires
    META-INF/container.xml        where the package document is
    EPUB/package.opf              metadata, the manifest of every file, the reading order (spine)
    EPUB/nav.xhtml                the title page and table of contents
    EPUB/chapters/cNNN.xhtml      one per document: its title, the prompt's pictures where given, its text and pictures
    EPUB/images/cNNN-MM.png       the pictures the document painted; cNNN-inMM.* the ones its prompt gave

The text is rendered as on the HTML page (Markdown, raw HTML off, remote images as their alt text), in XHTML form;
characters XML cannot hold (most C0 controls) are dropped, since a model may write them.
"""
from __future__ import annotations

import io
import re
import uuid
import zipfile
from dataclasses import dataclass
from typing import Callable, Iterable

import jinja2
from PIL import Image

from dreamgen.document import Document, ImageBlock, InputImage, TextBlock

from .html import TEMPLATES_DIR, display_scale, render_markdown
from .text import document_title, image_alt_texts, input_alt_text, leading_heading, prompt_parts, without_first_heading

MEDIA_TYPE = "application/epub+zip"
# Picture types every EPUB 3 reader must show; others (a webp or bmp given as input) are re-encoded as PNG.
_CORE_IMAGES = {"PNG": ("png", "image/png"), "JPEG": ("jpg", "image/jpeg"), "GIF": ("gif", "image/gif")}
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


@dataclass
class _Picture:
    item: str  # its manifest id
    href: str  # relative to EPUB/
    media_type: str
    data: bytes


def job_book(book_id: str, title: str, docs: Iterable[Document], read_file: Callable[[Document, str], bytes],
             modified: str, model: str | None = None, facts: str = "") -> bytes:
    """The EPUB of `docs`, one chapter each in the order given. `read_file(doc, path)` gives the bytes of a
    document's stored picture (`images/00.png`, `inputs/00.jpg`); `modified` is a UTC time, 2026-11-28T10:15:00Z;
    `book_id` names the book for good (the same job, the same book)."""
    chapters, pictures = [], []
    for number, doc in enumerate(docs, start=1):
        name = f"c{number:03d}"

        def picture(path: str, stem: str) -> str:
            suffix, media_type, data = _core_image(read_file(doc, path))
            pictures.append(_Picture(f"{name}-{stem}", f"images/{name}-{stem}.{suffix}", media_type, data))
            return f"../{pictures[-1].href}"

        chapter_title = document_title(doc)
        page = _env.get_template("epub/chapter.xhtml.j2").render(
            title=chapter_title, prompt=_prompt(doc, picture), blocks=_blocks(doc, chapter_title, picture))
        chapters.append({"item": name, "href": f"chapters/{name}.xhtml", "title": chapter_title, "page": page})

    def render(template: str, **values) -> bytes:
        return _xml_text(_env.get_template(template).render(**values)).encode("utf-8")

    identifier = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, f"dreamgen:{book_id}"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as book:
        book.writestr(zipfile.ZipInfo("mimetype"), MEDIA_TYPE, compress_type=zipfile.ZIP_STORED)  # first, stored
        book.writestr("META-INF/container.xml", render("epub/container.xml.j2"))
        book.writestr("EPUB/package.opf", render("epub/package.opf.j2", identifier=identifier, title=title,
                                                 model=model, modified=modified, chapters=chapters,
                                                 pictures=pictures))
        book.writestr("EPUB/nav.xhtml", render("epub/nav.xhtml.j2", title=title, facts=facts, chapters=chapters))
        book.writestr("EPUB/style.css", (TEMPLATES_DIR / "epub" / "style.css").read_bytes())
        for chapter in chapters:
            book.writestr(f"EPUB/{chapter['href']}", _xml_text(chapter["page"]).encode("utf-8"))
        for item in pictures:  # already compressed: stored as they are
            book.writestr(f"EPUB/{item.href}", item.data, compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


def _blocks(doc: Document, title: str, picture: Callable[[str, str], str]) -> list[dict]:
    """The document's text (XHTML) and painted pictures, as the HTML page has them."""
    alts, parts = image_alt_texts(doc), []
    skip_heading = leading_heading(doc) == title  # the chapter's <h1> says it already
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            text = without_first_heading(block.text) if skip_heading and block.text.strip() else block.text
            skip_heading = skip_heading and not block.text.strip()
            if text.strip():
                parts.append({"kind": "text", "html": render_markdown(text, xhtml=True)})
        elif isinstance(block, ImageBlock):
            if not block.path:
                raise ValueError(f"document {doc.id}: image {block.index} is not stored yet (no path)")
            parts.append(_figure(picture(block.path, f"{block.index:02d}"), alts[block.index], block.width,
                                 block.height, f"Figure {block.index + 1} · {block.width}×{block.height}"))
    return parts


def _prompt(doc: Document, picture: Callable[[str, str], str]) -> list[dict]:
    """The prompt with the pictures it gave, where it placed them; nothing when it gave none."""
    if not doc.input_images:
        return []
    parts = []
    for part in prompt_parts(doc):
        if isinstance(part, InputImage):
            if not part.path:
                raise ValueError(f"document {doc.id}: input picture {part.index} is not stored (no path)")
            parts.append(_figure(picture(part.path, f"in{part.index:02d}"), input_alt_text(part), part.width,
                                 part.height, f"Input picture {part.index + 1} · {part.name}"))
        else:
            parts.append({"kind": "text", "text": part})
    return parts


def _figure(src: str, alt: str, width: int, height: int, caption: str) -> dict:
    scale = display_scale(width)
    return {"kind": "image", "src": src, "alt": alt, "caption": caption, "pixelated": scale > 1,
            "width": width * scale, "height": height * scale}


def _core_image(data: bytes) -> tuple[str, str, bytes]:
    """(suffix, media type, bytes) of a picture every reader shows: as it is, or re-encoded as PNG."""
    with Image.open(io.BytesIO(data)) as image:
        if image.format in _CORE_IMAGES:
            return (*_CORE_IMAGES[image.format], data)
        out = io.BytesIO()
        image.convert("RGBA" if "A" in image.getbands() else "RGB").save(out, format="PNG")
        return "png", "image/png", out.getvalue()


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("", text)
