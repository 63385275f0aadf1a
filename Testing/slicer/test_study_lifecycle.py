"""A study's life in a scene: Run again (kept until the new one is made), cancelled runs, scenes closed
and opened in the same session, saved studies added to a scene with the user's own nodes."""
from __future__ import annotations

import copy

import pytest

from DeepStrainSlicerLib import logic as dlogic
from DeepStrainSlicerLib import mrml


def _run_other_patient(h, params, cine, labels, disp, **kw):
    """Run a second study: other intensities, half the motion (so other strain)."""
    other = copy.deepcopy(cine)
    other.name, other.data = "patientB", cine.data[:, :, ::-1].copy() * 0.5
    return h.logic.run(other, params, labels, disp * 0.5, **kw)


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
    assert b.report["provenance"]["segmentation"] == "given, as stored in the scene"
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
