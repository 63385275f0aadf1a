"""Segmentation accuracy of the full inference path on the 20 ACDC validation patients.

``--split training`` scores the 80 training patients instead: not a test, but how closely the
network fits the data it was trained on (if it fits them no better than the validation patients,
accuracy is limited by the network's capacity or training, not by over-fitting).

For each validation patient the ACDC folder is loaded with :func:`deepstrain.io.load_cine` and
:func:`deepstrain.inference.predict` (centring + crop + segmentation + back to the input grid,
no motion) labels the ED and ES frames. Against the manual labels it prints:

* Dice per structure (RV 1, myocardium 2, LV cavity 3) at ED and ES (3D, per patient, then mean);
* Hausdorff distance in mm (3D, voxel spacing respected): HD95 = the larger of the two directed
  95th percentiles of boundary-to-boundary distances, and the maximum;
* the in-plane distance (mm) between the crop centre and the manual LV centroid (labels 2+3, ED);
* bias (mean of predicted - manual) and SD of the differences of LV EDV, ESV (ml), EF (%),
  LV mass (g, myocardium at ED x 1.05 g/ml) and RV EDV (ml);
* the same for the volumes indexed to the body surface area (Mosteller, from ``Info.cfg``'s
  height and weight, through :func:`deepstrain.volumetrics.volumetrics`), and how often the
  volumetric thresholds that define ACDC's groups (Bernard et al. 2018: DCM: LV EDVi > 100 ml/m^2
  and LV EF < 40 %; HCM: LV mass index > 110 g/m^2 (the wall-thickness part is not checked here);
  RV: RV EDVi > 110 ml/m^2 or RV EF < 40 %; EF < 40 %, part of MINF and DCM) give the same
  answer from the network's labels as from the manual ones.

Usage: python benchmarks/segmentation_accuracy.py [--data ../shared/data] [--patients N] [--split training]
       [--coarsen-mm MM] [--tta {ed-es,all,off}] [--scales MM ...] [--record]
``--tta`` chooses the frames segmented with test-time flips, as ``deepstrain analyze --tta`` (default
ed-es, as the command's default; an ACDC folder has only the ED and ES frames, so ed-es and all are
the same here); ``--record`` stores the figures in the weights manifest (entry ``segmentation``, key
``benchmark`` for the default, else ``benchmark_tta_<mode>``).
"""
from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

from deepstrain.networks import TTA_MODES
from deepstrain.networks.precision import PRECISIONS
from deepstrain.volumetrics import body_surface_area, volumetrics

ROOT = Path(__file__).resolve().parents[1]
STRUCTURES = {"rv": 1, "myo": 2, "lv": 3}
FLIPS_SAID = {"ed-es": "on the ED and ES frames", "all": "on every frame", "off": "off"}
TARGETS = {("lv", "ED"): 0.96, ("lv", "ES"): 0.93, ("myo", "ED"): 0.90, ("myo", "ES"): 0.91,
           ("rv", "ED"): 0.93, ("rv", "ES"): 0.87}


INDEXED_SHOWN = ("lv_edvi_ml_per_m2", "lv_esvi_ml_per_m2", "lv_mass_index_g_per_m2", "rv_edvi_ml_per_m2",
                 "rv_esvi_ml_per_m2")
CRITERIA = {
    "DCM: LV EDVi > 100 and LV EF < 40": lambda v: v["lv_edvi_ml_per_m2"] > 100 and v["lv_ef_percent"] < 40,
    "HCM: LV mass index > 110": lambda v: v["lv_mass_index_g_per_m2"] > 110,
    "RV: RV EDVi > 110 or RV EF < 40": lambda v: (v["rv_edvi_ml_per_m2"] > 110
                                                  or (v["rv_ef_percent"] is not None and v["rv_ef_percent"] < 40)),
    "LV EF < 40": lambda v: v["lv_ef_percent"] < 40,
}


def bias_table(rows: list[dict], keys: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """Print and return the bias (mean of predicted - manual) and SD of the differences of ``keys``."""
    width = max(len(k) for k in keys) + 2
    print(f"{'measure':{width}s} {'manual mean':>11s} {'bias':>7s} {'SD':>7s}")
    out = {}
    for k in keys:
        diff = np.array([r[f"{k}_pred"] - r[f"{k}_manual"] for r in rows])
        man = np.mean([r[f"{k}_manual"] for r in rows])
        out[k] = {"bias": float(np.mean(diff)), "sd": float(np.std(diff, ddof=1)) if len(diff) > 1 else 0.0}
        print(f"{k:{width}s} {man:11.1f} {out[k]['bias']:7.2f} {out[k]['sd']:7.2f}")
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return float(2 * (a & b).sum() / s) if s else float("nan")


def _boundary(m: np.ndarray) -> np.ndarray:
    return m & ~ndimage.binary_erosion(m, structure=ndimage.generate_binary_structure(3, 1), border_value=0)


def hausdorff_mm(a: np.ndarray, b: np.ndarray, spacing: np.ndarray) -> tuple[float, float]:
    """(HD95, HD max) in mm between the boundaries of masks ``a`` and ``b`` (3D, anisotropic spacing)."""
    if not a.any() or not b.any():
        return float("nan"), float("nan")
    ba, bb = _boundary(a), _boundary(b)
    da = ndimage.distance_transform_edt(~bb, sampling=spacing)[ba]
    db = ndimage.distance_transform_edt(~ba, sampling=spacing)[bb]
    return float(max(np.percentile(da, 95), np.percentile(db, 95))), float(max(da.max(), db.max()))


def volume_ml(m: np.ndarray, spacing: np.ndarray) -> float:
    return float(m.sum() * np.prod(spacing) / 1000.0)


def clinical(ed: np.ndarray, es: np.ndarray, spacing: np.ndarray) -> dict[str, float]:
    edv, esv = volume_ml(ed == 3, spacing), volume_ml(es == 3, spacing)
    return {"lv_edv_ml": edv, "lv_esv_ml": esv, "lv_ef_percent": 100 * (edv - esv) / edv if edv else float("nan"),
            "lv_mass_g": 1.05 * volume_ml(ed == 2, spacing), "rv_edv_ml": volume_ml(ed == 1, spacing)}


def coarsen_inplane(image: np.ndarray, spacing_yx: np.ndarray, pixel_mm: float) -> np.ndarray:
    """A 2D slice as if acquired with ``pixel_mm`` pixels: Gaussian pre-filter (sigma 0.4 x the size
    ratio, in pixels), linear down-sampling to ``pixel_mm``, linear up-sampling back to its grid.
    Axes already coarser than ``pixel_mm`` are left as they are."""
    f = np.maximum(pixel_mm / np.asarray(spacing_yx, float), 1.0)
    small = ndimage.zoom(ndimage.gaussian_filter(image, sigma=0.4 * f), 1.0 / f, order=1)
    back = ndimage.zoom(small, np.array(image.shape) / np.array(small.shape), order=1)
    return back[: image.shape[0], : image.shape[1]]


def predict_scales(cine, scales: list[float], centre: tuple[float, float], weights_dir=None, precision: str = "auto"):
    """Labels (T, Z, Y, X) of every frame with the crop resampled at each pixel size in ``scales``
    (mm; the same 160 mm field of view, sides a multiple of 16, centred on input voxel ``centre``,
    the centring network's) and the class probabilities averaged on the input grid: a
    test-time-scale experiment (not what ``deepstrain analyze`` does)."""
    from deepstrain.inference import _network, _segment, largest_components
    from deepstrain.preprocess import crop_image, crop_transform, normalize_intensity, uncrop

    g = cine.geometry
    norm = normalize_intensity(cine.data)
    net = _network("segmentation", weights_dir)
    total = None
    for mm in scales:
        t = crop_transform(cine.shape3d, g.spacing, centre, int(round(160.0 / mm / 16.0)) * 16, mm)
        probs = _segment(net, crop_image(norm, t), precision=precision)
        up = np.stack([uncrop(probs[:, k], t, 1, 1.0 if k == 0 else 0.0) for k in range(probs.shape[1])], 1)
        total = up if total is None else total + up
    return largest_components(np.argmax(total, axis=1).astype(np.uint8))


def speed_comparison(n_slices: int = 32, repeats: int = 3) -> dict:
    """Seconds per 128 x 128 slice (forward pass, eval, current torch threads): ours (as many members as
    the shipped weights hold, random weights) vs a ~59 M-parameter U-Net."""
    import torch

    from deepstrain.networks.blocks import UNet2d, count_parameters
    from deepstrain.networks.segmentation import build_segmentation_net, input_channels
    from deepstrain.weights import read_manifest

    members = int(read_manifest()["models"]["segmentation"]["config"].get("members", 1))
    out = {}
    for label, net in (("ours", build_segmentation_net(members=members)),
                       ("paper_size", UNet2d(1, 4, base=88, depth=4, max_channels=4096))):
        net.eval()
        x = torch.rand(n_slices, input_channels(net), 128, 128)
        with torch.no_grad():
            net(x[:4])
            best = min(_timed(net, x) for _ in range(repeats))
        out[label] = {"parameters": count_parameters(net), "seconds_per_slice": best / n_slices}
    out["speed_ratio"] = out["paper_size"]["seconds_per_slice"] / out["ours"]["seconds_per_slice"]
    print(f"\nspeed, {n_slices} slices 128x128, {torch.get_num_threads()} thread(s): ours "
          f"{out['ours']['parameters'] / 1e6:.1f} M params {1000 * out['ours']['seconds_per_slice']:.1f} ms/slice; "
          f"paper-size U-Net {out['paper_size']['parameters'] / 1e6:.1f} M params "
          f"{1000 * out['paper_size']['seconds_per_slice']:.1f} ms/slice; ratio {out['speed_ratio']:.1f}x")
    return out


def _timed(net, x) -> float:
    import torch

    t0 = time.perf_counter()
    with torch.no_grad():
        net(x)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DEEPSTRAIN_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--patients", type=int, default=0, help="only the first N patients")
    ap.add_argument("--split", choices=("validation", "training"), default="validation",
                    help="which ACDC patients: the 20 validation ones (the benchmark) or the 80 the networks "
                         "were trained on (how well the network fits its own training data)")
    ap.add_argument("--weights", type=Path, default=None, help="weights folder (default: the package's)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--speed", action="store_true",
                    help="also time the segmentation network against a paper-size (CarSON, ~57 M parameters) U-Net")
    ap.add_argument("--tta", choices=TTA_MODES, default="ed-es",
                    help="frames segmented with test-time flips (deepstrain analyze --tta; default ed-es)")
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="network arithmetic (deepstrain analyze --precision)")
    ap.add_argument("--record", action="store_true", help="store the figures in the weights manifest")
    ap.add_argument("--scales", type=float, nargs="+", default=None, metavar="MM",
                    help="experiment: segment with the crop at these pixel sizes (mm) and average the "
                         "probabilities (e.g. --scales 1.1 1.25 1.4); not what deepstrain analyze does")
    ap.add_argument("--coarsen-mm", type=float, default=0.0, metavar="MM",
                    help="degrade the ED and ES images in plane as if acquired with MM pixels (robustness to "
                         "coarser acquisitions, e.g. UK Biobank's 2.06 mm); the manual labels stay")
    args = ap.parse_args(argv)
    if args.record and (args.split != "validation" or args.coarsen_mm or args.scales):
        ap.error("--record stores the validation figures; it cannot be used with --split training, --coarsen-mm "
                 "or --scales")

    import torch

    from deepstrain import io
    from deepstrain.inference import predict
    from deepstrain.training.data import TRAINING_PATIENTS, VALIDATION_PATIENTS, lv_centre_voxel

    torch.set_num_threads(args.threads)
    split = VALIDATION_PATIENTS if args.split == "validation" else TRAINING_PATIENTS
    patients = split[: args.patients] if args.patients else split
    rows, t_total = [], 0.0
    for p in patients:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cine = io.load_cine(args.data / "acdc" / "training" / p)
        if args.coarsen_mm:
            for idx in (cine.ed, cine.es):
                for z in range(cine.data.shape[1]):
                    cine.data[idx, z] = coarsen_inplane(cine.data[idx, z], cine.geometry.spacing[1:], args.coarsen_mm)
        t0 = time.time()
        pred = predict(cine, with_motion=False, weights_dir=args.weights, tta=args.tta, precision=args.precision)
        if args.scales:
            pred.labels = predict_scales(cine, args.scales, pred.lv_centre_voxel, args.weights, args.precision)
        t_total += time.time() - t0
        sp = cine.geometry.spacing
        row = {"patient": p, "group": cine.group}
        gt_centre = lv_centre_voxel(cine.labels[cine.ed])
        row["centre_error_mm"] = float(np.hypot((pred.lv_centre_voxel[0] - gt_centre[0]) * sp[1],
                                                (pred.lv_centre_voxel[1] - gt_centre[1]) * sp[2]))
        for phase, idx in (("ED", cine.ed), ("ES", cine.es)):
            gt, pr = cine.labels[idx], pred.labels[idx]
            for s, k in STRUCTURES.items():
                row[f"dice_{s}_{phase}"] = dice(pr == k, gt == k)
                row[f"hd95_{s}_{phase}"], row[f"hdmax_{s}_{phase}"] = hausdorff_mm(pr == k, gt == k, sp)
        cp = clinical(pred.labels[cine.ed], pred.labels[cine.es], sp)
        cg = clinical(cine.labels[cine.ed], cine.labels[cine.es], sp)
        for k in cp:
            row[f"{k}_pred"], row[f"{k}_manual"] = cp[k], cg[k]
        bsa = body_surface_area(cine.subject.height_cm, cine.subject.weight_kg)
        for who, ed_es in (("pred", pred.labels[[cine.ed, cine.es]]), ("manual", np.stack([cine.labels[cine.ed], cine.labels[cine.es]]))):
            v = volumetrics(ed_es, cine.geometry, 0, 1, bsa_m2=bsa)
            for k in INDEXED_SHOWN:
                row[f"{k}_{who}"] = v[k]
            for name, rule in CRITERIA.items():
                row[f"crit_{name}_{who}"] = bool(rule(v))
        rows.append(row)
        print(f"{p} ({row['group']}): Dice ED lv {row['dice_lv_ED']:.3f} myo {row['dice_myo_ED']:.3f} "
              f"rv {row['dice_rv_ED']:.3f} | ES lv {row['dice_lv_ES']:.3f} myo {row['dice_myo_ES']:.3f} "
              f"rv {row['dice_rv_ES']:.3f} | EF {cp['lv_ef_percent']:.1f} vs {cg['lv_ef_percent']:.1f}", flush=True)

    def m(key: str) -> float:
        v = np.array([r[key] for r in rows], dtype=float)
        if not np.isfinite(v).all():  # a structure empty in the prediction or the reference: no distance
            print(f"note: {key}: {int((~np.isfinite(v)).sum())} of {len(v)} patients without a value "
                  "(empty structure) left out of the mean")
        return float(np.nanmean(v))

    from deepstrain.networks.precision import resolve

    summary: dict = {"patients": len(rows), "split": args.split, "tta": args.tta, "precision": resolve(args.precision), "dice": {}, "hd95_mm": {}, "hdmax_mm": {}, "clinical": {},
                     "seconds_per_patient": t_total / len(rows)}
    if args.coarsen_mm:
        print(f"\nimages coarsened in plane to {args.coarsen_mm} mm pixels (labels unchanged)")
    if args.scales:
        print(f"\ntest-time scales (experiment): crops at {args.scales} mm, probabilities averaged")
    print(f"\n{len(rows)} {args.split} patients, full inference path (centring + crop + segmentation + "
          f"back to the input grid), test-time flips {FLIPS_SAID[args.tta]}, {summary['precision']}, {t_total / len(rows):.2f} s per patient (2 frames)")
    ce = [r["centre_error_mm"] for r in rows]
    summary["centre_error_mm"] = {"mean": float(np.mean(ce)), "max": float(np.max(ce))}
    print(f"crop centre vs manual LV centroid (ED, in-plane): mean {np.mean(ce):.1f} mm, max {np.max(ce):.1f} mm")
    print(f"{'structure':10s} {'phase':5s} {'Dice':>6s} {'target':>7s} {'HD95 mm':>8s} {'HDmax mm':>9s}")
    for s in STRUCTURES:
        for ph in ("ED", "ES"):
            d, h95, hmx = m(f"dice_{s}_{ph}"), m(f"hd95_{s}_{ph}"), m(f"hdmax_{s}_{ph}")
            summary["dice"][f"{s}_{ph}"], summary["hd95_mm"][f"{s}_{ph}"], summary["hdmax_mm"][f"{s}_{ph}"] = d, h95, hmx
            print(f"{s:10s} {ph:5s} {d:6.3f} {TARGETS[(s, ph)]:7.2f} {h95:8.1f} {hmx:9.1f}")
    print()
    summary["clinical"] = bias_table(rows, ("lv_edv_ml", "lv_esv_ml", "lv_ef_percent", "lv_mass_g", "rv_edv_ml"))
    print("targets: EF bias within 1 point, SD < 3.5")
    print("\nindexed to the body surface area (Mosteller; Info.cfg height and weight)")
    summary["indexed"] = bias_table(rows, INDEXED_SHOWN)
    groups = sorted({str(r["group"]) for r in rows})
    print(f"\nACDC's volumetric group thresholds, patients meeting each (manual / network labels) per group, "
          f"and agreement\n{'criterion':34s} " + " ".join(f"{g:>9s}" for g in groups) + f" {'agree':>7s}")
    summary["criteria_agreement"] = {}
    for name in CRITERIA:
        cells = []
        for g in groups:
            sel = [r for r in rows if r["group"] == g]
            cells.append(f"{sum(r[f'crit_{name}_manual'] for r in sel)}/{sum(r[f'crit_{name}_pred'] for r in sel)}")
        agree = sum(r[f"crit_{name}_manual"] == r[f"crit_{name}_pred"] for r in rows)
        summary["criteria_agreement"][name] = agree / len(rows)
        print(f"{name:34s} " + " ".join(f"{c:>9s}" for c in cells) + f" {agree:>3d}/{len(rows)}")
    if args.speed:
        summary["speed"] = speed_comparison()
    if args.record:
        from deepstrain.weights import update_manifest

        summary["command"] = "python benchmarks/segmentation_accuracy.py " + " ".join(argv if argv is not None else sys.argv[1:])
        summary["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        update_manifest("segmentation", {"benchmark" if args.tta == "ed-es" else f"benchmark_tta_{args.tta}": summary}, args.weights,
                        merge=True)
        print("recorded in the weights manifest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
