"""Continuous batching vs one document at a time vs fixed lockstep chunks, on the same job, in one run.

The job: 48 documents of mixed lengths (16-256 new tokens, text only); with --pictures a third of them also
ask for 1-2 pictures. For each way it prints documents/minute, the ratio to one at a time, slot occupancy while
documents waited, the KV pages in use over the live tokens at the peak, and whether every document came out the
same as one at a time (text equal, pixels within 1/255).

    python bench/continuous.py                       # tiny and small, text only, 1 thread
    python bench/continuous.py --pictures --configs tiny
    python bench/continuous.py --device cuda --configs small --slots 16,64,128
    python bench/continuous.py --stall               # step times with a newcomer's prefill, by chunk size
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dreamgen.generation.config import DEFAULT_SLOTS, GeneratorConfig  # noqa: E402
from dreamgen.generation.generator import NOTHING_YET, DocumentRequest, Generator  # noqa: E402
from dreamgen.model.sizes import SIZES  # noqa: E402
from dreamgen.model.tiny import build_tiny_model  # noqa: E402
from dreamgen.params import GenerationParams  # noqa: E402

TOPICS = ["the river", "bread", "a bird house", "the moon", "trains", "tomatoes", "the sea", "winter"]


def job(count: int, pictures: bool, seed: int = 0) -> list[DocumentRequest]:
    rng = random.Random(seed)
    requests = []
    for i in range(count):
        with_pictures = pictures and i % 3 == 0
        params = GenerationParams(seed=i, temperature=0.8, max_new_tokens=rng.randint(16, 256),
                                  max_images=rng.randint(1, 2) if with_pictures else 0, steps=4)
        requests.append(DocumentRequest(f"Write about {rng.choice(TOPICS)}, part {i}", params))
    return requests


def run(gen: Generator, requests, slots: int):
    docs = {}
    started = time.perf_counter()
    gen.run(requests, on_document=lambda i, d: docs.__setitem__(i, d), slots=slots)
    seconds = time.perf_counter() - started
    return [docs[i] for i in range(len(requests))], seconds, gen.stats


def same(a, b) -> bool:
    if [(x.type, getattr(x, "text", None)) for x in a.blocks] != [(x.type, getattr(x, "text", None)) for x in b.blocks]:
        return False
    return all(np.abs(np.asarray(x.image, dtype=int) - np.asarray(y.image, dtype=int)).max() <= 1
               for x, y in zip(a.images, b.images))


def load(config: str, device: str):
    if config in SIZES:
        return build_tiny_model(seed=0, sizes=SIZES[config]).to(device)
    from dreamgen.model.loader import load_model

    return load_model(config, device=device)


def bench(config: str, device: str, count: int, pictures: bool, slot_counts: list[int]) -> None:
    model = load(config, device)
    continuous, lockstep = Generator(model), Generator(model, config=GeneratorConfig(batching="lockstep"))
    requests = job(count, pictures)
    default = DEFAULT_SLOTS.get(torch.device(device).type, 16)
    ways = [("one at a time", 1, continuous), ("lockstep chunks of 8", 8, lockstep)]
    ways += [(f"continuous, {s} slots" + (" (default)" if s == default else ""), s, continuous)
             for s in slot_counts]
    baseline = None
    kind = "docs with pictures" if pictures else "text docs"
    print(f"\n{config}: {count} {kind}, {sum(r.params.max_new_tokens for r in requests)} new tokens at most, "
          f"{torch.get_num_threads()} thread(s), {device}")
    print(f"  {'way':34} {'docs/min':>9} {'ratio':>6} {'occupancy':>10} {'KV/live':>8} {'same':>6} {'pictures':>8}")
    for name, slots, gen in ways:
        docs, seconds, stats = run(gen, requests, slots)
        if baseline is None:
            baseline = (docs, seconds)
        matching = sum(same(a, b) for a, b in zip(docs, baseline[0])) if len(docs) == len(baseline[0]) else 0
        kv = stats.kv.peak_ratio if stats.kv else float("nan")
        print(f"  {name:34} {60 * count / seconds:9.1f} {baseline[1] / seconds:5.2f}x {100 * stats.occupancy:9.1f}% "
              f"{kv:7.2f}x {matching:>3}/{count} {stats.pictures:>8}", flush=True)


def stall(config: str, device: str) -> None:
    """How long decoding documents wait for a step when a newcomer prefills: step times by chunk size."""
    model = load(config, device)
    long_prompt = "a long prompt about rivers and the sea " * 60
    print(f"\n{config}: 15 documents decoding, then one with a {len(model.tokenizer(long_prompt).input_ids)}-token "
          f"prompt enters")
    for chunk in (16, 64, 256, 4096):
        gen = Generator(model, config=GeneratorConfig(prefill_chunk=chunk, step_tokens=chunk))
        times = []
        last = [time.perf_counter()]

        def tick(stats):
            now = time.perf_counter()
            times.append(now - last[0])
            last[0] = now

        decoders = [DocumentRequest(f"topic {i}", GenerationParams(seed=i, max_new_tokens=80, max_images=0))
                    for i in range(15)]
        newcomer = DocumentRequest(long_prompt, GenerationParams(seed=99, max_new_tokens=8, max_images=0))
        def source():  # the newcomer arrives once the others are decoding
            yield from decoders
            for _ in range(20):
                yield NOTHING_YET
            yield newcomer

        gen.run(source(), on_document=lambda i, d: None, on_stats=tick, slots=16)
        times = times[3:]  # the decoders' own prefill is behind us
        steady = statistics.median(times)
        print(f"  prefill chunk {chunk:5}: median step {1000 * steady:7.1f} ms, longest {1000 * max(times):7.1f} ms "
              f"({max(times) / steady:.1f}x a median step), {len(times)} steps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="tiny,small", help="tiny, small (random models), or checkpoints")
    parser.add_argument("--documents", type=int, default=48)
    parser.add_argument("--pictures", action="store_true", help="a third of the documents ask for 1-2 pictures")
    parser.add_argument("--slots", default="16,32,48", help="slot counts of the continuous runs")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--stall", action="store_true", help="measure the prefill stall instead")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with torch.no_grad():
        for config in args.configs.split(","):
            if args.stall:
                stall(config, args.device)
            else:
                bench(config, args.device, args.documents, args.pictures, [int(s) for s in args.slots.split(",")])


if __name__ == "__main__":
    main()
