"""Submit's memory (issue 33): the peak RSS of `submit_job` for a big prompt file, before and after submit streamed.

Each version runs in a child process of its own (peak RSS is per process): "before" is the code of a git ref
(default `main`, extracted with `git archive` into a temporary folder), "after" this working tree. Each child
imports everything, reads its RSS, submits the file (validation, then every chunk task sent to a throwaway
namespace of Redis that no worker consumes), and reads its peak RSS (VmHWM). The namespace is deleted after
each child. Nothing is stubbed: the same submit_job and send_chunks that `dreamgen submit` calls.

Run: .venv/bin/python bench/submit_memory.py [--prompts 200000] [--before main] [--batch-size 8]
Needs Redis at 127.0.0.1:6379 (database 14 is used, under a unique key prefix, and cleaned).

Measured on the 2-core dev machine (2026-12-07), 200,000 prompts, chunks of 8 (25,000 chunk tasks):
    before (main 3f3b6c6): RSS before submit 49, peak 399 (+350 during submit), 38.8 s
        after (this tree): RSS before submit 49, peak 124 (+75 during submit), 30.3 s
At 20,000 prompts: before +421, after +50. What still grows after is the set of ids validation keeps to find
repeats (~0.14 KB a prompt).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REDIS_URL = "redis://127.0.0.1:6379/14"


def status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def child(prompts: str, out: str, batch_size: int) -> None:
    """In the version's own process: RSS before, the submit, peak RSS; one JSON line on stdout."""
    import redis

    import dreamgen
    from dreamgen.distributed.submit import submit_job
    from dreamgen.jobs.spec import JobConfig
    from dreamgen.workers.app import client_app
    from dreamgen.workers.dispatch import send_chunks

    client_app(REDIS_URL)  # the app built before the baseline, as a long-lived submitter has it
    before = status_mb("VmRSS")
    started = time.perf_counter()
    submit_job(JobConfig(prompts=prompts, out=out, batch_size=batch_size, model="tiny-random"), send_chunks,
               REDIS_URL)
    seconds = time.perf_counter() - started
    queued = redis.Redis.from_url(REDIS_URL).llen(f"{os.environ['DREAMGEN_REDIS_PREFIX']}:kombu:dreamgen.gpu")
    print(json.dumps({"rss_before_mb": before, "peak_mb": status_mb("VmHWM"), "seconds": seconds,
                      "queued": queued,
                      "code": str(Path(dreamgen.__file__).parent.parent)}))


def run_version(code_root: Path, prompts: Path, out: Path, batch_size: int) -> dict:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    env = {**os.environ, "PYTHONPATH": str(code_root), "DREAMGEN_BROKER_URL": REDIS_URL,
           "DREAMGEN_REDIS_PREFIX": prefix, "OMP_NUM_THREADS": "1"}
    try:
        done = subprocess.run([sys.executable, __file__, "--child", str(prompts), "--out", str(out),
                               "--batch-size", str(batch_size)], env=env, cwd=code_root, capture_output=True,
                              text=True, check=False)
        if done.returncode:
            raise SystemExit(f"the submit of {code_root} failed:\n{done.stderr[-3000:]}")
        return json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        delete_namespace(prefix)


def delete_namespace(prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*", count=5000))
    for start in range(0, len(keys), 1000):
        client.delete(*keys[start:start + 1000])


def extract(ref: str, folder: Path) -> Path:
    """The tree of `ref` (its symbolic links kept: dreamgen/ links the top-level folders)."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=200_000)
    parser.add_argument("--before", default="main", help="The git ref of the code before (default main).")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.out, args.batch_size)

    # Here, not at the top: the child (above) must import dreamgen from the tree it measures, not from this one.
    sys.path.insert(0, str(ROOT))
    from bench.distributed import write_big_prompts  # the prompt file the distributed bench submits

    with tempfile.TemporaryDirectory(prefix="dreamgen-submit-memory-") as tmp:
        folder = Path(tmp)
        prompts = write_big_prompts(folder / "big.jsonl", args.prompts)
        before_root = extract(args.before, folder / "before")
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.before], capture_output=True,
                             text=True).stdout.strip()
        chunks = -(-args.prompts // args.batch_size)
        print(f"{args.prompts:,} prompts, chunks of {args.batch_size} ({chunks:,} chunk tasks); "
              f"RSS in MB, peak = VmHWM of the submitting process")
        for name, root in ((f"before ({args.before} {rev})", before_root), ("after (this tree)", ROOT)):
            result = run_version(root, prompts, folder / f"out-{len(name)}", args.batch_size)
            assert result["queued"] == chunks and Path(result["code"]) == root, result
            print(f"{name:>24}: RSS before submit {result['rss_before_mb']:.0f}, peak {result['peak_mb']:.0f} "
                  f"(+{result['peak_mb'] - result['rss_before_mb']:.0f} during submit), {result['seconds']:.1f} s")


if __name__ == "__main__":
    main()
