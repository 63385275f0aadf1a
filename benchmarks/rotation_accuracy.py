"""LV rotation, twist and torsion (:mod:`deepstrain.rotation`) against exact references, and on real cycles.

1. Phantoms NOT used in training (``motion_accuracy.EVAL_SEEDS``, the same held-out phantoms as
   the motion benchmark, 12 frames, full partial-volume model): rotation of the basal and apical
   levels and twist at ES, from
   * ``exact``: the analytic twist step of the phantom (its ``reference.json``, computed apart
     from the engine);
   * ``engine``: :func:`deepstrain.pipeline.compute` on the phantom's exact labels and exact
     displacement (the engine's own error);
   * ``network``: the whole ``deepstrain analyze`` path (networks' centring, segmentation and
     refined motion), as a user gets it;
   * ``demons``: the SimpleITK demons baseline's displacement with the exact labels.
2. The full ACDC cycles in ``acdc_cine_crop`` (real hearts, true spacing given, ED / ES as the
   ACDC Info.cfg says; their apical slices are cropped): twist, basal and apical rotation at ES
   from ``deepstrain analyze``, and how many show the normal pattern (base clockwise, apex
   counter-clockwise viewed from the apex).

Usage: python benchmarks/rotation_accuracy.py [--data ../shared/data] [--phantoms 5] [--threads 2] [--no-baseline]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _at_es(rep: dict, es: int) -> tuple[float | None, float | None, float | None]:
    rot, tw = rep.get("rotation") or {}, rep.get("twist") or {}
    b, a = rot.get("basal_deg"), rot.get("apical_deg")
    return (None if b is None else b[es]), (None if a is None else a[es]), tw.get("es_twist_deg")


def _f(v: float | None) -> str:
    return "  n/a" if v is None else f"{v:+6.2f}"


def phantoms(n: int, with_baseline: bool) -> None:
    from motion_accuracy import EVAL_SEEDS, eval_params

    from deepstrain import pipeline
    from deepstrain.analyze import analyze_cine
    from deepstrain.phantom import generate_phantom

    print(f"1. held-out phantoms {EVAL_SEEDS[:n]} at ES: rotation basal / apical and twist (deg); "
          "positive = counter-clockwise viewed from the apex")
    errs: dict[str, list[float]] = {}
    for seed in EVAL_SEEDS[:n]:
        t0 = time.time()
        ph = generate_phantom(eval_params(seed))
        es = ph.cine.es
        ref = ph.reference
        rows = {"exact": (ref["rotation"]["basal_deg"][es], ref["rotation"]["apical_deg"][es], ref["twist"]["es_twist_deg"])}
        rows["engine"] = _at_es(pipeline.compute(ph.cine, ph.labels, ph.displacement).report, es)
        rows["network"] = _at_es(analyze_cine(ph.cine).report, es)
        if with_baseline:
            from deepstrain.registration import register_cine

            disp = register_cine(ph.cine.data, ph.cine.geometry, 0)
            rows["demons"] = _at_es(pipeline.compute(ph.cine, ph.labels, disp).report, es)
        print(f"   phantom {seed} ({time.time() - t0:.0f} s; phantom twist parameter {ph.params.twist_deg:.1f} deg)")
        for name, (b, a, t) in rows.items():
            print(f"      {name:8s} basal {_f(b)}  apical {_f(a)}  twist {_f(t)}")
            if name != "exact" and t is not None:
                errs.setdefault(name, []).append(t - rows["exact"][2])
    for name, e in errs.items():
        e = np.array(e)
        print(f"   {name:8s} twist error at ES: mean {e.mean():+.2f} deg, mean |error| {np.abs(e).mean():.2f} deg "
              f"over {e.size} phantoms")


def acdc_cycles(data: Path) -> None:
    from deepstrain import io
    from deepstrain.analyze import analyze_cine

    folder = data / "acdc_cine_crop"
    if not (folder / "crops.json").is_file():
        print(f"2. {folder}: not found, skipped")
        return
    crops = json.loads((folder / "crops.json").read_text())
    print("\n2. full ACDC cycles (acdc_cine_crop; apical slices cropped), deepstrain analyze, at ES:")
    normal = n = 0
    for name in sorted(crops):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cine = io.load_cine(sorted((folder / name).glob("*.nii.gz"))[0],
                                spacing=tuple(crops[name]["true_spacing_mm"][::-1]))
        cine.ed, cine.es = int(crops[name]["ED"]) - 1, int(crops[name]["ES"]) - 1
        rep = analyze_cine(cine).report
        b, a, t = _at_es(rep, cine.es)
        torsion = (rep.get("twist") or {}).get("es_torsion_deg_per_cm")
        n += 1
        normal += b is not None and a is not None and b < 0 < a
        print(f"   {name} ({crops[name]['Group']}): basal {_f(b)}  apical {_f(a)}  twist {_f(t)} deg, "
              f"torsion {_f(torsion)} deg/cm")
    print(f"   normal pattern (base clockwise, apex counter-clockwise): {normal} of {n}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DEEPSTRAIN_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--phantoms", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-baseline", action="store_true", help="skip the demons baseline")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    if args.phantoms:
        phantoms(args.phantoms, not args.no_baseline)
    acdc_cycles(args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
