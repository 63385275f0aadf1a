"""Offscreen pictures (EGL) with Slicer's displayable managers, and the one-click export.

PNGs are written to Testing/_output/ (git-ignored) and checked on their pixels.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from DeepStrainSlicerLib import render
from DeepStrainSlicerLib.mrml import SEGMENTS


def _near(rgb: np.ndarray, colour, tol: float) -> np.ndarray:
    return np.abs(rgb.astype(float) - 255.0 * np.asarray(colour)).max(axis=-1) <= tol


@pytest.fixture
def study(harness, phantom, egl):
    cine, labels, disp = phantom
    analysis = harness.logic.run(cine, harness.params, labels, disp)
    return harness, analysis


def _save(rgb, output_dir, name):
    path = output_dir / "slicer" / f"{name}.png"
    path.unlink(missing_ok=True)  # test pictures are replaced on every run
    render.write_png(rgb, path)
    return path


def test_slice_view_with_segmentation_and_glyphs(study, output_dir):
    h, analysis = study
    p, logic = h.params, h.logic
    size = (384, 384)
    logic.set_overlays(p, segmentation=True, glyphs=True)
    ed = render.render_slice(logic, p, analysis.ed, size, app_logic=h.app_logic)
    es = render.render_slice(logic, p, analysis.es, size, app_logic=h.app_logic)
    _save(ed, output_dir, "slice_ED_overlays")
    _save(es, output_dir, "slice_ES_overlays")
    logic.set_overlays(p, segmentation=False, glyphs=False)
    plain = render.render_slice(logic, p, analysis.es, size, app_logic=h.app_logic)
    _save(plain, output_dir, "slice_ES_plain")
    # the cine itself is visible (grey levels spread), not a black picture
    grey = plain.astype(float)
    assert np.all(np.abs(grey[..., 0] - grey[..., 1]) < 2) and grey.std() > 20
    # every segment's outline colour (drawn opaque) is present at ED and ES
    for rgb in (ed, es):
        for spec in SEGMENTS:
            assert _near(rgb, spec.color, 30).sum() > 30, spec.name
        assert _near(plain, SEGMENTS[1].color, 30).sum() < 5
    # glyphs: pixels that change when only the glyphs are switched on, at ES; none at ED (zero motion)
    logic.set_overlays(p, segmentation=False, glyphs=True)
    glyph_es = render.render_slice(logic, p, analysis.es, size, app_logic=h.app_logic)
    glyph_ed = render.render_slice(logic, p, analysis.ed, size, app_logic=h.app_logic)
    plain_ed = render.render_slice(logic, p, analysis.ed, size, app_logic=h.app_logic)
    _save(glyph_es, output_dir, "slice_ES_glyphs")
    changed = np.abs(glyph_es.astype(int) - plain.astype(int)).max(axis=-1) > 40
    assert changed.sum() > 500
    assert (np.abs(glyph_ed.astype(int) - plain_ed.astype(int)).max(axis=-1) > 40).sum() == 0
    # ... and they lie on the myocardium: compare with the myocardium drawn opaque alone
    seg_proxy = p.ref("Browser").GetProxyNode(p.ref("SegmentationSequence"))
    d = seg_proxy.GetDisplayNode()
    logic.set_overlays(p, segmentation=True, glyphs=False)
    d.SetOpacity2DFill(1.0)
    d.SetSegmentVisibility("lv_cavity", False)
    d.SetSegmentVisibility("rv_cavity", False)
    myo_only = render.render_slice(logic, p, analysis.es, size, app_logic=h.app_logic)
    myo = _near(myo_only, SEGMENTS[1].color, 40)
    from scipy import ndimage

    near_myo = ndimage.binary_dilation(myo, iterations=6)
    assert myo.sum() > 2000
    assert changed[near_myo].sum() / changed.sum() > 0.95


def test_polar_map_picture(study, output_dir):
    h, analysis = study
    p = h.params
    model = p.ref("PolarModel")
    vmin, vmax = model.GetDisplayNode().GetScalarRange()
    assert vmin == -vmax and vmax >= 5
    h.logic.highlight_segment(p, 7)
    rgb = render.render_polar_map(model.GetPolyData(), vmin, vmax, model.GetAttribute("DeepStrain.title"), 7)
    _save(rgb, output_dir, "polar_map")
    from DeepStrainSlicerLib import polarmap

    # the colour of each segment is its value's colour on the scale (sample at the ring, away from labels)
    h_px, w_px, _ = rgb.shape
    lut = polarmap.lookup_table(vmin, vmax)
    values = analysis.report["aha"]["circumferential_percent"]
    # map (x, y) of the bullseye to pixels with the renderer's camera settings
    cx, cy, scale = 1.2, 0.25, 5.8
    ppu = h_px / (2 * scale)
    for seg in (1, 4, 9, 13):
        r0, r1, a0, a1 = polarmap.segment_sector(seg)
        a = np.radians(0.5 * (a0 + a1) + 15)
        r = r0 + 0.8 * (r1 - r0)
        x, y = r * np.cos(a), r * np.sin(a)
        col = int(round(w_px / 2 + (x - cx) * ppu))
        row = int(round(h_px / 2 - (y - cy) * ppu))
        rgb_out = [0.0, 0.0, 0.0]
        lut.GetColor(values[str(seg)], rgb_out)
        expect = np.array(rgb_out) * 255
        assert np.abs(rgb[row, col].astype(float) - expect).max() < 25, (seg, rgb[row, col], expect)
    # highlight outline (yellow) present; colour bar present (blue and red ends)
    assert _near(rgb, (1.0, 0.8, 0.0), 40).sum() > 200
    assert _near(rgb, polarmap.diverging_rgb(0.0), 20).sum() > 100 and _near(rgb, polarmap.diverging_rgb(1.0), 20).sum() > 100


def test_curves_picture(study, output_dir):
    h, analysis = study
    rgb = render.render_curves(h.logic.report(h.params))
    _save(rgb, output_dir, "curves")
    from DeepStrainSlicerLib.logic import COMPONENT_COLORS

    for c, colour in COMPONENT_COLORS.items():
        assert _near(rgb, colour, 30).sum() > 200, c
    assert (rgb.min(axis=-1) > 245).mean() > 0.5  # mostly white background
    # with the volume curves (as exported): a third panel, taller, in the volume colours
    from DeepStrainSlicerLib.logic import VOLUME_COLORS

    tall = render.render_curves(h.logic.report(h.params), analysis.volume_curves)
    _save(tall, output_dir, "curves_with_volumes")
    assert tall.shape[0] > rgb.shape[0] and tall.shape[1] == rgb.shape[1]
    for key, colour in VOLUME_COLORS.items():
        assert _near(tall, colour, 30).sum() > 200, key


def test_export_writes_all_files_and_never_overwrites(study, output_dir, tmp_path):
    h, analysis = study
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    first = h.logic.export(h.params, tmp_path, now=when)
    names = sorted(f.name for f in first)
    stem = f"{h.params.study_name}_20260102-030405"
    assert names == sorted([f"{stem}_slice_ED_frame{analysis.ed}.png", f"{stem}_slice_ES_frame{analysis.es}.png",
                            f"{stem}_curves.png", f"{stem}_polar_map.png", f"{stem}_qc.png", f"{stem}_report.json",
                            f"{stem}_strain.csv", f"{stem}_results.csv", f"{stem}_slices.csv"])
    assert all(f.stat().st_size > 1000 for f in first if f.suffix == ".png")
    mtimes = {f: f.stat().st_mtime_ns for f in first}
    second = h.logic.export(h.params, tmp_path, now=when)  # same second: a new folder, old files untouched
    assert second[0].parent.name == f"{stem}-2"
    assert all(f.stat().st_mtime_ns == m for f, m in mtimes.items())
    with pytest.raises(FileExistsError):
        render.write_png(np.zeros((4, 4, 3), np.uint8), first[0])
    # the export leaves the scene as it was (no offscreen view nodes left behind) and the frame unchanged
    assert h.scene.GetNumberOfNodesByClass("vtkMRMLSliceNode") == 0
    import shutil

    dest = output_dir / "slicer" / "export"
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(first[0].parent, dest)


def test_export_is_refused_after_an_edit_until_recompute(study, tmp_path):
    """Pictures and tables must describe the same contours: an edit not yet recomputed stops the export
    (nothing written); after Recompute the export goes through, and its QC page shows the edited contours."""
    from DeepStrainSlicerLib import mrml

    h, analysis = study
    p = h.params
    browser = p.ref("Browser")
    browser.SetSelectedItemNumber(analysis.ed)
    cine = h.logic._cache["cine"]
    lab = analysis.labels[analysis.ed]
    grown = (lab == 3) | ((lab == 2) & (np.roll(lab, 1, axis=2) == 3))  # one voxel of myocardium to the cavity
    mrml.set_segment_mask(browser.GetProxyNode(p.ref("SegmentationSequence")), "lv_cavity", grown, cine.geometry)
    mrml.set_segment_mask(browser.GetProxyNode(p.ref("SegmentationSequence")), "lv_myocardium",
                          (lab == 2) & ~grown, cine.geometry)
    with pytest.raises(ValueError, match="press Recompute"):
        h.logic.export(p, tmp_path)
    assert list(tmp_path.iterdir()) == []
    h.logic.recompute(p)
    files = h.logic.export(p, tmp_path)
    assert any(f.name.endswith("_qc.png") for f in files)


def test_export_is_refused_after_a_field_or_the_rv_point_changed_until_recompute(study, tmp_path):
    """What Recompute would change (weight field, RV insertion point, ES field) stops the export,
    naming the change; undoing it or pressing Recompute lets it through."""
    import vtk

    h, analysis = study
    p = h.params
    p.weight_kg = 120.0
    with pytest.raises(ValueError, match="height or weight field"):
        h.logic.export(p, tmp_path)
    p.weight_kg = 0.0  # undone: the results are the study's again
    assert h.logic.changes_since_results(p, *h.logic.study_arrays(p)[:2]) == []
    frame = analysis.frame
    ks = np.nonzero(np.all(np.isfinite(frame.centers), axis=1))[0]
    side = np.cross(frame.long_axis, [1.0, 0.0, 0.0])
    point = frame.centers[ks[ks.size // 2]] + 25.0 * side / np.linalg.norm(side)
    h.logic.rv_insertion_node(p).AddControlPointWorld(vtk.vtkVector3d(*point))
    assert analysis.es - 1 != analysis.ed  # the phantom's frames are the whole cycle: index = frame number
    p.es = analysis.es - 1
    with pytest.raises(ValueError, match="RV insertion point.*ES field gives frame") as err:
        h.logic.export(p, tmp_path)
    assert "press Recompute" in str(err.value) and list(tmp_path.iterdir()) == []
    h.logic.recompute(p)
    assert h.logic.changes_since_results(p, *h.logic.study_arrays(p)[:2]) == []
    assert any(f.name.endswith("_report.json") for f in h.logic.export(p, tmp_path))


def test_pictures_of_every_frame_show_the_ed_slice_and_crop(study, monkeypatch):
    """The slice and the field of view come from the ED contours for the ED and the ES picture
    alike (before: each frame's own contours, so ED and ES could show different slices)."""
    h, analysis = study
    seen = []
    real = render.middle_slice
    monkeypatch.setattr(render, "middle_slice", lambda lab: seen.append(lab.copy()) or real(lab))
    for frame in (analysis.ed, analysis.es):
        render.render_slice(h.logic, h.params, frame, (128, 128), app_logic=h.app_logic)
        assert h.logic.current_frame(h.params) == frame  # the picture's frame is the one shown
    assert len(seen) == 2 and all(np.array_equal(s, analysis.labels[analysis.ed]) for s in seen)


def test_export_names_are_safe_and_the_report_says_the_spacing(study, tmp_path):
    import json

    h, analysis = study
    when = dt.datetime(2026, 1, 2, 3, 4, 5)
    (tmp_path / "out").mkdir()
    for name, stem in ((".hidden", "hidden"), ("x" * 300, "x" * 80), ("a/../b c", "a_.._b_c")):
        h.params.study_name = name
        files = h.logic.export(h.params, tmp_path / "out", now=when)
        assert files[0].parent.parent == tmp_path / "out" and files[0].parent.name.startswith(f"{stem}_2026")
    rep = json.loads(next(f for f in files if f.name.endswith("_report.json")).read_text())
    prov = rep["provenance"]
    assert prov["voxel_spacing_mm"] == [float(v) for v in analysis.cine.geometry.spacing]
    assert prov["voxel_spacing_source"] == "input"
