"""Storage (local directory and a real S3 endpoint) and the job output layout on top of it."""
from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import struct
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from dreamgen.errors import StorageError
from dreamgen.generation.diffusion import image_seed
from dreamgen.jobs.output import JobOutput, export_job, open_job_output
from dreamgen.document import Document
from dreamgen.jobs.png import read_png_parameters
from dreamgen.model.checkpoint import weights_hash
from dreamgen.jobs.storage import KeyNotFound, LocalStorage, S3Storage, open_storage

# ------------------------------------------------------------------------------------- the Storage contract
# The same checks run on a local directory and on a bucket of a real moto_server.


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return LocalStorage(tmp_path / "out")
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Storage(request.getfixturevalue("s3_bucket"), "some/prefix", endpoint_url=endpoint)


def test_write_read_exists_list_delete(storage):
    storage.write_bytes("job/a.json", b"{}")
    storage.write_bytes("job/doc/images/00.png", b"png")
    storage.write_bytes("job/doc/images/00.png", b"png2")  # overwrite
    storage.write_bytes("other/x", b"x")
    assert storage.read_bytes("job/doc/images/00.png") == b"png2"
    assert storage.exists("job/a.json") and not storage.exists("job/missing")
    assert storage.list("job/") == ["job/a.json", "job/doc/images/00.png"]
    assert storage.list("job/doc/im") == ["job/doc/images/00.png"]
    assert storage.list("nothing/") == []
    storage.delete("job/a.json")
    storage.delete("job/a.json")  # missing is fine
    assert not storage.exists("job/a.json")
    with pytest.raises(KeyNotFound):
        storage.read_bytes("job/a.json")


def test_create_once(storage):
    assert storage.create_once("job/_done/d.json", b"first") is True
    assert storage.create_once("job/_done/d.json", b"second") is False
    assert storage.read_bytes("job/_done/d.json") == b"first"


def test_concurrent_create_once_has_exactly_one_winner(storage):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: storage.create_once("job/race.json", str(i).encode()), range(16)))
    assert results.count(True) == 1
    assert storage.read_bytes("job/race.json") == str(results.index(True)).encode()


@pytest.mark.parametrize("key", ["../x", "/abs", "a//b", "a/./b", "a\\b", "", "a/.."])
def test_unsafe_keys_are_refused(storage, key):
    with pytest.raises(StorageError, match="unsafe storage key"):
        storage.write_bytes(key, b"x")


# ------------------------------------------------------------------------------------- local specifics

def test_local_writes_are_atomic_and_leave_no_temp_files(tmp_path):
    storage = LocalStorage(tmp_path)
    for i in range(5):
        storage.write_bytes("j/d/document.json", json.dumps({"i": i}).encode())
        storage.create_once(f"j/_done/{i}.json", b"{}")
        storage.create_once(f"j/_done/{i}.json", b"{}")
    names = [name for _, _, files in os.walk(tmp_path) for name in files]
    assert sorted(names) == ["0.json", "1.json", "2.json", "3.json", "4.json", "document.json"]
    assert storage.url_for("j/d/document.json") == (tmp_path / "j/d/document.json").resolve().as_uri()


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_local_files_follow_the_umask_like_any_tool(tmp_path, umask, mask, mode):
    umask(mask)
    storage = LocalStorage(tmp_path)
    storage.write_bytes("j/d/document.json", b"{}")
    storage.write_bytes("j/d/document.json", b"{}")  # replacing keeps the mode too
    storage.create_once("j/_done/d.json", b"{}")
    reference = tmp_path / "touched"  # what any other program gets under the same umask
    reference.touch()
    assert reference.stat().st_mode & 0o777 == mode
    for name in ("j/d/document.json", "j/_done/d.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_a_whole_job_is_readable_by_another_user(umask, make_doc):
    """A web server runs as its own user: every file of a job must be readable by it under umask 022."""
    umask(0o022)
    root = Path(tempfile.mkdtemp(prefix="dreamgen-modes-"))  # not under pytest's private (0700) base folder
    try:
        root.chmod(0o755)
        job = JobOutput(LocalStorage(root / "out"), "j")
        job.write_job({"id": "j"})
        job.save_document(make_doc("d1"))
        job.finalize()
        files = [p for p in (root / "out").rglob("*") if p.is_file()]
        assert len(files) >= 9  # job.json, manifest, errors, index, document.json, 2 images, index.md/html, marker
        assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o644)}
        if os.geteuid() != 0 or not shutil.which("runuser"):
            pytest.skip("the modes are checked; reading as another user needs root (runuser)")
        read = subprocess.run(["runuser", "-u", "nobody", "--", "cat", str(root / "out/j/d1/index.html"),
                               str(root / "out/j/d1/images/00.png")], capture_output=True)
        assert read.returncode == 0, read.stderr
        assert b"<html" in read.stdout and b"PNG" in read.stdout
    finally:
        shutil.rmtree(root)

def test_open_storage_picks_by_url(tmp_path, monkeypatch):
    local = open_storage(str(tmp_path / "out"))
    assert isinstance(local, LocalStorage) and local.location == str(tmp_path / "out")
    monkeypatch.setenv("DREAMGEN_S3_ENDPOINT_URL", "http://127.0.0.1:9")
    s3 = open_storage("s3://bucket/a/b/")
    assert isinstance(s3, S3Storage) and (s3.bucket, s3.prefix, s3.endpoint_url) == ("bucket", "a/b", "http://127.0.0.1:9")
    assert s3.location == "s3://bucket/a/b"
    assert open_storage("s3://bucket", endpoint_url="http://other:1").endpoint_url == "http://other:1"
    with pytest.raises(StorageError, match="names no bucket"):
        open_storage("s3:///x")
    with pytest.raises(StorageError, match="unsupported output location"):
        open_storage("gs://bucket/x")


def test_s3_client_settings_for_custom_endpoints():
    config = S3Storage("b", endpoint_url="http://127.0.0.1:9").client.meta.config
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    assert config.retries["total_max_attempts"] == 1  # dreamgen retries itself (S3Storage._retrying)


# ------------------------------------------------------------------------------------- S3 specifics

def test_s3_keys_live_under_the_prefix(s3_endpoint, s3_bucket):
    import boto3

    storage = S3Storage(s3_bucket, "runs/2026", endpoint_url=s3_endpoint)
    storage.write_bytes("job/doc/index.html", b"<p>hi</p>")
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    head = client.head_object(Bucket=s3_bucket, Key="runs/2026/job/doc/index.html")
    assert head["ContentType"].startswith("text/html")
    assert storage.url_for("job/doc/index.html") == f"{s3_endpoint}/{s3_bucket}/runs/2026/job/doc/index.html"
    assert S3Storage(s3_bucket, "", endpoint_url=s3_endpoint).list("runs/") == ["runs/2026/job/doc/index.html"]


def test_s3_missing_bucket_is_one_clear_line(s3_endpoint, fake_secret):
    storage = S3Storage("no-such-bucket-dreamgen", "p", endpoint_url=s3_endpoint)
    for action in (storage.check, lambda: storage.write_bytes("k", b"x"), lambda: storage.read_bytes("k"),
                   lambda: storage.list("k"), lambda: storage.create_once("k", b"x")):
        with pytest.raises(StorageError) as caught:
            action()
        message = str(caught.value)
        assert "S3 bucket 'no-such-bucket-dreamgen' does not exist" in message, message
        assert "\n" not in message and fake_secret not in message and "testing" not in message


def test_s3_denied_access_is_one_clear_line(s3_endpoint_denying, fake_secret):
    storage = S3Storage("private-bucket", "p", endpoint_url=s3_endpoint_denying)
    for action in (storage.check, lambda: storage.write_bytes("k", b"x"), lambda: storage.list(""),
                   lambda: storage.exists("k"), lambda: storage.create_once("k", b"x")):
        with pytest.raises(StorageError) as caught:
            action()
        message = str(caught.value)
        assert message.startswith("access denied to S3 bucket 'private-bucket'"), message
        assert "\n" not in message and fake_secret not in message and "testing" not in message


def test_s3_create_once_without_conditional_writes_falls_back(s3_endpoint, s3_bucket):
    storage = S3Storage(s3_bucket, endpoint_url=s3_endpoint)
    storage._conditional_writes = False  # as after a server answered NotImplemented to IfNoneMatch
    assert storage.create_once("k", b"1") is True
    assert storage.create_once("k", b"2") is False
    assert storage.read_bytes("k") == b"1"


# ------------------------------------------------------------------------------------- the job layout

class RecordingStorage(LocalStorage):
    """A real local storage that also notes the order of writes (and can fail on one key)."""

    def __init__(self, root, fail_on=None):
        super().__init__(root)
        self.writes, self.fail_on = [], fail_on

    def write_bytes(self, key, data, content_type=None):
        if self.fail_on and key.endswith(self.fail_on):
            raise StorageError(f"disk full writing {key}")
        self.writes.append(key)
        super().write_bytes(key, data, content_type)

    def create_once(self, key, data, content_type=None):
        self.writes.append(key)
        return super().create_once(key, data, content_type)


def test_save_document_writes_the_layout_in_order_and_marks_done_last(make_doc, tmp_path):
    storage = RecordingStorage(tmp_path)
    job = JobOutput(storage, "job-1")
    job.write_job({"id": "job-1", "model": "tiny-dreamllm"})
    doc = make_doc("doc-1", custom_id="Doc 1")
    entry = job.save_document(doc)
    assert storage.writes == ["job-1/job.json", "job-1/doc-1/images/00.png", "job-1/doc-1/images/01.png",
                              "job-1/doc-1/document.json", "job-1/doc-1/index.md", "job-1/doc-1/index.html",
                              "job-1/_done/doc-1.json"]
    assert entry["id"] == "doc-1" and entry["custom_id"] == "Doc 1" and entry["title"] == "Autumn forest"
    assert entry["path"] == "doc-1" and entry["images"] == ["doc-1/images/00.png", "doc-1/images/01.png"]
    for block in doc.images:
        data = storage.read_bytes(f"job-1/doc-1/{block.path}")
        assert block.sha256 == hashlib.sha256(data).hexdigest()
    assert job.done_ids() == {"doc-1"}
    assert job.load_document("doc-1").to_dict() == doc.to_dict()


def _png_text_chunks(data: bytes) -> dict[str, tuple[bytes, str]]:
    """{keyword: (chunk type, text)} for the tEXt/iTXt chunks of a PNG, read straight from its bytes."""
    chunks, at = {}, 8
    while at < len(data):
        length, kind = struct.unpack(">I4s", data[at:at + 8])
        body = data[at + 8:at + 8 + length]
        if kind == b"tEXt":
            key, _, text = body.partition(b"\0")
            chunks[key.decode("latin-1")] = (kind, text.decode("latin-1"))
        elif kind == b"iTXt":
            key, _, rest = body.partition(b"\0")
            text = rest[2:].split(b"\0", 2)[2]
            chunks[key.decode("latin-1")] = (kind, text.decode("utf-8"))
        at += length + 12
    return chunks


def test_pngs_carry_their_generation_parameters(make_doc, tmp_path):
    storage = LocalStorage(tmp_path)
    doc = make_doc("doc-1", prompt="A walk, café included")
    doc.params["negative_prompt"] = "blurry"
    JobOutput(storage, "job-1").save_document(doc)
    data = storage.read_bytes("job-1/doc-1/images/01.png")
    chunks = _png_text_chunks(data)
    kind, meta_text = chunks["dreamgen"]
    assert kind == b"tEXt"
    meta = json.loads(meta_text)
    assert meta == read_png_parameters(data)
    assert (meta["prompt"], meta["model"], meta["seed"], meta["document"], meta["image_index"]) == (
        "A walk, café included", "tiny-dreamllm", 8, "doc-1", 1)
    assert meta["params"] == doc.params
    parameters = chunks["parameters"][1]
    assert parameters.startswith("A walk, café included\nNegative prompt: blurry\nSteps: 50, Sampler: DDPM")
    assert "CFG scale: 7.5, Seed: 8, Size: 16x16, Model: tiny-dreamllm" in parameters
    assert Image.open(io.BytesIO(data)).size == (16, 16)


def a1111_fields(parameters: str) -> dict:
    """The last line of an A1111 `parameters` text as A1111-style readers split it: 'Key: value' pairs."""
    return dict(re.findall(r"\s*([A-Z][\w \-/]*?): ([^,]*)(?:,|$)", parameters.splitlines()[-1]))


def test_pngs_name_their_checkpoint_by_model_hash_and_have_seeds_tools_read(make_doc, tmp_path):
    checkpoint = tmp_path / "my-model"
    (checkpoint / "unet").mkdir(parents=True)
    (checkpoint / "config.json").write_text("{}")  # not a weight: changes nothing
    (checkpoint / "model.safetensors").write_bytes(b"weights of the LLM")
    (checkpoint / "stable_diffusion_head.bin").write_bytes(b"weights of the head")
    expected = hashlib.sha256(b"model.safetensors\0weights of the LLM"
                              b"stable_diffusion_head.bin\0weights of the head").hexdigest()[:10]
    assert weights_hash(checkpoint) == expected
    doc = make_doc("doc-1", seed=3)
    doc.model, doc.model_hash = str(checkpoint), weights_hash(checkpoint)  # as the loader computes it once
    doc.images[1].seed = image_seed(3, 1)  # as the generator seeds a later picture
    JobOutput(LocalStorage(tmp_path / "out"), "job-1").save_document(doc)
    for index, block in enumerate(doc.images):
        png = (tmp_path / "out/job-1/doc-1" / block.path).read_bytes()
        fields = a1111_fields(_png_text_chunks(png)["parameters"][1])
        assert fields["Model hash"] == expected and fields["Model"] == str(checkpoint)
        assert 0 <= int(fields["Seed"]) < 2**32  # A1111 and its readers take 32-bit seeds
    assert a1111_fields(_png_text_chunks((tmp_path / "out/job-1/doc-1/images/00.png").read_bytes())
                        ["parameters"][1])["Seed"] == "3"  # the first picture's seed is the document's
    assert all(image_seed(seed, i) < 2**32 for seed in (0, 1, 2**62) for i in range(1, 50))
    assert len({image_seed(0, i) for i in range(1, 1000)}) == 999  # still distinct per picture

    doc = make_doc("doc-2")  # a model loaded from no checkpoint: no hash, and storing looks nothing up
    doc.model = "shapes"  # a built-in name: storing the picture must not locate or build it
    JobOutput(LocalStorage(tmp_path / "out"), "job-1").save_document(doc)
    fields = a1111_fields(_png_text_chunks((tmp_path / "out/job-1/doc-2/images/00.png").read_bytes())
                          ["parameters"][1])
    assert "Model hash" not in fields and fields["Model"] == "shapes"


def test_a_loaded_checkpoint_names_its_hash_and_its_documents_carry_it(tmp_path):
    from dreamgen.generation.generator import Generator
    from dreamgen.model.checkpoint import save_checkpoint
    from dreamgen.model.loader import load_model
    from tests.helpers import request, tiny_model

    folder = tmp_path / "ckpt"
    save_checkpoint(tiny_model(), folder, safetensors=True)
    model = load_model(str(folder))
    assert model.info.hash == weights_hash(folder) and len(model.info.hash) == 10
    doc = Generator(model).generate([request("rivers", max_new_tokens=4, max_images=0)])[0]
    assert doc.model_hash == model.info.hash
    assert Document.from_dict(doc.to_dict()).model_hash == model.info.hash


def test_a_failed_save_leaves_the_document_unfinished_and_a_retry_finishes_it(make_doc, tmp_path):
    broken = RecordingStorage(tmp_path, fail_on="index.html")
    with pytest.raises(StorageError):
        JobOutput(broken, "job-1").save_document(make_doc("doc-1"))
    job = JobOutput(LocalStorage(tmp_path), "job-1")
    assert job.done_ids() == set() and job.finalize()["done"] == 0
    job.record_error("doc-1", None, RuntimeError("disk full"))
    job.save_document(make_doc("doc-1"))
    assert job.done_ids() == {"doc-1"} and job.failed() == []


def test_manifest_and_errors(make_doc, tmp_path):
    job = JobOutput(LocalStorage(tmp_path), "job-1")
    job.write_job({"id": "job-1"})
    for name in ("a", "b"):
        job.save_document(make_doc(name))
    job.save_document(make_doc("a"))  # saved again (a retry or a second worker): still one line
    job.record_error("c", "my-c", ValueError("prompt too long"))
    job.record_error("d", None, "CUDAOutOfMemory", "out of memory at step 3")
    job.record_error("d", None, "CUDAOutOfMemory", "out of memory again")  # the latest failure wins
    counts = job.finalize()
    assert counts == {"done": 2, "context_full": 0, "failed": 2}
    manifest = [json.loads(line) for line in (tmp_path / "job-1/manifest.jsonl").read_text().splitlines()]
    assert sorted(e["id"] for e in manifest) == ["a", "b"]
    assert set(manifest[0]) >= {"id", "custom_id", "title", "path", "images", "finished"}
    errors = [json.loads(line) for line in (tmp_path / "job-1/errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["custom_id"], e["error"], e["message"]) for e in errors] == [
        ("c", "my-c", "ValueError", "prompt too long"), ("d", None, "CUDAOutOfMemory", "out of memory again")]
    assert (tmp_path / "job-1/index.html").is_file()


def test_a_rerun_skipping_done_documents_produces_each_once(make_doc, tmp_path):
    names = [f"doc-{i}" for i in range(5)]
    first = JobOutput(LocalStorage(tmp_path), "job-1")
    for name in names[:3]:  # then the run stops (Ctrl-C, a crash)
        first.save_document(make_doc(name))
    rerun = JobOutput(LocalStorage(tmp_path), "job-1")
    done = rerun.done_ids()
    saved = [name for name in names if name not in done and rerun.save_document(make_doc(name))]
    assert saved == names[3:]
    rerun.finalize()
    lines = (tmp_path / "job-1/manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["id"] for line in lines) == names


def _worker_saves(root, names, make_doc):
    job = JobOutput(LocalStorage(root), "job-1")
    for name in names:
        job.save_document(make_doc(name))


def test_concurrent_worker_processes_never_lose_or_double_a_line(make_doc, tmp_path):
    # Four processes; each saves its own documents plus a shared one, as redelivered tasks would.
    context = multiprocessing.get_context("fork")
    names = [[f"w{w}-{i}" for i in range(4)] + ["shared"] for w in range(4)]
    workers = [context.Process(target=_worker_saves, args=(str(tmp_path), n, make_doc)) for n in names]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    job = JobOutput(LocalStorage(tmp_path), "job-1")
    assert job.finalize() == {"done": 17, "context_full": 0, "failed": 0}
    ids = [json.loads(line)["id"] for line in (tmp_path / "job-1/manifest.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 17


def test_ids_that_are_not_safe_never_reach_a_key(make_doc, tmp_path):
    job = JobOutput(LocalStorage(tmp_path), "job-1")
    with pytest.raises(StorageError):
        job.record_error("../escape", None, "X", "y")
    with pytest.raises(StorageError):
        job.save_document(make_doc("../escape"))
    assert not (tmp_path / "escape").exists()


def test_open_job_output_splits_a_job_folder(tmp_path, monkeypatch):
    local = open_job_output(str(tmp_path / "out" / "job-7") + "/")
    assert local.job_id == "job-7" and local.storage.location == str(tmp_path / "out")
    s3 = open_job_output("s3://bucket/prefix/job-7", endpoint_url="http://127.0.0.1:9")
    assert (s3.job_id, s3.storage.bucket, s3.storage.prefix) == ("job-7", "bucket", "prefix")
    with pytest.raises(StorageError, match="names a bucket, not a job folder"):
        open_job_output("s3://bucket")


def test_the_whole_job_on_s3(make_doc, s3_endpoint, s3_bucket):
    storage = S3Storage(s3_bucket, "out", endpoint_url=s3_endpoint)
    job = JobOutput(storage, "job-s3")
    job.write_job({"id": "job-s3", "model": "tiny-dreamllm"})
    job.save_document(make_doc("doc-a"))
    job.save_document(make_doc("doc-b"))
    job.record_error("doc-c", "c", RuntimeError("boom"))
    assert job.finalize() == {"done": 2, "context_full": 0, "failed": 1}
    keys = storage.list("job-s3/")
    for key in ("job.json", "manifest.jsonl", "errors.jsonl", "index.html", "doc-a/document.json",
                "doc-a/images/00.png", "doc-a/index.md", "doc-a/index.html", "_done/doc-a.json"):
        assert f"job-s3/{key}" in keys
    # a second worker (a new client, as in another process) sees the same state
    other = JobOutput(S3Storage(s3_bucket, "out", endpoint_url=s3_endpoint), "job-s3")
    assert other.done_ids() == {"doc-a", "doc-b"} and [e["id"] for e in other.failed()] == ["doc-c"]
    assert other.load_document("doc-a").images[1].path == "images/01.png"
    storage.delete("job-s3/doc-a/index.md")
    assert export_job(storage, "job-s3", ["md"]) == 2
    assert storage.read_bytes("job-s3/doc-a/index.md").startswith(b"---\ntitle: Autumn forest\n")
