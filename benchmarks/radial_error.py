"""Where the motion network's radial strain error comes from, on phantoms with exact motion.

For each phantom: the global end-systolic strain (ESS) error of the network against the exact
displacement (radial, circumferential, longitudinal; points of %), the radial error split by wall
layer of the ED myocardium (endocardial layer: in-plane neighbours of the LV cavity; epicardial
layer: in-plane neighbours of anything outside myocardium and cavity; mid-wall: the rest; the three
parts add up to the network's error against the strain of the exact displacement field, which
differs from the global error against the analytic reference by that field's own discretisation
error, 0.07 points on average on the selection phantoms), and the phantom's parameters. Then the correlations, over the
phantoms, of the radial error with the other errors and with the parameters.

Run (2 threads; the phantoms are generated into the cache when missing, about 5-10 s each)::

    python benchmarks/radial_error.py                                  # selection phantoms 8000-8019
    python benchmarks/radial_error.py --seeds 1040-1059 --cache runs/motion/phantoms_cur  # training ones

Only the ES frame is run through the network (crop centred on the labelled LV, as in
``motion_accuracy.py``). ``--passes 2`` tries a test-time cascade (see :func:`cascade`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent))
import motion_accuracy as ma  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("radial", "circumferential", "longitudinal")
PARAMETERS = ("lv_edv_ml", "wall_thickness_mm", "longitudinal_shortening_percent", "ef_percent", "slice_spacing_mm")
_INPLANE = np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[0, 0, 0], [0, 0, 0], [0, 0, 0]]],
                    dtype=bool)


def seed_list(text: str) -> list[int]:
    """``"8000-8019"`` or ``"8000,8003"`` -> seeds."""
    out: list[int] = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out.extend(range(int(a), int(b or a) + 1))
    return out


def _positive(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {n}")
    return n


def wall_layers(labels_ed: np.ndarray) -> np.ndarray:
    """Layer of each ED myocardium voxel: 0 endocardial, 1 mid-wall, 2 epicardial (-1 outside)."""
    myo, cav = labels_ed == 2, labels_ed == 3
    inner = myo & ndimage.binary_dilation(cav, structure=_INPLANE)
    outer = myo & ~ndimage.binary_erosion(myo | cav, structure=_INPLANE)
    layer = np.full(labels_ed.shape, -1, dtype=np.int8)
    layer[myo] = 1
    layer[outer] = 2
    layer[inner] = 0
    return layer


def cascade(model, ed: np.ndarray, frame: np.ndarray, passes: int) -> np.ndarray:
    """Displacement (1, 3, Z, H, W) in crop voxels from ``passes`` runs of the network: each run
    registers ED to the frame pulled back by the field so far, and the fields are composed
    (``u <- du + u(X + du)``). One pass is what ``deepstrain analyze`` does."""
    import torch

    from deepstrain.networks.motion import normalise_pair, predict_voxels, warp
    from deepstrain.networks.precision import compute_precision

    e, f = normalise_pair(ed, frame[None])
    ref, mov = torch.from_numpy(e)[None, None], torch.from_numpy(f)[None]  # (1, 1, Z, H, W)
    u = None
    with torch.no_grad():
        for _ in range(passes):
            pulled = mov if u is None else warp(mov, u)
            with compute_precision("auto"):
                du = predict_voxels(model, torch.cat([ref, pulled], 1)).float()
            u = du if u is None else du + warp(u, du)
    return u.numpy()


def es_displacement(z: dict, model, passes: int = 1) -> np.ndarray:
    """Network displacement (1, 3, Z, Y, X), RAS mm, ED -> ES, on the phantom's grid."""
    from deepstrain import preprocess as pp
    from deepstrain.cine import Geometry
    from deepstrain.networks.motion import estimate_motion

    if passes < 1:
        raise ValueError("passes must be >= 1")
    geo = Geometry(z["spacing"], z["origin"], z["direction"])
    ed, es = int(z["ed"]), int(z["es"])
    t, crop, sp = ma.labelled_lv_crop(z["images"], z["labels"][ed], geo)  # all frames normalised, as analyze does
    if passes == 1:
        u_vox = estimate_motion(crop[ed], crop[[es]], sp, model=model) / sp.reshape(1, 3, 1, 1, 1)
    else:
        u_vox = cascade(model, crop[ed], crop[es], passes)
    return pp.displacement_to_input(u_vox, t, geo)


def phantom_errors(z: dict, model, passes: int = 1) -> dict:
    """Global ESS errors (network - exact field), radial error per wall layer, and the parameters."""
    from deepstrain import strain as st
    from deepstrain.cine import Geometry

    geo = Geometry(z["spacing"], z["origin"], z["direction"])
    ed, es = int(z["ed"]), int(z["es"])
    lab = z["labels"][ed]
    myo = lab == 2
    frame = st.cardiac_frame(lab, geo)
    exact = st.strain_components(z["displacement"][[es]].astype(np.float32), geo, frame, myo)
    net = st.strain_components(es_displacement(z, model, passes), geo, frame, myo)
    ref = json.loads(str(z["reference"]))
    out = {"reference": {k: float(ref["ess"][k]) for k in COMPONENTS},
           "params": {k: float(ref["phantom"]["params"][k]) for k in PARAMETERS}}
    for k in COMPONENTS:
        out[k] = float(np.nanmean(net[k][0]) - ref["ess"][k])
    d = net["radial"][0] - exact["radial"][0]  # per myocardium voxel (mask order)
    layer = wall_layers(lab)[myo]
    ok = np.isfinite(d)
    out["radial_layers"] = [float(d[ok & (layer == j)].sum() / ok.sum()) for j in range(3)]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=seed_list, default=seed_list("8000-8019"), help="e.g. 8000-8019 or 9000,9003")
    ap.add_argument("--cache", type=Path, default=ROOT / "runs" / "motion" / "select_phantoms")
    ap.add_argument("--weights", type=Path, default=None, help="a motion export (default: the shipped weights)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--passes", type=_positive, default=1,
                    help="run the network this many times, composing the fields (test-time cascade; analyze: 1)")
    args = ap.parse_args(argv)

    import torch

    from deepstrain.networks.motion import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    rows = []
    print("phantom | ESS error rad / circ / long | radial by layer endo / mid / epi | EDV ml, wall mm, long. shortening %")
    for seed in args.seeds:
        r = phantom_errors(ma.eval_phantom(seed, args.cache), model, args.passes)
        rows.append(r)
        p = r["params"]
        print(f"{seed} | {r['radial']:+6.1f} {r['circumferential']:+5.1f} {r['longitudinal']:+5.1f} | "
              + " ".join(f"{x:+5.1f}" for x in r["radial_layers"])
              + f" | {p['lv_edv_ml']:5.0f} {p['wall_thickness_mm']:5.1f} {p['longitudinal_shortening_percent']:5.1f}",
              flush=True)
    err = np.array([[r[k] for k in COMPONENTS] for r in rows])
    print(f"\n{len(rows)} phantoms; mean |ESS error| rad/circ/long "
          + " / ".join(f"{v:.2f}" for v in np.abs(err).mean(0))
          + "; mean signed " + " / ".join(f"{v:+.2f}" for v in err.mean(0)))
    layers = np.array([r["radial_layers"] for r in rows])
    for name, sel in (("under-estimated (radial error < -3)", err[:, 0] < -3), ("over-estimated (> +3)", err[:, 0] > 3)):
        if sel.any():
            print(f"radial error by layer, {name}, {int(sel.sum())} phantoms: endo / mid / epi "
                  + " / ".join(f"{v:+.2f}" for v in layers[sel].mean(0)))
    if len(rows) > 2:
        print("correlation of the radial error with:")
        for j, k in enumerate(COMPONENTS[1:], start=1):
            print(f"  {k} error: {np.corrcoef(err[:, 0], err[:, j])[0, 1]:+.2f}")
        for k in PARAMETERS:
            v = np.array([r["params"][k] for r in rows])
            print(f"  {k}: {np.corrcoef(err[:, 0], v)[0, 1]:+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
