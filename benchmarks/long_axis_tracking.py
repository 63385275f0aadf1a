"""How well the project's trackers follow a long-axis (4-chamber) cine: groundwork, not a product feature.

Longitudinal strain from a short-axis stack is not trustworthy on real hearts (README). Long-axis
cines show the base descending directly, but ``deepstrain`` does not analyse them yet. This script
measures what the trackers the project has would give there, against exact motion and against an
independent segmentation:

1. **Long-axis phantoms** (:func:`deepstrain.phantom.generate_long_axis_phantom`; the motion
   benchmark's held-out parameters, seeds 9000-9004, never trained on): the motion network (made
   for short-axis crops; run on the one long-axis slice, 128 x 128 at 1.25 mm around the LV),
   SimpleITK demons from ED to each frame, and no motion. Figures: the in-plane end-point error
   (mm) over the ED myocardium at ES, and the endocardial global longitudinal strain at ES (%):
   the length change of the ED endocardial curve (septal base, apex, lateral base; the open base
   left out) carried by each in-plane field, against the same curve carried by the exact in-plane
   field. The exact 3D length change of that material curve (through-plane twist included) is
   printed for comparison.
2. **UK Biobank demo subject** (``ukbb_demo/1/la_4ch.nii.gz`` and its automatic segmentation of
   every frame, ``seg4_la_4ch.nii.gz``: LV cavity 1, myocardium 2): the myocardium Dice between the
   ED segmentation and each frame's segmentation pulled back to ED along each tracker's field
   (mean and minimum over the 50 frames).

Usage: python benchmarks/long_axis_tracking.py [--data ../shared/data] [--seeds 9000 ...] [--threads 2]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (9000, 9001, 9002, 9003, 9004)
CROP = 128


def endocardial_curve(labels2d: np.ndarray) -> np.ndarray:
    """Ordered (row, col) points of the LV cavity's border where it meets the myocardium (the open
    base, where the cavity meets anything else, cut out): septal base -> apex -> lateral base or back."""
    import contourpy

    cav = (labels2d == 3).astype(np.float64)
    lines = contourpy.contour_generator(z=cav, name="serial").lines(0.5)
    ring = max(lines, key=len)[:-1]  # closed: the last point repeats the first; (x=col, y=row)
    near_myo = ndimage.distance_transform_edt(labels2d != 2) <= 1.5
    keep = ndimage.map_coordinates(near_myo.astype(np.float32), [ring[:, 1], ring[:, 0]], order=0) > 0
    if keep.all() or not keep.any():
        raise ValueError("no open base found on the cavity border")
    start = int(np.argmax(~keep))  # roll so that the removed run (the base) sits at the ends
    order = np.roll(np.arange(len(ring)), -start)
    ring, keep = ring[order], keep[order]
    idx = np.nonzero(keep)[0]
    return ring[idx[0] : idx[-1] + 1][:, ::-1]  # (row, col)


def curve_length_mm(points_rc: np.ndarray, u_rc_px: np.ndarray, spacing_mm: float) -> float:
    """Length (mm) of the curve ``points_rc`` moved by the in-plane field ``u_rc_px`` (2, Y, X) in pixels."""
    moved = points_rc + np.stack([ndimage.map_coordinates(u_rc_px[k], points_rc.T, order=1, mode="nearest")
                                  for k in range(2)], axis=1)
    return float(np.linalg.norm(np.diff(moved, axis=0), axis=1).sum() * spacing_mm)


def in_plane_px(disp_ras: np.ndarray, geometry) -> np.ndarray:
    """(T, 3, 1, Y, X) RAS mm -> (T, 2, Y, X) row/column pixels (the through-plane part dropped)."""
    d = np.asarray(geometry.direction, dtype=np.float64)
    sp = np.asarray(geometry.spacing, dtype=np.float64)
    return np.stack([np.einsum("i,tiyx->tyx", d[:, k], disp_ras[:, :, 0]) / sp[k] for k in (1, 2)], axis=1)


def network_field(cine, labels_ed: np.ndarray, model) -> np.ndarray:
    """The motion network's field (T, 3, 1, Y, X), RAS mm, on a one-slice cine, cropped around the LV."""
    from deepstrain.networks.motion import estimate_motion
    from deepstrain.preprocess import crop_image, crop_transform, displacement_to_input, normalize_intensity

    rows, cols = np.nonzero(np.isin(labels_ed, (2, 3)))
    t = crop_transform(cine.shape3d, cine.geometry.spacing, (rows.mean(), cols.mean()), CROP)
    crops = crop_image(normalize_intensity(cine.data), t)
    sp = np.array([cine.geometry.spacing[0], t.target_spacing, t.target_spacing])
    u_mm = estimate_motion(crops[cine.ed], crops, sp, model=model)
    return displacement_to_input(u_mm / sp.reshape(1, 3, 1, 1, 1).astype(np.float32), t, cine.geometry)


def demons_field(cine) -> np.ndarray:
    """Demons from ED to every frame (T, 3, 1, Y, X), RAS mm (the slice repeated 4 times: ITK's smoothing needs 4)."""
    from deepstrain.preprocess import normalize_intensity
    from deepstrain.registration import register_pair

    img = normalize_intensity(cine.data)[:, 0]
    sp = np.asarray(cine.geometry.spacing)
    u = np.zeros((cine.n_frames, 3, 1) + img.shape[1:], np.float32)
    for f in range(cine.n_frames):
        if f != cine.ed:
            u[f, :, 0] = register_pair(np.stack([img[cine.ed]] * 4), np.stack([img[f]] * 4), sp)[:, 1]
    u[:, 0] = 0.0  # no through-plane motion from one slice
    return np.einsum("ij,tjzyx->tizyx", np.asarray(cine.geometry.direction), u).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("DEEPSTRAIN_DATA", ROOT.parent / "shared" / "data")))
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from deepstrain.networks.motion import load_model
    from deepstrain.phantom import generate_long_axis_phantom
    from deepstrain.training.motion import training_phantom_params

    torch.set_num_threads(args.threads)
    model = load_model()
    trackers = ("network", "demons", "none")
    print("1. long-axis phantoms (held-out parameters), at ES:")
    rows = {k: [] for k in trackers}
    for seed in args.seeds:
        p = training_phantom_params(seed)
        p.n_frames, p.pv_samples = 12, 5
        ph = generate_long_axis_phantom(p, matrix_rows=128, matrix_cols=128)
        cine, es, g = ph.cine, ph.cine.es, ph.cine.geometry
        lab_ed = ph.labels[0, 0]
        curve = endocardial_curve(lab_ed)
        sp = float(g.spacing[1])
        exact = in_plane_px(ph.displacement, g)
        l0 = curve_length_mm(curve, np.zeros_like(exact[0]), sp)
        gls_exact = 100.0 * (curve_length_mm(curve, exact[es], sp) / l0 - 1.0)
        # the 3D length change of the same material curve (through-plane twist included)
        pts = np.stack([np.zeros(len(curve)), curve[:, 0], curve[:, 1]], axis=1)
        world = g.origin + pts @ (np.asarray(g.direction) * np.asarray(g.spacing)).T
        moved = ph.motion.forward(world, es)
        gls_3d = 100.0 * (np.linalg.norm(np.diff(moved, axis=0), axis=1).sum() / l0 - 1.0)
        myo = lab_ed == 2
        t0 = time.time()
        fields = {"network": network_field(cine, lab_ed, model)}
        t_net = time.time() - t0
        t0 = time.time()
        fields["demons"] = demons_field(cine)
        t_dem = time.time() - t0
        fields["none"] = np.zeros_like(ph.displacement)
        parts = []
        for k in trackers:
            u = in_plane_px(fields[k], g)
            epe = float(np.linalg.norm((u[es] - exact[es])[:, myo], axis=0).mean() * sp)
            gls = 100.0 * (curve_length_mm(curve, u[es], sp) / l0 - 1.0)
            rows[k].append((epe, gls - gls_exact))
            parts.append(f"{k} EPE {epe:.2f} mm, GLS {gls:+.1f} %")
        print(f"   seed {seed}: endocardial curve {l0:.0f} mm; exact GLS in plane {gls_exact:+.1f} %, in 3D "
              f"{gls_3d:+.1f} %; " + "; ".join(parts) + f" (network {t_net:.1f} s, demons {t_dem:.1f} s)")
    for k in trackers:
        a = np.array(rows[k])
        print(f"   {k:8s} mean EPE {a[:, 0].mean():.2f} mm; GLS error mean {a[:, 1].mean():+.1f}, "
              f"mean |error| {np.abs(a[:, 1]).mean():.1f} points")

    print("\n2. UK Biobank demo subject, 4-chamber cine, against its automatic segmentation of every frame:")
    la = args.data / "ukbb_demo" / "1" / "la_4ch.nii.gz"
    seg_file = args.data / "ukbb_demo" / "1" / "seg4_la_4ch.nii.gz"
    if not la.is_file() or not seg_file.is_file():
        print(f"   {la.parent}: not found, skipped")
        return 0
    from deepstrain import io
    from deepstrain.quality import motion_overlap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cine = io.load_cine(la)
    cine.ed = 0
    import nibabel as nib

    seg = np.asarray(nib.load(str(seg_file)).dataobj).astype(np.uint8)[:, :, 0, :]
    seg = np.transpose(seg, (2, 1, 0))  # (T, Y, X) as the cine's (T, 1, Y, X)
    seg_acdc = np.select([seg == 1, seg == 2], [3, 2], 0).astype(np.uint8)  # ACDC values: cavity 3, myocardium 2
    if seg_acdc.shape != cine.data[:, 0].shape:
        raise SystemExit(f"{seg_file}: shape {seg_acdc.shape} does not match the cine's {cine.data[:, 0].shape}")
    fields = {"network": network_field(cine, seg_acdc[0], model), "demons": demons_field(cine),
              "none": np.zeros((cine.n_frames, 3, 1) + seg_acdc.shape[1:], np.float32)}
    for k in trackers:  # the check motion_mismatch's overlap, frame by frame
        d = [motion_overlap(seg_acdc[:, None], fields[k], cine.geometry, 0, f)[0] for f in range(cine.n_frames)]
        print(f"   {k:8s} myocardium Dice, frames pulled back to ED: mean {np.mean(d):.3f}, min {np.min(d):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
