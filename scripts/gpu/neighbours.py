"""Same document whatever its neighbours, on CUDA: 64 greedy documents of the shapes model written one at a time and
all 64 at once; how many have the same text. Where they differ, the first differing character says how soon a last
bit turned into another token (docs/gpu.md says where the invariance stops)."""
from __future__ import annotations

import statistics
import time

import torch

from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.model.loader import load_model
from dreamgen.params import GenerationParams

TITLE = "Same document whatever its neighbours: 64 greedy documents at 1 and at 64 slots (shapes model)"
BUDGET_S = 40
COLOURS = ("red", "orange", "yellow", "green", "blue", "purple", "white", "black")
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "diamond")


def requests(count: int, tokens: int) -> list[DocumentRequest]:
    params = GenerationParams(seed=0, temperature=0.0, max_new_tokens=tokens, max_images=0)
    combos = [(c, s) for c in COLOURS for s in SHAPES][:count]
    return [DocumentRequest(prompt=f"Write about a {c} {s} on a {COLOURS[(i + 3) % 8]} background", params=params)
            for i, (c, s) in enumerate(combos)]


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def run(table, device: str) -> None:
    count, tokens = (64, 64) if device == "cuda" else (6, 16)  # the CPU: a dry run of this code
    table.header("dtype", "documents", "same text", "differ", "first difference (median char)", "1 slot s",
                 f"{count} slots s")
    job = requests(count, tokens)
    for dtype in ("bf16", "fp32"):
        model = load_model("shapes", dtype=dtype, device=device)
        times, texts = [], []
        for slots in (1, count):
            started = time.perf_counter()
            texts.append([doc.text for doc in Generator(model, config=GeneratorConfig(slots=slots)).generate(job)])
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        one, many = texts
        assert len(one) == len(many) == len(job)
        differ = [first_difference(a, b) for a, b in zip(one, many) if a != b]
        table.row(dtype, len(job), len(job) - len(differ), len(differ),
                  statistics.median(differ) if differ else "-", times[0], times[1])
        del model
        if device == "cuda":
            torch.cuda.empty_cache()
