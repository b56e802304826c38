"""The shapes world: deterministic documents, held-out pairs, the pixel checker, eval scoring, and the shipped
model's quality on held-out prompts."""
from __future__ import annotations

import json
import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from dreamgen.document import Document, ImageBlock, TextBlock
from dreamgen.params import ModelDefaults
from dreamgen.shapes.articles import sample_article, sample_shapes, write_article
from dreamgen.shapes.checker import last_mention, mentions, read_image
from dreamgen.shapes.dataset import eval_prompts, write_dataset, write_pictures
from dreamgen.shapes.evaluation import ablate, evaluate, score_document
from dreamgen.shapes.render import render
from dreamgen.shapes.phrasing import COLOUR_STAND_INS, KIND_STAND_INS
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


def test_the_vae_pictures_show_the_whole_world_held_out_pairs_too(tmp_path):
    """The VAE is a codec without text (as SD's is): it must give back what the UNet paints for a held-out pair."""
    folder = write_pictures(tmp_path / "a", 150, seed=3)
    again = write_pictures(tmp_path / "b", 150, seed=3)
    files = sorted(folder.glob("*.png"))
    assert len(files) == 150
    assert all(f.read_bytes() == (again / f.name).read_bytes() for f in files)
    readings = [read_image(Image.open(f)) for f in files]  # read by the checker, not by what wrote them
    seen = {(r.colour, r.kind) for r in readings}
    assert set(HELD_OUT) <= seen and set(training_combos()) <= seen
    assert {r.size for r in readings} == set(SIZES) and {r.background for r in readings} == set(BACKGROUNDS)


def test_article_names_each_shape_right_before_its_picture():
    rng = random.Random(0)
    for _ in range(50):
        article = sample_article(rng, rng, training_combos())
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
        # the prompt asks for exactly the shapes the article shows, in order, each in words that name it
        assert [a.shape for a in article.asked] == article.shapes
        prompt = article.prompt.lower()
        for a in article.asked:
            assert a.colour_word in prompt and a.kind_word in prompt
            assert COLOUR_STAND_INS.get(a.colour_word, a.colour_word) == a.shape.colour
            assert KIND_STAND_INS.get(a.kind_word, a.kind_word) == a.shape.kind


def test_eval_prompts_ask_only_for_held_out_pairs():
    prompts = eval_prompts(30)
    assert prompts == eval_prompts(30)
    for p in prompts:
        assert p.combos and all(c in HELD_OUT for c in p.combos)
        assert mentions(p.prompt) == list(p.combos)
        assert len(p.positions) == len(p.sizes) == len(p.combos)
        for position in filter(None, p.positions):
            assert position in p.prompt
    assert any(filter(None, p.positions) for p in prompts) and any(filter(None, p.sizes) for p in prompts)


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

    # where the prompt asked for a place, the picture is held to it (here it asked the cross at the top)
    placed = score_document(_document(article), [s.combo for s in shapes], positions=(None, "at the top"),
                            sizes=("small", None))
    assert [im.asked_position for im in placed.images] == [None, "at the top"]
    assert not placed.images[1].asked_position_ok and placed.images[1].position_ok
    assert placed.images[0].asked_size_ok

    fewer = score_document(_document(article), [("red", "circle")])
    assert not fewer.well_formed and not fewer.follows_prompt


# ---------------------------------------------------------------------------------------------- the shipped model
# On the combos split: issue 6's targets were colour 0.90, shape 0.80; issue 14 asks that the split not get worse,
# so both are held at the model shipped until 2026-12-02 (98.5%, 88.6%; 99.6% and 90.5% now, at the model's own
# guidance 3).
TARGETS = {"colour": 0.985, "shape": 0.88, "well_formed": 0.95}
GUIDANCE = 3.0  # the shipped model's own, chosen on validation prompts (docs/shapes-model.md's sweep)
# issue 14, on the phrasings split: prompts in phrasings and verbs no training prompt has. Its targets (shape
# 97.8% on these first 100 prompts, 98.9% on docs/shapes-model.md's 200).
PHRASING_TARGETS = {"follows_prompt": 0.95, "colour": 0.95, "shape": 0.90, "position": 0.80, "size": 0.85,
                    "well_formed": 0.98}
# The picture's size and place against the prompt's words, where it asked for them (the text can say "large" for a
# prompt that asked "small", and the picture then follows the text): 89% and 100% on these prompts, 53-59% for size
# before loss.word_weights (and 64% on phrasings for the recipe's run on another CPU, docs/shapes-model.md's R).
# Issue 35 (the binding stage): >= 95% on every split (400 prompts: combos 100.0 / 100.0, phrasings 99.6 / 99.3).
ASKED_TARGETS = {"size_asked": 0.95, "position_asked": 0.95}
# The combos targets are held on docs/shapes-model.md's eval (200 held-out prompts), the phrasing targets on its
# first 100 prompts: a few minutes on one thread.
PROMPTS = 200
PHRASING_PROMPTS = 100
ABLATION_PROMPTS = 24  # enough to see the pictures fall to chance when the condition is cut


def _one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)  # a small model on a shared machine: one thread skips OpenMP's barrier waits
    return before


def _shipped_report(prompts, split: str = "combos", ablation: str = "none", on_document=None):
    """The built-in model's eval on `prompts`, at the default generation parameters, on one thread."""
    import torch

    from dreamgen.model.loader import load_model
    from dreamgen.params import GenerationParams

    before = _one_thread()
    try:
        model = ablate(load_model("shapes"), ablation)
        return evaluate(model, prompts, GenerationParams(), batch_size=8, split=split, on_document=on_document)
    finally:
        torch.set_num_threads(before)


def _shipped_eval(split: str, count: int, ablation: str = "none") -> dict:
    """The built-in model's eval summary on a held-out split."""
    return _shipped_report(eval_prompts(count, split), split, ablation).summary()


@pytest.fixture(scope="module")
def shipped_summary():
    return _shipped_eval("combos", PROMPTS)


@pytest.fixture(scope="module")
def phrasings_summary():
    return _shipped_eval("phrasings", PHRASING_PROMPTS)


def test_shapes_is_the_default_builtin_model():
    from dreamgen.model.builtin import BUILTIN, builtin_model_dir
    from dreamgen.settings import DEFAULT_MODEL

    assert DEFAULT_MODEL == "shapes" and "tiny-random" in BUILTIN
    folder = builtin_model_dir("shapes")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    total = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    assert total < 40 * 2**20


def test_the_shipped_model_paints_at_its_own_guidance():
    from dreamgen.model.loader import load_model

    # so the evals here, with guidance unset, run at it; the rest as it painted and wrote before it named them
    # DDPM 25 since issue 32, guided through 0.75 of the steps, the deep features reused every other step through
    # 0.6: every eval column within 1 point of DDPM 50 at 37% of its UNet work (docs/pictures.md)
    assert load_model("shapes").info.defaults == ModelDefaults(scheduler="ddpm", steps=25, guidance=GUIDANCE,
                                                                temperature=0.0, top_p=1.0, max_new_tokens=256,
                                                                cache_interval=2, cache_until=0.6,
                                                                guidance_until=0.75)


def test_shipped_model_writes_the_asked_articles_in_the_right_colours(shipped_summary):
    s = shipped_summary
    assert s["well_formed"] >= TARGETS["well_formed"] and s["follows_prompt"] >= 0.95, s
    assert s["colour"] >= TARGETS["colour"] and s["background"] >= 0.90, s


def test_shipped_model_meets_the_shape_target(shipped_summary):
    assert shipped_summary["shape"] >= TARGETS["shape"], shipped_summary


def _missed(summary: dict, targets: dict) -> dict:
    """{measure: (what the model did, its target)} for every target it falls short of."""
    return {k: (round(summary[k], 3), target) for k, target in targets.items() if summary[k] < target}


def test_shipped_model_follows_prompts_in_phrasings_it_never_read(phrasings_summary):
    missed = _missed(phrasings_summary, PHRASING_TARGETS)
    assert not missed, (missed, phrasings_summary)


def test_shipped_model_draws_the_size_and_place_the_prompt_asked(shipped_summary, phrasings_summary):
    for s in (shipped_summary, phrasings_summary):
        missed = _missed(s, ASKED_TARGETS)
        assert not missed, (missed, s)


def test_shipped_model_puts_shapes_where_the_text_says(shipped_summary):
    # on the combos split too: five places, so chance is about 20%
    assert shipped_summary["position"] >= 0.8 and shipped_summary["size"] >= 0.85, shipped_summary


def test_cutting_the_condition_breaks_the_pictures(phrasings_summary):
    cut = _shipped_eval("phrasings", ABLATION_PROMPTS, "condition")
    # the articles stay (the condition only reaches the UNet), the pictures lose what they say
    assert cut["well_formed"] >= 0.9 and cut["follows_prompt"] >= 0.9, cut
    assert cut["colour"] < 0.5 and cut["colour"] < phrasings_summary["colour"] - 0.4, cut
    assert cut["position"] < 0.5 and cut["position"] < phrasings_summary["position"] - 0.3, cut


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
    # small diamonds are the known loss (their tips barely survive 8 x 8 latents): 75% here, 83% over
    # docs/shapes-model.md's 240 pictures, 0% before small shapes grew from 10 to 13 px; every other small kind 100%
    assert all(accuracy[kind, "small"] >= 0.6 for kind in SHAPES), accuracy
    assert np.mean(list(accuracy.values())) >= 0.92, accuracy  # 97% here (90% with 10 px small shapes)


def test_shipped_vae_gives_back_the_held_out_pairs():
    """No training document shows a held-out pair, but the codec must give one back, or the UNet cannot show it
    however well it paints it. The decoder taught only the documents' pictures gave back 4 of these 16 green
    diamonds as green diamonds (crosses and circles otherwise); its last stage, on pictures of every pair, 15."""
    import torch

    from dreamgen.model.loader import load_model
    from dreamgen.shapes.articles import JITTER
    from dreamgen.shapes.roundtrip import roundtrip

    rng = random.Random(0)
    before = _one_thread()
    try:
        vae = load_model("shapes").head.vae.eval()
        for colour, kind in HELD_OUT:
            shapes = [Shape(colour, kind, size, rng.choice(list(POSITIONS)), background,
                            rng.randint(-JITTER, JITTER), rng.randint(-JITTER, JITTER))
                      for size in SIZES for background in BACKGROUNDS for _ in range(2)]
            readings = [read_image(image) for image in roundtrip(vae, shapes)]
            right = sum((r.colour, r.kind) == (colour, kind) for r in readings)
            assert right >= 14, (colour, kind, [(r.colour, r.kind) for r in readings])
    finally:
        torch.set_num_threads(before)


def test_cli_eval_prints_one_row_per_ablation(installed_tiny):
    from click.testing import CliRunner

    from dreamgen.cli import cli

    result = CliRunner().invoke(cli, ["eval", "-m", "tiny-random", "-n", "2", "--steps", "2", "--max-new-tokens", "12",
                                      "--ablate", "none", "--ablate", "condition"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # the table; the progress bars go to stderr
    assert lines[0].split() == ["model", "split", "ablation", "docs", "images", "follows", "prompt", "colour",
                                "shape", "size", "position", "size", "asked", "position", "asked", "colour", "asked",
                                "background", "well", "formed"]
    assert lines[-1] == "(ddpm, 2 steps, guidance 7.5)"  # tiny-random names no guidance: the reference's
    shares = CliRunner().invoke(cli, ["eval", "-m", "tiny-random", "-n", "1", "--steps", "4", "--max-new-tokens",
                                      "12", "--split", "combos", "--guidance-until", "0.5", "--cache-interval", "2",
                                      "--cache-until", "0.75"])
    assert shares.exit_code == 0, shares.output
    assert shares.stdout.splitlines()[-1] == \
        "(ddpm, 4 steps, guidance 7.5 through 0.5 of the steps, cache interval 2 through 0.75 of the steps)"
    # every split by default, for each ablation
    assert [line.split()[:4] for line in lines[1:-1]] == [
        ["tiny-random", "combos", "none", "2"], ["tiny-random", "phrasings", "none", "2"],
        ["tiny-random", "pairs", "none", "2"], ["tiny-random", "combos", "condition", "2"],
        ["tiny-random", "phrasings", "condition", "2"], ["tiny-random", "pairs", "condition", "2"]]
    one = CliRunner().invoke(cli, ["eval", "-m", "tiny-random", "-n", "1", "--steps", "2", "--max-new-tokens", "4",
                                   "--split", "phrasings"])
    assert one.exit_code == 0, one.output
    assert [line.split()[1] for line in one.stdout.splitlines()[1:-1]] == ["phrasings"]
    # a validation set: prompts of the split drawn with a seed of their own
    reports = {}
    for seed in ([], ["--prompt-seed", "1001"]):
        out = CliRunner().invoke(cli, ["eval", "-m", "tiny-random", "-n", "3", "--steps", "1", "--max-new-tokens", "4",
                                       "--split", "combos", "--guidance", "2", "--json", *seed])
        assert out.exit_code == 0, out.output
        reports[bool(seed)] = json.loads(out.stdout)[0]
    prompts = {key: [d["prompt"] for d in r["documents"]] for key, r in reports.items()}
    assert prompts[False] == [p.prompt for p in eval_prompts(3, "combos")]
    assert prompts[True] == [p.prompt for p in eval_prompts(3, "combos", seed=1001)] != prompts[False]
    assert reports[True]["params"]["guidance"] == 2.0


def test_the_shipped_model_says_what_it_cannot_draw_and_draws_the_nearest_thing():
    """Issue 14: a star is drawn as a cross, pink as red, a tree as a triangle, each with a note that says so."""
    from dreamgen.shapes.dataset import EvalPrompt

    # the star on white: asked with no background, this model draws a small green cross on black, a blob the
    # checker reads as blue (docs/shapes-model.md, "What is left")
    prompts = [EvalPrompt("Describe a green star on a white background.", (("green", "cross"),)),
               EvalPrompt("Write about a pink circle.", (("red", "circle"),)),
               EvalPrompt("Could you draw a yellow tree on a white background?", (("yellow", "triangle"),))]
    texts = []
    report = _shipped_report(prompts, on_document=lambda doc, score: texts.append(doc.text))
    assert all(text.startswith("There is no ") for text in texts), texts
    s = report.summary()
    assert s["follows_prompt"] == 1.0 and s["well_formed"] == 1.0 and s["colour"] == 1.0 and s["shape"] == 1.0, \
        (s, texts)
