"""The AHA 17-segment polar map ("bullseye") as VTK geometry (no qt).

Layout (the usual echocardiography / CMR convention, the map seen from the apex): the map lies in
the plane z = 0 of its own 3D view, x to the right and y up. Rings from outside in: basal
(segments 1-6, radius 3-4), mid (7-12, radius 2-3), apical (13-16, radius 1-2), apex (17, radius
< 1). Anterior is at 12 o'clock, the septum on the left (9 o'clock), inferior at 6 and lateral at
3 o'clock: segment 1 (basal anterior) spans 60-120 deg (counter-clockwise from +x), then 2
anteroseptal 120-180, 3 inferoseptal 180-240, 4 inferior 240-300, 5 inferolateral 300-360,
6 anterolateral 0-60; apical 13 anterior 45-135, 14 septal 135-225, 15 inferior 225-315,
16 lateral 315-45.

Cell data of the map: ``SegmentId`` (1..17) and ``Strain`` (percent, NaN when the segment has no
value). Colours: a diverging scale, blue = negative (shortening / thinning), white = 0,
red = positive; NaN grey.
"""
from __future__ import annotations

import math

import numpy as np
import vtk
from vtk.util import numpy_support

RING_RADII = {"basal": (3.0, 4.0), "mid": (2.0, 3.0), "apical": (1.0, 2.0), "apex": (0.0, 1.0)}
NAN_COLOR = (0.55, 0.55, 0.55)


def segment_sector(segment: int) -> tuple[float, float, float, float]:
    """``(r_inner, r_outer, start_deg, end_deg)`` of a segment in the map (angles CCW from +x)."""
    if 1 <= segment <= 6:
        start = 60.0 * segment  # 1 -> 60..120, 6 -> 360..420 (= 0..60)
        return (*RING_RADII["basal"], start, start + 60.0)
    if 7 <= segment <= 12:
        start = 60.0 * (segment - 6)
        return (*RING_RADII["mid"], start, start + 60.0)
    if 13 <= segment <= 16:
        start = 45.0 + 90.0 * (segment - 13)
        return (*RING_RADII["apical"], start, start + 90.0)
    if segment == 17:
        return (*RING_RADII["apex"], 0.0, 360.0)
    raise ValueError(f"AHA segment must be 1..17, got {segment}")


def segment_at(x: float, y: float) -> int | None:
    """The segment under map point ``(x, y)``, or None outside the map."""
    r = math.hypot(x, y)
    if r >= RING_RADII["basal"][1]:
        return None
    if r < 1.0:
        return 17
    ang = math.degrees(math.atan2(y, x)) % 360.0
    if r < 2.0:
        k = int(((ang - 45.0) % 360.0) // 90.0)
        return 13 + k
    k = int(((ang - 60.0) % 360.0) // 60.0)  # 0 -> anterior
    return (1 if r >= 3.0 else 7) + k


def segment_centre(segment: int) -> tuple[float, float]:
    r0, r1, a0, a1 = segment_sector(segment)
    if segment == 17:
        return 0.0, 0.0
    r = 0.5 * (r0 + r1)
    a = math.radians(0.5 * (a0 + a1))
    return r * math.cos(a), r * math.sin(a)


def bullseye_polydata(values: dict[int, float | None] | None = None, arc_step_deg: float = 3.0) -> vtk.vtkPolyData:
    """Polygons of the 17 sectors with cell arrays ``SegmentId`` and ``Strain`` (percent, NaN = no value)."""
    points = vtk.vtkPoints()
    polys = vtk.vtkCellArray()
    ids: list[int] = []
    for seg in range(1, 18):
        r0, r1, a0, a1 = segment_sector(seg)
        n = max(2, int(math.ceil((a1 - a0) / arc_step_deg)) + 1)
        angles = np.radians(np.linspace(a0, a1, n))
        if seg == 17:
            angles = angles[:-1]
            ring = [points.InsertNextPoint(r1 * math.cos(a), r1 * math.sin(a), 0.0) for a in angles]
            polys.InsertNextCell(len(ring), ring)
            ids.append(seg)
            continue
        outer = [points.InsertNextPoint(r1 * math.cos(a), r1 * math.sin(a), 0.0) for a in angles]
        inner = [points.InsertNextPoint(r0 * math.cos(a), r0 * math.sin(a), 0.0) for a in angles[::-1]]
        cell = outer + inner
        polys.InsertNextCell(len(cell), cell)
        ids.append(seg)
    pd = vtk.vtkPolyData()
    pd.SetPoints(points)
    pd.SetPolys(polys)
    seg_arr = numpy_support.numpy_to_vtk(np.array(ids, dtype=np.int32), deep=True)
    seg_arr.SetName("SegmentId")
    pd.GetCellData().AddArray(seg_arr)
    strain = vtk.vtkDoubleArray()
    strain.SetName("Strain")
    strain.SetNumberOfTuples(len(ids))
    pd.GetCellData().AddArray(strain)
    pd.GetCellData().SetActiveScalars("Strain")
    set_values(pd, values or {})
    return pd


def set_values(pd: vtk.vtkPolyData, values: dict[int, float | None]) -> None:
    """Set the ``Strain`` cell array from ``{segment: percent or None}`` (keys int or str)."""
    seg_ids = numpy_support.vtk_to_numpy(pd.GetCellData().GetArray("SegmentId"))
    arr = pd.GetCellData().GetArray("Strain")
    lookup = {int(k): v for k, v in values.items()}
    for i, s in enumerate(seg_ids):
        v = lookup.get(int(s))
        arr.SetValue(i, float("nan") if v is None or not np.isfinite(v) else float(v))
    arr.Modified()
    pd.Modified()


def outline_polydata(segment: int, arc_step_deg: float = 3.0) -> vtk.vtkPolyData:
    """Closed polyline around one segment (z = 0.01, just above the map), for highlighting."""
    r0, r1, a0, a1 = segment_sector(segment)
    n = max(2, int(math.ceil((a1 - a0) / arc_step_deg)) + 1)
    angles = np.radians(np.linspace(a0, a1, n))
    pts = [(r1 * math.cos(a), r1 * math.sin(a)) for a in angles]
    if segment != 17:
        pts += [(r0 * math.cos(a), r0 * math.sin(a)) for a in angles[::-1]]
    points = vtk.vtkPoints()
    for x, y in pts:
        points.InsertNextPoint(x, y, 0.01)
    line = vtk.vtkPolyLine()
    line.GetPointIds().SetNumberOfIds(len(pts) + 1)
    for i in range(len(pts)):
        line.GetPointIds().SetId(i, i)
    line.GetPointIds().SetId(len(pts), 0)
    cells = vtk.vtkCellArray()
    cells.InsertNextCell(line)
    pd = vtk.vtkPolyData()
    pd.SetPoints(points)
    pd.SetLines(cells)
    return pd


def labels_polydata(height: float = 0.28) -> vtk.vtkPolyData:
    """Segment numbers 1..17 as flat vector-text polygons centred on their segments (z = 0.02)."""
    append = vtk.vtkAppendPolyData()
    for seg in range(1, 18):
        text = vtk.vtkVectorText()
        text.SetText(str(seg))
        text.Update()
        b = text.GetOutput().GetBounds()
        cx, cy = segment_centre(seg)
        scale = height / max(b[3] - b[2], 1e-6)
        tr = vtk.vtkTransform()
        tr.Translate(cx, cy, 0.02)
        tr.Scale(scale, scale, 1.0)
        tr.Translate(-(b[0] + b[1]) / 2.0, -(b[2] + b[3]) / 2.0, 0.0)
        f = vtk.vtkTransformPolyDataFilter()
        f.SetInputConnection(text.GetOutputPort())
        f.SetTransform(tr)
        f.Update()
        out = vtk.vtkPolyData()
        out.DeepCopy(f.GetOutput())
        append.AddInputData(out)
    append.Update()
    pd = vtk.vtkPolyData()
    pd.DeepCopy(append.GetOutput())
    return pd


def symmetric_range(values: dict[int, float | None] | list[float], step: float = 5.0) -> tuple[float, float]:
    """``(-m, m)`` with m the largest |value| rounded up to ``step`` percent (at least ``step``)."""
    vals = values.values() if isinstance(values, dict) else values
    finite = [abs(float(v)) for v in vals if v is not None and np.isfinite(v)]
    top = step * max(1, math.ceil(max(finite, default=0.0) / step - 1e-9))
    return -top, top


def diverging_rgb(t: float) -> tuple[float, float, float]:
    """Colour at ``t`` in [0, 1]: blue (0) - white (0.5) - red (1)."""
    t = min(max(t, 0.0), 1.0)
    blue, white, red = np.array([0.13, 0.35, 0.80]), np.array([0.97, 0.97, 0.97]), np.array([0.80, 0.12, 0.12])
    c = blue + (white - blue) * (t / 0.5) if t < 0.5 else white + (red - white) * ((t - 0.5) / 0.5)
    return float(c[0]), float(c[1]), float(c[2])


def lookup_table(vmin: float, vmax: float, n: int = 256) -> vtk.vtkLookupTable:
    lut = vtk.vtkLookupTable()
    lut.SetNumberOfTableValues(n)
    lut.SetTableRange(vmin, vmax)
    for i in range(n):
        lut.SetTableValue(i, *diverging_rgb(i / (n - 1)), 1.0)
    lut.SetNanColor(*NAN_COLOR, 1.0)
    lut.Build()
    return lut
