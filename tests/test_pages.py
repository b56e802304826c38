"""The HTML pages as their real consumers see them: the Nu HTML checker (vnu) and headless Chromium's pixels."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamgen.document import Document, ImageBlock, InputImage, TextBlock
from dreamgen.jobs.output import DocumentFolder, JobOutput, export_job
from dreamgen.jobs.storage import LocalStorage
from dreamgen.params import GenerationParams

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
JAVA = shutil.which("java")
VNU_JAR = ROOT / ".cache" / "node" / "node_modules" / "vnu-jar" / "build" / "dist" / "vnu.jar"  # .ci/run puts it there
# Without the background-networking flags Chromium keeps dialling out, which this machine's closed network refuses.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1",
                  "--virtual-time-budget=10000"]  # take the shot once the pictures are loaded, however busy the machine
RED, BLUE, GREEN = (230, 20, 20), (20, 40, 230), (20, 170, 40)
WIDTH = 1200  # a laptop's window


def checkerboard(size: int, cell: int = 8) -> Image.Image:
    """Two colours in squares: scaled up smoothly it turns into blends, scaled up pixelated it stays two colours."""
    image = Image.new("RGB", (size, size))
    image.putdata([RED if (x // cell + y // cell) % 2 else BLUE for y in range(size) for x in range(size)])
    return image


def shapes_document(doc_id: str, images: list[Image.Image],
                    prompt: str = "Write about a red and blue board") -> Document:
    blocks = [TextBlock("Once upon a time, there was a board. It was red and blue.")]
    for index, image in enumerate(images):
        blocks += [ImageBlock(index=index, width=image.width, height=image.height, seed=index, image=image),
                   TextBlock("It was a happy board. The end.")]
    return Document(id=doc_id, prompt=prompt, model="shapes", params=GenerationParams(seed=1).to_dict(), blocks=blocks)


@pytest.fixture
def job(tmp_path) -> JobOutput:
    job = JobOutput(LocalStorage(tmp_path / "out"), "job-1")
    job.write_job({"id": "job-1", "model": "shapes", "self_contained": False})
    job.save_document(shapes_document("small", [checkerboard(64)]))
    job.save_document(shapes_document("large", [Image.new("RGB", (1024, 256), GREEN)], prompt="A wide red band"))
    job.finalize()
    return job


class Tags(HTMLParser):
    def __init__(self, text: str):
        super().__init__()
        self.found = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, dict(attrs)))

    def __call__(self, name):
        return [attrs for tag, attrs in self.found if tag == name]


# ------------------------------------------------------------------------------------- the Nu HTML checker

@pytest.mark.skipif(not (JAVA and VNU_JAR.is_file()), reason="the Nu checker needs java and npm's vnu-jar "
                                                             "(.ci/run installs both)")
def test_every_page_is_valid_html_for_the_nu_checker(job, tmp_path):
    export_job(job.storage, "job-1", "html", self_contained=True)
    (tmp_path / "self-contained").mkdir()
    for name in ("small/index.html", "index.html"):
        shutil.copy(tmp_path / "out/job-1" / name, tmp_path / "self-contained" / name.replace("/", "-"))
    export_job(job.storage, "job-1", "html")
    DocumentFolder(LocalStorage(tmp_path / "alone")).save(shapes_document("alone", [checkerboard(64)]))
    # a document whose prompt gave a picture (shown in the prompt), and a running job's index (it reloads itself)
    given = shapes_document("given", [checkerboard(64)], prompt="Draw <image> again")
    data = (tmp_path / "out/job-1/small/images/00.png").read_bytes()
    given.input_images = [InputImage(index=0, name="board.png", size=len(data), width=64, height=64,
                                     sha256="0" * 64, path="inputs/00.png", data=data)]
    DocumentFolder(LocalStorage(tmp_path / "given")).save(given)
    running = JobOutput(LocalStorage(tmp_path / "running"), "job-2")
    running.write_job({"id": "job-2", "model": "shapes", "total": 5, "status": "running"})
    running.write_listing(job.manifest(), [], ("html",), running.read_job(), False, live=True)
    pages = sorted(str(p) for p in tmp_path.rglob("*.html"))
    assert len(pages) == 8
    result = subprocess.run([JAVA, "-jar", str(VNU_JAR), "--format", "json", "--also-check-css", *pages],
                            capture_output=True, text=True, timeout=120)
    messages = json.loads(result.stderr)["messages"]
    # vnu checks a meta CSP against relative image URLs without resolving them, and reports every picture as
    # blocked; Chromium, which does resolve them, shows them under the same policy (the screenshot tests below).
    problems = [f"{Path(m.get('url', '')).name}:{m.get('lastLine')}: {m['type']}: {m['message']}"
                for m in messages if (m["type"] == "error" or m.get("subType") == "warning")
                and not m["message"].startswith("Resource violates Content Security Policy (meta tag): image")]
    assert problems == [] and result.returncode == 0


# ------------------------------------------------------------------------------------- headless Chromium

def screenshot(page: Path, out: Path, height: int = 1600) -> Image.Image:
    with tempfile.TemporaryDirectory() as profile:
        result = subprocess.run([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                 f"--window-size={WIDTH},{height}", f"--screenshot={out}", page.as_uri()],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and out.is_file(), result.stderr[-2000:]
    return Image.open(out).convert("RGB")


def painted(shot: Image.Image, colours, tolerance: int = 40) -> tuple[tuple[int, int, int, int] | None, set]:
    """The box of the pixels near one of `colours`, and every colour inside that box."""
    pixels = np.asarray(shot, dtype=np.int16)
    near = np.zeros(pixels.shape[:2], dtype=bool)
    for colour in colours:
        near |= np.abs(pixels - np.array(colour)).sum(axis=2) < tolerance
    ys, xs = np.nonzero(near)
    if not len(xs):
        return None, set()
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    inside = pixels[box[1] + 2:box[3] - 2, box[0] + 2:box[2] - 2].reshape(-1, 3)  # rounded corners aside
    return box, {tuple(int(v) for v in c) for c in np.unique(inside, axis=0)}


chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (.ci/run installs "
                                                       "Debian's chromium)")


@chromium
def test_small_pictures_are_shown_scaled_up_and_crisp_large_ones_within_the_column(job, tmp_path):
    small = screenshot(job.storage.root / "job-1/small/index.html", tmp_path / "small.png")
    box, colours = painted(small, (RED, BLUE))
    assert box is not None
    width, height = box[2] - box[0], box[3] - box[1]
    assert (width, height) == (320, 320)  # 64 px shown 5x: a picture one can see, not a 64 px stamp
    assert len(colours) <= 4, f"{len(colours)} colours: scaled up smoothly, not pixelated"  # two colours, sharp

    large = screenshot(job.storage.root / "job-1/large/index.html", tmp_path / "large.png")
    box, _ = painted(large, (GREEN,))
    column = Tags((job.storage.root / "job-1/large/index.html").read_text())("img")[0]
    assert column["width"] == "1024" and "class" not in column  # shown at its own size, at most the column
    assert 500 <= box[2] - box[0] <= 760 and (box[2] - box[0]) / (box[3] - box[1]) == pytest.approx(4, rel=0.02)


@chromium
def test_the_index_shows_thumbnails_crisp_and_self_contained_ones_need_no_files(job, tmp_path):
    export_job(job.storage, "job-1", "html", self_contained=True)
    index = job.storage.root / "job-1/index.html"
    sources = [img["src"] for img in Tags(index.read_text())("img")]
    assert len(sources) == 2 and all(src.startswith("data:image/png;base64,") for src in sources)
    alone = tmp_path / "elsewhere" / "index.html"  # the page alone, far from the pictures' files
    alone.parent.mkdir()
    shutil.copy(index, alone)
    shot = screenshot(alone, tmp_path / "index.png", height=900)
    box, colours = painted(shot, (RED, BLUE))
    assert box is not None and box[2] - box[0] >= 100  # thumbnails big enough to see, drawn from the page alone
    assert len(colours - {(252, 252, 250), (255, 255, 255)}) <= 6  # the checkerboard's two colours, no blends
    page = index.read_text()
    assert page.count(">Write about a red and blue board<") == 1  # the card's title is the prompt: shown once
    assert "A wide red band" in page
