"""The ``deepstrain`` command.

Every sub-command has an ``_add_<name>`` function (its arguments) and a ``_cmd_<name>``
function (what it does). Bad input raises :class:`deepstrain.errors.InputError`, which
``main`` prints as one line ``deepstrain: error: <file>: <problem>`` with exit status 2.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import InputError


# --------------------------------------------------------------------------- phantom
def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write a synthetic beating-heart cine with exact motion and strain")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _cmd_phantom(args: argparse.Namespace) -> int:
    raise NotImplementedError("phantom")


# --------------------------------------------------------------------------- analyze
def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="segmentation, motion, strain and volumes of one study")
    p.add_argument("input", type=Path, help="4D NIfTI, DICOM cine folder or ACDC patient folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _cmd_analyze(args: argparse.Namespace) -> int:
    raise NotImplementedError("analyze")


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepstrain", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _add_phantom(sub)
    _add_analyze(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = globals()[f"_cmd_{args.command}"]
    try:
        return int(handler(args) or 0)
    except InputError as exc:
        print(f"deepstrain: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
