"""The errors a user can act on: each names the file, record or setting and the fix.

They sit at the bottom of the house (no third-party imports), so the command line can catch them
without loading the data stack, and every room raises the same types.
"""

from __future__ import annotations

from os import PathLike


class DataError(ValueError):
    """Input that cannot be used as it is. The message names the file, the record and the fix."""

    def __init__(self, file: str | PathLike, problem: str, fix: str, location: str | None = None) -> None:
        self.file, self.problem, self.fix, self.location = str(file), problem, fix, location
        where = f"{self.file}, {location}" if location else self.file
        super().__init__(f"{where}: {problem}\n  fix: {fix}")


class SidError(ValueError):
    """A SID string that does not parse. The message quotes it and shows the expected form."""


class TeacherError(RuntimeError):
    """The teacher cannot answer any request (wrong key, unknown model); the message says what to fix."""


class MissingExtra(DataError):
    """An optional part of recot is not installed; the fix is the pip command that installs it."""

    def __init__(self, extra: str, module: str, needed_for: str) -> None:
        super().__init__(needed_for, f"{module} is not installed", f"pip install 'recot[{extra}]'")
        self.extra, self.module = extra, module


def require(extra: str, *modules: str, needed_for: str) -> None:
    """Raise :class:`MissingExtra` unless every module of ``extra`` can be imported; checked before importing
    them, so a command without its extra ends with the pip command instead of a traceback."""
    from importlib.util import find_spec

    for module in modules:
        if find_spec(module) is None:
            raise MissingExtra(extra, module, needed_for)
