"""Storing and exporting one document (4 images, md + html) on a local directory: milliseconds per document.

The issue's target is this overhead under 10% of generation time; divide by the per-document time that
bench/generation.py prints for the same image size. Run: .venv/bin/python bench/storage_export.py [SIZE]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from dreamgen.document import Document, ImageBlock, TextBlock  # noqa: E402
from dreamgen.jobs.output import JobOutput  # noqa: E402
from dreamgen.jobs.storage import LocalStorage  # noqa: E402
from dreamgen.params import GenerationParams  # noqa: E402

DOCUMENTS = 50
IMAGES = 4


def make_document(index: int, size: int, rng: np.random.Generator) -> Document:
    blocks = []
    for i in range(IMAGES):
        blocks.append(TextBlock(f"## Part {i}\n\n" + "Some generated prose about the subject. " * 20))
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)  # noise: the worst case for PNG
        blocks.append(ImageBlock(index=i, width=size, height=size, seed=i, image=Image.fromarray(pixels)))
    return Document(id=f"doc-{index:04d}", prompt="An illustrated article", model="tiny",
                    params=GenerationParams(seed=index).to_dict(), blocks=blocks)


def main() -> None:
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 64
    rng = np.random.default_rng(0)
    docs = [make_document(i, size, rng) for i in range(DOCUMENTS)]
    with tempfile.TemporaryDirectory() as folder:
        job = JobOutput(LocalStorage(folder), "job-bench")
        start = time.perf_counter()
        for doc in docs:
            job.save_document(doc)
        save_s = time.perf_counter() - start
        start = time.perf_counter()
        job.finalize()
        finalize_s = time.perf_counter() - start
    print(f"{DOCUMENTS} documents x {IMAGES} images of {size}x{size}, md + html, local directory")
    print(f"save_document: {1000 * save_s / DOCUMENTS:.1f} ms per document")
    print(f"finalize:      {1000 * finalize_s:.1f} ms for the job")


if __name__ == "__main__":
    main()
