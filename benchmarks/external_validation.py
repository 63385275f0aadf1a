"""External validation: the full ``deepstrain analyze`` on data from outside ACDC (other scanners, formats).

The networks were trained on ACDC only (Siemens, Dijon). This script runs ``deepstrain analyze``
(in this process: :func:`deepstrain.analyze.analyze_path`) on the two non-ACDC studies in
``../shared/data`` and compares its ``segmentation.nii.gz`` with their references:

* **Sunnybrook SCD0000101** (GE 1.5 T, a DICOM cine folder, 20 phases, oblique, heart failure):
  manual LV endocardial contours at phases 7 (ES) and 18 (ED) and epicardial contours at ED, on 9
  of the 12 slices. Each contour point, given as (column, row) of the pixel array of one DICOM
  file (pixel centres at whole numbers), is mapped to world coordinates with that file's
  ImagePositionPatient / ImageOrientationPatient / PixelSpacing and then into the output's voxel
  grid with the NIfTI affine; the point's slice must fall on a voxel slice (else the script stops:
  the output does not line up with the input). The polygon is filled on that slice (voxel centres
  inside). Printed: Dice of LV cavity (ED, ES) and myocardium (ED) over the contoured slices, and
  LV volumes (ml) on those slices, ours against the contours; the report's EDV / ESV / EF (every
  slice) for reference. This checks the DICOM reading and the orientation handling end to end.
* **UK Biobank demo subject** (Siemens 1.5 T, oblique NIfTI, 2.06 mm pixels): the subject folder
  as it is (``deepstrain analyze ukbb_demo/1``: ``sa_ED`` and ``sa_ES``, a two-frame study with
  ED = frame 0 and ES = frame 1, see :mod:`deepstrain.io`). The reference ``seg_sa_ED`` / ``seg_sa_ES`` is **automatic** (UK Biobank's own
  network, labels LV 1, myocardium 2, RV 3, mapped to ACDC's order here), not manual: agreement,
  not accuracy. Printed: Dice and HD95 per structure at ED and ES, LV EDV, ESV, EF, mass and RV EDV,
  and the LV (cavity + myocardium, ml) on every slice: the stack reaches the aortic root and the
  atria above the base, where the reference has no LV, so LV labelled on slices where the
  reference has none is the "above the base" error (part of the weights' selection rule).

Usage: python benchmarks/external_validation.py [--data ../shared/data] [--threads 2] [--weights DIR]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.path import Path as Polygon

sys.path.insert(0, str(Path(__file__).resolve().parent))
import segmentation_accuracy as sa  # noqa: E402

from deepstrain.io import UKBB_TO_ACDC  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SUNNYBROOK_PHASES = 20
"""Sunnybrook's ``N.dcm`` is slice ``(N-1) // 20``, phase ``(N-1) % 20`` (see the data README)."""
"""UK Biobank labels (0 background, 1 LV cavity, 2 myocardium, 3 RV) -> ACDC order (1 RV, 2 myo, 3 LV)."""


def read_contour(path: Path) -> np.ndarray:
    """Points ``(n, 2)`` as (column, row) pixel coordinates of one Sunnybrook contour file."""
    pts = np.loadtxt(path, ndmin=2)
    if pts.shape[1] != 2 or len(pts) < 3:
        raise SystemExit(f"{path}: expected at least 3 lines of 'x y', got an array of shape {pts.shape}")
    return pts


def contour_to_voxels(points_cr: np.ndarray, dicom_file: Path, affine_ras: np.ndarray) -> tuple[np.ndarray, int]:
    """Map (column, row) points of ``dicom_file``'s pixel array into voxel indices of a NIfTI grid.

    Returns the in-slice voxel coordinates ``(n, 2)`` (first two array axes) and the slice index.
    """
    import pydicom

    ds = pydicom.dcmread(dicom_file, stop_before_pixels=True)
    ipp = np.asarray(ds.ImagePositionPatient, float)
    iop = np.asarray(ds.ImageOrientationPatient, float)
    dr, dc = (float(v) for v in ds.PixelSpacing)  # row spacing, column spacing (mm)
    lps = ipp + np.outer(points_cr[:, 0] * dc, iop[:3]) + np.outer(points_cr[:, 1] * dr, iop[3:])
    ras = lps * np.array([-1.0, -1.0, 1.0])
    ijk = (np.linalg.inv(affine_ras) @ np.c_[ras, np.ones(len(ras))].T)[:3].T
    k = float(np.median(ijk[:, 2]))
    if np.abs(ijk[:, 2] - round(k)).max() > 0.05:
        raise SystemExit(f"{dicom_file}: its contour does not lie on a slice of the output grid "
                         f"(slice coordinate {ijk[:, 2].min():.2f}-{ijk[:, 2].max():.2f}): orientation mismatch")
    return ijk[:, :2], int(round(k))


def fill(polygon_ij: np.ndarray, shape_ij: tuple[int, int]) -> np.ndarray:
    """Boolean mask of the voxel centres inside a closed polygon given in voxel coordinates."""
    ii, jj = np.meshgrid(np.arange(shape_ij[0]), np.arange(shape_ij[1]), indexing="ij")
    inside = Polygon(polygon_ij).contains_points(np.c_[ii.ravel(), jj.ravel()])
    return inside.reshape(shape_ij)


def sunnybrook(data: Path, out: Path, weights: Path | None = None) -> dict:
    from deepstrain.analyze import analyze_path

    folder = data / "sunnybrook" / "SCD0000101"
    contours = data / "sunnybrook" / "SC-HF-I-1"
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Sunnybrook's UIDs are not strictly valid DICOM
        report = analyze_path(folder, out, weights_dir=weights)
    wall = time.perf_counter() - t0
    img = nib.load(out / "segmentation.nii.gz")
    seg = np.asarray(img.dataobj)  # (x, y, z, t)
    voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    manual: dict[tuple[str, int], dict[int, np.ndarray]] = {}
    for kind, sub in (("endo", "i-contours"), ("epi", "o-contours")):
        for f in sorted((contours / sub).glob("IM-0001-*-*contour-manual.txt")):
            n = int(f.name.split("-")[2])
            phase = (n - 1) % SUNNYBROOK_PHASES
            ij, k = contour_to_voxels(read_contour(f), folder / f"{n}.dcm", img.affine)
            manual.setdefault((kind, phase), {})[k] = fill(ij, seg.shape[:2])
    ed, es = report["frames"]["ed"], report["frames"]["es"]
    res = {"wall_s": wall, "ed": ed, "es": es, "report": report["volumetrics"]}
    for name, phase in (("ED", 18), ("ES", 7)):
        endo = manual[("endo", phase)]
        ks = sorted(endo)
        truth = np.stack([endo[k] for k in ks], -1)
        pred = seg[:, :, ks, phase] == 3
        res[f"lv_{name}"] = {"dice": sa.dice(pred, truth), "slices": len(ks),
                             "ours_ml": float(pred.sum() * voxel_ml), "manual_ml": float(truth.sum() * voxel_ml)}
    epi = manual[("epi", 18)]
    ks = sorted(set(epi) & set(manual[("endo", 18)]))
    truth = np.stack([epi[k] & ~manual[("endo", 18)][k] for k in ks], -1)
    pred = seg[:, :, ks, 18] == 2
    res["myo_ED"] = {"dice": sa.dice(pred, truth), "slices": len(ks),
                     "ours_ml": float(pred.sum() * voxel_ml), "manual_ml": float(truth.sum() * voxel_ml)}
    return res


def ukbb(data: Path, out: Path, weights: Path | None = None) -> dict:
    from deepstrain.analyze import analyze_path

    src = data / "ukbb_demo" / "1"  # a UK Biobank subject folder: sa_ED.nii.gz + sa_ES.nii.gz (deepstrain.io)
    ed_img = nib.load(src / "sa_ED.nii.gz")
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # two frames without timing: strain rates need none here
        analyze_path(src, out, weights_dir=weights)
    wall = time.perf_counter() - t0
    seg_img = nib.load(out / "segmentation.nii.gz")
    if not np.allclose(seg_img.affine, ed_img.affine, atol=1e-4):
        raise SystemExit(f"{out / 'segmentation.nii.gz'}: not on the input's grid")
    pred = np.asarray(seg_img.dataobj)
    spacing = np.asarray(ed_img.header.get_zooms()[:3], float)
    res: dict = {"wall_s": wall}
    refs = {}
    for name, t in (("ED", 0), ("ES", 1)):
        ref = UKBB_TO_ACDC[np.asarray(nib.load(src / f"seg_sa_{name}.nii.gz").dataobj).astype(np.uint8)]
        refs[name] = ref
        for s, k in sa.STRUCTURES.items():
            res[f"dice_{s}_{name}"] = sa.dice(pred[..., t] == k, ref == k)
            res[f"hd95_{s}_{name}"] = sa.hausdorff_mm(pred[..., t] == k, ref == k, spacing)[0]
    res["ours"] = sa.clinical(pred[..., 0], pred[..., 1], spacing)
    res["reference"] = sa.clinical(refs["ED"], refs["ES"], spacing)
    # Per-slice LV (cavity + myocardium) volume: the stack reaches the aortic root and the atria above
    # the base, where the reference has no LV; what we label there is the "above the base" error.
    voxel_ml = float(np.prod(spacing)) / 1000.0
    for name, t in (("ED", 0), ("ES", 1)):
        ours = [float(np.isin(pred[..., k, t], (2, 3)).sum() * voxel_ml) for k in range(pred.shape[2])]
        ref = [float(np.isin(refs[name][..., k], (2, 3)).sum() * voxel_ml) for k in range(pred.shape[2])]
        res[f"lv_slices_{name}"] = {"ours_ml": ours, "reference_ml": ref}
        res[f"lv_outside_reference_{name}_ml"] = sum(o for o, r in zip(ours, ref) if r == 0)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DEEPSTRAIN_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", type=Path, default=None, help="weights folder (default: the package's)")
    args = ap.parse_args(argv)
    os.environ["DEEPSTRAIN_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        sb = sunnybrook(args.data, tmp / "sunnybrook", args.weights)
        uk = ukbb(args.data, tmp / "ukbb", args.weights)

    print(f"Sunnybrook SCD0000101 (GE 1.5 T DICOM cine, 20 phases, manual contours on 9 of 12 slices); "
          f"deepstrain analyze {sb['wall_s']:.1f} s; ED/ES found: phases {sb['ed']} / {sb['es']} (contoured: 18 / 7)")
    print("structure  phase  slices   Dice   ours ml  manual ml")
    for key, (s, ph) in (("lv_ED", ("lv", "ED")), ("lv_ES", ("lv", "ES")), ("myo_ED", ("myo", "ED"))):
        r = sb[key]
        print(f"{s:9s}  {ph:5s}  {r['slices']:6d}  {r['dice']:.3f}  {r['ours_ml']:8.1f}  {r['manual_ml']:9.1f}")
    ef_ours = 100 * (1 - sb["lv_ES"]["ours_ml"] / sb["lv_ED"]["ours_ml"])
    ef_manual = 100 * (1 - sb["lv_ES"]["manual_ml"] / sb["lv_ED"]["manual_ml"])
    print(f"EF on the contoured slices: ours {ef_ours:.1f} %, manual {ef_manual:.1f} %")
    v = sb["report"]
    print(f"report (every slice): EDV {v['lv_edv_ml']:.1f} ml, ESV {v['lv_esv_ml']:.1f} ml, "
          f"EF {v['lv_ef_percent']:.1f} %, LV mass {v['lv_mass_g']:.1f} g")
    print()
    print(f"UK Biobank demo subject (ED + ES, 2.06 mm pixels, 10 mm slices); reference = UK Biobank's AUTOMATIC "
          f"segmentation; deepstrain analyze {uk['wall_s']:.1f} s")
    print("structure  phase   Dice  HD95 mm")
    for s in sa.STRUCTURES:
        for ph in ("ED", "ES"):
            print(f"{s:9s}  {ph:5s}  {uk[f'dice_{s}_{ph}']:.3f}  {uk[f'hd95_{s}_{ph}']:7.1f}")
    print("measure        ours  reference")
    for k in ("lv_edv_ml", "lv_esv_ml", "lv_ef_percent", "lv_mass_g", "rv_edv_ml"):
        print(f"{k:13s} {uk['ours'][k]:6.1f}  {uk['reference'][k]:9.1f}")
    print("LV cavity + myocardium per slice (ml, slice 0 first; the reference has none above the base):")
    for ph in ("ED", "ES"):
        sl = uk[f"lv_slices_{ph}"]
        print(f"  {ph} ours      " + " ".join(f"{v:5.1f}" for v in sl["ours_ml"]))
        print(f"  {ph} reference " + " ".join(f"{v:5.1f}" for v in sl["reference_ml"]))
    print(f"LV labelled on slices where the reference has none: ED {uk['lv_outside_reference_ED_ml']:.1f} ml, "
          f"ES {uk['lv_outside_reference_ES_ml']:.1f} ml")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
