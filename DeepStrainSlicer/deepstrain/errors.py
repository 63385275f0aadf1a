"""Errors raised for bad input (the command line turns them into one message and exit code 2), and
how messages list what they name."""
from __future__ import annotations


class InputError(ValueError):
    """An input file or folder cannot be used. ``path`` names it; the message says why."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def first_few(items, n: int = 5) -> str:
    """``items`` for a message: the first ``n`` joined by commas, then " ..." when there are more."""
    items = [str(i) for i in items]
    return ", ".join(items[:n]) + (" ..." if len(items) > n else "")
