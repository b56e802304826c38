"""Named errors with the facts a user needs; `cli.py` turns them into one-line messages."""


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
        where = f"{self.path}:{line}" if line else self.path
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {reason}")


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


class StorageError(DreamgenError):
    """Output storage cannot be read or written (missing bucket, denied access, bad path)."""


class EngineError(DreamgenError):
    """A compiled engine cannot be built, loaded or run (backend missing, cache mismatch)."""


class BrokerUnavailable(DreamgenError):
    """The Redis broker cannot be reached; the message names the URL (password hidden) and the reason."""


class JobNotFound(DreamgenError):
    """No record of a job, in Redis or in the storage given."""


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


class ChunkBusy(DreamgenError):
    """Another worker holds the chunk's lock; try again after `retry_after` seconds."""

    def __init__(self, chunk: str, retry_after: float):
        self.chunk, self.retry_after = chunk, retry_after
        super().__init__(f"chunk {chunk} is being run by another worker; retry in {retry_after:.0f} s")
