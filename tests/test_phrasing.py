"""The prompt grammar: variety in training, a part training never sees, articles that agree, stand-ins named."""
from __future__ import annotations

import random
import re

from dreamgen.shapes.articles import sample_article
from dreamgen.shapes.dataset import eval_prompts
from dreamgen.shapes.phrasing import (ABOUT_WORDS, COLOUR_STAND_INS, DOCUMENTS, FILLERS, FRAMES, KIND_STAND_INS,
                                      OPENINGS, POLITE_AFTER, POLITE_BEFORE, POSITION_WORDS, SHORT_FRAMES, SIZE_WORDS,
                                      VERBS, ask, phrase_prompt, with_article)
from dreamgen.shapes.world import COLOURS, SHAPES, Shape, training_combos

_A_BEFORE_VOWEL = re.compile(r"\ba [aeiou]", re.IGNORECASE)
LAYERS = (FRAMES, POLITE_BEFORE, POLITE_AFTER, FILLERS, OPENINGS)  # the phrasing layers with a held-out part


def _training_articles(count: int, seed: int = 0):
    return [sample_article(random.Random(f"{seed}-{n}-p"), random.Random(f"{seed}-{n}-w"), training_combos())
            for n in range(count)]


def _words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower().replace("{x}", " ")))


def _layer_words(*parts: str) -> set[str]:
    """Every word the phrasing layers use in `parts` ("train", "held_out")."""
    return set().union(*(_words(e) for layer in LAYERS for part in parts for e in layer[part]))


def _stem(frame: str) -> str:
    return frame.split("{x}")[0].strip(" ?:").lower()


def test_the_held_out_part_of_the_grammar_is_apart_from_training():
    for layer in LAYERS:
        assert not set(layer["train"]) & set(layer["held_out"])
    # no training prompt uses a held-out frame's words, politeness, filler or opening
    prompts = [a.prompt.lower() for a in _training_articles(3000)]
    stems = [_stem(f) for f in FRAMES["held_out"]]
    assert all(stems) and len(set(stems)) == len(stems)
    for prompt in prompts:
        assert not any(prompt.startswith(s) or f", {s}" in prompt or f" {s} " in f" {prompt} " for s in stems), prompt
        assert not any(f in prompt for f in FILLERS["held_out"] + POLITE_AFTER["held_out"]), prompt
        assert not prompt.startswith(POLITE_BEFORE["held_out"] + OPENINGS["held_out"]), prompt
    # word by word: what only the held-out part says (its verbs, nouns, courtesies) no training prompt says
    held_out_words = _layer_words("held_out") - _layer_words("train")
    held_out_words -= _words(" ".join(w for words in (*SIZE_WORDS.values(), *POSITION_WORDS.values()) for w in words))
    assert {"depict", "portray", "compose", "chronicle", "sketch", "cheers", "chance"} <= held_out_words
    for prompt in prompts:
        assert not _words(prompt) & held_out_words, prompt
    # and the eval's phrasings split uses nothing else
    for p in eval_prompts(60, "phrasings"):
        assert any(s in p.prompt.lower() for s in stems), p.prompt


def test_training_prompts_vary_in_every_layer():
    prompts = [a.prompt for a in _training_articles(2000)]
    assert len(set(prompts)) > 0.98 * len(prompts)
    # the short frames each turn up, and the built ones use every verb, document and preposition of the grammar
    stems = {_stem(f) for f in SHORT_FRAMES if _stem(f)}
    used = {s for s in stems if any(p.lower().startswith(s) or f" {s} " in f" {p.lower()} " for p in prompts)}
    assert len(used) >= 0.9 * len(stems), stems - used
    text = " ".join(f" {p.lower()} " for p in prompts)
    for words in (VERBS, DOCUMENTS, ABOUT_WORDS):
        assert all(f" {w} " in text for w in words), [w for w in words if f" {w} " not in text]
    assert len(set(FRAMES["train"])) > 5000  # a grammar, not a list
    assert any(p.isupper() for p in prompts) and any(p == p.lower() for p in prompts)
    assert any(p.endswith("?") for p in prompts) and any(p[-1].isalpha() for p in prompts)
    assert any(p.lower().startswith("on a ") or p.lower().startswith("with a ") for p in prompts)  # word order
    assert any(" in red" in p.lower() for p in prompts)  # the colour after the kind


def test_articles_take_an_before_a_vowel_everywhere():
    assert with_article("orange circle") == "an orange circle" and with_article("red circle") == "a red circle"
    for article in _training_articles(1500):
        texts = [article.prompt] + [value for kind, value in article.blocks if kind == "text"]
        for text in texts:
            assert not _A_BEFORE_VOWEL.search(text), text
    assert "an orange" in " ".join(p.prompt for p in eval_prompts(200, "combos") if "orange" in p.prompt)


def test_a_stand_in_is_named_and_the_article_is_about_the_nearest_known_thing():
    articles = [a for a in _training_articles(3000) if any(x.stand_ins for x in a.asked)]
    assert 0.08 < len(articles) / 3000 < 0.2
    for article in articles:
        first = article.blocks[0][1]
        for asked in article.asked:
            for word, nearest in asked.stand_ins:
                assert word in article.prompt.lower() and f"There is no {word} here" in first
                assert nearest in (asked.shape.colour, asked.shape.kind)
        # the article names only what the world can draw
        body = " ".join(v for k, v in article.blocks if k == "text").split("instead.")[-1].lower()
        words = set(re.findall(r"[a-z]+", body))
        assert {s.colour for s in article.shapes} <= words and {s.kind for s in article.shapes} <= words


def test_no_stand_in_is_a_word_the_phrasing_uses_for_nothing():
    # "for a book" carries nothing; "a book" as the thing asked for would be a stand-in: one word, not both
    assert not (set(KIND_STAND_INS) | set(COLOUR_STAND_INS)) & _layer_words("train", "held_out")
    assert KIND_STAND_INS["horse"] in SHAPES and KIND_STAND_INS["star"] == "cross"


def test_held_out_phrasings_ask_in_the_words_the_article_must_answer():
    rng = random.Random(3)
    shape = Shape("orange", "triangle", "large", "at the left", "grey")
    for _ in range(200):
        asked = ask(shape, rng, size_rate=1.0, position_rate=1.0)
        prompt = phrase_prompt([asked], "grey", rng, held_out=True).lower()
        assert "orange" in prompt and "triangle" in prompt
        assert asked.size_word in prompt and asked.position_word in prompt
        assert "grey" in prompt or "gray" in prompt
    assert set(COLOURS) and set(SHAPES)
