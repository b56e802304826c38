"""Parse and validate a 100,000-line JSONL prompt file: time and peak memory.

Targets (issue 3): under 5 s and under 200 MB peak RSS. Run: .venv/bin/python bench/prompt_parsing.py
"""
from __future__ import annotations

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dreamgen.prompts.files import iter_prompt_file, validate_prompt_file  # noqa: E402

LINES = 100_000


def write_prompt_file(path: Path, lines: int) -> None:
    """Realistic lines: an id on some, a few parameters, a prompt of a sentence or two."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(lines):
            item = {"prompt": f"An illustrated guide to topic number {i}: its history, how it works, and why "
                              "people care about it today.", "seed": i, "steps": 30 + i % 20,
                    "guidance": 5 + (i % 7) / 2, "max_images": 1 + i % 4}
            if i % 3 == 0:
                item["id"] = f"doc-{i:06d}"
            if i % 5 == 0:
                item["template"] = "article"
            f.write(json.dumps(item) + "\n")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "prompts.jsonl"
        write_prompt_file(path, LINES)
        size_mb = path.stat().st_size / 1e6
        rss_before = peak_rss_mb()

        start = time.perf_counter()
        count = validate_prompt_file(path, {"max_new_tokens": 512}, "dreamllm-7b")
        validate_s = time.perf_counter() - start

        start = time.perf_counter()
        streamed = sum(1 for _ in iter_prompt_file(path, {"max_new_tokens": 512}, "dreamllm-7b"))
        iterate_s = time.perf_counter() - start
        assert count == streamed == LINES, (count, streamed)

    peak = peak_rss_mb()
    print(f"file:      {LINES:,} lines, {size_mb:.1f} MB")
    print(f"validate:  {validate_s:.2f} s ({LINES / validate_s:,.0f} lines/s)   target < 5 s")
    print(f"iterate:   {iterate_s:.2f} s")
    print(f"peak RSS:  {peak:.0f} MB (after imports: {rss_before:.0f} MB)   target < 200 MB")


if __name__ == "__main__":
    main()
