"""A study saved as a Slicer scene bundle (.mrb) and loaded again: Recompute works on the stored
nodes, indexed as when the analysis ran, and refines the networks' motion with new edits."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from DeepStrainSlicerLib import mrml

RING = np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]], [[0, 1, 0], [1, 1, 1], [0, 1, 0]], [[0, 0, 0], [0, 1, 0], [0, 0, 0]]])


def _set_frame_labels(h, frame: int, lab: np.ndarray, geometry) -> None:
    browser = h.params.ref("Browser")
    browser.SetSelectedItemNumber(frame)
    proxy = browser.GetProxyNode(h.params.ref("SegmentationSequence"))
    for name, value in (("rv_cavity", 1), ("lv_cavity", 3), ("lv_myocardium", 2)):
        mrml.set_segment_mask(proxy, name, lab == value, geometry)


def _thicken_wall(harness, analysis, frame: int, geometry) -> np.ndarray:
    """A hand edit in the scene: the myocardium of ``frame`` grown one voxel into the cavity; returns it."""
    lab = analysis.labels[frame].copy()
    lab[ndimage.binary_dilation(lab == 2, structure=RING) & (lab == 3)] = 2
    _set_frame_labels(harness, frame, lab, geometry)
    return lab


def _recompute_rerunning_the_networks(h):
    """Recompute in a reloaded scene whose segmentation was edited: the networks run again and the
    motion is refined with the edited contours; returns the analysis."""
    again = h.logic.recompute(h.params)
    prov = again.report["provenance"]
    assert prov["networks_run_again"].startswith("yes"), prov
    assert prov["motion_refined_with"] == "segmentation edited in Slicer"
    return again


def test_given_study_reloads_on_its_own_voxels(harness, phantom, tmp_path):
    """The phantom's grid is left-handed in (column, row, slice) order, which Slicer stores the other
    way round: the cine comes back slice-reversed; Recompute indexes it as the analysis did and gives
    the same report."""
    cine, labels, disp = phantom
    first = harness.logic.run(cine, harness.params, labels, disp)
    h = harness.save_and_reload(tmp_path)
    try:
        stored = mrml.sequence_to_cine(h.params.ref("CineSequence"))
        assert not np.allclose(stored.geometry.index_to_world, cine.geometry.index_to_world)  # the case tested
        again = h.logic.recompute(h.params)
        np.testing.assert_array_equal(again.cine.data, cine.data)
        np.testing.assert_allclose(again.cine.geometry.index_to_world, cine.geometry.index_to_world, atol=1e-6)
        np.testing.assert_array_equal(again.labels, labels)
        np.testing.assert_array_equal(again.displacement, first.displacement)
        assert again.report["ess"] == first.report["ess"]
        assert again.report["volumetrics"] == first.report["volumetrics"]
        assert again.report["provenance"]["segmentation"] == "given"  # unchanged since the stored results
    finally:
        h.close()


def test_rv_insertion_point_is_kept_with_the_scene(harness, phantom, tmp_path):
    cine, labels, disp = phantom
    first = harness.logic.run(cine, harness.params, labels, disp)
    frame = first.frame
    centre = frame.centers[np.nonzero(np.all(np.isfinite(frame.centers), axis=1))[0][3]]
    side = np.cross(frame.long_axis, [0.0, 0.0, 1.0])
    point = centre + 20.0 * side / np.linalg.norm(side)
    harness.logic.rv_insertion_node(harness.params).AddControlPointWorld(*point)
    placed = harness.logic.recompute(harness.params)
    h = harness.save_and_reload(tmp_path)
    try:
        np.testing.assert_allclose(h.logic.rv_insertion_point(h.params), point, atol=1e-3)
        again = h.logic.recompute(h.params)
        assert again.report["aha_reference"]["septum_from"] == "given anterior RV insertion point"
        assert again.report["aha"] == placed.report["aha"]
    finally:
        h.close()


def test_networks_run_again_after_reload_to_refine_new_edits(harness, phantom, tmp_path):
    """Networks run, the ES wall thickened by hand, Recompute, scene saved and loaded. Recompute
    runs the networks again (same crop, reference frame, weights, arithmetic), they reproduce the
    stored motion, and undoing the edit gives the networks' own refined motion back."""
    cine, _, _ = phantom
    first = harness.logic.run(cine, harness.params)
    es = first.es
    _thicken_wall(harness, first, es, cine.geometry)
    edited = harness.logic.recompute(harness.params)
    assert edited.report["provenance"]["motion_refined_with"] == "segmentation edited in Slicer"
    h = harness.save_and_reload(tmp_path)
    try:
        again = _recompute_rerunning_the_networks(h)
        for k in ("radial", "circumferential", "longitudinal"):
            assert again.report["ess"][k] == pytest.approx(edited.report["ess"][k], abs=1e-3)
        _set_frame_labels(h, es, first.labels[es], cine.geometry)  # the edit undone
        undone = h.logic.recompute(h.params)
        assert undone.report["provenance"]["motion_refined_with"] == "network segmentation"
        np.testing.assert_allclose(undone.displacement, first.displacement, atol=1e-4)
        stored = mrml.transform_sequence_to_displacement(h.params.ref("DisplacementSequence"), cine.geometry)
        np.testing.assert_allclose(stored, first.displacement, atol=1e-4)
    finally:
        h.close()


def test_an_ed_edit_saved_before_recompute_is_refined_after_reload(harness, phantom, tmp_path):
    """The ED myocardium thickened by hand and the scene saved before any Recompute: after loading it,
    Recompute runs the networks again, recognises the stored motion (refined with the networks' ED,
    while the edited ED changes every frame's refinement) and gives what Recompute gave in the first
    session; the provenance says the segmentation was edited."""
    cine, _, _ = phantom
    first = harness.logic.run(cine, harness.params)
    _thicken_wall(harness, first, first.ed, cine.geometry)
    h = harness.save_and_reload(tmp_path)
    try:
        again = _recompute_rerunning_the_networks(h)
        assert again.report["provenance"]["segmentation"] == "networks, edited in Slicer"
    finally:
        h.close()
    same_session = harness.logic.recompute(harness.params)
    for k in ("radial", "circumferential", "longitudinal"):
        assert again.report["ess"][k] == pytest.approx(same_session.report["ess"][k], abs=1e-3)
    assert abs(same_session.report["ess"]["radial"] - first.report["ess"]["radial"]) > 1.0  # the edit matters


def test_edits_kept_at_run_are_said_to_be_edits_throughout(harness, phantom, tmp_path):
    """Run with the hand-edited segmentation kept: the provenance says the motion was refined with the
    edited contours after that Run, after a Recompute and after the scene is loaded again."""
    from DeepStrainSlicerLib import logic as dlogic

    cine, _, _ = phantom
    first = harness.logic.run(cine, harness.params)
    lab = _thicken_wall(harness, first, first.es, cine.geometry)
    edited, why = harness.logic.edited_labels(harness.params, cine)
    assert why == "" and np.array_equal(edited[first.es], lab)
    assert harness.logic.kept_edits_origin(harness.params) == dlogic.KEPT_EDITS  # the networks' labels, edited
    kept = harness.logic.run(cine, harness.params, edited, None, labels_origin=dlogic.KEPT_EDITS)
    states = [kept, harness.logic.recompute(harness.params)]
    h = harness.save_and_reload(tmp_path)
    try:
        states.append(h.logic.recompute(h.params))
    finally:
        h.close()
    for a in states:
        prov = a.report["provenance"]
        assert prov["segmentation"] == dlogic.KEPT_EDITS and prov["motion_refined_with"] == "segmentation edited in Slicer"
        assert a.report["ess"]["radial"] == pytest.approx(kept.report["ess"]["radial"], abs=1e-3)


def test_reloaded_scene_shows_and_exports_what_the_session_did(harness, phantom, tmp_path, egl):
    """After a reload the proxies keep their display (glyphs on every frame) and Export writes the
    same pictures (to a grey level) and the same tables as before the scene was saved."""
    import datetime as dt

    from PIL import Image

    cine, labels, disp = phantom
    harness.logic.run(cine, harness.params, labels, disp)
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    before = harness.logic.export(harness.params, tmp_path, now=when)
    h = harness.save_and_reload(tmp_path)
    try:
        browser = h.params.ref("Browser")
        for frame in (3, 5, 0):
            h.logic.go_to_frame(h.params, frame)
            glyphs = browser.GetProxyNode(h.params.ref("GlyphSequence")).GetDisplayNode()
            assert glyphs is not None and glyphs.GetVisibility2D()
            assert glyphs.GetVisualizationMode() == glyphs.VIS_MODE_GLYPH
        after = h.logic.export(h.params, tmp_path, now=when)
    finally:
        h.close()
    assert [f.name for f in after] == [f.name for f in before]
    for a, b in zip(before, after):
        if a.suffix == ".png":
            pa, pb = (np.asarray(Image.open(f).convert("RGB"), dtype=float) for f in (a, b))
            assert pa.shape == pb.shape and np.abs(pa - pb).max() <= 2, a.name
        elif a.suffix == ".csv":
            assert a.read_text() == b.read_text()


def test_recompute_after_reload_keeps_the_inputs_warnings(harness, phantom, tmp_path):
    """What reading the input warned about (e.g. a lost voxel spacing) is stored with the study and
    listed again when a reloaded scene is recomputed."""
    import dataclasses

    cine, labels, disp = phantom
    note = "voxel spacing looks lost (test)"
    harness.logic.run(dataclasses.replace(cine, warnings=[note]), harness.params, labels, disp)
    assert note in harness.logic.report(harness.params)["warnings"]
    h = harness.save_and_reload(tmp_path)
    try:
        assert note in h.logic.recompute(h.params).report["warnings"]
    finally:
        h.close()
