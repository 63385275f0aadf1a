"""Automatic quality checks: each check fires on the pattern it looks for, and not on a clean study."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from deepstrain import pipeline, quality
from deepstrain.cine import Cine, Geometry
from deepstrain.strain import cardiac_frame
from deepstrain.volumetrics import label_volumes_ml, slice_volumes_ml, volumetrics

GEO = Geometry(spacing=(10.0, 1.5, 1.5), origin=(-40.0, 20.0, 5.0))
YY, XX = np.mgrid[:72, :72]


def _slice(r_cav: float, wall: float, rv_r: float, centre=(36.0, 40.0)) -> np.ndarray:
    d = np.hypot(YY - centre[0], XX - centre[1])
    lab = np.zeros((72, 72), np.uint8)
    lab[d < r_cav + wall] = 2
    lab[d < r_cav] = 3
    if rv_r > 0:
        lab[(np.hypot(YY - centre[0], XX - centre[1] + r_cav + wall + rv_r * 0.6) < rv_r) & (lab == 0)] = 1
    return lab


def _study(n_slices: int = 9, squeeze: float = 0.72) -> np.ndarray:
    """(3, Z, Y, X) labels, base (slice 0) -> apex; frame 0 ED, frame 2 ES (cavity radius x squeeze)."""
    lab = np.zeros((3, n_slices, 72, 72), np.uint8)
    for k in range(n_slices):
        apical_cap = k == n_slices - 1
        r = 0.0 if apical_cap else 14.0 * np.sqrt(1 - (k / (n_slices - 1)) ** 2) + 2.0
        rv = 12.0 * (1 - k / (n_slices - 3)) if k < n_slices - 3 else 0.0
        for f, scale in enumerate((1.0, (1 + squeeze) / 2, squeeze)):
            lab[f, k] = _slice(r * scale, 5.0 + 2.0 * (1 - scale), rv * scale) if not apical_cap else _slice(0, 6, 0)
    return lab


def _check(lab: np.ndarray, ed: int = 0, es: int = 2, ed_given: bool = True, es_given: bool = True,
           geo: Geometry = GEO):
    frame = cardiac_frame(lab[ed], geo)
    vol = volumetrics(lab, geo, ed, es)
    return quality.check_study(lab, geo, ed, es, frame=frame, lv_volume_ml=label_volumes_ml(lab, geo)["lv"],
                               lv_ed_slice_ml=slice_volumes_ml(lab[ed], geo)["lv"],
                               ef_percent=vol["lv_ef_percent"], lv_mass_g=vol["lv_mass_g"], ed_given=ed_given,
                               es_given=es_given)


def _names(findings) -> list[str]:
    return [f.check for f in findings]


def test_a_clean_study_has_no_finding():
    lab = _study()
    assert _check(lab) == []
    assert cardiac_frame(lab[0], GEO).long_axis @ GEO.direction[:, 0] > 0.99  # base at slice 0


def test_open_border_fraction():
    closed = _slice(10, 5, 0)
    assert quality.open_border_fraction(closed) == 0.0
    assert quality.open_border_fraction(np.zeros((8, 8), np.uint8)) is None
    cut = closed.copy()
    cut[(cut == 2) & (YY < 36) & (abs(XX - 40) <= 2)] = 0  # a 5-pixel gap through the wall above the cavity
    assert 0.0 < quality.open_border_fraction(cut) < 0.2
    no_wall = np.where(closed == 2, 0, closed)
    assert quality.open_border_fraction(no_wall) == 1.0


def test_open_myocardium_on_a_mid_slice_but_not_the_basal_one():
    lab = _study()
    lab[2, 4][(lab[2, 4] == 2) & (XX > 40)] = 0  # half of the ES wall missing on a mid slice
    found = _check(lab)
    assert _names(found) == ["open_myocardium"]
    assert found[0].frame == 2 and found[0].slices == (4,)
    lab = _study()
    lab[0, 0][lab[0, 0] == 2] = 0  # the most basal slice (outflow tract) may be open
    lab[2, 7][(lab[2, 7] == 2) & (XX > 40)] = 0  # and the most apical cavity slice is not checked
    assert _check(lab) == []


def test_cavity_missing_at_es_only_on_mid_ventricular_slices():
    lab = _study()
    lab[2, 3][lab[2, 3] == 3] = 2  # a mid-ventricular ES slice without cavity
    found = _check(lab)
    assert _names(found) == ["cavity_missing_at_es"] and found[0].slices == (3,)
    lab = _study()
    lab[2, 0][lab[2, 0] == 3] = 0  # the basal ES slice without cavity: a convention, not flagged
    lab[2, 0][lab[2, 0] == 2] = 0
    assert "cavity_missing_at_es" not in _names(_check(lab))


def test_apex_not_covered():
    lab = _study()[:, :5]  # the stack stops in the middle of the ventricle
    found = _check(lab)
    assert "apex_not_covered" in _names(found)
    f = found[_names(found).index("apex_not_covered")]
    assert f.slices == (4,) and f.frame == 0


def test_slice_misalignment_and_where_to_look():
    lab = _study()
    lab[:, 4] = np.roll(lab[:, 4], 10, axis=2)  # 15 mm off on a mid slice (every frame)
    found = _check(lab)
    assert _names(found) == ["slice_misalignment"] and found[0].slices == (4,)
    # the point to show lies on that slice, at its LV centre
    p = np.asarray(found[0].points_ras[0])
    idx = np.linalg.solve(GEO.index_to_world[:3, :3], p - GEO.origin)
    assert abs(idx[0] - 4) < 1e-6
    np.testing.assert_allclose(idx[1:], [36.0, 50.0], atol=0.5)


def test_ed_es_frames_only_when_given():
    lab = _study()[[1, 0, 2]]  # the given 'ED' (frame 0) is not the largest cavity
    found = _check(lab, ed=0, es=2)
    assert _names(found) == ["ed_es_frames"] and found[0].frame == 1  # the frame to look at
    assert _check(lab, ed=0, es=2, ed_given=False) == []


def test_ef_outside_range():
    found = _check(_study(squeeze=0.35))
    assert _names(found) == ["ef_outside_range"] and "above 80" in found[0].message
    assert found[0].slices == () and "no LV cavity at ES" not in found[0].message
    lab = _study(squeeze=0.35)
    for k in (0, 1):  # the two most basal ES slices called atrium: background
        lab[2, k] = 0
    found = _check(lab)
    assert _names(found) == ["ef_outside_range"] and found[0].frame == 2 and found[0].slices == (0, 1)
    ed_ml = [float((lab[0, k] == 3).sum()) * 10 * 1.5 * 1.5 / 1000 for k in (0, 1)]
    assert f"slices 0, 1 ({ed_ml[0]:.1f}, {ed_ml[1]:.1f} ml of LV cavity at ED) have no LV cavity at ES" \
        in found[0].message
    assert len(found[0].points_ras) == 2  # where the Slicer module takes the views
    # a mid-ventricular slice without ES cavity is another check's business, not counted here
    assert quality.basal_slices_lost_at_es(lab, 0, 2, np.arange(9.0)) == [0, 1]
    assert quality.basal_slices_lost_at_es(lab, 0, 2, -np.arange(9.0)) == []  # apex first: the apical cap
    assert _names(quality.check_ef(3.0)) == ["ef_outside_range"] and quality.check_ef(None) == []


def test_report_carries_the_findings():
    lab = _study()
    lab[2, 3][lab[2, 3] == 3] = 2
    cine = Cine(data=np.zeros(lab.shape, np.float32), geometry=GEO, times_ms=np.array([0.0, 40.0, 80.0]),
                name="synthetic", ed=0, es=2)
    q = pipeline.compute(cine, lab, None).report["quality"]
    assert [d["check"] for d in q] == ["cavity_missing_at_es"]
    assert q[0]["slices"] == [3] and len(q[0]["points_ras"]) == 1 and "mid-ventricular" in q[0]["message"]


def test_pull_back_labels_follows_a_translation_in_world_mm():
    geo = Geometry(spacing=(8.0, 1.5, 2.0), direction=np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]]))
    lab = np.zeros((3, 10, 12), np.uint8)
    lab[1, 4:6, 5:8] = 2
    u = np.zeros((3, 3, 10, 12))
    u[:, ...] = (geo.direction @ np.array([0.0, 3.0, -4.0]))[:, None, None, None]  # +2 rows, -2 columns
    pulled = quality.pull_back_labels(lab, u, geo)
    expected = np.zeros_like(lab)
    expected[1, 2:4, 7:10] = 2  # X + u(X) lands on the labelled voxels from 2 rows up and 2 columns right
    np.testing.assert_array_equal(pulled, expected)


@pytest.fixture(scope="module")
def small_phantom():
    from deepstrain.phantom import PhantomParams, generate_phantom

    return generate_phantom(PhantomParams(n_frames=5, matrix_size=64, n_slices=6, pv_samples=1, seed=0))


def test_motion_mismatch_fires_for_a_wrong_convention_not_for_the_true_motion(small_phantom):
    ph = small_phantom
    cine, lab, disp = ph.cine, ph.labels, ph.displacement.astype(np.float32)
    ed, es = cine.ed, cine.es
    true, none = quality.motion_overlap(lab, disp, cine.geometry, ed, es)
    assert true > 0.9 and true > none
    assert quality.check_motion(lab, disp, cine.geometry, ed, es) == []
    lps = disp.copy()
    lps[:, :2] *= -1  # LPS components given as RAS
    found = quality.check_motion(lab, lps, cine.geometry, ed, es)
    assert _names(found) == ["motion_mismatch"] and found[0].frame == es
    report = pipeline.compute(cine, lab, lps).report["quality"]
    assert "motion_mismatch" in [q["check"] for q in report]
    assert "motion_mismatch" not in [q["check"] for q in pipeline.compute(cine, lab, disp).report["quality"]]
    # the field in voxels (pixels far from 1 mm): it carries the heart back better once multiplied by the pixel size
    pixel = float(np.mean(cine.geometry.spacing[1:]))
    assert abs(pixel - 1.0) > 0.15
    found = quality.check_motion(lab, disp / pixel, cine.geometry, ed, es)
    assert _names(found) == ["motion_mismatch"] and "may be in voxels" in found[0].message


def test_manual_acdc_labels(shared_data):
    """On expert contours: patient014's two misaligned slices are found; patient001's clean labels give nothing."""
    from deepstrain import io

    found = {}
    for p in ("patient001", "patient014"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cine = io.load_cine(shared_data / "acdc" / "training" / p)
        lab = np.zeros(cine.data.shape, np.uint8)
        for f, lf in cine.labels.items():
            lab[f] = lf
        found[p] = pipeline.compute(cine, lab, None).report["quality"]
    assert found["patient001"] == []
    assert [(d["check"], d["slices"]) for d in found["patient014"]] == [("slice_misalignment", [1, 6])]


@pytest.mark.parametrize("check", quality.CHECKS)
def test_every_check_is_documented(check):
    assert f"``{check}``" in quality.__doc__


def test_heart_size_points_at_a_lost_voxel_size():
    lab = _study()
    vol = volumetrics(lab, GEO, 0, 2)
    assert quality.HEART_EDV_ML[0] < vol["lv_edv_ml"] < quality.HEART_EDV_ML[1]  # the clean study is adult-sized
    lost = Geometry(spacing=(1.0, 1.0, 1.0), origin=GEO.origin)
    found = [f for f in _check(lab, geo=lost) if f.check == "heart_size"]
    assert len(found) == 1 and "LV EDV" in found[0].message and "LV mass" in found[0].message
    assert "--spacing" in found[0].message
    big = Geometry(spacing=(30.0, 3.0, 3.0), origin=GEO.origin)
    found = [f for f in _check(lab, geo=big) if f.check == "heart_size"]
    assert len(found) == 1 and "30 x 3 x 3 mm" in found[0].message and "--spacing" not in found[0].message
    assert _names(quality.check_heart_size(0.0, 0.0, GEO)) == ["heart_size"]
    assert "no LV cavity" in quality.check_heart_size(0.0, 0.0, GEO)[0].message
    assert quality.check_heart_size(150.0, None, GEO) == []


def test_strain_sign():
    assert quality.check_strain_signs({"radial": 40.0, "circumferential": -15.0, "longitudinal": -5.0}) == []
    assert quality.check_strain_signs(None) == [] and quality.check_strain_signs({"radial": None}) == []
    found = quality.check_strain_signs({"radial": -2.0, "circumferential": 1.0, "longitudinal": 3.0})
    assert _names(found) == ["strain_sign"] * 3
    assert "radial" in found[0].message and "short-axis stack" in found[2].message
