"""Offscreen pictures for tests and export (no qt): a slice view with Slicer's own displayable
managers, the strain curves (vtkChartXY) and the AHA polar map.

Offscreen OpenGL needs EGL (Debian ``libegl1 libegl-mesa0 libgl1-mesa-dri``) and
``VTK_DEFAULT_OPENGL_WINDOW=vtkEGLRenderWindow`` set before VTK creates its first window; inside
the Slicer application the views themselves are grabbed instead (``grab_view``).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import vtk
from vtk.util import numpy_support

import slicer
from deepstrain.qc import middle_slice

SLICE_DISPLAYABLE_MANAGERS = (
    "vtkMRMLSegmentationsDisplayableManager2D",
    "vtkMRMLTransformsDisplayableManager2D",
    "vtkMRMLModelSliceDisplayableManager",
    "vtkMRMLCrosshairDisplayableManager",
)


def offscreen_window(width: int, height: int) -> vtk.vtkRenderWindow:
    """An offscreen render window; on Linux without a display, EGL is asked for (headless CI)."""
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")
    win = vtk.vtkRenderWindow()
    win.SetOffScreenRendering(1)
    win.SetSize(int(width), int(height))
    return win


def window_to_array(win: vtk.vtkRenderWindow) -> np.ndarray:
    """RGB uint8 (H, W, 3) of the last render, top row first."""
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(win)
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    img = grab.GetOutput()
    w, h, _ = img.GetDimensions()
    a = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, 3)
    return a[::-1].copy()


def write_png(rgb: np.ndarray, path: str | os.PathLike) -> Path:
    """Write an RGB array as PNG; refuses to overwrite an existing file."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path}: exists, not overwritten")
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w, _ = rgb.shape
    img = vtk.vtkImageData()
    img.SetDimensions(w, h, 1)
    arr = numpy_support.numpy_to_vtk(np.ascontiguousarray(rgb[::-1]).reshape(-1, 3), deep=True)
    arr.SetNumberOfComponents(3)
    img.GetPointData().SetScalars(arr)
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(img)
    writer.Write()
    return path


def ensure_view_singletons(scene: slicer.vtkMRMLScene) -> None:
    """The interaction and selection nodes the displayable managers need (the app creates them)."""
    for cls in ("vtkMRMLInteractionNode", "vtkMRMLSelectionNode"):
        if scene.GetFirstNodeByClass(cls) is None:
            node = scene.CreateNodeByClass(cls)
            node.SetSingletonTag("Singleton")
            scene.AddNode(node)
            node.UnRegister(None)


class SliceViewRenderer:
    """A Slicer slice view without Qt: slice logic + the real 2D displayable managers.

    ``scene`` must be the application's scene; ``app_logic`` a ``vtkMRMLApplicationLogic`` on it.
    """

    def __init__(self, scene: slicer.vtkMRMLScene, app_logic=None, size: tuple[int, int] = (512, 512),
                 layout_name: str = "DSOffscreen") -> None:
        self.scene = scene
        self.size = size
        ensure_view_singletons(scene)
        self.app_logic = app_logic or slicer.vtkMRMLApplicationLogic()
        if app_logic is None or self.app_logic.GetInteractionNode() is None:
            self.app_logic.SetMRMLScene(scene)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(self.app_logic)
        self.logic.SetMRMLScene(scene)
        self.slice_node = self.logic.AddSliceNode(layout_name)
        self.slice_node.SetDimensions(size[0], size[1], 1)
        self.slice_node.SetInteractionNodeID(scene.GetNodeByID("vtkMRMLInteractionNodeSingleton").GetID())
        self.composite = self.logic.GetSliceCompositeNode()
        self.window = offscreen_window(*size)
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetBackground(0, 0, 0)
        self.window.AddRenderer(self.renderer)
        # the slice image first: 2D actors are drawn in insertion order
        mapper = vtk.vtkImageMapper()
        mapper.SetInputConnection(self.logic.GetImageDataConnection())
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        self.image_actor = vtk.vtkActor2D()
        self.image_actor.SetMapper(mapper)
        self.renderer.AddViewProp(self.image_actor)
        interactor = vtk.vtkRenderWindowInteractor()
        interactor.SetRenderWindow(self.window)
        factory = slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()
        factory.SetMRMLApplicationLogic(self.app_logic)
        for name in SLICE_DISPLAYABLE_MANAGERS:
            if not factory.IsDisplayableManagerRegistered(name):
                factory.RegisterDisplayableManager(name)
        self.managers = factory.InstantiateDisplayableManagers(self.renderer)
        self.managers.SetMRMLDisplayableNode(self.slice_node)

    def show(self, background_id: str | None, foreground_id: str | None = None, opacity: float = 0.0) -> None:
        self.composite.SetBackgroundVolumeID(background_id)
        self.composite.SetForegroundVolumeID(foreground_id)
        self.composite.SetForegroundOpacity(opacity)

    def align_to_volume(self, volume: slicer.vtkMRMLVolumeNode, slice_index: int | None = None,
                        centre_ij: tuple[float, float] | None = None, fov_mm: float | None = None) -> None:
        """Slice plane = the volume's own (I, J) plane at slice ``slice_index`` (default the middle);
        the image shows rows top to bottom and columns left to right like the array. ``centre_ij``
        (column, row) and ``fov_mm`` zoom on a region (default: the whole volume)."""
        m = vtk.vtkMatrix4x4()
        volume.GetIJKToRASDirectionMatrix(m)
        d = np.array([[m.GetElement(r, c) for c in range(3)] for r in range(3)])
        ijk = vtk.vtkMatrix4x4()
        volume.GetIJKToRASMatrix(ijk)
        dims = volume.GetImageData().GetDimensions()
        k = (dims[2] - 1) / 2.0 if slice_index is None else float(slice_index)
        ci, cj = centre_ij if centre_ij is not None else ((dims[0] - 1) / 2.0, (dims[1] - 1) / 2.0)
        centre_ijk = np.array([ci, cj, k, 1.0])
        a = np.array([[ijk.GetElement(r, c) for c in range(4)] for r in range(4)])
        centre = (a @ centre_ijk)[:3]
        # slice x = +I (columns to the right), slice y = -J (row 0 at the top), normal = x cross y
        x = d[:, 0]
        y = -d[:, 1]
        n = np.cross(x, y)
        self.slice_node.SetSliceToRASByNTP(*n, *x, *centre, 0)
        self.logic.FitSliceToVolume(volume, self.size[0], self.size[1])
        if fov_mm is not None:
            thickness = self.slice_node.GetFieldOfView()[2]
            self.slice_node.SetFieldOfView(fov_mm, fov_mm * self.size[1] / self.size[0], thickness)
        m = self.slice_node.GetSliceToRAS()
        for r in range(3):
            m.SetElement(r, 3, float(centre[r]))
        self.slice_node.UpdateMatrices()
        self.slice_node.UpdateMatrices()

    def render(self) -> np.ndarray:
        """Render and return RGB (H, W, 3), top row first."""
        # the slice logic may rebuild its pipeline when layers change: follow its current output
        mapper = self.image_actor.GetMapper()
        port = self.logic.GetImageDataConnection()
        if mapper.GetInputConnection(0, 0) is not port:
            mapper.SetInputConnection(port)
        self.managers.RequestRender()
        self.window.Render()
        return window_to_array(self.window)

    def close(self) -> None:
        """Detach and remove the slice and composite nodes this renderer added to the scene."""
        self.managers.SetMRMLDisplayableNode(None)
        nodes = [self.slice_node, self.composite]
        self.logic.SetMRMLScene(None)
        for node in nodes:
            if node is not None and self.scene.IsNodePresent(node):
                self.scene.RemoveNode(node)
        self.window.Finalize()


# --------------------------------------------------------------------------- study pictures
def render_slice(logic, params, frame: int, size: tuple[int, int] = (512, 512), slice_index: int | None = None,
                 app_logic=None) -> np.ndarray:
    """The cine at ``frame`` with the segmentation and glyph overlays as set in ``params``.

    The slice (without ``slice_index``) and the field of view come from the ED segmentation
    (``params.analysis_ed``), so that the pictures of every frame show the same slice and crop
    (:func:`deepstrain.qc.middle_slice`)."""
    browser = params.ref("Browser")
    centre_ij = fov_mm = None
    vol = browser.GetProxyNode(params.ref("CineSequence"))
    if slice_index is None:
        from . import mrml

        logic.go_to_frame(params, params.analysis_ed if params.analysis_ed >= 0 else frame)
        seg = browser.GetProxyNode(params.ref("SegmentationSequence"))
        geometry = mrml.geometry_of_volume(vol)
        lab_ed = mrml.segmentation_to_labels(seg, geometry, tuple(int(d) for d in vol.GetImageData().GetDimensions()[::-1]))
        slice_index = middle_slice(lab_ed)
        heart = np.nonzero(lab_ed[slice_index] > 0)
        if heart[0].size:
            j0, j1, i0, i1 = heart[0].min(), heart[0].max(), heart[1].min(), heart[1].max()
            centre_ij = ((i0 + i1) / 2.0, (j0 + j1) / 2.0)
            extent = max((i1 - i0 + 1) * geometry.spacing[2], (j1 - j0 + 1) * geometry.spacing[1])
            fov_mm = 1.6 * extent
    logic.go_to_frame(params, frame)
    r = SliceViewRenderer(logic.scene, app_logic, size)
    try:
        r.show(vol.GetID())
        r.align_to_volume(vol, slice_index, centre_ij, fov_mm)
        return r.render()
    finally:
        r.close()


def render_curves(report: dict, volume_curves: dict[str, np.ndarray] | None = None,
                  size_px: tuple[int, int] = (900, 700)) -> np.ndarray:
    """Global strain and strain rate against time with ED/ES lines (matplotlib, Agg, no pyplot),
    and the LV, myocardium and RV volumes (ml) when ``volume_curves`` is given (taller picture)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from deepstrain.qc import mark_ed_es, plot_components, plot_volumes, time_axis

    t, xlabel = time_axis(report)
    ed, es = report["frames"]["ed"], report["frames"]["es"]
    rows = 2 if volume_curves is None else 3
    fig = Figure(figsize=(size_px[0] / 100, size_px[1] * rows / 200), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True)
    for ax, key, suffix, ylabel in ((axes[0], "global_strain", "percent", "strain (%)"),
                                    (axes[1], "global_strain_rate", "per_s", "strain rate (1/s)")):
        drawn = plot_components(ax, t, report[key], suffix)
        mark_ed_es(ax, t, ed, es)
        ax.axhline(0.0, color="0.6", linewidth=0.8)
        ax.set_ylabel(ylabel)
        if not drawn:
            ax.text(0.5, 0.5, "not available (no frame timing)", transform=ax.transAxes, ha="center")
    axes[0].legend(loc="best", fontsize=9, framealpha=0.8)
    axes[0].set_title(f"{report.get('study', '')} global strain".strip())
    if volume_curves is not None:
        plot_volumes(axes[2], t, volume_curves)
        mark_ed_es(axes[2], t, ed, es, names=False)
        axes[2].legend(loc="best", fontsize=9, framealpha=0.8)
    axes[-1].set_xlabel(xlabel)
    fig.tight_layout()
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return rgba[..., :3].copy()


def render_polar_map(polydata: vtk.vtkPolyData, vmin: float, vmax: float, title: str,
                     highlighted: int | None = None, size: tuple[int, int] = (640, 560)) -> np.ndarray:
    """The bullseye with its colour bar (unit in the title), segment numbers and values."""
    from . import polarmap

    win = offscreen_window(*size)
    ren = vtk.vtkRenderer()
    ren.SetBackground(1.0, 1.0, 1.0)
    win.AddRenderer(ren)
    lut = polarmap.lookup_table(vmin, vmax)
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(polydata)
    mapper.SetScalarModeToUseCellFieldData()
    mapper.SelectColorArray("Strain")
    mapper.SetLookupTable(lut)
    mapper.SetScalarRange(vmin, vmax)
    mapper.ScalarVisibilityOn()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetLighting(False)
    ren.AddActor(actor)
    edges = vtk.vtkActor()
    emapper = vtk.vtkPolyDataMapper()
    emapper.SetInputData(polydata)
    emapper.ScalarVisibilityOff()
    edges.SetMapper(emapper)
    edges.GetProperty().SetRepresentationToWireframe()
    edges.GetProperty().SetColor(0.2, 0.2, 0.2)
    edges.GetProperty().SetLineWidth(1.5)
    edges.GetProperty().SetLighting(False)
    ren.AddActor(edges)
    if highlighted:
        hmapper = vtk.vtkPolyDataMapper()
        hmapper.SetInputData(polarmap.outline_polydata(int(highlighted)))
        h = vtk.vtkActor()
        h.SetMapper(hmapper)
        h.GetProperty().SetColor(1.0, 0.8, 0.0)
        h.GetProperty().SetLineWidth(6)
        h.GetProperty().SetLighting(False)
        ren.AddActor(h)
    strain = polydata.GetCellData().GetArray("Strain")
    seg_ids = polydata.GetCellData().GetArray("SegmentId")
    for i in range(polydata.GetNumberOfCells()):
        seg = int(seg_ids.GetValue(i))
        v = strain.GetValue(i)
        text = vtk.vtkBillboardTextActor3D()
        text.SetInput(f"{seg}\n{'n/a' if not np.isfinite(v) else f'{v:.1f}'}")
        cx, cy = polarmap.segment_centre(seg)
        text.SetPosition(cx, cy, 0.05)
        tp = text.GetTextProperty()
        tp.SetFontSize(15)
        tp.SetColor(0.0, 0.0, 0.0)
        tp.SetJustificationToCentered()
        tp.SetVerticalJustificationToCentered()
        tp.BoldOn()
        ren.AddActor(text)
    bar = vtk.vtkScalarBarActor()
    bar.SetLookupTable(lut)
    bar.SetTitle("%")
    bar.SetNumberOfLabels(5)
    bar.SetLabelFormat("%.1f")
    bar.SetPosition(0.87, 0.12)
    bar.SetWidth(0.11)
    bar.SetHeight(0.72)
    bar.UnconstrainedFontSizeOn()
    for tp in (bar.GetTitleTextProperty(), bar.GetLabelTextProperty()):
        tp.SetColor(0.0, 0.0, 0.0)
        tp.ItalicOff()
        tp.ShadowOff()
        tp.SetFontSize(16)
    ren.AddViewProp(bar)
    caption = vtk.vtkTextActor()
    caption.SetInput(title)
    caption.GetTextProperty().SetFontSize(18)
    caption.GetTextProperty().SetColor(0.0, 0.0, 0.0)
    caption.SetDisplayPosition(12, size[1] - 28)
    ren.AddViewProp(caption)
    for txt, x, y in (("anterior", 0.0, 4.25), ("inferior", 0.0, -4.35), ("septal", -4.6, 0.35), ("lateral", 4.6, 0.35)):
        lab = vtk.vtkBillboardTextActor3D()
        lab.SetInput(txt)
        lab.SetPosition(x, y, 0.0)
        lab.GetTextProperty().SetFontSize(14)
        lab.GetTextProperty().SetColor(0.3, 0.3, 0.3)
        lab.GetTextProperty().SetJustificationToCentered()
        lab.GetTextProperty().SetVerticalJustificationToCentered()
        ren.AddActor(lab)
    cam = ren.GetActiveCamera()
    cam.ParallelProjectionOn()
    cam.SetFocalPoint(1.2, 0.25, 0.0)
    cam.SetPosition(1.2, 0.25, 20.0)
    cam.SetViewUp(0.0, 1.0, 0.0)
    cam.SetParallelScale(5.8)
    win.Render()
    rgb = window_to_array(win)
    win.Finalize()
    return rgb


def export_pictures(logic, params, folder: Path, stem: str, volume_curves, renderer_factory=None) -> dict[str, Path]:
    """Write the study pictures into ``folder``: slice view at ED and ES, curves (with ``volume_curves``,
    ml per frame: :attr:`deepstrain.pipeline.Analysis.volume_curves`), polar map."""
    report = logic.report(params)
    ed, es = report["frames"]["ed"], report["frames"]["es"]
    current = logic.current_frame(params)
    out: dict[str, Path] = {}
    try:
        for name, frame in (("ED", ed), ("ES", es)):
            rgb = render_slice(logic, params, frame) if renderer_factory is None else renderer_factory(name, frame)
            out[f"slice_{name}"] = write_png(rgb, Path(folder) / f"{stem}_slice_{name}_frame{frame}.png")
    finally:
        logic.go_to_frame(params, current)
    out["curves"] = write_png(render_curves(report, volume_curves), Path(folder) / f"{stem}_curves.png")
    model = params.ref("PolarModel")
    d = model.GetDisplayNode()
    vmin, vmax = d.GetScalarRange()
    out["polar_map"] = write_png(
        render_polar_map(model.GetPolyData(), vmin, vmax, model.GetAttribute("DeepStrain.title") or "",
                         params.highlighted_segment or None),
        Path(folder) / f"{stem}_polar_map.png")
    return out
