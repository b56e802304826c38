"""The shapes world: deterministic documents, held-out pairs, the pixel checker, eval scoring, and the shipped
model's quality on held-out prompts."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dreamgen.document import Document, ImageBlock, TextBlock
from dreamgen.shapes.articles import sample_article, sample_shapes, write_article
from dreamgen.shapes.checker import last_mention, mentions, read_image
from dreamgen.shapes.dataset import eval_prompts, write_dataset
from dreamgen.shapes.evaluation import ablate, evaluate, score_document
from dreamgen.shapes.render import render
from dreamgen.shapes.world import BACKGROUNDS, COLOURS, HELD_OUT, POSITIONS, SHAPES, SIZES, Shape, training_combos

ALL_COMBOS = [(c, k) for c in COLOURS for k in SHAPES]


def test_world_has_enough_variety():
    assert len(COLOURS) >= 6 and len(SHAPES) >= 4 and len(SIZES) >= 2 and len(POSITIONS) >= 3
    assert len(BACKGROUNDS) >= 3
    # every colour and every kind is still seen in training, only some pairs are not
    train = training_combos()
    assert {c for c, _ in train} == set(COLOURS) and {k for _, k in train} == set(SHAPES)
    assert not set(HELD_OUT) & set(train)


def test_dataset_is_deterministic_and_leaves_out_held_out_pairs(tmp_path):
    a = write_dataset(tmp_path / "a", 40, seed=3).read_text()
    b = write_dataset(tmp_path / "b", 40, seed=3).read_text()
    assert a == b
    assert (tmp_path / "a" / "images" / "train-000000-0.png").read_bytes() == \
        (tmp_path / "b" / "images" / "train-000000-0.png").read_bytes()
    for line in a.splitlines():
        record = json.loads(line)
        for shape in record["meta"]["shapes"]:
            assert (shape["colour"], shape["kind"]) not in HELD_OUT
        images = [b for b in record["blocks"] if b["type"] == "image"]
        assert len(images) == len(record["meta"]["shapes"])
        assert (tmp_path / "a" / images[0]["path"]).is_file()


def test_article_names_each_shape_right_before_its_picture():
    rng = random.Random(0)
    for _ in range(50):
        article = sample_article(rng, training_combos())
        text = ""
        pictures = 0
        for kind, value in article.blocks:
            if kind == "text":
                text += " " + value
            else:
                assert last_mention(text) == (value.colour, value.kind)
                assert f"{value.background} background" in text
                text, pictures = "", pictures + 1
        assert pictures == len(article.shapes)
        # the prompt asks for exactly the shapes the article shows, in order
        assert mentions(article.prompt) == [s.combo for s in article.shapes]


def test_eval_prompts_ask_only_for_held_out_pairs():
    prompts = eval_prompts(30)
    assert prompts == eval_prompts(30)
    for p in prompts:
        assert p.combos and all(c in HELD_OUT for c in p.combos)
        assert mentions(p.prompt) == list(p.combos)


@pytest.mark.parametrize("background", sorted(BACKGROUNDS))
def test_checker_reads_rendered_pictures(background):
    rng = random.Random(background)
    for shape in sample_shapes(rng, ALL_COMBOS, 60, background):
        reading = read_image(render(shape))
        got = (reading.colour, reading.kind, reading.size, reading.position, reading.background)
        assert got == (shape.colour, shape.kind, shape.size, shape.position, background), shape


def test_checker_survives_blur_and_noise():
    rng = random.Random(1)
    noise = np.random.default_rng(1)
    for shape in sample_shapes(rng, ALL_COMBOS, 60, "white"):
        image = render(shape).filter(ImageFilter.GaussianBlur(1.0))
        pixels = np.asarray(image, dtype=np.float64) + noise.normal(0, 8, (64, 64, 3))
        reading = read_image(Image.fromarray(pixels.clip(0, 255).astype("uint8")))
        assert (reading.colour, reading.kind) == shape.combo, shape


def test_checker_sees_no_shape_on_a_plain_picture():
    reading = read_image(Image.new("RGB", (64, 64), BACKGROUNDS["grey"]))
    assert reading.background == "grey" and reading.colour is None and reading.kind is None


def _document(article, images=None, stop_reason="eos") -> Document:
    blocks = []
    for i, (kind, value) in enumerate(article.blocks):
        if kind == "text":
            blocks.append(TextBlock(value))
        else:
            image = (images or {}).get(len([b for b in blocks if isinstance(b, ImageBlock)]), render(value))
            blocks.append(ImageBlock(index=i, width=64, height=64, seed=0, image=image))
    return Document(id="d", prompt=article.prompt, model="m", params={}, blocks=blocks, stop_reason=stop_reason)


def test_score_document_on_ground_truth_and_on_mistakes():
    shapes = [Shape("red", "circle", "small", "at the left", "white"),
              Shape("blue", "cross", "large", "in the middle", "white")]
    article = write_article("Write about a red circle and a blue cross.", shapes, "plain")
    good = score_document(_document(article), [s.combo for s in shapes])
    assert good.well_formed and good.follows_prompt
    assert all(im.colour_ok and im.kind_ok and im.background_ok for im in good.images)

    wrong = render(Shape("green", "square", "large", "in the middle", "white"))
    bad = score_document(_document(article, images={1: wrong}, stop_reason="max_new_tokens"),
                         [s.combo for s in shapes])
    assert bad.images[0].colour_ok and not bad.images[1].colour_ok and not bad.images[1].kind_ok
    assert not bad.well_formed and "stopped by max_new_tokens" in bad.problems[0]

    fewer = score_document(_document(article), [("red", "circle")])
    assert not fewer.well_formed and not fewer.follows_prompt


# ---------------------------------------------------------------------------------------------- the shipped model
TARGETS = {"colour": 0.90, "shape": 0.80, "well_formed": 0.95}  # issue 6
# The targets are held on the README's eval: 200 held-out prompts (273 pictures), about a minute on one thread.
# (89% shape; 76% before the decoder was fine-tuned with loss.foreground_weight and the whole model had its second
# pass. The misses left are mostly small green diamonds drawn as crosses: their tips do not survive the VAE, see
# the round-trip test below.)
PROMPTS = 200
ABLATION_PROMPTS = 24  # enough to see the pictures fall to chance when the condition is cut


def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model on a shared machine: one thread skips OpenMP's barrier waits
    return before


@pytest.fixture(scope="module")
def shipped_summary():
    """The built-in model's eval on held-out prompts, at the default generation parameters."""
    import torch

    from dreamgen.model.loader import load_model
    from dreamgen.params import GenerationParams

    before = _one_thread()
    try:
        return evaluate(load_model("shapes"), eval_prompts(PROMPTS), GenerationParams(), batch_size=8).summary()
    finally:
        torch.set_num_threads(before)


def test_shapes_is_the_default_builtin_model():
    from dreamgen.model.builtin import BUILTIN, builtin_model_dir
    from dreamgen.settings import DEFAULT_MODEL

    assert DEFAULT_MODEL == "shapes" and "tiny-random" in BUILTIN
    folder = builtin_model_dir("shapes")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total < 40 * 2**20


def test_shipped_model_writes_the_asked_articles_in_the_right_colours(shipped_summary):
    s = shipped_summary
    assert s["well_formed"] >= TARGETS["well_formed"] and s["follows_prompt"] >= 0.95, s
    assert s["colour"] >= TARGETS["colour"] and s["background"] >= 0.90, s


def test_shipped_model_meets_the_shape_target(shipped_summary):
    assert shipped_summary["shape"] >= TARGETS["shape"], shipped_summary


def test_cutting_the_condition_breaks_the_pictures(shipped_summary):
    import torch

    from dreamgen.model.loader import load_model
    from dreamgen.params import GenerationParams

    before = _one_thread()
    try:
        model = ablate(load_model("shapes"), "condition")
        cut = evaluate(model, eval_prompts(ABLATION_PROMPTS), GenerationParams(),
                       batch_size=ABLATION_PROMPTS).summary()
    finally:
        torch.set_num_threads(before)
    # the articles stay (the condition only reaches the UNet), the pictures lose what they say
    assert cut["well_formed"] >= 0.9
    assert cut["colour"] < 0.5 and cut["colour"] < shipped_summary["colour"] - 0.4, cut


def test_select_keeps_the_candidate_that_draws_what_its_text_says(installed_tiny):
    """train_shapes.sh ships whichever candidate does better on validation prompts, never on the eval prompts."""
    import torch

    from dreamgen.shapes.select import VALIDATION_SEED, choose

    assert eval_prompts(100, seed=VALIDATION_SEED) != eval_prompts(100)
    lines = []
    before = _one_thread()
    try:  # the random model first: a choice that kept the first on anything but a tie would keep it
        chosen = choose(["tiny-random", "shapes"], prompts=6, report=lines.append)
    finally:
        torch.set_num_threads(before)
    assert chosen == "shapes", lines
    assert [line.split(":")[0] for line in lines] == ["tiny-random", "shapes"]
    assert f"validation seed {VALIDATION_SEED}" in lines[1]


def test_shipped_vae_keeps_the_kind_of_shapes_readable():
    """The decoder draws every picture the model makes: a kind a VAE round trip loses, the model cannot draw."""
    import torch

    from dreamgen.model.loader import load_model
    from dreamgen.shapes.roundtrip import kind_accuracy, roundtrip_shapes

    before = _one_thread()
    try:
        accuracy = kind_accuracy(load_model("shapes").head.vae.eval(), roundtrip_shapes(repeats=2))
    finally:
        torch.set_num_threads(before)
    assert all(accuracy[kind, "large"] >= 0.9 for kind in SHAPES), accuracy
    # small diamonds are the known loss (their tips do not survive 8 x 8 latents): 8% here, 4% over 240 pictures
    assert all(accuracy[kind, "small"] >= 0.75 for kind in SHAPES if kind != "diamond"), accuracy
    assert np.mean(list(accuracy.values())) >= 0.85, accuracy  # 90% here (84% before the foreground-weighted decoder)


def test_cli_eval_prints_one_row_per_ablation(installed_tiny):
    from click.testing import CliRunner

    from cli import cli

    result = CliRunner().invoke(cli, ["eval", "-m", "tiny-random", "-n", "2", "--steps", "2", "--max-new-tokens", "12",
                                      "--ablate", "none", "--ablate", "condition"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # the table; the progress bars go to stderr
    assert lines[0].split() == ["model", "ablation", "docs", "images", "colour", "shape", "background", "well",
                                "formed", "follows", "prompt", "size", "position"]
    assert [line.split()[:3] for line in lines[1:]] == [["tiny-random", "none", "2"], ["tiny-random", "condition", "2"]]
