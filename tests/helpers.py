"""Shared pieces of the model tests: one tiny model per test process (built offline in a few seconds)."""
import functools

import numpy as np
import torch

from dreamgen.generation.diffusion import ImageRequest, Picture, decode_pictures, denoise_step, start_picture
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


def started(request: ImageRequest, model) -> Picture:
    """A picture at its first step, on `model`'s head."""
    head = model.head
    return start_picture(request, head.scheduler_config, head.unet.config.in_channels, head.vae_scale_factor,
                         model.device, model.dtype)


def paint_alone(model, requests: list[ImageRequest], components) -> list[torch.Tensor]:
    """Each picture painted by itself, step by step, then decoded."""
    pictures = []
    for r in requests:
        p = started(r, model)
        while not p.done:
            denoise_step([p], components.unet, components.split_unet)
        pictures.append(p)
    return decode_pictures(pictures, components.vae_decode)


def paint_joined(model, requests: list[ImageRequest], components, mark) -> tuple[list[torch.Tensor], set]:
    """The pictures joining shared UNet calls a step apart, then stepping together, decoded; and, for each call once
    all have joined, the tuple of `mark(picture)` of the ones in it (what the calls mixed)."""
    pictures, mixes = [started(r, model) for r in requests], set()
    for joined in range(1, len(pictures) + 1):
        denoise_step([p for p in pictures[:joined] if not p.done], components.unet, components.split_unet)
    while any(not p.done for p in pictures):
        going = [p for p in pictures if not p.done]
        mixes.add(tuple(mark(p) for p in going))
        denoise_step(going, components.unet, components.split_unet)
    return decode_pictures(pictures, components.vae_decode), mixes
