"""Motion network: any input size, the warping convention, and the shipped weights on a phantom."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from deepstrain import preprocess as pp
from deepstrain.networks.motion import (
    MotionNet,
    estimate_motion,
    load_model,
    predict_voxels,
    warp,
)

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def shipped():
    from deepstrain.weights import verified_path

    verified_path("motion")  # shipped, listed in the manifest, size and sha256 match
    return load_model()


@pytest.fixture(scope="module")
def phantom_crop():
    """A small phantom (4 frames) on the network's crop grid, centred on the exact ED LV centre."""
    from deepstrain.phantom import PhantomParams, generate_phantom

    P = generate_phantom(PhantomParams(matrix_size=80, pixel_spacing_mm=2.0, n_frames=4, pv_samples=1, seed=5))
    geo, ed, es = P.cine.geometry, P.cine.ed, P.cine.es
    m = (P.labels[ed] == 2) | (P.labels[ed] == 3)
    _, r, c = np.nonzero(m)
    t = pp.crop_transform(P.cine.data.shape[1:], geo.spacing, (r.mean(), c.mean()), pp.CROP_SIZE)
    crop = pp.normalize_intensity(pp.crop_image(P.cine.data, t))
    labels = pp.crop_labels(P.labels, t)
    sp = np.array([geo.spacing[0], pp.TARGET_SPACING_MM, pp.TARGET_SPACING_MM])
    # exact displacement, array-axis mm on the crop grid
    arr_mm = np.einsum("ij,tizyx->tjzyx", geo.direction, P.displacement.astype(np.float64))
    rows, cols = pp._crop_grid(t)
    exact = pp._sample_slices(arr_mm.astype(np.float32), rows, cols, order=1, cval=0.0)
    return crop, labels, sp, ed, es, exact


def _dice(a: np.ndarray, b: np.ndarray, k: int) -> float:
    x, y = a == k, b == k
    return float(2 * (x & y).sum() / (x.sum() + y.sum()))


def test_any_input_size_and_units():
    torch.manual_seed(0)
    model = MotionNet(channels=(4, 8, 8, 8, 8)).eval()
    with torch.no_grad():
        model.head.weight.normal_(std=0.1)  # make the output non-trivial
        for shape in [(1, 16, 16), (3, 37, 50), (5, 64, 33)]:
            out = predict_voxels(model, torch.rand((2, 2) + shape))
            assert out.shape == (2, 3) + shape
    rng = np.random.default_rng(0)
    ed = rng.random((3, 37, 50)).astype(np.float32)
    frames = rng.random((3, 3, 37, 50)).astype(np.float32)
    sp = np.array([8.0, 1.25, 1.25])
    u = estimate_motion(ed, frames, sp, model=model, batch=2, smooth_mm=0.0, precision="float32")
    assert u.shape == (3, 3, 3, 37, 50) and u.dtype == np.float32
    # the batch size changes the time, not the result beyond float rounding (instance norm is per
    # pair); here displacements reach 125 mm and differ by < 1 micrometre
    for b in (1, 3):
        assert np.allclose(estimate_motion(ed, frames, sp, model=model, batch=b, smooth_mm=0.0, precision="float32"),
                           u, rtol=0, atol=1e-3)
    # the default output is smoothed in-plane only (Gaussian of OUTPUT_SMOOTHING_MM)
    from scipy import ndimage

    from deepstrain.networks.motion import OUTPUT_SMOOTHING_MM

    smooth = estimate_motion(ed, frames, sp, model=model, batch=2, precision="float32")
    s = OUTPUT_SMOOTHING_MM / 1.25
    assert np.allclose(smooth[1], ndimage.gaussian_filter(u[1], (0, 0, s, s), mode="nearest"), atol=1e-5)
    # mm = voxels x spacing, per component
    lo, hi = np.percentile(ed, [1, 99])
    pair = torch.from_numpy(np.stack([(ed - lo) / (hi - lo), (frames[1] - lo) / (hi - lo)]).astype(np.float32))[None]
    with torch.no_grad():
        vox = predict_voxels(model, pair)[0].numpy()
    assert np.allclose(u[1], vox * sp.reshape(3, 1, 1, 1), atol=1e-4)
    with pytest.raises(ValueError):
        estimate_motion(ed, frames[:, :2], sp, model=model)


def test_refinement_stage_starts_as_identity_correction():
    torch.manual_seed(3)
    coarse = MotionNet(channels=(4, 8, 8, 8, 8)).eval()
    with torch.no_grad():
        coarse.head.weight.normal_(std=0.1)
    refined = MotionNet(channels=(4, 8, 8, 8, 8), refine=True).eval()
    missing, unexpected = refined.load_state_dict(coarse.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("fine") for k in missing)
    assert refined.config["refine"] is True and "refine" not in coarse.config
    pair = torch.rand(1, 2, 3, 40, 36)
    with torch.no_grad():
        assert torch.equal(predict_voxels(refined, pair), predict_voxels(coarse, pair))
        refined.fine_head.weight.normal_(std=0.1)  # a trained correction changes the field
        assert not torch.allclose(predict_voxels(refined, pair), predict_voxels(coarse, pair))


def test_warp_samples_at_x_plus_u():
    z, h, w = 3, 10, 12
    img = torch.arange(z * h * w, dtype=torch.float32).reshape(1, 1, z, h, w)
    u = torch.zeros(1, 3, z, h, w)
    u[:, 2] = 2.0  # two columns
    u[:, 0] = 1.0  # one slice
    out = warp(img, u)
    assert torch.allclose(out[0, 0, :2, :, :-2], img[0, 0, 1:, :, 2:])


def test_identical_frames_give_zero_motion(shipped, phantom_crop):
    crop, _, sp, ed, _, _ = phantom_crop
    u = estimate_motion(crop[ed], crop[[ed]], sp, model=shipped)
    assert np.all(u == 0)
    # the network itself, on the [ED, ED] pair: small next to the real ED -> ES motion.
    # (Measured with the shipped weights: mean 0.6 mm, 99th percentile 2.7 mm -- a known
    # weakness of the short CPU training; a broken network gives several mm.)
    pair = torch.from_numpy(np.stack([crop[ed], crop[ed]]))[None]
    with torch.no_grad():
        vox = predict_voxels(shipped, pair)[0].numpy()
    mm = np.linalg.norm(vox * sp.reshape(3, 1, 1, 1), axis=0)
    assert mm.mean() < 1.0, mm.mean()


def test_shipped_weights_track_phantom_ed_to_es(shipped, phantom_crop):
    crop, labels, sp, ed, es, exact = phantom_crop
    u = estimate_motion(crop[ed], crop[[es]], sp, model=shipped)[0]
    # ES labels pulled back onto ED with the Lagrangian field should match the ED labels
    vox = torch.from_numpy((u / sp.reshape(3, 1, 1, 1)).astype(np.float32))[None]
    onehot = torch.from_numpy(np.stack([labels[es] == k for k in range(4)]).astype(np.float32))[None]
    pulled = warp(onehot, vox, mode="nearest")[0].argmax(0).numpy()
    for k in (2, 3):  # myocardium, LV cavity
        moved, still = _dice(pulled, labels[ed], k), _dice(labels[es], labels[ed], k)
        assert moved > still + 0.03, (k, moved, still)
    # and the end-point error in the ED myocardium beats zero motion (measured: 6.2 vs 7.7 mm
    # on this coarse 2 mm phantom; see benchmarks/motion_accuracy.py for the real figures)
    myo = labels[ed] == 2
    epe = np.linalg.norm(u - exact[es], axis=0)[myo].mean()
    epe0 = np.linalg.norm(exact[es], axis=0)[myo].mean()
    assert epe < 0.9 * epe0, (epe, epe0)
    # and the network does move on the ED -> ES pair (not a near-zero field)
    assert np.linalg.norm(u, axis=0)[myo].mean() > 0.3 * epe0


def test_gradient_error_measures_strain_error_inside_the_mask_only():
    from deepstrain.training.motion import gradient_error

    sp = torch.tensor([8.0, 1.25, 1.25])
    z, h, w = 3, 10, 12
    x = torch.arange(w, dtype=torch.float32) * 1.25  # column position in mm
    target = torch.zeros(1, 3, z, h, w)
    u = target.clone()
    u[0, 2] = 0.1 * x  # a uniform 10 % stretch along the columns: du/dX = 0.1
    mask = torch.zeros(1, 1, z, h, w, dtype=torch.bool)
    mask[..., 2:6, 3:9] = True
    # only the column difference of component 2 is wrong (0.1); 3 components x 3 axes of pairs
    pairs = [(z - 1) * 4 * 6, z * 3 * 6, z * 4 * 5]  # neighbour pairs inside the mask along Z, Y, X
    expected = 0.1 * pairs[2] / (3 * sum(pairs))
    assert float(gradient_error(u, target, sp, mask)) == pytest.approx(expected, rel=1e-5)
    assert float(gradient_error(target, target, sp, mask)) == 0.0
    u_out = target.clone()
    u_out[0, 2, :, :, :2] = 5.0  # an error outside the mask does not count
    assert float(gradient_error(u_out, target, sp, mask)) == 0.0
    assert float(gradient_error(u, target, sp, torch.zeros_like(mask))) == 0.0


def test_average_weights_is_the_parameter_mean_and_refuses_other_configs(tmp_path):
    from deepstrain.training.motion import average_weights, export

    torch.manual_seed(0)
    a, b = MotionNet((4, 4, 4, 4, 4), refine=True), MotionNet((4, 4, 4, 4, 4), refine=True)
    export(a, tmp_path / "a.pt", {})
    export(b, tmp_path / "b.pt", {})
    avg = average_weights([tmp_path / "a.pt", tmp_path / "b.pt"])
    for k, v in avg.state_dict().items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (a.state_dict()[k] + b.state_dict()[k]) / 2)
    export(MotionNet((4, 4, 4, 4, 8)), tmp_path / "c.pt", {})
    with pytest.raises(ValueError, match="different configurations"):
        average_weights([tmp_path / "a.pt", tmp_path / "c.pt"])


def test_average_reads_each_file_once_and_keeps_its_training_info(tmp_path):
    from deepstrain.training.motion import _average_with_infos, export

    for name, steps in (("a", 500), ("b", 1000)):
        export(MotionNet((4, 4, 4, 4, 4)), tmp_path / f"{name}.pt", {"steps": steps})
    _, infos = _average_with_infos([tmp_path / "a.pt", tmp_path / "b.pt"])
    assert [i["steps"] for i in infos] == [500, 1000]


def test_latest_export_is_the_newest_snapshot(tmp_path):
    from deepstrain.training.motion import _same_file_as, export

    latest = tmp_path / "motion_latest.pt"
    for step in (500, 1000):
        snap = tmp_path / f"motion_step{step:06d}.pt"
        export(MotionNet((4, 4, 4, 4, 4)), snap, {"steps": step})
        _same_file_as(latest, snap)
        assert latest.read_bytes() == snap.read_bytes()
    assert torch.load(latest, weights_only=True)["info"]["steps"] == 1000
    assert (tmp_path / "motion_step000500.pt").exists()  # the older snapshot is kept
    assert not list(tmp_path.glob("*.tmp"))


def test_a_refused_training_draw_is_retried_deterministically(tmp_path):
    import json

    from deepstrain.phantom import PhantomRefused, generate_phantom
    from deepstrain.training.motion import cache_phantom, training_phantom_params

    params = training_phantom_params(1115)  # 6.4 mm slices: the default 10 mm apical wall shows no cap
    with pytest.raises(PhantomRefused, match="apex_wall_mm") as refused:
        generate_phantom(params)
    assert refused.value.parameter == "apex_wall_mm"
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    cache_phantom(params, a)
    cache_phantom(params, b)
    za, zb = np.load(a), np.load(b)
    assert all(np.array_equal(za[k], zb[k]) for k in za.files)
    assert 3 in za["labels"][int(za["ed"])]  # a usable phantom: LV cavity labelled at ED
    assert json.loads(str(za["reference"]))["ess"]["radial"] > 0


def test_training_refuses_more_phantoms_than_it_has_seeds(tmp_path):
    import argparse

    from deepstrain.training.motion import PHANTOM_TRAIN_SEEDS, add_arguments, main

    p = argparse.ArgumentParser()
    add_arguments(p)
    too_many = str(len(PHANTOM_TRAIN_SEEDS) + 1)
    with pytest.raises(SystemExit) as exc:  # the command line: a usage error, exit status 2
        p.parse_args(["--out", str(tmp_path / "run"), "--phantoms", too_many])
    assert exc.value.code == 2
    args = p.parse_args(["--out", str(tmp_path / "run")])
    assert args.phantoms == 40
    args.phantoms = int(too_many)  # called from Python
    with pytest.raises(ValueError, match="--phantoms must be between 0 and 1000"):
        main(args)
    assert not (tmp_path / "run").exists()  # refused before anything is written


def _radial_error_benchmark():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import radial_error

    return radial_error


def test_radial_error_layers_partition_the_wall():
    re_ = _radial_error_benchmark()
    lab = np.zeros((1, 21, 21), np.uint8)
    yy, xx = np.mgrid[:21, :21]
    r = np.hypot(yy - 10, xx - 10)
    lab[0][r < 8] = 2
    lab[0][r < 4] = 3
    layer = re_.wall_layers(lab)
    myo = lab == 2
    assert (layer[~myo] == -1).all() and set(np.unique(layer[myo])) == {0, 1, 2}
    endo, mid, epi = (r[layer[0] == j] for j in range(3))
    assert endo.max() < mid.min() and endo.max() < epi.min() and endo.mean() < mid.mean() < epi.mean()


def test_radial_error_seed_list():
    assert _radial_error_benchmark().seed_list("8000-8002,9000") == [8000, 8001, 8002, 9000]


def test_radial_error_cascade_composes_the_passes(shipped, phantom_crop):
    re_ = _radial_error_benchmark()
    crop, _, sp, ed, es, _ = phantom_crop
    one = re_.cascade(shipped, crop[ed], crop[es], 1)
    u = estimate_motion(crop[ed], crop[[es]], sp, model=shipped) / sp.reshape(1, 3, 1, 1, 1)
    np.testing.assert_allclose(one, u, atol=1e-5)  # one pass: what analyze does

    class Shift(torch.nn.Module):  # the same uniform displacement (voxels) for any pair
        def forward(self, pair):
            n, _, z, h, w = pair.shape
            return torch.tensor([0.0, 1.5, -0.5]).view(1, 3, 1, 1, 1).expand(n, 3, z, h, w).clone()

    two = re_.cascade(Shift(), crop[ed], crop[es], 2)
    np.testing.assert_allclose(two[0, :, 0, 40, 40], [0.0, 3.0, -1.0], atol=1e-5)  # u + u(X + u)
