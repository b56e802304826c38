"""Prompts and short illustrated articles about shapes, in a few styles.

An article answers its prompt: it names every shape the prompt asks for, in order, each in a sentence that gives
its size, colour, kind, position and background, and puts the picture right after that sentence. What the prompt
leaves open (size, position, background) the article chooses. Everything is drawn from a `random.Random`, so a
seed gives the same documents on every machine.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from .world import BACKGROUNDS, CORNERS, POSITIONS, SIZES, Shape

STYLES = ("plain", "lesson", "story")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
PROMPT_VERBS = ("Write about", "Write an article about", "Describe", "Tell me about", "Show me")
JITTER = 2  # pixels the centre may move without the text saying so
MAX_SHAPES = 3


@dataclass
class Article:
    """A prompt and the document that answers it: blocks are ("text", str) or ("image", Shape)."""

    prompt: str
    style: str
    shapes: list[Shape]
    blocks: list[tuple[str, object]] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- prompts
def _phrase(shape: Shape, with_size: bool, with_position: bool) -> str:
    words = (f"{shape.size} " if with_size else "") + f"{shape.colour} {shape.kind}"
    return words + (f" {shape.position}" if with_position else "")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def prompt_for(shapes: list[Shape], rng: random.Random, with_background: bool,
               size_rate: float = 0.4, position_rate: float = 0.3) -> str:
    """"Write about a red circle on a white background." Colour and kind always; the rest sometimes."""
    phrases = ["a " + _phrase(s, rng.random() < size_rate, rng.random() < position_rate) for s in shapes]
    tail = f" on a {shapes[0].background} background" if with_background else ""
    return f"{rng.choice(PROMPT_VERBS)} {_join(phrases)}{tail}."


# ---------------------------------------------------------------------------------------------- articles
def _sentences(style: str, shape: Shape, index: int) -> tuple[str, str]:
    """(the text before the picture, the text after it) for one shape."""
    s = shape
    if style == "plain":
        before = f"Picture {NUMBER_WORDS[index + 1]} shows a {s.describe()}."
        after = f"The {s.kind} is {s.colour}. A {s.kind} has {CORNERS[s.kind]} corners."
    elif style == "lesson":
        before = (f"Look at this {s.size} {s.colour} {s.kind}. "
                  f"It sits {s.position} on a {s.background} background.")
        after = f"Can you see the {s.colour} {s.kind}? It has {CORNERS[s.kind]} corners."
    elif style == "story":
        before = f"The {s.colour} {s.kind} was {s.size}. It lived {s.position} on a {s.background} background."
        after = f"It was a happy {s.kind}."
    else:
        raise ValueError(f"unknown article style {style!r}")
    return before, after


def _intro(style: str, shapes: list[Shape]) -> str:
    n = len(shapes)
    what = f"a {shapes[0].colour} {shapes[0].kind}" if n == 1 else f"{NUMBER_WORDS[n]} shapes"
    if style == "plain":
        return f"This is a short article about {what}."
    if style == "lesson":
        return "Let us learn about shapes and colours."
    return f"Once upon a time, there {'was' if n == 1 else 'were'} {what}."


def _outro(style: str, shapes: list[Shape]) -> str:
    if style == "plain":
        return "That is the end of the article."
    if style == "lesson":
        return f"Now you know {NUMBER_WORDS[len(shapes)]} {'shape' if len(shapes) == 1 else 'shapes'}."
    return "The end."


def write_article(prompt: str, shapes: list[Shape], style: str) -> Article:
    """The article for `prompt` about `shapes`: intro, then per shape its sentence, its picture and a remark."""
    article = Article(prompt=prompt, style=style, shapes=shapes)
    text = _intro(style, shapes)
    for i, shape in enumerate(shapes):
        before, after = _sentences(style, shape, i)
        article.blocks += [("text", f"{text} {before}"), ("image", shape)]
        text = after
    article.blocks.append(("text", f"{text} {_outro(style, shapes)}"))
    return article


# ---------------------------------------------------------------------------------------------- sampling
def sample_shapes(rng: random.Random, combos: list[tuple[str, str]], count: int, background: str) -> list[Shape]:
    shapes = []
    for _ in range(count):
        colour, kind = rng.choice(combos)
        size, position = rng.choice(list(SIZES)), rng.choice(list(POSITIONS))
        shapes.append(Shape(colour=colour, kind=kind, size=size, position=position, background=background,
                            dx=rng.randint(-JITTER, JITTER), dy=rng.randint(-JITTER, JITTER)))
    return shapes


def sample_count(rng: random.Random) -> int:
    return rng.choices((1, 2, 3), weights=(0.55, 0.35, 0.10))[0]


def sample_article(rng: random.Random, combos: list[tuple[str, str]]) -> Article:
    """One training document: 1-3 shapes of the given (colour, kind) pairs on one background, a prompt for them
    that names some of their attributes, and the article in a random style."""
    shapes = sample_shapes(rng, combos, sample_count(rng), rng.choice(list(BACKGROUNDS)))
    prompt = prompt_for(shapes, rng, with_background=rng.random() < 0.5)
    return write_article(prompt, shapes, rng.choice(STYLES))

