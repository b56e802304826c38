"""The model's context: a prompt too long for it is rejected when the file is checked (file, line, token counts);
a document the context cuts short is marked in the manifest and counted apart. Also what a document records of
its run: the seed it was given or derived, and text-to-image in its parameters and its PNG."""
import json
import logging
from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from dreamgen.cli import cli
from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.ids import derived_seed, document_id
from dreamgen.jobs.png import read_png_parameters
from dreamgen.jobs.run import run_job
from dreamgen.jobs.spec import JobConfig, check_job
from dreamgen.model.card import read_model_card
from dreamgen.model.loader import load_model
from dreamgen.params import GenerationParams
from dreamgen.prompts.context import prompt_length
from tests.helpers import tiny_generator, tiny_model
from tests.released_checkpoint import TINY, write_released_checkpoint

CONTEXT = 128  # a small context, so filling it takes few steps


@pytest.fixture(scope="module")
def short(tmp_path_factory):
    """A checkpoint in the released layout whose LLM has a context of 128 positions."""
    return write_released_checkpoint(tmp_path_factory.mktemp("short") / "ckpt",
                                     sizes=replace(TINY, max_positions=CONTEXT))


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def write_jsonl(path, items):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


REQUESTS = [  # (prompt, params, input images, image_only)
    ("a short article about rivers", {}, 0, False),
    ("How to grow tomatoes", {"template": "howto"}, 0, False),
    ("  leading spaces and\ttabs\n\nand lines", {"chat": "none"}, 0, False),
    ("USER: <dream_start> spelled out, not the token", {}, 0, False),
    ("Compare <image> with <image>", {}, 2, False),
    ("Describe this picture", {"template": "news"}, 1, False),
    ("a red circle on a blue background", {}, 0, True),
]


@pytest.mark.parametrize("which", ["tiny", "released"])
def test_prompt_length_is_what_the_generator_feeds(which, short, installed_tiny):
    """The card reads the tokenizer from the checkpoint's files, without torch; its count must be the loaded
    model's exactly (tokenizers' tokenizer.json for the tiny model, sentencepiece's tokenizer.model here)."""
    if which == "tiny":
        card, generator = read_model_card(installed_tiny), tiny_generator()
    else:
        card, generator = read_model_card(short), Generator(load_model(str(short)))
    picture = Image.new("RGB", (40, 30), (200, 30, 30))
    for prompt, params, images, image_only in REQUESTS:
        request = DocumentRequest(prompt=prompt, params=GenerationParams(**params), images=[picture] * images,
                                  image_only=image_only)
        fed = generator.encode_prompt(request).shape[0]
        assert prompt_length(card, prompt, request.params, images, image_only) == fed, prompt


@pytest.mark.parametrize("which", ["tiny", "released"])
def test_the_cheap_bound_is_never_below_the_count(which, short, installed_tiny):
    """Validation skips tokenizing a prompt whose byte bound fits: the bound must hold for every text, including
    ones NFKC lengthens, byte-fallback characters and runs of spaces."""
    import random

    from dreamgen.prompts.context import most_tokens

    card = read_model_card(installed_tiny if which == "tiny" else short)
    rng = random.Random(12)
    alphabet = list("abc xyz  \n\t.,!?'\"") + ["é", "ß", "日本", "🙂", "ﷺ", "㍿", "ﬁ", "Ⅻ", "<image>", "<s>", "\u0301"]
    texts = ["", " ", "a", "ﷺ" * 5, "   lead", "<dream_start>" * 3]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(300)]
    for text in texts:
        assert card.count_tokens(text) <= most_tokens(text), repr(text)


def test_a_prompt_longer_than_the_context_is_rejected_with_file_line_and_counts(short, tmp_path):
    card = read_model_card(short)
    long_prompt = ("the river and the sea " * 30).strip()  # as the file reader strips it
    tokens = prompt_length(card, long_prompt, GenerationParams())
    assert tokens > CONTEXT
    bare = GenerationParams(chat="none")
    fillers = [("x " * k + tail).strip() for k in range(CONTEXT) for tail in ("", "y")]
    fits = next(t for t in fillers if prompt_length(card, t, bare) == CONTEXT - 1)  # room for one token: accepted
    full = next(t for t in fillers if prompt_length(card, t, bare) == CONTEXT)
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a short one"}, {"prompt": long_prompt},
                                                 {"prompt": fits, "chat": "none"}])
    result = CliRunner().invoke(cli, ["run", str(prompts), "--model", str(short), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.splitlines()[-1] == (
        f"Error: {prompts}:2: field 'prompt': is {tokens} tokens with its template and chat format, more than the "
        f"model's context of {CONTEXT}")
    assert not (tmp_path / "out").exists()  # nothing written

    full = write_jsonl(tmp_path / "full.jsonl", [{"prompt": full, "chat": "none"}])
    result = CliRunner().invoke(cli, ["run", str(full), "--model", str(short), "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and f"all of the model's context of {CONTEXT}, none left to write" in result.output

    result = CliRunner().invoke(cli, ["generate", long_prompt, "--model", str(short), "--out", str(tmp_path / "g")])
    assert result.exit_code == 1
    assert f"Error: the prompt is {tokens} tokens with its template and chat format, more than" in result.output


def test_documents_the_context_cut_short_are_marked_and_counted_apart(short, tmp_path):
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "short", "prompt": "Write about a red circle", "max_new_tokens": 4},
        {"id": "long-1", "prompt": "Write about a red circle", "max_new_tokens": 1000, "max_images": 1},
        {"id": "long-2", "prompt": "Write about the sea", "max_new_tokens": 1000, "max_images": 0}])
    result = invoke("run", prompts, "--model", short, "--out", tmp_path / "out", "--job-id", "j", "--steps", 2)
    assert result.exit_code == 0, result.output
    assert "Job j: 1 done, 2 stopped at the context limit, 0 failed, 3 in the file" in result.output
    job = tmp_path / "out" / "j"
    manifest = {e["id"]: e for e in map(json.loads, (job / "manifest.jsonl").read_text().splitlines())}
    assert {k: e["stop_reason"] for k, e in manifest.items()} == {
        "short": "max_new_tokens", "long-1": "context_full", "long-2": "context_full"}
    record = json.loads((job / "job.json").read_text())
    assert (record["done"], record["context_full"], record["failed"]) == (3, 2, 0)
    # status reads the same count back from job.json
    result = invoke("status", "j", "--out", tmp_path / "out")
    assert "  documents: 3 done (2 stopped at the context limit), 0 failed, 0 pending, 3 in all" in result.output, \
        result.output


def test_a_model_not_here_is_checked_later_not_refused(tmp_path, caplog):
    """A submitter may name a checkpoint only its workers have: the file is checked without the context."""
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a river " * 3000}])
    with caplog.at_level(logging.WARNING):
        _, total = check_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"),
                                       model=str(tmp_path / "only-on-the-workers")))
    assert total == 1
    assert "prompt lengths not checked against the model's context: no checkpoint directory at" in caplog.text


# ------------------------------------------------------------------------------------------------ seeds
def test_documents_without_a_seed_start_from_their_own_noise(tmp_path):
    """The same prompt under two ids: each gets the seed its id derives, so their pictures differ; a seed given
    anywhere (the line, the flags) wins."""
    params = {"steps": 2, "max_new_tokens": 30}
    prompts = write_jsonl(tmp_path / "p.jsonl", [
        {"id": "a", "prompt": "a red circle", **params}, {"id": "b", "prompt": "a red circle", **params},
        {"id": "c", "prompt": "a red circle", "seed": 5, **params}, {"prompt": "a blue square", **params}])
    run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="j", model="tiny-random"),
            make_generator=lambda c: tiny_generator())

    def stored(doc_id):
        return json.loads((tmp_path / "out" / "j" / doc_id / "document.json").read_text())

    unnamed = document_id("tiny-random", "a blue square", GenerationParams(**params))  # hashes the default seed
    assert [stored(d)["params"]["seed"] for d in ("a", "b", "c", unnamed)] == [
        derived_seed("a"), derived_seed("b"), 5, derived_seed(unnamed)]
    first = [b for b in stored("a")["blocks"] if b["type"] == "image"][0]
    assert first["seed"] == derived_seed("a")  # the first picture's noise is the document's seed, recorded
    pixels = {d: np.asarray(Image.open(tmp_path / "out" / "j" / d / "images" / "00.png"), dtype=np.int16)
              for d in ("a", "b")}
    assert np.abs(pixels["a"] - pixels["b"]).max() > 5

    flagged = run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out2"), job_id="j", defaults={"seed": 9}),
                      make_generator=lambda c: tiny_generator())
    assert flagged.done == 4
    assert json.loads((tmp_path / "out2" / "j" / "a" / "document.json").read_text())["params"]["seed"] == 9


# ------------------------------------------------------------------------------------------------ image-only
def test_image_only_is_recorded_so_the_png_reproduces_its_run(tmp_path, installed_tiny):
    result = invoke("generate", "--image-only", "a red circle", "--out", tmp_path / "g", "--steps", 2)
    assert result.exit_code == 0, result.output
    doc_id = result.output.split(":")[0]
    doc = json.loads((tmp_path / "g" / "document.json").read_text())  # generate writes one document folder
    assert doc["params"]["image_only"] is True and doc["params"]["seed"] == derived_seed(doc_id)
    data = (tmp_path / "g" / "images" / "00.png").read_bytes()
    meta = read_png_parameters(data)
    assert meta["params"]["image_only"] is True
    assert "Image only: yes" in Image.open(tmp_path / "g" / "images" / "00.png").text["parameters"]

    # everything the PNG says, given back to the command, paints the same picture
    p = meta["params"]
    again = invoke("generate", *(["--image-only"] if p.get("image_only") else []), meta["prompt"],
                   "--out", tmp_path / "again", "--seed", p["seed"], "--steps", p["steps"], "--guidance", p["guidance"],
                   "--scheduler", p["scheduler"], "--model", meta["model"])
    assert again.exit_code == 0, again.output

    with Image.open(tmp_path / "again" / "images" / "00.png") as repainted, \
            Image.open(tmp_path / "g" / "images" / "00.png") as painted:
        assert np.array_equal(np.asarray(repainted), np.asarray(painted))
    # a document written as an article says nothing of image_only, and has another id
    article = invoke("generate", "a red circle", "--out", tmp_path / "article", "--steps", 2, "--max-new-tokens", 8)
    article_id = article.output.split(":")[0]
    assert article_id != doc_id
    assert "image_only" not in json.loads((tmp_path / "article" / "document.json").read_text())["params"]


def test_the_resolved_dtype_is_recorded(installed_tiny):
    from dreamgen import settings
    from dreamgen.model.checkpoint import resolve_dtype

    assert settings.DTYPE.default == "auto" and settings.DTYPES[0] == "auto"
    import torch
    assert resolve_dtype("auto", torch.device("cpu")) == "fp32"
    assert resolve_dtype("auto", torch.device("cuda", 0)) == "bf16"  # decided by the device alone
    assert resolve_dtype("fp16", torch.device("cuda", 0)) == "fp16"
    assert load_model("tiny-random").info.dtype == "fp32"
    request = DocumentRequest("rivers", GenerationParams(max_new_tokens=4, max_images=0))
    doc = Generator(tiny_model()).generate([request])[0]
    assert doc.timings["dtype"] == "fp32"
