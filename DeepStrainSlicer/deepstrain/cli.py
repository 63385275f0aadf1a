"""The ``deepstrain`` command.

Every sub-command has an ``_add_<name>`` function (its arguments) and a ``_cmd_<name>``
function (what it does). Bad input raises :class:`deepstrain.errors.InputError`, which
``main`` prints as one line ``deepstrain: error: <file>: <problem>`` with exit status 2.
"""
from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import threading
import warnings
from pathlib import Path
from typing import Iterator

from .errors import InputError
from .networks import TTA_MODES
from .networks.precision import PRECISIONS


# --------------------------------------------------------------------------- phantom
def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write a synthetic beating-heart cine with exact motion and strain")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same files)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    g = p.add_argument_group("phantom parameters (defaults: deepstrain.phantom.PhantomParams)")
    g.add_argument("--frames", type=int, help="number of frames over one cycle")
    g.add_argument("--heart-rate", type=float, metavar="BPM", help="heart rate (beats per minute)")
    g.add_argument("--spacing", type=float, metavar="MM", help="in-plane pixel spacing (mm)")
    g.add_argument("--slice-spacing", type=float, metavar="MM", help="slice spacing = thickness (mm)")
    g.add_argument("--slices", type=int, help="number of slices (default: base to apical cap)")
    g.add_argument("--size", type=int, help="matrix size (pixels per side)")
    g.add_argument("--edv", type=float, metavar="ML", help="LV end-diastolic volume (ml)")
    g.add_argument("--ef", type=float, metavar="PCT", help="LV ejection fraction (%%)")
    g.add_argument("--long-shortening", type=float, metavar="PCT", help="LV length shortening at ES (%%)")
    g.add_argument("--twist", type=float, metavar="DEG", help="apex minus base rotation at ES (deg)")
    g.add_argument("--hypokinesis", type=float, help="loss of contraction in the inferolateral sector (0-1)")
    g.add_argument("--delay", type=float, metavar="MS",
                   help="regional dyssynchrony: delay of the inferolateral wall's radial contraction (ms)")
    g.add_argument("--rv-side", choices=("left", "right"), help="image side of the RV")
    g.add_argument("--rotation", type=float, metavar="DEG", help="extra in-plane rotation of the heart (deg)")
    g.add_argument("--tilt", type=float, metavar="DEG",
                   help="angle between the slice normal and the LV long axis (0-30 deg): a stack not planned "
                        "across the ventricle")
    g.add_argument("--noise", type=float, help="Rician noise sigma over the blood signal")


_PHANTOM_FLAGS = {
    "frames": "n_frames", "heart_rate": "heart_rate_bpm", "spacing": "pixel_spacing_mm",
    "slice_spacing": "slice_spacing_mm", "slices": "n_slices", "size": "matrix_size", "edv": "lv_edv_ml",
    "ef": "ef_percent", "long_shortening": "longitudinal_shortening_percent", "twist": "twist_deg",
    "hypokinesis": "hypokinesis", "delay": "delay_ms", "rv_side": "rv_side", "rotation": "rotation_deg", "noise": "noise",
    "tilt": "tilt_deg",
}  # fmt: skip


def _cmd_phantom(args: argparse.Namespace) -> int:
    from .phantom import PhantomParams, generate_phantom, write_phantom

    out = Path(args.out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not args.overwrite)):
        raise InputError(out, "output folder exists and is not empty (use --overwrite to replace it)")
    values = {field: getattr(args, flag) for flag, field in _PHANTOM_FLAGS.items() if getattr(args, flag) is not None}
    flags = {field: "--" + flag.replace("_", "-") for flag, field in _PHANTOM_FLAGS.items()}
    try:
        params = PhantomParams(seed=args.seed, **values)
        phantom = generate_phantom(params)
    except ValueError as exc:  # incl. PhantomRefused: valid values the phantom cannot build together
        text = str(exc)
        for field, flag in sorted(flags.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(field, flag)
        hint = ""
        if getattr(exc, "parameter", None) == "apex_wall_mm":
            hint = " (the apical wall is fixed; choose a smaller --slice-spacing)"
        raise InputError("phantom parameters", text + hint) from None
    write_phantom(phantom, out, overwrite=args.overwrite)
    ref = phantom.reference
    print(f"phantom written to {out}: {params.n_frames} frames, ES frame {ref['frames']['es']}, "
          f"LV EF {ref['volumetrics']['lv_ef_percent']:.1f} %, ESS radial {ref['ess']['radial']:.1f} %, "
          f"circumferential {ref['ess']['circumferential']:.1f} %, longitudinal {ref['ess']['longitudinal']:.1f} %")
    return 0


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
    g.add_argument("--height", type=float, metavar="CM", help="the subject's height in cm (with --weight: volumes "
                   "indexed to the body surface area; default: from an ACDC Info.cfg or the DICOM header)")
    g.add_argument("--weight", type=float, metavar="KG", help="the subject's weight in kg (see --height)")
    g.add_argument("--ed", type=int, help="end-diastolic frame, 0-based (default: from the input, else largest LV)")
    g.add_argument("--es", type=int, help="end-systolic frame, 0-based (default: from the input, else smallest LV)")


def _study_kwargs(args: argparse.Namespace) -> dict:
    """The overrides of :func:`_add_study_options` as keyword arguments of :func:`deepstrain.analyze.analyze_path`."""
    return dict(spacing=tuple(args.spacing) if args.spacing else None, heart_rate_bpm=args.heart_rate,
                rr_ms=args.rr_ms, ed=args.ed, es=args.es, height_cm=args.height, weight_kg=args.weight)


def _add_refine_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--refine-motion", action=argparse.BooleanOptionalAction, default=True,
                   help="correct the motion network's field so that every frame's segmentation, pulled back to "
                        "ED, matches ED's (default; radial strain error 1.7 against 3.0 points on the benchmark "
                        "phantoms, about 1.1-1.4 s more); --no-refine-motion gives the motion network's field as it is")


def _add_network_options(p: argparse.ArgumentParser) -> None:
    """The options of how the networks run (deepstrain analyze and batch)."""
    p.add_argument("--tta", choices=TTA_MODES, default="ed-es",
                   help="frames segmented with test-time flips (4 passes each, flipped, probabilities averaged): "
                        "ed-es = the ED and ES frames (default; about 0.5 s more on a 30-frame study), "
                        "all = every frame (about 2.3x the network time), off = none")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="network arithmetic: auto = bfloat16 where the CPU has it natively (about 2x faster), "
                        "else float32")
    p.add_argument("--weights", type=Path, metavar="DIR",
                   help="weights folder with its manifest.json (e.g. from deepstrain train ... --export-dir) "
                        "instead of the shipped weights; every file is checked against the manifest")
    _add_refine_option(p)


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="segmentation, motion, strain and volumes of one study")
    p.add_argument("input", type=Path, help="4D NIfTI, DICOM cine folder (or enhanced multi-frame file), ACDC patient "
                   "folder or UK Biobank subject folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--segmentation", type=Path,
                   help="4D NIfTI labels on the input grid (ACDC values) to use instead of the networks'")
    p.add_argument("--displacement", type=Path,
                   help="5D NIfTI (x,y,z,t,3) displacement, RAS mm, from ED, to use instead of the networks'")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_qc_option(p)
    _add_network_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    _add_study_options(p)
    p.add_argument("--rv-insertion", type=float, nargs=3, metavar=("R", "A", "S"),
                   help="anterior RV insertion point (world RAS mm, e.g. read off in Slicer) that orients the "
                        "AHA segments, instead of the RV contours (for wrong or missing RV labels)")


def _add_qc_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--qc", action="store_true",
                   help="also write qc.png: contours on basal, mid and apical slices at ED and ES, curves "
                        "and polar maps, for checking a study at a glance (about 1 s more)")


def _print_summary(rep: dict, out: Path) -> None:
    vol = rep.get("volumetrics") or {}
    ess = rep.get("ess") or {}

    def f(v: object, unit: str) -> str:
        return "n/a" if v is None else f"{v:.1f} {unit}"

    print(f"{rep.get('study', 'study')}: EDV {f(vol.get('lv_edv_ml'), 'ml')}, ESV {f(vol.get('lv_esv_ml'), 'ml')}, "
          f"EF {f(vol.get('lv_ef_percent'), '%')}, LV mass {f(vol.get('lv_mass_g'), 'g')}")
    subject = rep.get("subject") or {}
    if subject.get("bsa_m2") is not None:
        print(f"indexed to BSA {subject['bsa_m2']:.2f} m2: EDVi {f(vol.get('lv_edvi_ml_per_m2'), 'ml/m2')}, "
              f"ESVi {f(vol.get('lv_esvi_ml_per_m2'), 'ml/m2')}, LV mass index {f(vol.get('lv_mass_index_g_per_m2'), 'g/m2')}, "
              f"RV EDVi {f(vol.get('rv_edvi_ml_per_m2'), 'ml/m2')}")
    if vol.get("lv_cardiac_output_l_per_min") is not None:
        print(f"cardiac output {f(vol.get('lv_cardiac_output_l_per_min'), 'l/min')} at "
              f"{subject.get('heart_rate_bpm', 0):.0f} bpm")
    print(f"ESS radial {f(ess.get('radial'), '%')}, circumferential {f(ess.get('circumferential'), '%')}")
    dys = rep.get("dyssynchrony") or {}
    if dys.get("sd_ttp_circumferential_ms") is not None:
        print(f"dyssynchrony (circumferential): SD of the times to peak {f(dys['sd_ttp_circumferential_ms'], 'ms')}, "
              f"septal-lateral delay {f(dys.get('septal_lateral_delay_circumferential_ms'), 'ms')}, "
              f"post-systolic peaks in {dys.get('post_systolic_segments')} of 12 basal and mid segments, "
              f"CURE {'n/a' if dys.get('cure') is None else format(dys['cure'], '.2f')}")
    findings = rep.get("quality") or []
    print("quality checks: no finding" if not findings else
          f"quality checks: {len(findings)} finding(s), look before trusting the numbers:")
    for q in findings:
        print(f"  - {q['check']}: {q['message']}")
    print(f"written to {out}")


def _cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze_path

    rep = analyze_path(
        args.input, args.out,
        segmentation=args.segmentation, displacement=args.displacement, **_study_kwargs(args),
        overwrite=args.overwrite, progress=_ProgressLine(args.quiet), tta=args.tta,
        precision=args.precision, weights_dir=args.weights, refine_motion=args.refine_motion, qc=args.qc,
        rv_insertion_ras=tuple(args.rv_insertion) if args.rv_insertion else None,
    )
    _print_summary(rep, args.out)
    return 0


# --------------------------------------------------------------------------- demo
def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole pipeline on a built-in phantom, compared with its exact reference")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--seed", type=int, default=2024, help="phantom seed (not one used in training)")
    _add_refine_option(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    rep = run_demo(args.out, seed=args.seed, overwrite=args.overwrite, progress=_ProgressLine(args.quiet),
                   refine_motion=args.refine_motion)
    _print_summary(rep, args.out)
    return 0


# --------------------------------------------------------------------------- batch
def _add_batch(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="analyse every study under a folder (resumable), with a summary table and group figures")
    p.add_argument("input", type=Path, help="folder of studies: ACDC patient folders, UK Biobank subject folders, 4D NIfTI files, DICOM cine folders")
    p.add_argument("--out", required=True, type=Path, help="output folder (created; re-running with the same settings resumes, see OUT/settings.json)")
    p.add_argument("--workers", type=int, default=1, help="local worker processes (default 1)")
    p.add_argument("--threads", type=int, help="torch threads per worker (default: cores // workers; 1 on Dask)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="Dask scheduler address (tcp://host:8786) to run on a cluster")
    p.add_argument("--table", "--groups", dest="table", type=Path, metavar="CSV",
                   help="study table: CSV with a header, id (as in summary.csv) and any of group (overrides Info.cfg "
                        "Group), height_cm, weight_kg, heart_rate_bpm, slice_mm + row_mm + col_mm (replace the "
                        "input's, as --height/--weight/--heart-rate/--spacing do for one study); an empty cell "
                        "keeps the input's value")
    p.add_argument("--limit", type=int, metavar="N", help="only the first N studies (sorted by path)")
    p.add_argument("--no-figures", action="store_true", help="do not write the group figures")
    _add_qc_option(p)
    _add_network_options(p)  # a re-run into OUT must use the same settings (OUT/settings.json)
    p.add_argument("--quiet", action="store_true", help="no progress output")


def _cmd_batch(args: argparse.Namespace) -> int:
    from . import batch

    res = batch.run_batch(args.input, args.out, workers=args.workers, scheduler=args.scheduler,
                          table_csv=args.table, threads=args.threads, limit=args.limit,
                          progress=None if args.quiet else sys.stderr, figures=not args.no_figures,
                          study_kwargs={"tta": args.tta, "precision": args.precision, "weights_dir": args.weights,
                                        "refine_motion": args.refine_motion, "qc": args.qc})
    print(f"{len(res.rows)} studies: {res.n_ok} analysed, {res.n_skipped} already done, {res.n_failed} failed "
          f"in {res.seconds:.1f} s; table {res.out_dir / batch.SUMMARY_NAME}")
    flagged = [r for r in res.rows if r["status"] == "ok" and r.get("quality")]
    if flagged:
        print(f"quality checks: {len(flagged)} of {sum(r['status'] == 'ok' for r in res.rows)} studies have findings "
              "(column 'quality' of the table; the messages are in each study's report.json):")
        for r in flagged:
            print(f"  {r['id']}: {r['quality'].replace(';', ', ')}")
    for r in res.rows:
        if r["status"] != "ok":
            print(f"  failed {r['id']}: {r['error']}")
    return res.exit_code


# --------------------------------------------------------------------------- groups
def _add_groups(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("groups", help="group figures (strain curves, polar maps, ESS) of a batch output folder")
    p.add_argument("batch_dir", type=Path, help="output folder of 'deepstrain batch'")
    p.add_argument("--groups", type=Path, metavar="CSV",
                   help="CSV with columns id and group, e.g. the batch's study table (overrides the summary's groups)")
    p.add_argument("--out", type=Path, help="figure folder (default BATCH_DIR/figures, replaced)")
    from .quality import CHECKS

    p.add_argument("--exclude-quality", nargs="+", metavar="CHECK", default=[], choices=[*CHECKS, "any"],
                   help="leave out the studies with a finding of these automatic quality checks ('any': any "
                        f"finding; checks: {', '.join(CHECKS)}); groups.json lists them")


def _cmd_groups(args: argparse.Namespace) -> int:
    import json

    from .groups import make_group_figures

    made = make_group_figures(args.batch_dir, out_dir=args.out, groups_csv=args.groups,
                              exclude_checks=args.exclude_quality)
    for f in made:
        print(f)
    if args.exclude_quality:
        gj = next(f for f in made if f.name == "groups.json")
        left_out = json.loads(gj.read_text())["notes"]["excluded_by_quality"]["studies"]
        print(f"left out by the quality checks: {len(left_out)} studies"
              + "".join(f"\n  {i}: {', '.join(c)}" for i, c in left_out.items()))
    return 0


# --------------------------------------------------------------------------- compare
def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("compare", help="agreement of two study tables (Bland-Altman, ICC(A,1), relative change)")
    p.add_argument("a", type=Path, help="first table (summary.csv of a batch, or any CSV with an id column)")
    p.add_argument("b", type=Path, help="second table; rows are paired by id")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


def _cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare_tables

    res = compare_tables(args.a, args.b, args.out, overwrite=args.overwrite)
    print(f"{res['n_pairs']} paired studies, {len(res['metrics'])} metrics; table {Path(args.out) / 'agreement.csv'}")
    return 0


# --------------------------------------------------------------------------- robustness
def _add_robustness(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("robustness", help="strain differences after small perturbations of one study")
    p.add_argument("input", type=Path, help="4D NIfTI or ACDC patient folder")
    p.add_argument("--out", required=True, type=Path, help="output folder (must not exist or be empty)")
    p.add_argument("--snr", type=float, default=20.0, help="SNR of the added Rician noise (default 20)")
    p.add_argument("--seed", type=int, default=0, help="noise seed")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    _add_study_options(p)


def _cmd_robustness(args: argparse.Namespace) -> int:
    from .robustness import robustness_study

    kw = {k: v for k, v in _study_kwargs(args).items() if v is not None}
    res = robustness_study(args.input, args.out, snr=args.snr, seed=args.seed, overwrite=args.overwrite,
                           study_kwargs=kw)
    if res["baseline_quality"]:
        print(f"note: the baseline analysis has quality findings ({', '.join(res['baseline_quality'])}; see "
              f"{Path(args.out) / 'baseline' / 'report.json'}): how stable a result is says little when the result "
              "itself is doubtful")
    for r in res["perturbations"]:
        print(f"{r['name']:>14}: dESS radial {r['ess_radial_diff_percent']:+.2f}, circumferential "
              f"{r['ess_circumferential_diff_percent']:+.2f} %; segments mean |d| {r['segments_mean_abs_diff_percent']:.2f}, "
              f"max {r['segments_max_abs_diff_percent']:.2f} %: {'within' if r['within_tolerance'] else 'OUTSIDE'} tolerance"
              + (f" (analysis failed: {r['error']})" if r["error"] else ""))
    return 0 if all(r["within_tolerance"] for r in res["perturbations"]) else 1


# --------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    from .training import DEFAULTS, add_training_arguments

    p = sub.add_parser("train", help="train a network on ACDC (centring, segmentation or motion)")
    nets = p.add_subparsers(dest="network", required=True)
    add_training_arguments(
        nets.add_parser("centring", help="LV-finding network on the whole field of view"), **DEFAULTS["centring"])
    add_training_arguments(
        nets.add_parser("segmentation", help="RV / myocardium / LV segmentation network"), **DEFAULTS["segmentation"])
    # The motion options belong to deepstrain.training.motion (imported only when used, it needs torch):
    # with prefix_chars="+" every "-..." word is passed through to it unparsed.
    m = nets.add_parser("motion", help="motion network (options: deepstrain train motion -h)",
                        add_help=False, prefix_chars="+")
    m.add_argument("motion_args", nargs="*", help=argparse.SUPPRESS)


def _cmd_train(args: argparse.Namespace) -> int:
    command = "deepstrain " + " ".join(sys.argv[1:])
    if args.network == "motion":
        from .training import motion

        mp = argparse.ArgumentParser(prog="deepstrain train motion")
        motion.add_arguments(mp)
        margs = mp.parse_args(args.motion_args)
        margs.command_line = command
        run, checkpoint = Path(margs.out), Path(margs.out) / "checkpoint.pt"
        train, targs = motion.main, margs
    else:
        from .training import centring, segmentation

        args.command_line = command
        run = Path(args.run_dir or Path("runs") / args.network)
        checkpoint = run / "last.pt"
        train, targs = (centring if args.network == "centring" else segmentation).main, args
    try:
        train(targs)
    except KeyboardInterrupt:  # a run's checkpoints are kept (they are what --resume goes on from)
        kept = (f"the last checkpoint is kept in {run}: resume with --resume" if checkpoint.is_file()
                else "no checkpoint was written yet")
        raise KeyboardInterrupt(kept) from None
    return 0


# --------------------------------------------------------------------------- main
def _version_text() -> str:
    from . import __version__
    from .errors import InputError
    from .weights import read_manifest

    try:
        models = read_manifest()["models"]
        weights = "; ".join(f"{name} {m.get('date', '?')} sha256 {m['sha256'][:12]}" for name, m in sorted(models.items()))
    except (InputError, KeyError, TypeError) as exc:  # the version line must not fail; say why
        weights = f"shipped weights unreadable ({exc})"
    return f"deepstrain {__version__} (weights: {weights})"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepstrain",
        description="DeepStrain: segmentation, motion, myocardial strain and volumes from cine MRI.",
    )
    parser.add_argument("--version", action="version", version=_version_text(),
                        help="the package version and the shipped weights (training date, sha256)")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_phantom(sub)
    _add_analyze(sub)
    _add_demo(sub)
    _add_batch(sub)
    _add_groups(sub)
    _add_compare(sub)
    _add_robustness(sub)
    _add_train(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .memory import keep_freed_memory

    keep_freed_memory()  # fewer page faults: 1-2 s less per 30-frame study (deepstrain.memory)
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = globals()[f"_cmd_{args.command}"]
    terminated: list[int] = []
    with warnings.catch_warnings(), _sigterm_as_interrupt(terminated):  # both restored on the way out
        warnings.showwarning = _show_warning
        try:
            return int(handler(args) or 0)
        except InputError as exc:
            print(f"deepstrain: error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: nothing half-written is kept (atomic outputs)
            code, what = (143, "terminated") if terminated else (130, "interrupted")
            if args.command == "train":  # training keeps its checkpoints: say where (_cmd_train)
                print(f"deepstrain: {what}; {exc}", file=sys.stderr)
                return code
            again = ("; the studies finished are kept: run the same command again to go on"
                     if args.command == "batch" else "")
            print(f"deepstrain: {what}, no partial output kept{again}", file=sys.stderr)
            return code


@contextlib.contextmanager
def _sigterm_as_interrupt(terminated: list[int]) -> Iterator[None]:
    """Inside the block, SIGTERM (``kill``, ``timeout``, a job scheduler's stop) is handled as Ctrl-C,
    so that the same clean-up runs (temporary output folders removed, checkpoints named); the signal
    is appended to ``terminated``. Only where handlers can be set (the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_sigterm(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt("terminated (SIGTERM)")

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """The tool's own warnings (:class:`deepstrain.io.DeepStrainWarning`) as one ``deepstrain: warning:`` line
    each, without Python's source line; any other warning as Python shows it."""
    from .io import DeepStrainWarning

    if issubclass(category, DeepStrainWarning):
        print(f"deepstrain: warning: {message}", file=file or sys.stderr)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
