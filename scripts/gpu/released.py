"""The released-layout checkpoint on CUDA (tests marked gpu in tests/test_released_checkpoint.py): --dtype auto is
bf16 with TF32, the VAE fp32, and it paints as on the CPU."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest  # noqa: F401 (the GPU machine has it: the section runs it)

TITLE = "The released-layout checkpoint on CUDA (pytest -m gpu tests/test_released_checkpoint.py)"
BUDGET_S = 30
ROOT = Path(__file__).resolve().parent.parent.parent


def run(table, device: str) -> None:
    table.header("tests", "result")
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu",
                           "tests/test_released_checkpoint.py"], cwd=ROOT, capture_output=True, text=True)
    print(done.stdout[-3000:], done.stderr[-2000:])
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    table.row("tests/test_released_checkpoint.py -m gpu", last.strip("= "))
