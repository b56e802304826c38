"""Whole jobs in one process: storage layout, re-runs, interruption and resume, failures, S3, the command."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from dreamgen.cli import cli
from dreamgen.errors import JobInterrupted, StorageError
from dreamgen.generation.generator import Generator
from dreamgen.jobs.run import run_job
from dreamgen.jobs.spec import JobConfig, stored_config
from tests.helpers import tiny_generator, tiny_model

REPO = Path(__file__).resolve().parent.parent
FAST = {"steps": 2, "max_new_tokens": 30}


def write_jsonl(path: Path, n: int, **extra) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "prompt": f"topic number {i}", "seed": i, **extra}) + "\n"
                            for i in range(n)))
    return path


class CountingGenerator(Generator):
    """The real tiny generator, counting the documents it is asked for."""

    def __init__(self):
        super().__init__(tiny_model())
        self.requests = 0

    def run(self, requests, **kwargs):
        def counted():
            for request in requests:
                self.requests += 1
                yield request
        return super().run(counted(), **kwargs)


def manifest_ids(job_dir: Path) -> list[str]:
    return [json.loads(line)["id"] for line in (job_dir / "manifest.jsonl").read_text().splitlines()]


def test_a_job_writes_the_documented_layout(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", 5)
    summary = run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="j1", defaults=FAST,
                                batch_size=3), make_generator=lambda c: tiny_generator())
    assert (summary.done, summary.failed, summary.total, summary.status) == (5, 0, 5, "finished")
    job = tmp_path / "out" / "j1"
    for name in ("job.json", "manifest.jsonl", "errors.jsonl", "index.html"):
        assert (job / name).is_file(), name
    assert sorted(manifest_ids(job)) == [f"doc-{i}" for i in range(5)]
    for i in range(5):
        doc = json.loads((job / f"doc-{i}" / "document.json").read_text())
        assert doc["job_id"] == "j1" and doc["params"]["seed"] == i and doc["params"]["steps"] == 2
        for block in doc["blocks"]:
            if block["type"] == "image":
                assert (job / f"doc-{i}" / block["path"]).is_file()
        assert (job / f"doc-{i}" / "index.md").is_file() and (job / f"doc-{i}" / "index.html").is_file()
    record = json.loads((job / "job.json").read_text())
    assert record["status"] == "finished" and record["done"] == 5 and record["total"] == 5
    assert summary.location.endswith("/j1/index.html")


def test_running_a_job_again_generates_nothing_twice(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", 4)
    config = dict(prompts=str(prompts), out=str(tmp_path / "out"), job_id="again", defaults=FAST)
    first, second = CountingGenerator(), CountingGenerator()
    run_job(JobConfig(**config), make_generator=lambda c: first)
    summary = run_job(JobConfig(**config), make_generator=lambda c: second)
    assert first.requests == 4 and second.requests == 0
    assert summary.skipped == 4 and summary.done == 4
    assert sorted(manifest_ids(tmp_path / "out" / "again")) == [f"doc-{i}" for i in range(4)]


def test_interrupted_job_resumes_and_produces_each_document_once(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", 7)
    stored = []

    def on_event(kind, info):
        if kind == "document":
            stored.append(info["id"])

    config = JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="stop", defaults=FAST, batch_size=2)
    with pytest.raises(JobInterrupted) as caught:
        run_job(config, on_event=on_event, make_generator=lambda c: tiny_generator(),
                should_stop=lambda: len(stored) >= 3)
    assert caught.value.summary.status == "interrupted"
    assert 3 <= caught.value.summary.done < 7
    job = tmp_path / "out" / "stop"
    assert json.loads((job / "job.json").read_text())["status"] == "interrupted"

    counting = CountingGenerator()
    resumed = stored_config("stop", str(tmp_path / "out"))
    assert resumed.defaults == FAST and resumed.batch_size == 2
    summary = run_job(resumed, make_generator=lambda c: counting)
    assert summary.done == 7 and summary.status == "finished"
    assert counting.requests == 7 - caught.value.summary.done
    ids = manifest_ids(job)
    assert sorted(ids) == [f"doc-{i}" for i in range(7)] and len(ids) == len(set(ids))


def test_a_failing_document_is_recorded_and_the_job_goes_on(tmp_path):
    picture = tmp_path / "cat.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(picture)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "fine", "prompt": "a walk"}) + "\n"
                       + json.dumps({"id": "broken", "prompt": "describe <image>", "images": ["cat.png"]}) + "\n")

    config = JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="f", defaults=FAST)

    def make(c):
        # spoilt after validation, before generation: the header still reads, the pixels do not
        picture.write_bytes(picture.read_bytes()[:-500])
        return tiny_generator()

    summary = run_job(config, make_generator=make)
    assert (summary.done, summary.failed) == (1, 1)
    errors = [json.loads(line) for line in (tmp_path / "out" / "f" / "errors.jsonl").read_text().splitlines()]
    assert errors[0]["id"] == "broken" and "input image" in errors[0]["message"]
    assert manifest_ids(tmp_path / "out" / "f") == ["fine"]


def test_a_job_to_s3_over_http(tmp_path, s3_endpoint, s3_bucket):
    import boto3
    prompts = write_jsonl(tmp_path / "p.jsonl", 3)
    summary = run_job(JobConfig(prompts=str(prompts), out=f"s3://{s3_bucket}/articles", job_id="s3job",
                                defaults=FAST, endpoint_url=s3_endpoint), make_generator=lambda c: tiny_generator())
    assert summary.done == 3
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket)["Contents"]}
    assert {"articles/s3job/job.json", "articles/s3job/manifest.jsonl", "articles/s3job/index.html",
            "articles/s3job/doc-0/document.json", "articles/s3job/doc-2/index.md"} <= keys
    manifest = client.get_object(Bucket=s3_bucket, Key="articles/s3job/manifest.jsonl")["Body"].read().decode()
    assert sorted(json.loads(line)["id"] for line in manifest.splitlines()) == ["doc-0", "doc-1", "doc-2"]


def test_a_missing_bucket_fails_before_anything_is_generated(tmp_path, s3_endpoint):
    prompts = write_jsonl(tmp_path / "p.jsonl", 2)
    counting = CountingGenerator()
    with pytest.raises(StorageError, match="no-such-bucket-here"):
        run_job(JobConfig(prompts=str(prompts), out="s3://no-such-bucket-here/x", endpoint_url=s3_endpoint,
                          defaults=FAST), make_generator=lambda c: counting)
    assert counting.requests == 0


def test_dreamgen_run_on_the_readme_example_from_a_clean_directory(tmp_path, installed_tiny, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["run", str(REPO / "examples" / "prompts.jsonl"), "--out", "out",
                                      "--job-id", "readme", "--steps", "2", "--max-new-tokens", "30"])
    assert result.exit_code == 0, result.output
    assert "Job readme: 4 done, 0 failed, 4 in the file" in result.output
    assert f"Open: file://{tmp_path}/out/readme/index.html" in result.output
    assert len(manifest_ids(tmp_path / "out" / "readme")) == 4


def test_a_bad_prompt_file_is_rejected_whole_and_nothing_is_written(tmp_path):
    prompts = tmp_path / "bad.jsonl"
    prompts.write_text('{"prompt": "fine"}\n{"prompt": "bad", "steps": "ten"}\n{"prompt": "no end"\n')
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert f"Error: {prompts}: 2 problems:\n{prompts}:2: field 'steps':" in result.output
    assert f"\n{prompts}:3: invalid JSON:" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_a_model_that_cannot_load_leaves_no_job_behind(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", 2)
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "out"), "--job-id", "typo",
                                      "--model", str(tmp_path / "no-such-model")])
    assert result.exit_code == 1
    assert f"Error: no checkpoint directory at {tmp_path / 'no-such-model'}" in result.output
    assert not (tmp_path / "out" / "typo").exists()


def test_ctrl_c_stops_cleanly_and_resume_finishes(tmp_path, installed_tiny):
    # 40 documents: the shipped model writes a short one in about 0.1 s, and 8 could all be done before the
    # signal lands
    count = 40
    prompts = write_jsonl(tmp_path / "p.jsonl", count)
    dreamgen = Path(sys.executable).parent / "dreamgen"
    out = tmp_path / "out"
    args = [str(dreamgen), "run", str(prompts), "--out", str(out), "--job-id", "ctrlc", "--batch-size", "1",
            "--steps", "12", "--max-new-tokens", "30"]
    # SIGINT at its default in the child: an ignored disposition is inherited across exec and Python keeps it
    # (a suite started in the background by a non-interactive shell ignores SIGINT: the run then finished, exit 0)
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "COLUMNS": "120"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    done_dir = out / "ctrlc" / "_done"
    deadline = time.monotonic() + 120
    # a finished marker, not the temp file it is written through (.tmp-doc-0.json.<hex>: a signal then finds
    # nothing done)
    while not (done_dir.exists() and any(p.suffix == ".json" for p in done_dir.iterdir())):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[0]
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    output = process.communicate(timeout=60)[0]
    assert process.returncode == 130, output
    assert "Resume with: dreamgen run --resume ctrlc" in output
    assert "Traceback" not in output
    partial = manifest_ids(out / "ctrlc")
    assert 1 <= len(partial) < count

    resumed = subprocess.run([str(dreamgen), "run", "--resume", "ctrlc", "--out", str(out)], capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    ids = manifest_ids(out / "ctrlc")
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(count)) and len(set(ids)) == count
    assert f"({len(partial)} already done before)" in resumed.stdout


def test_dreamgen_export_re_renders_a_stored_job(tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", 2)
    run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="ex", defaults=FAST, formats="md"),
            make_generator=lambda c: tiny_generator())
    job = tmp_path / "out" / "ex"
    assert not (job / "doc-0" / "index.html").exists()
    result = CliRunner().invoke(cli, ["export", str(job), "--format", "html", "--self-contained"])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == ["Exported 2 documents of ex (html).", f"Open: file://{job}/index.html"]
    page = (job / "doc-0" / "index.html").read_text()
    doc = json.loads((job / "doc-0" / "document.json").read_text())
    assert page.count("data:image/png;base64,") == sum(b["type"] == "image" for b in doc["blocks"])
