"""A NIfTI cohort with a study table: ``deepstrain batch --table``.

    python benchmarks/cohort_table.py [--data DIR] [--out DIR] [--workers 1]

The 4D NIfTI cines of ``DATA/acdc_cine_crop`` (10 ACDC patients) carry no body size, and three of
them (051, 083, 098) lost their voxel spacing (header 1 x 1 x 1 mm). This script writes a study
table: group, height and weight from each patient's ACDC ``Info.cfg``, and the true spacing from
``crops.json`` for the three files that lost it; runs ``deepstrain batch DATA/acdc_cine_crop --out
OUT --table studies.csv`` (ED and ES found by the analysis itself) and prints, per study and as
bias and SD against the manual labels of the ACDC ED/ES frames cropped as the cines were (volumes
from the ``_gt`` files with nibabel, divided by Mosteller's BSA computed here): LV EDVi, ESVi, LV
mass index (1.05 g/ml) and RV EDVi, plus how many studies got every indexed column. Also written to
``OUT/cohort_table.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("DEEPSTRAIN_DATA", REPO.parent / "shared" / "data"))
KEYS = (("lv_edvi_ml_per_m2", "LV EDVi ml/m2"), ("lv_esvi_ml_per_m2", "LV ESVi ml/m2"),
        ("lv_mass_index_g_per_m2", "LV mass index g/m2"), ("rv_edvi_ml_per_m2", "RV EDVi ml/m2"))


def info(folder: Path) -> dict[str, str]:
    out = {}
    for line in (folder / "Info.cfg").read_text().splitlines():
        key, sep, value = line.partition(":")
        if sep:
            out[key.strip()] = value.strip()
    return out


def manual_indexed(folder: Path, cfg: dict[str, str], crop: dict) -> dict[str, float]:
    """Indexed volumes of the manual labels (ACDC values: 1 RV, 2 myocardium, 3 LV cavity) inside the
    cine's crop, computed independently of the package."""
    bsa = math.sqrt(float(cfg["Height"]) * float(cfg["Weight"]) / 3600.0)
    (x0, y0, z0), (nx, ny, nz) = crop["crop_offset_in_original_frame_xyz"], crop["shape_4d"][:3]

    def volumes(frame: int) -> dict[int, float]:
        img = nib.load(str(folder / f"{folder.name}_frame{frame:02d}_gt.nii.gz"))
        lab = np.asarray(img.dataobj)[x0:x0 + nx, y0:y0 + ny, z0:z0 + nz]
        voxel_ml = float(np.prod(img.header.get_zooms()[:3])) / 1000.0
        return {v: float((lab == v).sum()) * voxel_ml for v in (1, 2, 3)}

    ed, es = volumes(int(cfg["ED"])), volumes(int(cfg["ES"]))
    return {"lv_edvi_ml_per_m2": ed[3] / bsa, "lv_esvi_ml_per_m2": es[3] / bsa,
            "lv_mass_index_g_per_m2": 1.05 * ed[2] / bsa, "rv_edvi_ml_per_m2": ed[1] / bsa, "bsa_m2": bsa}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--out", type=Path, help="output folder (default: a new temporary folder)")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args()
    cines = args.data / "acdc_cine_crop"
    acdc = args.data / "acdc" / "training"
    out = args.out or Path(tempfile.mkdtemp(prefix="cohort_table_"))
    out.mkdir(parents=True, exist_ok=True)
    patients = sorted(p.name for p in cines.iterdir() if p.is_dir())
    cfgs = {p: info(acdc / p) for p in patients}
    crops = json.loads((cines / "crops.json").read_text())
    table = out / "studies.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "group", "height_cm", "weight_kg", "slice_mm", "row_mm", "col_mm"])
        for p in patients:
            c = crops[p]
            lost = all(z == 1.0 for z in c["header_zooms"][:3])  # NIfTI (x, y, z) = (column, row, slice)
            sx, sy, sz = c["true_spacing_mm"]
            w.writerow([f"{p}__{p}_4d", cfgs[p]["Group"], cfgs[p]["Height"], cfgs[p]["Weight"],
                        *((sz, sy, sx) if lost else ("", "", ""))])
    batch_out = out / "batch"
    cmd = [sys.executable, "-m", "deepstrain.cli", "batch", str(cines), "--out", str(batch_out), "--table",
           str(table), "--workers", str(args.workers), "--no-figures", "--quiet"]
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    rc = subprocess.run(cmd).returncode
    wall = time.perf_counter() - t0
    from deepstrain.batch import SUMMARY_NAME, read_summary

    rows = {r["id"]: r for r in read_summary(batch_out / SUMMARY_NAME)}
    print(f"batch exit code {rc}, {len(rows)} studies in {wall:.1f} s")
    diffs: dict[str, list[float]] = {k: [] for k, _ in KEYS}
    per_study = {}
    print(f"{'study':<26}{'group':<6}{'BSA':>6}" + "".join(f"{label:>22}" for _, label in KEYS))
    for p in patients:
        r = rows.get(f"{p}__{p}_4d", {})
        ref = manual_indexed(acdc / p, cfgs[p], crops[p])
        got = {k: (float(r[k]) if r.get(k) else None) for k, _ in KEYS}
        per_study[p] = {"network": got, "manual": ref, "group": r.get("group"), "bsa_m2": r.get("bsa_m2")}
        cells = []
        for k, _ in KEYS:
            if got[k] is None:
                cells.append(f"{'-':>22}")
            else:
                diffs[k].append(got[k] - ref[k])
                cells.append(f"{got[k]:>11.1f} ({ref[k]:>6.1f}) ")
        print(f"{p:<26}{r.get('group', ''):<6}{r.get('bsa_m2', ''):>6}" + "".join(cells))
    filled = sum(all(v is not None for v in s["network"].values()) for s in per_study.values())
    print(f"studies with every indexed column: {filled} / {len(patients)} (network value, manual in brackets)")
    summary = {}
    for k, label in KEYS:
        d = np.asarray(diffs[k])
        if d.size:
            summary[k] = {"n": int(d.size), "bias": float(d.mean()), "sd": float(d.std(ddof=1)) if d.size > 1 else None}
            print(f"{label:<22} bias {d.mean():+6.2f}  SD {d.std(ddof=1) if d.size > 1 else float('nan'):5.2f}  (n={d.size})")
    (out / "cohort_table.json").write_text(json.dumps(
        {"command": cmd, "exit_code": rc, "wall_s": wall, "filled": filled, "summary": summary,
         "studies": per_study}, indent=1) + "\n")
    print(f"written to {out / 'cohort_table.json'}")
    return 0 if rc == 0 and filled == len(patients) else 1


if __name__ == "__main__":
    raise SystemExit(main())
