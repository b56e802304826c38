"""How people ask for shapes: prompts generated from a small grammar, part of which training never sees.

A prompt is built in layers, each drawn from its own choices:

    opening   "" | "So, " | "Hey, " ...        politeness  "Please " | ", thanks" ...
    frame     "Write about {x}" | "Can you draw {x}?" | "{x}" | "I'd like to see {x}" ...
    things    "a red circle" | "a big circle in red on the left" | "a circle and then a blue square" ...
    filler    " for my class" | " in a few sentences" ...   (words that carry nothing)
    casing    as written | lower | UPPER | Title Case          ending  "." | "!" | "" | "?" ...

Training frames are themselves built, request x verb x document x preposition ("could you draft a worksheet
covering {x}?"), beside short ones ("describe {x}"): thousands of ways round the things asked for, several with
words like "a poster" that start as a shape would, so the model learns that none of them ask for a picture.

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
# The training frames: request x verb x document x preposition, and short ones.
VERBS = ("write", "make", "create", "produce", "give me", "prepare", "draft", "type", "generate", "do",
         "send me", "build")
DOCUMENTS = ("an article", "a story", "a lesson", "a page", "a short text", "a text", "a report", "an essay",
             "a paragraph", "a description", "a post", "a summary", "a blurb", "a document", "a guide",
             "an illustrated article", "a short story", "a handout", "a worksheet", "some text", "something",
             "a poem", "a caption", "an explainer")
ABOUT_WORDS = ("about", "on", "featuring", "describing", "showing", "covering", "regarding", "that shows")
REQUESTS = ("{verb} {doc} {about} {x}", "can you {verb} {doc} {about} {x}?", "could you {verb} {doc} {about} {x}?",
            "would you {verb} {doc} {about} {x}?", "i want {doc} {about} {x}", "i would like {doc} {about} {x}",
            "i need {doc} {about} {x}", "we need {doc} {about} {x}", "my teacher wants {doc} {about} {x}",
            "{doc} {about} {x}", "{doc} {about} {x}, please?")
BUILT_FRAMES = tuple(sorted({r.format(verb=v, doc=d, about=a, x="{x}")
                             for r in REQUESTS for v in VERBS for d in DOCUMENTS for a in ABOUT_WORDS}))
SHORT_FRAMES = (
    "write about {x}", "describe {x}", "tell me about {x}", "show me {x}", "draw {x}", "paint {x}",
    "illustrate {x}", "explain {x}", "talk about {x}", "present {x}", "picture {x}", "imagine {x}",
    "draw me {x}", "paint me {x}", "render {x}", "visualise {x}", "visualize {x}", "teach me about {x}",
    "tell a story about {x}", "teach a lesson on {x}", "say something about {x}", "i want to read about {x}",
    "i'd like to see {x}", "i would love to see {x}", "i want to see {x}", "we want to read about {x}",
    "can you write about {x}?", "could you describe {x}?", "would you draw {x}?", "can you show me {x}?",
    "can you paint {x}?", "could you draw me {x}?", "will you tell me about {x}?", "would you explain {x}?",
    "what does {x} look like?", "what can you tell me about {x}?", "how would you describe {x}?",
    "what would {x} look like?", "do you know {x}?", "have you seen {x}?", "can i see {x}?",
    "my topic is {x}", "the topic is {x}", "topic: {x}", "subject: {x}", "theme: {x}", "prompt: {x}",
    "today's topic: {x}", "{x}", "{x} please", "just {x}", "only {x}", "something with {x}",
    "the subject of today is {x}", "next one: {x}", "one about {x}", "everything about {x}",
)
# Each part's frames in groups drawn alike: a prompt is as likely short ("describe {x}") as built.
FRAME_GROUPS = {"train": (BUILT_FRAMES, SHORT_FRAMES), "held_out": ((
        "compose a short piece about {x}", "give me a few lines about {x}", "put together a page on {x}",
        "depict {x}", "portray {x}", "jot down a note about {x}", "craft a little text about {x}",
        "outline {x}", "share something about {x}", "chronicle {x}", "sketch {x} for me",
        "is it possible to depict {x}?", "how about {x}?", "any chance you could portray {x}?",
        "mind writing up {x}?", "i'm curious about {x}", "i'd enjoy reading about {x}", "let's have {x}",
        "here is my request: {x}", "a few words on {x}",
    ),)}
FRAMES = {part: tuple(f for group in groups for f in group) for part, groups in FRAME_GROUPS.items()}
POLITE_BEFORE = {"train": ("please ", "please, ", "kindly ", "hey, ", "hi! ", "hello, ", "hi there, ", "hey there! ",
                           "hello again. ", "dear model, ", "greetings! ", "yo, ", "thanks in advance: ",
                           "hi, i have a question: ", "one favour: ", "if you can, ", "when you can, "),
                 "held_out": ("pretty please, ", "good morning! ", "excuse me, ")}
POLITE_AFTER = {"train": (", please", " please", ", thanks", ". thank you", " for me", ", thank you so much",
                          ". thanks a lot", ", ty", ", if you can", ", if possible", ", if you would", " :)",
                          ". that would be great", ". i'd be grateful", ", thanks in advance", " for us",
                          ". many thanks", ", whenever you can", ", if it's no trouble", ". thx"),
                "held_out": (", cheers", ", if you don't mind", ". much appreciated")}
# Words that carry nothing, several with an article ("for a poster") so "a" does not always begin a shape.
_AUDIENCES = ("my class", "a child", "a kid", "my kids", "my sister", "a friend", "a school project", "a poster",
              "a newsletter", "a book", "my students", "a website", "a slide", "the team", "my son", "my daughter",
              "a birthday card", "a quiz", "an exam", "a workshop", "a blog", "grandma", "beginners", "everyone")
_MANNERS = ("in simple words", "in a few sentences", "in two sentences", "in one paragraph", "in plain english",
            "in a friendly tone", "in a fun way", "in detail", "in a nutshell", "in a minute", "as a surprise",
            "as a gift", "as an example", "as a treat", "at some point", "if you are able", "as soon as you can",
            "when you have time", "if you have time", "whenever", "today", "quickly", "now", "briefly", "again",
            "once more", "this afternoon", "tonight", "for fun", "for practice", "as a test", "as usual")
_TRAIN_FILLERS = tuple(f" for {a}" for a in _AUDIENCES) + tuple(f" {m}" for m in _MANNERS) + (
    ". keep it short", ". make it simple", ". it is for a school project", ". nothing fancy", ". be brief",
    ". a short one is fine", ". one page is enough", ". keep it clear", ". use easy words", ". no rush")
FILLERS = {"train": _TRAIN_FILLERS,
           "held_out": (" real quick", " for my little brother", " when you get a chance", " if you have a moment")}
OPENINGS = {"train": ("so, ", "okay, ", "well, ", "now, ", "ok, ", "ok so ", "hmm, ", "listen, ", "look, ", "oh, ",
                      "yes, ", "first, ", "also, ", "and ", "next, ", "one more: ", "new task: ", "another one: ",
                      "question: ", "so ", "um, ", "hm. ", "again: ", "lastly, "),
            "held_out": ("alright, ", "right, ")}
# Rates of the optional layers, and of each casing. Training oversamples the rarer ones so the model reads
# them often; the held-out part keeps the rates of the prompts it was first measured on.
RATES = {"train": {"filler": 0.35, "polite": 0.4, "opening": 0.2, "casing": (0.55, 0.15, 0.15, 0.15)},
         "held_out": {"filler": 0.2, "polite": 0.3, "opening": 0.1, "casing": (0.7, 0.15, 0.07, 0.08)}}
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
    # everyday things and animals: the nearest outline where there is one ("a tree" is a triangle); a round
    # body for the animals without one, so "a horse" still gets a note and an article about a known shape
    "face": "circle", "apple": "circle", "clock": "circle", "planet": "circle", "button": "circle",
    "cookie": "circle", "dog": "circle", "cat": "circle", "horse": "circle", "cow": "circle", "house": "square",
    "door": "square", "table": "square", "car": "square", "bus": "square",
    "phone": "square", "tree": "triangle", "tent": "triangle", "sail": "triangle", "boat": "triangle",
    "hat": "triangle", "bird": "triangle", "fish": "diamond", "leaf": "diamond", "sign": "diamond",
    "plane": "cross", "sword": "cross", "flag": "square",
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

    def phrase(self, rng: random.Random, article: bool = True) -> str:
        colour, kind = self.colour_word, self.kind_word
        core = rng.choices((f"{colour} {kind}", f"{kind} in {colour}", f"{colour}-coloured {kind}"),
                           weights=(0.8, 0.12, 0.08))[0]
        if self.size_word:  # size leads: "a big circle in red"
            core = f"{self.size_word} {core}"
        text = with_article(core) if article else core
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


def things_phrase(asked: list[Asked], rng: random.Random, articles: bool = True) -> str:
    """The things asked for, joined: "a red circle and then a big square in blue" (without articles, "red
    circle and big square in blue", as people write a topic)."""
    phrases = [a.phrase(rng, articles) for a in asked]
    text = phrases[0]
    for i, phrase in enumerate(phrases[1:], 1):
        text += (" and " if i == len(phrases) - 1 and rng.random() < 0.6 else rng.choice(JOINS)) + phrase
    return text


def _case(text: str, rng: random.Random, weights: tuple[float, ...]) -> str:
    style = rng.choices(("sentence", "lower", "upper", "title"), weights=weights)[0]
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
    things = things_phrase(asked, rng)
    groups = FRAME_GROUPS[part]
    # one group draws no group: the held-out part's prompts stay those its figures were first measured on
    frame = rng.choice(groups[0] if len(groups) == 1 else rng.choice(groups))
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
    rates = RATES[part]
    if rng.random() < rates["filler"]:
        text += rng.choice(FILLERS[part])
    polite = rng.random()
    if polite < rates["polite"] / 2:
        text = rng.choice(POLITE_BEFORE[part]) + text
    elif polite < rates["polite"]:
        text += rng.choice(POLITE_AFTER[part])
    if rng.random() < rates["opening"]:
        text = rng.choice(OPENINGS[part]) + text
    return _case(text, rng, rates["casing"]) + rng.choice(QUESTION_ENDINGS if question else ENDINGS)
