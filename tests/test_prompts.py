"""Prompt files: every format, defaults vs per-line values, every class of bad input, streaming."""
from __future__ import annotations

import json
import tracemalloc
from itertools import islice
from pathlib import Path

import pytest
from PIL import Image

from dreamgen.errors import ParamsError, PromptFileError, PromptFileProblems
from dreamgen.ids import derived_seed
from dreamgen.params import GenerationParams
from dreamgen.prompts import templates as prompt_templates
from dreamgen.prompts.files import MAX_REPORTED_PROBLEMS, iter_prompt_file, validate_prompt_file

MODEL = "tiny-dreamllm"


def write(folder: Path, name: str, content: str | bytes) -> Path:
    path = folder / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    return path


def specs(path: Path, defaults=None):
    validate_prompt_file(path, defaults, MODEL)
    return list(iter_prompt_file(path, defaults, MODEL))


def error_of(path: Path, defaults=None) -> PromptFileError:
    with pytest.raises(PromptFileError) as caught:
        validate_prompt_file(path, defaults, MODEL)
    return caught.value


@pytest.fixture
def picture(tmp_path) -> Path:
    (tmp_path / "pics").mkdir()
    path = tmp_path / "pics" / "cat.png"
    Image.new("RGB", (8, 8), "orange").save(path)
    return path


# ------------------------------------------------------------------------------------- prompt templates

def test_templates_wrap_a_topic_and_none_keeps_it():
    assert prompt_templates.available()[0] == "none"
    assert {"article", "howto", "news"} <= set(prompt_templates.available())
    assert prompt_templates.render("none", "tea {x}") == "tea {x}"
    for name in ("article", "howto", "news"):
        text = prompt_templates.render(name, "brewing tea {with braces}")
        assert "brewing tea {with braces}" in text and "{topic}" not in text and len(text) > 60


@pytest.mark.parametrize("name", ["essay", "../prompts/article", "", "ARTICLE"])
def test_unknown_template_names_it_and_lists_the_available(name):
    with pytest.raises(ParamsError) as caught:
        prompt_templates.render(name, "tea")
    assert repr(name) in str(caught.value)
    assert "available: none, article, howto, news" in str(caught.value)


# ------------------------------------------------------------------------------------- formats

def test_txt_skips_blank_lines_and_comments_and_numbers_lines(tmp_path):
    path = write(tmp_path, "p.txt", "\ufeff# my prompts\n\nA red fox\r\n   \n  # indented comment\nA lighthouse  \n")
    found = specs(path)
    assert [(s.line, s.prompt) for s in found] == [(3, "A red fox"), (6, "A lighthouse")]
    assert all(s.custom_id is None and len(s.id) == 16 for s in found)
    # no seed given: each document's comes from its id, so two documents never start from the same noise
    assert found[0].params == GenerationParams(seed=derived_seed(found[0].id))
    assert found[0].params.seed != found[1].params.seed


def test_jsonl_reads_ids_params_and_images(tmp_path, picture):
    lines = [
        {"id": "fox", "prompt": "A red fox", "title": "Foxes", "steps": 20, "guidance": 5, "seed": 3,
         "max_images": 2, "max_new_tokens": 128, "temperature": 0.7, "top_p": 0.9, "negative_prompt": "blurry",
         "image_size": 256, "scheduler": "ddim", "template": "article", "images": ["pics/cat.png"]},
        {"custom_id": "request-2", "prompt": "A lighthouse", "images": ["s3://bucket/in/light.png"]},
        {"prompt": "No id here", "title": None},
    ]
    path = write(tmp_path, "p.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n\n")
    fox, light, plain = specs(path)
    assert (fox.line, fox.id, fox.custom_id, fox.title) == (1, "fox", "fox", "Foxes")
    assert fox.params == GenerationParams(steps=20, guidance=5, seed=3, max_images=2, max_new_tokens=128,
                                          temperature=0.7, top_p=0.9, negative_prompt="blurry", image_size=256,
                                          scheduler="ddim", template="article")
    assert fox.images == [str(picture.resolve())]
    assert (light.id, light.custom_id, light.images) == ("request-2", "request-2", ["s3://bucket/in/light.png"])
    assert plain.custom_id is None and plain.title is None and len(plain.id) == 16


def test_csv_reads_typed_cells_image_lists_and_quoted_multiline_cells(tmp_path, picture):
    content = ("id,prompt,steps,guidance,images,image_size\n"
               "a,A red fox,20,6.5,pics/cat.png|s3://b/k.png,\n"
               "\n"
               'b,"A poem\nover two lines",,,pics/cat.png; s3://b/x.png,512\n'
               "c,A lighthouse\n")
    found = specs(write(tmp_path, "p.csv", content))
    assert [(s.line, s.id) for s in found] == [(2, "a"), (4, "b"), (6, "c")]
    a, b, c = found
    assert (a.params.steps, a.params.guidance, a.params.image_size) == (20, 6.5, None)
    assert a.images == [str(picture.resolve()), "s3://b/k.png"]
    assert b.prompt == "A poem\nover two lines" and b.params.steps is None and b.params.image_size == 512  # unset: the model's own
    assert b.images == [str(picture.resolve()), "s3://b/x.png"]
    assert c.images == []


def test_yaml_list_of_strings_and_mappings(tmp_path):
    content = "# prompts\n- A red fox\n- prompt: A lighthouse\n  id: light\n  steps: 10\n- >-\n  A folded\n  prompt\n"
    found = specs(write(tmp_path, "p.yaml", content))
    assert [(s.line, s.prompt, s.custom_id) for s in found] == [
        (2, "A red fox", None), (3, "A lighthouse", "light"), (6, "A folded prompt", None)]
    assert found[1].params.steps == 10


def test_yaml_defaults_then_prompts(tmp_path):
    content = ("defaults:\n  steps: 12\n  template: howto\n"
               "prompts:\n  - Bake bread\n  - prompt: Fix a bike\n    steps: 30\n")
    bread, bike = specs(write(tmp_path, "p.yml", content))
    assert (bread.params.steps, bread.params.template) == (12, "howto")
    assert (bike.params.steps, bike.params.template, bike.line) == (30, "howto", 6)


def test_precedence_job_defaults_then_file_defaults_then_item(tmp_path):
    job_defaults = {"steps": 5, "seed": 9, "guidance": 3.0, "template": "news", "image_size": None}
    content = "defaults:\n  steps: 7\nprompts:\n  - A\n  - prompt: B\n    steps: 8\n    seed: 1\n"
    a, b = specs(write(tmp_path, "p.yaml", content), job_defaults)
    assert (a.params.steps, a.params.seed, a.params.guidance, a.params.template) == (7, 9, 3.0, "news")
    assert (b.params.steps, b.params.seed, b.params.guidance) == (8, 1, 3.0)
    one, two = specs(write(tmp_path, "p.jsonl", '{"prompt": "A"}\n{"prompt": "B", "steps": 40}\n'), job_defaults)
    assert (one.params.steps, two.params.steps, two.params.seed) == (5, 40, 9)


def test_derived_ids_are_stable_and_depend_on_what_makes_the_document(tmp_path, picture):
    path = write(tmp_path, "p.jsonl", '{"prompt": "A"}\n{"prompt": "A", "seed": 1}\n'
                                      '{"prompt": "A", "images": ["pics/cat.png"]}\n')
    first = [s.id for s in specs(path)]
    assert first == [s.id for s in specs(path)]  # same file, same ids
    assert len(set(first)) == 3
    other_model = [s.id for s in iter_prompt_file(path, None, "another-model")]
    assert not set(first) & set(other_model)
    # the input picture is identified by content: a changed picture is a different document
    Image.new("RGB", (8, 8), "blue").save(picture)
    assert [s.id for s in specs(path)][2] != first[2]


def test_validate_counts_and_the_iterator_yields_the_same(tmp_path):
    path = write(tmp_path, "p.txt", "".join(f"prompt {i}\n" for i in range(25)))
    assert validate_prompt_file(path, None, MODEL) == 25
    assert len(list(iter_prompt_file(path, None, MODEL))) == 25


# ------------------------------------------------------------------------------------- bad input

BAD_FILES = [
    # (name, content, line, field, words in the reason)
    ("unknown-field.jsonl", '{"prompt": "a"}\n{"prompt": "b", "stpes": 3}\n', 2, "stpes", "did you mean 'steps'"),
    ("wrong-type.jsonl", '{"prompt": "a", "steps": "ten"}\n', 1, "steps", 'must be an integer, got "ten"'),
    ("bool-as-int.jsonl", '{"prompt": "a", "seed": true}\n', 1, "seed", "must be an integer, got true (a boolean)"),
    ("bool-as-number.jsonl", '{"prompt": "a", "guidance": false}\n', 1, "guidance", "must be a number"),
    ("float-as-int.jsonl", '{"prompt": "a", "steps": 2.5}\n', 1, "steps", "must be an integer, got 2.5"),
    ("string-as-list.jsonl", '{"prompt": "a", "images": "x.png"}\n', 1, "images", "must be a list"),
    ("number-as-id.jsonl", '{"id": 12, "prompt": "a"}\n', 1, "id", "must be a string, got 12 (a number)"),
    ("steps-range.jsonl", '{"prompt": "a", "steps": 0}\n', 1, "steps", "integer in [1, 999], got 0"),
    ("guidance-range.jsonl", '{"prompt": "a"}\n{"prompt": "b", "guidance": 99}\n', 2, "guidance", "[0, 50]"),
    ("top-p-range.jsonl", '{"prompt": "a", "top_p": 0}\n', 1, "top_p", "(0, 1]"),
    ("scheduler.jsonl", '{"prompt": "a", "scheduler": "euler"}\n', 1, "scheduler", "must be one of"),
    ("size-vae.jsonl", '{"prompt": "a", "image_size": 500}\n', 1, "image_size", "multiple of 8"),
    ("template.jsonl", '{"prompt": "a", "template": "sonnet"}\n', 1, "template", "unknown prompt template 'sonnet'"),
    ("dup-id.jsonl", '{"id": "x", "prompt": "a"}\n{"prompt": "b"}\n{"id": "x", "prompt": "c"}\n', 3, "id",
     "duplicate id 'x': line 1 has the same id"),
    ("dup-custom.jsonl", '{"custom_id": "r1", "prompt": "a"}\n{"custom_id": "r1", "prompt": "b"}\n', 2, "custom_id",
     "line 1"),
    ("dup-case.jsonl", '{"id": "Intro", "prompt": "a"}\n{"id": "intro", "prompt": "b"}\n', 2, "id",
     "'Intro' on line 1 differ only in case"),
    ("dup-derived.txt", "same\nother\nsame\n", 3, None, "same prompt and parameters as line 1"),
    ("both-ids.jsonl", '{"id": "a", "custom_id": "b", "prompt": "a"}\n', 1, "custom_id", "not both"),
    ("empty-id.jsonl", '{"id": "  ", "prompt": "a"}\n', 1, "id", "is empty"),
    ("empty-prompt.jsonl", '{"prompt": "a"}\n{"prompt": "   "}\n', 2, "prompt", "is empty"),
    ("missing-prompt.jsonl", '{"id": "a"}\n', 1, "prompt", "is missing"),
    ("invalid.jsonl", '{"prompt": "a"}\n{"prompt": "b",}\n', 2, None, "invalid JSON"),
    ("not-object.jsonl", '["a prompt"]\n', 1, None, "must be a JSON object"),
    ("repeated-key.jsonl", '{"prompt": "a", "steps": 1, "steps": 2}\n', 1, "steps", "appears twice"),
    ("no-image.jsonl", '{"prompt": "a", "images": ["missing.png"]}\n', 1, "images", "input image not found"),
    ("not-image.jsonl", '{"prompt": "a", "images": ["not-image.jsonl"]}\n', 1, "images", "not an image file"),
    ("http-image.jsonl", '{"prompt": "a", "images": ["https://x/y.png"]}\n', 1, "images", "unsupported URL"),
    ("s3-no-key.jsonl", '{"prompt": "a", "images": ["s3://bucket"]}\n', 1, "images", "needs a bucket and a key"),
    ("unknown-column.csv", "prompt,steps,colour\na,1,red\n", 1, "colour", "unknown column"),
    ("twice-column.csv", "prompt,steps,steps\na,1,2\n", 1, "steps", "names this column twice"),
    ("no-prompt-column.csv", "id,steps\na,1\n", 1, None, "no 'prompt' column"),
    ("csv-type.csv", "prompt,steps\na,20\nb,ten\n", 3, "steps", 'must be an integer, got "ten"'),
    ("csv-bool.csv", "prompt,guidance\na,true\n", 2, "guidance", "must be a number"),
    ("csv-cells.csv", "prompt,steps\na,20\nb,1,2\n", 3, None, "3 cells but the header has 2"),
    ("yaml-syntax.yaml", "- a\n- prompt: [unclosed\n", 3, None, "invalid YAML"),
    ("yaml-scalar.yaml", "just a string\n", 1, None, "a list of prompts, or a mapping"),
    ("yaml-top-key.yaml", "defaults: {steps: 2}\nprompt:\n  - a\n", 2, None, "unknown top-level key 'prompt'"),
    ("yaml-order.yaml", "prompts:\n  - a\ndefaults:\n  steps: 3\n", 3, None, "must come before"),
    ("yaml-item.yaml", "- a\n- [1, 2]\n", 2, None, "a prompt string or a mapping"),
    ("yaml-dup-key.yaml", "- prompt: a\n  steps: 1\n  steps: 2\n", 3, "steps", "appears twice"),
    ("yaml-default-range.yaml", "defaults:\n  steps: 0\nprompts:\n  - a\n", 1, "steps", "[1, 999]"),
    ("yaml-default-unknown.yaml", "defaults:\n  title: x\nprompts:\n  - a\n", 1, "title", "unknown default"),
    ("yaml-date.yaml", "- prompt: a\n  seed: 2024-01-01\n", 1, "seed", "must be an integer"),
    ("yaml-id-number.yaml", "- prompt: a\n  id: 007\n", 1, "id", "must be a string"),
]


@pytest.mark.parametrize("name,content,line,field,reason", BAD_FILES, ids=[b[0] for b in BAD_FILES])
def test_bad_files_name_file_line_field_and_reason(tmp_path, name, content, line, field, reason):
    path = write(tmp_path, name, content)
    error = error_of(path)
    message = str(error)
    assert message.startswith(f"{path}:{line}:"), message
    assert (error.line, error.field) == (line, field)
    if field:
        assert f"field '{field}'" in message
    assert reason in message


@pytest.mark.parametrize("name,content", [
    ("empty.txt", ""), ("comments.txt", "# nothing yet\n\n"), ("empty.jsonl", "\n\n"),
    ("header-only.csv", "id,prompt\n"), ("empty.yaml", "# nothing\n"), ("empty-list.yaml", "[]\n"),
    ("no-prompts.yaml", "defaults:\n  steps: 3\n"),
])
def test_a_file_without_prompts_is_rejected(tmp_path, name, content):
    error = error_of(write(tmp_path, name, content))
    assert str(error) == f"{tmp_path / name}: no prompts in the file"


@pytest.mark.parametrize("name", ["p.txt", "p.jsonl", "p.csv", "p.yaml"])
def test_undecodable_bytes_name_the_line(tmp_path, name):
    good = {"p.txt": b"a fox\n", "p.jsonl": b'{"prompt": "a fox"}\n', "p.csv": b"prompt\na fox\n",
            "p.yaml": b"- a fox\n"}[name]
    bad = {"p.txt": b"caf\xe9\n", "p.jsonl": b'{"prompt": "caf\xe9"}\n', "p.csv": b"caf\xe9\n",
           "p.yaml": b"- caf\xe9\n"}[name]
    error = error_of(write(tmp_path, name, good + bad))
    expected_line = len(good.splitlines()) + 1
    assert error.line == expected_line
    assert "not valid UTF-8 (byte 0xe9" in str(error) and f"{name}:{expected_line}:" in str(error)


@pytest.mark.parametrize("name,hint", [("p.json", ".jsonl"), ("p.docx", ".txt"), ("prompts", "(none)")])
def test_unsupported_extension(tmp_path, name, hint):
    error = error_of(write(tmp_path, name, "a fox\n"))
    assert "unsupported extension" in str(error) and hint in str(error)


def test_missing_file_and_directory(tmp_path):
    assert "no such file" in str(error_of(tmp_path / "nope.txt"))
    (tmp_path / "dir.txt").mkdir()
    assert "is a directory" in str(error_of(tmp_path / "dir.txt"))


def test_every_bad_prompt_of_a_file_is_reported_at_once_in_file_order(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"id": "a", "prompt": "fine"}\n{"prompt": "b", "steps": 0}\nnot json\n'
                                      '{"prompt": "ok too"}\n["a list"]\n{"id": "a", "prompt": "c"}\n')
    error = error_of(path)
    assert isinstance(error, PromptFileProblems)
    assert [(p.line, p.field) for p in error.problems] == [(2, "steps"), (3, None), (5, None), (6, "id")]
    assert (error.line, error.field) == (2, "steps")  # the first, for callers that name one place
    lines = str(error).splitlines()
    assert lines[0] == f"{path}: 4 problems:"
    assert lines[1:] == [str(p) for p in error.problems]
    assert lines[2] == f"{path}:3: invalid JSON: Expecting value (column 1)"
    with pytest.raises(PromptFileError) as caught:  # running without validating stops at the first
        list(iter_prompt_file(path, None, MODEL))
    assert str(caught.value) == lines[1]


def test_csv_rows_after_a_bad_row_are_still_checked(tmp_path):
    path = write(tmp_path, "p.csv", "prompt,steps\na,20\nb,ten\nc,1,2\nd,0\n")
    error = error_of(path)
    assert [(p.line, p.field) for p in error.problems] == [(3, "steps"), (4, None), (5, "steps")]


def test_yaml_items_after_a_bad_item_are_still_checked(tmp_path):
    path = write(tmp_path, "p.yaml", "- a\n- [1, 2]\n- prompt: b\n  steps: 1\n  steps: 2\n- prompt: c\n  seed: x\n- d\n")
    error = error_of(path)
    assert [(p.line, p.field) for p in error.problems] == [(2, None), (5, "steps"), (6, "seed")]


def test_a_problem_that_stops_the_reading_ends_the_list(tmp_path):
    path = write(tmp_path, "p.jsonl", b'{"prompt": "a", "steps": 0}\n{"prompt": "caf\xe9"}\n{"prompt": "b", "seed": "x"}\n')
    error = error_of(path)
    assert [p.line for p in error.problems] == [1, 2]
    assert "not valid UTF-8" in str(error.problems[1])


def test_a_file_bad_on_every_line_lists_the_first_ones_and_says_there_are_more(tmp_path):
    path = write(tmp_path, "p.jsonl", "".join(f'{{"prompt": "p{i}", "steps": 0}}\n' for i in range(MAX_REPORTED_PROBLEMS + 5)))
    error = error_of(path)
    assert [p.line for p in error.problems] == list(range(1, MAX_REPORTED_PROBLEMS + 1))
    assert str(error).splitlines()[0] == (f"{path}: more than {MAX_REPORTED_PROBLEMS} problems; "
                                          f"the first {MAX_REPORTED_PROBLEMS}:")


@pytest.mark.parametrize("defaults,words", [
    ({"stepz": 3}, "unknown default parameter 'stepz'"),
    ({"steps": "3"}, "must be an integer"),
    ({"steps": 0}, "steps=0"),
    ({"image_size": 100}, "multiple of 8"),
    ({"template": "limerick"}, "unknown prompt template 'limerick'"),
])
def test_bad_job_defaults_are_params_errors(tmp_path, defaults, words):
    path = write(tmp_path, "p.txt", "a fox\n")
    with pytest.raises(ParamsError) as caught:
        validate_prompt_file(path, defaults, MODEL)
    assert words in str(caught.value)


def test_none_in_job_defaults_means_not_given(tmp_path):
    (spec,) = specs(write(tmp_path, "p.txt", "a fox\n"), {"steps": None, "seed": 4})
    assert (spec.params.steps, spec.params.seed) == (None, 4)  # unset: the model's own


def test_unsafe_user_ids_become_safe_and_keep_what_the_user_wrote(tmp_path):
    path = write(tmp_path, "p.jsonl", '{"id": "../../etc/passwd", "prompt": "a"}\n{"id": "a/b", "prompt": "b"}\n')
    first, second = specs(path)
    assert first.custom_id == "../../etc/passwd" and "/" not in first.id and ".." not in first.id
    assert second.custom_id == "a/b" and second.id.startswith("a-b-")


# ------------------------------------------------------------------------------------- streaming

def test_a_100k_line_file_streams(tmp_path):
    path = tmp_path / "big.jsonl"
    filler = "lorem ipsum " * 30
    with open(path, "w", encoding="utf-8") as f:
        for i in range(100_000):
            f.write(json.dumps({"prompt": f"{i} {filler}", "seed": i % 1000}) + "\n")
    size = path.stat().st_size
    assert size > 35_000_000

    # The first 2,000 specs under tracemalloc (tracing all 100,000 would take a while): reading must
    # not have pulled in the file, whose size dwarfs what a few lines need.
    tracemalloc.start()
    try:
        count, last = 0, None
        for last in islice(iter_prompt_file(path, None, MODEL), 2_000):
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 2_000 and last.line == 2_000
    assert peak < size / 50, f"peak {peak:,} bytes reading a {size:,}-byte file"

    assert validate_prompt_file(path, None, MODEL) == 100_000
