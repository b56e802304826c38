"""What a prompt file may hold at most, and what text it may not hold: the bounds that keep a hostile file from
crashing or stalling the check (numbers of thousands of digits, nesting thousands deep, aliases that expand a
billion times, one line of gigabytes, half a surrogate pair, NUL bytes).

Every bound is far above what a real prompt file needs; a file past one is rejected with its line, like any
other mistake. Whether a prompt fits the model's context is the model's to say; these only bound the reading.
"""
from __future__ import annotations

MAX_LINE_BYTES = 256 * 1024  # a line (and a YAML value): a prompt this long fits no model's context
MAX_INT_DIGITS = 30  # every valid integer parameter has at most 19 (seed < 2^63)
MAX_DEPTH = 16  # a prompt item nests 3 levels (item -> images -> path); YAML defaults, one more
MAX_ITEM_VALUES = 10_000  # values in one item (or `defaults:`) once its YAML aliases are expanded


class LongNumber:
    """An integer of more than MAX_INT_DIGITS digits, kept as its text: converting it could take seconds, or fail
    past Python's 4,300-digit limit, and no parameter accepts it anyway."""

    def __init__(self, text: str):
        text = text.strip().lstrip("+-")
        self.digits = len(text) - (2 if text[:2].lower() in ("0x", "0o", "0b") else 0)  # hex and octal too

    def __str__(self) -> str:
        return f"a number of {self.digits:,} digits"

    __repr__ = __str__


def bounded_int(text: str):
    """int(text), or a LongNumber when it has too many digits to be any parameter's value."""
    return LongNumber(text) if len(text) > MAX_INT_DIGITS else int(text)


def text_problem(text: str) -> str | None:
    """Why `text` cannot be stored as text (UTF-8 in JSON, a path, a page), or None. JSON and YAML escapes can
    write what UTF-8 bytes cannot: half of a surrogate pair, and NUL."""
    if "\x00" in text:
        return f"holds a NUL character (at character {text.index(chr(0)) + 1})"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"holds \\u{ord(text[e.start]):04x} at character {e.start + 1}, half of a surrogate pair, "
                "which is not text (write the character itself, or both halves of its pair)")
    return None
