"""Named errors with the facts a user needs; `cli.py` turns them into one-line messages.

Messages echo what the user wrote, which may be hostile: `printable` and `preview` show it cut short and
escaped (lone surrogates, control characters), so a message can always be printed and never grows with the input.
"""

PREVIEW_CHARS = 60  # of a bad value in a message: enough to recognise it
REASON_CHARS = 600  # of a whole reason: the longest we write ("unknown field; known: ...") fits


def printable(text, limit: int = REASON_CHARS) -> str:
    """`text` as one line of a message: at most `limit` characters, with lone surrogates, control characters
    and line breaks escaped."""
    text = str(text)
    cut = len(text) > limit
    text = text[:limit]
    if not text.isprintable():
        text = "".join(c if c.isprintable() else _escape(c) for c in text)
    return text + ("..." if cut else "")


_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    code = ord(char)
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def quoted(text: str, limit: int = PREVIEW_CHARS) -> str:
    """A name the user wrote (an id, a template), as repr() quotes it, cut to `limit` characters."""
    text = str(text)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def preview(value, limit: int = PREVIEW_CHARS) -> str:
    """A bad value as a message shows it: JSON-like, at most `limit` characters and printable. Built piece by
    piece and stopped at the limit, so a huge, deeply nested or self-referring value costs no more than a small
    one, and an integer of thousands of digits is described, never converted to text."""
    text, length = [], 0
    for piece in _pieces(value, depth=0, limit=limit):
        text.append(piece)
        length += len(piece)
        if length > limit:
            break
    shown = "".join(text)
    if len(shown) > limit:
        shown = shown[:max(limit - 3, 1)] + "..."
    return printable(shown, limit + 3)


def _pieces(value, depth: int, limit: int):
    if depth > 8:  # deeper than any prompt file needs, and where a value that holds itself ends
        yield "..."
    elif value is None or isinstance(value, bool):
        yield {None: "null", True: "true", False: "false"}[value]
    elif isinstance(value, int):
        bits = value.bit_length()
        yield str(value) if bits < 256 else f"<an integer of about {int(bits * 0.30103) + 1} digits>"
    elif isinstance(value, float):
        yield repr(value)
    elif isinstance(value, str):
        yield _quoted(value[:limit + 1])
    elif isinstance(value, dict):
        yield "{"
        for index, (key, item) in enumerate(value.items()):
            yield (", " if index else "") + _quoted(str(key)[:limit + 1]) + ": "
            yield from _pieces(item, depth + 1, limit)
        yield "}"
    elif isinstance(value, (list, tuple, set, frozenset)):
        yield "["
        for index, item in enumerate(value):
            yield ", " if index else ""
            yield from _pieces(item, depth + 1, limit)
        yield "]"
    elif isinstance(value, (bytes, bytearray)):
        yield repr(bytes(value[:limit + 1]))
    else:  # e.g. a date YAML read from 2024-01-01
        yield str(value)[:limit + 1]


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class DreamgenError(Exception):
    """Base of every error dreamgen raises on purpose (bad input, missing parts, unreachable services)."""


class CheckpointError(DreamgenError):
    """A checkpoint is missing, incomplete or inconsistent; the message names the file and keys."""


class ParamsError(DreamgenError, ValueError):
    """A generation parameter is out of range or of the wrong type; the message names it and its value.
    Where one parameter is at fault, `name` is it and `rule` says what is wrong without naming it (for a caller
    that names it its own way: a CLI flag, a field of a file)."""

    def __init__(self, message: str, name: str | None = None, rule: str | None = None):
        super().__init__(message)
        self.name, self.rule = name, rule


class PromptFileError(DreamgenError):
    """A prompt file cannot be used; the message names the file, line and field."""

    def __init__(self, path, line, reason, field=None):
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        # Each part may hold what the user wrote (a file name, a key, a value): shown bounded and printable.
        where = printable(self.path) + (f":{line}" if line else "")
        what = f" field '{printable(field, PREVIEW_CHARS)}':" if field else ""
        super().__init__(f"{where}:{what} {printable(reason)}")


class PromptFileProblems(PromptFileError):
    """Several prompts of one file are bad, each a PromptFileError in `problems`; the message lists them one per
    line, as `path:line: ...`. path, line, field and reason are the first problem's, for callers naming one place."""

    def __init__(self, problems: list[PromptFileError], more: bool):
        first = problems[0]
        self.problems = problems
        self.path, self.line, self.field, self.reason = first.path, first.line, first.field, first.reason
        n = len(problems)
        count = f"more than {n} problems; the first {n}" if more else f"{n} problems"
        DreamgenError.__init__(self, "\n".join([f"{first.path}: {count}:"] + [str(p) for p in problems]))


class InputImageError(DreamgenError):
    """An input picture that cannot be used (not an image, too large, unreadable); names the picture."""

    def __init__(self, name: str, reason: str):
        self.name, self.reason = printable(name, 300), reason
        super().__init__(f"input image {self.name} {reason}")


class StorageError(DreamgenError):
    """Output storage cannot be read or written (missing bucket, denied access, bad path)."""


class EngineError(DreamgenError):
    """A compiled engine cannot be built, loaded or run (backend missing, cache mismatch)."""


class BrokerUnavailable(DreamgenError):
    """The Redis broker cannot be reached; the message names the URL (password hidden) and the reason."""


class JobNotFound(DreamgenError):
    """No record of a job, in Redis or in the storage given."""


class JobLocked(DreamgenError):
    """Another live run holds the job's lock (jobs.lock); the message names it (pid, host, heartbeat)."""


class JobStateError(DreamgenError):
    """An operation that the job's current state does not allow (e.g. retrying a job that is still running)."""


class ScheduleFileError(DreamgenError):
    """A schedules file cannot be used; the message names the file, the entry and the field."""

    def __init__(self, path, entry, reason, field=None):
        self.path, self.entry, self.field, self.reason = str(path), entry, field, reason
        where = self.path + (f": schedule {entry}" if entry is not None else "")
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {reason}")


class ScheduleFileProblems(ScheduleFileError):
    """Several schedules of one file are bad, each a ScheduleFileError in `problems`; the message lists them one per
    line. path, entry, field and reason are the first problem's."""

    def __init__(self, problems: list[ScheduleFileError]):
        first = problems[0]
        self.problems = problems
        self.path, self.entry, self.field, self.reason = first.path, first.entry, first.field, first.reason
        lines = [f"{first.path}: {len(problems)} problems:"] + [str(p) for p in problems]
        DreamgenError.__init__(self, "\n".join(lines))


class TrainingError(DreamgenError):
    """A training config or data set cannot be used; the message names the file, line or key and the reason."""


class KeyNotFound(StorageError):
    """A key that was read does not exist."""


class GenerationCancelled(DreamgenError):
    """The caller's should_stop() said stop; documents not finished are not returned."""


class JobInterrupted(DreamgenError):
    """A job run in this process stopped before its end (Ctrl-C, or its caller's stop); `summary` says how far."""

    def __init__(self, summary):
        self.summary = summary
        super().__init__(f"job {summary.job_id} interrupted with {summary.done}/{summary.total} documents done")


class JobFailed(DreamgenError):
    """A job run in this process stopped on an error that is not one document's (its storage gave out, its prompt
    file changed under it); `summary` says how far it got, `reason` why, `recorded` whether job.json says so."""

    def __init__(self, summary, reason: str, recorded: bool):
        self.summary, self.reason, self.recorded = summary, reason, recorded
        super().__init__(f"job {summary.job_id} stopped with {summary.done}/{summary.total} documents done: {reason}")


class ChunkBusy(DreamgenError):
    """Another worker holds the chunk's lock; try again after `retry_after` seconds."""

    def __init__(self, chunk: str, retry_after: float):
        self.chunk, self.retry_after = chunk, retry_after
        super().__init__(f"chunk {chunk} is being run by another worker; retry in {retry_after:.0f} s")
