"""Read a picture of the shapes world back into words, from pixel statistics alone, and read the text around it.

The picture: the background is the median colour of the border; the shape is the largest connected region of
pixels far from it; its colour is the median of the region's inner pixels, named by the nearest palette colour;
its kind is the kind whose outline, fitted to the region's bounding box, overlaps the region best (IoU).
Deterministic, no learned parts, so it can judge any model.
"""
from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from .render import SUPERSAMPLE, draw_kind
from .world import BACKGROUNDS, COLOURS, IMAGE_SIZE, POSITIONS, SHAPES, SIZES

BORDER = 3  # pixels of the frame that sample the background
FOREGROUND_DISTANCE = 70.0  # RGB distance from the background that makes a pixel part of the shape
MIN_PIXELS = 12  # a region smaller than this is noise, not a shape


@dataclass(frozen=True)
class Reading:
    """What the checker sees in one picture (None where it sees no shape)."""

    background: str
    colour: str | None = None
    kind: str | None = None
    size: str | None = None
    position: str | None = None
    pixels: int = 0  # the shape's area
    fit: float = 0.0  # IoU of the best outline


def _nearest(rgb: np.ndarray, palette: dict) -> str:
    return min(palette, key=lambda name: float(np.sum((rgb - np.asarray(palette[name], dtype=np.float64)) ** 2)))


def _largest_region(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (H, W)."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    best, best_size, label = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        label += 1
        labels[y0, x0] = label
        queue, size = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = label
                    queue.append((ny, nx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else np.zeros_like(mask)


def outline_mask(kind: str, box: tuple[int, int, int, int], size: int) -> np.ndarray:
    """A boolean (size, size) mask of `kind` filling box (x0, y0, x1, y1), pixel edges inclusive-exclusive."""
    s = SUPERSAMPLE
    canvas = Image.new("L", (size * s, size * s), 0)
    x0, y0, x1, y1 = box
    draw_kind(ImageDraw.Draw(canvas), kind, (x0 * s, y0 * s, x1 * s - 1, y1 * s - 1), 255)
    return np.asarray(canvas.resize((size, size), Image.Resampling.BOX)) >= 128


def read_image(image: Image.Image) -> Reading:
    """The background, and the shape's colour, kind, size and position, of one picture."""
    pixels = np.asarray(image.convert("RGB").resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR),
                        dtype=np.float64)  # (H, W, 3)
    frame = np.ones(pixels.shape[:2], dtype=bool)
    frame[BORDER:-BORDER, BORDER:-BORDER] = False
    background_rgb = np.median(pixels[frame], axis=0)
    background = _nearest(background_rgb, BACKGROUNDS)

    distance = np.sqrt(((pixels - background_rgb) ** 2).sum(axis=-1))  # (H, W)
    region = _largest_region(distance > FOREGROUND_DISTANCE)
    area = int(region.sum())
    if area < MIN_PIXELS:
        return Reading(background=background, pixels=area)

    # Colour: the inner pixels (all four neighbours in the region) avoid edges blended with the background.
    inner = region.copy()
    inner[1:, :] &= region[:-1, :]
    inner[:-1, :] &= region[1:, :]
    inner[:, 1:] &= region[:, :-1]
    inner[:, :-1] &= region[:, 1:]
    colour = _nearest(np.median(pixels[inner if inner.sum() >= 4 else region], axis=0), COLOURS)

    ys, xs = np.nonzero(region)
    box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
    fits = {}
    for kind in SHAPES:
        template = outline_mask(kind, box, IMAGE_SIZE)
        fits[kind] = float((template & region).sum() / max(1, (template | region).sum()))
    kind = max(fits, key=fits.get)

    half = ((box[2] - box[0]) + (box[3] - box[1])) / 4
    size = min(SIZES, key=lambda name: abs(SIZES[name] - half))
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    position = min(POSITIONS, key=lambda p: (POSITIONS[p][0] - centre[0]) ** 2 + (POSITIONS[p][1] - centre[1]) ** 2)
    return Reading(background=background, colour=colour, kind=kind, size=size, position=position, pixels=area,
                   fit=fits[kind])


# ---------------------------------------------------------------------------------------------- text
_WORD = re.compile(r"[a-z]+")


def mentions(text: str) -> list[tuple[str | None, str]]:
    """The shapes a text names, in order: each shape word with the last colour word before it (or None)."""
    found, colour = [], None
    for word in _WORD.findall(text.lower()):
        if word in COLOURS:
            colour = word
        elif word in SHAPES:
            found.append((colour, word))
            colour = None
    return found


def last_mention(text: str) -> tuple[str | None, str | None]:
    """The (colour, kind) a text names last: what the picture after it should show."""
    found = mentions(text)
    return found[-1] if found else (None, None)
