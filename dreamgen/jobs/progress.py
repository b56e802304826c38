"""A rich progress bar over documents, the one `dreamgen run`, `status --watch` and `eval` show.

Sized for an 80-column terminal: the counts, rate and times never shrink; the note (images, tok/s, slots) drops its
last parts when they do not fit, and the bar takes what is left (the job's name goes on a line of its own above
it). The rate is documents finished in this run over the wall time they took (the last RATE_WINDOW_S of it):
rich's own speed divides by the gap between the first and last update, so 32 slots finishing together at the end
read as thousands per minute. Documents done before a resume do not count.
"""
from __future__ import annotations

import time
from collections import deque

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column
from rich.text import Text

RATE_WINDOW_S = 120.0  # long enough that documents finishing in waves still give a steady rate
BAR_MIN = 10  # the bar's least width; the note gives way before it
NOTE_SEPARATOR = " · "


def _fixed() -> Column:
    return Column(no_wrap=True)


class DocumentProgress:
    """One bar: documents done of all, a note (images, failures, state), docs/min, time elapsed, ETA."""

    def __init__(self, console: Console | None = None, transient: bool = False, clock=time.monotonic):
        self.console = console or Console(log_path=False)  # a log line says what happened, not where in the code
        self.progress = Progress(BarColumn(bar_width=None, table_column=Column(ratio=1)),
                                 MofNCompleteColumn(table_column=_fixed()),
                                 TextColumn("docs · {task.fields[note]}", table_column=_fixed()),
                                 TextColumn("{task.fields[rate]}", table_column=_fixed()),
                                 TimeElapsedColumn(table_column=_fixed()),
                                 TextColumn("ETA {task.fields[eta]}", table_column=_fixed()),
                                 console=self.console, transient=transient, expand=True)
        self.task = None
        self.clock = clock
        self.samples: deque[tuple[float, int]] = deque()  # (time, documents completed), oldest first
        self.full_note = ""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # shown from the job's start only: a file rejected by the check gets its error alone, no empty bar
        return self.progress.__exit__(*exc) if self.task is not None else None

    def start(self, title: str, total: int | None, completed: int = 0, note: str = "") -> None:
        self.progress.__enter__()
        self.log(title, markup=False)
        self.task = self.progress.add_task(title, total=total, completed=completed, note="", rate="", eta="-:--:--")
        self.restart_rate()
        self.update(note=note)

    def restart_rate(self) -> None:
        """Count the rate from now (the documents done so far are not this run's, or the model just loaded)."""
        self.samples.clear()
        if self.task is not None:
            self.samples.append((self.clock(), self._task().completed))

    def update(self, completed: int | None = None, total: int | None = None, note: str | None = None,
               advance: int = 0) -> None:
        changes = {k: v for k, v in {"completed": completed, "total": total}.items() if v is not None}
        self.progress.update(self.task, advance=advance or None, **changes)
        task = self._task()
        if not self.samples or task.completed != self.samples[-1][1]:
            self.samples.append((self.clock(), task.completed))
        if note is not None:
            self.full_note = note
        rate = self.rate()
        left = None if task.total is None else max(0, task.total - task.completed)
        eta = _clock_text(60 * left / rate) if rate and left is not None else "-:--:--"
        rate_text = f"{rate:.1f}/min" if rate else ""
        self.progress.update(self.task, rate=rate_text, eta=eta,
                             note=self._fitted_note(task, rate_text))

    def rate(self) -> float | None:
        """Documents per minute over the last RATE_WINDOW_S (from the start while it is shorter); None until one
        is done."""
        now = self.clock()
        while len(self.samples) > 1 and now - self.samples[1][0] >= RATE_WINDOW_S:
            self.samples.popleft()  # keep one sample at or before the window's start
        first_t, first_done = self.samples[0]
        done, seconds = self.samples[-1][1] - first_done, now - first_t
        return 60 * done / seconds if done > 0 and seconds > 0 else None

    def _fitted_note(self, task, rate_text: str) -> str:
        """The note without its last parts until the line fits the console (counts and times are never cut)."""
        total = "?" if task.total is None else str(int(task.total))
        counts = f"{int(task.completed)}/{total}"
        # the elapsed and ETA columns are 7 wide each (9 past 99 hours); 5 gaps between the 6 columns
        fixed = BAR_MIN + len(counts) + len("docs · ") + len(rate_text) + 9 + len("ETA ") + 9 + 5
        room = self.progress.console.width - fixed
        parts = self.full_note.split(NOTE_SEPARATOR)
        while len(parts) > 1 and len(NOTE_SEPARATOR.join(parts)) > room:
            parts.pop()
        return NOTE_SEPARATOR.join(parts)

    def _task(self):
        return self.progress.tasks[0]

    def log(self, text: str, markup: bool = True) -> None:
        self.progress.console.log(text, markup=markup)


def _clock_text(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class JobProgress(DocumentProgress):
    """The bar of `dreamgen run`, fed by run_job's events."""

    def __init__(self, console: Console | None = None, clock=time.monotonic):
        super().__init__(console, clock=clock)
        self.images, self.pool_note = 0, ""

    def note(self) -> str:
        return f"{self.images} images{self.pool_note}"

    def event(self, kind: str, info: dict) -> None:
        if kind == "start":
            before = f" ({info['skipped']} done before)" if info["skipped"] else ""
            self.start(f"job {info['job_id']}: {info['total']} documents{before}", info["total"], info["skipped"],
                       note=self.note())
            if info.get("location"):  # where to watch; one unbroken line, so a terminal can open the link
                self.progress.console.print(Text(f"Follow it as documents finish: {info['location']}"),
                                            soft_wrap=True)
        elif kind == "loading":
            self.log(f"loading model {info['model']}", markup=False)
        elif kind == "slots":
            default = f" (the default on {info['device']})" if info["default"] else ""
            self.log(f"{info['slots']} slots{default}, {info['batching']} batching", markup=False)
            self.restart_rate()  # the model is loaded: the rate is of generation
        elif kind == "memory":  # the KV pool's plan (generation/memory.py)
            for line in info["lines"]:
                self.log(line, markup=False)
        elif kind == "stats":  # the generator: tokens written per second, documents in flight of the slots
            self.pool_note = f" · {info['tokens_per_s']:.0f} tok/s · {info['busy']}/{info['slots']} slots"
            self.update(note=self.note())
        elif kind == "image":
            self.images += 1
            self.update(note=self.note())
        elif kind in ("document", "failed"):
            if kind == "failed":  # the message is the error's own text: no markup in it
                self.progress.console.log(Text.assemble(("failed", "red"), f" {info['id']}: {info['error']}"))
            self.update(advance=1)
