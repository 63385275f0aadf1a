"""Centring when the heart is off-centre: the ACDC validation patients with the field of view cut so
that the left ventricle lies near a corner.

For each of the 20 validation patients (the ACDC folder as ``deepstrain analyze`` reads it: ED and ES
frames, full field of view) and each corner of the image, the rows and columns on the heart's far
side are kept and those on its near side removed, so that the heart (the manual labels' bounding box
at ED and ES: RV, myocardium and LV cavity) lies ``--margin-mm`` from the two edges of that corner
(the geometry is kept in world coordinates: a cut, not a shift). :func:`deepstrain.inference.predict` (centring, crop, segmentation,
back to the input grid; no motion) labels ED and ES. Printed per position, with the uncut images as
the reference: the in-plane distance between the crop centre and the manual LV centroid (mm, mean
and largest), the Dice of LV cavity, myocardium and RV at ED and ES against the manual labels cut
the same way (mean and lowest), and LV EF bias / SD against the manual labels.

Usage: python benchmarks/off_centre.py [--data ../shared/data] [--margin-mm 10] [--threads 2] [--patients N]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from segmentation_accuracy import STRUCTURES, clinical, dice  # noqa: E402

CORNERS = {"uncut": None, "top-left": (-1, -1), "top-right": (-1, 1), "bottom-left": (1, -1), "bottom-right": (1, 1)}
"""Where the LV ends up: (row side, column side), -1 = near the first row / column."""


def cut_near_corner(cine, sides: tuple[int, int], margin_mm: float):
    """``cine`` (and its manual labels) with rows and columns removed so that the heart (the labels'
    bounding box over ED and ES) lies ``margin_mm`` from the edges on ``sides``; the world geometry
    of the kept voxels unchanged. Also returns the (row, column) of the first voxel kept."""
    g = cine.geometry
    heart = np.any(np.stack([cine.labels[cine.ed] > 0, cine.labels[cine.es] > 0]), axis=(0, 1))
    keep = []
    for axis, side in zip((1, 2), sides):
        n, m = cine.data.shape[axis + 1], int(round(margin_mm / float(g.spacing[axis])))
        idx = np.flatnonzero(heart.any(axis=1) if axis == 1 else heart.any(axis=0))  # rows or columns with heart
        keep.append(slice(max(int(idx.min()) - m, 0), n) if side < 0 else slice(0, min(int(idx.max()) + m + 1, n)))
    rows, cols = keep
    origin = g.origin + g.direction @ (g.spacing * np.array([0.0, rows.start, cols.start]))
    return dataclasses.replace(
        cine, data=np.ascontiguousarray(cine.data[:, :, rows, cols]),
        geometry=type(g)(g.spacing, origin, g.direction),
        labels={k: np.ascontiguousarray(v[:, rows, cols]) for k, v in cine.labels.items()}), (rows.start, cols.start)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DEEPSTRAIN_DATA", ROOT.parent.parent / "shared" / "data")))
    ap.add_argument("--margin-mm", type=float, default=10.0, help="the heart to the two near edges (mm)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--patients", type=int, default=0, help="only the first N validation patients")
    args = ap.parse_args(argv)
    import torch

    from deepstrain import io
    from deepstrain.inference import predict
    from deepstrain.training.data import VALIDATION_PATIENTS, lv_centre_voxel

    torch.set_num_threads(args.threads)
    patients = VALIDATION_PATIENTS[: args.patients] if args.patients else VALIDATION_PATIENTS
    rows: dict[str, list[dict]] = {k: [] for k in CORNERS}
    for p in patients:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            full = io.load_cine(args.data / "acdc" / "training" / p)
        centre = lv_centre_voxel(full.labels[full.ed])
        for name, sides in CORNERS.items():
            cine, (r0, c0) = (full, (0, 0)) if sides is None else cut_near_corner(full, sides, args.margin_mm)
            pred = predict(cine, with_motion=False)
            sp = cine.geometry.spacing
            gt_r, gt_c = centre[0] - r0, centre[1] - c0
            row = {"shape": cine.data.shape[2:],
                   "centre_error_mm": float(np.hypot((pred.lv_centre_voxel[0] - gt_r) * sp[1],
                                                     (pred.lv_centre_voxel[1] - gt_c) * sp[2]))}
            for phase, idx in (("ED", cine.ed), ("ES", cine.es)):
                for s, k in STRUCTURES.items():
                    row[f"{s}_{phase}"] = dice(pred.labels[idx] == k, cine.labels[idx] == k)
            row["ef_diff"] = (clinical(pred.labels[cine.ed], pred.labels[cine.es], sp)["lv_ef_percent"]
                              - clinical(cine.labels[cine.ed], cine.labels[cine.es], sp)["lv_ef_percent"])
            rows[name].append(row)
        print(f"{p}: centre error (mm) " + ", ".join(f"{n} {rows[n][-1]['centre_error_mm']:.1f}" for n in CORNERS)
              + f"; field of view cut to {rows['top-left'][-1]['shape']} ... from {full.data.shape[2:]}", flush=True)
    print(f"\n{len(patients)} validation patients; the heart {args.margin_mm:g} mm from the two near edges")
    print(f"{'position':13s} {'centre mm':>15s} " + " ".join(f"{s + ' ' + ph:>14s}" for ph in ("ED", "ES")
                                                             for s in STRUCTURES) + f" {'EF bias/SD':>12s}")
    for name, rs in rows.items():
        ce = [r["centre_error_mm"] for r in rs]
        cells = []
        for ph in ("ED", "ES"):
            for s in STRUCTURES:
                v = np.array([r[f"{s}_{ph}"] for r in rs])
                cells.append(f"{np.nanmean(v):.3f} ({np.nanmin(v):.3f})")
        ef = np.array([r["ef_diff"] for r in rs])
        sd = float(np.std(ef, ddof=1)) if ef.size > 1 else 0.0
        print(f"{name:13s} {np.mean(ce):6.1f} (max {np.max(ce):4.1f}) " + " ".join(f"{c:>14s}" for c in cells)
              + f" {np.mean(ef):+5.2f}/{sd:4.2f}")
    print("(Dice: mean (lowest) over the patients)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
