"""What a free prompt asks of the shapes world, and whether a stored document shows it.

The README's and examples/' prompts are written by hand, not drawn from the grammar, so the eval's EvalPrompt (which
the grammar fills in) does not exist for them: this reads one back from the words, with the grammar's own
vocabulary (phrasing.py: "big" is large, "on the left" is at the left, "gray" is grey). A size word belongs to the
next shape word, a place phrase to the shape word before it, "X background" to the whole prompt.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .checker import Reading, mentions, read_image
from .phrasing import BACKGROUND_WORDS, POSITION_WORDS, SIZE_WORDS
from .world import COLOURS, SHAPES


@dataclass(frozen=True)
class AskedShape:
    colour: str | None
    kind: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class AskedPrompt:
    shapes: tuple[AskedShape, ...]
    background: str | None = None


def _find(words: dict[str, tuple[str, ...]], text: str) -> str | None:
    """The world's name of the last phrase of `words` in `text` (longest phrases first: "on the left side")."""
    best = None
    for name, phrases in words.items():
        for phrase in phrases:
            for m in re.finditer(r"\b" + re.escape(phrase) + r"\b", text):
                if best is None or m.start() > best[0]:
                    best = (m.start(), name)
    return best[1] if best else None


def asked_of(prompt: str) -> AskedPrompt:
    """The shapes (colour, kind, size, place) and background a prompt asks for, in order."""
    text = prompt.lower()
    background_match = re.search(r"\b([a-z]+) background\b", text)
    background = None
    if background_match:  # a background the world has not ("blue") is asked all the same: it cannot be met
        background = _find(BACKGROUND_WORDS, background_match.group(0)) or background_match.group(1)
    if background_match:  # its colour word is not a shape's
        text = text[:background_match.start()] + " " * len(background_match.group(0)) + text[background_match.end():]
    kinds = [m for m in re.finditer(r"\b(" + "|".join(SHAPES) + r")s?\b", text)]
    shapes = []
    for i, m in enumerate(kinds):
        before = text[kinds[i - 1].end() if i else 0:m.start()]
        # "in red" right after the kind before is that shape's colour: "a circle in red and a blue cross"
        before = re.sub(r"^\s+in\s+(" + "|".join(COLOURS) + r")\b", " ", before)
        after = text[m.end():kinds[i + 1].start() if i + 1 < len(kinds) else len(text)]
        colour = [c for c in re.findall(r"[a-z]+", before) if c in COLOURS]
        # "a circle in red": the colour may follow the kind
        colour_after = re.match(r"\s+in\s+(" + "|".join(COLOURS) + r")\b", after)
        shapes.append(AskedShape(colour=colour[-1] if colour else (colour_after.group(1) if colour_after else None),
                                 kind=m.group(1), size=_find(SIZE_WORDS, before),
                                 position=_find(POSITION_WORDS, after)))
    return AskedPrompt(tuple(shapes), background)


def _pictures(folder: Path) -> list[tuple[str, Image.Image]]:
    """A stored document's pictures, each with the text since the one before."""
    doc = json.loads((folder / "document.json").read_text())
    found, text = [], ""
    for block in doc["blocks"]:
        if block["type"] == "text":
            text += " " + block["text"]
        else:
            found.append((text, Image.open(folder / block["path"]).convert("RGB")))
            text = ""
    return found


def _differs(what: str, asked: str | None, read: str | None) -> list[str]:
    return [f"{what}: asked {asked}, painted {read}"] if asked is not None and asked != read else []


def problems(folder: str | Path, prompt: str, image_only: bool = False) -> list[str]:
    """How the document stored in `folder` fails its prompt (empty: it shows what was asked). A document must
    have one picture per shape asked, each of the asked colour, kind, size, place and background, and its text
    must name the asked (colour, kind) pairs in order before them."""
    asked = asked_of(prompt)
    if not asked.shapes:
        return [f"the prompt asks for no shape of the world: {prompt!r}"]
    pictures = _pictures(Path(folder))
    found = []
    if len(pictures) != len(asked.shapes):
        found.append(f"{len(pictures)} pictures for {len(asked.shapes)} shapes asked")
    for n, (shape, (text, image)) in enumerate(zip(asked.shapes, pictures), 1):
        reading: Reading = read_image(image)
        said = mentions(text)
        if not image_only and (not said or said[-1] != (shape.colour, shape.kind)):
            found.append(f"picture {n}: the text before it names {said[-1] if said else 'nothing'}, "
                         f"not {(shape.colour, shape.kind)}")
        found += [f"picture {n}: {p}" for p in
                  _differs("colour", shape.colour, reading.colour) + _differs("kind", shape.kind, reading.kind)
                  + _differs("size", shape.size, reading.size) + _differs("place", shape.position, reading.position)
                  + _differs("background", asked.background, reading.background)]
    return found
