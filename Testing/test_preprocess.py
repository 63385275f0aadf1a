"""Tests of deepstrain.preprocess: crop geometry, round trips and displacement units/orientation."""
from __future__ import annotations

import numpy as np
import pytest

from deepstrain.cine import Geometry
from deepstrain.preprocess import (
    CROP_SIZE,
    crop_image,
    crop_labels,
    crop_transform,
    displacement_to_input,
    full_view_transform,
    normalize_intensity,
    uncrop,
    uncrop_probabilities,
    world_to_voxel,
)


def _disc_labels(shape=(3, 90, 110), centre=(40.0, 60.0), spacing=(8.0, 1.6, 1.4)):
    z, y, x = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    rmm = np.hypot((y - centre[0]) * spacing[1], (x - centre[1]) * spacing[2])
    lab = np.zeros(shape, np.uint8)
    lab[rmm < 35] = 2
    lab[rmm < 25] = 3
    lab[(np.abs((y - centre[0]) * spacing[1]) < 15) & ((x - centre[1]) * spacing[2] > 38) & ((x - centre[1]) * spacing[2] < 60)] = 1
    return lab


def test_crop_centre_lands_on_centre_pixel():
    t = crop_transform((4, 100, 120), (8.0, 1.0, 2.0), (30.5, 70.0))
    r, c = t.crop_to_input(np.array([(CROP_SIZE - 1) / 2]), np.array([(CROP_SIZE - 1) / 2]))
    assert r[0] == pytest.approx(30.5) and c[0] == pytest.approx(70.0)
    assert t.scale == pytest.approx((1.25, 0.625))
    rr, cc = t.input_to_crop(*t.crop_to_input(np.array([3.0]), np.array([7.0])))
    assert rr[0] == pytest.approx(3.0) and cc[0] == pytest.approx(7.0)


def test_label_round_trip_within_one_voxel():
    spacing = (8.0, 1.6, 1.4)
    lab = _disc_labels(spacing=spacing)
    t = crop_transform(lab.shape, spacing, (40.0, 60.0))
    cropped = crop_labels(lab, t)
    assert cropped.shape == (3, CROP_SIZE, CROP_SIZE)
    # LV cavity area is preserved in mm^2 (within 3 %)
    a_in = (lab == 3).sum() * 1.6 * 1.4
    a_crop = (cropped == 3).sum() * 1.25**2
    assert abs(a_crop - a_in) / a_in < 0.03
    probs = np.stack([(cropped == k).astype(np.float32) for k in range(4)])
    back = uncrop_probabilities(probs, t)
    assert back.shape == lab.shape
    # every mismatch lies within one voxel of a boundary of the original
    from scipy import ndimage

    boundary = np.zeros_like(lab, bool)
    for k in range(4):
        m = lab == k
        boundary |= ndimage.binary_dilation(m, np.ones((1, 3, 3))) & ~m
        boundary |= m & ~ndimage.binary_erosion(m, np.ones((1, 3, 3)))
    wrong = back != lab
    assert wrong.sum() < 0.03 * lab.size
    assert not np.any(wrong & ~ndimage.binary_dilation(boundary, np.ones((1, 3, 3))))


def test_crop_image_and_uncrop_linear():
    spacing = (10.0, 1.25, 1.25)
    yy, xx = np.meshgrid(np.arange(160), np.arange(150), indexing="ij")
    img = np.broadcast_to((0.3 * yy + 0.7 * xx).astype(np.float32), (2, 160, 150)).copy()
    t = crop_transform(img.shape, spacing, (80.0, 70.0))
    c = crop_image(img, t)
    # same pixel size: an exact shift of a linear ramp
    assert c[0, 64, 64] == pytest.approx(0.3 * 80.5 + 0.7 * 70.5, abs=1e-3)  # pixel 64 is half a pixel past the centre
    back = uncrop(c, t)
    inside = (np.abs(yy - 80) < 60) & (np.abs(xx - 70) < 60)
    assert np.allclose(back[0][inside], img[0][inside], atol=1e-3)


def test_full_view_covers_input():
    t = full_view_transform((5, 216, 256), (10.0, 1.5625, 1.5625), 2.5)
    assert t.size[0] % 16 == 0 and t.size[1] % 16 == 0
    assert t.size[0] * 2.5 >= 216 * 1.5625 and t.size[1] * 2.5 >= 256 * 1.5625


def _oblique_geometry(spacing):
    a, b = np.deg2rad(30.0), np.deg2rad(-20.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return Geometry(spacing=spacing, origin=(10.0, -20.0, 30.0), direction=rz @ rx)


def test_displacement_units_and_orientation_oblique():
    spacing = (7.0, 1.6, 0.9)
    g = _oblique_geometry(spacing)
    shape = (4, 100, 140)
    t = crop_transform(shape, spacing, (50.0, 70.0))
    disp = np.zeros((2, 3) + t.crop_shape, np.float32)
    disp[1, 0] = 0.5  # half a slice
    disp[1, 1] = 2.0  # two crop pixels along rows
    disp[1, 2] = -1.0  # one crop pixel against columns
    out = displacement_to_input(disp, t, g)
    assert out.shape == (2, 3) + shape
    expected_axes_mm = np.array([0.5 * 7.0, 2.0 * 1.25, -1.0 * 1.25])
    expected = g.direction @ expected_axes_mm
    assert np.allclose(out[1, :, 2, 50, 70], expected, atol=1e-4)
    assert np.allclose(out[0], 0)
    # the RAS vector, mapped back to array axes, moves the voxel by the right number of input voxels
    steps = world_to_voxel(g.origin + out[1, :, 2, 50, 70], g)
    assert np.allclose(steps, expected_axes_mm / np.array(spacing), atol=1e-4)
    # outside the crop the displacement is zero
    far = t.input_to_crop(np.array([0.0]), np.array([0.0]))
    if far[0][0] < -1 or far[1][0] < -1:
        assert np.allclose(out[1, :, 0, 0, 0], 0)


def test_world_to_voxel_inverts_geometry():
    g = _oblique_geometry((7.0, 1.6, 0.9))
    p = g.world_points((3, 4, 5))[2, 3, 1]
    assert np.allclose(world_to_voxel(p, g), [2, 3, 1])


def test_normalize_intensity_per_frame_deterministic():
    rng = np.random.default_rng(0)
    x = rng.normal(100, 20, size=(2, 3, 20, 20)).astype(np.float32)
    x[1] = 5 * x[0] + 3
    n = normalize_intensity(x)
    assert n.min() >= 0 and n.max() <= 1
    assert np.allclose(n[0], n[1], atol=1e-5)
    assert np.array_equal(n, normalize_intensity(x))
    assert np.all(normalize_intensity(np.ones((2, 3, 3))) == 0)


def test_normalize_intensity_ignores_zero_padding():
    # a frame padded with zeros (a larger field of view) keeps its normalised values
    rng = np.random.default_rng(1)
    x = rng.gamma(2.0, 50.0, size=(2, 3, 20, 24)).astype(np.float32) + 1.0
    padded = np.zeros((2, 3, 60, 64), np.float32)
    padded[..., 20:40, 20:44] = x
    assert np.array_equal(normalize_intensity(padded)[..., 20:40, 20:44], normalize_intensity(x))
    assert np.all(normalize_intensity(padded)[..., :20, :] == 0)
    # all zero: zeros, not NaN
    assert np.all(normalize_intensity(np.zeros((2, 3, 4, 4))) == 0)
    # a mask-like frame (one non-zero value): over all voxels, as before (not a blank input)
    mask = np.zeros((1, 2, 10, 10), np.float32)
    mask[..., 3:7, 3:7] = 100.0
    assert np.array_equal(normalize_intensity(mask), mask / 100.0)
    nearly_full = np.full((1, 2, 30, 30), 100.0, np.float32)
    nearly_full[0, 0, 0, 0] = 0.0  # one zero voxel in 1800
    assert normalize_intensity(nearly_full)[0, 1].min() == 1.0
    one_voxel = np.zeros((1, 2, 30, 30), np.float32)
    one_voxel[0, 1, 5, 5] = 7.0
    assert normalize_intensity(one_voxel).max() == 1.0


def test_separable_sampling_equals_map_coordinates():
    from scipy import ndimage

    from deepstrain import preprocess as pp

    rng = np.random.default_rng(4)
    img = rng.random((2, 3, 70, 60)).astype(np.float32)
    t = pp.crop_transform((3, 70, 60), (8.0, 1.7, 1.3), (30.2, 41.9), 64)  # partly outside the image
    rows, cols = pp._crop_grid(t)
    got = pp._sample_slices(img, rows, cols, order=1, cval=-1.0)
    ref = np.stack([[ndimage.map_coordinates(s, np.stack([rows, cols]), order=1, mode="constant", cval=-1.0,
                                             prefilter=False) for s in v] for v in img])
    assert got.shape == (2, 3, 64, 64)
    assert np.allclose(got, ref, atol=1e-5)
    assert (got == -1.0).any()  # some of the crop lies outside
    with pytest.raises(ValueError):
        pp._sample_slices(img, rows.T, cols, order=1, cval=0.0)  # not a rows x columns grid
