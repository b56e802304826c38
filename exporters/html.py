"""Document -> an HTML page, and a job -> its index page, from the Jinja2 templates in templates/.

Model text is untrusted: it is rendered as Markdown with raw HTML off (markdown-it "js-default", which
also refuses javascript: links), images it links to become their alt text (no external assets), and every other value
goes through Jinja2's autoescape. A Content-Security-Policy without script-src backs this up.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Callable, Iterable

import jinja2
from markdown_it import MarkdownIt
from markdown_it.common.utils import escapeHtml
from markupsafe import Markup

from dreamgen.document import Document, ImageBlock, TextBlock

from .text import document_title, image_alt_texts, leading_heading, shorten

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
PROMPT_PREVIEW = 280
THUMBNAILS = 4
# What the index shows of job.json: not local paths or settings, which a published page should not carry.
INDEX_FACTS = ("model", "created", "finished")

_env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES_DIR), autoescape=True,
                          undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)


def _markdown() -> MarkdownIt:
    md = MarkdownIt("js-default")

    def link_open(self, tokens, idx, options, env):
        tokens[idx].attrSet("rel", "nofollow noopener noreferrer")
        return self.renderToken(tokens, idx, options, env)

    def image(self, tokens, idx, options, env):
        # A picture the model links to would be fetched from elsewhere: show its alt text instead.
        return escapeHtml(self.renderInlineAsText(tokens[idx].children or [], options, env))

    md.add_render_rule("link_open", link_open)
    md.add_render_rule("image", image)
    return md


_md = _markdown()


def render_markdown(text: str) -> Markup:
    """Untrusted Markdown -> HTML that is safe to insert (no raw HTML, no script URLs, no remote images)."""
    return Markup(_md.render(text))


def document_page(doc: Document, job_id: str, self_contained: bool = False,
                  read_image: Callable[[str], bytes] | None = None) -> str:
    """The `index.html` of a document. Images are linked relatively (`images/00.png`), or with
    `self_contained` embedded as data URIs read through `read_image(path)`."""
    title = document_title(doc)
    alts = image_alt_texts(doc)
    blocks, skip_heading = [], leading_heading(doc) == title
    for block in doc.blocks:
        if isinstance(block, TextBlock):
            text = _without_first_heading(block.text) if skip_heading and block.text.strip() else block.text
            skip_heading = skip_heading and not block.text.strip()
            if text.strip():
                blocks.append({"kind": "text", "html": render_markdown(text)})
        elif isinstance(block, ImageBlock):
            caption = f"Figure {block.index + 1} · {block.width}×{block.height} · seed {block.seed}"
            blocks.append({"kind": "image", "src": _image_src(doc, block, self_contained, read_image),
                           "alt": alts[block.index], "caption": caption,
                           "width": block.width, "height": block.height})
    params = [(name, value) for name, value in doc.params.items() if value not in (None, "")]
    return _env.get_template("document.html.j2").render(
        title=title, doc=doc, job_id=job_id, blocks=blocks, params=params)


def job_index_page(job_record: dict, docs: Iterable[dict], failed: Iterable[dict] = ()) -> str:
    """The job's `index.html`. `docs` are manifest entries (id, title, prompt, images relative to the job
    folder); `failed` are errors.jsonl entries (id, custom_id, error, message)."""
    job_id = job_record.get("id") or job_record.get("job_id") or "job"
    entries = [{"id": d["id"], "title": d.get("title") or d["id"], "link": f"{d['id']}/index.html",
                "prompt": shorten(" ".join(str(d.get("prompt") or "").split()), PROMPT_PREVIEW),
                "thumbnails": list(d.get("images") or [])[:THUMBNAILS]} for d in docs]
    facts = [(key, job_record[key]) for key in INDEX_FACTS if isinstance(job_record.get(key), (str, int, float))]
    return _env.get_template("index.html.j2").render(job_id=job_id, facts=facts, docs=entries, failed=list(failed))


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
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _without_first_heading(text: str) -> str:
    """The page shows the title as its <h1>; drop the model's identical opening heading."""
    stripped = text.lstrip("\n")
    first, _, rest = stripped.partition("\n")
    return rest if first.lstrip().startswith("#") else text

