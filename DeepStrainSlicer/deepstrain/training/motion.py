"""Training of the motion network (``deepstrain train motion``).

Data (all on the 1.25 mm heart-centred crop of :mod:`deepstrain.preprocess`, centred on the
ground-truth LV centre with random jitter; intensities as at inference: per-frame
``normalize_intensity`` then :func:`deepstrain.networks.motion.normalise_pair`):

* The 80 ACDC training patients of the fixed split of :mod:`deepstrain.training.data` (all of
  them must be in ``--data``; ``--patients N``: the first N, for tests): pairs ``[ED, ES]`` and ``[ES, ED]`` with both label maps, and ``[ED, ED]``
  (exact target: zero motion).
* The full cardiac cycles of ``acdc_cine_crop`` (training patients only; the true spacing from
  ``crops.json``, since three headers lost it): ``[ED, t]`` for any frame ``t``; labels only at
  ED and ES.
* Synthetic phantoms (:mod:`deepstrain.phantom`, seeds ``PHANTOM_TRAIN_SEEDS``; the evaluation
  seeds of ``benchmarks/motion_accuracy.py`` are disjoint): ``[ED, t]`` with the exact
  displacement.

Loss per pair (``u`` in mm, Lagrangian ED -> t; ``warp(frame_t, u)`` pulls frame ``t`` back to ED):

* ``w_sim``    x MSE(warp(frame_t, u), ED) (intensities ~[0, 1]),
* ``w_dice``   x (1 - mean soft Dice over RV, myocardium, LV of warp(onehot(labels_t), u) vs ED labels),
* ``w_smooth`` x mean ||du/dX||^2 (diffusion regulariser, finite differences divided by the
  physical spacing, so it is dimensionless),
* ``w_epe``    x mean end-point error (mm) against the exact displacement (phantoms, [ED, ED]),
* ``w_grad``   x mean |d(u - u_exact)/dX| over neighbouring voxel pairs in the ED myocardium
  (phantoms): the error of the displacement gradient, which is what strain is computed from.
  Off by default; stage 4 of the shipped weights' training chain used it (see the manifest).

Defaults (the shipped run): w_sim 1 (MSE on [0, 1] intensities; the paper's 0.01 assumed another
intensity scale), w_dice 1, w_smooth 0.1, w_epe 0.02 (0.1 pulled the network to a zero field);
Adam, lr 1e-3 with a cosine decay over ``--steps`` or ``--minutes``, batch 1, 96 x 96 random
in-plane windows, random flips/transposes and gamma. Missing training phantoms are generated
into ``<out>/phantoms`` first (about 5 s each).

Checkpoints (``<out>/checkpoint.pt``) are written every ``--save-every`` steps and resumed
with ``--resume``: the checkpoint keeps the random generators' states and the options that decide
the weights, so a resumed run continues the uninterrupted one exactly (same options required;
``--minutes`` makes the schedule depend on wall time, hence not reproducible). At each validation (``--val-every``) the weights are exported to
``<out>/motion_latest.pt`` and kept as ``<out>/motion_stepNNNNNN.pt``; the final weights go to
``<out>/motion_final.pt`` (and with ``--ship`` into the package). ``--average W1 W2 ...``
writes the parameter mean of exported weights (snapshots of one run, or several runs) to
``<out>/motion_average.pt``. A fresh run refuses an ``--out`` holding a run (and ``--average`` an
existing ``motion_average.pt``) unless ``--overwrite``; bad input is refused before ``--out`` is made.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import preprocess as pp
from ..networks.motion import MotionNet, count_parameters, model_from_blob, normalise_pair, warp
from ..errors import InputError
from ..outputs import write_atomically
from . import (check_counts, check_option_values, check_output_folder, mean_state_dict, option_value, remove_if_empty,
               resume_mismatch, save_atomically, uninterrupted_command)

PHANTOM_TRAIN_SEEDS = range(1000, 2000)
"""Seeds of the training phantoms, in order: ``--phantoms N`` uses the first N (N <= 1000). The
demo (2024), the motion-weights selection (8000-8019) and the motion benchmark (9000-9004) lie
outside this range, so they are never trained on."""
DEFAULT_PHANTOMS = 40
PATCH = 96
"""In-plane side of the random training window taken from the 128-pixel crop."""


@dataclass
class Sample:
    """One study on the crop grid: frames (T,Z,H,W) normalised, labels by frame, exact motion."""

    name: str
    images: np.ndarray
    spacing: np.ndarray  # (slice, row, col) mm of the crop
    labels: dict[int, np.ndarray]
    ed: int
    es: int
    disp_vox: np.ndarray | None = None  # (T,3,Z,H,W) exact, crop voxel units


# --------------------------------------------------------------------------- data
def validation_patients() -> set[str]:
    """ACDC patients held out for validation (the split of :mod:`deepstrain.training.data`)."""
    from . import data

    for name in ("VALIDATION_PATIENTS", "VAL_PATIENTS", "VALIDATION"):
        if hasattr(data, name):
            return {_pid(p) for p in getattr(data, name)}
    if hasattr(data, "split"):
        return {_pid(p) for p in data.split()[1]}
    raise RuntimeError("deepstrain.training.data defines no validation split")


def _pid(p: object) -> str:
    s = str(p)
    return s if s.startswith("patient") else f"patient{int(s):03d}"


def _read_nifti(path: Path, zooms: tuple[float, float, float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(Z,Y,X[,T]) array with (x,y,z)->(z,y,x) and spacing (slice,row,col) mm; a missing or unreadable
    file is an :class:`InputError` naming it."""
    from ..io import _load_nifti

    img, arr = _load_nifti(Path(path))
    z = zooms if zooms is not None else tuple(float(v) for v in img.header.get_zooms()[:3])
    arr = np.moveaxis(arr, [0, 1, 2], [2, 1, 0])  # (Z, Y, X, ...)
    if arr.ndim == 4:
        arr = np.moveaxis(arr, 3, 0)  # (T, Z, Y, X)
    return arr, np.array([z[2], z[1], z[0]], dtype=np.float64)


def _lv_centre(labels: np.ndarray) -> tuple[float, float]:
    idx = np.argwhere((labels == 2) | (labels == 3))
    return float(idx[:, 1].mean()), float(idx[:, 2].mean())


def _to_crop(images: np.ndarray, labels: dict[int, np.ndarray], spacing: np.ndarray, ed: int):
    t = pp.crop_transform(images.shape[-3:], spacing, _lv_centre(labels[ed]), pp.CROP_SIZE)
    crop = pp.normalize_intensity(pp.crop_image(images.astype(np.float32), t))
    lab = {k: pp.crop_labels(v, t) for k, v in labels.items()}
    sp = np.array([spacing[0], pp.TARGET_SPACING_MM, pp.TARGET_SPACING_MM])
    return crop, lab, sp, t


def load_acdc(root: Path, patients: list[str]) -> list[Sample]:
    from .data import acdc_frames

    out = []
    for p in patients:
        folder = root / "acdc" / "training" / p
        (_, ed_f), (_, es_f) = acdc_frames(folder)
        ims, labs, sp = [], [], None
        for f in (ed_f, es_f):
            im, sp = _read_nifti(folder / f"{p}_frame{f:02d}.nii.gz")
            lb, _ = _read_nifti(folder / f"{p}_frame{f:02d}_gt.nii.gz")
            ims.append(im.astype(np.float32))
            labs.append(lb.astype(np.uint8))
        crop, lab, csp, _ = _to_crop(np.stack(ims), {0: labs[0], 1: labs[1]}, sp, 0)
        out.append(Sample(p, crop, csp, lab, 0, 1))
    return out


def read_cine_crops(root: Path) -> dict[str, dict]:
    """``acdc_cine_crop/crops.json`` of the data folder ``root``: per patient the true spacing, the crop
    offset and ED/ES; :class:`InputError` when it is missing, unreadable or lacks one of them."""
    path = Path(root) / "acdc_cine_crop" / "crops.json"
    if not path.is_file():
        raise InputError(path, "missing: the acdc_cine_crop folder's list of crops (true spacing, offsets, ED/ES)")
    try:
        meta = json.loads(path.read_text())
        for p, m in meta.items():
            if len(m["true_spacing_mm"]) != 3 or len(m["crop_offset_in_original_frame_xyz"]) != 3:
                raise ValueError(f"{p}: true_spacing_mm and crop_offset_in_original_frame_xyz need 3 values each")
            int(m["ED"]), int(m["ES"])  # numbers, or ValueError
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(path, f"not a valid list of crops ({type(exc).__name__}: {exc})") from None
    return meta


def load_cine_crops(root: Path, patients: list[str]) -> list[Sample]:
    meta = read_cine_crops(root)
    out = []
    for p in patients:
        m = meta[p]
        sx, sy, sz = m["true_spacing_mm"]
        ims, sp = _read_nifti(root / "acdc_cine_crop" / p / f"{p}_4d.nii.gz", (sx, sy, sz))
        if ims.ndim != 4:
            raise InputError(root / "acdc_cine_crop" / p / f"{p}_4d.nii.gz", f"not a 4D cine (shape {ims.shape})")
        x0, y0, z0 = m["crop_offset_in_original_frame_xyz"]
        nz, ny, nx = ims.shape[1:]
        ed, es = int(m["ED"]) - 1, int(m["ES"]) - 1
        labels = {}
        for fr in (ed, es):
            lb, _ = _read_nifti(root / "acdc" / "training" / p / f"{p}_frame{fr + 1:02d}_gt.nii.gz")
            labels[fr] = lb[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx].astype(np.uint8)
        crop, lab, csp, _ = _to_crop(ims.astype(np.float32), labels, sp, ed)
        out.append(Sample(p, crop, csp, lab, ed, es))
    return out


def training_phantom_params(seed: int):
    """Randomised phantom parameters for training seed ``seed`` (deterministic)."""
    from .. import phantom as ph

    r = np.random.default_rng([7, int(seed)])
    return ph.PhantomParams(
        n_frames=10, pv_samples=3, seed=int(seed),
        es_fraction=float(r.uniform(0.3, 0.4)),
        pixel_spacing_mm=float(r.uniform(1.25, 1.8)),
        slice_spacing_mm=float(r.uniform(6.0, 10.0)),
        lv_edv_ml=float(r.uniform(90, 220)),
        wall_thickness_mm=float(r.uniform(7, 13)),
        ef_percent=float(r.uniform(25, 70)),
        longitudinal_shortening_percent=float(r.uniform(5, 20)),
        twist_deg=float(r.uniform(0, 20)),
        hypokinesis=float(r.uniform(0, 0.8)),
        hypokinetic_center_deg=float(r.uniform(-180, 180)),
        rv_wall_motion_mm=float(r.uniform(2, 8)),
        rv_side=str(r.choice(["left", "right"])),
        rotation_deg=float(r.uniform(-40, 40)),
        noise=float(r.uniform(0.03, 0.07)),
    )


def accepted_phantom(params):
    """Generate a phantom from ``params``; a draw the phantom refuses is retried, deterministically,
    until it is accepted: an EF too high for its hypokinesis with the EF lowered by 10 points; an
    apical wall too thin for the slice spacing (no slice would show the apical cap) with the apical
    wall 1 mm thicker."""
    import dataclasses

    from .. import phantom as ph

    for _ in range(20):
        try:
            return ph.generate_phantom(params)
        except ph.PhantomRefused as exc:
            if exc.parameter == "ef_percent" and params.ef_percent >= 15:
                params = dataclasses.replace(params, ef_percent=params.ef_percent - 10.0)
            elif exc.parameter == "apex_wall_mm":
                params = dataclasses.replace(params, apex_wall_mm=params.apex_wall_mm + 1.0)
            else:
                raise
    raise ValueError(f"phantom seed {params.seed}: no accepted parameters after 20 retries")


def cache_phantom(params, out_file: Path) -> None:
    """Generate a phantom (:func:`accepted_phantom`) and store images, labels, exact displacement
    and geometry (``.npz``)."""
    P = accepted_phantom(params)
    g = P.cine.geometry
    write_atomically(out_file, out_file.with_suffix(".tmp.npz"), lambda tmp: np.savez(
        tmp, images=P.cine.data, labels=P.labels, displacement=P.displacement, spacing=g.spacing,
        origin=g.origin, direction=g.direction, times_ms=P.cine.times_ms, ed=P.cine.ed, es=P.cine.es,
        reference=json.dumps(P.reference)))


def phantom_sample(npz: Path) -> Sample:
    """A cached phantom on the crop grid with its exact displacement in crop voxel units."""
    z = np.load(npz)
    ed, es = int(z["ed"]), int(z["es"])
    spacing, direction = z["spacing"], z["direction"]
    lab_all = z["labels"]
    crop, lab, csp, t = _to_crop(z["images"].astype(np.float32), {ed: lab_all[ed], es: lab_all[es]}, spacing, ed)
    # exact displacement: RAS mm -> array-axis mm (D^T u) -> crop voxel units, resampled onto the crop grid
    arr_mm = np.einsum("ij,tizyx->tjzyx", direction, z["displacement"].astype(np.float64))
    units = np.array([spacing[0], pp.TARGET_SPACING_MM, pp.TARGET_SPACING_MM]).reshape(1, 3, 1, 1, 1)
    rows, cols = pp._crop_grid(t)
    dv = pp._sample_slices(arr_mm.astype(np.float32), rows, cols, order=1, cval=0.0) / units
    return Sample(npz.stem, crop, csp, lab, ed, es, dv.astype(np.float32))


# --------------------------------------------------------------------------- pairs
def _onehot(lab: np.ndarray) -> np.ndarray:
    return np.stack([(lab == k) for k in range(4)]).astype(np.float32)


def make_pair(s: Sample, rng: np.random.Generator, kind: str):
    """(ref, mov, ref_lab, mov_lab, target_vox or None) on a random PATCH window, random flips."""
    T = s.images.shape[0]
    ref_i, mov_i = s.ed, s.es
    target = None
    if kind == "identity":
        ref_i = mov_i = [s.ed, s.es][rng.integers(2)] if s.es in s.labels else s.ed
        target = np.zeros((3,) + s.images.shape[1:], np.float32)
    elif kind == "swap":
        ref_i, mov_i = s.es, s.ed
    elif kind == "cycle":
        mov_i = int(rng.integers(T))
        if s.disp_vox is not None:
            target = s.disp_vox[mov_i]
    ref, mov = normalise_pair(s.images[ref_i], s.images[mov_i][None])
    mov = mov[0]
    rl, ml = s.labels.get(ref_i), s.labels.get(mov_i)
    H, W = ref.shape[1:]
    ph, pw = min(PATCH, H), min(PATCH, W)
    r0 = int(rng.integers(0, H - ph + 1))
    c0 = int(rng.integers(0, W - pw + 1))
    sl = (slice(None), slice(r0, r0 + ph), slice(c0, c0 + pw))
    ref, mov = ref[sl], mov[sl]
    rl = rl[sl] if rl is not None else None
    ml = ml[sl] if ml is not None else None
    if target is not None:
        target = target[(slice(None),) + sl].copy()
    for axis, comp in ((1, 1), (2, 2)):  # random in-plane flips (target component flips sign)
        if rng.random() < 0.5:
            ref, mov = np.flip(ref, axis), np.flip(mov, axis)
            rl = np.flip(rl, axis) if rl is not None else None
            ml = np.flip(ml, axis) if ml is not None else None
            if target is not None:
                target = np.flip(target, axis + 1).copy()
                target[comp] *= -1
    if rng.random() < 0.5:  # random in-plane transpose (row/col components swap)
        ref, mov = ref.transpose(0, 2, 1), mov.transpose(0, 2, 1)
        rl = rl.transpose(0, 2, 1) if rl is not None else None
        ml = ml.transpose(0, 2, 1) if ml is not None else None
        if target is not None:
            target = target[[0, 2, 1]].transpose(0, 1, 3, 2).copy()
    g = float(np.exp(rng.normal(0, 0.15)))  # gamma, same for both frames
    ref = np.clip(ref, 0, None) ** g
    mov = np.clip(mov, 0, None) ** g
    return (np.ascontiguousarray(ref), np.ascontiguousarray(mov),
            None if rl is None else np.ascontiguousarray(rl), None if ml is None else np.ascontiguousarray(ml),
            None if target is None else np.ascontiguousarray(target))


# --------------------------------------------------------------------------- loss
def smoothness(u_mm: torch.Tensor, spacing: torch.Tensor) -> torch.Tensor:
    """Mean squared spatial gradient of ``u`` (mm) per mm: the diffusion regulariser."""
    terms = []
    for ax in range(3):
        n = u_mm.shape[2 + ax]
        if n < 2:
            continue
        d = torch.diff(u_mm, dim=2 + ax) / spacing[ax]
        terms.append((d ** 2).mean())
    return sum(terms) / max(len(terms), 1)


def gradient_error(u_mm: torch.Tensor, t_mm: torch.Tensor, spacing: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |d(u - t)/dX| (dimensionless, i.e. error of the displacement gradient that strain is made of)
    over neighbour pairs that both lie in ``mask`` (N,1,Z,Y,X bool), all three axes; 0 when none do."""
    e = u_mm - t_mm
    total, count = e.new_zeros(()), 0
    for ax in range(3):
        if e.shape[2 + ax] < 2:
            continue
        d = torch.diff(e, dim=2 + ax).abs() / spacing[ax]
        n = mask.shape[2 + ax]
        m = (mask.narrow(2 + ax, 1, n - 1) & mask.narrow(2 + ax, 0, n - 1)).to(d.dtype)
        total = total + (d * m).sum()
        count += int(m.sum()) * e.shape[1]
    return total / count if count else total


def soft_dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean Dice over foreground channels 1..3 of (N,4,...) soft one-hot maps."""
    dims = tuple(range(2, a.ndim))
    inter = (a[:, 1:] * b[:, 1:]).sum(dims)
    den = a[:, 1:].sum(dims) + b[:, 1:].sum(dims)
    present = den > 0
    d = (2 * inter + 1e-3) / (den + 1e-3)
    return d[present].mean() if present.any() else torch.ones((), dtype=a.dtype)


def pair_loss(model, ref, mov, rl, ml, target, spacing, w):
    sp = torch.tensor(spacing, dtype=torch.float32)
    pair = torch.from_numpy(np.stack([ref, mov]))[None]
    u = model(pair)
    u_mm = u * sp.view(1, 3, 1, 1, 1)
    parts = {}
    warped = warp(torch.from_numpy(mov)[None, None], u)
    parts["sim"] = F.mse_loss(warped, torch.from_numpy(ref)[None, None])
    if rl is not None and ml is not None:
        wl = warp(torch.from_numpy(_onehot(ml))[None], u)
        parts["dice"] = 1.0 - soft_dice(wl, torch.from_numpy(_onehot(rl))[None])
    parts["smooth"] = smoothness(u_mm, sp)
    if target is not None:
        t_mm = torch.from_numpy(target)[None] * sp.view(1, 3, 1, 1, 1)
        parts["epe"] = torch.linalg.vector_norm(u_mm - t_mm, dim=1).mean()
        if w.get("grad") and rl is not None:
            parts["grad"] = gradient_error(u_mm, t_mm, sp, torch.from_numpy(rl == 2)[None, None])
    total = sum(w[k] * v for k, v in parts.items())
    return total, {k: float(v.detach()) for k, v in parts.items()}


# --------------------------------------------------------------------------- validation
def validate(model: MotionNet, samples: list[Sample]) -> dict[str, float]:
    """Mean Dice (RV, myo, LV) of ES labels pulled back to ED vs ED labels, and with no motion."""
    model.eval()
    d_mot, d_0 = [], []
    with torch.no_grad():
        for s in samples:
            ref, mov = normalise_pair(s.images[s.ed], s.images[s.es][None])
            from ..networks.motion import predict_voxels

            u = predict_voxels(model, torch.from_numpy(np.stack([ref, mov[0]]))[None])
            es_oh = torch.from_numpy(_onehot(s.labels[s.es]))[None]
            ed_oh = torch.from_numpy(_onehot(s.labels[s.ed]))[None]
            wl = warp(es_oh, u, mode="nearest")
            d_mot.append(float(soft_dice(wl, ed_oh)))
            d_0.append(float(soft_dice(es_oh, ed_oh)))
    model.train()
    return {"dice_motion": float(np.mean(d_mot)), "dice_none": float(np.mean(d_0))}


# --------------------------------------------------------------------------- CLI
def check_phantom_count(n: int) -> int:
    """``n`` if it is a valid ``--phantoms`` (0 to the number of training seeds), else ``ValueError``."""
    if not 0 <= n <= len(PHANTOM_TRAIN_SEEDS):
        raise ValueError(f"--phantoms must be between 0 and {len(PHANTOM_TRAIN_SEEDS)}, got {n}")
    return n


def _phantom_count(text: str) -> int:  # the command line's form of check_phantom_count: a usage error
    try:
        return check_phantom_count(int(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, default=None, help="shared data folder (acdc/, acdc_cine_crop/)")
    p.add_argument("--out", type=Path, default=Path("runs/motion"), help="run folder (checkpoints, log)")
    p.add_argument("--ship", default=None, help="write motion.pt + manifest entry: 'package' (the shipped weights) or a folder")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=0.0, help="stop after this wall time (0: no limit)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels", type=int, nargs=5, default=[16, 24, 40, 64, 96])
    p.add_argument("--flow-scale", type=float, default=4.0, help="fixed output gain of the network (voxels)")
    p.add_argument("--phantoms", type=_phantom_count, default=DEFAULT_PHANTOMS,
                   help=f"number of training phantoms: seeds 1000, 1001, ... (default {DEFAULT_PHANTOMS})")
    p.add_argument("--phantom-dir", type=Path, default=None, help="cached training phantoms (default <out>/phantoms)")
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--val-every", type=int, default=250)
    p.add_argument("--resume", action="store_true", help="continue the run of <out>/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out folder that holds a run (its checkpoint, motion_*.pt exports and "
                        "train.log are deleted; stored phantoms are kept), replace <out>/motion_average.pt "
                        "(--average) and a motion entry in a --ship folder; without it these are refused")
    p.add_argument("--patients", type=int, default=0,
                   help="use only the first N training patients of the fixed split, their cine cycles and the "
                        "first N/4 validation patients (tests; 0: all)")
    p.add_argument("--stop-after", type=int, default=0,
                   help="stop at this step, with a checkpoint, to go on later with --resume (0: no stop)")
    p.add_argument("--init", type=Path, default=None,
                   help="start from the weights of this export (e.g. runs/motion/motion_final.pt); layers it "
                        "lacks (the --refine stage) keep their initialisation")
    p.add_argument("--warmup", type=int, default=0, help="linear learning-rate warm-up (steps); use with --init")
    p.add_argument("--refine", action="store_true", help="add the full-resolution refinement stage")
    p.add_argument("--phantom-share", type=float, default=0.25,
                   help="share of training pairs drawn from the synthetic phantoms (exact motion)")
    p.add_argument("--w-sim", type=float, default=1.0)
    p.add_argument("--w-dice", type=float, default=1.0)
    p.add_argument("--w-smooth", type=float, default=0.1)
    p.add_argument("--w-epe", type=float, default=0.02)
    p.add_argument("--average", type=Path, nargs="+", default=None, metavar="WEIGHTS",
                   help="no training: average the parameters of these exported weights (same configuration, "
                        "e.g. a run and the run fine-tuned from it) into <out>/motion_average.pt; with --ship, "
                        "ship the average")
    p.add_argument("--w-grad", type=float, default=0.0,
                   help="weight of the displacement-gradient error in the ED myocardium (phantoms; 0: off)")


def _command(args: argparse.Namespace) -> str:
    """The command the manifest records (:func:`deepstrain.training.uninterrupted_command`)."""
    return uninterrupted_command(getattr(args, "command_line", "")
                                 or "python -m deepstrain.training.motion " + " ".join(sys.argv[1:]))


def _result_settings(args: argparse.Namespace) -> dict:
    """The options that decide the trained weights (a resumed run must be given the same ones)."""
    keep = ("steps", "minutes", "lr", "seed", "channels", "flow_scale", "phantoms", "phantom_share", "init",
            "warmup", "refine", "w_sim", "w_dice", "w_smooth", "w_epe", "w_grad")
    out = {k: option_value(v) for k, v in vars(args).items() if k in keep}
    if getattr(args, "patients", 0):  # only when given: checkpoints written before the option still resume
        out["patients"] = args.patients
    return out


def training_summary(args, step: int, train_s: float, val: dict, train_p, cine_train, phantom_names, w) -> dict:
    """What the weights manifest records about a training run."""
    return {
        "parameters": count_parameters(MotionNet(tuple(args.channels), flow_scale=args.flow_scale,
                                                 refine=args.refine)),
        "training_patients": list(train_p),
        "seed": args.seed,
        "iterations": step,
        "iterations_planned": args.steps,
        "batch": 1,
        "crop": PATCH,
        "threads": args.threads,
        "wall_s": train_s,
        "history": [{"val_dice_es_to_ed_motion": val["dice_motion"], "val_dice_es_to_ed_none": val["dice_none"]}],
        "additional_data": {
            "acdc_cine_crop_cycles": list(cine_train),
            "synthetic_phantoms": list(phantom_names),
        },
        "loss": {"mse": w["sim"], "dice": w["dice"], "diffusion": w["smooth"], "epe_mm_supervised": w["epe"],
                 "gradient_error_myocardium_supervised": w.get("grad", 0.0)},
        "phantom_share": args.phantom_share,
        "initialised_from": str(args.init) if args.init else None,
    }


def _default_data() -> Path:
    return Path(__file__).resolve().parents[3].parent / "shared" / "data"


def _log(msg: str, fh) -> None:
    line = f"[{time.strftime('%H:%M:%S')}] {msg}"
    print(line, flush=True)
    fh.write(line + "\n")
    fh.flush()


def read_weights(path: Path, missing: str) -> dict:
    """An exported motion network (or checkpoint) as loaded by ``torch.load``; :class:`InputError` with
    ``missing`` when there is no such file, or when it is unreadable."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, missing)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, garbage, or not a torch file
        raise InputError(path, "cannot be read as motion weights (truncated or corrupt file?): "
                               + str(exc).split(". ")[0]) from exc


def _model_of(path: Path, blob: dict) -> MotionNet:
    """:func:`model_from_blob`, with :class:`InputError` for weights of another network."""
    try:
        return model_from_blob(blob)
    except Exception as exc:  # other keys, layers or sizes
        raise InputError(path, f"not weights of the motion network ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}): a file of another network?") from exc


def _average_with_infos(paths: list[Path]) -> tuple[MotionNet, list[dict]]:
    """:func:`average_weights`, and the training ``info`` of each file (each file read once)."""
    blobs = [read_weights(p, "no weights to average") for p in paths]
    models = [_model_of(p, b) for p, b in zip(paths, blobs)]
    if len({json.dumps(m.config, sort_keys=True) for m in models}) != 1:
        raise InputError(paths[0], "--average: the weights have different configurations: "
                         + "; ".join(f"{p}: {m.config}" for p, m in zip(paths, models)))
    models[0].load_state_dict(mean_state_dict([m.state_dict() for m in models]))
    return models[0].eval(), [b.get("info", {}) for b in blobs]


def average_weights(paths: list[Path]) -> MotionNet:
    """A MotionNet whose parameters are the mean of those of the weights ``paths`` (all of one config)."""
    return _average_with_infos(paths)[0]


def _check_ship(args: argparse.Namespace) -> None:
    """Refuse, before any work, a ``--ship`` folder already holding motion weights (without ``--overwrite``)."""
    if args.ship:
        from ..weights import check_export_target

        check_export_target("motion", None if args.ship == "package" else Path(args.ship), args.overwrite)


def _main_average(args: argparse.Namespace) -> int:
    out = Path(args.out)
    check_output_folder(out, "output folder")
    if (out / "motion_average.pt").exists() and not args.overwrite:
        raise InputError(out / "motion_average.pt", "exists: give another --out, or --overwrite to replace it")
    _check_ship(args)
    model, infos = _average_with_infos(list(args.average))
    export(model, out / "motion_average.pt", {"average_of": [str(p) for p in args.average]})
    print(f"averaged {len(args.average)} weights into {out / 'motion_average.pt'}")
    if args.ship:
        steps = [int(i.get("steps", 0)) for i in infos]
        # the inputs may be snapshots of one run, so their steps are listed, not added up
        summary = {"parameters": count_parameters(model), "iterations": max(steps), "averaged_steps": steps,
                   "history": [{}], "averaged_from": [str(p) for p in args.average]}
        command = _command(args)
        path = ship(model, summary, command, None if args.ship == "package" else Path(args.ship), args.overwrite)
        print(f"shipped {path}")
    return 0


RUN_FILES = ("checkpoint.pt", "checkpoint.tmp", "motion_step*.pt", "motion_latest.pt", "motion_final.pt", "train.log")
"""What a training run writes into ``--out`` (a fresh run refuses a folder holding it, unless --overwrite)."""


def _check_data(root: Path, train_p: list[str], val_p: list[str]) -> list[str]:
    """Refuse (:class:`InputError`) a data folder without the ACDC patients of the fixed split (each
    with ED/ES and their files) or without ``acdc_cine_crop``; the cine cycles of ``train_p``."""
    from .data import check_patient_folder

    acdc = root / "acdc" / "training"
    if not acdc.is_dir():
        raise InputError(acdc, "ACDC training folder not found (--data: the folder holding acdc/ and acdc_cine_crop/)")
    for p in train_p + val_p:
        check_patient_folder(acdc / p)
    cine = sorted(p for p in read_cine_crops(root) if p in train_p)
    for p in cine:
        f = root / "acdc_cine_crop" / p / f"{p}_4d.nii.gz"
        if not f.is_file():
            raise InputError(f, "missing cine of the acdc_cine_crop list (crops.json)")
    return cine


def _read_checkpoint(path: Path) -> dict:
    """The motion training checkpoint ``path`` (:class:`InputError` when missing, unreadable, of another
    network or of an older version)."""
    if not path.is_file():
        raise InputError(path, "no checkpoint to resume from")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated, garbage, or not a torch file
        raise InputError(path, "cannot be read as a checkpoint (truncated or corrupt file?): "
                               + str(exc).split(". ")[0]) from exc
    if not isinstance(ck, dict) or "step" not in ck or "opt" not in ck:
        other = ck.get("network", "centring or segmentation") if isinstance(ck, dict) and "iteration" in ck else None
        raise InputError(path, f"a checkpoint of the {other} network, not of the motion network" if other
                         else "not a checkpoint of the motion training")
    if "rng" not in ck or "settings" not in ck:
        raise InputError(path, "a checkpoint of an older version (no random-generator state): it cannot "
                               "be resumed exactly; start the run again")
    return ck


def main(args: argparse.Namespace) -> int:
    """Train (or resume, or with ``--average`` combine) the motion network; bad input is refused
    (:class:`InputError`) before anything is written, and the ``--out`` folder is made only then."""
    if args.average:
        return _main_average(args)
    try:
        check_phantom_count(args.phantoms)
    except ValueError as exc:
        raise InputError("--phantoms", str(exc)) from None
    check_counts(args, ("steps", "save_every", "val_every"), ("stop_after", "warmup", "patients"))
    check_option_values(args)  # --lr, --seed, --threads, --phantom-share, --channels, ...
    torch.set_num_threads(int(args.threads))
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    root = Path(args.data) if args.data else _default_data()
    out = Path(args.out)
    phantom_dir = Path(args.phantom_dir) if args.phantom_dir else out / "phantoms"
    check_output_folder(out, "output folder")
    check_output_folder(phantom_dir, "phantom folder")
    held = sorted(f.name for pattern in RUN_FILES for f in out.glob(pattern)) if out.is_dir() else []
    if held and not args.resume and not args.overwrite:
        raise InputError(out, f"holds a motion run ({', '.join(held[:3])}{' ...' if len(held) > 3 else ''}): "
                              "continue it with --resume, or give --overwrite to start afresh (its files are deleted)")
    _check_ship(args)
    from .data import TRAINING_PATIENTS, VALIDATION_PATIENTS

    train_p = list(TRAINING_PATIENTS[: args.patients] if args.patients else TRAINING_PATIENTS)
    val_p = list(VALIDATION_PATIENTS[: max(1, args.patients // 4)] if args.patients else VALIDATION_PATIENTS)
    cine_train = _check_data(root, train_p, val_p)
    model = MotionNet(tuple(args.channels), flow_scale=args.flow_scale, refine=args.refine)
    init_note = None
    if args.init is not None and not args.resume:
        blob = read_weights(args.init, "no weights to start from")
        state = blob.get("state_dict") or blob.get("model") if isinstance(blob, dict) else None
        if not isinstance(state, dict):
            raise InputError(args.init, "not weights of the motion network (no state_dict)")
        try:
            missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        except (RuntimeError, AttributeError) as exc:
            raise InputError(args.init, f"its weights do not fit this motion network ({str(exc).splitlines()[-1].strip()}): "
                                        "weights of another network or of other --channels") from None
        if unexpected:
            raise InputError(args.init, f"weights of layers this network lacks ({', '.join(unexpected[:5])}): "
                                        "weights of another network?")
        init_note = f"initialised from {args.init}; new layers: {sorted({k.split('.')[0] for k in missing})}"
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    step = 0
    prev_s = 0.0  # training seconds before this (resumed) run
    ckpt_path = out / "checkpoint.pt"
    settings = _result_settings(args)
    hist: dict[str, list[float]] = {}
    if args.resume:
        ck = _read_checkpoint(ckpt_path)
        if problem := resume_mismatch(ck["settings"], settings):
            raise InputError(ckpt_path, problem)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        step = int(ck["step"])
        prev_s = float(ck.get("train_s", 0.0))
        # the generators where the run left them: the resumed run continues the uninterrupted one exactly
        rng.bit_generator.state = ck["rng"]
        torch.set_rng_state(ck["torch_rng"])
        hist = ck.get("hist", {})
    t0 = time.time()
    print(f"ACDC train {len(train_p)} / val {len(val_p)}; cine cycles train {cine_train}", flush=True)
    acdc = load_acdc(root, train_p)
    acdc_val = load_acdc(root, val_p)
    cine = load_cine_crops(root, cine_train)
    # the inputs are good: only now is anything written
    if held and not args.resume:  # --overwrite: the old run's files go, so they never mix with this run's
        for f in held:
            (out / f).unlink()
    out.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "a")
    try:
        _log(f"ACDC train {len(train_p)} / val {len(val_p)}; cine cycles train {cine_train}", log)
        if init_note:
            _log(init_note, log)
        if args.resume:
            _log(f"resumed at step {step}", log)
        phantoms: list[Sample] = []
        allowed = {f"phantom{s}" for s in list(PHANTOM_TRAIN_SEEDS)[: args.phantoms]}

        def refresh_phantoms() -> None:  # picks up phantoms another process adds to the cache meanwhile
            have = {s.name for s in phantoms}
            for f in sorted(phantom_dir.glob("phantom*.npz")):
                if f.stem in allowed and f.stem not in have and not f.name.endswith(".tmp.npz"):
                    try:
                        phantoms.append(phantom_sample(f))
                    except Exception as exc:  # truncated or foreign file
                        raise InputError(f, f"unreadable training phantom ({exc}): delete it to generate it again") from exc

        missing = [s for s in list(PHANTOM_TRAIN_SEEDS)[: args.phantoms] if not (phantom_dir / f"phantom{s}.npz").exists()]
        if missing:
            _log(f"generating {len(missing)} training phantoms into {phantom_dir}", log)
            phantom_dir.mkdir(parents=True, exist_ok=True)
            for s in missing:
                cache_phantom(training_phantom_params(s), phantom_dir / f"phantom{s}.npz")
        refresh_phantoms()
        _log(f"data ready in {time.time() - t0:.0f} s: {len(acdc)} ACDC, {len(cine)} cycles, {len(phantoms)} phantoms", log)
        _log(f"MotionNet {tuple(args.channels)}: {count_parameters(model)} parameters", log)
        w = {"sim": args.w_sim, "dice": args.w_dice, "smooth": args.w_smooth, "epe": args.w_epe, "grad": args.w_grad}
        real = [("acdc", "es", 0.30), ("acdc", "swap", 0.15), ("acdc", "identity", 0.08), ("cine", "cycle", 0.22)]
        rest = (1.0 - args.phantom_share) / sum(k[2] for k in real)  # real-data kinds keep their proportions
        kinds = [(src, kind, share * rest) for src, kind, share in real] + [("phantom", "cycle", args.phantom_share)]
        pools = {"acdc": acdc, "cine": cine, "phantom": phantoms}

        def active():
            ks = [k for k in kinds if pools[k[0]]]
            pr = np.array([k[2] for k in ks])
            return ks, pr / pr.sum()

        act, probs = active()
        model.train()
        t_start = time.time()
        def checkpoint() -> None:
            save_atomically({"model": model.state_dict(), "opt": opt.state_dict(), "step": step,
                             "train_s": prev_s + time.time() - t_start, "channels": list(args.channels),
                             "config": dict(model.config), "settings": settings, "rng": rng.bit_generator.state,
                             "torch_rng": torch.get_rng_state(), "hist": {k: v[-50:] for k, v in hist.items()}},
                            ckpt_path, ckpt_path.with_suffix(".tmp"))

        while step < args.steps:
            if args.stop_after and step >= args.stop_after:
                checkpoint()
                _log(f"stopped at step {step} of {args.steps} (--stop-after): go on with --resume", log)
                return 0
            if args.minutes and (prev_s + time.time() - t_start) / 60 > args.minutes:
                _log("wall-time limit reached", log)
                break
            done = step / args.steps
            if args.minutes:
                done = max(done, (prev_s + time.time() - t_start) / 60 / args.minutes)
            lr = args.lr * 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))
            if step < args.warmup:
                lr *= (step + 1) / args.warmup
            for g in opt.param_groups:
                g["lr"] = lr
            if step % 100 == 0 and len(phantoms) < len(allowed):
                n0 = len(phantoms)
                refresh_phantoms()
                if len(phantoms) != n0:
                    _log(f"{len(phantoms)} phantoms loaded", log)
                act, probs = active()
            src, kind, _ = act[int(rng.choice(len(act), p=probs))]
            pool = pools[src]
            s = pool[int(rng.integers(len(pool)))]
            ref, mov, rl, ml, target = make_pair(s, rng, kind)
            loss, parts = pair_loss(model, ref, mov, rl, ml, target, s.spacing, w)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            step += 1
            for k, v in parts.items():
                hist.setdefault(f"{src}/{k}", []).append(v)
            if step % 25 == 0:
                msg = " ".join(f"{k}={np.mean(v[-50:]):.4f}" for k, v in sorted(hist.items()))
                _log(f"step {step} lr {lr:.2e} {msg} ({time.time() - t0:.0f} s)", log)
            if step % args.save_every == 0 or step == args.steps:
                checkpoint()
            if step % args.val_every == 0 or step == args.steps:
                some = acdc_val[::3]  # every third validation patient: a quick look
                v = validate(model, some)
                _log(f"validation ({len(some)} patient{'s' if len(some) != 1 else ''}) step {step}: {v}", log)
                info = {"steps": step, "validation": v, "seed": args.seed}
                snapshot = out / f"motion_step{step:06d}.pt"  # kept: snapshots to average (--average)
                export(model, snapshot, info)
                _same_file_as(out / "motion_latest.pt", snapshot)
        v = validate(model, acdc_val)
        _log(f"final validation ({step} steps, {time.time() - t0:.0f} s): {v}", log)
        export(model, out / "motion_final.pt", {"steps": step, "validation": v, "seed": args.seed})
        if args.ship:
            summary = training_summary(args, step, prev_s + time.time() - t_start, v, train_p, cine_train,
                                       [s.name for s in phantoms], w)
            command = _command(args)
            path = ship(model, summary, command,
                        None if args.ship == "package" else Path(args.ship), args.overwrite)
            _log(f"shipped {path}", log)
        return 0
    except BaseException:  # a run that failed (or was stopped) before writing anything resumable
        if not args.resume and not any(f.name != "train.log" for pattern in RUN_FILES for f in out.glob(pattern)):
            log.close()  # ... leaves no train.log that would make its corrected re-run need --overwrite
            (out / "train.log").unlink(missing_ok=True)
            remove_if_empty(out)
        raise
    finally:
        log.close()


def _same_file_as(path: Path, source: Path) -> None:
    """Make ``path`` (atomically replaced) hold ``source``'s bytes: a hard link, or a copy where the
    file system has none."""
    import shutil

    def write(tmp: Path) -> None:
        tmp.unlink(missing_ok=True)
        try:
            tmp.hardlink_to(source)
        except OSError:
            shutil.copyfile(source, tmp)

    write_atomically(path, path.with_suffix(".tmp"), write)


def export(model: MotionNet, path: Path, info: dict) -> None:
    """Write a float32 snapshot (``config`` + ``state_dict`` + training info) for :func:`deepstrain.networks.motion.load_model`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomically({"config": dict(model.config), "state_dict": model.state_dict(), "info": info}, path)


def ship(model: MotionNet, summary: dict, command: str, out_dir: Path | None = None, overwrite: bool = False) -> Path:
    """Write ``motion.pt`` (float16) and its manifest entry with :func:`deepstrain.weights.export_weights`."""
    from ..weights import export_weights

    extra = {
        "task": "Lagrangian displacement ED -> frame t on the 128x128 1.25 mm crop (voxel units x crop spacing = mm)",
        "additional_training_data": summary.get("additional_data", {}),
        "loss": summary.get("loss", {}),
    }
    return export_weights("motion", model, dict(model.config), summary, command=command, out_dir=out_dir, extra=extra,
                          overwrite=overwrite)


if __name__ == "__main__":  # pragma: no cover
    p = argparse.ArgumentParser(description="train the motion network")
    add_arguments(p)
    sys.exit(main(p.parse_args()))
