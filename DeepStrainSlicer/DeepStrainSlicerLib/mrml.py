"""Adapters between deepstrain arrays and MRML nodes (no qt).

Conventions (see :mod:`deepstrain.cine`): arrays are ``(Z, Y, X)`` per frame; Slicer volumes are
indexed ``I = column (X), J = row (Y), K = slice (Z)`` so ``arrayFromVolume`` order is ``(Z, Y, X)``
too, and ``IJKToRAS`` is the NIfTI-style affine ``Geometry.to_nifti_affine()``.

* Cine  <-> a sequence of ``vtkMRMLScalarVolumeNode`` (one item per frame).
* Labels (ACDC 1 RV / 2 myocardium / 3 LV cavity) <-> a sequence of ``vtkMRMLSegmentationNode``
  with segments "LV cavity", "LV myocardium", "RV cavity" (ids ``lv_cavity``, ``lv_myocardium``,
  ``rv_cavity``), all three sharing one labelmap layer per frame.
* Displacement (3, Z, Y, X) mm RAS <-> a sequence of transform nodes holding a grid transform. The grid is
  stored as the transform **to parent**, sampled at the ED voxel centres: a point X of the ED
  image is moved to ``X + u(X)`` in world coordinates, i.e. the transform maps ED to frame t
  (the Lagrangian displacement of deepstrain). Applied to an ED-frame node it shows that node
  at frame t.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
from deepstrain.cine import Cine, Geometry

# --------------------------------------------------------------------------- segments
@dataclass(frozen=True)
class SegmentSpec:
    segment_id: str
    name: str
    label: int
    color: tuple[float, float, float]
    terminology: str


def _terminology(type_code: str, type_meaning: str, region: str = "~^^") -> str:
    """Slicer terminology entry string (category Anatomical Structure, SNOMED-CT type)."""
    return (
        "Segmentation category and type - 3D Slicer General Anatomy list"
        f"~SCT^123037004^Anatomical Structure~SCT^{type_code}^{type_meaning}~^^"
        f"~Anatomic codes - DICOM master list{region}~^^"
    )


#: The three segments, in ACDC label order of the cine conventions. Colours (RGB 0-1):
#: LV cavity red (0.86, 0.24, 0.24), LV myocardium green (0.30, 0.78, 0.40), RV cavity blue
#: (0.25, 0.50, 0.90): the usual cardiac-MR contour colours (endocardium red, epicardium green).
#: Terminology: SNOMED-CT 87878005 "Left ventricle", 74281007 "Myocardium" (region left ventricle),
#: 53085002 "Right ventricle"; the chamber codes name the blood-pool segments.
SEGMENTS: tuple[SegmentSpec, ...] = (
    SegmentSpec("lv_cavity", "LV cavity", 3, (0.86, 0.24, 0.24), _terminology("87878005", "Left ventricle")),
    SegmentSpec(
        "lv_myocardium", "LV myocardium", 2, (0.30, 0.78, 0.40),
        _terminology("74281007", "Myocardium", "~SCT^87878005^Left ventricle"),
    ),
    SegmentSpec("rv_cavity", "RV cavity", 1, (0.25, 0.50, 0.90), _terminology("53085002", "Right ventricle")),
)


# --------------------------------------------------------------------------- geometry
def ijk_to_ras(geometry: Geometry) -> vtk.vtkMatrix4x4:
    """IJK (column, row, slice) to RAS matrix of a Slicer volume on this grid."""
    m = vtk.vtkMatrix4x4()
    a = geometry.to_nifti_affine()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(a[r, c]))
    return m


def matrix_to_numpy(m: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[m.GetElement(r, c) for c in range(4)] for r in range(4)])


def geometry_from_matrix(m: vtk.vtkMatrix4x4) -> Geometry:
    return Geometry.from_nifti_affine(matrix_to_numpy(m))


def geometry_of_volume(volume: slicer.vtkMRMLVolumeNode) -> Geometry:
    m = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(m)
    return geometry_from_matrix(m)


def image_from_array(array: np.ndarray) -> vtk.vtkImageData:
    """vtkImageData (deep copy) from a ``(Z, Y, X)`` or ``(Z, Y, X, C)`` array."""
    a = np.ascontiguousarray(array)
    comps = 1 if a.ndim == 3 else a.shape[3]
    img = vtk.vtkImageData()
    img.SetDimensions(a.shape[2], a.shape[1], a.shape[0])
    arr = numpy_support.numpy_to_vtk(a.reshape(-1, comps) if comps > 1 else a.ravel(), deep=True)
    arr.SetNumberOfComponents(comps)
    img.GetPointData().SetScalars(arr)
    return img


def array_from_image(img: vtk.vtkImageData) -> np.ndarray:
    """``(Z, Y, X)`` or ``(Z, Y, X, C)`` view of a vtkImageData's scalars (copy)."""
    dims = img.GetDimensions()
    scalars = img.GetPointData().GetScalars()
    a = numpy_support.vtk_to_numpy(scalars)
    comps = scalars.GetNumberOfComponents()
    shape = (dims[2], dims[1], dims[0]) + ((comps,) if comps > 1 else ())
    return a.reshape(shape).copy()


def new_volume(array: np.ndarray, geometry: Geometry, name: str = "volume") -> slicer.vtkMRMLScalarVolumeNode:
    """A scalar volume node (not added to any scene) holding ``array`` (Z, Y, X)."""
    node = slicer.vtkMRMLScalarVolumeNode()
    node.SetName(name)
    node.SetAndObserveImageData(image_from_array(np.asarray(array, dtype=np.float32)))
    node.SetIJKToRASMatrix(ijk_to_ras(geometry))
    return node


def volume_array(node: slicer.vtkMRMLVolumeNode) -> np.ndarray:
    return array_from_image(node.GetImageData())


# --------------------------------------------------------------------------- sequences
def index_values(times_ms: np.ndarray) -> list[str]:
    """Sequence index values: frame times in ms when known, else 0-based frame numbers."""
    t = np.asarray(times_ms, dtype=float)
    if np.all(np.isfinite(t)):
        return [f"{v:.3f}" for v in t]
    return [str(i) for i in range(t.size)]


def _new_sequence(scene: slicer.vtkMRMLScene, name: str, times_ms: np.ndarray) -> slicer.vtkMRMLSequenceNode:
    seq = scene.AddNewNodeByClass("vtkMRMLSequenceNode", name)
    if np.all(np.isfinite(times_ms)):
        seq.SetIndexName("time")
        seq.SetIndexUnit("ms")
    else:
        seq.SetIndexName("frame")
        seq.SetIndexUnit("")
    seq.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
    return seq


def cine_to_sequence(scene: slicer.vtkMRMLScene, cine: Cine, name: str | None = None) -> slicer.vtkMRMLSequenceNode:
    """A sequence of scalar volumes, one per frame, indexed by time (ms) or frame number."""
    seq = _new_sequence(scene, name or f"{cine.name} cine", cine.times_ms)
    values = index_values(cine.times_ms)
    for t in range(cine.n_frames):
        vol = new_volume(cine.data[t], cine.geometry, f"{cine.name} frame {t}")
        seq.SetDataNodeAtValue(vol, values[t])
    return seq


def sequence_times_ms(seq: slicer.vtkMRMLSequenceNode) -> np.ndarray:
    """Frame times in ms from a sequence index (NaN when the index is not a time in ms/s)."""
    n = seq.GetNumberOfDataNodes()
    unit = (seq.GetIndexUnit() or "").strip().lower()
    name = (seq.GetIndexName() or "").strip().lower()
    scale = {"ms": 1.0, "s": 1000.0, "sec": 1000.0}.get(unit)
    if scale is None or name not in ("time", "triggertime", "trigger time", "t"):
        return np.full(n, np.nan)
    try:
        return np.array([float(seq.GetNthIndexValue(i)) * scale for i in range(n)])
    except ValueError:
        return np.full(n, np.nan)


def sequence_to_cine(seq: slicer.vtkMRMLSequenceNode, name: str = "study") -> Cine:
    """Read a sequence of scalar volumes (e.g. a loaded 4D NIfTI / multivolume) into a Cine."""
    n = seq.GetNumberOfDataNodes()
    if n < 2:
        raise ValueError(f"sequence '{seq.GetName()}' has {n} item(s); a cine needs at least 2 frames")
    frames = []
    geometry = None
    for i in range(n):
        node = seq.GetNthDataNode(i)
        if not node or not node.IsA("vtkMRMLScalarVolumeNode") or node.GetImageData() is None:
            raise ValueError(f"item {i} of sequence '{seq.GetName()}' is not a scalar volume")
        g = geometry_of_volume(node)
        if geometry is None:
            geometry = g
        elif not (np.allclose(g.index_to_world, geometry.index_to_world, atol=1e-4)):
            raise ValueError(f"item {i} of sequence '{seq.GetName()}' has a different geometry than item 0")
        a = volume_array(node)
        if a.ndim != 3:
            raise ValueError(f"item {i} of sequence '{seq.GetName()}' is not a single-component volume")
        if frames and a.shape != frames[0].shape:
            raise ValueError(f"item {i} of sequence '{seq.GetName()}' has shape {a.shape}, item 0 {frames[0].shape}")
        frames.append(a.astype(np.float32))
    return Cine(np.stack(frames), geometry, sequence_times_ms(seq), name=name, source=f"sequence:{seq.GetName()}")


# --------------------------------------------------------------------------- segmentations
def ensure_segmentation_converters() -> None:
    """Register the labelmap <-> closed surface rules (the Segmentations module does it in the app)."""
    factory = slicer.vtkSegmentationConverterFactory.GetInstance()
    if len(factory.GetConverterRules()) == 0:
        factory.RegisterConverterRule(slicer.vtkBinaryLabelmapToClosedSurfaceConversionRule())
        factory.RegisterConverterRule(slicer.vtkClosedSurfaceToBinaryLabelmapConversionRule())


def labels_to_segmentation(labels: np.ndarray, geometry: Geometry, name: str = "segmentation") -> slicer.vtkMRMLSegmentationNode:
    """A segmentation node (not in a scene) with the three cardiac segments sharing one layer."""
    ensure_segmentation_converters()
    lab = np.asarray(labels).astype(np.uint8)
    img = slicer.vtkOrientedImageData()
    img.ShallowCopy(image_from_array(lab))
    img.SetImageToWorldMatrix(ijk_to_ras(geometry))
    node = slicer.vtkMRMLSegmentationNode()
    node.SetName(name)
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName())
    for spec in SEGMENTS:
        seg = slicer.vtkSegment()
        seg.SetName(spec.name)
        seg.SetColor(*spec.color)
        seg.SetLabelValue(spec.label)
        seg.SetTag(slicer.vtkSegment.GetTerminologyEntryTagName(), spec.terminology)
        seg.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), img)
        segmentation.AddSegment(seg, spec.segment_id)
    return node


def set_segment_mask(seg_node: slicer.vtkMRMLSegmentationNode, segment_id: str, mask: np.ndarray,
                     geometry: Geometry) -> None:
    """Replace the voxels of one segment by ``mask`` ``(Z, Y, X)`` on ``geometry`` (what a Segment
    Editor edit does; other segments are left as they are)."""
    img = slicer.vtkOrientedImageData()
    img.ShallowCopy(image_from_array(np.asarray(mask).astype(np.uint8)))
    img.SetImageToWorldMatrix(ijk_to_ras(geometry))
    slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
        img, seg_node, segment_id, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE)


def _segment_mask(seg_node: slicer.vtkMRMLSegmentationNode, segment_id: str, geometry: Geometry,
                  shape: tuple[int, int, int]) -> np.ndarray:
    """Boolean mask of one segment on the reference grid (nearest-neighbour resampling)."""
    binary = slicer.vtkOrientedImageData()
    ok = slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentBinaryLabelmapRepresentation(seg_node, segment_id, binary)
    if not ok:
        raise ValueError(f"segment '{segment_id}' of '{seg_node.GetName()}' has no binary labelmap")
    ref = slicer.vtkOrientedImageData()
    ref.SetDimensions(shape[2], shape[1], shape[0])
    ref.SetImageToWorldMatrix(ijk_to_ras(geometry))
    ref.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
    ref.GetPointData().GetScalars().Fill(0)
    out = slicer.vtkOrientedImageData()
    if binary.IsEmpty():
        return np.zeros(shape, dtype=bool)
    slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(binary, ref, out, False, True)
    ext = out.GetExtent()
    a = array_from_image(out)
    mask = np.zeros(shape, dtype=bool)
    # place the resampled extent into the reference grid
    k0, j0, i0 = ext[4], ext[2], ext[0]
    kk = slice(max(k0, 0), min(ext[5] + 1, shape[0]))
    jj = slice(max(j0, 0), min(ext[3] + 1, shape[1]))
    ii = slice(max(i0, 0), min(ext[1] + 1, shape[2]))
    # a shared layer holds several segments: this one is the voxels equal to its label value
    value = seg_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    mask[kk, jj, ii] = a[kk.start - k0:kk.stop - k0, jj.start - j0:jj.stop - j0, ii.start - i0:ii.stop - i0] == value
    return mask


def segmentation_to_labels(seg_node: slicer.vtkMRMLSegmentationNode, geometry: Geometry,
                           shape: tuple[int, int, int]) -> np.ndarray:
    """ACDC label map (Z, Y, X) uint8 from the three cardiac segments (found by id or by name).

    Where edited segments overlap, the later one in the order RV cavity, LV cavity,
    LV myocardium wins (myocardium last: the strain is computed on it). Any other segment (one
    added in Segment Editor) must be empty: ``ValueError`` naming it otherwise, as its voxels
    would be left out of the analysis without a word.
    """
    segmentation = seg_node.GetSegmentation()
    labels = np.zeros(shape, dtype=np.uint8)
    known = set()
    for spec in (SEGMENTS[2], SEGMENTS[0], SEGMENTS[1]):
        sid = spec.segment_id if segmentation.GetSegment(spec.segment_id) else segmentation.GetSegmentIdBySegmentName(spec.name)
        if not sid:
            raise ValueError(f"segmentation '{seg_node.GetName()}' has no segment '{spec.name}'")
        known.add(sid)
        labels[_segment_mask(seg_node, sid, geometry, shape)] = spec.label
    for i in range(segmentation.GetNumberOfSegments()):
        sid = segmentation.GetNthSegmentID(i)
        if sid in known:
            continue
        n = int(np.count_nonzero(_segment_mask(seg_node, sid, geometry, shape)))
        if n:
            names = ", ".join(spec.name for spec in SEGMENTS)
            raise ValueError(f"segmentation '{seg_node.GetName()}' has a segment '{segmentation.GetSegment(sid).GetName()}' "
                             f"with {n} voxels, which is not one of {names}: the analysis would leave them out; move "
                             "them into one of those segments, or delete it")
    return labels


def labels_to_segmentation_sequence(scene: slicer.vtkMRMLScene, labels: np.ndarray, geometry: Geometry,
                                    times_ms: np.ndarray, name: str) -> slicer.vtkMRMLSequenceNode:
    seq = _new_sequence(scene, name, times_ms)
    values = index_values(times_ms)
    for t in range(labels.shape[0]):
        seq.SetDataNodeAtValue(labels_to_segmentation(labels[t], geometry, f"{name} {t}"), values[t])
    return seq


def segmentation_sequence_to_labels(seq: slicer.vtkMRMLSequenceNode, geometry: Geometry,
                                    shape: tuple[int, int, int]) -> np.ndarray:
    return np.stack([segmentation_to_labels(seq.GetNthDataNode(i), geometry, shape)
                     for i in range(seq.GetNumberOfDataNodes())])


# --------------------------------------------------------------------------- displacement
def displacement_grid(displacement: np.ndarray, geometry: Geometry) -> vtk.vtkImageData:
    """3-component vtkImageData (mm, RAS) on the ED voxel grid, for a vtkOrientedGridTransform."""
    u = np.asarray(displacement, dtype=np.float32)
    if u.ndim != 4 or u.shape[0] != 3:
        raise ValueError(f"displacement must be (3, Z, Y, X), got {u.shape}")
    img = image_from_array(np.moveaxis(u, 0, -1))
    img.SetOrigin(*geometry.origin)
    img.SetSpacing(*geometry.spacing[[2, 1, 0]])
    return img


def _grid_direction(geometry: Geometry) -> vtk.vtkMatrix4x4:
    d = vtk.vtkMatrix4x4()
    cols = geometry.direction[:, [2, 1, 0]]
    for r in range(3):
        for c in range(3):
            d.SetElement(r, c, float(cols[r, c]))
    return d


def new_grid_transform(displacement: np.ndarray, geometry: Geometry, name: str = "displacement") -> slicer.vtkMRMLTransformNode:
    """Transform node (not in a scene) holding a grid transform: to-parent displacement ``u`` sampled
    on the ED grid. A plain ``vtkMRMLTransformNode``, not a ``vtkMRMLGridTransformNode``: Slicer reads
    transform sequences back from a saved scene as plain transform nodes, and a sequence browser
    replaces a proxy node of another class by a new one (losing its glyph display)."""
    grid = vtk.vtkOrientedGridTransform() if not hasattr(slicer, "vtkOrientedGridTransform") else slicer.vtkOrientedGridTransform()
    grid.SetDisplacementGridData(displacement_grid(displacement, geometry))
    grid.SetGridDirectionMatrix(_grid_direction(geometry))
    grid.SetInterpolationModeToLinear()
    node = slicer.vtkMRMLTransformNode()
    node.SetName(name)
    node.SetAndObserveTransformToParent(grid)
    return node


def _to_parent_grid(node: slicer.vtkMRMLTransformNode):
    tr = node.GetTransformToParent()
    if tr is None or not hasattr(tr, "GetDisplacementGrid"):
        raise ValueError(f"'{node.GetName()}' is not a to-parent grid transform")
    return tr


def _grid_geometry(tr) -> Geometry:
    img = tr.GetDisplacementGrid()
    d = tr.GetGridDirectionMatrix()
    direction = np.array([[d.GetElement(r, c) for c in range(3)] for r in range(3)])[:, [2, 1, 0]]
    return Geometry(np.array(img.GetSpacing())[[2, 1, 0]], np.array(img.GetOrigin()), direction)


def grid_transform_geometry(node: slicer.vtkMRMLTransformNode) -> Geometry:
    """The grid geometry of a grid transform node (without reading its displacement values)."""
    return _grid_geometry(_to_parent_grid(node))


def grid_transform_displacement(node: slicer.vtkMRMLTransformNode) -> tuple[np.ndarray, Geometry]:
    """The (3, Z, Y, X) to-parent displacement grid of a grid transform node and its grid geometry."""
    tr = _to_parent_grid(node)
    return np.moveaxis(array_from_image(tr.GetDisplacementGrid()), -1, 0).astype(np.float32), _grid_geometry(tr)


def displacement_to_transform_sequence(scene: slicer.vtkMRMLScene, displacement: np.ndarray, geometry: Geometry,
                                       times_ms: np.ndarray, name: str) -> slicer.vtkMRMLSequenceNode:
    seq = _new_sequence(scene, name, times_ms)
    values = index_values(times_ms)
    for t in range(displacement.shape[0]):
        seq.SetDataNodeAtValue(new_grid_transform(displacement[t], geometry, f"{name} {t}"), values[t])
    return seq


def transform_sequence_to_displacement(seq: slicer.vtkMRMLSequenceNode, geometry: Geometry) -> np.ndarray:
    """(T, 3, Z, Y, X) displacement read back from a grid-transform sequence on ``geometry``."""
    out = []
    for i in range(seq.GetNumberOfDataNodes()):
        u, g = grid_transform_displacement(seq.GetNthDataNode(i))
        if not np.allclose(g.index_to_world, geometry.index_to_world, atol=1e-4):
            raise ValueError(f"transform item {i} of '{seq.GetName()}' is not on the cine grid")
        out.append(u)
    return np.stack(out)


def crop_box(mask: np.ndarray, margin: int = 1) -> tuple[slice, slice, slice]:
    """Bounding box of ``mask`` grown by ``margin`` voxels (clipped to the array)."""
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        raise ValueError("empty mask")
    return tuple(slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n))
                 for i, n in zip(idx, mask.shape))


def sub_geometry(geometry: Geometry, box: tuple[slice, slice, slice]) -> Geometry:
    start = np.array([s.start for s in box], dtype=float)
    origin = geometry.origin + geometry.direction @ (geometry.spacing * start)
    return Geometry(geometry.spacing.copy(), origin, geometry.direction.copy())
