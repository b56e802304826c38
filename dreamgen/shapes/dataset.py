"""Write the shapes world as a training set in dreamgen's interleaved format, and the held-out prompts.

    OUT/train.jsonl     {"prompt": ..., "blocks": [{"type": "text", "text": ...},
                                           {"type": "image", "path": ..., "labels": {"position": ..., ...}}],
                         "meta": {"style": ..., "shapes": [...]}}
    OUT/images/train-NNNNNN-K.png
    OUT/binding.jsonl   the same, for the binding stage (articles.sample_binding_article): documents of two and
                        three shapes that ask each its own size and place, and prompts inside dreamgen's templates

Image paths are relative to the JSONL file, as the training loader expects.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

from .articles import Article, prompt_for, sample_article, sample_binding_article, sample_shapes
from .phrasing import Asked, ask, phrase_prompt
from .render import render
from .world import BACKGROUNDS, HELD_OUT, Shape, all_combos, training_combos

EVAL_SEED = 20240601  # apart from any training seed, so evaluation prompts are never training prompts
PHRASINGS_SEED = 20261203
# The eval's splits, each held out from training in its own way:
#   combos     shapes of (colour, kind) pairs no training document has, asked in the first prompts' five verbs
#   phrasings  shapes of training pairs, asked only in the grammar's held-out part (frames, politeness, fillers
#              and openings no training prompt uses)
#   pairs      two shapes of training pairs, each asked its own size (and often its own place), in the held-out
#              phrasings: does each shape get what was asked for it, not its neighbour's words?
SPLITS = ("combos", "phrasings", "pairs")
PAIRS_SEED = 20261207


def picture_labels(shape: Shape) -> dict[str, str]:
    """What a picture shows, for the trainer's readout loss (the article's text names all of it)."""
    return {"colour": shape.colour, "kind": shape.kind, "size": shape.size, "position": shape.position,
            "background": shape.background}


def article_record(article: Article, image_paths: list[str]) -> dict:
    blocks, paths = [], iter(image_paths)
    for kind, value in article.blocks:
        blocks.append({"type": "text", "text": value} if kind == "text" else
                      {"type": "image", "path": next(paths), "labels": picture_labels(value)})
    return {"prompt": article.prompt, "blocks": blocks,
            "meta": {"style": article.style, "shapes": [asdict(s) for s in article.shapes]}}


def write_dataset(out_dir: str | Path, documents: int, seed: int = 0, name: str = "train",
                  sampler=sample_article) -> Path:
    """Write `documents` training articles (held-out pairs excluded) and their pictures; returns the JSONL path.
    `sampler(pictures_rng, words_rng, combos)` draws one (sample_article, or sample_binding_article)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    combos = training_combos()
    path = out / f"{name}.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for n in range(documents):
            # Seeded per document and per stream (string seeds hash the same on every machine and run); the
            # binding set's streams are named apart, so its documents are never the first set's.
            tag = "" if name == "train" else f"{name}-"
            article = sampler(random.Random(f"{seed}-{tag}{n}-pictures"), random.Random(f"{seed}-{tag}{n}-words"),
                              combos)
            paths = []
            for k, shape in enumerate(article.shapes):
                rel = f"images/{name}-{n:06d}-{k}.png"
                render(shape).save(out / rel)
                paths.append(rel)
            f.write(json.dumps(article_record(article, paths)) + "\n")
    return path


def write_pictures(out_dir: str | Path, count: int, seed: int = 0) -> Path:
    """Write `count` pictures of the whole world, held-out pairs included, to OUT/pictures/; returns the folder.

    They train the VAE's last decoder stage (configs/shapes-vae-decoder-world.yaml). The VAE is a picture codec with
    no text: as Stable Diffusion's learned from all of LAION, it must draw every picture the world can show, or it
    cannot give back what the UNet paints for a pair no document has (the documents' own pictures taught it green +
    four points = cross: 4 of 16 green diamonds came back green diamonds, 15 after that stage). The DreamLLM (LM,
    queries, UNet) still learns only from train.jsonl, which has no held-out pair."""
    folder = Path(out_dir) / "pictures"
    folder.mkdir(parents=True, exist_ok=True)
    every_pair = all_combos()
    for n in range(count):
        rng = random.Random(f"{seed}-{n}-codec")
        shape, = sample_shapes(rng, every_pair, 1, rng.choice(list(BACKGROUNDS)))
        render(shape).save(folder / f"{n:06d}.png")
    return folder


@dataclass(frozen=True)
class EvalPrompt:
    prompt: str
    combos: tuple[tuple[str, str], ...]  # the (colour, kind) pairs asked for, in order
    positions: tuple[str | None, ...] = ()  # the place asked for each (None: left to the article)
    sizes: tuple[str | None, ...] = ()

    @classmethod
    def of(cls, prompt: str, asked: list[Asked]) -> "EvalPrompt":
        return cls(prompt, tuple(a.shape.combo for a in asked),
                   tuple(a.shape.position if a.position_word else None for a in asked),
                   tuple(a.shape.size if a.size_word else None for a in asked))


def eval_prompts(count: int, split: str = "combos", seed: int | None = None) -> list[EvalPrompt]:
    """`count` prompts of `split` about one or two shapes each (pairs: two); `seed` None takes the split's own."""
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: use one of {', '.join(SPLITS)}")
    own_seed = {"combos": EVAL_SEED, "phrasings": PHRASINGS_SEED, "pairs": PAIRS_SEED}[split]
    rng = random.Random(own_seed if seed is None else seed)
    combos = list(HELD_OUT) if split == "combos" else training_combos()
    prompts = []
    for _ in range(count):
        shapes = sample_shapes(rng, combos, 2 if split == "pairs" else rng.choice((1, 1, 2)),
                               rng.choice(list(BACKGROUNDS)))
        if split == "pairs":
            background = shapes[0].background if rng.random() < 0.5 else None
            asked = [ask(s, rng, size_rate=1.0, position_rate=0.5) for s in shapes]
            prompt = phrase_prompt(asked, background, rng, held_out=True)
        elif split == "combos":
            prompt, asked = prompt_for(shapes, rng, with_background=rng.random() < 0.5)
        else:
            background = shapes[0].background if rng.random() < 0.5 else None
            asked = [ask(s, rng) for s in shapes]
            prompt = phrase_prompt(asked, background, rng, held_out=True)
        prompts.append(EvalPrompt.of(prompt, asked))
    return prompts


def write_binding(out_dir: str | Path, documents: int, seed: int = 0) -> Path:
    """The binding stage's documents (articles.sample_binding_article) beside the training set."""
    return write_dataset(out_dir, documents, seed=seed, name="binding", sampler=sample_binding_article)
