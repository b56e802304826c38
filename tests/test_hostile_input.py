"""Hostile prompt files never crash or stall the check: each case an adversarial run found (numbers of 5,000
digits, nesting 100,000 deep, YAML alias bombs, lone surrogates, names too long for the file system, UTF-16, ...)
gets a one-line error naming file and line (and field), exit code 1 and nothing written; and a bounded, seeded
fuzz of all four readers gives only those errors, within a time bound per file. Also what such input did later:
steps past the schedule, Rich markup in messages."""
from __future__ import annotations

import json
import random
import signal
import time
from contextlib import contextmanager

import pytest
from click.testing import CliRunner

from dreamgen.cli import cli
from dreamgen.errors import ParamsError, PromptFileError
from dreamgen.ids import is_safe_id
from dreamgen.prompts.files import iter_prompt_file, validate_prompt_file

MODEL = "tiny-dreamllm"
BIG = "9" * 5000


def laughs_item() -> str:
    """One YAML item whose prompt is a billion "lol"s: nine levels of aliases, each nine of the one below."""
    levels = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    levels += [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    return "- prompt: [" + ", ".join(levels) + "]\n"


def merge_bomb() -> str:
    """Merge keys 20 levels deep, each level merging the one below twice."""
    lines = ["- &m0 {prompt: x}"] + [f"- &m{i} {{<<: [*m{i - 1}, *m{i - 1}], seed: {i}}}" for i in range(1, 21)]
    return "\n".join(lines) + "\n- {<<: *m20}\n"


HOSTILE = [
    # (name, content, line, field, words in the message)
    ("seed-digits.jsonl", f'{{"prompt": "a", "seed": {BIG}}}\n', 1, "seed", "a number of 5,000 digits"),
    ("seed-digits.csv", f"prompt,seed\na,{BIG}\n", 2, "seed", "a number of 5,000 digits"),
    ("seed-digits.yaml", f"- prompt: a\n  seed: {BIG}\n", 1, "seed", "a number of 5,000 digits"),
    ("prompt-digits.jsonl", f'{{"prompt": {BIG}}}\n', 1, "prompt", "must be a string, got a number of 5,000 digits"),
    ("deep.jsonl", '{"prompt": ' + "[" * 100_000 + "\n", 1, None, "nested too deeply"),
    ("deep.yaml", "- prompt: " + "[" * 5000 + "\n", 1, None, "nested more than 16 levels deep"),
    ("surrogate.jsonl", '{"prompt": "a\\ud800b"}\n', 1, "prompt", "holds \\ud800 at character 2"),
    ("surrogate-id.jsonl", '{"id": "x\\udfffy", "prompt": "a"}\n', 1, "id", "half of a surrogate pair"),
    ("surrogate-image.jsonl", '{"prompt": "a", "images": ["p\\ud800.png"]}\n', 1, "images", "entry 1 holds \\ud800"),
    ("surrogate-key.jsonl", '{"prompt": "a", "st\\ud800eps": 3}\n', 1, "st\\ud800eps", "unknown field"),
    ("surrogate.yaml", '- prompt: "a\\ud800b"\n', 1, "prompt", "half of a surrogate pair"),
    ("nul-escape.jsonl", '{"prompt": "a\\u0000b"}\n', 1, "prompt", "holds a NUL character"),
    ("long-template.jsonl", '{"prompt": "a", "template": "' + "t" * 300 + '"}\n', 1, "template",
     "unknown prompt template"),
    ("long-image.csv", "prompt,images\na," + "i" * 300 + "\n", 2, "images", "File name too long"),
    ("long-image.jsonl", '{"prompt": "a", "images": ["' + "d/" * 3000 + 'x.png"]}\n', 1, "images", "input image"),
    ("laughs.yaml", laughs_item(), 1, None, "more than 10,000 values once its aliases are expanded"),
    ("itself.yaml", "- &a [*a]\n", 1, None, "an alias refers to a collection that holds it"),
    ("long-scheduler.jsonl", '{"prompt": "a", "scheduler": "' + "e" * 5000 + '"}\n', 1, "scheduler",
     'must be one of ddpm, ddim, dpm-solver, got "eeee'),
    ("long-id-dup.jsonl", ('{"id": "' + "x" * 5000 + '", "prompt": "a"}\n') * 2, 2, "id", "duplicate id 'xxx"),
    ("utf16.txt", "hello there\nsecond line\n".encode("utf-16-le"), 1, None, "holds a NUL byte (column 2)"),
    ("utf16-bom.jsonl", '{"prompt": "a"}\n'.encode("utf-16"), 1, None, "is UTF-16"),
    ("nul.yaml", b"- prompt: a\x00b\n", 1, None, "holds a NUL byte"),
    ("long-line.txt", "x" * 300_000 + "\n", 1, None, "line is longer than 256 KiB"),
    ("long-value.yaml", "- prompt: " + "x" * 300_000 + "\n", 1, None, "a value longer than 256 KiB"),
    ("steps.jsonl", '{"prompt": "a", "steps": 1000}\n', 1, "steps", "integer in [1, 999], got 1000"),
    ("unfinished.jsonl", '{"id": "c", "prompt": \n', 1, None, "invalid JSON: Expecting value (column 23)"),
]


@pytest.mark.parametrize("name,content,line,field,words", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_each_hostile_file_is_one_line_exit_1_and_nothing_written(tmp_path, name, content, line, field, words):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = tmp_path / "out"
    started = time.monotonic()
    result = CliRunner().invoke(cli, ["run", str(path), "--out", str(out), "--job-id", "h"])
    assert time.monotonic() - started < 10
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)  # no traceback
    lines = result.output.splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith(f"Error: {path}:{line}:"), lines[0]
    if field:
        assert f"field '{field}'" in lines[0]
    assert words in lines[0]
    assert len(lines[0]) < 400  # a preview, never the whole value
    assert not out.exists()


def test_a_billion_laughs_spread_over_many_items_is_checked_in_bounded_time_and_memory(tmp_path):
    import tracemalloc

    path = tmp_path / "laughs.yaml"
    anchors = ["- &a0 [" + ", ".join(["lol"] * 9) + "]"]
    anchors += [f"- &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 10)]
    path.write_text("\n".join(anchors) + "\n- prompt: *a9\n- prompt: fine\n")
    tracemalloc.start()
    started = time.monotonic()
    try:
        with pytest.raises(PromptFileError) as caught:
            validate_prompt_file(path, None, MODEL)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.monotonic() - started < 5 and peak < 20_000_000
    lines = str(caught.value).splitlines()
    assert lines[-1] == f"{path}:11: more than 10,000 values once its aliases are expanded"


def test_merge_keys_nested_20_deep_are_checked_in_bounded_time(tmp_path):
    """PyYAML flattens each merge into its node as it builds it, so a chain of merges grows by one pair a level:
    read in milliseconds, and the last item, a copy of the one before, is named as such."""
    path = tmp_path / "merge.yaml"
    path.write_text(merge_bomb())
    started = time.monotonic()
    with pytest.raises(PromptFileError) as caught:
        validate_prompt_file(path, None, MODEL)
    assert time.monotonic() - started < 5
    assert str(caught.value).startswith(f"{path}:22: same prompt and parameters as line 21")


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("- &base {prompt: a fox, steps: 12, seed: 1}\n- {<<: *base, seed: 2}\n- {<<: *base, seed: 3, "
                    "prompt: a hen}\n")
    specs = list(iter_prompt_file(path, None, MODEL))
    assert [(s.prompt, s.params.steps, s.params.seed) for s in specs] == [("a fox", 12, 1), ("a fox", 12, 2),
                                                                           ("a hen", 12, 3)]


def test_big_but_ordinary_numbers_still_read(tmp_path):
    path = tmp_path / "p.csv"
    path.write_text(f"prompt,seed\na,{2**63 - 1}\n")
    (spec,) = iter_prompt_file(path, None, MODEL)
    assert spec.params.seed == 2**63 - 1


# ------------------------------------------------------------------------------------- the fuzz

FORMATS = {
    ".txt": "# topics\nA red fox in the snow\n\nHow to brew tea\n",
    ".jsonl": ('{"id": "fox", "prompt": "A red fox", "steps": 20, "seed": 3, "images": ["s3://b/k.png"]}\n'
               '{"custom_id": "r-2", "prompt": "Tea", "guidance": 5.5, "template": "howto"}\n{"prompt": "Hen"}\n'),
    ".csv": 'id,prompt,steps,guidance,images\nfox,A red fox,20,6.5,s3://b/k.png|s3://b/j.png\nb,"Two\nlines",,,\n',
    ".yaml": ("defaults:\n  steps: 12\nprompts:\n  - A red fox\n  - &t {prompt: Tea, seed: 4}\n"
              "  - {<<: *t, seed: 5}\n  - prompt: >-\n      folded\n      text\n    id: f\n"),
}
TOKENS = [BIG, "[" * 3000, "{" * 3000, '"\\ud800"', "\\ud800", "\\udc00", "\\u0000", "\x00", "\ufeff", "\r", "\r\n",
          "\t", '"', "'", ",", "|", ";", ":", "- ", "---\n", "&a ", "*a", "<<: ", "!!python/object:os.system ",
          "!!binary ", "%YAML 1.2\n", "? ", "#", "1e999", "NaN", "-0", "0x" + "f" * 40, "1:2:3:4:5:6:7:8:9",
          "2024-01-01", "true", "null", "~", "\\", "\\x", "\U0001f600", "\u202e", "../" * 50, "s3://", "s3://b/",
          "https://x/y.png", "x" * 400, "é", "\x85", "\u2028", '{"prompt": "a"}', "prompt", "steps", "images", "id"]
BYTES = [b"\xff", b"\xfe\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\xef\xbb\xbf", b"\x80"]
CASES_PER_FORMAT = 150
SECONDS_PER_FILE = 3.0  # a hang, not slowness: each file takes milliseconds


class Hang(Exception):
    pass


@contextmanager
def time_bound(seconds: float):
    def alarm(signum, frame):
        raise Hang(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


STRING_FIELDS = ["id", "custom_id", "prompt", "title", "negative_prompt", "scheduler", "template", "chat"]
NUMBER_FIELDS = ["seed", "steps", "guidance", "max_images", "max_new_tokens", "temperature", "top_p", "image_size"]
FIELDS = STRING_FIELDS + NUMBER_FIELDS + ["images", "stpes", "x"]
HOSTILE_STRINGS = ["a", "\\ud800", "\\udfff x", "\\u0000", "\\ud83d\\ude00", "ddim", "article", "x" * 300,
                   "../" * 40 + "p.png", "s3://b/[/x].png", "s3://b/" + "k" * 2000, "\\\\", "a\\nb",
                   "\\u202e", "CON", "..", "<script>", "\\u0085"]
HOSTILE_NUMBERS = ["0", "1", "7", "999", "1000", "2.5", "1e400", "-1e400", "NaN", "-0", "9223372036854775807",
                   "9223372036854775808", "-" + "1" * 40]


def hostile_value(rng: random.Random, field: str, depth: int = 0) -> str:
    """A value as JSON / YAML flow text writes it (both read these): mostly of the field's own type but hostile
    (escapes that are not text, numbers too long to convert), else anything (nesting, other types)."""
    if rng.random() < 0.6:
        if field in NUMBER_FIELDS:
            return rng.choice(HOSTILE_NUMBERS + ["9" * rng.choice([25, 31, 400, 5000])])
        if field == "images":
            return "[" + ", ".join(f'"{rng.choice(HOSTILE_STRINGS)}"' for _ in range(rng.randint(0, 2))) + "]"
        return f'"{rng.choice(HOSTILE_STRINGS)}"'
    choices = [lambda: "9" * rng.choice([5, 19, 25, 31, 400, 5000]), lambda: rng.choice(HOSTILE_NUMBERS + ["true"]),
               lambda: f'"{rng.choice(HOSTILE_STRINGS)}"', lambda: "null",
               lambda: "[" * rng.randint(1, 3000) + "]" * rng.randint(0, 3000)]
    if depth < 3:
        choices.append(lambda: "[" + ", ".join(hostile_value(rng, field, depth + 1) for _ in range(rng.randint(0, 3)))
                       + "]")
        choices.append(lambda: "{" + ", ".join(f'"{(k := rng.choice(FIELDS))}": {hostile_value(rng, k, depth + 1)}'
                                               for _ in range(rng.randint(0, 3))) + "}")
    return rng.choice(choices)()


def hostile_file(rng: random.Random, suffix: str) -> str:
    """A file of one or two items whose fields hold hostile values, in the format's own syntax."""
    items = []
    for i in range(rng.randint(1, 2)):
        item = {"prompt": f'"topic {i} {rng.random()}"'}
        for field in rng.sample(FIELDS[:-2], rng.randint(1, 2)):
            item[field] = hostile_value(rng, field)
        items.append(item)
    if suffix == ".jsonl":
        return "".join("{" + ", ".join(f'"{k}": {v}' for k, v in item.items()) + "}\n" for item in items)
    if suffix == ".yaml":
        return "".join("- {" + ", ".join(f'"{k}": {v}' for k, v in item.items()) + "}\n" for item in items)
    if suffix == ".csv":  # cells are text: the value without its JSON quotes
        columns = sorted({k for item in items for k in item})
        cell = lambda v: '"' + v.strip('"').replace('"', '""') + '"'  # noqa: E731
        return ",".join(columns) + "\n" + "".join(",".join(cell(item.get(c, "")) for c in columns) + "\n"
                                                  for item in items)
    return "".join(v.strip('"') + "\n" for item in items for v in item.values())


def mutate(rng: random.Random, text: str) -> bytes:
    """A few random edits of a valid file: hostile tokens, stray bytes, cut, doubled or dropped lines."""
    data = text
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        at = rng.randint(0, len(data))
        if kind < 0.5:
            data = data[:at] + rng.choice(TOKENS) + data[at:]
        elif kind < 0.65:
            data = data[:at] + data[at + rng.randint(1, 20):]
        elif kind < 0.8:
            lines = data.splitlines(keepends=True) or [""]
            line = rng.randrange(len(lines))
            lines.insert(line, lines[line] * rng.randint(2, 30))
            data = "".join(lines)
        else:
            data = data[:at] + rng.choice(["9" * rng.randint(20, 6000), "[" * rng.randint(10, 20000),
                                           "x" * rng.randint(100, 300_000)]) + data[at:]
    raw = data.encode("utf-8", "surrogatepass")
    if rng.random() < 0.25:
        at = rng.randint(0, len(raw))
        raw = raw[:at] + rng.choice(BYTES) + raw[at:]
    return raw


@pytest.mark.parametrize("suffix", sorted(FORMATS))
def test_fuzz_the_readers_no_traceback_no_hang_nothing_written(tmp_path, suffix):
    from dreamgen.distributed.chunks import spec_to_wire

    rng = random.Random(f"issue-16-{suffix}")  # fixed: the same files every run
    folder = tmp_path / "fuzz"
    folder.mkdir()
    outcomes = {"accepted": 0, "rejected": 0}
    for case in range(CASES_PER_FORMAT):
        path = folder / f"case{case}{suffix}"
        seed = FORMATS[suffix] if case % 2 else hostile_file(rng, suffix)
        path.write_bytes(mutate(rng, seed) if case % 3 else seed.encode("utf-8", "surrogatepass"))
        try:
            with time_bound(SECONDS_PER_FILE):
                try:
                    count = validate_prompt_file(path, None, MODEL)
                except (PromptFileError, ParamsError) as e:
                    message = str(e)
                    message.encode("utf-8")  # printable: no lone surrogates reach the terminal
                    assert all(len(line) < 1000 for line in message.splitlines()), message[:300]
                    outcomes["rejected"] += 1
                    continue
                specs = list(iter_prompt_file(path, None, MODEL))
        except Hang:
            pytest.fail(f"{suffix} case {case} hung: {path.read_bytes()[:200]!r}")
        except Exception as e:  # anything else is a traceback a user would see
            raise AssertionError(f"{suffix} case {case}: {type(e).__name__}: {e}\n{path.read_bytes()[:300]!r}")
        assert count == len(specs)
        for spec in specs:  # what was accepted can be stored: safe ids, text that encodes
            assert is_safe_id(spec.id)
            json.dumps(spec_to_wire(spec), ensure_ascii=False).encode("utf-8")
        outcomes["accepted"] += 1
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"case{i}{suffix}" for i in range(CASES_PER_FORMAT))
    assert list(tmp_path.iterdir()) == [folder]  # nothing written beside the inputs
    assert outcomes["accepted"] >= 15 and outcomes["rejected"] >= 30, outcomes  # the fuzz reaches both sides


# ------------------------------------------------------------------------------------- later in the job

def test_the_most_steps_accepted_paint_a_real_picture():
    """999 steps (what the schedule allows) give finite, non-blank pixels with dpm-solver, which at 1000 painted
    an all-zero PNG; one small picture with the tiny UNet, guidance off to keep it quick."""
    import numpy as np
    import torch

    from dreamgen.generation.diffusion import ImageRequest, denoise_group, max_steps
    from dreamgen.params import MAX_STEPS
    from tests.helpers import tiny_model

    head = tiny_model().head
    assert max_steps(head.scheduler_config) == MAX_STEPS == 999
    cond = torch.randn(8, head.unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(0))
    request = ImageRequest(cond=cond, uncond=cond, seed=1, steps=MAX_STEPS, guidance=0.0, scheduler="dpm-solver",
                           height=16, width=16)
    with torch.no_grad():
        pixels = denoise_group([request], lambda x, t, c: head.unet(x, t, encoder_hidden_states=c).sample,
                               lambda latents: head.vae.decode(latents / head.vae.config.scaling_factor).sample,
                               head.scheduler_config, head.unet.config.in_channels, head.vae_scale_factor, "cpu",
                               torch.float32)
    values = pixels.float().numpy()
    assert np.isfinite(values).all() and values.std() > 0.01


@pytest.mark.parametrize("name", ["ddpm", "ddim", "dpm-solver"])
def test_every_scheduler_walks_the_most_steps_accepted_and_not_one_more(name):
    """The schedule alone (as diffusers steps it), with a noise prediction of zeros: 999 steps end in finite
    latents; 1000 index past the schedule (ddpm, ddim) or end in NaN (dpm-solver), which is why 1000 is refused."""
    import torch

    from dreamgen.generation.diffusion import make_scheduler
    from dreamgen.params import MAX_STEPS
    from tests.helpers import tiny_model

    def walk(steps: int) -> torch.Tensor:
        scheduler = make_scheduler(name, tiny_model().head.scheduler_config)
        scheduler.set_timesteps(steps)
        latents = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(0))
        for t in scheduler.timesteps:
            latents = scheduler.step(torch.zeros_like(latents), t, latents, return_dict=False)[0]
        return latents

    assert torch.isfinite(walk(MAX_STEPS)).all()
    try:
        beyond = walk(MAX_STEPS + 1)
    except IndexError:
        return
    assert not torch.isfinite(beyond).all()


def test_a_schedule_shorter_than_the_steps_is_a_params_error_not_an_index_error():
    import torch

    from dreamgen.generation.diffusion import ImageRequest, denoise_group

    config = {"num_train_timesteps": 100, "steps_offset": 1, "beta_schedule": "scaled_linear"}
    request = ImageRequest(cond=torch.zeros(1, 4), uncond=torch.zeros(1, 4), seed=0, steps=150, guidance=0.0,
                           scheduler="ddim", height=8, width=8)
    with pytest.raises(ParamsError, match="steps=150: this model's noise schedule allows at most 99 steps"):
        denoise_group([request], None, None, config, 4, 8, "cpu", torch.float32)


def test_a_model_path_with_rich_markup_is_printed_as_it_is(tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a fox\n")
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "out"), "--model",
                                      str(tmp_path / "[/x]")])
    assert result.exit_code == 1, result.output
    assert "MarkupError" not in result.output and isinstance(result.exception, (SystemExit, type(None)))
    assert f"Error: no checkpoint directory at {tmp_path / '[/x]'}" in result.output


def test_a_failure_message_with_rich_markup_is_printed_as_it_is(tmp_path, installed_tiny, s3_endpoint, s3_bucket):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "pic", "prompt": "look at <image>", "images": [f"s3://{s3_bucket}/[/x].png"],
                                   "steps": 2, "max_new_tokens": 10}) + "\n"
                       + json.dumps({"id": "ok", "prompt": "a fox", "steps": 2, "max_new_tokens": 10}) + "\n")
    result = CliRunner().invoke(cli, ["run", str(prompts), "--out", str(tmp_path / "out"), "--job-id", "m",
                                      "--model", "tiny-random", "--s3-endpoint-url", s3_endpoint])
    # issue 33: a picture on S3 is looked at (its header) when the file is checked, so its absence is said then
    assert result.exit_code == 1, result.output
    assert f"input image s3://{s3_bucket}/[/x].png not found" in result.output  # as written, with its brackets
    assert not (tmp_path / "out").exists()


def test_an_undecodable_command_line_prompt_is_refused_by_generate(tmp_path):
    result = CliRunner().invoke(cli, ["generate", "caf\udce9", "--out", str(tmp_path / "g")])
    assert result.exit_code == 2 and "half of a surrogate pair" in result.output
    assert not (tmp_path / "g").exists()


def test_previews_stay_short_whatever_the_value():
    from dreamgen.errors import preview

    nested = []
    for _ in range(9):
        nested = [nested] * 9
    itself: list = []
    itself.append(itself)
    for value in (nested, itself, 10 ** 5000, "x" * 10**6, {"k" * 10**5: "v"}, b"\x00" * 10**6, "a\ud800\n\x00"):
        shown = preview(value)
        assert len(shown) <= 70 and shown.isprintable(), shown
        shown.encode("utf-8")
    assert preview(10 ** 5000) == "<an integer of about 5001 digits>"
