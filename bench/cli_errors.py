"""How long a mistake on the command line takes to be said (issue 34: 5-9 s, the imports of torch and diffusers).

Each bad invocation of `dreamgen run` / `generate` runs in a fresh interpreter, as a user's would, `--repeat` times;
the table gives the median wall time, beside the time of importing what used to come first (torch, transformers,
diffusers) measured in the same run. Run it on a quiet machine; ratios are what carry across machines.

    python bench/cli_errors.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = str(ROOT / "examples" / "prompts.jsonl")
# the entry point, as installed
DREAMGEN = "import sys; sys.argv[0] = 'dreamgen'; from dreamgen.cli import main; main()"
BAD = [
    ["run"],
    ["run", EXAMPLES, "--steps", "-3"],
    ["run", "no-such-prompts.txt"],
    ["run", EXAMPLES, "--model", "shapez"],
    ["run", EXAMPLES, "--device", "gpu"],
    ["run", EXAMPLES, "--out", "s3:/bucket"],
    ["generate"],
    ["generate", "a red circle", "--steps", "-3"],
    ["generate", "a red circle", "--model", "shapez"],
    ["generate", "a red circle", "--device", "gpu"],
]


def seconds(argv: list[str], cwd: str, repeat: int) -> tuple[float, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    times, said = [], ""
    for _ in range(repeat):
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        said = (done.stdout + done.stderr).strip()
    return statistics.median(times), said


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cwd:
        heavy, _ = seconds([sys.executable, "-c", "import torch, transformers, diffusers"], cwd, args.repeat)
        nothing, _ = seconds([sys.executable, "-c", "pass"], cwd, args.repeat)
        print(f"python -c pass: {nothing:.2f} s; import torch, transformers, diffusers: {heavy:.2f} s "
              f"(median of {args.repeat})\n")
        print("| invocation | seconds | vs the heavy imports | says |")
        print("|---|---|---|---|")
        rows = []
        for bad in BAD:
            took, said = seconds([sys.executable, "-c", DREAMGEN, *bad], cwd, args.repeat)
            rows.append(took)
            shown = " ".join("PROMPTS" if a == EXAMPLES else a for a in bad)
            print(f"| `dreamgen {shown}` | {took:.2f} | {took / heavy:.2f}x | {said[:70]} |")
        print(f"\nslowest {max(rows):.2f} s, median {statistics.median(rows):.2f} s; the heavy imports alone "
              f"{heavy:.2f} s")


if __name__ == "__main__":
    main()
