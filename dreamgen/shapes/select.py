"""Choose between trained candidates of the shapes model on a validation set: held-out prompts drawn with a seed
of their own, so the eval prompts the README reports never pick a model.

Why a choice at all: the second whole-model pass (configs/shapes-finetune.yaml) moved shape accuracy by +6
points on one training run and by -7 on another, so whether it helps is decided per run, on data, not assumed.

    python -m dreamgen.shapes.select runs/shapes/candidate-model runs/shapes/candidate-finetune [--prompts 200]

prints each candidate's validation scores, then, on the last line, the chosen folder.
"""
from __future__ import annotations

import argparse

import torch

from ..model.loader import load_model
from ..params import GenerationParams
from .dataset import eval_prompts
from .evaluation import evaluate

VALIDATION_SEED = 777  # not the eval set's seed (dataset.EVAL_SEED) nor any training seed


def validation_score(summary: dict) -> float:
    """What the choice maximises: what the picture must match in the text (issue 6, issue 14), equally weighted."""
    return summary["colour"] + summary["shape"] + summary["position"] + summary["size"]


def choose(candidates: list[str], prompts: int = 200, seed: int = VALIDATION_SEED, report=print) -> str:
    """The candidate with the best validation score; on a tie the first (list the simpler candidate first)."""
    validation = eval_prompts(prompts, seed=seed)
    best, best_score = None, float("-inf")
    for folder in candidates:
        summary = evaluate(load_model(folder), validation, GenerationParams()).summary()
        score = validation_score(summary)
        report(f"{folder}: colour {summary['colour']:.1%}  shape {summary['shape']:.1%}  "
               f"position {summary['position']:.1%}  size {summary['size']:.1%}  "
               f"well formed {summary['well_formed']:.1%}  ({summary['images']} pictures, validation seed {seed})")
        if score > best_score:
            best, best_score = folder, score
    return best


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m dreamgen.shapes.select", description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="+", help="model folders; on a tie the first wins")
    parser.add_argument("--prompts", type=int, default=200, help="validation prompts")
    parser.add_argument("--seed", type=int, default=VALIDATION_SEED, help="seed of the validation prompts")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # deterministic, like the training stages
    print(choose(args.candidates, args.prompts, args.seed))


if __name__ == "__main__":
    main()
