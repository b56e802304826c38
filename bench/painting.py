"""Painting beside the text (issue 32): the same illustrated job with pictures painted step by step beside the text
(the default) and gathered, start to end, while the text waits (the old way), in one run. Prints documents and
pictures per minute, how long a picture waits from its document's dream block to being fed back (p50 and p95, in
seconds and generator steps), the share of the run's time in which documents ready to write waited for pictures,
and whether every document came out the same.

    python bench/painting.py                      # tiny random model, 24 documents, a third with pictures
    python bench/painting.py --config small --documents 16 --steps 10
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dreamgen.generation.config import GeneratorConfig  # noqa: E402
from dreamgen.generation.generator import DocumentRequest, Generator  # noqa: E402
from dreamgen.model.sizes import SIZES  # noqa: E402
from dreamgen.model.tiny import build_tiny_model  # noqa: E402
from dreamgen.params import GenerationParams  # noqa: E402


def job(count: int, steps: int) -> list[DocumentRequest]:
    return [DocumentRequest(f"Write about subject {i}", GenerationParams(
        seed=i, max_new_tokens=(40, 80, 120)[i % 3], max_images=2 if i % 3 == 0 else 0, steps=steps))
        for i in range(count)]


def same(a, b) -> bool:
    if a.text != b.text or len(a.images) != len(b.images):
        return False
    return all(np.abs(np.asarray(x.image, dtype=int) - np.asarray(y.image, dtype=int)).max() <= 1
               for x, y in zip(a.images, b.images))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--slots", type=int, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_tiny_model(seed=0, sizes=SIZES[args.config])
    requests = job(args.documents, args.steps)
    print(f"{args.config}: {args.documents} documents, a third asking for pictures ({args.steps} DDPM steps), "
          f"{torch.get_num_threads()} thread(s)")
    print(f"  {'painting':9} {'docs/min':>9} {'pics/min':>9} {'wait p50':>14} {'wait p95':>14} {'stalled':>8} "
          f"{'same':>6}")
    baseline = None
    with torch.no_grad():
        for painting in ("gather", "stepwise"):
            gen = Generator(model, config=GeneratorConfig(painting=painting, slots=args.slots))
            docs = {}
            started = time.perf_counter()
            gen.run(requests, on_document=lambda i, d: docs.__setitem__(i, d))
            seconds = time.perf_counter() - started
            out = [docs[i] for i in range(len(requests))]
            baseline = baseline or out
            stats = gen.stats
            p50, p95 = stats.wait(0.5), stats.wait(0.95)
            matching = sum(same(a, b) for a, b in zip(out, baseline))
            print(f"  {painting:9} {60 * len(out) / seconds:9.1f} {60 * stats.pictures / seconds:9.1f} "
                  f"{p50[0]:7.2f} s {p50[1]:3.0f} st {p95[0]:7.2f} s {p95[1]:3.0f} st "
                  f"{100 * stats.stall_share:7.1f}% {matching:>3}/{len(out)}", flush=True)


if __name__ == "__main__":
    main()
