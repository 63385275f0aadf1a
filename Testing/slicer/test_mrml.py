"""MRML adapters on real slicer-core nodes: round trips and the grid-transform direction."""
from __future__ import annotations

import numpy as np
import pytest
import slicer
import vtk
from scipy import ndimage

from deepstrain.cine import Cine, Geometry
from DeepStrainSlicerLib import mrml

OBLIQUE = np.array([[0.0, 0.6, -0.8], [0.0, 0.8, 0.6], [1.0, 0.0, 0.0]])  # columns: slice, row, col directions


def _geometry() -> Geometry:
    return Geometry(spacing=(7.0, 1.4, 1.2), origin=(12.0, -30.0, 41.0), direction=OBLIQUE)


def _labels(shape=(4, 5, 24, 26)) -> np.ndarray:
    lab = np.zeros(shape, np.uint8)
    lab[:, 1:4, 6:16, 6:18] = 2
    lab[:, 1:4, 9:13, 9:15] = 3
    lab[:, 2, 17:21, 3:8] = 1
    return lab


def test_cine_sequence_round_trip(harness):
    g = _geometry()
    data = np.random.default_rng(0).random((4, 5, 24, 26)).astype(np.float32)
    cine = Cine(data, g, np.array([0.0, 35.5, 71.0, 106.5]), name="s")
    seq = mrml.cine_to_sequence(harness.scene, cine)
    assert seq.GetNumberOfDataNodes() == 4
    assert seq.GetIndexUnit() == "ms"
    back = mrml.sequence_to_cine(seq)
    assert np.array_equal(back.data, data)
    np.testing.assert_allclose(back.geometry.index_to_world, g.index_to_world, atol=1e-9)
    np.testing.assert_allclose(back.times_ms, cine.times_ms)


def test_cine_without_timing_is_indexed_by_frame(harness):
    cine = Cine(np.zeros((3, 2, 4, 4), np.float32), _geometry(), np.full(3, np.nan))
    seq = mrml.cine_to_sequence(harness.scene, cine)
    assert seq.GetIndexName() == "frame"
    assert np.all(np.isnan(mrml.sequence_to_cine(seq).times_ms))


def test_volume_voxel_positions_follow_the_conventions(harness):
    g = _geometry()
    vol = mrml.new_volume(np.zeros((5, 24, 26)), g)
    m = vtk.vtkMatrix4x4()
    vol.GetIJKToRASMatrix(m)
    k, j, i = 3, 7, 11
    ras = np.array(m.MultiplyPoint((i, j, k, 1.0))[:3])
    np.testing.assert_allclose(ras, g.origin + g.direction @ (g.spacing * np.array([k, j, i])), atol=1e-9)


def test_segmentation_round_trip_and_segments(harness):
    g = _geometry()
    lab = _labels()
    seq = mrml.labels_to_segmentation_sequence(harness.scene, lab, g, np.arange(4) * 30.0, "seg")
    assert seq.GetNumberOfDataNodes() == 4
    node = seq.GetNthDataNode(0)
    seg = node.GetSegmentation()
    names = {seg.GetNthSegment(i).GetName() for i in range(seg.GetNumberOfSegments())}
    assert names == {"LV cavity", "LV myocardium", "RV cavity"}
    myo = seg.GetSegment("lv_myocardium")
    assert "SCT^74281007^Myocardium" in myo.GetTerminology()
    assert "SCT^87878005^Left ventricle" in seg.GetSegment("lv_cavity").GetTerminology()
    assert np.array_equal(mrml.segmentation_sequence_to_labels(seq, g, lab.shape[1:]), lab)


def test_segmentation_read_back_after_segment_is_edited(harness):
    """An edited segment (own layer, cropped extent) is put back on the reference grid."""
    g = _geometry()
    lab = _labels()[0]
    node = mrml.labels_to_segmentation(lab, g)
    edited = lab.copy()
    edited[2, 10:12, 10:13] = 2  # myocardium grows into the cavity
    mask = np.zeros_like(lab)
    mask[edited == 2] = 1
    box = mrml.crop_box(mask > 0, margin=0)
    img = slicer.vtkOrientedImageData()
    img.ShallowCopy(mrml.image_from_array(mask[box].astype(np.uint8)))
    img.SetExtent(box[2].start, box[2].stop - 1, box[1].start, box[1].stop - 1, box[0].start, box[0].stop - 1)
    img.SetImageToWorldMatrix(mrml.ijk_to_ras(g))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        img, node, "lv_myocardium", slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    back = mrml.segmentation_to_labels(node, g, lab.shape)
    assert np.array_equal(back, edited)


def test_a_segment_added_by_hand_must_be_empty_or_is_named(harness):
    """A segment added in Segment Editor (not one of the three) is ignored while empty; with voxels in
    it, reading the labels fails and names it (its voxels would silently leave the analysis)."""
    g = _geometry()
    lab = _labels()[0]
    node = mrml.labels_to_segmentation(lab, g)
    sid = node.GetSegmentation().AddEmptySegment("", "Segment_4")
    assert np.array_equal(mrml.segmentation_to_labels(node, g, lab.shape), lab)
    mask = (lab == 3).astype(np.uint8)
    img = slicer.vtkOrientedImageData()
    img.ShallowCopy(mrml.image_from_array(mask))
    img.SetImageToWorldMatrix(mrml.ijk_to_ras(g))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        img, node, sid, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)
    with pytest.raises(ValueError, match=f"segment 'Segment_4' with {int(mask.sum())} voxels, which is not one of"):
        mrml.segmentation_to_labels(node, g, lab.shape)


def test_grid_transform_moves_ed_points_by_the_displacement(harness):
    """To-parent grid = Lagrangian u on the ED grid: TransformPoint(X) == X + u(X), also between voxels."""
    g = _geometry()
    rng = np.random.default_rng(1)
    u = ndimage.gaussian_filter(rng.normal(size=(3, 5, 24, 26)), (0, 1, 2, 2)).astype(np.float32) * 5
    node = mrml.new_grid_transform(u, g)
    harness.scene.AddNode(node)
    tr = vtk.vtkGeneralTransform()
    node.GetTransformToWorld(tr)
    for kji in [(2, 7, 11), (1, 12, 20), (3, 5, 3)]:
        x = g.origin + g.direction @ (g.spacing * np.array(kji))
        np.testing.assert_allclose(np.array(tr.TransformPoint(*x)) - x, u[(slice(None),) + kji], atol=1e-5)
    kji = np.array([2.5, 7.25, 11.5])  # between voxel centres: trilinear interpolation of u
    x = g.origin + g.direction @ (g.spacing * kji)
    expect = [ndimage.map_coordinates(u[c], kji[:, None], order=1)[0] for c in range(3)]
    np.testing.assert_allclose(np.array(tr.TransformPoint(*x)) - x, expect, atol=1e-4)
    back, bg = mrml.grid_transform_displacement(node)
    assert np.array_equal(back, u)
    np.testing.assert_allclose(bg.index_to_world, g.index_to_world, atol=1e-9)


def test_sequence_to_cine_rejects_mixed_geometry(harness):
    g = _geometry()
    seq = harness.scene.AddNewNodeByClass("vtkMRMLSequenceNode", "bad")
    seq.SetDataNodeAtValue(mrml.new_volume(np.zeros((2, 4, 4)), g), "0")
    g2 = Geometry(g.spacing * 2, g.origin, g.direction)
    seq.SetDataNodeAtValue(mrml.new_volume(np.zeros((2, 4, 4)), g2), "1")
    with pytest.raises(ValueError, match="different geometry"):
        mrml.sequence_to_cine(seq)
