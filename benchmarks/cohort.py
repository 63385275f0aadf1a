"""Cohort benchmark: the ACDC training set through ``deepstrain batch``, locally and on Dask.

    python benchmarks/cohort.py [--data DIR] [--out DIR] [--limit N] [--workers 2] [--robust 3] [--no-dask]

1. ``deepstrain batch DATA --out OUT/local --workers W`` (a fresh folder, so nothing is skipped):
   wall time and studies per minute.
2. The same through a local Dask cluster (W worker processes, 1 thread each, loopback, no
   dashboard) with ``--scheduler``: wall time, studies per minute, and the largest difference of
   any summary value between the two runs (the analysis is deterministic: expect 0).
3. Group means (SD, n) of global radial and circumferential ESS from the local run; ACDC's
   healthy NOR group is expected strongest and DCM weakest (printed, not asserted).
4. :func:`deepstrain.robustness.robustness_study` on the first ``--robust`` analysed patients
   (one-voxel shift, Rician noise SNR 20, intensity x1.2): ESS and segment differences.

Everything printed is also written to ``OUT/cohort_benchmark.json``. ``--limit N`` runs the
first N patients only (a quick check). Needs the trained networks (``deepstrain analyze`` must work).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("DEEPSTRAIN_DATA", REPO.parent / "shared" / "data")) / "acdc" / "training"


def run_batch_cli(data: Path, out: Path, extra: list[str]) -> tuple[float, int, list[dict]]:
    from deepstrain.batch import SUMMARY_NAME, read_summary

    cmd = [sys.executable, "-m", "deepstrain.cli", "batch", str(data), "--out", str(out), *extra]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    wall = time.perf_counter() - t0
    rows = read_summary(out / SUMMARY_NAME) if (out / SUMMARY_NAME).is_file() else []
    return wall, rc, rows


def rate(rows: list[dict], wall: float) -> float:
    return 60.0 * sum(r["status"] == "ok" for r in rows) / wall if wall > 0 else math.nan


def max_difference(a: list[dict], b: list[dict]) -> float:
    from deepstrain.batch import SUMMARY_COLUMNS

    bi = {r["id"]: r for r in b}
    worst = 0.0
    for r in a:
        o = bi.get(r["id"])
        if o is None or r["status"] != "ok" or o["status"] != "ok":
            continue
        if r["quality"] != o["quality"]:  # the findings named: text, not a number
            return math.inf
        for k in SUMMARY_COLUMNS[SUMMARY_COLUMNS.index("quality") + 1:]:
            if r[k] and o[k]:
                worst = max(worst, abs(float(r[k]) - float(o[k])))
            elif bool(r[k]) != bool(o[k]):
                return math.inf
    return worst


def group_means(rows: list[dict]) -> dict:
    import numpy as np

    from deepstrain.batch import peak_column

    out: dict = {}
    for g in sorted({r["group"] or "none" for r in rows if r["status"] == "ok"}):
        sel = [r for r in rows if r["status"] == "ok" and (r["group"] or "none") == g]
        entry = {"n": len(sel)}
        for c in ("radial", "circumferential"):
            v = np.asarray([float(r[peak_column("ess", c)]) for r in sel if r[peak_column("ess", c)]])
            entry[c] = {"mean": float(v.mean()) if v.size else None,
                        "sd": float(v.std(ddof=1)) if v.size > 1 else None}
        out[g] = entry
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of ACDC patient folders")
    ap.add_argument("--out", type=Path, help="output folder (must not exist or be empty; default: a temp folder)")
    ap.add_argument("--limit", type=int, help="only the first N patients")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--robust", type=int, default=3, help="patients for the robustness study (0: skip)")
    ap.add_argument("--no-dask", action="store_true")
    args = ap.parse_args()
    if not args.data.is_dir():
        print(f"data folder not found: {args.data}", file=sys.stderr)
        return 2
    out = args.out or Path(tempfile.mkdtemp(prefix="deepstrain-cohort-"))
    if out.exists() and any(out.iterdir()):
        print(f"output folder is not empty: {out}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    extra = ["--workers", str(args.workers)] + (["--limit", str(args.limit)] if args.limit else [])
    result: dict = {"data": str(args.data), "out": str(out), "limit": args.limit, "workers": args.workers,
                    "cpu_count": os.cpu_count()}

    wall, rc, rows = run_batch_cli(args.data, out / "local", extra)
    n_ok = sum(r["status"] == "ok" for r in rows)
    result["local"] = {"wall_s": wall, "exit": rc, "studies": len(rows), "ok": n_ok,
                       "studies_per_min": rate(rows, wall)}
    print(f"local pool ({args.workers} workers): {len(rows)} studies, {n_ok} ok, {wall:.1f} s wall, "
          f"{rate(rows, wall):.2f} studies/min (exit {rc})", flush=True)

    if not args.no_dask:
        from distributed import LocalCluster

        with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                          dashboard_address=None) as cluster:
            dwall, drc, drows = run_batch_cli(args.data, out / "dask", [
                "--scheduler", cluster.scheduler_address] + (["--limit", str(args.limit)] if args.limit else []))
        diff = max_difference(rows, drows)
        result["dask"] = {"wall_s": dwall, "exit": drc, "studies": len(drows),
                          "ok": sum(r["status"] == "ok" for r in drows), "studies_per_min": rate(drows, dwall),
                          "max_abs_difference_vs_local": diff}
        print(f"dask LocalCluster ({args.workers} processes x 1 thread): {len(drows)} studies, "
              f"{result['dask']['ok']} ok, {dwall:.1f} s wall, {rate(drows, dwall):.2f} studies/min (exit {drc}); "
              f"largest difference vs local run {diff:.3g}", flush=True)

    means = group_means(rows)
    result["group_ess"] = means
    print("\nglobal ESS by group (mean ± SD, %):")
    for g, e in means.items():
        r, c = e["radial"], e["circumferential"]
        fmt = lambda d: "n/a" if d["mean"] is None else f"{d['mean']:6.1f} ± {d['sd'] or 0:4.1f}"  # noqa: E731
        print(f"  {g:>5} (n={e['n']:3d}): radial {fmt(r)}   circumferential {fmt(c)}")
    have = {g for g, e in means.items() if e["radial"]["mean"] is not None}
    if {"NOR", "DCM"} <= have:
        strongest = max(have, key=lambda g: means[g]["radial"]["mean"])
        weakest = min(have, key=lambda g: means[g]["radial"]["mean"])
        circ_weakest = max(have, key=lambda g: means[g]["circumferential"]["mean"])
        result["ordering"] = {"radial_strongest": strongest, "radial_weakest": weakest,
                              "circumferential_weakest": circ_weakest}
        print(f"radial ESS strongest: {strongest}, weakest: {weakest}; circumferential weakest: {circ_weakest} "
              f"(expected NOR strongest, DCM weakest)")

    if args.robust > 0:
        from deepstrain.robustness import robustness_study

        ok_ids = [r["id"] for r in rows if r["status"] == "ok"][: args.robust]
        result["robustness"] = {}
        for sid in ok_ids:
            t0 = time.perf_counter()
            try:
                res = robustness_study(args.data / sid, out / "robustness" / sid)
            except Exception as exc:  # report and go on with the next patient
                print(f"robustness {sid}: failed: {exc}")
                result["robustness"][sid] = {"error": str(exc)}
                continue
            result["robustness"][sid] = res["perturbations"]
            print(f"\nrobustness {sid} ({time.perf_counter() - t0:.0f} s), tolerance {res['tolerance']}:")
            for p in res["perturbations"]:
                print(f"  {p['name']:>6}: dESS radial {p['ess_radial_diff_percent']:+6.2f}"
                      f"  circ {p['ess_circumferential_diff_percent']:+6.2f}"
                      f"  segments mean|d| {p['segments_mean_abs_diff_percent']:5.2f} max {p['segments_max_abs_diff_percent']:5.2f}"
                      f"  {'ok' if p['within_tolerance'] else 'OUTSIDE'} {p['error']}")

    (out / "cohort_benchmark.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(f"\nwritten {out / 'cohort_benchmark.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
