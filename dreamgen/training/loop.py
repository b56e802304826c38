"""Pieces both training stages share: learning-rate schedule, optimizer, per-step randomness, checkpoints on disk,
the metrics log, and the events a progress display listens to.

A run's folder:
    OUTPUT_DIR/checkpoint-STEP/    the model as the stage saves it + trainer_state.pt (optimizer, step)
    OUTPUT_DIR/final/              the finished model
    OUTPUT_DIR/log.jsonl           one line per log window: step, losses, lr, seconds
Randomness of step k (batch order, noise, timesteps, dropout) comes from (seed, k) alone, so a resumed run takes
the same steps as one that never stopped.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from ..errors import TrainingError
from .config import OptimConfig, RunConfig

STATE_FILE = "trainer_state.pt"
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")

OnEvent = Callable[[str, dict], None]  # (kind, info): "start", "step", "save", "done"


def lr_at(step: int, o: OptimConfig) -> float:
    """Linear warmup, then cosine decay to lr * min_lr_ratio at the last step."""
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    progress = (step - o.warmup_steps) / max(1, o.steps - o.warmup_steps)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(named_params: list[tuple[str, torch.nn.Parameter]], o: OptimConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not on norms, biases or the dream queries' single tensor)."""
    decay = [p for n, p in named_params if p.ndim >= 2 and "dream_queries" not in n]
    plain = [p for n, p in named_params if not (p.ndim >= 2 and "dream_queries" not in n)]
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": plain, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas))


def step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed * 1_000_003 + step)


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> float:
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm))
    return float(torch.norm(torch.stack([p.grad.norm() for p in params if p.grad is not None])))


def update(optimizer: torch.optim.Optimizer, loss: torch.Tensor, params: list[torch.nn.Parameter], lr: float,
           grad_clip: float) -> float:
    """One optimizer step on `loss` at learning rate `lr`; returns the gradient norm before clipping."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = clip_gradients(params, grad_clip)
    optimizer.step()
    return grad_norm


# ---------------------------------------------------------------------------------------------- checkpoints
def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoint folders (those with a trainer state), oldest first."""
    found = []
    for d in output_dir.glob("checkpoint-*"):
        m = _CHECKPOINT.fullmatch(d.name)
        if m and (d / STATE_FILE).exists():
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = checkpoints(output_dir)
    return found[-1] if found else None


def save_state(directory: Path, optimizer: torch.optim.Optimizer, step: int, extra: dict | None = None) -> None:
    # Written last: its presence marks the checkpoint complete.
    torch.save({"step": step, "optimizer": optimizer.state_dict(), **(extra or {})}, directory / STATE_FILE)


def load_state(directory: Path) -> dict:
    try:
        return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=False)
    except Exception as e:  # a truncated file from a killed run: say which
        raise TrainingError(f"cannot read {directory / STATE_FILE} ({type(e).__name__}: {e})") from None


def clear_run(output_dir: Path) -> None:
    """Forget an earlier run in this folder (its checkpoints, final model and log), to start over."""
    for old in checkpoints(output_dir) + [output_dir / "final"]:
        shutil.rmtree(old, ignore_errors=True)
    (output_dir / "log.jsonl").unlink(missing_ok=True)


def open_run(output_dir, threads: int | None, resume: bool) -> tuple[Path, Path | None, dict | None]:
    """Set up a run of either stage: its thread count, its folder (emptied when not resuming), and the checkpoint
    to resume from with its trainer state (None, None for a new run)."""
    if threads:
        torch.set_num_threads(threads)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not resume:
        clear_run(out)
    latest = latest_checkpoint(out)
    return out, latest, load_state(latest) if latest else None


def prune_checkpoints(output_dir: Path, keep: int) -> None:
    for old in checkpoints(output_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------------- metrics
@dataclass
class MetricsWindow:
    """Averages losses over the steps between two log lines and appends them to log.jsonl."""

    path: Path
    sums: dict = field(default_factory=dict)
    count: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + float(v)
        self.count += 1

    def flush(self, step: int, lr: float) -> dict:
        line = {"step": step, **{k: round(v / max(1, self.count), 6) for k, v in self.sums.items()},
                "lr": lr, "seconds_per_step": round((time.perf_counter() - self.started) / max(1, self.count), 4)}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        self.sums, self.count, self.started = {}, 0, time.perf_counter()
        return line


class StepLog:
    """What both stages do after each step: average the metrics into log.jsonl every log_every steps, tell the
    progress display, and save a checkpoint (weights via `save_weights`, then the trainer state) every
    save_every steps, keeping the newest keep_checkpoints."""

    def __init__(self, out: Path, config: RunConfig, steps: int, optimizer: torch.optim.Optimizer,
                 save_weights: Callable[[Path], None], emit: OnEvent):
        self.out, self.config, self.steps = out, config, steps
        self.optimizer, self.save_weights, self.emit = optimizer, save_weights, emit
        self.window = MetricsWindow(out / "log.jsonl")
        self.last: dict = {}  # the latest log line

    def step_done(self, done: int, lr: float, metrics: dict) -> None:
        self.window.add(metrics)
        if done % self.config.log_every == 0 or done == self.steps:
            self.last = self.window.flush(done, lr)
        self.emit("step", {"step": done, "steps": self.steps, "lr": lr, **metrics})
        if done % self.config.save_every == 0 and done < self.steps:
            directory = self.out / f"checkpoint-{done}"
            self.save_weights(directory)
            save_state(directory, self.optimizer, done)
            prune_checkpoints(self.out, self.config.keep_checkpoints)
            self.emit("save", {"step": done, "path": str(directory)})
