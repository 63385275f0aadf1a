"""The module logic on real MRML with the phantom's exact labels and displacement (run mode 'given')."""
from __future__ import annotations

import builtins
import dataclasses
import json
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import slicer
import vtk

from deepstrain.pipeline import compute
from deepstrain.volumetrics import voxel_volume_ml
from DeepStrainSlicerLib import logic as dlogic
from DeepStrainSlicerLib import mrml


@pytest.fixture
def study(harness, phantom):
    cine, labels, disp = phantom
    analysis = harness.logic.run(cine, harness.params, labels, disp)
    return harness, cine, labels, disp, analysis


def test_one_browser_with_one_item_per_frame(study):
    h, cine, labels, disp, analysis = study
    p = h.params
    browser = p.ref("Browser")
    assert h.scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode") == 1
    seqs = [p.ref(r) for r in ("CineSequence", "SegmentationSequence", "DisplacementSequence", "GlyphSequence")]
    for s in seqs:
        assert s.GetNumberOfDataNodes() == cine.n_frames
        assert browser.IsSynchronizedSequenceNode(s.GetID(), True)
    assert seqs[0].GetIndexUnit() == "ms"
    seg = browser.GetProxyNode(seqs[1]).GetSegmentation()
    assert [seg.GetNthSegment(i).GetName() for i in range(3)] == ["LV cavity", "LV myocardium", "RV cavity"]
    # the overlays follow the browser
    browser.SetSelectedItemNumber(analysis.es)
    vol = browser.GetProxyNode(seqs[0])
    assert np.array_equal(mrml.volume_array(vol), cine.data[analysis.es])
    lab = mrml.segmentation_to_labels(browser.GetProxyNode(seqs[1]), cine.geometry, cine.shape3d)
    assert np.array_equal(lab, labels[analysis.es])


def test_transform_displacement_equals_the_pipeline_at_myocardium_points(study):
    h, cine, labels, disp, analysis = study
    p = h.params
    browser = p.ref("Browser")
    rng = np.random.default_rng(0)
    myo = np.argwhere(labels[analysis.ed] == 2)
    picks = myo[rng.choice(len(myo), 12, replace=False)]
    for frame in (analysis.es, cine.n_frames - 1):
        browser.SetSelectedItemNumber(frame)
        for role in ("DisplacementSequence", "GlyphSequence"):
            tr = vtk.vtkGeneralTransform()
            browser.GetProxyNode(p.ref(role)).GetTransformToWorld(tr)
            for kji in picks:
                x = cine.geometry.origin + cine.geometry.direction @ (cine.geometry.spacing * kji)
                moved = np.array(tr.TransformPoint(*x)) - x
                np.testing.assert_allclose(moved, analysis.displacement[(frame, slice(None)) + tuple(kji)], atol=1e-4)
    # glyphs only in the myocardium: zero displacement on a cavity voxel
    cav = np.argwhere(labels[analysis.ed] == 3)[0]
    tr = vtk.vtkGeneralTransform()
    browser.GetProxyNode(p.ref("GlyphSequence")).GetTransformToWorld(tr)
    x = cine.geometry.origin + cine.geometry.direction @ (cine.geometry.spacing * cav)
    assert np.linalg.norm(np.array(tr.TransformPoint(*x)) - x) < 1e-6
    assert np.abs(disp[analysis.es][(slice(None),) + tuple(cav)]).max() > 0.1  # ... where the full field moves


def test_curves_tables_and_charts(study):
    h, cine, labels, disp, analysis = study
    p = h.params
    table = p.ref("CurveTable")
    assert table.GetNumberOfRows() == cine.n_frames
    circ = dlogic._column(table, "circumferential strain (%)")
    np.testing.assert_allclose(circ, analysis.report["global_strain"]["circumferential_percent"], atol=1e-6)
    np.testing.assert_allclose(dlogic._column(table, "time (ms)"), cine.times_ms, atol=1e-3)  # report: 4 decimals
    for role, unit in (("StrainChart", "strain (%)"), ("RateChart", "strain rate (1/s)")):
        chart = p.ref(role)
        assert chart.GetYAxisTitle() == unit and chart.GetXAxisTitle() == "time (ms)"
        names = [s.GetName() for s in h.logic.chart_series(p, role)]
        assert any(n.startswith("ED") for n in names) and any(n.startswith("ES") for n in names)
        assert sum(n.startswith(c) for n in names for c in dlogic.COMPONENTS) == 3
    # volume curves (ml) per frame, with LV, myocardium and RV series and the ED/ES lines
    for key, column in dlogic.VOLUME_COLUMNS.items():
        np.testing.assert_allclose(dlogic._column(table, column), analysis.volume_curves[key], rtol=1e-9)
    assert p.ref("VolumeChart").GetYAxisTitle() == "volume (ml)"
    names = [s.GetName() for s in h.logic.chart_series(p, "VolumeChart")]
    assert names[:3] == ["LV volume", "myocardium volume", "RV volume"] and len(names) == 5
    # rotation per level and twist (deg), from the report
    np.testing.assert_allclose(dlogic._column(table, "twist (deg)"), analysis.report["twist"]["twist_deg"], atol=1e-6)
    np.testing.assert_allclose(dlogic._column(table, "apical rotation (deg)"),
                               analysis.report["rotation"]["apical_deg"], atol=1e-6)
    assert p.ref("RotationChart").GetYAxisTitle().startswith("rotation (deg)")
    names = [s.GetName() for s in h.logic.chart_series(p, "RotationChart")]
    assert names[:4] == ["basal rotation", "mid rotation", "apical rotation", "twist"] and len(names) == 6
    lv_series = h.logic.chart_series(p, "VolumeChart")[0]
    assert h.logic.on_plot_point_clicked(p, lv_series.GetID(), analysis.es) == analysis.es
    assert [s for s in h.logic.chart_series(p) if s.GetAttribute("DeepStrain.marker") == "ED"]
    assert np.allclose(dlogic._column(p.ref("MarkerTable"), "ED time"), cine.times_ms[analysis.ed], atol=1e-3)


def test_clicked_plot_point_goes_to_its_frame(study):
    h, cine, labels, disp, analysis = study
    p = h.params
    series = [s for s in h.logic.chart_series(p) if s.GetName().startswith("radial")][0]
    assert h.logic.on_plot_point_clicked(p, series.GetID(), 6) == 6
    assert p.ref("Browser").GetSelectedItemNumber() == 6
    es_line = [s for s in h.logic.chart_series(p) if s.GetAttribute("DeepStrain.marker") == "ES"][0]
    assert h.logic.on_plot_point_clicked(p, es_line.GetID(), 0) == analysis.es
    assert h.logic.frame_for_plot_point(p, series.GetID(), 99) is None


def test_polar_map_values_pick_and_highlight(study):
    h, cine, labels, disp, analysis = study
    p = h.params
    model = p.ref("PolarModel")
    pd = model.GetPolyData()
    ids = [int(pd.GetCellData().GetArray("SegmentId").GetValue(i)) for i in range(pd.GetNumberOfCells())]
    vals = [pd.GetCellData().GetArray("Strain").GetValue(i) for i in range(pd.GetNumberOfCells())]
    aha = analysis.report["aha"]["circumferential_percent"]
    for s, v in zip(ids, vals):
        assert (np.isnan(v) and aha[str(s)] is None) or v == pytest.approx(aha[str(s)])
    d = model.GetDisplayNode()
    assert d.GetActiveScalarName() == "Strain" and d.GetColorNodeID() == p.ref("PolarColors").GetID()
    assert d.GetViewNodeIDs() == (p.ref("PolarView").GetID(),) or list(d.GetViewNodeIDs()) == [p.ref("PolarView").GetID()]
    legend = dlogic.color_legend(model)
    assert "(%)" in legend.GetTitleText()
    # readable on the view's white background, and the +-2.5 / 7.5 ticks of a +-5 / 15 scale not rounded
    view_bg = np.asarray(p.ref("PolarView").GetBackgroundColor())
    for prop in (legend.GetTitleTextProperty(), legend.GetLabelTextProperty()):
        assert np.abs(np.asarray(prop.GetColor()) - view_bg).max() > 0.5 and not prop.GetShadow()
    assert legend.GetLabelFormat() % 2.5 == "2.5" and legend.GetLabelFormat() % 15.0 == "15"
    info = h.logic.segment_at(p, (0.0, 2.5, 0.0))  # mid anterior
    assert info.segment == 7 and info.name == "mid anterior" and info.value == pytest.approx(aha["7"])
    assert h.logic.segment_at(p, (9.0, 0.0, 0.0)) is None
    # radial, following the frame
    p.component, p.polar_follows_frame = "radial", True
    h.logic.go_to_frame(p, 2)
    info = h.logic.segment_at(p, (0.0, 3.5, 0.0))
    assert info.frame == 2 and info.value == pytest.approx(analysis.report["aha_curves"]["radial_percent"]["1"][2])
    v1 = [model.GetPolyData().GetCellData().GetArray("Strain").GetValue(i) for i in range(17)]
    assert v1[ids.index(1)] == pytest.approx(info.value)
    # highlight: only that segment's ED voxels are visible in the AHA segmentation
    h.logic.highlight_segment(p, 7)
    seg_node = p.ref("AhaSegmentation")
    dn = seg_node.GetDisplayNode()
    assert dn.GetVisibility() and dn.GetSegmentVisibility("aha_7") and not dn.GetSegmentVisibility("aha_8")
    ref = mrml.new_volume(np.zeros(cine.shape3d), cine.geometry)
    mask = mrml._segment_mask(seg_node, "aha_7", cine.geometry, cine.shape3d)
    assert np.array_equal(mask, analysis.segments == 7) and mask.sum() > 0
    assert p.ref("PolarHighlight").GetDisplayNode().GetVisibility()
    del ref


def test_recompute_after_editing_the_ed_segmentation(study):
    """Enlarging the ED LV cavity by n voxels raises the EDV by n x voxel volume; the motion is reused."""
    h, cine, labels, disp, analysis = study
    p = h.params
    browser = p.ref("Browser")
    seg_seq = p.ref("SegmentationSequence")
    ed = analysis.ed
    browser.SetSelectedItemNumber(ed)
    proxy = browser.GetProxyNode(seg_seq)
    lab = labels[ed].copy()
    # the innermost myocardium ring of the mid slices becomes cavity (an endocardial correction)
    from scipy import ndimage

    grown = ndimage.binary_dilation(lab == 3, structure=np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                                                                    [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                                    [[0, 0, 0], [0, 1, 0], [0, 0, 0]]]))
    added = grown & (lab == 2)
    n = int(added.sum())
    assert n > 20
    mrml.set_segment_mask(proxy, "lv_cavity", grown, cine.geometry)
    # as Segment Editor does by default ("overwrite other segments"): the voxels leave the myocardium
    mrml.set_segment_mask(proxy, "lv_myocardium", (lab == 2) & ~added, cine.geometry)
    nodes_before = h.scene.GetNumberOfNodes()
    h.logic._cache = {}  # force reading the motion back from the transform sequence (as after a scene reload)
    new = h.logic.recompute(p)
    edv0 = analysis.report["volumetrics"]["lv_edv_ml"]
    edv1 = new.report["volumetrics"]["lv_edv_ml"]
    assert edv1 - edv0 == pytest.approx(n * voxel_volume_ml(cine.geometry), rel=1e-6, abs=1e-3)
    expected = labels.copy()
    expected[ed][added] = 3
    ref = compute(cine, expected, disp, ed=analysis.ed, es=analysis.es).report
    assert new.report["global_strain"] == ref["global_strain"]
    assert new.report["global_strain"]["circumferential_percent"] != analysis.report["global_strain"]["circumferential_percent"]
    # everything downstream updated in place
    np.testing.assert_allclose(dlogic._column(p.ref("CurveTable"), "radial strain (%)"),
                               ref["global_strain"]["radial_percent"], atol=1e-6)
    assert json.loads(p.ref("ReportText").GetText())["volumetrics"]["lv_edv_ml"] == edv1
    # the report says the labels were given, then edited by hand; a second recompute changes nothing
    assert analysis.report["provenance"]["segmentation"] == "given"
    assert new.report["provenance"]["segmentation"] == "given, edited in Slicer"
    assert h.logic.recompute(p).report["provenance"] == new.report["provenance"]
    assert h.scene.GetNumberOfNodes() == nodes_before
    # glyphs re-masked to the edited myocardium: the voxels given to the cavity no longer move
    browser.SetSelectedItemNumber(analysis.es)
    tr = vtk.vtkGeneralTransform()
    browser.GetProxyNode(p.ref("GlyphSequence")).GetTransformToWorld(tr)
    kji = np.argwhere(added)[0]
    x = cine.geometry.origin + cine.geometry.direction @ (cine.geometry.spacing * kji)
    assert np.linalg.norm(np.array(tr.TransformPoint(*x)) - x) < 1e-6



def test_recompute_follows_the_es_field_and_finds_es_again_on_auto(harness, phantom):
    """ES at Recompute: the field when set; on auto the input's own ES, else the frame of smallest LV of
    the edited labels (as deepstrain analyze --segmentation EDITED gives). A new ED field needs Run."""
    import dataclasses

    cine, labels, disp = phantom
    p = harness.params
    first = harness.logic.run(dataclasses.replace(cine, es=None), p, labels, disp)  # the input names no ES
    assert p.input_es == -1
    es = first.es
    other = es + 1
    browser, seg_seq = p.ref("Browser"), p.ref("SegmentationSequence")
    browser.SetSelectedItemNumber(other)  # erase the LV cavity of frame es + 1 on two slices: smallest LV now
    lab = labels[other].copy()
    cavity = lab == 3
    ks = np.flatnonzero(cavity.any(axis=(1, 2)))[:2]
    erased = cavity.copy()
    erased[ks] = False
    mrml.set_segment_mask(browser.GetProxyNode(seg_seq), "lv_cavity", erased, cine.geometry)
    again = harness.logic.recompute(p)
    edited = labels.copy()
    edited[other][cavity & ~erased] = 0
    ref = compute(dataclasses.replace(cine, es=None), edited, disp, ed=first.ed).report
    assert again.es == other == ref["frames"]["es"]
    assert again.report["volumetrics"] == ref["volumetrics"]
    p.es = es  # the field set: it decides
    assert harness.logic.recompute(p).es == es
    p.es = cine.n_frames + 3
    with pytest.raises(ValueError, match="not among the study's frames"):
        harness.logic.recompute(p)
    p.es = -1
    p.ed = first.ed + 1
    with pytest.raises(ValueError, match="press Run"):
        harness.logic.recompute(p)
    # the input names its ES (5): auto keeps it, also after the edit; unknown (older scene): the analysed ES
    p.ed = -1
    harness.logic.run(dataclasses.replace(cine, es=5), p, labels, disp)
    assert p.input_es == 5 and harness.logic.recompute(p).es == 5
    p.input_es = -2
    assert harness.logic.recompute(p).es == p.analysis_es == 5


def test_charts_without_frame_timing_plot_frames_from_the_first_run(harness, phantom):
    import dataclasses

    cine, labels, disp = phantom
    p = harness.params
    harness.logic.run(dataclasses.replace(cine, times_ms=np.full(cine.n_frames, np.nan)), p, labels, disp)
    table = p.ref("CurveTable")
    assert table.GetTable().GetColumnByName("time (ms)") is None
    for role in ("StrainChart", "RateChart", "VolumeChart"):
        assert p.ref(role).GetXAxisTitle() == "frame"
        assert all(s.GetXColumnName() == "frame" for s in harness.logic.chart_series(p, role)
                   if s.GetAttribute("DeepStrain.column"))


def test_recompute_refines_the_network_motion_with_edited_contours(harness, phantom):
    """Networks run (motion refined by default); the ES wall is thickened by hand; Recompute refines
    the motion again with it: more radial strain, the displacement sequence updated at ES only."""
    from scipy import ndimage

    cine, _, _ = phantom
    h, p = harness, harness.params
    first = h.logic.run(cine, p)
    assert first.report["provenance"]["motion_refined_with"] == "network segmentation"
    assert h.logic.analysis.network_motion is None  # kept by the logic's cache, not in the analysis
    same = h.logic.recompute(p)  # nothing edited: nothing changes
    assert same.report["global_strain"] == first.report["global_strain"]
    es = first.es
    browser = p.ref("Browser")
    browser.SetSelectedItemNumber(es)
    lab = first.labels[es].copy()
    grow = ndimage.binary_dilation(lab == 2, structure=np.array([[[0, 0, 0], [0, 1, 0], [0, 0, 0]],
                                                                 [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                                 [[0, 0, 0], [0, 1, 0], [0, 0, 0]]]))
    lab[grow & (lab == 3)] = 2
    proxy = browser.GetProxyNode(p.ref("SegmentationSequence"))
    for name, value in (("lv_cavity", 3), ("lv_myocardium", 2)):
        mrml.set_segment_mask(proxy, name, lab == value, cine.geometry)
    nodes = h.scene.GetNumberOfNodes()
    edited = h.logic.recompute(p)
    assert h.scene.GetNumberOfNodes() == nodes
    assert edited.report["ess"]["radial"] > first.report["ess"]["radial"] + 2.0
    prov = edited.report["provenance"]
    assert prov["segmentation"] == "networks, edited in Slicer"
    assert prov["motion_refined_with"] == "segmentation edited in Slicer"
    stored = mrml.transform_sequence_to_displacement(p.ref("DisplacementSequence"), cine.geometry)
    np.testing.assert_allclose(stored, edited.displacement, atol=1e-4)
    moved = np.abs(edited.displacement - first.displacement).max(axis=(1, 2, 3, 4))
    assert moved[es] > 0.1 and np.all(np.delete(moved, es) < 1e-6)
    # "Refine motion" off: the motion network's field as it is
    p.refine_motion = False
    try:
        raw = h.logic.recompute(p)
    finally:
        p.refine_motion = True
    assert raw.report["provenance"]["motion_refined_with_segmentation"] is False
    assert "motion_refined_with" not in raw.report["provenance"]
    assert raw.report["ess"]["radial"] != edited.report["ess"]["radial"]
    assert h.logic.recompute(p).report["ess"] == edited.report["ess"]  # on again: refined with the edits again
    # after a scene is saved and loaded again: Testing/slicer/test_scene_reload.py


def test_recompute_after_reload_keeps_the_stored_motion_when_the_networks_cannot_reproduce_it(harness, phantom):
    """Other weights than the report records: the networks are not run again; the stored motion is
    used as it is, and the provenance says why (once: the next Recompute does not try again)."""
    cine, _, _ = phantom
    h, p = harness, harness.params
    first = h.logic.run(cine, p)
    report = h.logic.report(p)
    report["provenance"]["weights"]["motion"]["sha256"] = "0" * 64
    p.ref("ReportText").SetText(json.dumps(report))
    h.logic._cache = {}
    h.logic.analysis = None
    unedited = h.logic.recompute(p).report["provenance"]  # the segmentation the stored motion was refined with
    assert unedited["segmentation"] == "networks" and unedited["motion_refined_with"] == "network segmentation"
    h.logic._cache, h.logic.analysis = {}, None
    browser = p.ref("Browser")
    browser.SetSelectedItemNumber(first.es)
    lab = first.labels[first.es].copy()
    lab[(lab == 3) & np.roll(lab == 2, 1, axis=1)] = 2  # a hand edit: the stored motion is not refined with it
    proxy = browser.GetProxyNode(p.ref("SegmentationSequence"))
    for name, value in (("lv_cavity", 3), ("lv_myocardium", 2)):
        mrml.set_segment_mask(proxy, name, lab == value, cine.geometry)
    again = h.logic.recompute(p)
    prov = again.report["provenance"]
    assert prov["segmentation"] == "networks, edited in Slicer"
    assert prov["networks_run_again"].startswith("no: the motion weights"), prov
    assert "not refined again" in prov["motion_refined_with"] and "sha256" in prov["motion_refined_with"]
    np.testing.assert_allclose(again.displacement, first.displacement, atol=1e-4)
    assert h.logic.recompute(p).report["provenance"]["networks_run_again"] == prov["networks_run_again"]

def test_cancel_and_failure_leave_no_new_nodes(harness, phantom):
    cine, labels, disp = phantom
    before = harness.node_ids()
    calls = []

    def cancel_late(fraction, message):
        calls.append(message)
        if fraction >= 0.9:
            raise dlogic.Cancelled()

    with pytest.raises(dlogic.Cancelled):
        harness.logic.run(cine, harness.params, labels, disp, progress=cancel_late)
    assert len(calls) > 3
    assert harness.node_ids() == before
    bad = disp.copy()
    bad[0] += 1.0  # ED displacement must be zero
    from deepstrain.errors import InputError

    with pytest.raises(InputError):
        harness.logic.run(cine, harness.params, labels, bad)
    assert harness.node_ids() == before


def test_rerun_replaces_the_previous_study_nodes(study):
    h, cine, labels, disp, analysis = study
    n = h.scene.GetNumberOfNodes()
    h.logic.recompute(h.params)
    h.logic.run(cine, h.params, labels, disp)
    assert h.scene.GetNumberOfNodes() == n
    assert h.scene.GetNumberOfNodesByClass("vtkMRMLSequenceBrowserNode") == 1


def test_parameters_are_typed_and_stored_in_the_node(harness):
    p = harness.params
    p.spacing, p.ed, p.heart_rate_bpm, p.show_glyphs = "8, 1.25,1.25", 3, 72.0, False
    q = dlogic.Parameters(harness.logic.parameter_node().node)
    assert q.spacing_tuple() == (8.0, 1.25, 1.25) and q.ed == 3 and q.heart_rate_bpm == 72.0 and q.show_glyphs is False
    assert q.node.GetParameter("ed") == "3"
    p.spacing = "1,2"
    with pytest.raises(ValueError, match="three positive numbers"):
        p.spacing_tuple()


def test_cine_from_loaded_sequence_with_overrides(harness, phantom):
    cine, labels, disp = phantom
    seq = mrml.cine_to_sequence(harness.scene, cine, "loaded 4D")
    p = harness.params
    p.spacing, p.rr_ms, p.ed, p.es = "9,1.5,1.5", 1000.0, 0, 3
    c = harness.logic.cine_from_sequence(seq, p)
    assert c.geometry.spacing.tolist() == [9.0, 1.5, 1.5]
    np.testing.assert_allclose(c.times_ms, np.arange(cine.n_frames) * 1000.0 / cine.n_frames)
    assert (c.ed, c.es) == (0, 3)


def test_a_result_sequence_of_the_study_is_refused_as_input(study):
    """The input selector lists every sequence: the study's segmentation (or displacement, glyphs)
    picked as the input is refused with a message that says what it is; the study's cine is a cine."""
    h = study[0]
    p = h.params
    with pytest.raises(ValueError, match="is one of a study's results .* not a cine"):
        h.logic.cine_from_sequence(p.ref("SegmentationSequence"), p)
    assert h.logic.cine_from_sequence(p.ref("CineSequence"), p).n_frames == study[1].n_frames


def test_cine_from_sequence_refuses_heart_rate_and_rr_together(harness, phantom):
    """As a file input does (deepstrain.io.load_cine): one of the two, not both."""
    cine, labels, disp = phantom
    seq = mrml.cine_to_sequence(harness.scene, cine, "loaded 4D")
    p = harness.params
    p.heart_rate_bpm, p.rr_ms = 60.0, 1000.0
    with pytest.raises(ValueError, match="either the heart rate or the RR interval, not both"):
        harness.logic.cine_from_sequence(seq, p)
    p.rr_ms = 0.0
    np.testing.assert_allclose(harness.logic.cine_from_sequence(seq, p).times_ms,
                               np.arange(cine.n_frames) * 1000.0 / cine.n_frames)


def test_glyph_scale_applies_to_the_shown_glyphs_at_once(study):
    """The Glyph scale field changes the arrows of the study shown, and the value is kept for the next Run."""
    h, cine, labels, disp, analysis = study
    p = h.params
    glyphs = p.ref("Browser").GetProxyNode(p.ref("GlyphSequence")).GetDisplayNode()
    assert glyphs.GetGlyphScalePercent() == 100.0
    h.logic.set_glyph_scale(p, 250.0)
    assert glyphs.GetGlyphScalePercent() == 250.0 and p.glyph_scale_percent == 250.0
    p.ref("Browser").SetSelectedItemNumber(analysis.es)  # another frame: the same display node
    assert p.ref("Browser").GetProxyNode(p.ref("GlyphSequence")).GetDisplayNode().GetGlyphScalePercent() == 250.0
    h.logic.run(cine, p, labels, disp)  # the next study starts with the value set
    glyphs = p.ref("Browser").GetProxyNode(p.ref("GlyphSequence")).GetDisplayNode()
    assert glyphs.GetGlyphScalePercent() == 250.0


def test_body_size_gives_indexed_volumes_and_a_results_table(harness, phantom):
    """Height and weight fields index the volumes (Mosteller BSA); the results table lists every
    single-number result with its unit; fields changed after Run count at Recompute, also after the
    in-memory state is gone (the subject is kept in the parameter node), and emptied fields give the
    input's values (here none)."""
    cine, labels, disp = phantom
    seq = mrml.cine_to_sequence(harness.scene, cine, "loaded 4D")
    p = harness.params
    p.height_cm, p.weight_kg, p.heart_rate_bpm = 180.0, 80.0, 60.0
    c = harness.logic.cine_from_sequence(seq, p)
    assert (c.subject.height_cm, c.subject.weight_kg, c.subject.heart_rate_bpm) == (None, None, 60.0)
    a = harness.logic.run(c, p, labels, disp)  # Run puts the height and weight fields over the input's
    assert c.subject.height_cm is None  # the caller's cine is not changed
    assert (a.cine.subject.height_cm, a.cine.subject.weight_kg) == (180.0, 80.0)
    assert set(a.cine.subject.sources.values()) == {"module field"}
    vol = a.report["volumetrics"]
    assert a.report["subject"]["bsa_m2"] == pytest.approx(2.0)
    assert vol["lv_edvi_ml_per_m2"] == pytest.approx(vol["lv_edv_ml"] / 2.0, abs=1e-3)
    assert vol["lv_cardiac_output_l_per_min"] == pytest.approx(vol["lv_sv_ml"] * 60 / 1000, abs=1e-3)
    res = harness.logic.results(p)
    assert res["bsa"] == (pytest.approx(2.0), "m2") and res["lv_edv"][1] == "ml"
    assert res["lv_mass_index"] == (pytest.approx(vol["lv_mass_g"] / 2.0, abs=1e-3), "g/m2")
    assert res["ess_circumferential"][0] == pytest.approx(a.report["ess"]["circumferential"])
    assert res["ess_circumferential"][1] == "%"
    own = {n.GetID() for n in harness.logic.study_nodes(p)}
    assert p.ref("ResultsTable").GetID() in own  # removed with the study
    st = p.ref("SliceTable").GetTable()  # volumes per slice, adding up to EDV and ESV
    assert st.GetNumberOfRows() == labels.shape[1] and p.ref("SliceTable").GetID() in own
    per_slice = {st.GetColumnName(i): [st.GetValue(r, i).ToDouble() for r in range(st.GetNumberOfRows())]
                 for i in range(st.GetNumberOfColumns())}
    assert sum(per_slice["LV cavity ED (ml)"]) == pytest.approx(vol["lv_edv_ml"], abs=1e-3)
    assert sum(per_slice["LV cavity ES (ml)"]) == pytest.approx(vol["lv_esv_ml"], abs=1e-3)
    assert per_slice["slice"] == list(range(labels.shape[1])) and min(per_slice["position from base (mm)"]) == 0
    p.weight_kg = 125.0  # corrected after Run
    new = harness.logic.recompute(p)
    assert new.report["subject"]["bsa_m2"] == pytest.approx(2.5)
    assert harness.logic.results(p)["lv_edvi"][0] == pytest.approx(vol["lv_edv_ml"] / 2.5, abs=1e-3)
    harness.logic._cache = {}  # as after a scene reload: the subject comes from the parameter node
    again = harness.logic.recompute(p)
    assert again.report["subject"]["bsa_m2"] == pytest.approx(2.5) and again.report["subject"]["heart_rate_bpm"] == 60.0
    p.height_cm = p.weight_kg = 0.0  # emptied: from the input, which has none
    empty = harness.logic.recompute(p)
    assert empty.report["subject"]["bsa_m2"] is None and empty.report["subject"]["heart_rate_bpm"] == 60.0
    p.weight_kg = 900.0
    with pytest.raises(ValueError, match="weight 900 kg is not plausible"):
        harness.logic.recompute(p)


def test_weights_folder_without_manifest_is_refused_and_leaves_no_nodes(harness, phantom, tmp_path):
    cine, labels, disp = phantom
    before = harness.node_ids()
    harness.params.weights_dir = str(tmp_path)
    from deepstrain.errors import InputError

    try:
        with pytest.raises(InputError, match="manifest"):
            harness.logic.run(cine, harness.params, None, disp)
    finally:
        harness.params.weights_dir = ""
    assert harness.node_ids() == before


def test_missing_torch_gives_install_help(monkeypatch):
    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("No module named 'torch'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(RuntimeError, match="Extensions Manager") as exc:
        dlogic.DeepStrainLogic.require_torch()
    # the CPU build (plain PyPI torch on Linux is a multi-GB CUDA build), as the module installs it
    if sys.platform != "darwin":
        assert "pip_install('torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu')" in str(exc.value)
    assert "pip_install('torch==2.13.0')" not in str(exc.value) or sys.platform == "darwin"


def test_layout_xml_has_slice_plot_and_polar_views():
    root = ET.fromstring(dlogic.LAYOUT_XML)
    views = [(v.get("class"), v.get("singletontag")) for v in root.iter("view")]
    assert ("vtkMRMLSliceNode", "Red") in views
    assert ("vtkMRMLPlotViewNode", dlogic.PLOT_VIEW_TAG) in views
    assert ("vtkMRMLViewNode", dlogic.POLAR_VIEW_TAG) in views
    assert ("vtkMRMLTableViewNode", dlogic.TABLE_VIEW_TAG) in views


def test_layout_views_show_the_chart_and_the_chosen_table(study):
    h = study[0]
    h.logic.attach_views(h.params)  # before the layout exists: nothing to attach to, no error
    plot_view, table_view = slicer.vtkMRMLPlotViewNode(), slicer.vtkMRMLTableViewNode()
    plot_view.SetSingletonTag(dlogic.PLOT_VIEW_TAG)
    table_view.SetSingletonTag(dlogic.TABLE_VIEW_TAG)
    h.scene.AddNode(plot_view)
    h.scene.AddNode(table_view)
    h.logic.attach_views(h.params)
    assert plot_view.GetPlotChartNodeID() == h.params.ref("StrainChart").GetID()
    assert table_view.GetTableNodeID() == h.params.ref("ResultsTable").GetID()
    h.logic.attach_views(h.params, "SliceTable")
    assert table_view.GetTableNodeID() == h.params.ref("SliceTable").GetID()
    with pytest.raises(ValueError, match="no table role"):
        h.logic.attach_views(h.params, "Volumes")


def test_rv_insertion_point_orients_the_aha_segments_at_recompute(study):
    """A point placed in the study's "anterior RV insertion" list turns the AHA segments at the
    next Recompute (report: aha_reference); deleting it restores the RV-contour orientation; a
    new Run removes the point list with the study."""
    h, cine, labels, disp, analysis = study
    p = h.params
    node = h.logic.rv_insertion_node(p)
    assert h.logic.rv_insertion_node(p) is node and h.logic.rv_insertion_point(p) is None
    assert node.GetMaximumNumberOfControlPoints() == 1
    frame = analysis.frame
    ks = np.nonzero(np.all(np.isfinite(frame.centers), axis=1))[0]
    centre = frame.centers[ks[ks.size // 2]]
    l_vec = frame.long_axis
    side = np.cross(l_vec, [1.0, 0.0, 0.0])
    side /= np.linalg.norm(side)
    node.AddControlPointWorld(vtk.vtkVector3d(*(centre + 25.0 * side)))
    np.testing.assert_allclose(h.logic.rv_insertion_point(p), centre + 25.0 * side, atol=1e-6)
    turned = h.logic.recompute(p)
    ref = turned.report["aha_reference"]
    assert ref["septum_from"] == "given anterior RV insertion point"
    np.testing.assert_allclose(ref["rv_insertion_ras"], centre + 25.0 * side, atol=1e-3)
    assert turned.report["aha"] != analysis.report["aha"]
    assert turned.report["global_strain"] == analysis.report["global_strain"]  # only the segments move
    assert json.loads(p.ref("ReportText").GetText())["aha_reference"] == ref
    node.RemoveAllControlPoints()
    back = h.logic.recompute(p)
    assert back.report["aha"] == analysis.report["aha"]
    assert back.report["aha_reference"]["septum_from"] == "RV contact of the ED labels"
    node_id = node.GetID()
    h.logic.run(cine, p, labels, disp)  # an empty point list goes with the study
    assert h.scene.GetNodeByID(node_id) is None and p.ref("RvInsertion") is None


def test_run_again_keeps_the_rv_insertion_point_for_the_same_input_only(study):
    """Run again on the study's own input keeps the point the user placed (the same node, now the new
    study's) and orients the AHA segments with it; on another input Run says why it cannot keep it
    (the module asks first) and the point goes with the study."""
    h, cine, labels, disp, analysis = study
    p = h.params
    frame = analysis.frame
    ks = np.nonzero(np.all(np.isfinite(frame.centers), axis=1))[0]
    side = np.cross(frame.long_axis, [1.0, 0.0, 0.0])
    point = frame.centers[ks[ks.size // 2]] + 25.0 * side / np.linalg.norm(side)
    node = h.logic.rv_insertion_node(p)
    node.AddControlPointWorld(vtk.vtkVector3d(*point))
    kept, why_not = h.logic.kept_rv_insertion(p, cine)
    np.testing.assert_allclose(kept, point, atol=1e-6)
    assert why_not == ""
    again = h.logic.run(cine, p, labels, disp)
    assert p.ref("RvInsertion") is node and h.scene.GetNodeByID(node.GetID()) is node
    assert node.GetAttribute(dlogic.STUDY_ATTRIBUTE) == p.study_id
    assert again.report["aha_reference"]["septum_from"] == "given anterior RV insertion point"
    np.testing.assert_allclose(h.logic.rv_insertion_point(p), point, atol=1e-6)
    other = dataclasses.replace(cine, data=cine.data * 0.5)
    kept, why_not = h.logic.kept_rv_insertion(p, other)
    assert kept is None and "not the study's" in why_not
    h.logic.run(other, p, labels, disp)
    assert p.ref("RvInsertion") is None and h.scene.GetNodeByID(node.GetID()) is None


def test_quality_findings_follow_edits_and_show_their_frame_and_slice(study):
    """An ES slice whose myocardium is cut open by hand: Recompute reports it, and going to the finding
    shows that frame and moves the slice views onto that slice."""
    h, cine, labels, disp, analysis = study
    p = h.params
    assert h.logic.quality_findings(p) == [] and analysis.report["quality"] == []
    es = analysis.es
    lab = labels[es]
    ks = [k for k in range(lab.shape[0]) if (lab[k] == 3).any()]
    k = ks[len(ks) // 2]
    cut = lab == 2
    cols = np.nonzero(cut[k].any(axis=0))[0]
    cut[k][:, : (cols.min() + cols.max()) // 2] = False  # the myocardium keeps only one half on slice k
    cut[:k] |= lab[:k] == 2
    cut[k + 1:] |= lab[k + 1:] == 2
    browser = p.ref("Browser")
    browser.SetSelectedItemNumber(es)
    mrml.set_segment_mask(browser.GetProxyNode(p.ref("SegmentationSequence")), "lv_myocardium", cut, cine.geometry)
    h.logic.recompute(p)
    findings = h.logic.quality_findings(p)
    assert [(f["check"], f["frame"], f["slices"]) for f in findings] == [("open_myocardium", es, [k])]
    red = h.scene.AddNewNodeByClass("vtkMRMLSliceNode")
    red.SetLayoutName("Red")
    red.SetOrientationToAxial()
    browser.SetSelectedItemNumber(analysis.ed)
    assert h.logic.go_to_finding(p, 0) == findings[0]
    assert h.logic.current_frame(p) == es
    point = np.array(findings[0]["points_ras"][0])
    m = vtk.vtkMatrix4x4()
    m.DeepCopy(red.GetSliceToRAS())
    normal = np.array([m.GetElement(i, 2) for i in range(3)])
    origin = np.array([m.GetElement(i, 3) for i in range(3)])
    assert abs((point - origin) @ normal) < 1e-6  # the view now cuts through the finding's point
    idx = np.linalg.solve(cine.geometry.index_to_world[:3, :3], point - cine.geometry.origin)
    assert abs(idx[0] - k) < 1e-3  # and that point is on the flagged slice (stored to 0.01 mm)
    with pytest.raises(ValueError):
        h.logic.go_to_finding(p, 1)


def test_analysis_warnings_are_listed(harness, phantom):
    """A cine without frame timing: the module's warnings list says why strain rates are missing; a timed one has none."""
    from dataclasses import replace

    cine, labels, disp = phantom
    assert harness.logic.analysis_warnings(harness.params) == []  # no analysis yet
    harness.logic.run(cine, harness.params, labels, disp)
    assert harness.logic.analysis_warnings(harness.params) == []
    untimed = replace(cine, times_ms=np.full(cine.n_frames, np.nan))
    harness.logic.run(untimed, harness.params, labels, disp)
    notes = harness.logic.analysis_warnings(harness.params)
    assert notes == harness.logic.report(harness.params)["warnings"]
    assert any("no frame timing" in w and "strain rates not computed" in w for w in notes)


def test_report_says_where_the_voxel_spacing_came_from(harness, phantom):
    cine, labels, disp = phantom
    h, p = harness, harness.params
    p.spacing = ",".join(f"{v:g}" for v in cine.geometry.spacing)  # the module's Spacing field
    a = h.logic.run(cine, p, labels, disp)
    prov = a.report["provenance"]
    assert prov["voxel_spacing_source"] == dlogic.MODULE_FIELD
    assert prov["voxel_spacing_mm"] == [float(v) for v in cine.geometry.spacing]


def test_exported_volumes_come_from_the_segmentation_not_the_chart_table(study, tmp_path, egl):
    """A saved scene stores the chart's table with 6 significant digits: Export computes the volume
    columns of strain.csv from the segmentation at full precision, as deepstrain analyze does."""
    import csv

    h, _, _, _, analysis = study
    table = h.params.ref("CurveTable")
    col = table.GetTable().GetColumnByName(dlogic.VOLUME_COLUMNS["lv"])
    col.SetValue(0, float(col.GetValue(0)) + 0.123)  # the table no longer holds the exact volume
    files = h.logic.export(h.params, tmp_path)
    rows = list(csv.DictReader(open(next(f for f in files if f.name.endswith("_strain.csv")))))
    key = next(k for k in rows[0] if k.startswith("lv_volume"))
    got = np.array([float(r[key]) for r in rows])
    np.testing.assert_allclose(got, analysis.volume_curves["lv"], rtol=1e-6)
