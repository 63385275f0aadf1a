"""LV rotation, twist and torsion: sign convention, translation, grids, and the phantom's analytic twist."""
from __future__ import annotations

import numpy as np
import pytest

from _heart import Heart, anatomical_rotation, grid_for, header_without_orientation, sample
from deepstrain import pipeline
from deepstrain.aha import aha_segments
from deepstrain.cine import Cine
from deepstrain.rotation import LEVELS, level_rotations, level_separation_mm, twist_summary
from deepstrain.strain import cardiac_frame

LEVEL_ANGLES = {"basal": -4.0, "mid": 1.5, "apical": 8.0}


def _rotating_heart(flip=(False, False, False), rv_side=1.0):
    """A heart on an oblique grid whose levels turn rigidly by LEVEL_ANGLES (deg, counter-clockwise
    from the apex) and whose slices also shift in plane and along the axis, in frame 1 of 2."""
    heart = Heart(rotation=anatomical_rotation([0.3, -0.5, 0.8], 41.0), centre=np.array([5.0, -12.0, 20.0]), rv_side=rv_side)
    geo, shape = grid_for(heart, (8.0, 1.6, 1.6), tilt_deg=0.0, flip=flip)
    world, h, lab = sample(heart, geo, shape)
    frame = cardiac_frame(lab, geo)
    seg = aha_segments(lab, geo, frame)
    l_vec = heart.rotation[:, 2]  # heart z: base -> apex
    angle = np.zeros(shape)
    for name, (lo, hi) in LEVELS.items():
        angle[(seg >= lo) & (seg <= hi)] = LEVEL_ANGLES[name]
    # rotate about the heart's axis by the level's angle (right-handed about base -> apex), then
    # shift each slice: in plane and along l, differently per slice
    t = np.radians(angle)
    x, y = h[..., 0], h[..., 1]
    h_new = np.stack([x * np.cos(t) - y * np.sin(t), x * np.sin(t) + y * np.cos(t), h[..., 2]], axis=-1)
    moved = heart.centre + h_new @ heart.rotation.T
    k = np.arange(shape[0])[:, None, None, None]
    moved = moved + 0.4 * k * np.array([1.0, -0.5, 0.2]) + 0.3 * k * l_vec
    u = np.zeros((2, 3) + shape, dtype=np.float32)
    u[1] = np.moveaxis(moved - world, -1, 0)
    return geo, lab, frame, seg, u


@pytest.mark.parametrize("flip", [(False, False, False), (False, False, True), (True, True, False)])
def test_rigid_level_rotations_are_recovered_with_sign_on_any_grid(flip):
    """Each level's rotation comes back exactly, positive counter-clockwise from the apex, whatever
    the slice shifts and whether the index grid is left- or right-handed."""
    geo, lab, frame, seg, u = _rotating_heart(flip)
    rot = level_rotations(u, geo, frame, seg)
    for name, angle in LEVEL_ANGLES.items():
        assert rot[name][0] == pytest.approx(0.0, abs=1e-9)
        assert rot[name][1] == pytest.approx(angle, abs=1e-6)


def test_a_header_that_mirrors_the_patient_gives_the_patients_rotations():
    """The same voxels and motion under a header without scanner orientation that makes the world the
    patient's mirror image (as ACDC's frames: the standard layout, slices along +S): the rotations
    keep the patient's signs."""
    geo, lab, frame, seg, u = _rotating_heart(flip=(False, True, True))  # RV left, anterior at the top
    pseudo = header_without_orientation(geo)
    m = pseudo.direction @ np.linalg.inv(geo.direction)  # the world map, applied to the displacement
    assert np.linalg.det(m) < 0
    u_m = np.einsum("ab,tb...->ta...", m, u).astype(np.float32)
    frame_m = cardiac_frame(lab, pseudo)
    assert frame_m.mirrored
    rot = level_rotations(u_m, pseudo, frame_m, aha_segments(lab, pseudo, frame_m))
    for name, angle in LEVEL_ANGLES.items():
        assert rot[name][1] == pytest.approx(angle, abs=1e-6)


def test_twist_torsion_and_rates():
    geo, lab, frame, seg, u = _rotating_heart()
    rot = level_rotations(u, geo, frame, seg)
    sep = level_separation_mm(geo, frame, seg)
    # basal and apical centroids: the mean positions along l of their voxels
    l_vec = frame.long_axis
    pts = {n: geo.world_points(lab.shape)[(seg >= lo) & (seg <= hi)] @ l_vec for n, (lo, hi) in LEVELS.items()}
    assert sep == pytest.approx(abs(pts["apical"].mean() - pts["basal"].mean()))
    s = twist_summary(rot, sep, None, 0, 1)
    assert s["es_twist_deg"] == pytest.approx(12.0, abs=1e-6)
    assert s["es_torsion_deg_per_cm"] == pytest.approx(12.0 / (sep / 10.0))
    assert s["twist_rate_deg_per_s"] is None and s["peak_untwisting_rate_deg_per_s"] is None
    # rates: a 5-frame twist curve with known times
    rot5 = {"basal": np.array([0.0, -2, -4, -2, 0]), "apical": np.array([0.0, 4, 8, 4, 0])}
    s5 = twist_summary(rot5, 50.0, np.array([0.0, 100, 200, 300, 400]), 0, 2)
    assert np.allclose(s5["twist_deg"], [0, 6, 12, 6, 0])
    assert np.allclose(s5["twist_rate_deg_per_s"], [30, 60, 0, -60, -30])  # the cycle repeats: frame 4 -> frame 0
    assert s5["peak_systolic_twist_deg"] == 12.0
    assert s5["peak_untwisting_rate_deg_per_s"] == pytest.approx(-60.0)  # frame 3: early diastole after ES = 2


def test_missing_level_gives_no_twist():
    geo, lab, frame, seg, u = _rotating_heart()
    seg = np.where(seg >= 13, 0, seg)  # no apical level
    rot = level_rotations(u, geo, frame, seg)
    assert rot["apical"] is None and rot["basal"] is not None
    s = twist_summary(rot, level_separation_mm(geo, frame, seg), None, 0, 1)
    assert s["es_twist_deg"] is None and s["twist_deg"] is None and s["level_separation_mm"] is None


def test_report_and_csv_carry_rotation(tmp_path):
    geo, lab, frame, seg, u = _rotating_heart()
    data = np.zeros((2,) + lab.shape, dtype=np.float32)
    cine = Cine(data=data, geometry=geo, times_ms=np.array([0.0, 300.0]), name="rot")
    an = pipeline.compute(cine, np.stack([lab, lab]), u, ed=0, es=1)
    assert an.report["rotation"]["apical_deg"][1] == pytest.approx(8.0, abs=1e-3)
    assert an.report["twist"]["es_twist_deg"] == pytest.approx(12.0, abs=1e-3)
    csv_path = an.write(tmp_path)[1]
    header = csv_path.read_text().splitlines()[0].split(",")
    for col in ("rotation_basal_deg", "rotation_mid_deg", "rotation_apical_deg", "twist_deg", "twist_rate_deg_per_s"):
        assert col in header
    row = dict(zip(header, csv_path.read_text().splitlines()[2].split(",")))
    assert float(row["twist_deg"]) == pytest.approx(12.0, abs=1e-3)


def test_engine_matches_the_phantoms_analytic_twist():
    """The phantom's reference rotation comes from its analytic twist step, apart from the engine:
    through the engine, its exact displacement gives the same level rotations and twist."""
    phantom = pytest.importorskip("deepstrain.phantom")
    ph = phantom.generate_phantom(phantom.PhantomParams(n_frames=8, pv_samples=1, noise=0.0, blur_px=0.0,
                                                        matrix_size=96, twist_deg=18.0))
    rep = pipeline.compute(ph.cine, ph.labels, ph.displacement).report
    es = ph.cine.es
    ref = ph.reference
    assert ref["rotation"]["basal_deg"][es] < 0 < ref["rotation"]["apical_deg"][es]  # physiological pattern
    for level in ("basal", "mid", "apical"):
        assert rep["rotation"][f"{level}_deg"][es] == pytest.approx(ref["rotation"][f"{level}_deg"][es], abs=0.15)
    assert rep["twist"]["es_twist_deg"] == pytest.approx(ref["twist"]["es_twist_deg"], abs=0.2)
    assert rep["twist"]["es_torsion_deg_per_cm"] == pytest.approx(ref["twist"]["es_torsion_deg_per_cm"], rel=0.05)
