"""A worker's memory and threads over model switches (issue 33): jobs alternating two models on one
threads-pool worker process, as `workers.model_cache` serves them.

Each round asks for the other model, runs one document on it (which starts its engine thread and KV pool), and
prints the process's RSS and thread count. Before issue 33 every switch kept the old engine (generator, KV pool
and thread): RSS and threads grew by one engine a switch. Now both stay flat after the first round of each model.
`--without-close` runs the old behaviour (a replaced engine is never closed), for comparison.

    OMP_NUM_THREADS=1 python bench/model_switch.py [--switches 6] [--models tiny-random,PATH] [--without-close]

Default models: the built-in tiny-random, by name and by its path (two keys to the worker, the same weights),
written into a temporary DREAMGEN_HOME unless one is set.
"""
from __future__ import annotations

import argparse
import gc
import os
import tempfile
import threading
import time
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status (this bench needs Linux)")


def one_document(name: str):
    from dreamgen.jobs.spec import WorkItem
    from dreamgen.params import GenerationParams
    from dreamgen.prompts.files import PromptSpec

    spec = PromptSpec(line=1, id=name, custom_id=None, prompt=f"a note about {name}", title=None,
                      params=GenerationParams(seed=1, max_new_tokens=16, steps=2, max_images=1))
    return WorkItem(spec, done=lambda doc: None, fail=lambda e, message=None: print(f"{name} failed: {e}"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switches", type=int, default=6)
    ap.add_argument("--models", default=None, help="Two (or more) models to alternate, comma-separated.")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--without-close", action="store_true", help="Never close a replaced engine (before issue 33).")
    args = ap.parse_args()
    os.environ.setdefault("DREAMGEN_HOME", tempfile.mkdtemp(prefix="dreamgen-bench-"))
    os.environ["DREAMGEN_WORKER_POOL"] = "threads"

    from dreamgen.distributed.pool import SharedPool
    from dreamgen.model.locate import resolve_checkpoint
    from dreamgen.workers import model_cache

    if args.without_close:
        SharedPool.close = lambda self: None
    models = args.models.split(",") if args.models else ["tiny-random", str(resolve_checkpoint("tiny-random"))]
    print("models: " + ", ".join(f"{'ABCDEFGH'[i]} {m}" for i, m in enumerate(models)))
    print(f"start: RSS {rss_mb():.0f} MB, {threading.active_count()} threads")
    for n in range(args.switches):
        model = models[n % len(models)]
        started = time.perf_counter()
        model_cache.HeldPool((model, args.dtype, args.device, "torch")).run_items([one_document(f"doc-{n}")])
        gc.collect()
        print(f"switch {n + 1} to model {'ABCDEFGH'[n % len(models)]}: RSS {rss_mb():.0f} MB, "
              f"{threading.active_count()} threads, {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
