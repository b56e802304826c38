"""Prompts and short illustrated articles about shapes, in a few styles.

An article answers its prompt: it names every shape the prompt asks for, in order, each in a sentence that gives
its size, colour, kind, position and background, and puts the picture right after that sentence. What the prompt
leaves open (size, position, background) the article chooses. Everything is drawn from a `random.Random`, so a
seed gives the same documents on every machine.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from ..prompts.templates import available as available_templates
from ..prompts.templates import render as render_template
from .phrasing import Asked, ask, phrase_prompt, things_phrase, with_article
from .world import BACKGROUNDS, CORNERS, POSITIONS, SIZES, Shape

STYLES = ("plain", "lesson", "story")
NUMBER_WORDS = {1: "one", 2: "two", 3: "three"}
# The first prompts' verbs: the eval's "combos" split still asks in these words, so its figures compare over time.
PROMPT_VERBS = ("Write about", "Write an article about", "Describe", "Tell me about", "Show me")
STAND_IN_RATE = 0.1  # training prompts that ask for something the world cannot draw
JITTER = 2  # pixels the centre may move without the text saying so
MAX_SHAPES = 3


@dataclass
class Article:
    """A prompt and the document that answers it: blocks are ("text", str) or ("image", Shape)."""

    prompt: str
    style: str
    shapes: list[Shape]
    blocks: list[tuple[str, object]] = field(default_factory=list)
    asked: list[Asked] = field(default_factory=list)  # how the prompt asked for each shape (phrasing.py)


# ---------------------------------------------------------------------------------------------- prompts
def _phrase(shape: Shape, with_size: bool, with_position: bool) -> str:
    words = (f"{shape.size} " if with_size else "") + f"{shape.colour} {shape.kind}"
    return words + (f" {shape.position}" if with_position else "")


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def prompt_for(shapes: list[Shape], rng: random.Random, with_background: bool,
               size_rate: float = 0.4, position_rate: float = 0.3) -> tuple[str, list[Asked]]:
    """"Write about a red circle on a white background." Colour and kind always; the rest sometimes. The first
    prompts' five-verb form, kept for the eval's "combos" split; training prompts come from phrasing.py.
    Returns the prompt and what it asked of each shape."""
    asked = []
    for s in shapes:
        with_size, with_position = rng.random() < size_rate, rng.random() < position_rate
        asked.append(Asked(s, s.colour, s.kind, s.size if with_size else None, s.position if with_position else None))
    phrases = [with_article(_phrase(a.shape, a.size_word is not None, a.position_word is not None)) for a in asked]
    tail = f" on a {shapes[0].background} background" if with_background else ""
    return f"{rng.choice(PROMPT_VERBS)} {_join(phrases)}{tail}.", asked


# ---------------------------------------------------------------------------------------------- articles
def _sentences(style: str, shape: Shape, index: int) -> tuple[str, str]:
    """(the text before the picture, the text after it) for one shape."""
    s = shape
    if style == "plain":
        before = f"Picture {NUMBER_WORDS[index + 1]} shows {with_article(s.describe())}."
        after = f"The {s.kind} is {s.colour}. A {s.kind} has {CORNERS[s.kind]} corners."
    elif style == "lesson":
        before = (f"Look at this {s.size} {s.colour} {s.kind}. "
                  f"It sits {s.position} on a {s.background} background.")
        after = f"Can you see the {s.colour} {s.kind}? It has {CORNERS[s.kind]} corners."
    elif style == "story":
        before = f"The {s.colour} {s.kind} was {s.size}. It lived {s.position} on a {s.background} background."
        after = f"It was a happy {s.kind}."  # "a happy": every kind's article is "a"
    else:
        raise ValueError(f"unknown article style {style!r}")
    return before, after


def _intro(style: str, shapes: list[Shape]) -> str:
    n = len(shapes)
    what = with_article(f"{shapes[0].colour} {shapes[0].kind}") if n == 1 else f"{NUMBER_WORDS[n]} shapes"
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


def stand_in_note(asked: list[Asked]) -> str:
    """The sentence an article opens with when the prompt asked for what the world cannot draw."""
    notes = []
    for a in asked:
        for word, nearest in a.stand_ins:
            what = f"the colour is {nearest}" if nearest == a.shape.colour else f"this is {with_article(nearest)}"
            notes.append(f"There is no {word} here, so {what} instead.")
    return " ".join(notes)


def write_article(prompt: str, shapes: list[Shape], style: str, note: str = "") -> Article:
    """The article for `prompt` about `shapes`: intro, then per shape its sentence, its picture and a remark.
    `note` (what the prompt asked for that the world lacks) opens it."""
    article = Article(prompt=prompt, style=style, shapes=shapes)
    text = (note + " " if note else "") + _intro(style, shapes)
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


def sample_pictures(rng: random.Random, combos: list[tuple[str, str]]) -> list[Shape]:
    """A document's pictures: 1-3 shapes of the given (colour, kind) pairs on one background."""
    return sample_shapes(rng, combos, sample_count(rng), rng.choice(list(BACKGROUNDS)))


def sample_article(pictures: random.Random, words: random.Random, combos: list[tuple[str, str]]) -> Article:
    """One training document: its pictures drawn from `pictures`, then from `words` a prompt for them that names
    some of their attributes and the article in a random style. Two streams, so a change to the wording never
    moves a pixel (the VAE trained on the pictures stays valid)."""
    shapes = sample_pictures(pictures, combos)
    asked = [ask(s, words, stand_in_rate=STAND_IN_RATE) for s in shapes]
    background = shapes[0].background if words.random() < 0.5 else None
    prompt = phrase_prompt(asked, background, words)
    article = write_article(prompt, shapes, words.choice(STYLES), stand_in_note(asked))
    article.asked = asked
    return article



# ---------------------------------------------------------------------------------------------- binding
# The first training set asks for a size in 40% of shapes and has two or more shapes in 45% of documents, so a
# prompt asking two shapes for two different sizes was about 1 document in 35: the model learned that "small"
# follows "small" and wrote it for both shapes ("a small blue square and a large yellow triangle" -> "Picture two
# shows a small yellow triangle"). The binding set asks each shape's attributes most of the time, in documents of
# two and three shapes mostly, so the article can only be right by copying each shape's own words in order.
BINDING_COUNTS = {1: 0.3, 2: 0.5, 3: 0.2}
BINDING_SIZE_RATE, BINDING_POSITION_RATE = 0.8, 0.6
TEMPLATE_RATE = 0.4  # binding prompts wrapped in one of dreamgen's prompt templates (templates/prompts/)
# How people put a topic into a template: the things alone, or a short frame of their own ("How to draw ...").
TOPIC_FRAMES = ("{x}", "{x}", "{x}", "how to draw {x}", "how to paint {x}", "how to make {x}", "drawing {x}",
                "painting {x}", "the story of {x}", "news about {x}", "all about {x}", "{x} explained")


def template_topic(asked: list[Asked], background: str | None, rng: random.Random) -> str:
    """A topic for a template: "a small red circle and a big square in blue on a grey background", "how to draw
    green diamond in the middle" (people drop the article), or a whole prompt of the grammar's training part."""
    if rng.random() < 0.3:
        return phrase_prompt(asked, background, rng).rstrip(".!? ")
    things = things_phrase(asked, rng, articles=rng.random() < 0.7)
    if background:
        things += f" on a {background} background"
    topic = rng.choice(TOPIC_FRAMES).replace("{x}", things)
    style = rng.choices(("sentence", "lower", "title"), weights=(0.5, 0.3, 0.2))[0]
    if style == "sentence":
        return topic[:1].upper() + topic[1:]
    return topic if style == "lower" else " ".join(w[:1].upper() + w[1:] for w in topic.split(" "))


def binding_prompt(asked: list[Asked], background: str | None, rng: random.Random) -> str:
    """The prompt of a binding document: the grammar's training part, or a template around a topic."""
    if rng.random() < TEMPLATE_RATE:
        return render_template(rng.choice(available_templates()[1:]), template_topic(asked, background, rng))
    return phrase_prompt(asked, background, rng)


def sample_binding_article(pictures: random.Random, words: random.Random,
                           combos: list[tuple[str, str]]) -> Article:
    """One document of the binding set (see BINDING_COUNTS): pictures from `pictures`, words from `words`."""
    count = pictures.choices(list(BINDING_COUNTS), weights=list(BINDING_COUNTS.values()))[0]
    shapes = sample_shapes(pictures, combos, count, pictures.choice(list(BACKGROUNDS)))
    asked = [ask(s, words, size_rate=BINDING_SIZE_RATE, position_rate=BINDING_POSITION_RATE,
                 stand_in_rate=STAND_IN_RATE) for s in shapes]
    background = shapes[0].background if words.random() < 0.5 else None
    prompt = binding_prompt(asked, background, words)
    article = write_article(prompt, shapes, words.choice(STYLES), stand_in_note(asked))
    article.asked = asked
    return article
