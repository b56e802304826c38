"""How people ask for shapes: prompts generated from a small grammar, part of which training never sees.

A prompt is built in layers, each drawn from its own choices:

    opening   "" | "So, " | "Hey, " ...        politeness  "Please " | ", thanks" ...
    frame     "Write about {x}" | "Can you draw {x}?" | "{x}" | "I'd like to see {x}" ...
    things    "a red circle" | "a big circle in red on the left" | "a circle and then a blue square" ...
    filler    " for my class" | " in a few sentences" ...   (words that carry nothing)
    casing    as written | lower | UPPER | Title Case          ending  "." | "!" | "" | "?" ...

Each layer with a vocabulary (frames, politeness, fillers, openings) is split in two: TRAIN and HELD_OUT. Training
prompts use only TRAIN; `held_out=True` draws every such layer from HELD_OUT alone, so an evaluation on those
prompts measures phrasings and verbs the model has never read. The words for the world's things (synonyms such as
"big" or "on the left", and stand-ins for what the world cannot draw) are shared: they are vocabulary, not phrasing.

Stand-ins: a prompt may ask for a thing the world has no word for ("a pink star"); training prompts do so
sometimes, and their article says so in its first sentence and writes about the nearest thing the world knows.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from .world import Shape

# ---------------------------------------------------------------------------------------------- the grammar
# {x}: the things asked for. A frame ending in "?" is a question: its ending is "?" or nothing.
FRAMES = {
    "train": (
        "write about {x}", "write an article about {x}", "write a story about {x}", "write a lesson about {x}",
        "write a page about {x}", "write something about {x}", "write a short text on {x}", "describe {x}",
        "tell me about {x}", "show me {x}", "draw {x}", "paint {x}", "illustrate {x}", "explain {x}",
        "make an article about {x}", "create a document about {x}", "generate a page about {x}",
        "produce an illustrated article about {x}", "talk about {x}", "present {x}", "picture {x}",
        "prepare a lesson on {x}", "give me an article about {x}", "give me a story about {x}",
        "can you write about {x}?", "could you describe {x}?", "would you draw {x}?", "can you show me {x}?",
        "what does {x} look like?", "what can you tell me about {x}?", "how would you describe {x}?",
        "will you tell me about {x}?", "i want an article about {x}", "i would like a story about {x}",
        "i'd like to see {x}", "i need a page about {x}", "i want to read about {x}", "my topic is {x}",
        "topic: {x}", "{x}", "an article about {x}", "a story about {x}",
    ),
    "held_out": (
        "compose a short piece about {x}", "give me a few lines about {x}", "put together a page on {x}",
        "depict {x}", "portray {x}", "jot down a note about {x}", "craft a little text about {x}",
        "outline {x}", "share something about {x}", "chronicle {x}", "sketch {x} for me",
        "is it possible to depict {x}?", "how about {x}?", "any chance you could portray {x}?",
        "mind writing up {x}?", "i'm curious about {x}", "i'd enjoy reading about {x}", "let's have {x}",
        "here is my request: {x}", "a few words on {x}",
    ),
}
POLITE_BEFORE = {"train": ("please ", "please, ", "kindly ", "hey, ", "hi! ", "hello, "),
                 "held_out": ("pretty please, ", "good morning! ", "excuse me, ")}
POLITE_AFTER = {"train": (", please", " please", ", thanks", ". thank you", " for me"),
                "held_out": (", cheers", ", if you don't mind", ". much appreciated")}
FILLERS = {"train": (" for my class", " for a child", " in simple words", " in a few sentences", " today",
                     " quickly", " now", " briefly"),
           "held_out": (" real quick", " for my little brother", " when you get a chance", " if you have a moment")}
OPENINGS = {"train": ("so, ", "okay, ", "well, ", "now, "), "held_out": ("alright, ", "right, ")}
ENDINGS = (".", ".", ".", "!", "", "...", " .", "!!")
QUESTION_ENDINGS = ("?", "?", "?", "", " ?")

# The world's words as people say them; each list's first entry is the word the articles use.
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
POSITION_WORDS = {
    "in the middle": ("in the middle", "in the centre", "in the center", "at the centre"),
    "at the left": ("at the left", "on the left", "on the left side", "to the left"),
    "at the right": ("at the right", "on the right", "on the right side", "to the right"),
    "at the top": ("at the top", "near the top", "up at the top"),
    "at the bottom": ("at the bottom", "near the bottom", "down at the bottom"),
}
BACKGROUND_WORDS = {"white": ("white",), "black": ("black",), "grey": ("grey", "gray"), "beige": ("beige",)}
# Words the world cannot draw, with the nearest thing it can: by outline for kinds, by hue for colours.
KIND_STAND_INS = {
    "star": "cross", "plus": "cross", "asterisk": "cross", "snowflake": "cross", "flower": "cross",
    "ball": "circle", "sun": "circle", "moon": "circle", "coin": "circle", "wheel": "circle", "ring": "circle",
    "dot": "circle", "oval": "circle", "egg": "circle", "box": "square", "cube": "square", "tile": "square",
    "window": "square", "rectangle": "square", "block": "square", "pyramid": "triangle", "roof": "triangle",
    "wedge": "triangle", "cone": "triangle", "arrow": "triangle", "mountain": "triangle", "kite": "diamond",
    "gem": "diamond", "rhombus": "diamond", "crystal": "diamond",
}
COLOUR_STAND_INS = {
    "pink": "red", "crimson": "red", "scarlet": "red", "maroon": "red", "gold": "yellow", "lemon": "yellow",
    "amber": "orange", "brown": "orange", "lime": "green", "olive": "green", "emerald": "green", "navy": "blue",
    "teal": "blue", "cyan": "blue", "turquoise": "blue", "violet": "purple", "lilac": "purple",
    "magenta": "purple", "lavender": "purple",
}
JOINS = (" and ", ", then ", " and then ", ", followed by ", ", and ")


def with_article(phrase: str) -> str:
    """"an orange circle", "a red circle": the article the first word's sound takes (the world's words all
    sound as they are spelled)."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


@dataclass(frozen=True)
class Asked:
    """What a prompt asks about one shape, in the prompt's words, and what the world will draw for it."""

    shape: Shape
    colour_word: str  # the shape's colour, or a stand-in for it
    kind_word: str
    size_word: str | None = None  # None: the prompt leaves it to the article
    position_word: str | None = None

    def phrase(self, rng: random.Random) -> str:
        colour, kind = self.colour_word, self.kind_word
        core = rng.choices((f"{colour} {kind}", f"{kind} in {colour}", f"{colour}-coloured {kind}"),
                           weights=(0.8, 0.12, 0.08))[0]
        if self.size_word:  # size leads: "a big circle in red"
            core = f"{self.size_word} {core}"
        text = with_article(core)
        return text + (f" {self.position_word}" if self.position_word else "")

    @property
    def stand_ins(self) -> list[tuple[str, str]]:
        """(the prompt's word, the world's nearest) for each word the world cannot draw."""
        pairs = []
        if self.colour_word != self.shape.colour:
            pairs.append((self.colour_word, self.shape.colour))
        if self.kind_word != self.shape.kind:
            pairs.append((self.kind_word, self.shape.kind))
        return pairs


def ask(shape: Shape, rng: random.Random, size_rate: float = 0.4, position_rate: float = 0.3,
        stand_in_rate: float = 0.0) -> Asked:
    """How a prompt might ask for `shape`: colour and kind always (maybe by a stand-in), size and position
    sometimes, each in one of the words people use for it."""
    colour, kind = shape.colour, shape.kind
    if rng.random() < stand_in_rate:
        if rng.random() < 0.5:
            kind = rng.choice(sorted(w for w, k in KIND_STAND_INS.items() if k == shape.kind))
        else:
            colour = rng.choice(sorted(w for w, c in COLOUR_STAND_INS.items() if c == shape.colour))
    size = rng.choice(SIZE_WORDS[shape.size]) if rng.random() < size_rate else None
    position = rng.choice(POSITION_WORDS[shape.position]) if rng.random() < position_rate else None
    return Asked(shape, colour, kind, size, position)


def _things(asked: list[Asked], rng: random.Random) -> str:
    phrases = [a.phrase(rng) for a in asked]
    text = phrases[0]
    for i, phrase in enumerate(phrases[1:], 1):
        text += (" and " if i == len(phrases) - 1 and rng.random() < 0.6 else rng.choice(JOINS)) + phrase
    return text


def _case(text: str, rng: random.Random) -> str:
    style = rng.choices(("sentence", "lower", "upper", "title"), weights=(0.7, 0.15, 0.07, 0.08))[0]
    if style == "lower":
        return text.lower()
    if style == "upper":
        return text.upper()
    if style == "title":
        return " ".join(w[:1].upper() + w[1:] for w in text.split(" "))
    text = text.replace(" i ", " I ").replace(" i'", " I'")
    return text[:1].upper() + text[1:]


def phrase_prompt(asked: list[Asked], background: str | None, rng: random.Random, held_out: bool = False) -> str:
    """One prompt for the shapes `asked` (and the background, when given), from the TRAIN part of the grammar,
    or from the HELD_OUT part alone."""
    part = "held_out" if held_out else "train"
    things = _things(asked, rng)
    frame = rng.choice(FRAMES[part])
    question = frame.endswith("?")
    frame = frame.rstrip("?")
    tail = ""
    if background:
        word = rng.choice(BACKGROUND_WORDS[background])
        where = rng.choice(("on a {} background", "against a {} background", "with a {} background"))
        if rng.random() < 0.25:  # word order: the background first
            frame = f"{where.format(word)}, {frame}"
        else:
            tail = " " + where.format(word)
    text = frame.replace("{x}", things + tail)
    if rng.random() < 0.2:
        text += rng.choice(FILLERS[part])
    polite = rng.random()
    if polite < 0.15:
        text = rng.choice(POLITE_BEFORE[part]) + text
    elif polite < 0.3:
        text += rng.choice(POLITE_AFTER[part])
    if rng.random() < 0.1:
        text = rng.choice(OPENINGS[part]) + text
    return _case(text, rng) + rng.choice(QUESTION_ENDINGS if question else ENDINGS)
