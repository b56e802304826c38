"""Pictures of the shapes world, drawn with Pillow.

Every shape fills the same square box (centre +- half extent), so the checker can fit each kind to the box it
finds and compare. Drawn at 4x and reduced, for smooth edges.
"""
from __future__ import annotations

from PIL import Image, ImageDraw

from .world import BACKGROUNDS, COLOURS, IMAGE_SIZE, Shape

SUPERSAMPLE = 4
CROSS_ARM = 0.4  # width of the cross's arms, as a share of the box side


def outline(kind: str, box: tuple[float, float, float, float]) -> list[tuple[float, float]] | None:
    """The polygon of a shape in box (x0, y0, x1, y1); None for the circle (an ellipse)."""
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if kind == "circle":
        return None
    if kind == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if kind == "triangle":  # pointing up
        return [(cx, y0), (x1, y1), (x0, y1)]
    if kind == "diamond":
        return [(cx, y0), (x1, cy), (cx, y1), (x0, cy)]
    if kind == "cross":
        ax, ay = CROSS_ARM * (x1 - x0) / 2, CROSS_ARM * (y1 - y0) / 2
        return [(cx - ax, y0), (cx + ax, y0), (cx + ax, cy - ay), (x1, cy - ay), (x1, cy + ay), (cx + ax, cy + ay),
                (cx + ax, y1), (cx - ax, y1), (cx - ax, cy + ay), (x0, cy + ay), (x0, cy - ay), (cx - ax, cy - ay)]
    raise ValueError(f"unknown shape kind {kind!r}")


def draw_kind(draw: ImageDraw.ImageDraw, kind: str, box, fill) -> None:
    points = outline(kind, box)
    if points is None:
        draw.ellipse(box, fill=fill)
    else:
        draw.polygon(points, fill=fill)


def render(shape: Shape, size: int = IMAGE_SIZE) -> Image.Image:
    """The picture of `shape`, size x size RGB (positions are laid out for 64 px and scale with size)."""
    s = SUPERSAMPLE * size / IMAGE_SIZE
    image = Image.new("RGB", (SUPERSAMPLE * size,) * 2, BACKGROUNDS[shape.background])
    cx, cy = shape.centre
    r = shape.half_extent
    draw_kind(ImageDraw.Draw(image), shape.kind, ((cx - r) * s, (cy - r) * s, (cx + r) * s - 1, (cy + r) * s - 1),
              COLOURS[shape.colour])
    return image.resize((size, size), Image.Resampling.BOX)
