"""Ids: document ids stable and sensitive to what makes a document; user ids always safe path parts."""
from __future__ import annotations

import random
import re
import string
from datetime import datetime, timezone

import pytest

from dreamgen.errors import ParamsError
from dreamgen.ids import (MAX_ID_LENGTH, NEWER_PARAMS, check_job_id, document_id, is_safe_id, new_job_id,
                          safe_document_id)
from dreamgen.params import DREAMGEN_DEFAULTS, GenerationParams

NASTY = [
    "", ".", "..", "...", "../x", "../../etc/passwd", "a/../b", "a/b", "/abs", "a\\b", "C:\\x", "..\\..\\w",
    "\x00", "a\x00b", "tab\there", "new\nline", "\x1b[31mred", "\x7f", " lead", "trail ", "trail.", ".hidden",
    "-dash", "_under", "CON", "con", "Con.txt", "nul.json", "LPT1", "com9.md", "index.html", "job.json",
    "MANIFEST.JSONL", "errors.jsonl", "_done", "_failed", "ça va", "日本語", "emoji 🎨", "\u202eevil", "a" * 101,
    "a" * 500, "%2e%2e%2f", "a:b", "a*b?", "<tag>", '"quoted"', "a..b", "..a", "a.", "\ud800",
]


def test_document_id_is_stable_short_hex_and_known():
    params = GenerationParams(seed=1, steps=20)
    first = document_id("tiny", "A fox", params, ["sha256:abc"], title="Foxes")
    assert re.fullmatch(r"[0-9a-f]{16}", first)
    assert first == document_id("tiny", "A fox", GenerationParams(steps=20, seed=1), ["sha256:abc"], title="Foxes")
    # A fixed value: changing how ids are computed would orphan every stored job, so it must be deliberate.
    assert document_id("tiny", "A fox", GenerationParams()) == document_id("tiny", "A fox", GenerationParams(), [])
    # Changed once, deliberately, on 2026-12-06: an unset guidance became "the model's own" (None, not 7.5),
    # which another model may set otherwise, so it is no longer the document an explicit 7.5 makes. Changed again
    # on 2026-12-07 for the same reason: steps, scheduler, temperature, top_p and max_new_tokens unset became the
    # model's own (issue 30: the released checkpoints paint with 150 steps, dreamgen's models with 50).
    assert document_id("tiny", "A fox", GenerationParams()) == "091c077fdb891680"
    # the old defaults, all named: the document they made keeps its id
    named = {k: v for k, v in DREAMGEN_DEFAULTS.to_dict().items() if k not in NEWER_PARAMS}
    assert document_id("tiny", "A fox", GenerationParams(**named)) == "f378483cc4572efb"
    # An unset cache interval (the model's own since issue 32: the shapes model paints with 2) hashes as before
    # the parameter existed; an explicit 1 is another document where the model's own is not 1.
    assert document_id("tiny", "A fox", GenerationParams(cache_interval=1)) != "091c077fdb891680"
    assert document_id("tiny", "A fox", GenerationParams(cache_interval=2)) != \
        document_id("tiny", "A fox", GenerationParams(cache_interval=1))
    # so do cache_until and guidance_until (issue 32), and 1 and 1.0 are the same document
    for name in ("cache_until", "guidance_until"):
        ids = {document_id("tiny", "A fox", GenerationParams(**{name: value})) for value in (0.5, 1, 1.0)}
        assert len(ids) == 2 and "091c077fdb891680" not in ids, name


def test_document_id_changes_with_everything_that_makes_the_document():
    base = dict(model_id="tiny", prompt="A fox", params=GenerationParams(), images=[], title=None)
    ids = {document_id(**base)}
    for change in [{"model_id": "big"}, {"prompt": "A fox."}, {"params": GenerationParams(seed=1)},
                   {"params": GenerationParams(guidance=7.0001)}, {"params": GenerationParams(guidance=7.5)},
                   {"params": GenerationParams(template="news")},
                   {"images": ["s3://b/k.png"]}, {"title": "Foxes"}]:
        ids.add(document_id(**{**base, **change}))
    assert len(ids) == 9


def test_document_id_treats_equal_numbers_alike():
    assert document_id("m", "p", GenerationParams(guidance=7)) == document_id("m", "p", GenerationParams(guidance=7.0))


@pytest.mark.parametrize("user_id", ["fox", "doc-001", "A.b_c-1", "x" * MAX_ID_LENGTH, "req_42.v2"])
def test_safe_user_ids_stay_as_written(user_id):
    assert is_safe_id(user_id)
    assert safe_document_id(user_id) == user_id


def _check_safe(result: str) -> None:
    assert is_safe_id(result), result
    assert 0 < len(result) <= MAX_ID_LENGTH
    assert "/" not in result and "\\" not in result and ".." not in result
    assert not result.startswith((".", "_", "-")) and not result.endswith(".")
    assert all(ch in string.ascii_letters + string.digits + "._-" for ch in result)
    assert result.lower().split(".")[0] not in {"con", "prn", "aux", "nul", "com1", "lpt1"}


@pytest.mark.parametrize("user_id", NASTY, ids=range(len(NASTY)))
def test_nasty_user_ids_become_safe(user_id):
    result = safe_document_id(user_id)
    _check_safe(result)
    assert result != user_id
    assert safe_document_id(user_id) == result  # deterministic


def test_different_unsafe_ids_never_collide():
    results = {safe_document_id(u) for u in NASTY}
    assert len(results) == len(set(NASTY))
    # same slug, different originals
    assert safe_document_id("a/b") != safe_document_id("a\\b") != safe_document_id("a b")


def test_random_strings_property():
    rng = random.Random(1234)
    alphabet = string.printable + "/\\..\x00\x01\u00e9\u4e2d\U0001f600\u202e"
    seen = {}
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 140)))
        result = safe_document_id(text)
        _check_safe(result)
        if is_safe_id(text):
            assert result == text
        assert seen.setdefault(result, text) == text, f"{text!r} and {seen[result]!r} both became {result!r}"


def test_new_job_ids_are_safe_and_sort_by_time():
    job = new_job_id()
    assert re.fullmatch(r"job-\d{8}-\d{6}-[0-9a-f]{6}", job)
    assert check_job_id(job) == job
    earlier = new_job_id(datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc))
    later = new_job_id(datetime(2026, 11, 28, 5, 37, 57, tzinfo=timezone.utc))
    assert earlier.startswith("job-20260102-030405-") and earlier < later
    assert len({new_job_id() for _ in range(50)}) == 50


@pytest.mark.parametrize("job_id", ["../x", "a/b", "", ".hidden", "x" * 101, "con", "a b", "job\n1", "_done"])
def test_unsafe_job_ids_are_refused_with_the_reason(job_id):
    with pytest.raises(ParamsError) as caught:
        check_job_id(job_id)
    assert repr(job_id) in str(caught.value) and "not usable as a folder name" in str(caught.value)
