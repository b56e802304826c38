"""Exports: Markdown bundles and HTML pages parsed back; every image resolves; hostile text stays inert."""
from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt

from dreamgen.document import ImageBlock, TextBlock
from dreamgen.errors import ParamsError, StorageError
from dreamgen.exporters import FORMATS, parse_formats
from dreamgen.exporters.html import document_page, job_index_page
from dreamgen.exporters.markdown import to_markdown
from dreamgen.exporters.text import image_alt_texts
from dreamgen.jobs.output import JobOutput, export_job
from dreamgen.jobs.storage import LocalStorage

JOB = "job-1"
EVIL_PROMPT = ('Cats <script>alert(1)</script> "onerror=alert(2) \'><img src=x onerror=alert(3)> '
               "javascript:alert(4) {{ 7*7 }}")
EVIL_TEXTS = (
    "# Cats <script>alert(5)</script>\n\n<img src=x onerror=alert(6)> [click](javascript:alert(7)) "
    '<a href="javascript:alert(8)">x</a> <javascript:alert(9)>',
    "Alt breakers ] and ) and ![x](http://evil.example/track.png) <iframe src=//evil.example></iframe> "
    '"><svg onload=alert(10)>',
    "<style>body{display:none}</style> [fine](https://example.com) end",
)


@pytest.fixture
def job(tmp_path, make_doc) -> JobOutput:
    job = JobOutput(LocalStorage(tmp_path), JOB)
    job.write_job({"id": JOB, "model": "tiny-dreamllm", "prompts": "examples/prompts.jsonl"})
    job.save_document(make_doc("plain", title="Autumn: a walk — \"quoted\" 'title'\n---\nnot front matter"))
    job.save_document(make_doc("evil", prompt=EVIL_PROMPT, texts=EVIL_TEXTS, title=None,
                               custom_id='evil"><script>alert(11)</script>'))
    job.record_error("broken", '<script>alert(12)</script>', "RuntimeError", '<img src=x onerror=alert(13)>')
    job.finalize()
    return job


def doc_folder(job: JobOutput, doc_id: str) -> Path:
    return job.storage.root / JOB / doc_id


# ------------------------------------------------------------------------------------- formats

def test_parse_formats():
    assert FORMATS == ("md", "html")
    assert parse_formats("md,html") == ("md", "html")
    assert parse_formats(" HTML , md,html") == ("html", "md")
    assert parse_formats(["md"]) == ("md",)
    with pytest.raises(ParamsError, match="unknown format 'pdf'; choose from md, html, epub"):
        parse_formats("md,pdf")
    with pytest.raises(ParamsError, match="no format given"):
        parse_formats(" , ")


# ------------------------------------------------------------------------------------- Markdown

def alt_text(image_token) -> str:
    return "".join(child.content for child in image_token.children or [])


def split_front_matter(text: str) -> tuple[dict, str]:
    lines = text.split("\n")
    assert lines[0] == "---"
    end = lines.index("---", 1)
    return yaml.safe_load("\n".join(lines[1:end])), "\n".join(lines[end + 1:])


@pytest.mark.parametrize("doc_id", ["plain", "evil"])
def test_markdown_bundle_parses_back_with_every_image_resolving(job, doc_id):
    folder = doc_folder(job, doc_id)
    doc = job.load_document(doc_id)
    front, body = split_front_matter((folder / "index.md").read_text(encoding="utf-8"))
    assert set(front) >= {"title", "date", "job", "document", "model", "seed"}
    assert (front["job"], front["document"], front["model"], front["seed"]) == (JOB, doc_id, "tiny-dreamllm", 7)
    assert front["date"] == doc.created

    # Parse with raw HTML *enabled*: escaped text must still produce no HTML at all.
    tokens = MarkdownIt("commonmark").parse(body)
    inline = [child for token in tokens for child in (token.children or [])]
    assert not [t for t in tokens + inline if t.type in ("html_block", "html_inline")]
    images = [t for t in inline if t.type == "image"]
    assert [t.attrs["src"] for t in images] == [b.path for b in doc.images]
    for token in images:
        assert (folder / token.attrs["src"]).is_file()
        alt = alt_text(token)
        assert alt and "images/" not in alt  # the alt text stayed inside its brackets
    hrefs = [t.attrs.get("href", "") for t in inline if t.type == "link_open"]
    assert not [h for h in hrefs if h.lower().startswith("javascript:")]


def test_markdown_front_matter_is_safely_quoted(job):
    front, body = split_front_matter((doc_folder(job, "plain") / "index.md").read_text(encoding="utf-8"))
    assert front["title"] == "Autumn: a walk — \"quoted\" 'title' --- not front matter"
    assert body.lstrip().startswith("# Autumn forest")


def test_markdown_alt_text_is_a_short_caption_naming_the_picture(make_doc, tmp_path):
    """The picture's number and the heading it sits under, not the paragraph before it (read already)."""
    doc = make_doc("d", texts=("# Two shapes\n\nOnce upon a time, there were two shapes. The blue square was small.",
                               "## The *yellow* [triangle] & its friends\n\nIt was a happy square.",
                               "Long. " + "Very long words " * 20 + "here."))
    JobOutput(LocalStorage(tmp_path), JOB).save_document(doc)
    text = to_markdown(doc, JOB)
    tokens = MarkdownIt("commonmark").parse(split_front_matter(text)[1])
    images = [c for t in tokens for c in (t.children or []) if c.type == "image"]
    assert [alt_text(i) for i in images] == ["Picture 1: Two shapes", "Picture 2: The yellow triangle and its friends"]
    doc.blocks.append(TextBlock("## " + "A very long heading " * 10))
    doc.blocks.append(ImageBlock(index=2, width=16, height=16, seed=0, path="images/01.png"))
    assert len(image_alt_texts(doc)[2]) <= 80 and image_alt_texts(doc)[2].endswith("…")
    assert "\\" not in text.split("---", 2)[2]  # no backslash escapes: Hugo's renderer would show them


# ------------------------------------------------------------------------------------- HTML

class Page(HTMLParser):
    """Every element with its attributes, and the text of <style>, from a parsed page."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.styles, self.data, self._in_style = [], [], [], False
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))
        self._in_style = tag == "style"

    def handle_endtag(self, tag):
        self._in_style = False

    def handle_data(self, data):
        (self.styles if self._in_style else self.data).append(data)

    def tags(self, name):
        return [attrs for tag, attrs in self.elements if tag == name]

    @property
    def text(self) -> str:
        return "".join(self.data)


def assert_inert(page: Page) -> None:
    """No script can run and nothing is fetched from elsewhere."""
    names = [tag for tag, _ in page.elements]
    for forbidden in ("script", "iframe", "object", "embed", "svg", "link", "base", "form", "frame"):
        assert forbidden not in names, forbidden
    assert names.count("style") == 1  # ours, in <head>
    for tag, attrs in page.elements:
        assert not [a for a in attrs if a.lower().startswith("on")], (tag, attrs)
        for name in ("href", "src", "action", "formaction"):
            value = (attrs.get(name) or "").strip().lower()
            assert not value.startswith(("javascript:", "vbscript:", "data:text")), (tag, attrs)
            if name == "src":
                assert not value.startswith(("http:", "https:", "//")), (tag, attrs)  # no external assets
    style = "".join(page.styles)
    assert "url(" not in style and "@import" not in style and "http" not in style
    refresh = [m for m in page.tags("meta") if (m.get("http-equiv") or "").lower() == "refresh"]
    assert not refresh


@pytest.mark.parametrize("doc_id", ["plain", "evil"])
def test_document_page_parses_with_every_image_resolving_and_nothing_active(job, doc_id):
    folder = doc_folder(job, doc_id)
    page = Page((folder / "index.html").read_text(encoding="utf-8"))
    assert_inert(page)
    images = page.tags("img")
    assert len(images) == 2
    for attrs in images:
        assert (folder / attrs["src"]).is_file() and attrs["alt"]
    for attrs in page.tags("a"):
        href = attrs["href"]
        if not href.startswith("https://"):
            assert (folder / href).resolve().is_file(), href  # ../index.html, the job index


def test_hostile_text_is_shown_as_text_not_markup(job):
    page = Page((doc_folder(job, "evil") / "index.html").read_text(encoding="utf-8"))
    assert "<script>alert(1)</script>" in page.text  # the prompt, visible as the user wrote it
    assert "<img src=x onerror=alert(6)>" in page.text  # model text, visible as text
    assert "{{ 7*7 }}" in page.text  # not evaluated as a template
    links = [a["href"] for a in page.tags("a")]
    assert links == ["../index.html", "https://example.com"]  # the model's image became text, not a link
    external = [a for a in page.tags("a") if a["href"].startswith("https://")]
    assert all("noopener" in a.get("rel", "") for a in external)


def test_self_contained_pages_embed_every_image(job):
    doc = job.load_document("plain")
    folder = doc_folder(job, "plain")
    html = document_page(doc, JOB, self_contained=True,
                         read_image=lambda path: (folder / path).read_bytes())
    page = Page(html)
    assert_inert(page)
    sources = [attrs["src"] for attrs in page.tags("img")]
    assert len(sources) == 2
    for src, block in zip(sources, doc.images):
        assert src.startswith("data:image/png;base64,")
        data = base64.b64decode(src.split(",", 1)[1], validate=True)
        assert data == (folder / block.path).read_bytes()


def test_pages_are_styled_for_reading_with_no_external_assets(job):
    html = (doc_folder(job, "plain") / "index.html").read_text(encoding="utf-8")
    page = Page(html)
    style = "".join(page.styles)
    assert "max-width: 70ch" in style and "max-width: 100%" in style and "system-ui" in style
    assert "line-height: 1.65" in style
    assert [m for m in page.tags("meta") if m.get("name") == "viewport"]
    assert page.tags("figure") and page.tags("figcaption")
    assert [h for h in page.tags("h1")] and "Autumn: a walk" in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html.split("<body>")[0])


def test_job_index_lists_documents_with_links_thumbnails_and_failures(job):
    root = job.storage.root / JOB
    page = Page((root / "index.html").read_text(encoding="utf-8"))
    assert_inert(page)
    links = {a["href"] for a in page.tags("a")}
    assert links == {"plain/index.html", "evil/index.html"}
    for href in links:
        assert (root / href).is_file()
    thumbnails = [img["src"] for img in page.tags("img")]
    assert len(thumbnails) == 4 and all((root / src).is_file() for src in thumbnails)
    assert "2 documents" in page.text and "1 failed" in page.text
    assert "<script>alert(12)</script>" in page.text and "<img src=x onerror=alert(13)>" in page.text
    assert EVIL_PROMPT.split("{{")[0].strip() in " ".join(page.text.split())


def test_job_index_page_from_plain_records():
    html = job_index_page({"id": "j", "model": "m"}, [{"id": "d", "title": "T", "prompt": "P", "images": []}])
    page = Page(html)
    assert_inert(page)
    assert [a["href"] for a in page.tags("a")] == ["d/index.html"]


# ------------------------------------------------------------------------------------- export_job

def test_export_job_rerenders_from_stored_documents(job):
    root = job.storage.root / JOB
    for name in ("plain/index.md", "plain/index.html", "evil/index.md", "evil/index.html", "index.html",
                 "manifest.jsonl"):
        (root / name).unlink()
    assert export_job(job.storage, JOB, "md,html") == 2
    for name in ("plain/index.md", "plain/index.html", "evil/index.md", "evil/index.html", "index.html",
                 "manifest.jsonl", "errors.jsonl"):
        assert (root / name).is_file(), name

    assert export_job(job.storage, JOB, "html", self_contained=True) == 2
    sources = [img["src"] for img in Page((root / "plain/index.html").read_text()).tags("img")]
    assert sources and all(src.startswith("data:image/png;base64,") for src in sources)


def test_export_of_a_missing_job_is_a_clear_error(tmp_path):
    with pytest.raises(StorageError, match="no job 'job-404'"):
        export_job(LocalStorage(tmp_path), "job-404", "md")


def test_template_delimiters_in_model_text_cannot_reach_a_site_builder(make_doc):
    """issue 33: Hugo runs `{{% ... %}}` / `{{< ... >}}` in content, Jekyll `{% ... %}` and `{{ ... }}`: the
    Markdown holds none of them, the rendered text shows them as written (tests/test_hugo.py builds it)."""
    from dreamgen.exporters.markdown import to_markdown

    doc = make_doc("tpl", texts=('Key {{% param "secretKey" %}}, {{< gist a b >}}, {% raw %}, a {', "{% x %} and {{y}}",
                                 "end"))
    doc.blocks[1].path = "images/00.png"
    doc.blocks[3].path = "images/01.png"
    text = to_markdown(doc)
    body = text.split("---\n", 2)[2]
    assert "{{" not in body and "{%" not in body
    assert "Key &#123;&#123;% param" in body and "&#123;% raw %}" in body and "&#123;{y}}" in body
