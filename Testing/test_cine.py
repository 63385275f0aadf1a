import numpy as np
import pytest

from deepstrain.cine import Cine, Geometry


def _oblique() -> np.ndarray:
    a = np.deg2rad(30.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    b = np.deg2rad(-20.0)
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rz @ rx


def test_world_points_follow_origin_direction_spacing():
    g = Geometry(spacing=(8.0, 1.5, 1.25), origin=(10.0, -20.0, 5.0), direction=_oblique())
    pts = g.world_points((3, 4, 5))
    k, j, i = 2, 3, 4
    expected = g.origin + g.direction @ (np.array([k, j, i]) * g.spacing)
    np.testing.assert_allclose(pts[k, j, i], expected)
    # neighbouring slices are one slice spacing apart along the slice direction
    np.testing.assert_allclose(np.linalg.norm(pts[1, 0, 0] - pts[0, 0, 0]), 8.0)
    np.testing.assert_allclose(pts[0, 0, 1] - pts[0, 0, 0], 1.25 * g.direction[:, 2])


def test_nifti_affine_round_trip_and_axis_order():
    g = Geometry(spacing=(8.0, 1.5, 1.25), origin=(1.0, 2.0, 3.0), direction=_oblique())
    a = g.to_nifti_affine()
    # NIfTI i is the column axis: its column of the affine is the column direction x column spacing
    np.testing.assert_allclose(a[:3, 0], 1.25 * g.direction[:, 2])
    np.testing.assert_allclose(a[:3, 2], 8.0 * g.direction[:, 0])
    back = Geometry.from_nifti_affine(a)
    np.testing.assert_allclose(back.spacing, g.spacing)
    np.testing.assert_allclose(back.direction, g.direction, atol=1e-12)
    np.testing.assert_allclose(back.origin, g.origin)


def test_acdc_quirk_zooms_override_affine_scale():
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # sform without voxel size
    g = Geometry.from_nifti_affine(affine, zooms=(1.5625, 1.5625, 10.0))
    np.testing.assert_allclose(g.spacing, (10.0, 1.5625, 1.5625))
    # columns are the RAS directions of (slice, row, column) = (k, j, i)
    np.testing.assert_allclose(g.direction, [[0, 0, -1], [0, -1, 0], [1, 0, 0]])


@pytest.mark.parametrize("spacing", [(0, 1, 1), (1, -1, 1), (np.nan, 1, 1)])
def test_bad_spacing_is_refused(spacing):
    with pytest.raises(ValueError, match="spacing"):
        Geometry(spacing=spacing)


def test_cine_checks_shape_and_times():
    g = Geometry(spacing=(8, 1.5, 1.5))
    c = Cine(np.zeros((4, 2, 3, 3), np.float32), g, times_ms=np.arange(4) * 40.0)
    assert c.n_frames == 4 and c.shape3d == (2, 3, 3) and c.has_timing
    assert list(c.frame_numbers) == [0, 1, 2, 3]
    with pytest.raises(ValueError):
        Cine(np.zeros((2, 3, 3), np.float32), g, times_ms=np.zeros(2))
    with pytest.raises(ValueError):
        Cine(np.zeros((4, 2, 3, 3), np.float32), g, times_ms=np.zeros(3))
    assert not Cine(np.zeros((2, 1, 2, 2)), g, times_ms=[np.nan, np.nan]).has_timing


def test_reversed_axes_finds_the_same_voxels_stored_the_other_way():
    from _heart import flip_geometry

    from deepstrain.cine import reversed_axes

    g = Geometry([8.0, 1.5, 1.4], [10.0, -20.0, 30.0], np.linalg.qr(np.array([[1, .2, .1], [.1, 1, .3], [.2, .1, 1.]]))[0])
    shape = (6, 9, 7)
    assert reversed_axes(g, g, shape) == ()
    for axes in ((0,), (0, 2), (1,)):
        h = g
        for a in axes:
            h = flip_geometry(h, shape, a)
        assert reversed_axes(g, h, shape) == axes
        data = np.random.default_rng(0).random(shape)
        back = np.flip(data, axis=list(axes))  # the src array indexed as on dst
        k, j, i = 2, 5, 3
        src_index = [k, j, i]
        for a in axes:
            src_index[a] = shape[a] - 1 - src_index[a]
        assert back[k, j, i] == data[tuple(src_index)]
        np.testing.assert_allclose(h.world_points(shape)[k, j, i], g.world_points(shape)[tuple(src_index)], atol=1e-9)
    shifted = Geometry(g.spacing, g.origin + 0.5, g.direction)
    with pytest.raises(ValueError, match="mm apart"):
        reversed_axes(g, shifted, shape)
    with pytest.raises(ValueError, match="more than the order"):
        reversed_axes(g, Geometry([8.0, 1.5, 1.5], g.origin, g.direction), shape)
