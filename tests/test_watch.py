"""What a person can watch while a job runs: the manifest and index growing in prompt order, a progress bar
with a believable rate that keeps its times whole, and `run` saying where to look."""
from __future__ import annotations

import io
import json
import re
import threading
import time
from pathlib import Path

from click.testing import CliRunner
from rich.console import Console

from dreamgen.cli import cli
from dreamgen.generation.generator import Generator
from dreamgen.jobs import output as output_module
from dreamgen.jobs.output import JobOutput, LiveListing
from dreamgen.jobs.progress import DocumentProgress, JobProgress
from dreamgen.jobs.run import run_job
from dreamgen.jobs.spec import JobConfig
from dreamgen.jobs.storage import LocalStorage
from tests.helpers import tiny_model

FAST = {"steps": 1, "max_new_tokens": 8}
LOADED = {"batching": "continuous"}


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class SlowFeed(Generator):
    """The real tiny generator, handed each request `delay_s` late: documents end one by one, over seconds."""

    def __init__(self, delay_s: float):
        super().__init__(tiny_model())
        self.delay_s = delay_s

    def run(self, requests, **kwargs):
        def slow():
            for request in requests:
                time.sleep(self.delay_s)
                yield request
        return super().run(slow(), **kwargs)


def read_ids(job: Path) -> list[str] | None:
    try:
        return [json.loads(line)["id"] for line in (job / "manifest.jsonl").read_text().splitlines()]
    except FileNotFoundError:
        return None


def test_the_manifest_and_index_grow_while_a_job_runs_in_prompt_order(tmp_path, monkeypatch):
    monkeypatch.setattr(output_module, "LIVE_EVERY_S", 0.05)
    n = 8
    ids = [f"doc-{c}" for c in "hgfedcba"]  # file order is not id order: the listing must follow the file
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"topic {i}", "seed": k}) + "\n"
                               for k, i in enumerate(ids)))
    job = tmp_path / "out" / "live"
    seen_ids, seen_pages = [], []
    config = JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="live", defaults=FAST, slots=1)
    runner = threading.Thread(target=run_job, args=(config,), kwargs={"make_generator": lambda c: SlowFeed(0.3)})
    runner.start()
    try:
        while runner.is_alive():  # a person refreshing the files while the job goes on
            listed = read_ids(job)
            if listed is not None and (not seen_ids or listed != seen_ids[-1]):
                seen_ids.append(listed)
                seen_pages.append((job / "index.html").read_text())
            time.sleep(0.02)
    finally:
        runner.join()
    assert json.loads((job / "job.json").read_text())["status"] == "finished"
    assert read_ids(job) == ids  # the end: every document, in prompt order
    partial = [listed for listed in seen_ids if 0 < len(listed) < n]
    assert len(partial) >= 3, seen_ids  # seen growing, not only empty and then whole
    for listed in seen_ids:  # each state read whole and in prompt order: a prefix of the file's ids
        assert listed == ids[:len(listed)], listed
    growing = [page for page in seen_pages if "running: " in page and f"running: 0 of" not in page]
    assert len(growing) >= 3
    for page in growing:  # each page read whole: says how far the job is, lists as many, in prompt order
        done = int(page.split("running: ")[1].split(" of ")[0])
        assert f"running: {done} of {n} done" in page and 'http-equiv="refresh"' in page
        assert [i for i in ids if f'href="{i}/index.html"' in page] == ids[:done]
    final = (job / "index.html").read_text()
    assert "running" not in final and 'http-equiv="refresh"' not in final and final.count('class="card"') == n
    cards = [final.index(f'href="{i}/index.html"') for i in ids]
    assert cards == sorted(cards)  # the index lists documents in prompt order too
    lines = [json.loads(line)["line"] for line in (job / "manifest.jsonl").read_text().splitlines()]
    assert lines == list(range(1, n + 1))


def test_the_live_listing_writes_at_most_once_per_quiet_time(tmp_path, make_doc):
    output = JobOutput(LocalStorage(tmp_path), "j")
    clock = FakeClock()
    live = LiveListing(output, every_s=2.0, clock=clock)
    manifest = tmp_path / "j" / "manifest.jsonl"
    live.flush()
    assert manifest.read_text() == ""  # the files exist from the start
    first = output.save_document(make_doc("b"), line=2)
    live.done(first)
    assert manifest.read_text() == ""  # inside the quiet time: not yet
    clock.now += 1.0
    live.done(output.save_document(make_doc("a"), line=1))
    live.tick()
    assert manifest.read_text() == ""
    clock.now += 1.0
    live.tick()  # the quiet time is over: both, in prompt order
    assert [json.loads(line)["id"] for line in manifest.read_text().splitlines()] == ["a", "b"]
    before = (tmp_path / "j" / "index.html").stat().st_mtime_ns
    clock.now += 5.0
    live.tick()  # nothing new: nothing written
    assert (tmp_path / "j" / "index.html").stat().st_mtime_ns == before
    live.failed(output.record_error("c", None, "Boom", "it broke"))  # due: written at once
    assert json.loads((tmp_path / "j" / "errors.jsonl").read_text())["id"] == "c"
    assert "it broke" in (tmp_path / "j" / "index.html").read_text()


def bar_line(progress: DocumentProgress, width: int) -> str:
    out = io.StringIO()
    Console(file=out, width=width, force_terminal=True, color_system=None).print(
        progress.progress.make_tasks_table(progress.progress.tasks))
    lines = out.getvalue().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def test_the_rate_is_documents_over_the_time_they_took():
    clock = FakeClock()
    run = JobProgress(Console(file=io.StringIO(), width=80), clock=clock)
    run.event("start", {"job_id": "j", "total": 32, "skipped": 0})
    run.event("slots", {"slots": 32, "default": True, "device": "cpu", **LOADED})
    clock.now += 17.0
    for i in range(3):  # three documents finishing within a millisecond, 17 s after the start
        run.event("document", {"id": f"d{i}", "images": 1})
        clock.now += 0.0005
    line = bar_line(run, 80)
    assert "10.6/min" in line, line  # 3 in 17 s, not rich's 3 in 1 ms
    assert "ETA 0:02:44" in line, line  # 29 left at 10.6 a minute


def test_documents_done_before_a_resume_do_not_count_and_loading_is_not_generation():
    clock = FakeClock()
    run = JobProgress(Console(file=io.StringIO(), width=80), clock=clock)
    run.event("start", {"job_id": "j", "total": 100, "skipped": 90})
    assert "/min" not in bar_line(run, 80)  # nothing done in this run yet: no rate, no ETA
    assert "ETA -:--:--" in bar_line(run, 80)
    clock.now += 30.0  # loading the model
    run.event("slots", {"slots": 4, "default": False, "device": "cpu", **LOADED})
    clock.now += 60.0
    run.event("document", {"id": "d", "images": 0})
    assert "1.0/min" in bar_line(run, 80)


def test_the_times_stay_whole_and_the_note_gives_way_on_80_columns():
    for width in (80, 120):
        clock = FakeClock()
        run = JobProgress(Console(file=io.StringIO(), width=width), clock=clock)
        run.event("start", {"job_id": "j", "total": 1000, "skipped": 0})
        clock.now += 3723.0  # past an hour
        for _ in range(1234):
            run.event("image", {})
        run.event("stats", {"tokens_per_s": 12345.0, "busy": 32, "slots": 32})
        for i in range(999):
            run.event("document", {"id": f"d{i}", "images": 1})
        line = bar_line(run, width)
        assert len(line) <= width and "…" not in line, line
        assert "999/1000 docs · 1234 images" in line and "16.1/min" in line and "ETA 0:00:04" in line, line
        assert re.search(r" \d+:\d\d:\d\d ETA", line), line  # the elapsed time, whole
        if width == 80:
            assert "slots" not in line  # the note's last parts went so the times fit
        else:
            assert "1234 images · 12345 tok/s · 32/32 slots" in line, line


def test_run_says_where_to_watch_before_the_model_loads(tmp_path, installed_tiny):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "a", "prompt": "a walk"}) + "\n")
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "out"), "--job-id", "w",
                                      "--model", "tiny-random", "--steps", "1", "--max-new-tokens", "8"])
    assert result.exit_code == 0, result.output
    index = (tmp_path / "out" / "w" / "index.html").resolve().as_uri()
    lines = result.output.splitlines()
    watch = next(i for i, line in enumerate(lines) if "Follow it as documents finish: " in line)
    assert index in lines[watch], result.output
    assert watch < next(i for i, line in enumerate(lines) if "loading model" in line)


class CountingReads(LocalStorage):
    def __init__(self, root):
        super().__init__(root)
        self.reads: list[str] = []

    def read_bytes(self, key):
        self.reads.append(key)
        return super().read_bytes(key)


def test_a_self_contained_live_index_reads_each_thumbnail_once(tmp_path, make_doc):
    storage = CountingReads(tmp_path)
    output = JobOutput(storage, "j")
    output.write_job({"id": "j", "total": 3, "self_contained": True})
    clock = FakeClock()
    live = LiveListing(output, self_contained=True, every_s=1.0, clock=clock)
    for line, doc_id in enumerate(("a", "b", "c"), start=1):
        live.done(output.save_document(make_doc(doc_id), line=line))
        clock.now += 1.0
    page = (tmp_path / "j" / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 6  # two pictures each, embedded
    thumbnails = [key for key in storage.reads if "/images/" in key]
    assert sorted(thumbnails) == sorted(set(thumbnails)) and len(thumbnails) == 6
