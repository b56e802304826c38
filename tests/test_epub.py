"""`dreamgen export JOB --format epub`: one book per job, a chapter per document in prompt order, every picture
inside, valid by epubcheck (Debian's package; the test skips without it)."""
from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from dreamgen.cli import cli
from dreamgen.document import Document, ImageBlock, InputImage, TextBlock
from dreamgen.jobs.output import JobOutput
from dreamgen.jobs.run import run_job
from dreamgen.jobs.spec import JobConfig
from dreamgen.jobs.storage import LocalStorage
from tests.helpers import tiny_generator

JAVA = shutil.which("java")
# Debian installs the jar with a /usr/bin/epubcheck link that only runs where binfmt knows jars: call java itself.
EPUBCHECK_JAR = next((p for p in (Path("/usr/share/java/epubcheck.jar"),
                                  Path(shutil.which("epubcheck") or "/nonexistent").resolve())
                      if p.is_file() and p.suffix == ".jar"), None)
NS = {"opf": "http://www.idpf.org/2007/opf", "x": "http://www.w3.org/1999/xhtml",
      "dc": "http://purl.org/dc/elements/1.1/"}


def png(colour, size=(16, 16)) -> Image.Image:
    return Image.new("RGB", size, colour)


def hostile_document() -> Document:
    """What a model may write that XML cannot take as is: markup, entities, control characters."""
    webp = io.BytesIO()
    png((10, 200, 10), (24, 24)).save(webp, format="WEBP")
    given = InputImage(index=0, name="leaf <green> & \"odd\".webp", size=len(webp.getvalue()), width=24, height=24,
                       sha256=hashlib.sha256(webp.getvalue()).hexdigest(), path="inputs/00.webp",
                       data=webp.getvalue())
    return Document(id="hostile", prompt="Look at <image> & tell me\x07 <b>why</b>", model="m",
                    params={"seed": 1}, input_images=[given], blocks=[
                        TextBlock("# Leaves & <trees>\n\nA form feed\x0c, a bell\x07 and a NUL\x00. "
                                  "<script>alert(1)</script> &nbsp; &copy; [link](javascript:alert(1)) "
                                  "![remote](http://example.com/x.png)"),
                        ImageBlock(index=0, width=16, height=16, seed=3, image=png((200, 20, 20))),
                        TextBlock("The end.")])


@pytest.fixture(scope="module")
def book(tmp_path_factory):
    """A real job (the tiny model; two prompts, the first with a picture), plus a hostile document, exported."""
    tmp = tmp_path_factory.mktemp("epub")
    png((30, 30, 220), (40, 32)).save(tmp / "blue.png")
    lines = [{"id": "zz-first", "prompt": "Describe <image> please", "images": ["blue.png"]},
             {"id": "aa-second", "prompt": "A walk in the park", "title": "A walk"}]
    (tmp / "p.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    run_job(JobConfig(prompts=str(tmp / "p.jsonl"), out=str(tmp / "out"), job_id="job-1",
                      defaults={"steps": 1, "max_new_tokens": 40, "seed": 2}, formats="md,html,epub"),
            make_generator=lambda c: tiny_generator())
    job = JobOutput(LocalStorage(tmp / "out"), "job-1")
    made_at_the_end = zipfile.ZipFile(tmp / "out" / "job-1" / "job-1.epub").namelist()
    job.save_document(hostile_document(), line=3)
    result = CliRunner().invoke(cli, ["export", str(tmp / "out" / "job-1"), "--format", "epub"])
    assert result.exit_code == 0, result.output
    path = tmp / "out" / "job-1" / "job-1.epub"
    assert f"Book: {path.as_uri()}" in result.output
    return {"path": path, "job": job, "made_at_the_end": made_at_the_end}


def spine(epub: zipfile.ZipFile) -> list[str]:
    opf = ET.fromstring(epub.read("EPUB/package.opf"))
    hrefs = {item.get("id"): item.get("href") for item in opf.iterfind("opf:manifest/opf:item", NS)}
    return [hrefs[ref.get("idref")] for ref in opf.iterfind("opf:spine/opf:itemref", NS)]


def test_a_job_makes_one_book_with_a_chapter_per_document_in_prompt_order(book):
    assert "EPUB/chapters/c002.xhtml" in book["made_at_the_end"]  # `run --format ...,epub` made it as the job ended
    epub = zipfile.ZipFile(book["path"])
    first = epub.infolist()[0]  # the OCF container: mimetype first, stored, nothing else in it
    assert (first.filename, first.compress_type, epub.read(first)) == ("mimetype", zipfile.ZIP_STORED,
                                                                      b"application/epub+zip")
    chapters = spine(epub)
    assert chapters == ["nav.xhtml", "chapters/c001.xhtml", "chapters/c002.xhtml", "chapters/c003.xhtml"]
    titles = [ET.fromstring(epub.read(f"EPUB/{c}")).find(".//x:h1", NS).text for c in chapters[1:]]
    assert titles == ["Describe image please", "A walk", "Leaves & trees"]  # the prompt file's order
    toc = [a.text for a in ET.fromstring(epub.read("EPUB/nav.xhtml")).iterfind(".//x:nav//x:a", NS)]
    assert toc == titles


def test_every_picture_is_inside_the_book_as_stored(book):
    epub = zipfile.ZipFile(book["path"])
    names = set(epub.namelist())
    stored = {doc_id: book["job"].load_document(doc_id) for doc_id in ("zz-first", "aa-second", "hostile")}
    for number, doc_id in enumerate(stored, start=1):
        page = ET.fromstring(epub.read(f"EPUB/chapters/c{number:03d}.xhtml"))
        sources = [img.get("src") for img in page.iterfind(".//x:img", NS)]
        doc = stored[doc_id]
        assert len(sources) == len(doc.images) + len(doc.input_images) > 0, doc_id
        for src in sources:
            assert f"EPUB/{src.removeprefix('../')}" in names, src
        painted = [s for s in sources if "-in" not in s]
        for block, src in zip(doc.images, painted, strict=True):  # the painted pictures, byte for byte
            assert epub.read(f"EPUB/{src.removeprefix('../')}") == \
                book["job"].storage.read_bytes(book["job"].doc_key(doc_id, block.path))
    given = epub.read("EPUB/images/c001-in00.png")  # the input picture of the first prompt, as given
    assert given == book["job"].storage.read_bytes(book["job"].doc_key("zz-first", "inputs/00.png"))
    webp = Image.open(io.BytesIO(epub.read("EPUB/images/c003-in00.png")))  # not a core EPUB type: made a PNG
    assert webp.format == "PNG" and webp.size == (24, 24) and webp.getpixel((5, 5))[1] > 150  # green (lossy)


def test_what_the_model_wrote_stays_text(book):
    epub = zipfile.ZipFile(book["path"])
    raw = epub.read("EPUB/chapters/c003.xhtml").decode("utf-8")
    page = ET.fromstring(raw)  # well-formed XML despite the control characters
    text = "".join(page.itertext())
    assert "<script>alert(1)</script>" in text and not page.findall(".//x:script", NS)
    assert "A form feed, a bell and a NUL" in text  # the bell and form feed dropped (markdown-it makes NUL U+FFFD)
    assert not re.search("[\x00-\x08\x0b\x0c\x0e-\x1f]", raw)
    assert not [a for a in page.iterfind(".//x:a", NS) if a.get("href", "").startswith("javascript:")]
    assert "http://example.com" not in raw  # a remote picture is its alt text, fetched from nowhere
    assert "Look at" in text and "tell me <b>why</b>" in text  # the prompt, its picture in place


@pytest.mark.skipif(not (JAVA and EPUBCHECK_JAR), reason="epubcheck is not installed (Debian's package epubcheck; "
                                                         ".ci/run installs it)")
def test_the_book_is_valid_for_epubcheck(book, tmp_path):
    report = tmp_path / "report.json"
    result = subprocess.run([JAVA, "-jar", str(EPUBCHECK_JAR), str(book["path"]), "--json", str(report)],
                            capture_output=True, text=True, timeout=300)
    messages = json.loads(report.read_text())["messages"]
    problems = [f"{m['severity']} {m['ID']}: {m['message']} {[loc.get('path') for loc in m['locations']]}"
                for m in messages if m["severity"] in ("FATAL", "ERROR", "WARNING")]
    assert problems == [] and result.returncode == 0, result.stdout[-2000:]
    checked = json.loads(report.read_text())["publication"]
    assert checked["nSpines"] == 4 and checked["title"] == "job-1"
