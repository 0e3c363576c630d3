"""One error hierarchy, so callers (CLI, service) can tell user mistakes from bugs."""

from __future__ import annotations


class CtrzooError(Exception):
    """Base of every error ctrzoo raises on purpose; the message says what was expected."""


class DataError(CtrzooError):
    """Bad raw input: names the file and line where it is known."""

    def __init__(self, message: str, file: str | None = None, line: int | None = None):
        self.file, self.line, self.reason = file, line, message
        where = f"{file}:{line}: " if file and line else (f"{file}: " if file else "")
        super().__init__(f"{where}{message}")


class SpecError(CtrzooError):
    """A feature specification or a raw feature value that does not fit it: names the field."""

    def __init__(self, message: str, field: str | None = None):
        self.field, self.reason = field, message
        super().__init__(f"field {field!r}: {message}" if field else message)


class DatasetError(CtrzooError):
    """A prepared dataset directory that is missing, incomplete or of another format version."""


class BundleError(CtrzooError):
    """A model bundle that is missing, incomplete or of another format version."""
