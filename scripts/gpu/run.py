"""The sections scripts/gpu_run.sh runs on the GPU machine, one process each, in this order.

    python scripts/gpu/run.py --out DIR [--seconds 500] [--only environment,neighbours]
    python scripts/gpu/run.py --out DIR --device cpu --only backends      (a dry run of the sections' code, small)

A section is a module of this folder with TITLE, BUDGET_S (seconds it may take, start to finish, imports
included) and run(table: Table, device: str); listing its name in SECTIONS is all it takes to add one. Its table
is written to DIR/NN-name.md after every row, so a section stopped at its budget still leaves what it measured;
all tables are gathered into DIR/gpu_run.md as each section ends. A section that fails or overruns is noted in its
table and the next one runs. Without CUDA: every section module and everything it imports is imported (what the
GPU machine would need), "no CUDA" is said, and the exit is 0.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
if str(ROOT) not in sys.path:  # dreamgen from this checkout
    sys.path.insert(0, str(ROOT))

SECTIONS = ["environment", "decode", "pictures", "generator", "memory_plan", "backends", "neighbours", "released"]
LEAST_S = 20  # a section is not started with less time than this left


def load(name: str):
    """scripts/gpu/NAME.py as module gpu_run.NAME (this folder is not put on sys.path: its plain names would shadow
    any library's of the same name)."""
    spec = importlib.util.spec_from_file_location(f"gpu_run.{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


Table = load("table").Table


def table_path(out: Path, name: str) -> Path:
    return out / f"{SECTIONS.index(name) + 1:02d}-{name}.md"


def run_section(name: str, out: Path, device: str) -> None:
    """In this process: the section's rows on `device` (cuda; cpu only to dry-run the section's code)."""
    module = load(name)
    table = Table(table_path(out, name), module.TITLE)
    module.run(table, device)
    table.done()


def gather(out: Path) -> None:
    tables = [table_path(out, name) for name in SECTIONS if table_path(out, name).exists()]
    (out / "gpu_run.md").write_text("\n".join(path.read_text() for path in tables))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--seconds", type=float, default=500, help="time for all the sections together")
    parser.add_argument("--only", default=None, help="comma-separated section names")
    parser.add_argument("--device", default="cuda", help="cuda; cpu to dry-run the sections' code (smaller sizes)")
    parser.add_argument("--section", default=None, help=argparse.SUPPRESS)  # run one, in this process
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.section:
        run_section(args.section, args.out, args.device)
        return 0

    started = time.monotonic()
    names = args.only.split(",") if args.only else SECTIONS
    unknown = set(names) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {', '.join(sorted(unknown))}: use {', '.join(SECTIONS)}")
    modules = {name: load(name) for name in names}  # every import of the GPU path, up front
    import torch

    imported = sorted(m for m in sys.modules if m.split(".")[0] in ("dreamgen", "diffusers", "transformers",
                                                                   "onnx", "onnxruntime"))
    print(f"gpu_run: {len(modules)} sections and {len(imported)} modules of dreamgen, transformers, diffusers, onnx "
          f"and onnxruntime import (torch {torch.__version__})")
    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_run: no CUDA on this machine (torch.cuda.is_available() is False): nothing to measure here")
        return 0

    for name in names:
        module = modules[name]
        left = args.seconds - (time.monotonic() - started)
        path = table_path(args.out, name)
        if left < LEAST_S:
            Table(path, module.TITLE).note(f"not run: {left:.0f} s were left of the run's {args.seconds:.0f} s")
            continue
        budget = min(module.BUDGET_S, left)
        print(f"\n== {name} (budget {budget:.0f} s)", flush=True)
        t0 = time.monotonic()
        # its own process group: a section stopped at its budget takes its children (pytest, say) with it
        section = subprocess.Popen([sys.executable, __file__, "--out", str(args.out), "--section", name,
                                    "--device", args.device], start_new_session=True)
        try:
            status = section.wait(timeout=budget)
            verdict = None if status == 0 else f"failed: exit status {status} (its output is above)"
        except subprocess.TimeoutExpired:
            os.killpg(section.pid, signal.SIGKILL)
            section.wait()
            verdict = f"stopped at its budget of {budget:.0f} s: the rows above are what it measured"
        if verdict:
            Table.append_note(path, module.TITLE, verdict)
        print(path.read_text() if path.exists() else f"({name}: no table)")
        print(f"== {name}: {time.monotonic() - t0:.0f} s", flush=True)
        gather(args.out)
    print(f"gpu_run: {time.monotonic() - started:.0f} s; tables in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
