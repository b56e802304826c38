"""Named errors with the facts a user needs; `cli.py` turns them into one-line messages."""


class DreamgenError(Exception):
    """Base of every error dreamgen raises on purpose (bad input, missing parts, unreachable services)."""


class CheckpointError(DreamgenError):
    """A checkpoint is missing, incomplete or inconsistent; the message names the file and keys."""


class ParamsError(DreamgenError, ValueError):
    """A generation parameter is out of range or of the wrong type; the message names it and its value."""


class PromptFileError(DreamgenError):
    """A prompt file cannot be used; the message names the file, line and field."""

    def __init__(self, path, line, reason, field=None):
        self.path, self.line, self.field, self.reason = str(path), line, field, reason
        where = f"{self.path}:{line}" if line else self.path
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {reason}")


class StorageError(DreamgenError):
    """Output storage cannot be read or written (missing bucket, denied access, bad path)."""


class EngineError(DreamgenError):
    """A compiled engine cannot be built, loaded or run (backend missing, cache mismatch)."""
