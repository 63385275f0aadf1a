"""Motion accuracy of the shipped motion network and of the SimpleITK demons baseline.

Prints two tables:

1. Synthetic phantoms NOT used in training (seeds ``EVAL_SEEDS``; training uses 1000-1039):
   end-point error (mm; all frames except ED; mean over the ED myocardium and over all voxels),
   and the error of global and segmental (AHA, mean |error| over the 17 segments) end-systolic
   strain, in percentage points, against the phantom's exact reference. Strain goes through
   :func:`deepstrain.pipeline.compute` with the EXACT labels, so only motion error counts.
   Rows: the network, the baseline, "exact" (the exact displacement through the same engine:
   the floor set by the engine itself) and "none" (zero motion).
2. The ACDC validation patients (``training.data.VALIDATION_PATIENTS``): Dice (RV, myocardium,
   LV cavity) of the manual ES labels pulled back onto ED with the estimated Lagrangian
   displacement (``labels_ES(X + u(X))``, nearest neighbour) against the manual ED labels, and
   with no motion; baseline time per study.

The network runs on the 128 x 128, 1.25 mm crop centred on the manual (phantom: exact) ED LV
centre, its displacement mapped back with :func:`deepstrain.preprocess.displacement_to_input`.

    python benchmarks/motion_accuracy.py [--phantoms 5] [--acdc 20] [--no-baseline] [--refine [--corrected]]

``--refine`` adds the network's field refined with the segmentation network (what ``deepstrain
analyze`` returns by default); ``--corrected`` adds, on the phantoms, the field refined with the
EXACT ED and ES labels in place of the network's for those two frames: what a user who corrects
the ED and ES contours by hand gets from Recompute in the Slicer module (the other frames keep the
network's segmentation).

Phantoms are cached under ``runs/motion/eval_phantoms`` (git-ignored); generation is slow.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from deepstrain import pipeline
from deepstrain import preprocess as pp
from deepstrain.cine import Cine, Geometry
from deepstrain.networks.motion import OUTPUT_SMOOTHING_MM, estimate_motion, load_model
from deepstrain.networks.precision import PRECISIONS
from deepstrain.quality import pull_back_labels

REPO = Path(__file__).resolve().parents[1]
EVAL_SEEDS = (9000, 9001, 9002, 9003, 9004)
COMPONENTS = ("radial", "circumferential", "longitudinal")


def eval_params(seed: int):
    """Evaluation phantom parameters: varied like the training set, full partial-volume model."""
    from deepstrain.training.motion import training_phantom_params

    p = training_phantom_params(seed)
    p.n_frames, p.pv_samples = 12, 5
    return p


def eval_phantom(seed: int, cache: Path) -> dict:
    from deepstrain.training.motion import cache_phantom

    f = cache / f"phantom{seed}.npz"
    if not f.exists():
        cache.mkdir(parents=True, exist_ok=True)
        t0 = time.time()
        cache_phantom(eval_params(seed), f)
        print(f"  generated phantom {seed} in {time.time() - t0:.0f} s", flush=True)
    z = np.load(f)
    return {k: z[k] for k in z.files}


def labelled_lv_crop(images: np.ndarray, labels_ed: np.ndarray, geo: Geometry
                     ) -> tuple[pp.CropTransform, np.ndarray, np.ndarray]:
    """The crop transform centred on the labelled LV, the normalised crops of all frames, and the
    crop spacing (slice, row, col) in mm."""
    _, r, c = np.nonzero((labels_ed == 2) | (labels_ed == 3))
    t = pp.crop_transform(images.shape[-3:], geo.spacing, (r.mean(), c.mean()), pp.CROP_SIZE)
    crop = pp.normalize_intensity(pp.crop_image(images.astype(np.float32), t))
    return t, crop, np.array([geo.spacing[0], pp.TARGET_SPACING_MM, pp.TARGET_SPACING_MM])


def network_displacements(images: np.ndarray, labels_ed: np.ndarray, geo: Geometry, ed: int, model,
                          precision: str = "auto", smooth_mm: float = OUTPUT_SMOOTHING_MM,
                          refine: bool = False, refine_smoothness: float | None = None,
                          corrected: tuple[np.ndarray, list[int]] | None = None
                          ) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Network displacement (T,3,Z,Y,X) RAS mm on the input grid, crop centred on the labelled LV
    (``"network"``), and with ``refine`` the same field corrected with the segmentation network's
    probabilities of every frame on that crop (``"refined"``, :mod:`deepstrain.refinement`, as
    ``deepstrain analyze`` does by default); and the seconds each took (refined: network included).
    ``corrected`` = (labels (T,Z,Y,X), frames): also the field refined with those frames' labels in
    place of the network's probabilities (``"corrected"``: contours corrected by hand, as Recompute
    in the Slicer module does)."""
    def on_input(u_vox: np.ndarray) -> np.ndarray:
        d = pp.displacement_to_input(u_vox, t, geo)
        d[ed] = 0.0
        return d

    t0 = time.time()
    t, crop, sp = labelled_lv_crop(images, labels_ed, geo)
    u_mm = estimate_motion(crop[ed], crop, sp, model=model, precision=precision, smooth_mm=smooth_mm)
    u_vox = u_mm / sp.reshape(1, 3, 1, 1, 1)
    out = {"network": on_input(u_vox)}
    times = {"network": time.time() - t0}
    if refine:
        from deepstrain import inference
        from deepstrain.refinement import refine_displacement

        probs = inference._segment(inference._network("segmentation", None), crop, precision=precision)
        kw = {} if refine_smoothness is None else {"smoothness": refine_smoothness}
        out["refined"] = on_input(refine_displacement(u_vox, probs, ed, **kw))
        times["refined"] = time.time() - t0
        if corrected is not None:
            labels, frames = corrected
            probs = probs.copy()
            probs[frames] = pp.crop_one_hot(labels[frames], t, probs.shape[1])
            out["corrected"] = on_input(refine_displacement(u_vox, probs, ed, **kw))
    return out, times


def baseline_displacement(images: np.ndarray, geo: Geometry, ed: int, cache: Path | None = None
                          ) -> tuple[np.ndarray, float]:
    """Demons displacement and its run time (s); reused from ``cache`` (``.npz``) when present."""
    from deepstrain.registration import register_cine

    if cache is not None and cache.exists():
        z = np.load(cache)
        return z["disp"], float(z["time_s"])
    t0 = time.time()
    disp = register_cine(images, geo, ed)
    dt = time.time() - t0
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, disp=disp, time_s=dt)
    return disp, dt


def dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    x, y = a == k, b == k
    s = x.sum() + y.sum()
    return float(2 * (x & y).sum() / s) if s else float("nan")


def phantom_rows(seeds, cache: Path, model, with_baseline: bool, precision: str = "auto",
                 smooth_mm: float = OUTPUT_SMOOTHING_MM, refine: bool = False,
                 refine_smoothness: float | None = None, corrected: bool = False) -> dict[str, list[dict]]:
    rows: dict[str, list[dict]] = {}
    for seed in seeds:
        z = eval_phantom(seed, cache)
        geo = Geometry(z["spacing"], z["origin"], z["direction"])
        ed, es = int(z["ed"]), int(z["es"])
        images, labels, exact = z["images"], z["labels"], z["displacement"].astype(np.float32)
        ref = json.loads(str(z["reference"]))
        cine = Cine(images, geo, z["times_ms"], name=f"phantom{seed}", ed=ed, es=es)
        cands, times = network_displacements(images, labels[ed], geo, ed, model, precision, smooth_mm, refine,
                                             refine_smoothness, (labels, [ed, es]) if corrected else None)
        if with_baseline:
            cands["demons"], times["demons"] = baseline_displacement(images, geo, ed, _bcache(cache, f"phantom{seed}"))
        cands["exact"] = exact
        cands["none"] = np.zeros_like(exact)
        myo = labels[ed] == 2
        frames = [f for f in range(images.shape[0]) if f != ed]
        for name, d in cands.items():
            err = np.linalg.norm(d[frames] - exact[frames], axis=1)  # (T-1, Z, Y, X)
            an = pipeline.compute(cine, labels, d, ed=ed, es=es)
            rep = an.report
            row = {
                "seed": seed,
                "epe_myo": float(err[:, myo].mean()),
                "epe_all": float(err.mean()),
                "time_s": times.get(name, float("nan")),
            }
            for c in COMPONENTS:
                row[f"ess_value_{c}"] = rep["ess"][c]
                row[f"ess_signed_{c}"] = rep["ess"][c] - ref["ess"][c]
                row[f"ess_{c}"] = abs(row[f"ess_signed_{c}"])
                segs = [abs(rep["aha"][f"{c}_percent"][s] - ref["aha"][f"{c}_percent"][s])
                        for s in ref["aha"][f"{c}_percent"]
                        if rep["aha"][f"{c}_percent"][s] is not None and ref["aha"][f"{c}_percent"][s] is not None]
                row[f"seg_{c}"] = float(np.mean(segs)) if segs else float("nan")
            rows.setdefault(name, []).append(row)
        print(f"  phantom {seed}: ESS (rad, circ, long) exact " + "/".join(f"{ref['ess'][c]:.1f}" for c in COMPONENTS)
              + "; " + "; ".join(f"{n} " + "/".join(f"{rows[n][-1][f'ess_value_{c}']:.1f}" for c in COMPONENTS)
                                 + f", EPE myo {rows[n][-1]['epe_myo']:.2f} mm" for n in cands if n != "exact"),
              flush=True)
    return rows


def _bcache(cache: Path | None, name: str) -> Path | None:
    return None if cache is None else cache / "demons" / f"{name}.npz"


def acdc_rows(root: Path, patients, model, with_baseline: bool, cache: Path | None = None,
              precision: str = "auto", refine: bool = False) -> dict[str, list[dict]]:
    from deepstrain.training.data import acdc_frames, load_acdc_volume

    rows: dict[str, list[dict]] = {}
    for p in patients:
        d = root / "acdc" / "training" / p
        ims, labs, geo = [], [], None
        for _, fr in acdc_frames(d):
            im, geo = load_acdc_volume(d / f"{p}_frame{fr:02d}.nii.gz")
            lb, _ = load_acdc_volume(d / f"{p}_frame{fr:02d}_gt.nii.gz")
            ims.append(im.astype(np.float32))
            labs.append(lb.astype(np.uint8))
        images = np.stack(ims)
        cands, times = network_displacements(images, labs[0], geo, 0, model, precision, refine=refine)
        if with_baseline:
            cands["demons"], times["demons"] = baseline_displacement(images, geo, 0, _bcache(cache, p))
        cands["none"] = np.zeros_like(cands["network"])
        for name, disp in cands.items():
            pulled = pull_back_labels(labs[1], disp[1], geo)
            pushed = push_forward_labels(labs[0], disp[1], geo)
            rows.setdefault(name, []).append({
                "patient": p, "rv": dice(pulled, labs[0], 1), "myo": dice(pulled, labs[0], 2),
                "lv": dice(pulled, labs[0], 3), "time_s": times.get(name, float("nan")),
                "fwd_rv": dice(pushed, labs[1], 1), "fwd_myo": dice(pushed, labs[1], 2),
                "fwd_lv": dice(pushed, labs[1], 3),
            })
    return rows


def push_forward_labels(labels_ed: np.ndarray, displacement: np.ndarray, geometry, iterations: int = 30) -> np.ndarray:
    """The ED labels carried to the frame of ``displacement`` (Lagrangian from ED, ``(3, Z, Y, X)`` RAS mm):
    at each voxel x of that frame, the ED label at X with X + u(X) = x, X found by the fixed-point
    iteration X <- x - u(X) (u linearly interpolated; nearest-neighbour labels; beyond the grid: the
    nearest edge voxel)."""
    from scipy import ndimage

    to_index = np.linalg.inv(geometry.index_to_world[:3, :3])
    u_idx = np.einsum("ij,jzyx->izyx", to_index, np.asarray(displacement, dtype=np.float64))  # voxels
    x = np.indices(labels_ed.shape, dtype=np.float64)
    pos = x.copy()
    for _ in range(iterations):
        u_at = np.stack([ndimage.map_coordinates(c, pos, order=1, mode="nearest") for c in u_idx])
        pos = x - u_at
    return ndimage.map_coordinates(np.asarray(labels_ed), pos, order=0, mode="nearest")


def _mean(rows, key):
    v = np.array([r[key] for r in rows], dtype=float)
    return float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phantoms", type=int, default=5, help="number of evaluation phantoms (<= 5)")
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="phantom seeds instead of the evaluation ones, e.g. training phantoms 1000-1005 with "
                         "--cache runs/motion/phantoms to choose --smoothing without touching the evaluation set")
    ap.add_argument("--smoothing", type=float, default=OUTPUT_SMOOTHING_MM,
                    help=f"in-plane Gaussian on the network output, mm (default {OUTPUT_SMOOTHING_MM}, as shipped)")
    ap.add_argument("--acdc", type=int, default=20, help="number of ACDC validation patients")
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--weights", type=Path, default=None, help="motion weights (default: shipped)")
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "motion" / "eval_phantoms",
                    help="evaluation phantoms and the baseline's displacements (reused; time as first measured)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--precision", default="auto", choices=PRECISIONS,
                    help="network arithmetic (deepstrain analyze --precision)")
    ap.add_argument("--refine", action="store_true",
                    help="also score the network's field refined with the segmentation (deepstrain analyze --refine-motion)")
    ap.add_argument("--refine-smoothness", type=float, default=None,
                    help="smoothness weight of the refinement (default: deepstrain.refinement.SMOOTHNESS); for choosing it")
    ap.add_argument("--corrected", action="store_true",
                    help="with --refine, phantoms also: refined with the exact ED and ES labels in place of the "
                         "network's (contours corrected by hand, then Recompute in Slicer)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(args.threads)
    except ImportError:
        args.no_baseline = True
    model = load_model(args.weights)
    base = not args.no_baseline
    from deepstrain.networks.precision import resolve

    print(f"motion network: {args.weights or 'shipped weights'}, {resolve(args.precision)}")
    seeds = tuple(args.seeds) if args.seeds else EVAL_SEEDS[: args.phantoms]
    if seeds:
        held_out = "not in training" if not args.seeds else "GIVEN SEEDS: check whether they were trained on"
        print(f"Phantoms (seeds {seeds}, {held_out}), errors vs exact reference; network output smoothed "
              f"{args.smoothing:g} mm:")
        rows = phantom_rows(seeds, args.cache, model, base, args.precision, args.smoothing, args.refine,
                            args.refine_smoothness, args.corrected and args.refine)
        print(f"{'method':9s} {'EPE myo mm':>10s} {'EPE all mm':>10s} | {'|dESS| rad':>10s} {'circ':>6s} {'long':>6s}"
              f" | {'seg |d| rad':>11s} {'circ':>6s} {'long':>6s} | {'s/study':>7s}")
        for name, rs in rows.items():
            print(f"{name:9s} {_mean(rs, 'epe_myo'):10.2f} {_mean(rs, 'epe_all'):10.2f} | "
                  f"{_mean(rs, 'ess_radial'):10.2f} {_mean(rs, 'ess_circumferential'):6.2f} "
                  f"{_mean(rs, 'ess_longitudinal'):6.2f} | {_mean(rs, 'seg_radial'):11.2f} "
                  f"{_mean(rs, 'seg_circumferential'):6.2f} {_mean(rs, 'seg_longitudinal'):6.2f} | "
                  f"{_mean(rs, 'time_s'):7.1f}")
        print("mean SIGNED ESS error (bias), rad/circ/long: " + "; ".join(
            f"{name} " + "/".join(f"{_mean(rs, f'ess_signed_{c}'):+.2f}" for c in COMPONENTS)
            for name, rs in rows.items()))
    if args.acdc > 0:
        from deepstrain.training.data import VALIDATION_PATIENTS

        pats = list(VALIDATION_PATIENTS)[: args.acdc]
        print(f"\nACDC validation ({len(pats)} patients): Dice of ES labels pulled back to ED vs ED labels")
        rows = acdc_rows(args.data, pats, model, base, args.cache, args.precision, args.refine)
        print(f"{'method':9s} {'RV':>6s} {'myo':>6s} {'LV':>6s} | {'s/study':>7s}")
        for name, rs in rows.items():
            print(f"{name:9s} {_mean(rs, 'rv'):6.3f} {_mean(rs, 'myo'):6.3f} {_mean(rs, 'lv'):6.3f} | "
                  f"{_mean(rs, 'time_s'):7.1f}")
        print(f"\nACDC validation ({len(pats)} patients): Dice of ED labels warped to ES (the field inverted "
              "by fixed-point iteration) vs ES labels")
        print(f"{'method':9s} {'RV':>6s} {'myo':>6s} {'LV':>6s}")
        for name, rs in rows.items():
            print(f"{name:9s} {_mean(rs, 'fwd_rv'):6.3f} {_mean(rs, 'fwd_myo'):6.3f} {_mean(rs, 'fwd_lv'):6.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
