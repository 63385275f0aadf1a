"""ACDC volumetrics of the engine vs plain independent voxel counting, all 100 training patients.

For each patient the folder is loaded with :func:`deepstrain.io.load_cine` (ED/ES from Info.cfg),
the ``_gt`` label maps go through :func:`deepstrain.pipeline.compute` (labels only), and every
volume is compared with ``np.count_nonzero(label == value) * prod(pixdim) / 1000`` read straight
from the ``_gt`` file with nibabel. Prints a per-group summary and the largest absolute
difference (must be < 0.1 ml).

    python benchmarks/acdc_volumetrics.py [--data /work/shared/data]
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np

from deepstrain.io import load_cine
from deepstrain.pipeline import compute


def independent(path: Path) -> dict[str, float]:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj)
    vox = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    return {k: np.count_nonzero(data == v) * vox for k, v in (("lv", 3), ("myo", 2), ("rv", 1))}


def gt_file(folder: Path, frame_number0: int) -> Path:
    return folder / f"{folder.name}_frame{frame_number0 + 1:02d}_gt.nii.gz"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(os.environ.get("DEEPSTRAIN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
    ap.add_argument("--data", type=Path, default=default)
    args = ap.parse_args()
    root = args.data / "acdc" / "training"
    patients = sorted(p for p in root.glob("patient*") if p.is_dir())
    if not patients:
        print(f"no ACDC patients under {root}", file=sys.stderr)
        return 1
    rows = []
    worst = (0.0, "", "")
    for folder in patients:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cine = load_cine(folder)
        if any(i not in cine.labels for i in (cine.ed, cine.es)):
            print(f"{folder.name}: no ED/ES labels, skipped")
            continue
        # labels for ED and ES only: analyse those two frames (a 4D file has more frames)
        keep = [cine.ed, cine.es]
        labels = np.stack([cine.labels[i] for i in keep])
        sub = type(cine)(data=cine.data[keep], geometry=cine.geometry, times_ms=cine.times_ms[keep],
                         name=cine.name, source=cine.source, ed=0, es=1,
                         frame_numbers=np.asarray(cine.frame_numbers)[keep])
        a = compute(sub, labels, None)
        v = a.report["volumetrics"]
        ed_ref = independent(gt_file(folder, int(cine.frame_numbers[cine.ed])))
        es_ref = independent(gt_file(folder, int(cine.frame_numbers[cine.es])))
        pairs = {
            "lv_edv_ml": (v["lv_edv_ml"], ed_ref["lv"]),
            "lv_esv_ml": (v["lv_esv_ml"], es_ref["lv"]),
            "rv_edv_ml": (v["rv_edv_ml"], ed_ref["rv"]),
            "rv_esv_ml": (v["rv_esv_ml"], es_ref["rv"]),
            "lv_mass_g": (v["lv_mass_g"], 1.05 * ed_ref["myo"]),
        }
        for key, (eng, ref) in pairs.items():
            d = abs(eng - ref)
            if d > worst[0]:
                worst = (d, folder.name, key)
        rows.append((folder.name, cine.group, v["lv_edv_ml"], v["lv_esv_ml"], v["lv_ef_percent"], v["lv_mass_g"],
                     v["rv_edv_ml"], v["rv_ef_percent"], max(abs(e - r) for e, r in pairs.values())))
    print(f"{len(rows)} patients")
    print(f"{'group':6s} {'n':>3s} {'LVEDV ml':>10s} {'LVESV ml':>10s} {'LVEF %':>8s} {'mass g':>8s} {'RVEDV ml':>10s} "
          f"{'RVEF %':>8s}   (means)")
    for g in sorted({r[1] for r in rows}):
        sel = np.array([r[2:8] for r in rows if r[1] == g], dtype=float)
        m = sel.mean(axis=0)
        print(f"{g:6s} {len(sel):3d} {m[0]:10.1f} {m[1]:10.1f} {m[2]:8.1f} {m[3]:8.1f} {m[4]:10.1f} {m[5]:8.1f}")
    max_diff = max(r[8] for r in rows)
    print(f"max |engine - independent count| over all volumes and mass: {max_diff:.6f} ml "
          f"({worst[1]} {worst[2]}); requirement < 0.1 ml: {'PASS' if max_diff < 0.1 else 'FAIL'}")
    return 0 if max_diff < 0.1 else 1


if __name__ == "__main__":
    sys.exit(main())
