"""A rich progress bar over documents, the one `dreamgen run`, `status --watch` and `eval` show.

Sized for an 80-column terminal: the bar takes what the counts leave (the job's name goes on a line of its own
above it), and the rate comes from rich's recent speed, so documents done before a resume do not inflate it.
"""
from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.text import Text


class DocumentProgress:
    """One bar: documents done of all, a note (images, failures, state), docs/min, time elapsed, ETA."""

    def __init__(self, console: Console | None = None, transient: bool = False):
        self.console = console or Console(log_path=False)  # a log line says what happened, not where in the code
        self.progress = Progress(BarColumn(bar_width=None), MofNCompleteColumn(),
                                 TextColumn("docs · {task.fields[note]}"), TextColumn("{task.fields[rate]}"),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=transient, expand=True)
        self.task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # shown from the job's start only: a file rejected by the check gets its error alone, no empty bar
        return self.progress.__exit__(*exc) if self.task is not None else None

    def start(self, title: str, total: int | None, completed: int = 0, note: str = "") -> None:
        self.progress.__enter__()
        self.log(title, markup=False)
        self.task = self.progress.add_task(title, total=total, completed=completed, note=note, rate="")

    def update(self, completed: int | None = None, total: int | None = None, note: str | None = None,
               advance: int = 0) -> None:
        changes = {k: v for k, v in {"completed": completed, "total": total, "note": note}.items() if v is not None}
        self.progress.update(self.task, advance=advance or None, **changes)
        speed = self.progress.tasks[0].speed
        if speed:
            self.progress.update(self.task, rate=f"{60 * speed:.1f}/min")

    def log(self, text: str, markup: bool = True) -> None:
        self.progress.console.log(text, markup=markup)


class JobProgress(DocumentProgress):
    """The bar of `dreamgen run`, fed by run_job's events."""

    def __init__(self, console: Console | None = None):
        super().__init__(console)
        self.images, self.engine = 0, ""

    def note(self) -> str:
        return f"{self.images} images{self.engine}"

    def event(self, kind: str, info: dict) -> None:
        if kind == "start":
            before = f" ({info['skipped']} done before)" if info["skipped"] else ""
            self.start(f"job {info['job_id']}: {info['total']} documents{before}", info["total"], info["skipped"],
                       note=self.note())
        elif kind == "loading":
            self.log(f"loading model {info['model']}", markup=False)
        elif kind == "slots":
            default = f" (the default on {info['device']})" if info["default"] else ""
            self.log(f"{info['slots']} slots{default}, {info['batching']} batching", markup=False)
        elif kind == "memory":  # the KV pool's plan (generation/memory.py)
            for line in info["lines"]:
                self.log(line, markup=False)
        elif kind == "stats":  # the engine: tokens written per second, documents in flight of the slots
            self.engine = f" · {info['tokens_per_s']:.0f} tok/s · {info['busy']}/{info['slots']} slots"
            self.update(note=self.note())
        elif kind == "image":
            self.images += 1
            self.update(note=self.note())
        elif kind in ("document", "failed"):
            if kind == "failed":  # the message is the error's own text: no markup in it
                self.progress.console.log(Text.assemble(("failed", "red"), f" {info['id']}: {info['error']}"))
            self.update(advance=1)
