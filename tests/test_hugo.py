"""A job exported as a Hugo section, built by the real Hugo into a site: the pages a reader gets."""
from __future__ import annotations

import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from dreamgen.jobs.output import JobOutput
from dreamgen.jobs.storage import LocalStorage

HUGO = shutil.which("hugo")
pytestmark = pytest.mark.skipif(HUGO is None, reason="hugo is not installed (.ci/run installs Debian's hugo)")

JOB = "job-20261128-101500-3fa9c1"
# As the shapes model writes its articles: the picture comes after the sentences that describe it.
SHAPES_TEXTS = ("Once upon a time, there were two shapes. The blue square was small. It lived at the bottom on a "
                "white background.",
                "It was a happy square. The yellow triangle was large. It lived at the left on a white background.",
                "It was a happy triangle. The end.")

# What a theme gives every site: a page layout and a list layout (Hugo renders nothing without them).
SINGLE = """<!doctype html><html><head><title>{{ .Title }}</title></head><body>
<h1>{{ .Title }}</h1><time datetime="{{ .Date.Format "2006-01-02T15:04:05Z07:00" }}">{{ .Date.Format "2006-01-02" }}</time>
{{ .Content }}</body></html>
"""
LIST = """<!doctype html><html><head><title>{{ .Title }}</title></head><body><h1>{{ .Title }}</h1>
<ul>{{ range .Pages }}<li><a href="{{ .RelPermalink }}">{{ .Title }}</a> {{ .Date.Format "2006-01-02" }}</li>{{ end }}</ul>
</body></html>
"""


class Page(HTMLParser):
    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.elements, self.text = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.elements.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)

    def tags(self, name):
        return [attrs for tag, attrs in self.elements if tag == name]


def make_site(root: Path) -> Path:
    site = root / "site"
    (site / "layouts" / "_default").mkdir(parents=True)
    (site / "content").mkdir()
    (site / "config.toml").write_text('baseURL = "https://example.org/"\ntitle = "Site"\n'
                                      'disableKinds = ["taxonomy", "term", "RSS", "sitemap"]\n')
    (site / "layouts" / "_default" / "single.html").write_text(SINGLE)
    (site / "layouts" / "_default" / "list.html").write_text(LIST)
    return site


def build(site: Path) -> Path:
    result = subprocess.run([HUGO, "--source", str(site), "--destination", str(site / "public"), "--panicOnWarning"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return site / "public"


def test_an_exported_job_builds_in_hugo_with_titles_dates_pictures_and_nothing_else(tmp_path, make_doc):
    job = JobOutput(LocalStorage(tmp_path / "out"), JOB)
    job.write_job({"id": JOB, "model": "shapes", "created": "2026-11-28T10:15:00Z"})
    shapes = make_doc("two-shapes", prompt="Write about a small blue square and a large yellow triangle",
                      texts=SHAPES_TEXTS)
    shapes.created = "2026-11-28T10:16:00Z"
    job.save_document(shapes)
    titled = make_doc("autumn", title="Autumn: a walk")
    titled.created = "2026-11-28T10:17:00Z"
    job.save_document(titled)
    job.finalize()

    site = make_site(tmp_path)
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "out" / JOB), "--hugo", str(site / "content")])
    assert result.exit_code == 0, result.output
    assert result.output == f"Exported 2 documents of {JOB} as a Hugo section: {site / 'content'}/{JOB}\n"
    public = build(site)

    # only pages and their pictures: no document.json, markers, job.json, manifest, our own HTML pages
    published = sorted(p.relative_to(public).as_posix() for p in public.rglob("*") if p.is_file())
    assert published == sorted(["index.html", f"{JOB}/index.html",
                                f"{JOB}/two-shapes/index.html", f"{JOB}/two-shapes/images/00.png",
                                f"{JOB}/two-shapes/images/01.png",
                                f"{JOB}/autumn/index.html", f"{JOB}/autumn/images/00.png",
                                f"{JOB}/autumn/images/01.png"])

    page = Page((public / JOB / "two-shapes" / "index.html").read_text())
    text = " ".join("".join(page.text).split())
    assert "<title>Write about a small blue square and a large yellow triangle</title>" in \
        (public / JOB / "two-shapes" / "index.html").read_text()
    assert page.tags("time")[0]["datetime"] == "2026-11-28T10:16:00Z"  # the document's date, not year 1
    images = page.tags("img")
    assert [img["src"] for img in images] == ["images/00.png", "images/01.png"]
    for img in images:
        assert (public / JOB / "two-shapes" / img["src"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert "\\" not in img["alt"]  # no stray escapes
    topic = "Write about a small blue square and a large yellow triangle"  # the title: the text has no heading
    # a short caption naming each picture, not the paragraph before it again
    assert [img["alt"] for img in images] == [f"Picture 1: {topic}", f"Picture 2: {topic}"]
    assert "It was a happy triangle. The end." in text

    autumn = (public / JOB / "autumn" / "index.html").read_text()
    assert "<title>Autumn: a walk</title>" in autumn
    assert autumn.count("<h1") == 2  # the theme's title, and the model's own heading (it differs from the title)

    section = Page((public / JOB / "index.html").read_text())
    assert [a["href"] for a in section.tags("a")] == [f"/{JOB}/autumn/", f"/{JOB}/two-shapes/"]  # newest first
    assert f"<title>{JOB}</title>" in (public / JOB / "index.html").read_text()


def test_the_model_heading_that_is_the_title_is_not_shown_twice(tmp_path, make_doc):
    job = JobOutput(LocalStorage(tmp_path / "out"), JOB)
    job.write_job({"id": JOB, "created": "2026-11-28T10:15:00Z"})
    job.save_document(make_doc("forest"))  # opens with "# Autumn forest", which becomes the title
    site = make_site(tmp_path)
    from dreamgen.jobs.hugo import export_hugo

    assert export_hugo(job, LocalStorage(site / "content")) == 1
    html = (build(site) / JOB / "forest" / "index.html").read_text()
    assert re.findall(r"<h1[^>]*>([^<]*)</h1>", html) == ["Autumn forest"]


# issue 33: shortcodes in model text ran: a site secret on the page, a <script> with `unsafe = true`, and an
# unknown shortcode failing the whole site's build
HOSTILE_TEXTS = ('# Shortcodes\n\nThe key is {{% param "secretKey" %}} and {{< param "secretKey" >}}.',
                 'A gist: {{% gist someone 0123456789abcdef %}} and {{% nosuchshortcode %}} and {% raw %}x{% endraw %}'
                 ' and {{ .Site.Params.secretKey }}.\n\n```\n{{% param "secretKey" %}}\n```',
                 "The end: {")


def test_shortcodes_in_model_text_stay_literal_text_in_the_built_page(tmp_path, make_doc):
    job = JobOutput(LocalStorage(tmp_path / "out"), JOB)
    job.write_job({"id": JOB, "created": "2026-11-28T10:15:00Z"})
    job.save_document(make_doc("hostile", texts=HOSTILE_TEXTS))
    site = make_site(tmp_path)
    (site / "config.toml").write_text((site / "config.toml").read_text() + '[params]\nsecretKey = "s3cr3t-value"\n'
                                      "[markup.goldmark.renderer]\nunsafe = true\n")
    result = CliRunner().invoke(cli, ["export", str(tmp_path / "out" / JOB), "--hugo", str(site / "content")])
    assert result.exit_code == 0, result.output
    # the job folder's own index.md, as a page of the same site
    (site / "content" / "plain").mkdir()
    (site / "content" / "plain" / "index.md").write_text((tmp_path / "out" / JOB / "hostile" / "index.md").read_text())
    public = build(site)  # an unknown shortcode would fail it
    for html in ((public / JOB / "hostile" / "index.html").read_text(), (public / "plain" / "index.html").read_text()):
        text = " ".join("".join(Page(html).text).split()).replace("\u201c", '"').replace("\u201d", '"')  # typographer
        assert "s3cr3t-value" not in html and "<script" not in html
        assert 'The key is {{% param "secretKey" %}} and {{< param "secretKey" >}}.' in text
        assert "{{% gist someone 0123456789abcdef %}} and {{% nosuchshortcode %}} and {% raw %}x{% endraw %}" in text
        assert "{{ .Site.Params.secretKey }}" in text
