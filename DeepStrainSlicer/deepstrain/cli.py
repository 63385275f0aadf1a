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
class _ProgressLine:
    """One self-overwriting status line on stderr (plain lines when stderr is not a terminal)."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.tty = sys.stderr.isatty()
        self.last = ""

    def __call__(self, fraction: float, message: str) -> None:
        if self.quiet or message == self.last:
            return
        self.last = message
        line = f"[{100 * fraction:5.1f} %] {message}"
        if self.tty:
            print("\r" + line.ljust(60), end="" if fraction < 1 else "\n", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


def _add_study_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("overrides (when the input's header is wrong or silent)")
    g.add_argument("--spacing", type=float, nargs=3, metavar=("SLICE", "ROW", "COL"),
                   help="voxel spacing in mm, replacing the header's")
    t = g.add_mutually_exclusive_group()
    t.add_argument("--heart-rate", type=float, metavar="BPM", help="heart rate: frame times = frame x RR / frames")
    t.add_argument("--rr-ms", type=float, metavar="MS", help="RR interval in ms (instead of --heart-rate)")
    g.add_argument("--ed", type=int, help="end-diastolic frame, 0-based (default: from the input, else largest LV)")
    g.add_argument("--es", type=int, help="end-systolic frame, 0-based (default: from the input, else smallest LV)")


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="segmentation, motion, strain and volumes of one study")
    p.add_argument("input", type=Path, help="4D NIfTI, DICOM cine folder or ACDC patient folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--segmentation", type=Path,
                   help="4D NIfTI labels on the input grid (ACDC values) to use instead of the networks'")
    p.add_argument("--displacement", type=Path,
                   help="5D NIfTI (x,y,z,t,3) displacement, RAS mm, from ED, to use instead of the networks'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_study_options(p)


def _print_summary(rep: dict, out: Path) -> None:
    vol = rep.get("volumetrics") or {}
    ess = rep.get("ess") or {}

    def f(v: object, unit: str) -> str:
        return "n/a" if v is None else f"{v:.1f} {unit}"

    print(f"{rep.get('study', 'study')}: EDV {f(vol.get('lv_edv_ml'), 'ml')}, ESV {f(vol.get('lv_esv_ml'), 'ml')}, "
          f"EF {f(vol.get('lv_ef_percent'), '%')}, LV mass {f(vol.get('lv_mass_g'), 'g')}")
    print(f"ESS radial {f(ess.get('radial'), '%')}, circumferential {f(ess.get('circumferential'), '%')}")
    print(f"written to {out}")


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze_path

    rep = analyze_path(
        args.input, args.out,
        segmentation=args.segmentation, displacement=args.displacement,
        spacing=tuple(args.spacing) if args.spacing else None,
        heart_rate_bpm=args.heart_rate, rr_ms=args.rr_ms, ed=args.ed, es=args.es,
        overwrite=args.overwrite, progress=_ProgressLine(args.quiet),
    )
    _print_summary(rep, args.out)
    return 0


# --------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on a built-in phantom, compared with its exact reference")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=2024, help="phantom seed (not one used in training)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    rep = run_demo(args.out, seed=args.seed, overwrite=args.overwrite, progress=_ProgressLine(args.quiet))
    _print_summary(rep, args.out)
    return 0


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepstrain",
        description="DeepStrain: segmentation, motion, myocardial strain and volumes from cine MRI.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_phantom(sub)
    _add_analyze(sub)
    _add_demo(sub)
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
