"""The continuous generator on a 7B-shaped DreamLLM (random bf16 weights built on the card): 64 documents of up to
128 new tokens through 64 slots against the same documents one at a time (the first 8 of them: a rate is a
rate), in documents/minute. Greedy; random weights end documents at arbitrary lengths, the same on both sides.
Then pictures beside the text (issue 32): the same 64 documents with a third of them pictures (text-to-image,
20 DDPM steps at 512 px; random weights never ask for one themselves), painted step by step beside the text
against gathered while the text waits."""
from __future__ import annotations

import time

import torch

from dreamgen.generation.config import GeneratorConfig
from dreamgen.generation.generator import DocumentRequest, Generator
from dreamgen.model.released_shape import build_released_shape, fill_random
from dreamgen.model.sizes import SMALL_SIZES
from dreamgen.model.tiny import build_tiny_model
from dreamgen.params import GenerationParams

TITLE = "Continuous generator: 64 documents at 64 slots vs one at a time; pictures gathered vs stepwise vs overlap (7B-shaped)"
BUDGET_S = 60
TOPICS = ("rivers", "bread", "trains", "the moon", "winter", "the sea", "tomatoes", "bird houses")



def timed(generator: Generator, requests: list, device: str):
    """(documents, seconds, stats) of one run of `requests`, after a warm-up of two of them (compiling and
    capturing the buckets it meets)."""
    generator.generate(requests[:2])
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    docs = generator.generate(requests)
    if device == "cuda":
        torch.cuda.synchronize()
    assert len(docs) == len(requests)
    seconds, stats = time.perf_counter() - started, generator.stats
    generator.release()  # its pool is most of the card: freed before the next generator's
    return docs, seconds, stats


def run(table, device: str) -> None:
    if device == "cuda":
        model = fill_random(build_released_shape(torch.bfloat16), device)
        documents, alone_count, tokens = 64, 8, 128
    else:  # a dry run of this code on the CPU
        model = build_tiny_model(seed=0, sizes=SMALL_SIZES)
        documents, alone_count, tokens = 8, 2, 8
    job = [DocumentRequest(f"Write about {TOPICS[i % len(TOPICS)]}, part {i}",
                           GenerationParams(seed=i, temperature=0.0, max_new_tokens=tokens, max_images=0))
           for i in range(documents)]
    table.header("way", "documents", "docs/min", "new tokens/s", "ratio")
    baseline = None
    for name, slots, requests in (("one at a time", 1, job[:alone_count]), (f"{documents} slots", documents, job)):
        docs, seconds, _ = timed(Generator(model, config=GeneratorConfig(slots=slots)), requests, device)
        rate = 60 * len(docs) / seconds
        baseline = baseline or rate
        table.row(name, len(docs), rate, sum(d.timings["new_tokens"] for d in docs) / seconds, rate / baseline)
    table.note("Goal: >= 20x documents/minute at 64 documents.")
    picture = dict(steps=20) if device == "cuda" else dict(steps=2, image_size=64)  # the CPU: a dry run
    pictures = [DocumentRequest(r.prompt, r.params.replace(**picture), image_only=i % 3 == 0)
                for i, r in enumerate(job)]
    for painting in ("gather", "stepwise", "overlap"):
        docs, seconds, stats = timed(Generator(model, config=GeneratorConfig(slots=documents, painting=painting)),
                                     pictures, device)
        table.row(f"{documents} slots, a third pictures, {painting} (stalled {100 * stats.stall_share:.0f}%, "
                  f"picture wait p50 {stats.wait(0.5)[0]:.2f} s)", len(docs), 60 * len(docs) / seconds,
                  sum(d.timings["new_tokens"] for d in docs) / seconds, "-")
