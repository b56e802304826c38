"""Document -> an HTML page, and a job -> its index page, from the Jinja2 templates in templates/.

Model text is untrusted: it is rendered as Markdown with raw HTML off (markdown-it "js-default", which
also refuses javascript: links), images it links to become their alt text (no external assets), and every other value
goes through Jinja2's autoescape. A Content-Security-Policy without script-src backs this up.
"""
from __future__ import annotations

import base64
import io
import math
import mimetypes
from pathlib import Path
from typing import Callable, Iterable

import jinja2
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markupsafe import Markup

from dreamgen.document import Document, ImageBlock, InputImage, TextBlock

from .text import (document_title, image_alt_texts, input_alt_text, leading_heading, plain, prompt_parts, shorten,
                   without_first_heading)

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
PROMPT_PREVIEW = 280
THUMBNAILS = 4
DISPLAY_MIN_PX = 320  # pictures narrower than this are shown scaled up (a whole factor), pixelated
LIVE_REFRESH_S = 10  # a running job's index reloads itself this often (no script: a meta refresh)
THUMBNAIL_PX = 160  # about the width of a thumbnail on the index (two to a card's row)
# What the index shows of job.json: not local paths or settings, which a published page should not carry.
INDEX_FACTS = ("model", "created", "finished")

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _markdown(xhtml: bool = False) -> MarkdownIt:
    md = MarkdownIt("js-default", {"xhtmlOut": xhtml})  # xhtml: `<br />`, as an EPUB's XML needs

    def link_open(self, tokens, idx, options, env):
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        return self.renderToken(tokens, idx, options, env)

    def image(self, tokens, idx, options, env):
        # A picture the model links to would be fetched from elsewhere: show its alt text instead.
        return escapeHtml(self.renderInlineAsText(tokens[idx].children or [], options, env))

    md.add_render_rule("link_open", link_open)
    md.add_render_rule("image", image)
    return md


_md, _xmd = _markdown(), _markdown(xhtml=True)


def render_markdown(text: str, xhtml: bool = False) -> Markup:
    """Untrusted Markdown -> HTML that is safe to insert (no raw HTML, no script URLs, no remote images)."""
    return Markup((_xmd if xhtml else _md).render(text))


def document_page(doc: Document, job_id: str | None, self_contained: bool = False,
                  read_image: Callable[[str], bytes] | None = None) -> str:
    """The `index.html` of a document. Images are linked relatively (`images/00.png`), or with
    `self_contained` embedded as data URIs read through `read_image(path)`. With no `job_id` (a document of
    its own, from `dreamgen generate`) the page links to no job index."""
    title = document_title(doc)
    alts = image_alt_texts(doc)
    blocks, skip_heading = [], leading_heading(doc) == title
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            text = without_first_heading(block.text) if skip_heading and block.text.strip() else block.text
            skip_heading = skip_heading and not block.text.strip()
            if text.strip():
                blocks.append({"kind": "text", "html": render_markdown(text)})
        elif isinstance(block, ImageBlock):
            caption = f"Figure {block.index + 1} · {block.width}×{block.height} · seed {block.seed}"
            scale = display_scale(block.width)
            blocks.append({"kind": "image", "src": _image_src(doc, block, self_contained, read_image),
                           "alt": alts[block.index], "caption": caption, "pixelated": scale > 1,
                           "width": block.width * scale, "height": block.height * scale})
    params = [(name, value) for name, value in doc.params.items() if value not in (None, "")]
    prompt = []  # the prompt's text and the pictures it gave, where it placed them
    for part in prompt_parts(doc):
        if isinstance(part, InputImage):
            scale = display_scale(part.width)
            prompt.append({"kind": "image", "src": _input_src(doc, part, self_contained, read_image),
                           "alt": input_alt_text(part), "pixelated": scale > 1,
                           "caption": f"Input picture {part.index + 1} · {part.name} · {part.width}×{part.height}",
                           "width": part.width * scale, "height": part.height * scale})
        else:
            prompt.append({"kind": "text", "text": part})
    return _env.get_template("document.html.j2").render(
        title=title, doc=doc, job_id=job_id, blocks=blocks, params=params, prompt=prompt,
        given=bool(doc.input_images))


def display_scale(width: int) -> int:
    """How many times larger a picture is shown: small ones (the shapes model paints 64x64) by the whole number
    that brings them to DISPLAY_MIN_PX, drawn pixelated so they stay crisp; CSS caps every picture at the column
    width."""
    return max(1, math.ceil(DISPLAY_MIN_PX / max(width, 1)))


def job_index_page(job_record: dict, docs: Iterable[dict], failed: Iterable[dict] = (),
                   read_image: Callable[[str], bytes] | None = None, live: bool = False) -> str:
    """The job's `index.html`. `docs` are manifest entries (id, title, prompt, images relative to the job
    folder, their sizes); `failed` are errors.jsonl entries (id, custom_id, error, message). With `read_image`
    (path relative to the job folder -> bytes) the thumbnails are embedded as data URIs. `live`: the job is
    running; the page says how far it is and reloads itself every LIVE_REFRESH_S."""
    job_id = job_record.get("id") or job_record.get("job_id") or "job"
    entries = []
    for d in docs:
        title = d.get("title") or d["id"]
        prompt = " ".join(str(d.get("prompt") or "").split())
        sizes = list(d.get("sizes") or [])
        thumbnails = [{"src": _data_uri(read_image(path)) if read_image else path,
                       "pixelated": index < len(sizes) and sizes[index][0] < THUMBNAIL_PX}
                      for index, path in enumerate(list(d.get("images") or [])[:THUMBNAILS])]
        entries.append({"id": d["id"], "title": title, "link": f"{d['id']}/index.html", "thumbnails": thumbnails,
                        # the title is often the prompt itself (no title given, no heading written): say it once
                        "prompt": "" if _same_text(title, prompt) else shorten(prompt, PROMPT_PREVIEW)})
    facts = [(key, job_record[key]) for key in INDEX_FACTS if isinstance(job_record.get(key), (str, int, float))]
    running = None
    if live:
        total = job_record.get("total")
        running = f"running: {len(entries)} of {total} done" if isinstance(total, int) else "running"
    return _env.get_template("index.html.j2").render(job_id=job_id, facts=facts, docs=entries, failed=list(failed),
                                                     running=running, refresh_s=LIVE_REFRESH_S)


def _same_text(title: str, prompt: str) -> bool:
    """Whether the title is the prompt, or its start shortened with … (the document page shows it whole)."""
    title, prompt = plain(title).rstrip("…"), plain(prompt)
    return bool(title) and prompt.startswith(title)


def _image_src(doc: Document, block: ImageBlock, self_contained: bool, read_image) -> str:
    if not self_contained:
        if not block.path:
            raise ValueError(f"document {doc.id}: image {block.index} is not stored yet (no path)")
        return block.path
    if read_image is not None and block.path:
        data = read_image(block.path)
    elif block.image is not None:
        buffer = io.BytesIO()
        block.image.save(buffer, format="PNG")
        data = buffer.getvalue()
    else:
        raise ValueError(f"document {doc.id}: image {block.index}: pass read_image to embed stored images")
    return _data_uri(data)


def _input_src(doc: Document, given: InputImage, self_contained: bool, read_image) -> str:
    if not given.path:
        raise ValueError(f"document {doc.id}: input picture {given.index} is not stored (no path)")
    if not self_contained:
        return given.path
    data = given.data if given.data is not None else read_image(given.path)
    return _data_uri(data, mimetypes.guess_type(given.path)[0] or "application/octet-stream")


def _data_uri(data: bytes, media_type: str = "image/png") -> str:
    return f"data:{media_type};base64," + base64.b64encode(data).decode("ascii")
