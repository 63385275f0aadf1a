"""AHA 17 segments: signed angles from the RV insertion points, levels along the long axis, invariance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from _heart import (APEX_PRIOR_RAS, Heart, anatomical_rotation, flip_geometry, grid_for, header_without_orientation,
                    rotation, sample)
from deepstrain.aha import SEGMENT_NAMES, aha_segments, segment_curves, segment_of, septal_direction
from deepstrain.cine import Geometry
from deepstrain.strain import cardiac_frame


def _heart(rv_side=1.0, axis=(0.3, 1.0, 0.5), angle=40.0, spacing=(8.0, 1.5, 1.5), tilt=5.0, flip=(False,) * 3,
           turn=None):
    """A heart placed as in a patient (apex left-anterior-inferior); ``turn``: a world rotation after that."""
    rot = anatomical_rotation(axis, angle)
    heart = Heart(rotation=rot if turn is None else turn @ rot, centre=np.array([10.0, -20.0, 30.0]), rv_side=rv_side)
    geo, shape = grid_for(heart, spacing, tilt_deg=tilt, flip=flip)
    world, h, lab = sample(heart, geo, shape)
    return heart, geo, shape, h, lab


def _expected(h, lab, rv_side, slice_axis_reversed=False):
    """Segments from the true heart coordinates; ``safe`` marks voxels away from any boundary."""
    myo = lab == 2
    x, y, z = h[..., 0], h[..., 1], h[..., 2]
    phi = np.degrees(np.arctan2(rv_side * y, rv_side * x))  # s_dir = rv_side * x, l x s_dir = rv_side * y
    zc = z[lab == 3]
    f = (z - zc.min()) / (zc.max() - zc.min())
    level = np.where(f < 1 / 3, 0, np.where(f < 2 / 3, 1, 2))
    seg = segment_of(phi, level)
    has_cav = np.any(lab == 3, axis=(1, 2))
    ks = np.arange(lab.shape[0])
    last = ks[has_cav].min() if slice_axis_reversed else ks[has_cav].max()
    beyond = ks < last if slice_axis_reversed else ks > last
    cap = beyond & ~has_cav
    seg = np.where(cap[:, None, None], 17, seg)
    b6 = np.arange(-180, 181, 60)
    b4 = np.array([-135, -45, 45, 135])
    d6 = np.min(np.abs(phi[..., None] - b6), axis=-1)
    d4 = np.min(np.abs(phi[..., None] - b4), axis=-1)
    dlev = np.minimum(np.abs(f - 1 / 3), np.abs(f - 2 / 3))
    safe = myo & (dlev > 0.04) & (np.where(level == 2, d4, d6) > 5.0)
    safe = safe | (myo & cap[:, None, None])
    return np.where(myo, seg, 0), safe


@pytest.mark.parametrize("rv_side", [1.0, -1.0])
def test_segments_match_the_anatomy_whichever_side_the_rv_is(rv_side):
    heart, geo, shape, h, lab = _heart(rv_side=rv_side)
    seg = aha_segments(lab, geo)
    assert seg.dtype == np.int8 and seg.shape == lab.shape
    assert np.all((seg > 0) == (lab == 2))
    exp, safe = _expected(h, lab, rv_side)
    assert safe.sum() > 0.6 * (lab == 2).sum()
    np.testing.assert_array_equal(seg[safe], exp[safe])
    assert set(np.unique(seg[seg > 0]).tolist()) == set(range(1, 18))
    # anterior (1) at negative phi: the RV side flips which true direction is anterior
    s_dir, ins = septal_direction(lab, geo, cardiac_frame(lab, geo))
    true_s = rv_side * heart.rotation[:, 0]
    assert np.degrees(np.arccos(np.clip(s_dir @ true_s, -1, 1))) < 3.0


@pytest.mark.parametrize("flip", [(True, False, False), (False, True, False), (False, False, True), (True, True, True)])
def test_flipping_array_axes_with_the_affine_keeps_every_voxel_segment(flip):
    heart, geo, shape, h, lab = _heart()
    seg = aha_segments(lab, geo)
    g2 = geo
    lab2, seg_back = lab, None
    for ax, f in enumerate(flip):
        if f:
            g2 = flip_geometry(g2, shape, ax)
            lab2 = np.flip(lab2, ax)
    seg2 = aha_segments(np.ascontiguousarray(lab2), g2)
    seg_back = seg2
    for ax, f in enumerate(flip):
        if f:
            seg_back = np.flip(seg_back, ax)
    np.testing.assert_array_equal(seg_back, seg)


@pytest.mark.parametrize("axis,angle,tilt", [((0.5, 0.2, -1), -70.0, 0.0), ((0, 0, 1), 90.0, 5.0),
                                              ((0.3, 1.0, 0.5), 40.0, 0.0)])
def test_spacing_rounded_by_the_affine_keeps_every_voxel_segment(axis, angle, tilt):
    # 1.5 mm pixels put whole rings of voxels exactly 3 mm (the contact distance) from the RV;
    # the spacing read back from these affines is 1.5000000000000002 mm (as in Slicer)
    heart, geo, shape, h, lab = _heart(axis=axis, angle=angle, tilt=tilt)
    g2 = Geometry.from_nifti_affine(geo.to_nifti_affine())
    assert g2.spacing.max() > 1.5 and not np.array_equal(g2.spacing, geo.spacing)
    np.testing.assert_array_equal(aha_segments(lab, g2), aha_segments(lab, geo))


def test_transposed_rows_and_columns_keep_every_voxel_segment():
    heart, geo, shape, h, lab = _heart()
    seg = aha_segments(lab, geo)
    g2 = Geometry(geo.spacing[[0, 2, 1]], geo.origin, geo.direction[:, [0, 2, 1]])
    seg2 = aha_segments(np.ascontiguousarray(lab.transpose(0, 2, 1)), g2)
    np.testing.assert_array_equal(seg2.transpose(0, 2, 1), seg)


@pytest.mark.parametrize("angle", [90.0, 150.0, -70.0])
def test_rotating_the_heart_in_the_world_keeps_every_voxel_segment(angle):
    """Turned about the left-anterior-inferior direction, the apex still points like a patient's."""
    heart, geo, shape, h, lab = _heart()
    seg = aha_segments(lab, geo)
    heart2, geo2, shape2, h2, lab2 = _heart(turn=rotation(APEX_PRIOR_RAS, angle))
    assert shape2 == shape
    same = lab2 == lab  # the grid moves with the heart: the same voxels, up to rounding at the boundary
    assert same.mean() > 0.999
    seg2 = aha_segments(lab2, geo2)
    both = same & (lab == 2)
    assert np.mean(seg2[both] == seg[both]) > 0.995


def test_other_spacing_and_tilt_still_match_the_anatomy():
    heart, geo, shape, h, lab = _heart(spacing=(10.0, 1.9, 1.3), tilt=9.0, flip=(True, False, True))
    seg = aha_segments(lab, geo)
    exp, safe = _expected(h, lab, 1.0, slice_axis_reversed=True)
    # with a 9 degree tilt the slices at the base and apex cut the wall obliquely and their LV
    # centroid (the spec's radial origin) moves off the true axis: compare the full slices only
    lv_count = np.count_nonzero((lab == 2) | (lab == 3), axis=(1, 2))
    full = lv_count > 0.4 * lv_count.max()
    safe &= full[:, None, None]
    assert safe.sum() > 0.5 * (lab == 2).sum()
    np.testing.assert_array_equal(seg[safe], exp[safe])


def test_segment_of_boundaries():
    phi = np.array([-180.0, -120.0, -60.0, -0.001, 0.0, 60.0, 120.0, 180.0])
    np.testing.assert_array_equal(segment_of(phi, np.zeros(8, int)), [6, 1, 2, 2, 3, 4, 5, 5])
    np.testing.assert_array_equal(segment_of(phi, np.ones(8, int)), [12, 7, 8, 8, 9, 10, 11, 11])
    phi4 = np.array([-180.0, -135.0, -45.0, 0.0, 45.0, 134.9, 135.0, 180.0])
    np.testing.assert_array_equal(segment_of(phi4, np.full(8, 2)), [16, 13, 14, 14, 15, 15, 16, 16])


def test_names_and_segment_curves():
    assert sorted(SEGMENT_NAMES) == list(range(1, 18))
    assert SEGMENT_NAMES[1] == "basal anterior" and SEGMENT_NAMES[17] == "apex"
    values = np.array([[1.0, 2.0, 3.0, np.nan], [4.0, 5.0, 6.0, 1.0]])
    ids = np.array([1, 1, 17, 2])
    c = segment_curves(values, ids)
    np.testing.assert_allclose(c[1], [1.5, 4.5])
    np.testing.assert_allclose(c[17], [3.0, 6.0])
    assert c[2] is None and c[5] is None  # the only voxel of segment 2 has NaN; 5 is empty


def test_no_rv_contact_is_an_error():
    heart, geo, shape, h, lab = _heart()
    lab = lab.copy()
    lab[lab == 1] = 0
    with pytest.raises(ValueError, match="RV"):
        aha_segments(lab, geo)


def _anterior_insertion_point(heart, lab, geo, rv_side: float, turn_deg: float = 0.0) -> np.ndarray:
    """A point 25 mm from a mid LV centre at phi = -60 deg (+ ``turn_deg``) of the true septal direction."""
    frame = cardiac_frame(lab, geo)
    l_vec = frame.long_axis
    s_true = rv_side * heart.rotation[:, 0]
    s_true = s_true - (s_true @ l_vec) * l_vec
    s_true /= np.linalg.norm(s_true)
    a = np.radians(-60.0 + turn_deg)
    d = np.cos(a) * s_true + np.sin(a) * np.cross(l_vec, s_true)
    ks = np.nonzero(np.all(np.isfinite(frame.centers), axis=1))[0]
    return frame.centers[ks[ks.size // 2]] + 25.0 * d


@pytest.mark.parametrize("rv_side", [1.0, -1.0])
def test_a_given_anterior_insertion_point_orients_the_segments(rv_side):
    """The true anterior RV insertion point gives the anatomical segments, even without any RV
    label; a point 60 degrees further round turns every segment by one sector; a point on the
    long axis is refused."""
    heart, geo, shape, h, lab = _heart(rv_side=rv_side)
    exp, safe = _expected(h, lab, rv_side)
    point = _anterior_insertion_point(heart, lab, geo, rv_side)
    np.testing.assert_array_equal(aha_segments(lab, geo, rv_insertion_ras=point)[safe], exp[safe])
    no_rv = np.where(lab == 1, 0, lab)
    with pytest.raises(ValueError, match="no RV cavity"):
        aha_segments(no_rv, geo)
    np.testing.assert_array_equal(aha_segments(no_rv, geo, rv_insertion_ras=point)[safe], exp[safe])
    turned = aha_segments(lab, geo, rv_insertion_ras=_anterior_insertion_point(heart, lab, geo, rv_side, 60.0))
    basal = safe & (exp >= 1) & (exp <= 6)
    previous = {1: 6, 2: 1, 3: 2, 4: 3, 5: 4, 6: 5}  # septum turned by +60 deg: each voxel one sector back
    np.testing.assert_array_equal(turned[basal], np.vectorize(previous.get)(exp[basal]))
    frame = cardiac_frame(lab, geo)
    on_axis = frame.centers[np.nonzero(np.all(np.isfinite(frame.centers), axis=1))[0][3]]
    with pytest.raises(ValueError, match="from the LV centre"):
        aha_segments(lab, geo, rv_insertion_ras=on_axis)


@pytest.mark.parametrize("row_sign", [-1.0, 1.0])
def test_a_header_without_orientation_gives_the_patients_segments(row_sign):
    """A short-axis stack in the standard layout (RV on the left, anterior at the top, slices base to
    apex) under a header with no scanner orientation (axes along R, A, S; the apex superior), as
    ACDC's frames (rows posterior: the patient's mirror image) and the acdc_cine_crop files (rows
    anterior: not a mirror image): the segments are the patient's, voxel for voxel, and a warning
    says what was taken."""
    heart, geo, shape, h, lab = _heart(tilt=0.0, flip=(False, True, True))
    cols = np.indices(lab.shape)[2]
    assert cols[lab == 1].mean() < cols[(lab == 2) | (lab == 3)].mean()  # the RV on the left
    seg = aha_segments(lab, geo)
    exp, safe = _expected(h, lab, 1.0)
    np.testing.assert_array_equal(seg[safe], exp[safe])
    rows = np.indices(lab.shape)[1]
    assert rows[seg == 7].mean() < rows[seg == 10].mean()  # anterior at the top
    pseudo = header_without_orientation(geo, row_sign)
    frame = cardiac_frame(lab, pseudo)
    assert frame.mirrored == (row_sign < 0) and "standard short-axis layout" in frame.warnings[-1]
    assert "if anterior is at the bottom of this image" in frame.warnings[-1]  # the assumption is said
    np.testing.assert_array_equal(aha_segments(lab, pseudo, frame), seg)
    # with the RV on the right the layout is not the standard one: said, and the file's world followed
    frame_r = cardiac_frame(np.ascontiguousarray(lab[:, :, ::-1]), pseudo)
    assert not frame_r.mirrored and "cannot be told" in frame_r.warnings[-1]
    # an oblique header whose apex points against anatomy: said, the file's world followed
    tilted = Geometry(geo.spacing, geo.origin, rotation([1.0, 0.3, 0.2], 20.0) @ pseudo.direction)
    frame_o = cardiac_frame(lab, tilted)
    assert not frame_o.mirrored and "not the patient's" in frame_o.warnings[-1]


ACDC = Path(__file__).resolve().parents[2] / "shared" / "data" / "acdc" / "training"


@pytest.mark.skipif(not (ACDC / "patient001").is_dir(), reason="ACDC data not found beside the project")
@pytest.mark.parametrize("patient", ["patient001", "patient061", "patient083"])
def test_acdc_anterior_segments_face_the_top_of_the_image(patient):
    """ACDC's images show the patient with anterior (the chest wall, the lungs) at the top (row 0)
    and the RV on the left; the frame files' header makes that world a mirror image (slices base to
    apex along +S, rows posterior), the header of most acdc_cine_crop 4D files (rows anterior) does
    not (patient083's crop has the frame files' header). Segments 1 and 7 (anterior) lie above 4
    and 10 (inferior) in both, on the same voxels."""
    import warnings

    from deepstrain.io import load_cine

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no timing in ACDC, lost spacing in some crops
        cine = load_cine(ACDC / patient)
        crop = load_cine(ACDC.parents[1] / "acdc_cine_crop" / patient / f"{patient}_4d.nii.gz")
    lab = cine.labels[cine.ed]
    frame = cardiac_frame(lab, cine.geometry)
    assert frame.mirrored
    seg = aha_segments(lab, cine.geometry, frame)
    row = np.indices(seg.shape)[1]
    for anterior, inferior in ((1, 4), (7, 10)):
        assert row[seg == anterior].mean() + 10 < row[seg == inferior].mean()
    lab_crop = lab[1:1 + crop.shape3d[0], 85:180, 50:150]  # the crop of acdc_cine_crop's README
    seg_crop = aha_segments(lab_crop, crop.geometry)
    assert np.mean(seg_crop == seg[1:1 + crop.shape3d[0], 85:180, 50:150]) > 0.95
