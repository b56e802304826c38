"""Painting beside the text (issues 32, 33): the same illustrated job with pictures gathered, start to end, while
the text waits (the old way), painted step by step in the generator's thread (stepwise), and painted in a thread of
their own beside the LM (overlap), in one run. Prints documents and pictures per minute, how long a picture waits
from its document's dream block to being fed back (p50 and p95, in seconds and generator steps), the share of the
run's time in which documents ready to write waited for whole pictures (stalled) or for any painting in the
generator's thread (held), and whether every document came out the same.

Then issue 33's case: job A's documents (text only, then with 64 px pictures) timed alone and beside one job-B
document painting one big picture (512 px by default) of many steps, in the same pool; the ratio (beside / alone) of
the time job A takes, stepwise and overlap. B is dropped once A is done (only A's time is measured).

    python bench/painting.py                      # tiny random model, 24 documents, a third with pictures
    python bench/painting.py --config small --documents 12 --image-only --image-size 64 --no-big
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

MODES = ("gather", "stepwise", "overlap")


def job(count: int, steps: int, image_only: bool = False, size: int | None = None) -> list[DocumentRequest]:
    """A third of the documents ask for pictures: two each, as the model decides to, or (image_only, for a random
    model that never dreams, as the small one) one picture from the prompt."""
    return [DocumentRequest(f"Write about subject {i}", GenerationParams(
        seed=i, max_new_tokens=(40, 80, 120)[i % 3], max_images=2 if i % 3 == 0 else 0, steps=steps,
        image_size=size),
        image_only=image_only and i % 3 == 0) for i in range(count)]


def same(a, b) -> bool:
    if a.text != b.text or len(a.images) != len(b.images):
        return False
    return all(np.abs(np.asarray(x.image, dtype=int) - np.asarray(y.image, dtype=int)).max() <= 1
               for x, y in zip(a.images, b.images))


def compare(model, requests, slots, rounds: int) -> None:
    """Each mode `rounds` times, the modes in turn (the machine's load drifts); the round of median docs/min."""
    baseline = None
    rows: dict[str, list] = {painting: [] for painting in MODES}
    for _ in range(rounds):
        for painting in MODES:
            gen = Generator(model, config=GeneratorConfig(painting=painting, slots=slots))
            docs = {}
            started = time.perf_counter()
            gen.run(requests, on_document=lambda i, d: docs.__setitem__(i, d))
            seconds = time.perf_counter() - started
            out = [docs[i] for i in range(len(requests))]
            baseline = baseline or out
            matching = sum(same(a, b) for a, b in zip(out, baseline))
            rows[painting].append((60 * len(out) / seconds, seconds, gen.stats, matching))
    print(f"  {'painting':9} {'docs/min':>9} {'(range)':>13} {'pics/min':>9} {'wait p50':>14} {'wait p95':>14} "
          f"{'stalled':>8} {'held':>6} {'same':>6}")
    for painting, runs in rows.items():
        runs.sort(key=lambda r: r[0])
        rate, seconds, stats, _ = runs[len(runs) // 2]
        p50, p95 = stats.wait(0.5), stats.wait(0.95)
        matching = min(r[3] for r in runs)
        print(f"  {painting:9} {rate:9.1f} {runs[0][0]:6.1f}-{runs[-1][0]:<6.1f} {60 * stats.pictures / seconds:9.1f} "
              f"{p50[0]:7.2f} s {p50[1]:3.0f} st {p95[0]:7.2f} s {p95[1]:3.0f} st "
              f"{100 * stats.stalled_seconds / seconds:7.1f}% {100 * stats.held_seconds / seconds:5.1f}% "
              f"{matching:>3}/{len(requests)}",
              flush=True)


def job_a(count: int, pictures: bool, steps: int) -> list[DocumentRequest]:
    return [DocumentRequest(f"Job A, note {i}", GenerationParams(
        seed=100 + i, max_new_tokens=60, max_images=1 if pictures and i % 2 == 0 else 0, image_size=64,
        steps=steps)) for i in range(count)]


def time_job_a(model, painting: str, a: list[DocumentRequest], big: DocumentRequest | None) -> float:
    """Seconds from the run's start to job A's last document (B, if any, is in the pool first and dropped once A
    is done)."""
    gen = Generator(model, config=GeneratorConfig(painting=painting))
    ended: dict[int, float] = {}
    first = 1 if big else 0
    requests = ([big] if big else []) + a
    if big:
        big.should_stop = lambda: len(ended) >= len(a)
    started = time.perf_counter()
    gen.run(requests, on_document=lambda i, d: ended.__setitem__(i, time.perf_counter()) if i >= first else None)
    assert len(ended) == len(a)
    return max(ended.values()) - started


def issue_33(model, args) -> None:
    big = DocumentRequest("Job B, one big picture", GenerationParams(seed=7, steps=args.big_steps,
                                                                      image_size=args.big_size), image_only=True)
    print(f"  job A ({args.a_documents} documents of up to 60 tokens) alone and beside one job-B document painting "
          f"one {args.big_size} px picture of {args.big_steps} steps; median of {args.rounds} (alone, beside) pairs")
    print(f"  {'job A':22} {'painting':9} {'alone':>8} {'beside B':>9} {'ratio':>7}")
    for pictures in (False, True):
        a = job_a(args.a_documents, pictures, args.steps)
        label = "text only" if not pictures else "half a 64 px picture"
        for painting in ("stepwise", "overlap"):
            pairs = sorted(((time_job_a(model, painting, a, None), time_job_a(model, painting, a, big))
                            for _ in range(args.rounds)), key=lambda pair: pair[1] / pair[0])
            alone, beside = pairs[len(pairs) // 2]
            print(f"  {label:22} {painting:9} {alone:7.2f}s {beside:8.2f}s {beside / alone:6.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="tiny", choices=sorted(SIZES))
    parser.add_argument("--documents", type=int, default=24)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--slots", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=3, help="runs of each mode, in turn; the median is shown")
    parser.add_argument("--image-only", action="store_true",
                        help="the picture documents paint one picture from their prompt (for a model that never "
                             "dreams, as the random small one)")
    parser.add_argument("--image-size", type=int, default=None, help="the job's pictures (default: the model's)")
    parser.add_argument("--no-big", action="store_true", help="skip issue 33's case")
    parser.add_argument("--only-big", action="store_true", help="only issue 33's case")
    parser.add_argument("--a-documents", type=int, default=8)
    parser.add_argument("--big-size", type=int, default=512)
    parser.add_argument("--big-steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_tiny_model(seed=0, sizes=SIZES[args.config])
    print(f"{args.config}: {torch.get_num_threads()} torch thread(s) per thread, {torch.__version__}")
    with torch.no_grad():
        if not args.only_big:
            print(f"{args.documents} documents, a third asking for "
                  f"{'1 picture (image only)' if args.image_only else '2 pictures'} ({args.steps} DDPM steps)")
            compare(model, job(args.documents, args.steps, args.image_only, args.image_size), args.slots,
                    args.rounds)
        if not args.no_big:
            issue_33(model, args)


if __name__ == "__main__":
    main()
