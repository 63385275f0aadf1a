"""Image statistics that say how much a cine looks like a real bSSFP short-axis cine.

Measured the same way on real ACDC cines (``shared/data/acdc_cine_crop`` with the ED ground truth
of ``shared/data/acdc``) and on :mod:`deepstrain.phantom` phantoms, and printed side by side::

    python benchmarks/realism.py [--data DIR] [--patients N] [--seeds N]

Every intensity statistic is normalised by the median LV blood (label 3) intensity at ED, so
the arbitrary scanner scale drops out. The statistics (all dimensionless):

* ``myo_to_blood``: median myocardium / median LV blood (ED).
* ``rv_to_lv_blood``: median RV blood / median LV blood (ED).
* ``bg_median``, ``bg_p10``, ``bg_p90``: percentiles of the background (label 0) within 15 mm of
  the heart (labels > 0), in-plane, in labelled slices, over LV blood.
* ``blood_cv``, ``myo_cv``: std / median inside the LV cavity / myocardium eroded by one pixel.
* ``noise``: standard deviation of the residual of a 3x3 in-plane mean filter inside the eroded LV
  cavity, over the blood median (noise plus fine texture).
* ``decorr_consecutive``: mean over consecutive frame pairs of ``1 - Pearson r`` within the heart
  region of interest (labels at ED dilated by 15 mm, labelled slices).
* ``decorr_ed_es``: ``1 - Pearson r`` between the ED and the ES frame in the same region.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

STATISTICS = (
    "myo_to_blood",
    "rv_to_lv_blood",
    "bg_median",
    "bg_p10",
    "bg_p90",
    "blood_cv",
    "myo_cv",
    "noise",
    "decorr_consecutive",
    "decorr_ed_es",
)

_STRUCT2D = ndimage.generate_binary_structure(3, 1)
_STRUCT2D[0] = False
_STRUCT2D[2] = False  # in-plane 4-neighbourhood only


def _inplane_dilate(mask: np.ndarray, radius_mm: float, pixel_mm: float) -> np.ndarray:
    """Dilate a (Z, Y, X) mask in-plane by a disc of ``radius_mm``."""
    r = int(round(radius_mm / pixel_mm))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disc = (yy**2 + xx**2) <= r * r
    return ndimage.binary_dilation(mask, structure=disc[None])


def _erode(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(mask, structure=_STRUCT2D)


def _decorrelation(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - np.corrcoef(a.ravel(), b.ravel())[0, 1])


def cine_statistics(cine: np.ndarray, labels_ed: np.ndarray, ed: int, es: int, pixel_mm: float) -> dict[str, float]:
    """Realism statistics of one cine ``(T, Z, Y, X)`` with its ED labels ``(Z, Y, X)`` (ACDC values).

    ``pixel_mm`` is the in-plane pixel size (mm). Returns ``{name: value}`` for :data:`STATISTICS`.
    """
    cine = np.asarray(cine, dtype=np.float64)
    labels_ed = np.asarray(labels_ed)
    img = cine[ed]
    lv, myo, rv = labels_ed == 3, labels_ed == 2, labels_ed == 1
    blood = float(np.median(img[lv]))
    heart = labels_ed > 0
    slices = np.flatnonzero(heart.any(axis=(1, 2)))
    in_slices = np.zeros_like(heart)
    in_slices[slices] = True
    ring = _inplane_dilate(heart, 15.0, pixel_mm) & ~heart & in_slices
    bg = img[ring] / blood
    lv_in, myo_in = _erode(lv), _erode(myo)
    smooth = ndimage.uniform_filter(img, size=(1, 3, 3), mode="nearest")
    roi = _inplane_dilate(heart, 15.0, pixel_mm) & in_slices
    frames = cine[:, roi]
    consecutive = [_decorrelation(frames[t], frames[t + 1]) for t in range(cine.shape[0] - 1)]
    return {
        "myo_to_blood": float(np.median(img[myo]) / blood),
        "rv_to_lv_blood": float(np.median(img[rv]) / blood),
        "bg_median": float(np.median(bg)),
        "bg_p10": float(np.percentile(bg, 10)),
        "bg_p90": float(np.percentile(bg, 90)),
        "blood_cv": float(np.std(img[lv_in]) / blood),
        "myo_cv": float(np.std(img[myo_in]) / np.median(img[myo_in])),
        "noise": float(np.std((img - smooth)[lv_in]) / blood),
        "decorr_consecutive": float(np.mean(consecutive)),
        "decorr_ed_es": _decorrelation(frames[ed], frames[es]),
    }


ACDC_CINE_PATIENTS = (
    "patient001", "patient003", "patient021", "patient030", "patient042",
    "patient051", "patient061", "patient066", "patient083", "patient098",
)  # fmt: skip


def acdc_cine_statistics(data_dir: Path, patient: str) -> dict[str, float]:
    """Statistics of one cropped ACDC cine (``acdc_cine_crop``) with its cropped ED ground truth."""
    import nibabel as nib

    crop_dir = Path(data_dir) / "acdc_cine_crop"
    info = json.loads((crop_dir / "crops.json").read_text())[patient]
    cine = np.asarray(nib.load(str(crop_dir / patient / f"{patient}_4d.nii.gz")).dataobj, dtype=np.float32)
    cine = np.transpose(cine, (3, 2, 1, 0))  # (x, y, z, t) -> (t, z, y, x)
    ed, es = int(info["ED"]) - 1, int(info["ES"]) - 1
    gt_file = Path(data_dir) / "acdc" / "training" / patient / f"{patient}_frame{info['ED']:02d}_gt.nii.gz"
    gt = np.asarray(nib.load(str(gt_file)).dataobj)
    x0, y0, z0 = info["crop_offset_in_original_frame_xyz"]
    nx, ny, nz, _ = info["shape_4d"]
    gt = gt[x0 : x0 + nx, y0 : y0 + ny, z0 : z0 + nz]
    labels = np.transpose(gt, (2, 1, 0)).astype(np.uint8)
    return cine_statistics(cine, labels, ed, es, float(info["true_spacing_mm"][0]))


def phantom_statistics(seed: int, **params: object) -> dict[str, float]:
    """Statistics of one phantom generated with ``PhantomParams(seed=seed, **params)``."""
    from deepstrain.phantom import PhantomParams, generate_phantom

    ph = generate_phantom(PhantomParams(seed=seed, **params))  # type: ignore[arg-type]
    ref = ph.reference["frames"]
    return cine_statistics(ph.cine.data, ph.labels[0], int(ref["ed"]), int(ref["es"]), float(ph.cine.geometry.spacing[1]))


def summarise(rows: list[dict[str, float]]) -> dict[str, tuple[float, float, float]]:
    """``{name: (mean, min, max)}`` over a list of statistic dicts."""
    return {k: (float(np.mean([r[k] for r in rows])), float(min(r[k] for r in rows)), float(max(r[k] for r in rows))) for k in STATISTICS}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    parser.add_argument("--data", type=Path, default=default, help="shared data folder")
    parser.add_argument("--patients", type=int, default=len(ACDC_CINE_PATIENTS))
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args(argv)
    real = summarise([acdc_cine_statistics(args.data, p) for p in ACDC_CINE_PATIENTS[: args.patients]])
    phantom = summarise([phantom_statistics(s) for s in range(args.seeds)])
    print(f"{'statistic':<20} {'real mean':>10} {'real min':>9} {'real max':>9} {'phantom':>9}  in range")
    for k in STATISTICS:
        m, lo, hi = real[k]
        pm = phantom[k][0]
        print(f"{k:<20} {m:10.3f} {lo:9.3f} {hi:9.3f} {pm:9.3f}  {'yes' if lo <= pm <= hi else 'NO'}")
    print(f"(real: {args.patients} ACDC cines from acdc_cine_crop; phantom: mean of seeds 0..{args.seeds - 1}, default PhantomParams)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
