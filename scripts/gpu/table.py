"""A section's Markdown table, rewritten to its file after every row: a section stopped mid-way leaves its rows."""
from __future__ import annotations

from pathlib import Path


class Table:
    def __init__(self, path: Path, title: str, columns: tuple[str, ...] = ()):
        self.path, self.title = path, title
        self.columns, self.rows, self.notes = list(columns), [], []
        self.write()

    def header(self, *columns: str) -> None:
        self.columns = list(columns)
        self.write()

    def row(self, *cells) -> None:
        self.rows.append([_cell(c) for c in cells])
        self.write()

    def note(self, text: str) -> None:
        self.notes.append(text)
        self.write()

    def done(self) -> None:
        self.write()

    def write(self) -> None:
        lines = [f"### {self.title}", ""]
        if self.columns:
            lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
            lines += ["| " + " | ".join(row) + " |" for row in self.rows]
            lines.append("")
        lines += [f"{note}  " for note in self.notes]
        self.path.write_text("\n".join(lines).rstrip() + "\n")

    @staticmethod
    def append_note(path: Path, title: str, text: str) -> None:
        """A note added from outside the section's process (the runner: it failed, or ran out of time)."""
        before = path.read_text() if path.exists() else f"### {title}\n"
        path.write_text(before.rstrip() + f"\n\n**{text}**\n")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")
