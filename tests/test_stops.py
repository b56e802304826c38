"""Jobs that stop say so: storage that gives out (S3 past its retries, a full disk) ends the job as "failed" in
job.json with the manifest of what is done and a resume hint; transient S3 faults are retried; symlinks never carry
a job's files out of its output folder."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from dreamgen.errors import JobFailed, StorageError
from dreamgen.jobs import storage as storage_module
from dreamgen.jobs.run import run_job
from dreamgen.jobs.spec import JobConfig, stored_config
from dreamgen.jobs.storage import LocalStorage
from tests.helpers import tiny_generator
from tests.s3_faults import faulty_s3

FAST = {"steps": 2, "max_new_tokens": 24, "max_images": 1}


def write_prompts(path: Path, n: int) -> Path:
    path.write_text("".join(json.dumps({"id": f"doc-{i}", "prompt": f"topic number {i}", "seed": i}) + "\n"
                            for i in range(n)))
    return path


def s3_text(client, bucket: str, key: str) -> str:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()


def s3_manifest_ids(client, bucket: str, key: str) -> list[str]:
    return [json.loads(line)["id"] for line in s3_text(client, bucket, key).splitlines()]


# ------------------------------------------------------------------------------------- S3 faults

def test_a_55_percent_s3_fault_rate_loses_and_doubles_nothing(tmp_path, s3_endpoint, s3_bucket, monkeypatch):
    import boto3

    monkeypatch.setattr(storage_module, "BACKOFF_FIRST_S", 0.005)  # the same backoff, scaled down for the test
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    with faulty_s3(s3_endpoint, rate=0.55, seed=16) as proxy:
        summary = run_job(JobConfig(prompts=str(prompts), out=f"s3://{s3_bucket}/a", job_id="faults", defaults=FAST,
                                    endpoint_url=proxy.url), make_generator=lambda c: tiny_generator())
    assert (summary.status, summary.done, summary.failed) == ("finished", 3, 0)
    assert proxy.faults > 20 and proxy.faults / proxy.requests > 0.45  # the faults did happen, over HTTP
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    assert sorted(s3_manifest_ids(client, s3_bucket, "a/faults/manifest.jsonl")) == ["doc-0", "doc-1", "doc-2"]
    assert json.loads(s3_text(client, s3_bucket, "a/faults/job.json"))["status"] == "finished"


def test_a_job_whose_s3_gives_out_stops_says_so_and_resumes(tmp_path, s3_endpoint, s3_bucket, monkeypatch):
    import boto3

    monkeypatch.setenv("DREAMGEN_S3_RETRY_S", "0.5")
    monkeypatch.setattr(storage_module, "BACKOFF_FIRST_S", 0.01)
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    image_puts = []

    def third_picture_on(method: str, path: str) -> bool:  # pictures stop being stored after the second
        if method == "PUT" and "/images/" in path:
            image_puts.append(path)
            return len(image_puts) > 2
        return False

    with faulty_s3(s3_endpoint, rate=1.0, rule=third_picture_on) as proxy:
        config = JobConfig(prompts=str(prompts), out=f"s3://{s3_bucket}/a", job_id="gives-out", defaults=FAST,
                           endpoint_url=proxy.url, batch_size=1)
        with pytest.raises(JobFailed) as caught:
            run_job(config, make_generator=lambda c: tiny_generator())
        failed = caught.value
        assert failed.recorded and failed.summary.status == "failed" and 1 <= failed.summary.done < 4
        assert "SlowDown" in failed.reason and "s3://" in failed.reason

        client = boto3.client("s3", endpoint_url=s3_endpoint)
        record = json.loads(s3_text(client, s3_bucket, "a/gives-out/job.json"))
        assert record["status"] == "failed" and "SlowDown" in record["error"]
        done = s3_manifest_ids(client, s3_bucket, "a/gives-out/manifest.jsonl")
        assert len(done) == failed.summary.done
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="a/gives-out/")["Contents"]]
        folders = {k.split("/")[2] for k in keys if k.count("/") >= 3 and not k.split("/")[2].startswith("_")}
        assert folders == set(done)  # the document that could not be stored left nothing half-written

        proxy.rate = 0.0  # the storage is back
        summary = run_job(stored_config("gives-out", f"s3://{s3_bucket}/a", proxy.url),
                          make_generator=lambda c: tiny_generator())
    assert (summary.status, summary.done, summary.skipped) == ("finished", 4, len(done))
    ids = s3_manifest_ids(client, s3_bucket, "a/gives-out/manifest.jsonl")
    assert sorted(ids) == [f"doc-{i}" for i in range(4)]
    assert "error" not in json.loads(s3_text(client, s3_bucket, "a/gives-out/job.json"))


def test_the_check_before_a_job_does_not_wait_out_the_retries(tmp_path, monkeypatch, aws_env):
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("DREAMGEN_S3_RETRY_S", "300")
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach the S3 endpoint at http://127.0.0.1:{port}"):
        storage_module.S3Storage("bucket-x", endpoint_url=f"http://127.0.0.1:{port}").check()
    assert time.monotonic() - started < 15


# ------------------------------------------------------------------------------------- a full disk

@pytest.fixture
def small_disk(tmp_path):
    """A 300 KiB tmpfs: a real file system that fills up (ENOSPC). Needs mount rights (root in CI)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip() or result.returncode}); needs root")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_stops_the_job_with_a_record_and_resume_finishes(tmp_path, small_disk, installed_tiny):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"doc-{i}", "prompt": f"topic number {i}", "seed": i, "steps": 2,
                                           "max_new_tokens": 40, "max_images": 2, "image_size": 128}) + "\n"
                               for i in range(12)))
    args = ["run", str(prompts), "--out", str(small_disk), "--job-id", "full", "--model", "tiny-random", "-b", "2"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert "No space left on device" in result.output and "Traceback" not in result.output
    assert f"Resume with: dreamgen run --resume full --out {small_disk}" in result.output
    job = small_disk / "full"
    done = sorted(p.stem for p in (job / "_done").iterdir()) if (job / "_done").exists() else []
    assert len(done) < 12
    record = json.loads((job / "job.json").read_text())
    # job.json says the job failed, or the message says that the full disk refused even that
    assert record["status"] == "failed" or "job.json could not be updated either" in result.output
    for doc in job.iterdir():  # nothing half-written: only done documents have files
        if doc.is_dir() and not doc.name.startswith("_") and doc.name not in done:
            assert not [f for f in doc.rglob("*") if f.is_file()], f"{doc.name} left files behind unfinished"

    subprocess.run(["mount", "-o", "remount,size=16m", str(small_disk)], check=True)
    resumed = CliRunner().invoke(cli, ["run", "--resume", "full", "--out", str(small_disk)])
    assert resumed.exit_code == 0, resumed.output
    ids = [json.loads(line)["id"] for line in (job / "manifest.jsonl").read_text().splitlines()]
    assert sorted(ids) == sorted(f"doc-{i}" for i in range(12))
    assert json.loads((job / "job.json").read_text())["status"] == "finished"


# ------------------------------------------------------------------------------------- symlinks

@pytest.mark.parametrize("link", ["job", "document", "images"])
def test_symlinks_never_carry_a_job_out_of_its_output_folder(tmp_path, make_doc, link):
    from dreamgen.jobs.output import JobOutput

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    target = {"job": out / "j1", "document": out / "j1" / "d1", "images": out / "j1" / "d1" / "images"}[link]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.symlink_to(elsewhere, target_is_directory=True)
    job = JobOutput(LocalStorage(out), "j1")
    with pytest.raises(StorageError, match="symbolic link") as caught:
        job.save_document(make_doc("d1"))
    assert str(elsewhere) in str(caught.value) and str(out) in str(caught.value)
    assert list(elsewhere.iterdir()) == []


def test_a_file_symlink_is_never_read_through(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for you")
    (tmp_path / "out" / "j1").mkdir(parents=True)
    (tmp_path / "out" / "j1" / "job.json").symlink_to(secret)
    with pytest.raises(StorageError, match="symbolic link"):
        LocalStorage(tmp_path / "out").read_bytes("j1/job.json")


def test_an_output_root_that_is_itself_a_link_is_fine(tmp_path, make_doc):
    from dreamgen.jobs.output import JobOutput

    (tmp_path / "real").mkdir()
    (tmp_path / "out").symlink_to(tmp_path / "real", target_is_directory=True)
    JobOutput(LocalStorage(tmp_path / "out"), "j1").save_document(make_doc("d1"))
    assert (tmp_path / "real" / "j1" / "_done" / "d1.json").is_file()


def test_the_cli_names_the_link_in_one_line(tmp_path, installed_tiny):
    out = tmp_path / "out"
    (out / "j").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (out / "j" / "doc-0").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(out), "--job-id", "j", "--model",
                                      "tiny-random", "--steps", "2", "--max-new-tokens", "20"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "symbolic link" in result.output and "Resume with: dreamgen run --resume j" in result.output
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert json.loads((out / "j" / "job.json").read_text())["status"] == "failed"
