"""The shapes world: what a picture can hold, and the words that name it.

A picture is one flat shape on a plain background. Five attributes describe it, each with a small vocabulary:
colour, shape, size, position and background. Some (colour, shape) pairs never appear in training, so an
evaluation on them measures whether the model composes what it learned rather than recalls it.
"""
from __future__ import annotations

from dataclasses import dataclass

IMAGE_SIZE = 64  # pixels; the VAE factor 8 makes latents 8 x 8

# Shape colours: far apart in RGB and from every background, so a pixel's nearest name is never in doubt.
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 170, 70),
    "blue": (40, 90, 220),
    "purple": (140, 60, 190),
}
BACKGROUNDS = {
    "white": (250, 250, 250),
    "black": (20, 20, 20),
    "grey": (128, 128, 128),
    "beige": (225, 205, 170),
}
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
# Half the side of the shape's bounding box, in pixels. Small is 13, not the first 10: a latent pixel is 8 pixels
# wide, and at 10 a small diamond's tips and a small cross's arms fitted in the same few latents, so the VAE gave
# both back as one rounded blob (0% of small diamonds readable after a round trip; 67% at 13 with the shipped VAE).
SIZES = {"small": 13, "large": 18}
# Centre of the bounding box; every size fits at every position.
POSITIONS = {
    "in the middle": (32, 32),
    "at the left": (20, 32),
    "at the right": (44, 32),
    "at the top": (32, 20),
    "at the bottom": (32, 44),
}
# Never in a training document, text or picture: one per colour, spread over the shapes. (The VAE's decoder, part of
# a codec without text, also learns from pictures of every pair: dataset.write_pictures.)
HELD_OUT = (("red", "triangle"), ("orange", "cross"), ("yellow", "circle"), ("green", "diamond"),
            ("blue", "square"), ("purple", "triangle"))

CORNERS = {"circle": "no", "square": "four", "triangle": "three", "diamond": "four", "cross": "twelve"}


@dataclass(frozen=True)
class Shape:
    """One picture: the attributes the text names, plus a small offset the text does not (so no two
    pictures of the same description are identical pixels)."""

    colour: str
    kind: str
    size: str
    position: str
    background: str
    dx: int = 0
    dy: int = 0

    @property
    def combo(self) -> tuple[str, str]:
        return (self.colour, self.kind)

    @property
    def held_out(self) -> bool:
        return self.combo in HELD_OUT

    @property
    def centre(self) -> tuple[int, int]:
        x, y = POSITIONS[self.position]
        return x + self.dx, y + self.dy

    @property
    def half_extent(self) -> int:
        return SIZES[self.size]

    def describe(self) -> str:
        """The noun phrase the articles use: "small red circle at the left on a white background"."""
        return f"{self.size} {self.colour} {self.kind} {self.position} on a {self.background} background"


def all_combos() -> list[tuple[str, str]]:
    """Every (colour, kind) pair the world can draw, held-out ones too."""
    return [(c, k) for c in COLOURS for k in SHAPES]


def training_combos() -> list[tuple[str, str]]:
    return [combo for combo in all_combos() if combo not in HELD_OUT]
