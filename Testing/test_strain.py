"""Strain engine: gradients in world mm, Green strain, cardiac frame, curves, rates and peaks."""
from __future__ import annotations

import numpy as np
import pytest

from _heart import Heart, anatomical_rotation, flip_geometry, grid_for, rotation, sample
from deepstrain.cine import Geometry
from deepstrain.strain import (
    cardiac_frame,
    deformation_gradient,
    early_diastole_frames,
    global_curves,
    green_lagrange,
    peak_values,
    strain_components,
    strain_rate,
    systole_frames,
)

OBLIQUE = rotation([0.2, -0.7, 0.4], 37.0)


def _oblique_geometry(spacing=(7.0, 1.3, 1.7)) -> Geometry:
    return Geometry(spacing=spacing, origin=np.array([-12.0, 40.0, 7.0]), direction=OBLIQUE)


def _field(world: np.ndarray, fn) -> np.ndarray:
    """(Z, Y, X, 3) world points -> (3, Z, Y, X) displacement."""
    return np.moveaxis(fn(world), -1, 0)


def test_linear_field_gives_exact_gradient_with_anisotropic_oblique_grid():
    geo = _oblique_geometry()
    shape = (5, 7, 6)
    a = np.array([[0.05, -0.02, 0.03], [0.01, -0.08, 0.02], [-0.04, 0.06, 0.1]])
    world = geo.world_points(shape)
    u = _field(world, lambda p: p @ a.T + np.array([1.0, -2.0, 0.5]))
    f = deformation_gradient(u, geo)
    assert f.shape == shape + (3, 3)
    np.testing.assert_allclose(f, np.broadcast_to(np.eye(3) + a, f.shape), atol=1e-10)
    e = green_lagrange(f)
    fe = np.eye(3) + a
    np.testing.assert_allclose(e[2, 3, 3], 0.5 * (fe.T @ fe - np.eye(3)), atol=1e-10)


def test_unit_spacing_would_be_wrong():
    """The same physical field on a coarse grid: derivatives are per mm, not per voxel."""
    geo = Geometry(spacing=(10.0, 2.0, 1.0))
    world = geo.world_points((4, 4, 4))
    u = _field(world, lambda p: 0.1 * p)  # 10% stretch in every direction
    f = deformation_gradient(u, geo)
    np.testing.assert_allclose(f[1, 1, 1], 1.1 * np.eye(3), atol=1e-12)


def test_quadratic_field_is_exact_inside_and_first_order_at_the_edges():
    geo = _oblique_geometry((6.0, 1.5, 1.2))
    shape = (4, 6, 5)
    world = geo.world_points(shape)
    c = geo.origin

    def fn(p):
        q = (p - c) / 10.0
        return np.stack([0.3 * q[..., 0] ** 2, 0.2 * q[..., 0] * q[..., 1], -0.1 * q[..., 2] ** 2 + q[..., 1]], -1)

    f = deformation_gradient(_field(world, fn), geo)
    q = (world - c) / 10.0
    du = np.zeros(shape + (3, 3))
    du[..., 0, 0] = 0.6 * q[..., 0] / 10.0
    du[..., 1, 0] = 0.2 * q[..., 1] / 10.0
    du[..., 1, 1] = 0.2 * q[..., 0] / 10.0
    du[..., 2, 2] = -0.2 * q[..., 2] / 10.0
    du[..., 2, 1] = 1.0 / 10.0
    np.testing.assert_allclose(f[1:-1, 1:-1, 1:-1], (du + np.eye(3))[1:-1, 1:-1, 1:-1], atol=1e-10)
    # at the edges: the one-sided (secant) slope = the exact derivative half a voxel inwards
    geo2 = Geometry(spacing=(6.0, 1.0, 1.0))
    z = geo2.world_points((4, 3, 3))[..., 0]  # identity direction: the slice axis is R
    u2 = np.stack([z**2 / 100.0, np.zeros_like(z), np.zeros_like(z)])
    f2 = deformation_gradient(u2, geo2)
    np.testing.assert_allclose(f2[0, 1, 1, 0, 0] - 1, (6.0**2 / 100.0) / 6.0)  # d(z^2/100)/dz at z = 3 mm
    np.testing.assert_allclose(f2[1, 1, 1, 0, 0] - 1, 2 * 6.0 / 100.0)  # exact inside


def test_rigid_rotation_has_zero_strain():
    geo = _oblique_geometry()
    shape = (5, 8, 8)
    world = geo.world_points(shape)
    q = rotation([1.0, 2.0, -0.5], 25.0)
    centre = world[2, 4, 4]
    u = _field(world, lambda p: (p - centre) @ (q - np.eye(3)).T + 3.0)
    e = green_lagrange(deformation_gradient(u, geo))
    assert np.abs(e).max() < 1e-12


def test_flipping_an_axis_with_its_affine_column_gives_the_same_gradient():
    geo = _oblique_geometry()
    shape = (5, 6, 7)
    world = geo.world_points(shape)
    u = _field(world, lambda p: np.stack([np.sin(p[..., 0] / 20), p[..., 1] * p[..., 2] / 400, np.cos(p[..., 2] / 15)], -1))
    f = deformation_gradient(u, geo)
    for axis in range(3):
        g2 = flip_geometry(geo, shape, axis)
        np.testing.assert_allclose(g2.world_points(shape), np.flip(world, axis), atol=1e-9)
        f2 = deformation_gradient(np.flip(u, axis + 1), g2)
        np.testing.assert_allclose(np.flip(f2, axis), f, atol=1e-12)


def test_two_sample_axis_and_bad_shapes():
    geo = Geometry(spacing=(5.0, 1.0, 1.0))
    world = geo.world_points((2, 3, 3))
    f = deformation_gradient(_field(world, lambda p: 0.2 * p), geo)
    np.testing.assert_allclose(f[0, 1, 1], 1.2 * np.eye(3), atol=1e-12)
    with pytest.raises(ValueError):
        deformation_gradient(np.zeros((3, 1, 4, 4)), geo)
    with pytest.raises(ValueError):
        deformation_gradient(np.zeros((2, 4, 4, 4)), geo)


# ------------------------------------------------------------------ the synthetic heart
def _heart(rv_side=1.0, angle=40.0, spacing=(8.0, 1.5, 1.5), tilt=5.0, flip=(False, False, False)):
    heart = Heart(rotation=anatomical_rotation([0.3, 1.0, 0.5], angle), centre=np.array([10.0, -20.0, 30.0]),
                  rv_side=rv_side)
    geo, shape = grid_for(heart, spacing, tilt_deg=tilt, flip=flip)
    world, h, lab = sample(heart, geo, shape)
    return heart, geo, shape, world, h, lab


@pytest.mark.parametrize("flip", [(False, False, False), (True, False, True), (False, True, False)])
def test_cardiac_frame_axis_and_orientation(flip):
    heart, geo, shape, world, h, lab = _heart(flip=flip)
    fr = cardiac_frame(lab, geo)
    true_l = heart.rotation[:, 2]
    angle = np.degrees(np.arccos(np.clip(fr.long_axis @ true_l, -1, 1)))
    assert angle < 2.0, angle  # base -> apex and close to the true axis
    assert fr.axis_source == "centres" and fr.orientation_rule == "RV area" and not fr.warnings
    # without the RV the cavity area decides, the same way
    fr2 = cardiac_frame(np.where(lab == 1, 0, lab), geo)
    assert fr2.orientation_rule == "cavity area" and fr2.long_axis @ fr.long_axis > 0.999
    # per-slice centres: one per slice with LV, on the true axis within a voxel
    lv_slices = np.nonzero(np.any((lab == 2) | (lab == 3), axis=(1, 2)))[0]
    assert np.all(np.isfinite(fr.centers[lv_slices]))
    off = heart.to_heart(fr.centers[lv_slices])[:, :2]
    assert np.abs(off).max() < 1.5


def _dilated_truncated_lv(n_slices: int = 8) -> np.ndarray:
    """Slices base (0) -> apex: a dilated LV whose cavity grows towards the last slice (the stack stops
    before the apex, like ACDC patient047) and an RV that shrinks from the base and ends."""
    yy, xx = np.mgrid[:64, :64]
    lab = np.zeros((n_slices, 64, 64), np.uint8)
    for k in range(n_slices):
        r_cav = 12.0 + 0.4 * k
        d = np.hypot(yy - 32, xx - 36)
        lab[k][d < r_cav + 4] = 2
        lab[k][d < r_cav] = 3
        rv_r = 10.0 * (1 - k / (n_slices - 2))
        if rv_r > 0:
            lab[k][(np.hypot(yy - 32, xx - 12) < rv_r) & (lab[k] == 0)] = 1
    return lab


def test_base_and_apex_from_the_rv_when_the_cavity_grows_towards_the_apex():
    lab = _dilated_truncated_lv()
    geo = Geometry(spacing=(10.0, 1.5, 1.5))
    fr = cardiac_frame(lab, geo)
    assert fr.orientation_rule == "RV area"
    assert fr.long_axis @ geo.direction[:, 0] > 0.99  # base at slice 0, apex towards the last slice
    assert any("point opposite ways" in w for w in fr.warnings)  # the two rules disagree: said
    # the cavity-area rule alone gets this heart upside down (why the RV comes first)
    fr_cav = cardiac_frame(np.where(lab == 1, 0, lab), geo)
    assert fr_cav.orientation_rule == "cavity area" and fr_cav.long_axis @ geo.direction[:, 0] < -0.99


def test_cardiac_frame_with_two_slices_falls_back_to_slice_normal():
    heart, geo, shape, world, h, lab = _heart()
    sub = lab[3:5]
    fr = cardiac_frame(sub, geo)
    assert fr.axis_source == "slice normal" and fr.warnings
    assert abs(abs(fr.long_axis @ geo.direction[:, 0]) - 1) < 1e-12


def _apply(world, heart, fn_heart):
    """Displacement (3, Z, Y, X) in world from a function of heart coordinates returning heart components."""
    h = heart.to_heart(world)
    return np.moveaxis(fn_heart(h) @ heart.rotation.T, -1, 0)


def test_in_plane_expansion_and_longitudinal_shortening_are_exact():
    heart, geo, shape, world, h, lab = _heart()
    fr = cardiac_frame(lab, geo)
    myo = lab == 2
    eps, lam = 0.12, -0.08
    u1 = _apply(world, heart, lambda q: np.stack([eps * q[..., 0], eps * q[..., 1], 0 * q[..., 2]], -1))
    u2 = _apply(world, heart, lambda q: np.stack([0 * q[..., 0], 0 * q[..., 1], lam * q[..., 2]], -1))
    comps = strain_components(np.stack([np.zeros_like(u1), u1, u2]).astype(np.float32), geo, fr, myo)
    n = int(myo.sum())
    assert all(v.shape == (3, n) for v in comps.values())
    e_in = 100 * (eps + eps**2 / 2)
    e_l = 100 * (lam + lam**2 / 2)
    # the engine's long axis is within 2 degrees of the true one: sin^2(2 deg) * 12.7% < 0.02 points
    for name in comps:
        np.testing.assert_allclose(comps[name][0], 0, atol=1e-4)
    np.testing.assert_allclose(comps["radial"][1], e_in, atol=0.05)
    np.testing.assert_allclose(comps["circumferential"][1], e_in, atol=0.05)
    np.testing.assert_allclose(comps["longitudinal"][1], 0, atol=0.05)
    np.testing.assert_allclose(comps["longitudinal"][2], e_l, atol=0.05)
    np.testing.assert_allclose(comps["radial"][2], 0, atol=0.05)
    g = global_curves(comps)
    assert g["radial"].shape == (3,) and abs(g["radial"][1] - e_in) < 0.05


def test_area_preserving_wall_thickening_matches_the_analytic_strain():
    """In-plane incompressible contraction: rho' = sqrt(rho^2 - k); lambda_c = rho'/rho, lambda_r = 1/lambda_c."""
    heart, geo, shape, world, h, lab = _heart(spacing=(8.0, 1.2, 1.2))
    fr = cardiac_frame(lab, geo)
    myo = lab == 2
    k = 120.0  # mm^2; the cavity stays open

    def fn(q):
        rho = np.hypot(q[..., 0], q[..., 1])
        scale = np.sqrt(np.clip(rho**2 - k, 1.0, None)) / np.maximum(rho, 1e-6)
        return np.stack([(scale - 1) * q[..., 0], (scale - 1) * q[..., 1], 0 * q[..., 2]], -1)

    u = _apply(world, heart, fn)
    comps = strain_components(u[None].astype(np.float32), geo, fr, myo)
    q = h[myo]
    rho = np.hypot(q[:, 0], q[:, 1])
    ok = rho**2 > 2.5 * k  # lambda_c > 0.77: away from the near-singular centre of the apex
    assert ok.mean() > 0.75
    lam_c = np.sqrt(np.where(ok, rho**2 - k, 1.0)) / rho
    ecc = 100 * (lam_c**2 - 1) / 2
    err = 100 * (1 / lam_c**2 - 1) / 2
    assert np.abs(comps["circumferential"][0][ok] - ecc[ok]).max() < 0.6
    assert np.abs(comps["radial"][0][ok] - err[ok]).max() < 1.5
    assert abs(comps["circumferential"][0][ok].mean() - ecc[ok].mean()) < 0.1
    assert abs(comps["radial"][0][ok].mean() - err[ok].mean()) < 0.3
    assert comps["radial"][0][ok].mean() > 10 and comps["circumferential"][0][ok].mean() < -10


def test_crop_gives_the_same_values_as_the_whole_volume():
    heart, geo, shape, world, h, lab = _heart()
    fr = cardiac_frame(lab, geo)
    myo = lab == 2
    u = np.moveaxis(np.stack([np.sin(world[..., 0] / 13), np.cos(world[..., 1] / 9), world[..., 2] ** 2 / 300], -1), -1, 0)
    comps = strain_components(u[None], geo, fr, myo)
    e = green_lagrange(deformation_gradient(u, geo))[myo]
    kk, jj, ii = np.nonzero(myo)
    r, c, l_all = fr.directions(world[myo], kk)
    np.testing.assert_allclose(comps["radial"][0], 100 * np.einsum("ni,nij,nj->n", r, e, r), atol=1e-9)
    np.testing.assert_allclose(comps["longitudinal"][0], 100 * np.einsum("ni,nij,nj->n", l_all, e, l_all), atol=1e-9)


def test_rigid_motion_of_the_heart_has_zero_strain_components():
    heart, geo, shape, world, h, lab = _heart()
    fr = cardiac_frame(lab, geo)
    q = rotation([0.1, 0.3, 1.0], 15.0)
    u = np.moveaxis((world - world.mean(axis=(0, 1, 2))) @ (q - np.eye(3)).T + [2.0, -1.0, 4.0], -1, 0)
    comps = strain_components(u[None], geo, fr, lab == 2)
    for v in comps.values():
        assert np.abs(v).max() < 1e-9


def test_strain_rate_units_and_missing_timing():
    t = np.arange(0, 800, 40.0)
    curve = 20 * np.sin(2 * np.pi * t / 800)  # percent
    rate = strain_rate(curve, t)
    expected = 0.2 * 2 * np.pi / 0.8 * np.cos(2 * np.pi * t / 800)  # 1/s
    # one cycle that repeats: central differences at every frame, the first and last included
    np.testing.assert_allclose(rate, expected, atol=0.02 * np.abs(expected).max())
    # the same cycle stored from another frame gives the same rates, shifted (ED near the end of a cine)
    np.testing.assert_allclose(strain_rate(np.roll(curve, 7), t), np.roll(rate, 7), atol=1e-12)
    # a prospectively triggered cine (25 frames of 32 ms: 800 ms of a 1000 ms RR): with the RR known the
    # last frame's neighbour is the next cycle's first frame 232 ms later, not 32 ms
    tp = np.arange(25) * 32.0
    yp = 20 * np.sin(2 * np.pi * tp / 1000)
    true = 0.2 * 2 * np.pi / 1.0 * np.cos(2 * np.pi * tp / 1000)
    with_rr, without = strain_rate(yp, tp, rr_ms=1000.0), strain_rate(yp, tp)
    assert abs(with_rr[-1] - true[-1]) < 0.25 * abs(true[-1]) < abs(without[-1] - true[-1])
    np.testing.assert_allclose(strain_rate(yp, tp, rr_ms=500.0), without)  # an RR shorter than the frames: not used
    assert strain_rate(curve, t * np.nan) is None
    assert strain_rate(curve[:2], t[:2]) is None
    assert strain_rate(curve, t[::-1]) is None


def test_frame_ranges_and_peak_values():
    assert systole_frames(0, 3, 10).tolist() == [0, 1, 2, 3]
    assert systole_frames(8, 2, 10).tolist() == [8, 9, 0, 1, 2]
    assert early_diastole_frames(0, 10, 30).tolist() == list(range(11, 21))
    assert early_diastole_frames(0, 9, 30).tolist() == list(range(10, 21))  # ES + ceil(21/2) = 20
    assert early_diastole_frames(0, 9, 10).tolist() == []
    curves = {"radial": np.array([0.0, 10, 30, 40, 35, 20, 5, 0])}
    rates = {"radial": np.array([1.0, 2.5, -3.0, 0.5, -2.0, -4.0, -1.0, 6.0])}
    p = peak_values(curves, rates, ed=0, es=3)
    assert p["ess"]["radial"] == 40.0
    assert p["srs"]["radial"] == -3.0  # frames 0..3, largest magnitude, signed
    assert p["sre"]["radial"] == -4.0  # frames 4, 5, 6 (up to 3 + ceil(5/2))
    p2 = peak_values(curves, None, ed=0, es=3)
    assert p2["srs"]["radial"] is None and p2["sre"]["radial"] is None and p2["ess"]["radial"] == 40.0
