"""Shared fixtures: small real Documents, and a real S3 endpoint (a moto_server process over HTTP)."""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the tests run from a checkout, installed or not
    sys.path.insert(0, str(ROOT))

from dreamgen.document import Document, ImageBlock, TextBlock  # noqa: E402
from dreamgen.params import DREAMGEN_DEFAULTS, GenerationParams  # noqa: E402

# A distinctive fake secret: tests assert it never appears in an error message.
FAKE_SECRET = "fake-secret-never-print-me-0123456789"


def make_document(doc_id: str = "doc-1", prompt: str = "A walk through an autumn forest",
                  texts: tuple[str, ...] = ("# Autumn forest\n\nThe leaves turn red and gold.",
                                            "A path winds between old oaks.", "The end."),
                  size: int = 16, seed: int = 7, title: str | None = None, custom_id: str | None = None) -> Document:
    """A Document as the generator makes it: text, an image, text, an image, text (one image fewer than texts);
    its params name the guidance the generator resolved (the model's own, when the request named none)."""
    blocks = []
    for index, text in enumerate(texts):
        blocks.append(TextBlock(text))
        if index < len(texts) - 1:
            color = ((37 * index + 50) % 256, (91 * index + 120) % 256, (53 * index + 200) % 256)
            blocks.append(ImageBlock(index=index, width=size, height=size, seed=seed + index,
                                     image=Image.new("RGB", (size, size), color)))
    params = GenerationParams(seed=seed).resolved(DREAMGEN_DEFAULTS).to_dict()  # as the tiny model resolves them
    return Document(id=doc_id, prompt=prompt, model="tiny-dreamllm", params=params,
                    blocks=blocks, title=title, stop_reason="eos", custom_id=custom_id)


@pytest.fixture
def make_doc():
    """make_document, for tests (conftest is not importable as a module)."""
    return make_document


@pytest.fixture
def fake_secret():
    return FAKE_SECRET


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def aws_env(tmp_path_factory):
    """Fake credentials (and no real AWS config) in the environment for the whole session."""
    empty = tmp_path_factory.mktemp("aws")
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": FAKE_SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(empty / "config"), "AWS_SHARED_CREDENTIALS_FILE": str(empty / "credentials")}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
            patch.delenv(name, raising=False)
        yield env


@contextlib.contextmanager
def moto_server(extra_env: dict | None = None):
    """A moto_server process on a free port; yields its URL and stops it afterwards."""
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        found = shutil.which("moto_server")
        if not found:
            pytest.skip("moto_server is not installed (pip install 'moto[server]')")
        server = Path(found)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, **(extra_env or {})})
    try:
        _wait_until_answers(url, process)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="session")
def s3_endpoint(aws_env):
    """The URL of a real S3 endpoint: a moto_server process spoken to over HTTP."""
    with moto_server() as url:
        yield url


@pytest.fixture(scope="session")
def s3_endpoint_denying(aws_env):
    """A moto_server that checks credentials, so ours (unknown to it) are refused."""
    with moto_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"}) as url:
        yield url


def _wait_until_answers(url: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"moto_server exited with code {process.returncode}")
        try:
            urllib.request.urlopen(url + "/", timeout=1).close()
            return
        except urllib.error.HTTPError:  # any HTTP answer means it is up
            return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"moto_server did not answer at {url} within {timeout} s")


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the moto server; its name."""
    import boto3

    name = f"dreamgen-test-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    client.create_bucket(Bucket=name)
    yield name
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=name):
        for item in page.get("Contents", []):
            client.delete_object(Bucket=name, Key=item["Key"])
    client.delete_bucket(Bucket=name)


@pytest.fixture(autouse=True, scope="session")
def dreamgen_home(tmp_path_factory):
    """Built-in models and engine caches go to a folder of the test session, never the user's cache."""
    home = tmp_path_factory.mktemp("dreamgen-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DREAMGEN_HOME", str(home))
        yield home


@pytest.fixture(autouse=True, scope="session")
def toy_model_configs(tmp_path_factory):
    """The toy CLIP and SD configs of tests/released_checkpoint.py's checkpoints, which (as the hub's) hold none
    and name ViT-L/14 and SD 2.1-base by hub id: found through DREAMGEN_MODEL_CONFIGS before the packaged ones."""
    from tests.released_checkpoint import write_model_configs

    folder = write_model_configs(tmp_path_factory.mktemp("model-configs"))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DREAMGEN_MODEL_CONFIGS", str(folder))
        yield folder


@pytest.fixture(scope="session")
def installed_tiny(dreamgen_home):
    """The built-in tiny-random model written into DREAMGEN_HOME from the model already built in this process,
    so commands that load it by name (CLI, worker processes) start at once."""
    from dreamgen.model.checkpoint import save_checkpoint
    from tests.helpers import tiny_model

    target = dreamgen_home / "models" / "tiny-random"
    if not (target / ".complete").exists():
        save_checkpoint(tiny_model(), target, safetensors=True)
        (target / ".complete").write_text("ok\n")
    return target
