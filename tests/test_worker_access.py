"""Whose credentials, which endpoint (issue 33): a worker reads and writes only through its own endpoint and
credentials, only the buckets and local folders its settings list, and never signs a request for an address a
submitter chose. A real `celery worker` process, a real Redis, moto_server as a process, and a local HTTP server
that logs what reaches it standing in for the submitter's address."""
from __future__ import annotations

import io
import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import pytest
from PIL import Image

from dreamgen.errors import InputImageError, StorageError
from tests.celery_support import MODEL, Namespace, wait_for_job

pytestmark = [pytest.mark.integration, pytest.mark.slow]


class LoggingServer:
    """An HTTP server on 127.0.0.1 that answers 503 to everything and keeps what reached it."""

    def __init__(self):
        self.requests: list[dict] = []
        seen = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _any(self):
                seen.append({"method": self.command, "path": self.path, "headers": dict(self.headers)})
                self.send_response(503)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PUT = do_HEAD = do_POST = do_DELETE = _any

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def png(color) -> bytes:
    data = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(data, "PNG")
    return data.getvalue()


def write_prompts(path, items):
    path.write_text("".join(json.dumps({"steps": 2, "max_new_tokens": 12, **item}) + "\n" for item in items))
    return path


@pytest.fixture
def buckets(s3_endpoint):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    names = {role: f"{role}-{uuid.uuid4().hex[:10]}" for role in ("inputs", "other", "out")}
    for name in names.values():
        client.create_bucket(Bucket=name)
    client.put_object(Bucket=names["inputs"], Key="cat.png", Body=png((200, 30, 30)))
    client.put_object(Bucket=names["other"], Key="private/photo.png", Body=png((30, 30, 200)))
    yield names
    for name in names.values():
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
            for item in page.get("Contents", []):
                client.delete_object(Bucket=name, Key=item["Key"])
        client.delete_bucket(Bucket=name)


def test_a_worker_uses_only_its_own_endpoint_buckets_and_folders(tmp_path, dreamgen_home, installed_tiny,
                                                                  s3_endpoint, buckets, monkeypatch):
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.dispatch import send_chunks

    allowed, secret = tmp_path / "allowed", tmp_path / "secret"
    for folder in (allowed, secret):
        folder.mkdir()
        Image.new("RGB", (32, 32), (10, 120, 10)).save(folder / "pic.png")
    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"id": "plain", "prompt": "a walk"},
        {"id": "allowed-s3", "prompt": "see <image>", "images": [f"s3://{buckets['inputs']}/cat.png"]},
        {"id": "other-team", "prompt": "see <image>", "images": [f"s3://{buckets['other']}/private/photo.png"]},
        {"id": "allowed-dir", "prompt": "see <image>", "images": ["allowed/pic.png"]},
        {"id": "secret-dir", "prompt": "see <image>", "images": ["secret/pic.png"]}])
    monkeypatch.setenv("AWS_SESSION_TOKEN", "fake-session-token-never-send-me")

    with LoggingServer() as submitters_address, \
            Namespace(tmp_path, dreamgen_home, DREAMGEN_S3_ENDPOINT_URL=s3_endpoint,
                      DREAMGEN_WORKER_S3_READ=buckets["inputs"], DREAMGEN_WORKER_S3_WRITE=buckets["out"],
                      DREAMGEN_WORKER_INPUT_DIRS=str(allowed)) as ns:
        ns.worker("w1")

        def hostile(url, job, chunks):  # what a submitter can put in a task: its own endpoint for the worker's key
            job.config.endpoint_url = submitters_address.url
            return send_chunks(url, job, chunks)

        job_id = submit_job(JobConfig(prompts=str(prompts), out=f"s3://{buckets['out']}/jobs", model=MODEL,
                                      batch_size=5, endpoint_url=s3_endpoint), hostile)
        report = wait_for_job(job_id)
        assert (report.status, report.done, report.failed) == ("finished", 3, 2), report
        assert report.failures["other-team"] == (
            f"InputImageError: input image s3://{buckets['other']}/private/photo.png is refused: bucket "
            f"'{buckets['other']}' is not in DREAMGEN_WORKER_S3_READ ({buckets['inputs']})")
        assert report.failures["secret-dir"] == (
            f"InputImageError: input image {secret / 'pic.png'} is refused: it is not inside a folder of "
            f"DREAMGEN_WORKER_INPUT_DIRS ({allowed})")
        # the documents went to the worker's own endpoint (moto), which holds them
        stored = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(
            Bucket=buckets["out"], Prefix=f"jobs/{job_id}/_done/")
        assert sorted(o["Key"].rsplit("/", 1)[1] for o in stored["Contents"]) == \
            ["allowed-dir.json", "allowed-s3.json", "plain.json"]

        # a bucket the worker may not write: refused, said on the job, never "running" forever
        refused = submit_job(JobConfig(prompts=str(write_prompts(tmp_path / "q.jsonl", [{"prompt": "a"}])),
                                       out=f"s3://{buckets['other']}/jobs", model=MODEL, endpoint_url=s3_endpoint),
                             hostile)
        report = wait_for_job(refused)
        assert report.status == "failed" and report.done == 0
        why = (f"this worker does not write to s3://{buckets['other']}/jobs: bucket '{buckets['other']}' is not in "
               f"DREAMGEN_WORKER_S3_WRITE ({buckets['out']})")
        assert report.error == why and list(report.failures.values()) == [f"StorageError: {why}"]
        assert "fake-session-token" not in ns.workers["w1"].text()

    # not one request reached the address the submitter chose: no key, no session token, no metadata probe
    assert submitters_address.requests == []


def test_the_worker_checks_name_the_location_and_the_setting(tmp_path, monkeypatch):
    from dreamgen.distributed.access import check_picture, worker_storage

    monkeypatch.delenv("DREAMGEN_WORKER_S3_READ", raising=False)
    monkeypatch.delenv("DREAMGEN_WORKER_S3_WRITE", raising=False)
    monkeypatch.delenv("DREAMGEN_WORKER_INPUT_DIRS", raising=False)
    with pytest.raises(InputImageError, match=r"s3://b/k.png is refused: bucket 'b' is not in "
                                              r"DREAMGEN_WORKER_S3_READ \(none\)"):
        check_picture("s3://b/k.png")
    with pytest.raises(StorageError, match=r"does not write to s3://b/p: bucket 'b' is not in "
                                           r"DREAMGEN_WORKER_S3_WRITE \(none\)"):
        worker_storage("s3://b/p")
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.png").write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "out.png").symlink_to("/etc/hostname")
    monkeypatch.setenv("DREAMGEN_WORKER_INPUT_DIRS", str(tmp_path / "in"))
    assert check_picture(str(tmp_path / "in" / "a.png")) == str(tmp_path / "in" / "a.png")
    assert check_picture(str(tmp_path / "link.png")) == str(tmp_path / "in" / "a.png")  # a link into it: its target
    with pytest.raises(InputImageError, match="is refused"):  # a link out of it
        check_picture(str(tmp_path / "in" / "out.png"))
    with pytest.raises(InputImageError, match="is refused"):
        check_picture(str(tmp_path / "in" / ".." / "in2.png"))
    monkeypatch.setenv("DREAMGEN_WORKER_S3_READ", "*")
    assert check_picture("s3://any/k.png") == "s3://any/k.png"


def test_a_bomb_after_submit_fails_its_document_alone_on_a_threads_worker(tmp_path, dreamgen_home, installed_tiny):
    """The chunk stayed "3/4 done" forever, its lock renewed, and a warm shutdown never finished: the document
    whose picture raised DecompressionBombError was never ended. Now it fails, the job ends, the worker stops."""
    import signal
    import time

    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from tests.test_input_pictures import png_claiming
    from dreamgen.workers.dispatch import send_chunks

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    picture = pictures / "cat.png"
    Image.new("RGB", (32, 32), (9, 9, 9)).save(picture)
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": f"d{i}", "prompt": f"topic {i}"} for i in range(3)]
                            + [{"id": "bomb", "prompt": "see <image>", "images": ["pictures/cat.png"]}])
    with Namespace(tmp_path, dreamgen_home, DREAMGEN_WORKER_INPUT_DIRS=str(pictures)) as ns:
        job_id = submit_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), model=MODEL, batch_size=4),
                            send_chunks)
        picture.write_bytes(png_claiming(20000, 20000))  # after the check: the worker meets the bomb
        worker = ns.worker("w1", pool="threads", concurrency=2)
        report = wait_for_job(job_id)
        assert (report.status, report.done, report.failed) == ("finished", 3, 1), report
        assert report.failures["bomb"].startswith(f"InputImageError: input image {picture} holds more than")
        began = time.monotonic()
        worker._signal_group(signal.SIGTERM)  # a warm shutdown: nothing left to wait for
        worker.process.wait(timeout=60)
        assert time.monotonic() - began < 60
