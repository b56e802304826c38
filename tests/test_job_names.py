"""Names and ends of jobs (issue 33): a document id that is a job file's name, a job whose own files could not be
written, `..` in an S3 prefix, a job whose every document failed."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from dreamgen.cli import cli, print_summary
from dreamgen.errors import JobFailed, PromptFileError, StorageError
from dreamgen.ids import JOB_FILES
from dreamgen.jobs.run import run_job
from dreamgen.jobs.spec import JobConfig
from dreamgen.jobs.storage import open_storage
from dreamgen.prompts.files import validate_prompt_file
from tests.helpers import tiny_generator

FAST = {"steps": 2, "max_new_tokens": 20}
REDIS = "redis://127.0.0.1:6379/13"


def write_prompts(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_a_document_id_that_is_a_job_file_name_is_rejected_at_validation(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "results.jsonl", "prompt": "a"},
                                                   {"custom_id": "Job.JSON", "prompt": "b"},
                                                   {"id": "fine", "prompt": "c"},
                                                   {"id": "index.html", "prompt": "d"}])
    with pytest.raises(PromptFileError) as caught:
        validate_prompt_file(prompts, {}, "tiny-random")
    problems = {p.line: p for p in caught.value.problems}
    assert sorted(problems) == [1, 2, 4]
    assert problems[1].field == "id" and problems[2].field == "custom_id"
    assert "'results.jsonl' is the name of a file of the job folder" in str(problems[1])
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "out"), "--results", "openai"])
    assert result.exit_code == 1 and "p.jsonl:1: field 'id': 'results.jsonl' is the name" in result.output
    assert not (tmp_path / "out").exists()


def test_job_files_names_every_file_a_job_folder_holds(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "a"}])
    run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="j", defaults=FAST, results="openai"),
            make_generator=lambda c: tiny_generator())
    files = {p.name for p in (tmp_path / "out" / "j").iterdir() if p.is_file()}
    assert files == set(JOB_FILES)


def test_a_job_whose_own_files_cannot_be_written_is_not_finished(tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}])
    # results.jsonl is written once, at the end (the index and manifest are written live, as documents end):
    # it cannot be written where a folder stands
    blocked = tmp_path / "out" / "j" / "results.jsonl"
    blocked.mkdir(parents=True)
    with pytest.raises(JobFailed) as caught:
        run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="j", defaults=FAST,
                          results="openai"), make_generator=lambda c: tiny_generator())
    summary = caught.value.summary
    assert summary.status == "failed" and summary.done == 2
    assert f"the job's own files could not be written: cannot write {blocked}: Is a directory" == summary.error
    record = json.loads((tmp_path / "out" / "j" / "job.json").read_text())
    assert record["status"] == "failed" and record["error"] == summary.error


def test_dot_dot_in_an_s3_prefix_is_refused(tmp_path):
    for url in ("s3://bucket/../victim", "s3://bucket/a/../../victim", "s3://bucket/a/./b", "s3://bucket/a\\..\\b"):
        with pytest.raises(StorageError, match=r"'\.', '\.\.' and backslashes are not allowed in an S3 prefix"):
            open_storage(url, "http://127.0.0.1:9")
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a"}])
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", "s3://bucket/../victim"])
    assert result.exit_code == 1
    assert result.output == ("Error: s3://bucket/../victim: '.', '..' and backslashes are not allowed in an S3 "
                             "prefix\n")


def _spoiling(pictures: list[Path]):
    def make(config):  # after validation: the documents that read these pictures fail
        for picture in pictures:
            picture.write_text("no longer a picture")
        return tiny_generator()
    return make


def test_a_job_whose_every_document_failed_is_failed_with_grouped_errors_and_prompts(tmp_path, capsys):
    cat, dog = tmp_path / "cat.png", tmp_path / "dog.png"
    for picture in (cat, dog):
        Image.new("RGB", (32, 32), (9, 9, 9)).save(picture)
    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"id": "c1", "prompt": "the cat <image>", "images": ["cat.png"]},
        {"id": "c2", "prompt": "the cat again <image>", "images": ["cat.png"]},
        {"id": "d1", "prompt": "the dog <image>", "images": ["dog.png"]},
        {"id": "c3", "prompt": "the cat once more <image>", "images": ["cat.png"]}])
    with pytest.raises(JobFailed) as caught:
        run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="j", defaults=FAST),
                make_generator=_spoiling([cat, dog]))
    summary = caught.value.summary
    assert (summary.status, summary.done, summary.failed, summary.error) == ("failed", 0, 4,
                                                                             "every document failed (4)")
    assert json.loads((tmp_path / "out" / "j" / "job.json").read_text())["status"] == "failed"
    print_summary(summary)
    lines = capsys.readouterr().out.splitlines()
    assert lines[2:] == ["Failures, by error:",
                         f"  3 x InputImageError: input image {cat} is not an image file (no format Pillow reads)",
                         '      c1: "the cat <image>"', '      c2: "the cat again <image>"',
                         '      c3: "the cat once more <image>"',
                         f"  1 x InputImageError: input image {dog} is not an image file (no format Pillow reads)",
                         '      d1: "the dog <image>"']
    errors = [json.loads(line) for line in (tmp_path / "out" / "j" / "errors.jsonl").read_text().splitlines()]
    assert {e["id"]: e["prompt"] for e in errors}["d1"] == "the dog <image>"


def test_a_job_with_one_document_done_is_finished(tmp_path):
    cat = tmp_path / "cat.png"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(cat)
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "c1", "prompt": "the cat <image>", "images": ["cat.png"]},
                                                   {"id": "ok", "prompt": "a walk"}])
    summary = run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="j", defaults=FAST),
                      make_generator=_spoiling([cat]))
    assert (summary.status, summary.done, summary.failed, summary.failures) == ("finished", 1, 1, [])


def test_a_distributed_job_whose_every_document_failed_is_failed(tmp_path, monkeypatch):
    from dreamgen.distributed import broker
    from dreamgen.distributed.chunks import JobWire
    from dreamgen.distributed.records import JobRecord
    from dreamgen.distributed.submit import finalize_job
    from dreamgen.jobs.output import JobOutput

    monkeypatch.setenv("DREAMGEN_REDIS_PREFIX", f"test-names-{uuid.uuid4().hex[:8]}")
    try:
        client = broker.connect(REDIS)
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no Redis at {REDIS}: {e}")
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "a"}, {"id": "b", "prompt": "b"}])
    config = JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="dj")
    record = JobRecord(client, "dj")
    rnd = record.start_round({"out": config.out, "total": 2})
    output = JobOutput(open_storage(config.out), "dj")
    output.write_job(config.record(status="running"))
    for doc_id in ("a", "b"):
        output.record_error(doc_id, None, "RuntimeError", "boom", prompt=doc_id)
        record.document_failed(doc_id, "RuntimeError: boom")
    try:
        result = finalize_job(JobWire(config, rnd), client)
        assert result["status"] == "failed" and result["error"] == "every document failed (2)"
        assert json.loads((tmp_path / "out" / "dj" / "job.json").read_text())["status"] == "failed"
        assert record.read()["status"] == "failed"
    finally:
        for key in client.scan_iter(f"{record.key.split(':')[0]}*"):
            client.delete(key)


@pytest.mark.parametrize("given", ["/", "//", ""])
def test_export_of_the_root_is_refused_not_the_working_folder(tmp_path, monkeypatch, given):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job.json").write_text("{}")  # a working folder that looks like a job
    result = CliRunner().invoke(cli, ["export", given])
    assert result.exit_code == 1
    assert result.output == f"Error: {given!r} is not a job folder: give OUT/JOB or s3://bucket/prefix/JOB\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.json"]


def test_an_unclosed_csv_quote_is_reported_on_the_line_where_it_opens(tmp_path):
    prompts = tmp_path / "p.csv"
    prompts.write_text('id,prompt\na,"an unclosed quote\n' + "more text\n" * 70000)
    with pytest.raises(PromptFileError) as caught:
        validate_prompt_file(prompts, {}, "tiny-random")
    assert caught.value.line == 2
    assert "in the record that starts here: is a quote left open?" in str(caught.value)


def test_an_unreadable_picture_is_said_to_be_unreadable(tmp_path):
    import os

    if os.geteuid() == 0:
        pytest.skip("root reads any file: run as another user to see a permission error")
    picture = tmp_path / "cat.png"
    Image.new("RGB", (8, 8)).save(picture)
    picture.chmod(0)
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "a <image>", "images": ["cat.png"]}])
    with pytest.raises(PromptFileError, match=rf"input image {picture} cannot be read: Permission denied"):
        validate_prompt_file(prompts, {}, "tiny-random")
