"""Issue 35: each shape gets what was asked for it. The binding set (two and three shapes, each asked its own size
and place; prompts inside dreamgen's templates), the eval's two-shape split, and the shipped model on both: the
sizes and colours of two-shape prompts in phrasings it never read, and template-wrapped prompts answered as the
bare ones."""
from __future__ import annotations

import json
import random
import re

import pytest

from dreamgen.prompts.templates import _load, available
from dreamgen.shapes.articles import BINDING_COUNTS, sample_binding_article, template_topic
from dreamgen.shapes.asked import asked_of, problems
from dreamgen.shapes.checker import mentions
from dreamgen.shapes.dataset import eval_prompts, write_binding, write_dataset
from dreamgen.shapes.evaluation import score_document
from dreamgen.shapes.phrasing import (FILLERS, FRAMES, OPENINGS, POLITE_AFTER, POLITE_BEFORE, POSITION_WORDS,
                                      SIZE_WORDS, ask)
from dreamgen.shapes.world import HELD_OUT, Shape, training_combos

from tests.test_shapes import _document, _shipped_report

LAYERS = (FRAMES, POLITE_BEFORE, POLITE_AFTER, FILLERS, OPENINGS)
TEMPLATES = available()[1:]


def _articles(count: int, seed: int = 0):
    return [sample_binding_article(random.Random(f"{seed}-{n}-p"), random.Random(f"{seed}-{n}-w"),
                                   training_combos()) for n in range(count)]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower().replace("{x}", " ")))


def _held_out_words() -> set[str]:
    """Words only the grammar's held-out part uses (the phrasings and pairs splits are made of them)."""
    train = set().union(*(_words(e) for layer in LAYERS for e in layer["train"]))
    held = set().union(*(_words(e) for layer in LAYERS for e in layer["held_out"]))
    vocabulary = _words(" ".join(w for words in (*SIZE_WORDS.values(), *POSITION_WORDS.values()) for w in words))
    return held - train - vocabulary


def _template_of(prompt: str) -> tuple[str, str] | None:
    """(template name, topic) when `prompt` is a template around a topic."""
    for name in TEMPLATES:
        before, after = _load(name).split("{topic}")
        if prompt.startswith(before) and prompt.endswith(after):
            return name, prompt[len(before):len(prompt) - len(after)]
    return None


def test_the_binding_set_asks_each_shape_its_own_words_and_its_article_carries_them():
    articles = _articles(600)
    counts = [len(a.shapes) for a in articles]
    assert {1, 2, 3} == set(counts) and sum(c >= 2 for c in counts) / len(counts) > 0.6
    assert set(BINDING_COUNTS) == {1, 2, 3}
    differing = 0
    for article in articles:
        assert [a.shape for a in article.asked] == article.shapes
        assert not any(s.combo in HELD_OUT for s in article.shapes)
        sizes = [a.shape.size for a in article.asked if a.size_word]
        differing += len(set(sizes)) > 1
        text, k = "", 0
        for kind, value in article.blocks:  # the k-th picture's text names the k-th shape's asked size and place
            if kind == "text":
                text += " " + value
                continue
            asked = article.asked[k]
            assert mentions(text)[-1] == (value.colour, value.kind)
            if asked.size_word:
                assert asked.size_word in SIZE_WORDS[value.size] and re.search(rf"\b{value.size}\b", text)
            if asked.position_word:
                assert asked.position_word in POSITION_WORDS[value.position] and value.position in text
            text, k = "", k + 1
        assert k == len(article.shapes)
    # two shapes asked two different sizes: 1 document in 35 of the first set, a fifth of these
    assert differing / len(articles) > 0.2, differing


def test_binding_prompts_come_inside_every_template_and_use_no_held_out_phrasing():
    articles = _articles(600)
    wrapped = [(a, _template_of(a.prompt)) for a in articles]
    templated = [(a, t) for a, t in wrapped if t]
    assert 0.3 < len(templated) / len(articles) < 0.5
    assert {name for _, (name, _) in templated} == set(TEMPLATES) and len(TEMPLATES) >= 3
    held_out = _held_out_words()
    assert {"depict", "portray", "compose", "cheers"} <= held_out
    for article, template in wrapped:
        # a template's own fixed words are not the grammar's ("enjoy" is in article.txt and in a held-out frame)
        topic = template[1] if template else article.prompt
        assert not _words(topic) & held_out, topic
        for a in article.asked:
            assert a.colour_word in topic.lower() and a.kind_word in topic.lower()
    topics = [t for _, (_, t) in templated]
    assert any(t.lower().startswith("how to draw") for t in topics)
    assert any(not re.match(r"(?i)(an? |how|the|all|news|draw|paint)", t) for t in topics)  # no article: "red square"


def test_template_topics_are_deterministic_and_name_the_things_asked():
    rng = random.Random(3)
    shapes = [Shape("red", "square", "small", "at the left", "white"), Shape("blue", "circle", "large", "at the top",
                                                                              "white")]
    asked = [ask(s, rng, size_rate=1.0) for s in shapes]
    first = [template_topic(asked, None, random.Random(n)) for n in range(30)]
    assert first == [template_topic(asked, None, random.Random(n)) for n in range(30)]
    for topic in first:
        assert [(a.colour, a.kind) for a in asked_of(topic).shapes] == [("red", "square"), ("blue", "circle")], topic


def test_the_binding_set_is_written_apart_from_the_first_set(tmp_path):
    a = write_binding(tmp_path / "a", 30, seed=0).read_text()
    assert a == write_binding(tmp_path / "b", 30, seed=0).read_text()
    first = write_dataset(tmp_path / "a", 30, seed=0).read_text()
    assert a != first and (tmp_path / "a" / "images" / "binding-000000-0.png").is_file()
    prompts = {json.loads(line)["prompt"] for line in first.splitlines()}
    assert not prompts & {json.loads(line)["prompt"] for line in a.splitlines()}


def test_the_pairs_split_asks_two_shapes_their_own_sizes_in_held_out_phrasings():
    prompts = eval_prompts(200, "pairs")
    assert prompts == eval_prompts(200, "pairs") and prompts != eval_prompts(200, "pairs", seed=1)
    held_out = _held_out_words()
    assert sum(bool(_words(p.prompt) & held_out) for p in prompts) > 0.9 * len(prompts)  # "a few words on" has none
    stems = [f.split("{x}")[0].strip(" ?:").lower() for f in FRAMES["held_out"]]
    for p in prompts:
        assert len(p.combos) == 2 and all(c not in HELD_OUT for c in p.combos)
        assert all(p.sizes) and len(p.positions) == 2
        assert [(a.colour, a.kind) for a in asked_of(p.prompt).shapes] == list(p.combos)
        assert any(s in p.prompt.lower() for s in stems), p.prompt
    assert sum(p.sizes[0] != p.sizes[1] for p in prompts) > 60
    assert sum(bool(p.positions[0]) for p in prompts) > 60


def test_scores_hold_each_shape_to_its_own_asked_size_and_colour():
    from dreamgen.shapes.articles import write_article

    shapes = [Shape("blue", "square", "small", "at the left", "white"),
              Shape("yellow", "triangle", "small", "at the right", "white")]  # the second asked large, written small
    article = write_article("Write about a small blue square and a large yellow triangle", shapes, "plain")
    score = score_document(_document(article), [s.combo for s in shapes], sizes=("small", "large"))
    first, second = score.images
    assert first.asked_size_ok and first.said_size_ok and first.asked_colour_ok
    assert not second.asked_size_ok and not second.said_size_ok and second.asked_colour_ok
    assert score.follows_prompt


# ---------------------------------------------------------------------------------------------- the shipped model
PAIRS_PROMPTS = 100
PAIRS_TARGETS = {"size_asked": 0.95, "colour_asked": 0.95, "size_said": 0.95, "position_asked": 0.95,
                 "follows_prompt": 0.95, "well_formed": 0.95}


@pytest.mark.slow
def test_the_shipped_model_gives_each_of_two_shapes_its_own_size_and_colour():
    summary = _shipped_report(eval_prompts(PAIRS_PROMPTS, "pairs"), "pairs").summary()
    missed = {k: (round(summary[k], 3), t) for k, t in PAIRS_TARGETS.items() if summary[k] < t}
    assert not missed, (missed, summary)


# A newcomer's prompts with templates, and the demo's own two-shape prompt (issue 35): each answered as asked.
# Green diamonds are a pair no training document has; the UNet still paints most as crosses (docs/shapes-model.md,
# combos shape), so that one miss of the picture is allowed there; the text must be right.
TEMPLATED = [("How to draw a red square", "howto"), ("green diamond in the middle", "article"),
             ("a small blue square and a large yellow triangle", "news"),
             ("Write about a small blue square and a large yellow triangle", "none")]
ALLOWED = {"green diamond in the middle": {"picture 1: kind: asked diamond, painted cross"}}


@pytest.mark.slow
@pytest.mark.parametrize("prompt,template", TEMPLATED)
def test_template_wrapped_prompts_are_answered_as_the_bare_ones(tmp_path, prompt, template):
    from dreamgen.jobs.run import generate_document, load_generator
    from dreamgen.params import GenerationParams

    generator = _generator(load_generator)
    for seed in (1, 2):
        out = tmp_path / f"{template}-{seed}"
        doc, _ = generate_document(generator, prompt, GenerationParams(seed=seed, template=template), str(out),
                                   "shapes")
        assert set(problems(out, prompt)) <= ALLOWED.get(prompt, set()), (template, seed, doc.text)
        assert "There is no" not in doc.text, doc.text  # no stand-in note for what the world has


_GENERATORS = {}


def _generator(load_generator):
    if "shapes" not in _GENERATORS:
        _GENERATORS["shapes"] = load_generator("shapes")
    return _GENERATORS["shapes"]
