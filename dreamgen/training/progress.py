"""A rich progress display for training events (the `on_event` of train_igpt / train_vae)."""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainProgress:
    """Step bar with the latest losses and learning rate; checkpoints and the end are logged as lines (without
    markup: paths are the user's, and "[/x]" in one is not a style)."""

    LOSS_KEYS = ("loss", "lm", "vm", "l1", "mse", "kl")

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, log_path=False)  # no source locations in a user's log
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                 TimeRemainingColumn(), console=self.console)
        self.task = None

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

    def event(self, kind: str, info: dict) -> None:
        if kind == "start":
            what = f"{info.get('documents', info.get('images'))} {'documents' if 'documents' in info else 'images'}"
            self.progress.console.log(f"{info['stage']}: {what}, {info['trainable']:,} trainable parameters"
                                      + (f", resumed from {info['resumed_from']}" if info.get("resumed_from") else ""),
                                      markup=False)
            self.task = self.progress.add_task(info["stage"], total=info["steps"], completed=info["step"], losses="")
        elif kind == "step":
            losses = " ".join(f"{k} {info[k]:.4f}" for k in self.LOSS_KEYS if k in info)
            self.progress.update(self.task, completed=info["step"], losses=f"{losses} lr {info['lr']:.2e}")
        elif kind == "save":
            self.progress.console.log(f"checkpoint {info['path']}", markup=False)
        elif kind == "done":
            self.progress.console.log(f"done in {info['seconds']:.0f}s: {info['path']}", markup=False)
