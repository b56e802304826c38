"""OpenAI Batch API files in, Batch API results out: lines written as OpenAI's clients write them, and results
read by a reader written against the Batch API's output shape, not against dreamgen's writer."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlparse
from urllib.request import url2pathname

import pytest
from click.testing import CliRunner
from PIL import Image

from dreamgen.cli import cli
from dreamgen.errors import PromptFileError, PromptFileProblems
from dreamgen.jobs.run import run_job
from dreamgen.jobs.spec import JobConfig
from dreamgen.prompts.files import iter_prompt_file, validate_prompt_file
from tests.helpers import tiny_generator

REPO = Path(__file__).resolve().parent.parent
MODEL = "tiny-random"


def batch_line(custom_id: str, body: dict, url: str = "/v1/chat/completions") -> str:
    """A request line as the Batch API guide writes them (compact JSON, the keys in its order)."""
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": url, "body": body},
                      separators=(",", ":")) + "\n"


def chat(*messages, **fields) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": r, "content": c} for r, c in messages], **fields}


# ------------------------------------------------------------------------------------- reading request lines

def test_batch_request_lines_become_prompts_with_their_parameters(tmp_path):
    picture = tmp_path / "cat.png"
    Image.new("RGB", (16, 16), (200, 100, 50)).save(picture)
    path = tmp_path / "batch.jsonl"
    path.write_text(
        batch_line("request-1", chat(("system", "You write for children."), ("user", "Write about a red circle"),
                                     max_tokens=200, temperature=0.7, top_p=0.9, seed=11))
        + batch_line("request-2", {"model": "gpt-3.5-turbo-instruct", "prompt": "Write about a blue square",
                                   "max_tokens": 64, "n": 1, "stream": False}, url="/v1/completions")
        + batch_line("request-3", {"model": "gpt-4o", "max_completion_tokens": 50, "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Describe this picture:"},
                                         {"type": "image_url", "image_url": {"url": "cat.png"}}]}]})
        + batch_line("request-4", chat(("user", "A howto"), steps=20, guidance=5.0, template="howto"))
        + json.dumps({"id": "own", "prompt": "dreamgen's own line, in the same file"}) + "\n")
    assert validate_prompt_file(path, {}, MODEL) == 5
    specs = list(iter_prompt_file(path, {"steps": 3}, MODEL))
    assert [s.custom_id for s in specs] == ["request-1", "request-2", "request-3", "request-4", "own"]
    first = specs[0]
    assert first.prompt == "You write for children.\n\nWrite about a red circle"
    assert (first.params.max_new_tokens, first.params.temperature, first.params.top_p, first.params.seed) == \
        (200, 0.7, 0.9, 11)
    assert first.params.steps == 3  # the job's defaults still apply where the line says nothing
    assert specs[1].prompt == "Write about a blue square" and specs[1].params.max_new_tokens == 64
    assert specs[2].prompt == "Describe this picture: <image>" and specs[2].images == [str(picture)]
    assert specs[2].params.max_new_tokens == 50
    assert (specs[3].params.steps, specs[3].params.guidance, specs[3].params.template) == (20, 5.0, "howto")


def test_every_bad_batch_line_is_named_at_once_with_its_field(tmp_path):
    path = tmp_path / "batch.jsonl"
    path.write_text(
        batch_line("a", chat(("user", "x"), frequency_penalty=0.5, logprobs=True, response_format={"type": "text"}))
        + batch_line("b", chat(("user", "x")), url="/v1/embeddings")
        + json.dumps({"custom_id": "c", "method": "GET", "url": "/v1/chat/completions", "body": chat(("user", "x"))})
        + "\n"
        + batch_line("d", chat(("user", "x"), ("assistant", "y"), ("user", "z")))
        + batch_line("e", chat(("user", "x"), max_tokens=0))
        + batch_line("f", chat(("user", "x"), n=3))
        + batch_line("g", chat(("system", "only a system message")))
        + batch_line("h", chat(("user", "x"), temperature="hot"))
        + json.dumps({"custom_id": "i", "method": "POST", "url": "/v1/chat/completions", "body": chat(("user", "x")),
                      "metadata": {}}) + "\n")
    with pytest.raises(PromptFileProblems) as caught:
        validate_prompt_file(path, {}, MODEL)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path}: 9 problems:"
    assert lines[1] == (f"{path}:1: field 'body': unknown field(s) 'frequency_penalty', 'logprobs', 'response_format': "
                        "dreamgen maps max_tokens, max_completion_tokens, temperature, top_p, seed, takes n = 1, "
                        "stream = false, model (not used: --model decides) and its own parameters")
    assert lines[2].startswith(f"{path}:2: field 'url': must be /v1/chat/completions or /v1/completions")
    assert lines[3] == f"{path}:3: field 'method': must be \"POST\", got 'GET'"
    assert lines[4].startswith(f"{path}:4: field 'body.messages[1]': role 'assistant': dreamgen writes one "
                               "document from one user message")
    assert lines[5] == f"{path}:5: field 'body.max_tokens': must be an integer in [1, 32768], got 0"
    assert lines[6].startswith(f"{path}:6: field 'body.n': must be 1")
    assert lines[7] == f"{path}:7: field 'body.messages': has no user message"
    assert lines[8] == f'{path}:8: field \'body.temperature\': must be a number in [0, 10], got "hot"'
    assert lines[9] == (f"{path}:9: unknown field(s) 'metadata' on a Batch API line; it has 'custom_id', 'method', "
                        "'url', 'body'")


def test_a_repeated_custom_id_is_caught_as_in_any_prompt_file(tmp_path):
    path = tmp_path / "batch.jsonl"
    path.write_text(batch_line("same", chat(("user", "x"))) + batch_line("same", chat(("user", "y"))))
    with pytest.raises(PromptFileError, match=r"batch.jsonl:2: field 'custom_id': duplicate id 'same'"):
        validate_prompt_file(path, {}, MODEL)


# ------------------------------------------------------------------------------------- writing results

class BatchOutputReader:
    """What a pipeline built for the Batch API does with an output file: every line is one request's outcome,
    keyed by custom_id; a success has response.status_code 200 and the text in choices[0]; a failure has error."""

    def __init__(self, path: Path):
        self.answers, self.errors = {}, {}
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = json.loads(raw)
            assert set(line) == {"id", "custom_id", "response", "error"}
            assert isinstance(line["id"], str) and isinstance(line["custom_id"], str)
            assert line["custom_id"] not in self.answers and line["custom_id"] not in self.errors
            if line["error"] is not None:
                assert line["response"] is None
                assert isinstance(line["error"]["code"], str) and isinstance(line["error"]["message"], str)
                self.errors[line["custom_id"]] = line["error"]
                continue
            response = line["response"]
            assert response["status_code"] == 200
            body = response["body"]
            assert body["object"] in ("chat.completion", "text_completion") and isinstance(body["created"], int)
            choice = body["choices"][0]
            assert choice["finish_reason"] in ("stop", "length") and isinstance(choice["text"], str)
            if body["object"] == "chat.completion":  # `text` too: what a /v1/completions reader takes
                assert choice["message"]["role"] == "assistant" and choice["text"] == choice["message"]["content"]
            else:  # as OpenAI answers /v1/completions: the text, no message
                assert set(choice) == {"index", "text", "finish_reason", "logprobs"}
            self.answers[line["custom_id"]] = body


def local_path(url: str) -> Path:
    parsed = urlparse(url)
    assert parsed.scheme == "file", url
    return Path(url2pathname(parsed.path))


def test_results_openai_writes_the_batch_api_output_shape(tmp_path):
    picture = tmp_path / "cat.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(picture)
    path = tmp_path / "batch.jsonl"
    path.write_text(batch_line("request-1", chat(("user", "Write about a red circle"), max_tokens=30, seed=1))
                    + batch_line("request-2", chat(("user", [{"type": "text", "text": "Describe"},
                                                             {"type": "image_url", "image_url": {"url": "cat.png"}}]),
                                                   max_tokens=30))
                    + json.dumps({"prompt": "a line without any id", "max_new_tokens": 30}) + "\n")

    def make(config):
        # spoilt after the check (its header still reads, its pixels do not): request-2 fails, reported as an error
        picture.write_bytes(picture.read_bytes()[:-500])
        return tiny_generator()

    summary = run_job(JobConfig(prompts=str(path), out=str(tmp_path / "out"), job_id="b1", defaults={"steps": 2},
                                results="openai"), make_generator=make)
    assert (summary.done, summary.failed) == (2, 1)
    job = tmp_path / "out" / "b1"
    reader = BatchOutputReader(job / "results.jsonl")
    manifest = [json.loads(line) for line in (job / "manifest.jsonl").read_text().splitlines()]
    unnamed = next(m["id"] for m in manifest if m["custom_id"] is None)
    assert set(reader.answers) == {"request-1", unnamed} and set(reader.errors) == {"request-2"}
    assert "input image" in reader.errors["request-2"]["message"]

    body = reader.answers["request-1"]
    document = json.loads((job / "request-1" / "document.json").read_text())
    assert body["dreamgen"]["document"]["id"] == document["id"] == "request-1"
    assert body["model"] == document["model"]
    content = body["choices"][0]["message"]["content"]
    for url in body["dreamgen"]["images"]:
        assert f"]({url})" in content  # the pictures, linked where they stand in the text
        assert local_path(url).read_bytes()[:4] == b"\x89PNG"
    assert local_path(body["dreamgen"]["page"]).name == "index.html"
    assert document["blocks"][0]["text"].strip()[:20] in content


def test_dreamgen_run_and_export_take_results_openai(tmp_path, installed_tiny):
    path = tmp_path / "batch.jsonl"
    path.write_text(batch_line("r1", chat(("user", "Write about a red circle"), max_tokens=20)))
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--job-id", "j", "--model", MODEL,
                                      "--steps", "2", "--results", "openai"])
    assert result.exit_code == 0, result.output
    assert set(BatchOutputReader(out / "j" / "results.jsonl").answers) == {"r1"}
    assert json.loads((out / "j" / "job.json").read_text())["results"] == "openai"
    (out / "j" / "results.jsonl").unlink()
    assert CliRunner().invoke(cli, ["export", str(out / "j")]).exit_code == 0  # as the job asked
    assert set(BatchOutputReader(out / "j" / "results.jsonl").answers) == {"r1"}


def test_each_line_is_answered_in_its_endpoints_shape(tmp_path):
    """A /v1/completions request gets a text_completion, a chat request a chat.completion (issue 34: both were
    chat.completion), through a local job and through a distributed chunk's wire form alike."""
    from dreamgen.distributed.chunks import spec_from_wire, spec_to_wire
    from dreamgen.prompts.files import iter_prompt_file

    path = tmp_path / "batch.jsonl"
    path.write_text(batch_line("chat", chat(("user", "Write about a red circle"), max_tokens=12))
                    + batch_line("plain", {"prompt": "Write about a red circle", "max_tokens": 12},
                                 url="/v1/completions")
                    + json.dumps({"id": "own", "prompt": "a dreamgen line", "max_new_tokens": 12}) + "\n")
    specs = list(iter_prompt_file(path, {}, MODEL))
    assert [s.request_url for s in specs] == ["/v1/chat/completions", "/v1/completions", None]
    assert [spec_from_wire(spec_to_wire(s)).request_url for s in specs] == [s.request_url for s in specs]
    assert "request_url" not in spec_to_wire(specs[2])  # a dreamgen line's wire form is as before

    run_job(JobConfig(prompts=str(path), out=str(tmp_path / "out"), job_id="b2", defaults={"steps": 2},
                      results="openai"), make_generator=lambda config: tiny_generator())
    answers = BatchOutputReader(tmp_path / "out" / "b2" / "results.jsonl").answers
    assert {k: body["object"] for k, body in answers.items()} == {
        "chat": "chat.completion", "plain": "text_completion", "own": "chat.completion"}
    assert "message" not in answers["plain"]["choices"][0] and answers["plain"]["choices"][0]["text"].strip()
    stored = json.loads((tmp_path / "out" / "b2" / "plain" / "document.json").read_text())
    assert stored["request_url"] == "/v1/completions"  # so `dreamgen export --results openai` answers alike
    assert "request_url" not in json.loads((tmp_path / "out" / "b2" / "own" / "document.json").read_text())


def test_the_example_batch_file_is_valid():
    assert validate_prompt_file(REPO / "examples" / "openai-batch.jsonl", {}, "shapes") >= 2
