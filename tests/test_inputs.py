"""Pictures given in a prompt's `images`: recorded (name, size, sha256) in document.json and the PNG chunks,
copied beside the document, and shown on its pages where the prompt placed them; alt text that names a picture."""
from __future__ import annotations

import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path

from markdown_it import MarkdownIt
from PIL import Image

from dreamgen.document import Document, ImageBlock, TextBlock
from dreamgen.jobs.hugo import export_hugo
from dreamgen.jobs.output import JobOutput, export_job
from dreamgen.jobs.png import read_png_parameters
from dreamgen.jobs.run import generate_document, run_job
from dreamgen.jobs.spec import JobConfig
from dreamgen.jobs.storage import LocalStorage
from dreamgen.params import GenerationParams
from dreamgen.exporters.text import image_alt_texts
from tests.helpers import tiny_generator

FAST = {"steps": 1, "max_new_tokens": 40, "seed": 3}


class Page(HTMLParser):
    """The page's start tags and text, in document order."""

    def __init__(self, text: str):
        super().__init__()
        self.events, self.stack = [], []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.events.append((tag, dict(attrs)))

    def handle_data(self, data):
        if data.strip():
            self.events.append(("text", data.strip()))

    def inside_prompt(self) -> list:
        """The events inside <details class="prompt"> up to its parameters."""
        start = next(i for i, (tag, attrs) in enumerate(self.events) if tag == "details")
        end = next(i for i, (tag, _) in enumerate(self.events) if tag == "dl" and i > start)
        return self.events[start:end]


def pictures(tmp_path: Path) -> tuple[Path, Path]:
    red = tmp_path / "pics" / "red square.png"
    red.parent.mkdir()
    Image.new("RGB", (40, 32), (220, 30, 30)).save(red)
    blue = tmp_path / "pics" / "blue.jpg"
    Image.new("RGB", (24, 24), (30, 30, 220)).save(blue, quality=90)
    return red, blue


def test_a_jobs_input_pictures_are_recorded_copied_and_shown_where_the_prompt_put_them(tmp_path):
    red, blue = pictures(tmp_path)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "compare", "prompt": "Compare <image> with <image> please",
                                   "images": ["pics/red square.png", "pics/blue.jpg"], "max_images": 1}) + "\n")
    summary = run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="j", defaults=FAST),
                      make_generator=lambda c: tiny_generator())
    assert (summary.done, summary.failed) == (1, 0)
    folder = tmp_path / "out" / "j" / "compare"

    # document.json: name, size, sha256 (and where the copy is), in the prompt's order
    record = json.loads((folder / "document.json").read_text())
    expected = [{"index": 0, "name": "red square.png", "size": red.stat().st_size, "width": 40, "height": 32,
                 "sha256": hashlib.sha256(red.read_bytes()).hexdigest(), "path": "inputs/00.png"},
                {"index": 1, "name": "blue.jpg", "size": blue.stat().st_size, "width": 24, "height": 24,
                 "sha256": hashlib.sha256(blue.read_bytes()).hexdigest(), "path": "inputs/01.jpg"}]
    assert record["input_images"] == expected
    # the copies are the files as given, byte for byte
    assert (folder / "inputs" / "00.png").read_bytes() == red.read_bytes()
    assert (folder / "inputs" / "01.jpg").read_bytes() == blue.read_bytes()
    # a picture the document painted carries them in its chunks, so it reproduces its run
    painted = [b for b in record["blocks"] if b["type"] == "image"]
    assert painted, "the tiny model was asked for a picture"
    chunk = read_png_parameters((folder / painted[0]["path"]).read_bytes())
    assert chunk["input_images"] == expected

    # the page: text, the red picture, text, the blue picture, as the prompt placed them
    prompt = Page((folder / "index.html").read_text()).inside_prompt()
    assert prompt[0] == ("details", {"class": "prompt", "open": None})  # shown, not folded away
    shown = [(tag, attrs.get("src") if tag == "img" else attrs) for tag, attrs in prompt
             if tag == "img" or (tag == "text" and attrs != "Prompt and parameters" and "·" not in attrs)]
    assert shown == [("text", "Compare"), ("img", "inputs/00.png"), ("text", "with"), ("img", "inputs/01.jpg"),
                     ("text", "please")]
    images = [attrs for tag, attrs in prompt if tag == "img"]
    assert images[0]["alt"] == "Input picture 1: red square.png" and images[1]["alt"] == "Input picture 2: blue.jpg"
    assert "Input picture 1 · red square.png · 40×32" in [attrs for tag, attrs in prompt if tag == "text"]

    # the Markdown: the prompt quoted, the pictures in it, each resolving to its copy
    body = (folder / "index.md").read_text().split("---\n", 2)[2]
    tokens = MarkdownIt("commonmark").parse(body)
    quote = tokens[:next(i for i, t in enumerate(tokens) if t.type == "blockquote_close")]
    linked = [c.attrs["src"] for t in quote for c in (t.children or []) if c.type == "image"]
    assert linked == ["inputs/00.png", "inputs/01.jpg"] and all((folder / src).is_file() for src in linked)
    assert body.index("Compare") < body.index("inputs/00.png") < body.index("with") < body.index("inputs/01.jpg")

    # re-exporting from document.json alone, self-contained: the pictures embedded with their own media types
    export_job(LocalStorage(tmp_path / "out"), "j", "html", self_contained=True)
    embedded = [a["src"] for t, a in Page((folder / "index.html").read_text()).inside_prompt() if t == "img"]
    assert embedded[0].startswith("data:image/png;base64,") and embedded[1].startswith("data:image/jpeg;base64,")

    # a Hugo section carries them too
    site = LocalStorage(tmp_path / "site")
    export_hugo(JobOutput(LocalStorage(tmp_path / "out"), "j"), site)
    assert (tmp_path / "site" / "j" / "compare" / "inputs" / "01.jpg").read_bytes() == blue.read_bytes()


def test_generate_puts_pictures_without_a_placeholder_before_the_prompt(tmp_path):
    red, _ = pictures(tmp_path)
    params = GenerationParams(steps=1, max_new_tokens=16, seed=1)
    doc, folder = generate_document(tiny_generator(), "describe this picture", params, str(tmp_path / "doc"),
                                    "tiny-random", images=[str(red)])
    assert [i.name for i in doc.input_images] == ["red square.png"]
    stored = json.loads((tmp_path / "doc" / "document.json").read_text())["input_images"]
    assert stored[0]["sha256"] == hashlib.sha256(red.read_bytes()).hexdigest()
    assert (tmp_path / "doc" / "inputs" / "00.png").read_bytes() == red.read_bytes()
    prompt = Page((tmp_path / "doc" / "index.html").read_text()).inside_prompt()
    order = [tag if tag == "img" else attrs for tag, attrs in prompt if tag in ("img", "text")]
    assert order.index("img") < order.index("describe this picture")

    # the same folder reused for a document without pictures: the old copy goes
    generate_document(tiny_generator(), "a river", params, str(tmp_path / "doc"), "tiny-random")
    assert not (tmp_path / "doc" / "inputs" / "00.png").exists()
    assert "<details class=\"prompt\">" in (tmp_path / "doc" / "index.html").read_text()  # folded: nothing to show


def test_alt_text_names_the_picture_and_does_not_repeat_the_paragraph():
    paragraph = "Once upon a time, there was a blue square. It lived at the bottom on a white background."
    doc = Document(id="d", prompt="Write about shapes", model="m", params={}, blocks=[
        TextBlock("# Two shapes\n\n" + paragraph), ImageBlock(index=0, width=8, height=8, seed=0),
        TextBlock("## The triangle\n\nA yellow triangle was large."), ImageBlock(index=1, width=8, height=8, seed=1),
        ImageBlock(index=2, width=8, height=8, seed=2)])
    alts = image_alt_texts(doc)
    assert alts == {0: "Picture 1: Two shapes", 1: "Picture 2: The triangle", 2: "Picture 3: The triangle"}
    untitled = Document(id="d", prompt="Write about a walk in the park", model="m", params={},
                        blocks=[TextBlock(paragraph), ImageBlock(index=0, width=8, height=8, seed=0)])
    assert image_alt_texts(untitled) == {0: "Picture 1: Write about a walk in the park"}
