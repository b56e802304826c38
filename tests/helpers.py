"""Shared pieces of the model tests: one tiny model per test process (built offline in a few seconds)."""
import functools

import numpy as np

from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.model.tiny import build_tiny_model
from dreamgen.params import GenerationParams


@functools.cache
def tiny_model():
    return build_tiny_model(seed=0)


def tiny_generator() -> Generator:
    return Generator(tiny_model())


def request(prompt="a short article about rivers", **params) -> DocumentRequest:
    params.setdefault("steps", 3)
    params.setdefault("max_new_tokens", 40)
    return DocumentRequest(prompt=prompt, params=GenerationParams(**params))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def max_pixel_diff(a, b) -> int:
    return int(np.abs(pixels(a) - pixels(b)).max())
