"""Errors raised for bad input. The command line turns them into one message and exit code 2."""
from __future__ import annotations


class InputError(ValueError):
    """An input file or folder cannot be used. ``path`` names it; the message says why."""

    def __init__(self, path: object, problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
