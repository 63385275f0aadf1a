"""A study's life in a scene: Run again (kept until the new one is made), cancelled runs, scenes closed
and opened in the same session, saved studies added to a scene with the user's own nodes."""
from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

from deepstrain.cine import Geometry

from DeepStrainSlicerLib import logic as dlogic
from DeepStrainSlicerLib import mrml


def _run_other_patient(h, params, cine, labels, disp, **kw):
    """Run a second study: other intensities, half the motion (so other strain)."""
    other = copy.deepcopy(cine)
    other.name, other.data = "patientB", cine.data[:, :, ::-1].copy() * 0.5
    return h.logic.run(other, params, labels, disp * 0.5, **kw)


def _saved_other_study(harness_class, phantom, folder):
    """A second study run in a scene of its own and saved as ``folder/scene.mrb``; its path."""
    cine, labels, disp = phantom
    hs = harness_class()
    try:
        _run_other_patient(hs, hs.params, cine, labels, disp)
        return hs.write_mrb(folder)
    finally:
        hs.close()


def _state(params):
    """The parameter node's parameters and study references."""
    node = params.node
    return ({n: node.GetParameter(n) for n in node.GetParameterNames()},
            {r: node.GetNodeReferenceID(r) for r in dlogic.Parameters.ROLES})


def test_a_cancelled_second_run_leaves_the_scene_as_it_was(harness, phantom):
    cine, labels, disp = phantom
    h, p = harness, harness.params
    first = h.logic.run(cine, p, labels, disp)
    h.logic.highlight_segment(p, 4)
    ids, state, text = h.node_ids(), _state(p), p.ref("ReportText").GetText()
    for stop in (0.9, 1.0):  # while building the new nodes, and at "done"
        def cancel(fraction, message, stop=stop):
            if fraction >= stop:
                raise dlogic.Cancelled()

        with pytest.raises(dlogic.Cancelled):
            _run_other_patient(h, p, cine, labels, disp, progress=cancel)
        assert h.node_ids() == ids
        assert _state(p) == state and p.ref("ReportText").GetText() == text
    assert p.ref("Browser").GetProxyNode(p.ref("CineSequence")) is not None
    again = h.logic.recompute(p)  # the first study, with its arrays in memory
    assert again.report["global_strain"] == first.report["global_strain"]
    assert h.logic.analysis is again


def test_run_again_removes_the_previous_study_after_the_new_one_is_made(harness, phantom):
    cine, labels, disp = phantom
    h, p = harness, harness.params
    h.logic.run(cine, p, labels, disp)
    old = {n.GetID() for n in h.logic.study_nodes(p)}
    old_id = p.study_id
    n = h.scene.GetNumberOfNodes()
    _run_other_patient(h, p, cine, labels, disp)
    assert p.study_id != old_id and h.scene.GetNumberOfNodes() == n
    assert not old & {n.GetID() for n in h.logic.study_nodes(p)}
    tagged = {h.scene.GetNthNode(i).GetAttribute(dlogic.STUDY_ATTRIBUTE) for i in range(h.scene.GetNumberOfNodes())}
    assert tagged == {None, p.study_id}


def test_recompute_after_closing_the_scene_uses_the_study_opened(harness, phantom, tmp_path):
    """Study A analysed; the scene closed and study B (saved earlier) opened in the same session:
    Recompute gives B's results, as a fresh session does, although B's browser has A's node ID."""
    cine, labels, disp = phantom
    hb = type(harness)()  # other sessions: harnesses of their own
    try:
        _run_other_patient(hb, hb.params, cine, labels, disp)
        saved = hb.write_mrb(tmp_path)
    finally:
        hb.close()
    fresh = type(harness)()
    try:
        fresh.scene.RemoveNode(fresh.params.node)
        fresh.read_mrb(saved, tmp_path / "cache_fresh")
        expected = fresh.logic.recompute(fresh.params).report
    finally:
        fresh.close()
    h = harness
    a = h.logic.run(cine, h.params, labels, disp)
    browser_id = h.params.ref("Browser").GetID()
    h.scene.Clear(0)  # File > Close scene, without the widget (which also calls forget_study)
    h.read_mrb(saved, tmp_path / "cache")
    assert h.params.ref("Browser").GetID() == browser_id  # the ID alone cannot tell the studies apart
    b = h.logic.recompute(h.params)
    assert b.report["global_strain"] == expected["global_strain"] != a.report["global_strain"]
    assert b.report["volumetrics"] == expected["volumetrics"]
    assert b.report["provenance"]["segmentation"] == "given"  # unchanged since the stored results
    h.logic.forget_study()
    assert h.logic._cache == {} and h.logic.analysis is None


def test_run_after_adding_a_saved_study_keeps_the_users_nodes(harness, phantom, tmp_path):
    """A saved study added (imported) to a scene whose own nodes took its node IDs: Slicer renumbers
    the study's nodes; Run again removes the added study and never the user's nodes."""
    cine, labels, disp = phantom
    hs = type(harness)()
    try:
        hs.logic.run(cine, hs.params, labels, disp)
        saved = hs.write_mrb(tmp_path)
    finally:
        hs.close()
    h = harness
    h.scene.RemoveNode(h.params.node)
    mine = [h.scene.AddNewNodeByClass(c, f"my {c}") for c in
            ("vtkMRMLTableNode", "vtkMRMLModelNode", "vtkMRMLTextNode", "vtkMRMLPlotChartNode")]
    h.read_mrb(saved, tmp_path / "cache")  # into the scene as it is: an import
    p = h.params
    assert {n.GetID() for n in mine} == {"vtkMRMLTableNode1", "vtkMRMLModelNode1", "vtkMRMLTextNode1",
                                         "vtkMRMLPlotChartNode1"}  # the IDs the saved study had
    added, added_id = p.ref("Browser"), p.node.GetParameter("study_id")
    h.logic.run(cine, p, labels, disp)
    assert all(h.scene.IsNodePresent(n) for n in mine)
    assert not h.scene.IsNodePresent(added)
    assert h.scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode") == 1
    assert added_id and not set(mine) & set(h.logic.study_nodes(p))
    left = [h.scene.GetNthNode(i) for i in range(h.scene.GetNumberOfNodes())]
    assert not [n.GetName() for n in left if n.GetAttribute(dlogic.STUDY_ATTRIBUTE) == added_id]


def test_study_name_comes_from_the_input_sequence_at_each_run(harness, phantom):
    cine, labels, disp = phantom
    h, p = harness, harness.params
    first = h.logic.cine_from_sequence(mrml.cine_to_sequence(h.scene, cine, "patient042 4D cine"), p)
    assert first.name == "patient042 4D cine"
    h.logic.run(first, p, labels, disp)
    assert p.study_name == "patient042 4D cine"
    second = h.logic.cine_from_sequence(mrml.cine_to_sequence(h.scene, cine, "patient777 4D cine"), p)
    assert second.name == "patient777 4D cine"


def test_emptied_height_and_weight_fields_give_the_files_values_at_recompute(harness, phantom):
    cine, labels, disp = phantom
    h, p = harness, harness.params
    from_file = copy.deepcopy(cine)
    from_file.subject.given("height_cm", 170.0, "Info.cfg Height (cm)")
    from_file.subject.given("weight_kg", 70.0, "Info.cfg Weight (kg)")
    h.logic.run(from_file, p, labels, disp)
    p.height_cm, p.weight_kg = 190.0, 90.0
    subject = h.logic.recompute(p).report["subject"]
    assert (subject["height_cm"], subject["weight_kg"]) == (190.0, 90.0)
    p.height_cm, p.weight_kg = 0.0, 0.0  # emptied: from the file again
    subject = h.logic.recompute(p).report["subject"]
    assert (subject["height_cm"], subject["weight_kg"]) == (170.0, 70.0)
    assert h.logic.results(p)["height"] == (170.0, "cm")
    # a height typed in before Run replaces the file's there; emptied, the file's comes back
    p.height_cm = 180.0
    run = h.logic.run(from_file, p, labels, disp)
    assert (run.report["subject"]["height_cm"], run.report["subject"]["weight_kg"]) == (180.0, 70.0)
    assert from_file.subject.height_cm == 170.0  # the caller's cine is not changed
    p.height_cm = 0.0
    h.logic.forget_study()  # as after a scene reload: from the parameter node
    assert h.logic.recompute(p).report["subject"]["height_cm"] == 170.0


def test_a_new_run_clears_the_segment_highlight(harness, phantom):
    cine, labels, disp = phantom
    h, p = harness, harness.params
    h.logic.run(cine, p, labels, disp)
    h.logic.highlight_segment(p, 5)
    assert p.ref("PolarHighlight").GetDisplayNode().GetVisibility()
    _run_other_patient(h, p, cine, labels, disp)
    aha = p.ref("AhaSegmentation").GetDisplayNode()
    assert p.highlighted_segment == 0
    assert not p.ref("PolarHighlight").GetDisplayNode().GetVisibility()
    assert not aha.GetVisibility() and not aha.GetSegmentVisibility("aha_5")
    h.logic.highlight_segment(p, 7)  # still works on the new study
    assert p.ref("PolarHighlight").GetDisplayNode().GetVisibility() and aha.GetSegmentVisibility("aha_7")


def _erase_es_cavity_slice(harness, analysis, geometry, which: int = 0):
    """A hand edit: the ES LV cavity of one slice (``which`` from the middle one) erased in the scene."""
    lab = analysis.labels[analysis.es].copy()
    ks = np.flatnonzero((lab == 3).any(axis=(1, 2)))
    k = ks[ks.size // 2 + which]
    lab[k][lab[k] == 3] = 0
    browser = harness.params.ref("Browser")
    browser.SetSelectedItemNumber(analysis.es)
    proxy = browser.GetProxyNode(harness.params.ref("SegmentationSequence"))
    for name, value in (("rv_cavity", 1), ("lv_cavity", 3), ("lv_myocardium", 2)):
        mrml.set_segment_mask(proxy, name, lab == value, geometry)
    return lab


def test_run_again_offers_the_hand_edits_and_keeps_them_when_asked(harness, phantom):
    """Recompute cannot take a new ED or heart rate and sends the user to Run: Run must not lose the
    hand edits silently. edited_labels gives them (nothing once they were analysed as they are, and
    a reason instead for an input on another grid); Run with them keeps them, says so in the
    provenance and measures the same EF as Recompute did."""
    cine, labels, disp = phantom
    p = harness.params
    first = harness.logic.run(cine, p, labels, disp)
    assert harness.logic.edited_labels(p, cine) == (None, "")
    es_lab = _erase_es_cavity_slice(harness, first, cine.geometry)
    edited, why = harness.logic.edited_labels(p, cine)
    assert why == "" and np.array_equal(edited[first.es], es_lab) and np.array_equal(edited[first.ed], labels[first.ed])
    recomputed = harness.logic.recompute(p)
    edited, why = harness.logic.edited_labels(p, cine)  # analysed as they are now, but still edits
    assert why == "" and np.array_equal(edited, recomputed.labels) and not np.array_equal(edited, first.labels)
    _erase_es_cavity_slice(harness, recomputed, cine.geometry)  # the same edit again: nothing new
    _erase_es_cavity_slice(harness, recomputed, cine.geometry, which=1)  # ... and another one
    g = cine.geometry
    moved = dataclasses.replace(cine, geometry=Geometry(g.spacing, g.origin + 5.0, g.direction))
    edited, why = harness.logic.edited_labels(p, moved)
    assert edited is None and "not on the study's grid" in why and "8.66 mm apart" in why  # 5 mm on each axis
    other = dataclasses.replace(cine, data=cine.data[::-1].copy())  # another study's images on the same grid
    edited, why = harness.logic.edited_labels(p, other)
    assert edited is None and "not the study's" in why
    p.heart_rate_bpm = 50.0  # a new heart rate needs Run
    with pytest.raises(ValueError, match="offers to keep your hand edits"):
        harness.logic.recompute(p)
    edited, _ = harness.logic.edited_labels(p, cine)
    kept = harness.logic.run(cine, p, edited, disp, labels_origin=dlogic.KEPT_EDITS)
    assert np.array_equal(kept.labels, edited) and not np.array_equal(kept.labels, recomputed.labels)
    assert kept.report["provenance"]["segmentation"] == dlogic.KEPT_EDITS
    check = harness.logic.recompute(p)  # the kept segmentation, analysed as Recompute would
    assert kept.report["volumetrics"]["lv_ef_percent"] == pytest.approx(check.report["volumetrics"]["lv_ef_percent"])
    assert kept.report["volumetrics"]["lv_ef_percent"] > first.report["volumetrics"]["lv_ef_percent"]


def test_an_unreadable_segmentation_lets_run_segment_again(harness, phantom):
    """A segment added by hand with voxels in it (or a cardiac segment deleted) makes the study's
    segmentation unreadable: Run cannot keep it, says why, and may still segment again."""
    cine, labels, disp = phantom
    p = harness.params
    first = harness.logic.run(cine, p, labels, disp)
    browser = p.ref("Browser")
    browser.SetSelectedItemNumber(first.es)
    proxy = browser.GetProxyNode(p.ref("SegmentationSequence"))
    sid = proxy.GetSegmentation().AddEmptySegment("", "Segment_4")
    mrml.set_segment_mask(proxy, sid, labels[first.es] == 3, cine.geometry)
    edited, why = harness.logic.edited_labels(p, cine)
    assert edited is None and "cannot be read" in why and "Segment_4" in why
    again = harness.logic.run(cine, p, labels, disp)  # what "segment again" does (given labels here)
    assert np.array_equal(again.labels, labels)


def test_a_saved_study_added_to_a_scene_with_a_module_node_is_the_one_shown(harness, phantom, tmp_path):
    """A study's .mrb added to a scene that already has the module's parameter node (the panel was
    opened; or another study is shown): the module shows the study added, and names the one it does
    not show, which stays in the scene as it is."""
    cine, labels, disp = phantom
    saved = _saved_other_study(type(harness), phantom, tmp_path)
    h = harness  # its empty parameter node stays in the scene
    h.read_mrb(saved, tmp_path / "cache")
    p = h.params
    assert p.ref("Browser") is not None and h.logic.other_studies(p) == []
    assert h.logic.recompute(p).report["volumetrics"]
    h2 = type(harness)()
    try:
        h2.logic.run(cine, h2.params, labels, disp)
        shown_before = h2.params.study_name
        h2.read_mrb(saved, tmp_path / "cache2")
        assert h2.params.study_name != shown_before and h2.params.ref("Browser") is not None
        assert h2.logic.other_studies(h2.params) == [shown_before]
    finally:
        h2.close()


def _visible_parts(h, params) -> dict[str, bool]:
    """Whether the study's segmentation and glyph overlays, polar map, its legend and numbers are shown."""
    browser = params.ref("Browser")
    model = params.ref("PolarModel")
    return {
        "segmentation": bool(browser.GetProxyNode(params.ref("SegmentationSequence")).GetDisplayNode().GetVisibility()),
        "glyphs": bool(browser.GetProxyNode(params.ref("GlyphSequence")).GetDisplayNode().GetVisibility()),
        "polar map": bool(model.GetDisplayNode().GetVisibility()),
        "legend": bool(dlogic.color_legend(model).GetVisibility()),
        "numbers": bool(params.ref("PolarLabels").GetDisplayNode().GetVisibility()),
    }


def test_only_the_shown_study_is_drawn_when_the_scene_holds_two(harness, phantom, tmp_path):
    """A saved study added to a scene with another study: the one added is shown, the other one's
    overlays and polar map are hidden (drawn at the same place they would cover the shown study's),
    its nodes stay; the overlay toggles act on the shown study; when the other study is shown again
    its views come back."""
    cine, labels, disp = phantom
    saved = _saved_other_study(type(harness), phantom, tmp_path)
    h = harness
    h.logic.run(cine, h.params, labels, disp)
    first = h.params
    assert all(_visible_parts(h, first).values())
    h.read_mrb(saved, tmp_path / "cache")
    shown = h.params
    assert shown.node is not first.node and h.logic.other_studies(shown) == [first.study_name]
    assert all(_visible_parts(h, shown).values())
    assert not any(_visible_parts(h, first).values()), _visible_parts(h, first)
    h.logic.set_overlays(shown, False, False)
    assert not any(_visible_parts(h, first).values())
    assert [k for k, v in _visible_parts(h, shown).items() if not v] == ["segmentation", "glyphs"]
    h.scene.RemoveNode(shown.node)  # the study added is put aside: the first is shown again
    again = h.logic.parameter_node()
    h.logic.show_study(again)
    assert again.node is first.node and all(_visible_parts(h, again).values())
