"""Write the shapes world as a training set in dreamgen's interleaved format, and the held-out prompts.

    OUT/train.jsonl     {"prompt": ..., "blocks": [{"type": "text", "text": ...}, {"type": "image", "path": ...}],
                         "meta": {"style": ..., "shapes": [...]}}
    OUT/images/NNNNNN-K.png

Image paths are relative to the JSONL file, as the training loader expects.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from .articles import Article, prompt_for, sample_article, sample_shapes
from .render import render
from .world import BACKGROUNDS, HELD_OUT, training_combos

EVAL_SEED = 20240601  # apart from any training seed, so evaluation prompts are never training prompts


def article_record(article: Article, image_paths: list[str]) -> dict:
    blocks, paths = [], iter(image_paths)
    for kind, value in article.blocks:
        blocks.append({"type": "text", "text": value} if kind == "text" else {"type": "image", "path": next(paths)})
    return {"prompt": article.prompt, "blocks": blocks,
            "meta": {"style": article.style, "shapes": [asdict(s) for s in article.shapes]}}


def write_dataset(out_dir: str | Path, documents: int, seed: int = 0, name: str = "train") -> Path:
    """Write `documents` training articles (held-out pairs excluded) and their pictures; returns the JSONL path."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    combos = training_combos()
    path = out / f"{name}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for n in range(documents):
            article = sample_article(rng, combos)
            paths = []
            for k, shape in enumerate(article.shapes):
                rel = f"images/{name}-{n:06d}-{k}.png"
                render(shape).save(out / rel)
                paths.append(rel)
            f.write(json.dumps(article_record(article, paths)) + "\n")
    return path


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    combos: tuple[tuple[str, str], ...]  # the (colour, kind) pairs asked for, in order


def eval_prompts(count: int, seed: int = EVAL_SEED, held_out: bool = True) -> list[EvalPrompt]:
    """`count` prompts about one or two shapes, every one of a held-out (colour, kind) pair when `held_out`."""
    rng = random.Random(seed)
    combos = list(HELD_OUT) if held_out else training_combos()
    prompts = []
    for _ in range(count):
        shapes = sample_shapes(rng, combos, rng.choice((1, 1, 2)), rng.choice(list(BACKGROUNDS)))
        prompt = prompt_for(shapes, rng, with_background=rng.random() < 0.5)
        prompts.append(EvalPrompt(prompt=prompt, combos=tuple(s.combo for s in shapes)))
    return prompts
