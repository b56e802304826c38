"""How well a VAE keeps the shapes world readable: render a fixed, seeded set of shapes (every colour x kind x
size, at random positions, backgrounds and offsets), send each through the VAE (encode -> posterior mean ->
decode) and read it back with the checker. The latents the model's UNet draws are decoded by the same decoder,
so a kind the round trip loses is one the model cannot draw, however good its UNet.

    python -m dreamgen.shapes.roundtrip shapes runs/shapes/vae-decoder/final [--repeats 4]
"""
from __future__ import annotations

import argparse
import random
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..generation.images import pil_to_tensor, tensor_to_pil
from .articles import JITTER
from .checker import read_image
from .render import render
from .world import BACKGROUNDS, COLOURS, POSITIONS, SHAPES, SIZES, Shape


def roundtrip_shapes(repeats: int = 4, seed: int = 0) -> list[Shape]:
    """`repeats` pictures of every (colour, kind, size), each at a random position, background and offset."""
    rng = random.Random(seed)
    return [Shape(colour, kind, size, rng.choice(list(POSITIONS)), rng.choice(list(BACKGROUNDS)),
                  rng.randint(-JITTER, JITTER), rng.randint(-JITTER, JITTER))
            for _ in range(repeats) for colour in COLOURS for kind in SHAPES for size in SIZES]


@torch.no_grad()
def roundtrip(vae, shapes: list[Shape], batch: int = 64) -> list[Image.Image]:
    """The pictures of `shapes` after encode -> latent mean -> decode."""
    out = []
    for i in range(0, len(shapes), batch):
        pixels = torch.stack([pil_to_tensor(render(s)) for s in shapes[i:i + batch]])
        recon = vae.decode(vae.encode(pixels * 2 - 1).latent_dist.mean).sample
        out += [tensor_to_pil(image) for image in (recon / 2 + 0.5).clamp(0, 1)]  # as the generation loop does
    return out


def kind_accuracy(vae, shapes: list[Shape]) -> dict[tuple[str, str], float]:
    """Share of round-tripped pictures whose kind reads right, per (kind, size)."""
    right, total = Counter(), Counter()
    for shape, image in zip(shapes, roundtrip(vae, shapes)):
        key = (shape.kind, shape.size)
        total[key] += 1
        right[key] += read_image(image).kind == shape.kind
    return {key: right[key] / total[key] for key in total}


def load_any_vae(where: str):
    """A VAE folder (a vae stage's output), or a model (checkpoint folder or built-in name) whose VAE to take."""
    from ..model.loader import load_model
    from ..training.trainer import load_vae

    if any(Path(where).glob("diffusion_pytorch_model.*")):
        return load_vae(where)
    return load_model(where).head.vae


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vae", nargs="+", help="VAE folders, or models whose VAE to test (e.g. shapes)")
    parser.add_argument("--repeats", type=int, default=4, help="pictures per colour x kind x size")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    shapes = roundtrip_shapes(args.repeats)
    for folder in args.vae:
        acc = kind_accuracy(load_any_vae(folder).eval(), shapes)
        print(f"{folder}  ({len(shapes)} pictures)")
        print(f"  {'kind':<9}" + "".join(f"{size:>8}" for size in SIZES))
        for kind in SHAPES:
            print(f"  {kind:<9}" + "".join(f"{acc[kind, size]:>8.0%}" for size in SIZES))
        print(f"  {'all':<9}" + "".join(f"{np.mean([acc[k, size] for k in SHAPES]):>8.0%}" for size in SIZES)
              + f"   overall {np.mean(list(acc.values())):.1%}")


if __name__ == "__main__":
    main()
