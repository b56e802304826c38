"""Input pictures as a hostile party makes them (issue 33): a decompression bomb, a picture far too large, one
spoilt after validation. Each is one clear error naming the picture, at validation when it can be seen there
(from the header alone, local or on S3), else the failure of its document alone; every document taken ends."""
from __future__ import annotations

import io
import json
import struct
import threading
import zlib
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from dreamgen.cli import cli
from dreamgen import pictures
from dreamgen.errors import InputImageError, PromptFileError
from dreamgen.jobs.inputs import read_input_image
from dreamgen.jobs.run import load_input_image, run_job
from dreamgen.jobs.spec import JobConfig, s3_header_reader
from dreamgen.prompts.files import validate_prompt_file
from tests.helpers import tiny_generator

FAST = {"steps": 2, "max_new_tokens": 20}


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, padding: int = 0) -> bytes:
    """A small PNG whose header says width x height (what a bomb's header says; its pixel data is a stub, which
    nothing that reads only the header notices), `padding` bytes longer (in its pixel data, after the header)."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64) + b"\0" * padding) + _chunk(b"IEND", b""))


def write_prompts(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def test_a_bomb_and_an_oversized_picture_are_rejected_at_validation_naming_them(tmp_path):
    (tmp_path / "bomb.png").write_bytes(png_claiming(20000, 20000))  # Pillow's DecompressionBombError
    (tmp_path / "big.png").write_bytes(png_claiming(12000, 12000))  # below Pillow's limit, 576 MB as float32
    (tmp_path / "fine.png").write_bytes(png_claiming(4000, 3000))
    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"prompt": "look <image>", "images": ["fine.png"]},
        {"prompt": "look <image>", "images": ["bomb.png"]},
        {"prompt": "look <image>", "images": ["big.png"]}])
    with pytest.raises(PromptFileError) as caught:
        validate_prompt_file(prompts, {}, "tiny-random")
    problems = {p.line: p for p in caught.value.problems}
    assert sorted(problems) == [2, 3]
    assert str(tmp_path / "bomb.png") in str(problems[2]) and "decompression bomb" in str(problems[2])
    assert problems[2].field == "images"
    assert f"{tmp_path / 'big.png'} is 12000x12000 pixels, over the limit of 50,000,000" in str(problems[3])


@pytest.mark.parametrize("command", ["run", "generate", "submit"])
def test_commands_refuse_a_bomb_with_one_line_not_a_traceback(tmp_path, installed_tiny, command):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(20000, 20000))
    prompts = write_prompts(tmp_path / "p.jsonl", [{"prompt": "look <image>", "images": ["bomb.png"]}])
    args = {"run": ["run", str(prompts), "--out", str(tmp_path / "out"), "--model", "tiny-random"],
            "submit": ["submit", str(prompts), "--out", str(tmp_path / "out"), "--model", "tiny-random",
                       "--broker-url", "redis://127.0.0.1:6379/13"],
            "generate": ["generate", "look <image>", "-i", str(bomb), "--out", str(tmp_path / "g"),
                         "--model", "tiny-random"]}[command]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a message, not a traceback
    assert f"input image {bomb}" in result.output and "decompression bomb" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "g").exists()


def test_a_picture_is_decoded_no_larger_than_needed(tmp_path):
    photo = tmp_path / "photo.jpg"
    Image.effect_noise((6000, 2000), 40).convert("RGB").save(photo, quality=80)
    wide = tmp_path / "wide.png"
    Image.new("RGB", (4096, 64), (10, 200, 30)).save(wide)
    small = tmp_path / "small.png"
    Image.effect_noise((300, 200), 40).convert("RGB").save(small)
    assert load_input_image(str(photo)).size == (2048, 683)  # JPEG drafted at 1/2 scale, then reduced
    assert load_input_image(str(wide)).size == (2048, 32)
    decoded = load_input_image(str(small))  # a normal picture is read unchanged
    assert decoded.size == (300, 200) and decoded.tobytes() == Image.open(small).convert("RGB").tobytes()


def test_decoding_checks_the_size_again_and_names_the_picture(tmp_path):
    big = tmp_path / "big.png"
    big.write_bytes(png_claiming(12000, 12000))
    with pytest.raises(InputImageError, match=rf"input image {big} is 12000x12000 pixels"):
        load_input_image(str(big))
    text = tmp_path / "notes.png"
    text.write_text("not a picture")
    with pytest.raises(InputImageError, match=rf"input image {text} is not an image file"):
        load_input_image(str(text))
    truncated = tmp_path / "cut.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:-500])
    for source in (str(truncated), truncated.read_bytes()):  # a file, or bytes read from S3
        with pytest.raises(InputImageError) as caught:
            pictures.decode(source, "s3://in/cut.png")
        assert str(caught.value).startswith("input image s3://in/cut.png cannot be decoded (OSError: ")
        assert "BytesIO" not in str(caught.value)


def test_a_picture_spoilt_after_validation_fails_its_document_alone(tmp_path):
    """The bomb arrives after the check: Pillow raises DecompressionBombError (not an OSError), which once lost
    the document (`3 done, 0 failed, 4 in the file`, exit 0)."""
    picture = tmp_path / "cat.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(picture)
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": f"d{i}", "prompt": f"topic {i}"} for i in range(3)]
                            + [{"id": "pic", "prompt": "describe <image>", "images": ["cat.png"]}])

    def make(config):
        picture.write_bytes(png_claiming(20000, 20000))
        return tiny_generator()

    summary = run_job(JobConfig(prompts=str(prompts), out=str(tmp_path / "out"), job_id="j", defaults=FAST),
                      make_generator=make)
    assert (summary.done, summary.failed, summary.total) == (3, 1, 4)
    errors = [json.loads(line) for line in (tmp_path / "out" / "j" / "errors.jsonl").read_text().splitlines()]
    assert [e["id"] for e in errors] == ["pic"]
    assert errors[0]["error"] == "InputImageError" and f"input image {picture} holds more than" in errors[0]["message"]


def test_a_shared_engine_ends_every_document_it_takes(tmp_path):
    """On a worker, a document whose picture raised anything but OSError was never ended: its chunk waited
    forever. Now each of them is done or failed and the chunk's wait returns."""
    from dreamgen.distributed.pool import SharedPool
    from dreamgen.jobs.spec import WorkItem
    from dreamgen.prompts.files import iter_prompt_file

    good = tmp_path / "good.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(good)
    (tmp_path / "bomb.png").write_bytes(good.read_bytes())  # an image at validation, a bomb after
    prompts = write_prompts(tmp_path / "p.jsonl", [{"id": "a", "prompt": "one"},
                                                   {"id": "b", "prompt": "see <image>", "images": ["bomb.png"]},
                                                   {"id": "c", "prompt": "see <image>", "images": ["good.png"]},
                                                   {"id": "d", "prompt": "two"}])
    validate_prompt_file(prompts, FAST, "tiny-random")
    specs = list(iter_prompt_file(prompts, FAST, "tiny-random"))
    (tmp_path / "bomb.png").write_bytes(png_claiming(20000, 20000))
    ended: dict[str, str] = {}

    def item(spec):
        return WorkItem(spec, done=lambda doc: ended.setdefault(spec.id, "done"),
                        fail=lambda error, message=None: ended.setdefault(spec.id, message or str(error)))

    engine = SharedPool(tiny_generator(), slots=2)
    waiting = threading.Thread(target=engine.run_items, args=([item(s) for s in specs],), daemon=True)
    waiting.start()
    waiting.join(timeout=120)
    assert not waiting.is_alive(), f"the chunk still waits; ended: {ended}"
    assert ended["a"] == ended["c"] == ended["d"] == "done"
    assert ended["b"].startswith(f"input image {tmp_path / 'bomb.png'} holds more than")


def test_pictures_on_s3_are_checked_from_their_header_alone(tmp_path, s3_endpoint, s3_bucket):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_endpoint)
    big = png_claiming(12000, 12000, padding=3 * 1024 * 1024)  # 3 MB: reading it whole would show
    client.put_object(Bucket=s3_bucket, Key="in/big.png", Body=big)
    client.put_object(Bucket=s3_bucket, Key="in/bomb.png", Body=png_claiming(20000, 20000))
    data = io.BytesIO()
    Image.new("RGB", (32, 32), (1, 2, 3)).save(data, "PNG")
    client.put_object(Bucket=s3_bucket, Key="in/ok.png", Body=data.getvalue())
    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"prompt": "a <image>", "images": [f"s3://{s3_bucket}/in/ok.png"]},
        {"prompt": "b <image>", "images": [f"s3://{s3_bucket}/in/big.png"]},
        {"prompt": "c <image>", "images": [f"s3://{s3_bucket}/in/bomb.png"]},
        {"prompt": "d <image>", "images": [f"s3://{s3_bucket}/in/missing.png"]},
        {"prompt": "e <image>", "images": [f"s3://{s3_bucket}/in/big.png"]}])
    reader, read = s3_header_reader(s3_endpoint), []

    def counting(bucket, key, size):
        data = reader(bucket, key, size)
        read.append((key, len(data)))
        return data

    with pytest.raises(PromptFileError) as caught:
        validate_prompt_file(prompts, {}, "tiny-random", s3_header=counting)
    problems = {p.line: str(p) for p in caught.value.problems}
    assert sorted(problems) == [2, 3, 4, 5]
    assert f"s3://{s3_bucket}/in/big.png is 12000x12000 pixels, over the limit" in problems[2]
    assert problems[5] == problems[2].replace(":2:", ":5:")
    assert "decompression bomb" in problems[3]
    assert f"input image s3://{s3_bucket}/in/missing.png not found" in problems[4]
    # each picture read once, and only its head
    assert [key for key, _ in read] == ["in/ok.png", "in/big.png", "in/bomb.png"]  # missing.png raised
    assert dict(read)["in/big.png"] == pictures.HEADER_BYTES[0] < len(big) // 40


def test_a_document_that_no_chunk_can_hold_is_refused_at_submit_naming_the_field(tmp_path):
    """2048 px x 999 steps x 64 pictures was accepted, then held a worker until the time limit killed it."""
    prompts = write_prompts(tmp_path / "p.jsonl", [
        {"id": "fine", "prompt": "a", "steps": 50, "max_images": 4, "image_size": 512},
        {"id": "huge", "prompt": "b", "steps": 999, "max_images": 64, "image_size": 2048},
        {"id": "big", "prompt": "c", "max_images": 4, "image_size": 2048, "steps": 400}])
    assert validate_prompt_file(prompts, {}, "tiny-random") == 3  # a local run has no chunk time limit
    with pytest.raises(PromptFileError) as caught:
        validate_prompt_file(prompts, {}, "tiny-random", time_limit_s=1800)
    assert (caught.value.line, caught.value.field) == (2, "steps")  # one problem: the huge one
    assert ("max_images 64 x steps 999 x image_size 2048 px take at least 20,460 s to paint (a 512 px step in "
            "20 ms at the fastest), over a chunk's time limit of 1,800 s; lower steps") in str(caught.value)
    with pytest.raises(PromptFileError, match="field 'image_size'"):
        validate_prompt_file(prompts, {}, "tiny-random", time_limit_s=60)

    result = CliRunner().invoke(cli, ["submit", str(prompts), "--out", str(tmp_path / "out"),
                                      "--broker-url", "redis://127.0.0.1:6379/13"])
    assert result.exit_code == 1 and "p.jsonl:2: field 'steps': max_images 64 x steps 999" in result.output
    assert not (tmp_path / "out").exists()


def test_pictures_read_slowly_hold_their_own_chunk_not_the_shared_engine(tmp_path):
    """Pictures were read inside the engine loop every chunk of a worker shares: one job's slow store held the
    others' documents. Now a chunk reads its pictures in its own thread; another chunk's documents finish in
    about their time alone."""
    import time

    from dreamgen.distributed.pool import SharedPool
    from dreamgen.jobs.spec import WorkItem
    from dreamgen.prompts.files import iter_prompt_file

    good = tmp_path / "good.png"
    Image.effect_noise((64, 64), 60).convert("RGB").save(good)
    slow = write_prompts(tmp_path / "slow.jsonl", [{"id": f"s{i}", "prompt": "see <image>", "images": ["good.png"]}
                                                   for i in range(3)])
    quick = write_prompts(tmp_path / "quick.jsonl", [{"id": f"q{i}", "prompt": f"topic {i}"} for i in range(4)])
    engine = SharedPool(tiny_generator(), slots=4)
    ended: dict[str, float] = {}
    started = [0.0]

    def item(spec, read=None):
        return WorkItem(spec, done=lambda doc: ended.setdefault(spec.id, time.monotonic() - started[0]),
                        fail=lambda error, message=None: ended.setdefault(spec.id, -1.0), read_picture=read)

    def slow_store(location, index):  # a store that answers after 4 s, as a throttled endpoint's retries do
        time.sleep(4)
        return read_input_image(location, index)

    quick_items = lambda: [item(s) for s in iter_prompt_file(quick, FAST, "tiny-random")]  # noqa: E731
    engine.run_items([item(s) for s in iter_prompt_file(quick, FAST, "tiny-random")])  # warm
    ended.clear()
    started[0] = time.monotonic()
    engine.run_items(quick_items())
    alone = max(ended.values())
    ended.clear()
    slow_chunk = threading.Thread(target=engine.run_items,
                                  args=([item(s, slow_store) for s in iter_prompt_file(slow, FAST, "tiny-random")],))
    started[0] = time.monotonic()
    slow_chunk.start()
    time.sleep(0.2)  # the slow chunk is reading its first picture
    started[0] = time.monotonic()
    engine.run_items(quick_items())
    together = max(ended[f"q{i}"] for i in range(4))
    slow_chunk.join(timeout=120)
    assert not slow_chunk.is_alive() and all(ended[f"s{i}"] > 0 for i in range(3))
    assert together <= 1.2 * alone + 0.5, (alone, together)  # not the 4 s and more of a blocked engine
