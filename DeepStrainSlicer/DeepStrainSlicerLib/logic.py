"""The DeepStrainSlicer logic: deepstrain analysis <-> MRML nodes (no qt).

Every method takes explicit nodes/arrays; the scene and the Sequences logic are given to the
constructor (inside Slicer: ``slicer.mrmlScene`` and ``slicer.modules.sequences.logic()``).

Node set of one study (all in ONE sequence browser so they move together):

* cine: sequence of scalar volumes (index = frame time in ms, or frame number without timing);
* "segmentation": sequence of segmentation nodes, segments LV cavity / LV myocardium / RV cavity;
* "displacement": sequence of grid transforms, the full Lagrangian field (to parent: ED -> frame t),
  the motion that "Recompute" reuses;
* "glyphs": sequence of grid transforms restricted to the ED myocardium (zero elsewhere, grid
  cropped to the myocardium box + 1 voxel), shown as glyphs in slice views;
* tables + plot series + charts of global strain / strain rate with ED and ES lines;
* the AHA polar map (model + colour table + colour legend + segment numbers + highlight outline)
  and an "AHA segments" segmentation (17 segments, ED voxels) for highlighting on the cine;
* a text node with the report JSON. The parameter node references the nodes by role, and every node
  made for a study carries the study's identifier (attribute :data:`STUDY_ATTRIBUTE`), so that its
  nodes are told from the user's ones also after Slicer renumbered them on import.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import colorsys
import contextlib
import dataclasses
import hashlib
import uuid

import numpy as np
import vtk

import slicer
from deepstrain.cine import Cine, Subject, frame_index
from deepstrain.qc import COMPONENT_COLORS, VOLUME_COLORS, time_axis
from deepstrain.report import cycle_frames

from . import dependencies, mrml, polarmap

COMPONENTS = ("radial", "circumferential", "longitudinal")
VOLUME_COLUMNS = {"lv": "LV volume (ml)", "myo": "myocardium volume (ml)", "rv": "RV volume (ml)"}
"""Curve-table columns of the volume curves (keys of ``Analysis.volume_curves``)."""
ROTATION_COLUMNS = {"basal_deg": ("basal rotation (deg)", (0.55, 0.35, 0.75)),
                    "mid_deg": ("mid rotation (deg)", (0.95, 0.55, 0.10)),
                    "apical_deg": ("apical rotation (deg)", (0.10, 0.65, 0.70)),
                    "twist_deg": ("twist (deg)", (0.15, 0.15, 0.15))}
"""Curve-table columns and chart colours of the rotation curves (report keys ``rotation`` and ``twist``)."""
SLICE_TABLE_COLUMNS = {"slice": "slice", "position_mm": "position from base (mm)",
                       "lv_ed_ml": "LV cavity ED (ml)", "lv_es_ml": "LV cavity ES (ml)",
                       "myo_ed_ml": "myocardium ED (ml)", "myo_es_ml": "myocardium ES (ml)",
                       "rv_ed_ml": "RV cavity ED (ml)", "rv_es_ml": "RV cavity ES (ml)"}
"""Columns of the per-slice volume table (keys of the report's ``slices`` block)."""
STUDY_ATTRIBUTE = "DeepStrain.study"
"""Node attribute: the identifier of the study a node was made for (``Parameters.study_id``)."""
MODULE_FIELD = "module field"
"""Source of a subject value typed into the module panel (``Subject.sources``)."""
POLAR_VIEW_TAG = "DeepStrainPolarMap"
PLOT_VIEW_TAG = "DeepStrainPlot"
TABLE_VIEW_TAG = "DeepStrainTable"
LAYOUT_ID = 9601
LAYOUT_XML = """<layout type="horizontal" split="true">
 <item splitSize="600">
  <layout type="vertical" split="true">
   <item><view class="vtkMRMLSliceNode" singletontag="Red">
    <property name="orientation" action="default">Axial</property>
    <property name="viewlabel" action="default">R</property>
    <property name="viewcolor" action="default">#F34A33</property></view></item>
   <item><view class="vtkMRMLSliceNode" singletontag="Yellow">
    <property name="orientation" action="default">Sagittal</property>
    <property name="viewlabel" action="default">Y</property>
    <property name="viewcolor" action="default">#EDD54C</property></view></item>
  </layout>
 </item>
 <item splitSize="500">
  <layout type="vertical" split="true">
   <item><view class="vtkMRMLPlotViewNode" singletontag="DeepStrainPlot">
    <property name="viewlabel" action="default">P</property></view></item>
   <item><view class="vtkMRMLViewNode" singletontag="DeepStrainPolarMap">
    <property name="viewlabel" action="default">AHA</property></view></item>
   <item><view class="vtkMRMLTableViewNode" singletontag="DeepStrainTable">
    <property name="viewlabel" action="default">T</property></view></item>
  </layout>
 </item>
</layout>"""

TORCH_MISSING = (
    "PyTorch is not installed in this Slicer. Press Run in the module and accept the offer to install it, "
    "or in the Python console run "
    f"{dependencies.console_lines(dependencies.pip_commands([dependencies.TORCH]))} "
    f"(the CPU build, about {dependencies.TORCH_DOWNLOAD_MB} MB), or install the \"PyTorch\" extension "
    "(View > Extensions Manager, search PyTorch, then restart Slicer). Alternatively give a segmentation "
    "and a displacement (run mode 'given')."
)


KEPT_EDITS = "networks, edited in Slicer (kept at Run)"
"""The provenance of a segmentation edited by hand and kept when Run analysed the study again."""


class Cancelled(Exception):
    """Raised by a progress callback to stop a long operation; nothing is left half-made."""


ProgressCallback = Callable[[float, str], None]


def _no_progress(fraction: float, message: str) -> None:
    return None


# --------------------------------------------------------------------------- parameter node
class _Param:
    def __init__(self, kind: type, default: Any) -> None:
        self.kind, self.default = kind, default

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: "Parameters | None", owner: type) -> Any:
        if obj is None:
            return self
        raw = obj.node.GetParameter(self.name)
        if raw == "":
            return self.default
        if self.kind is bool:
            return raw == "true"
        if self.kind in (list, dict):
            return json.loads(raw)
        if self.kind is float and raw == "nan":
            return math.nan
        return self.kind(raw)

    def __set__(self, obj: "Parameters", value: Any) -> None:
        if self.kind is bool:
            raw = "true" if value else "false"
        elif self.kind in (list, dict):
            raw = json.dumps(value)
        else:
            raw = "" if value is None else str(self.kind(value))
        obj.node.SetParameter(self.name, raw)


class Parameters:
    """Typed view of the module's ``vtkMRMLScriptedModuleNode`` (saved with the scene).

    Frames are 0-based; -1 means "automatic" for ED/ES. Spacing "" means "from the file";
    otherwise "slice,row,col" in mm. ``heart_rate_bpm``/``rr_ms``/``height_cm``/``weight_kg`` 0
    means "from the file". ``input_subject`` is what the input said about the subject (height,
    weight, heart rate and their sources), ``subject`` that with the height and weight fields over
    it, as in the shown analysis; Recompute applies the fields to ``input_subject`` again.
    ``study_id`` identifies the shown study (its nodes carry it as :data:`STUDY_ATTRIBUTE`).
    """

    input_path = _Param(str, "")
    spacing = _Param(str, "")
    heart_rate_bpm = _Param(float, 0.0)
    rr_ms = _Param(float, 0.0)
    height_cm = _Param(float, 0.0)
    weight_kg = _Param(float, 0.0)
    subject = _Param(dict, {})
    input_subject = _Param(dict, {})
    input_warnings = _Param(list, [])  # what reading the input warned about (a reloaded scene's Recompute reports them)
    ed = _Param(int, -1)
    es = _Param(int, -1)
    run_mode = _Param(str, "networks")  # "networks" or "given"
    tta = _Param(bool, False)  # test-time flips on every frame (ED and ES always have them)
    weights_dir = _Param(str, "")  # "" = the shipped weights; else a folder with its manifest.json
    refine_motion = _Param(bool, True)  # correct the motion with the segmentation (deepstrain.refinement)
    study_name = _Param(str, "study")
    component = _Param(str, "circumferential")
    polar_follows_frame = _Param(bool, False)
    show_segmentation = _Param(bool, True)
    show_glyphs = _Param(bool, True)
    glyph_scale_percent = _Param(float, 100.0)
    highlighted_segment = _Param(int, 0)
    export_folder = _Param(str, "")
    analysis_ed = _Param(int, -1)
    analysis_es = _Param(int, -1)
    analysis_timing = _Param(str, "")  # the heart-rate and RR fields at Run (JSON); "": scene of an older version
    input_es = _Param(int, -2)  # the ES frame (index) the input names itself (ACDC Info.cfg); -1: none; -2: not known
    results_labels_sha256 = _Param(str, "")  # the labels the shown results were computed from (export checks it)
    study_id = _Param(str, "")  # unique per Run; "" in scenes saved before studies were tagged

    ROLES = (
        "InputSequence", "Browser", "CineSequence", "SegmentationSequence", "DisplacementSequence",
        "GlyphSequence", "CurveTable", "MarkerTable", "StrainChart", "RateChart", "VolumeChart",
        "RotationChart", "PolarModel",
        "PolarLabels", "PolarHighlight", "PolarColors", "AhaSegmentation", "ReportText", "PolarView",
        "RvInsertion", "ResultsTable", "SliceTable",
    )

    def __init__(self, node: slicer.vtkMRMLScriptedModuleNode) -> None:
        self.node = node

    def ref(self, role: str) -> slicer.vtkMRMLNode | None:
        return self.node.GetNodeReference(role)

    def set_ref(self, role: str, node: slicer.vtkMRMLNode | None) -> None:
        if role not in self.ROLES:
            raise KeyError(role)
        self.node.SetNodeReferenceID(role, node.GetID() if node is not None else None)

    def snapshot(self) -> tuple[dict[str, str], dict[str, str | None]]:
        """Every parameter and node reference (to :meth:`restore` after a failed operation)."""
        node = self.node
        return ({n: node.GetParameter(n) for n in node.GetParameterNames()},
                {r: node.GetNodeReferenceID(r) for r in self.ROLES})

    def restore(self, state: tuple[dict[str, str], dict[str, str | None]]) -> None:
        values, refs = state
        node = self.node
        was = node.StartModify()
        try:
            for name in node.GetParameterNames():
                if name not in values:
                    node.UnsetParameter(name)
            for name, raw in values.items():
                node.SetParameter(name, raw)
            for role, node_id in refs.items():
                node.SetNodeReferenceID(role, node_id)
        finally:
            node.EndModify(was)

    def spacing_tuple(self) -> tuple[float, float, float] | None:
        s = self.spacing.strip()
        if not s:
            return None
        parts = [float(p) for p in re.split(r"[,\s]+", s) if p]
        if len(parts) != 3 or any(not math.isfinite(p) or p <= 0 for p in parts):
            raise ValueError(f"spacing must be three positive numbers 'slice,row,col' in mm, got '{s}'")
        return parts[0], parts[1], parts[2]


# --------------------------------------------------------------------------- node transaction
@contextlib.contextmanager
def nodes_or_nothing(scene: slicer.vtkMRMLScene) -> Iterator[None]:
    """Remove every node added to ``scene`` inside the block if the block raises (incl. Cancelled)."""
    before = node_ids(scene)
    try:
        yield
    except BaseException:
        remove_nodes(scene, node_ids(scene) - before)
        raise


def node_ids(scene: slicer.vtkMRMLScene) -> set[str]:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def remove_nodes(scene: slicer.vtkMRMLScene, ids: set[str] | list[str]) -> None:
    """Remove the nodes ``ids`` (browsers first, then newest first) and whatever removing them made."""
    before_all = node_ids(scene) - set(ids)
    for _ in range(5):  # removing a node can make others (default display/storage nodes): repeat
        nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
        nodes = [n for n in nodes if n.GetID() not in before_all]
        if not nodes:
            break
        browsers = [n for n in nodes if n.IsA("vtkMRMLSequenceBrowserNode")]
        others = [n for n in reversed(nodes) if not n.IsA("vtkMRMLSequenceBrowserNode")]
        for node in browsers + others:
            if scene.IsNodePresent(node):
                scene.RemoveNode(node)


@dataclass
class SegmentInfo:
    segment: int
    name: str
    value: float | None
    component: str
    frame: int


# --------------------------------------------------------------------------- the logic
class DeepStrainLogic:
    """Builds and updates the node set of one study; see the module docstring."""

    def __init__(self, scene: slicer.vtkMRMLScene | None = None, sequences_logic=None) -> None:
        self.scene = scene if scene is not None else slicer.mrmlScene
        if sequences_logic is None:
            sequences_logic = slicer.modules.sequences.logic()  # inside the Slicer application
        self.sequences_logic = sequences_logic
        self._cache: dict[str, Any] = {}  # arrays of one study: see _cache_is_for
        self.analysis = None

    def forget_study(self) -> None:
        """Drop the study kept in memory (its arrays, the networks' motion, the last analysis), e.g.
        when the scene is closed."""
        self._cache = {}
        self.analysis = None

    def _cache_is_for(self, browser: slicer.vtkMRMLSequenceBrowserNode) -> bool:
        """Whether the arrays in memory are those of the study of ``browser``: the same node object
        (kept alive by the cache, so never another node at the same address) and the same study
        identifier (:data:`STUDY_ATTRIBUTE`)."""
        c = self._cache
        return bool(c) and c.get("browser") is browser and c.get("study") == (browser.GetAttribute(STUDY_ATTRIBUTE) or "")

    # ----------------------------------------------------------------- parameters
    def _module_nodes(self) -> list[slicer.vtkMRMLScriptedModuleNode]:
        """The module's parameter nodes in the scene, oldest first (several after a saved study was
        added to a scene that had one)."""
        nodes = [self.scene.GetNthNodeByClass(i, "vtkMRMLScriptedModuleNode")
                 for i in range(self.scene.GetNumberOfNodesByClass("vtkMRMLScriptedModuleNode"))]
        return [n for n in nodes if n.GetAttribute("ModuleName") == "DeepStrainSlicer"]

    def parameter_node(self) -> Parameters:
        """The module's parameter node: of several, the newest that holds a study (the study last
        added to the scene), else the newest; one is made when there is none."""
        nodes = self._module_nodes()
        if nodes:
            with_study = [n for n in nodes if n.GetNodeReference("Browser") is not None]
            return Parameters((with_study or nodes)[-1])
        node = self.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "DeepStrainSlicer")
        node.SetAttribute("ModuleName", "DeepStrainSlicer")
        return Parameters(node)

    def other_studies(self, params: Parameters) -> list[str]:
        """Names of the studies in the scene that other parameter nodes than ``params`` hold: the
        module does not show them (see :meth:`parameter_node`); they stay in the scene untouched."""
        return [Parameters(n).study_name for n in self._module_nodes()
                if n.GetID() != params.node.GetID() and n.GetNodeReference("Browser") is not None]

    # ----------------------------------------------------------------- inputs
    @staticmethod
    def load_cine_file(path: str | os.PathLike, params: Parameters) -> Cine:
        """Read a 4D NIfTI / DICOM folder / ACDC folder with the overrides of ``params`` (height and
        weight fields: applied by :meth:`run`, which keeps the file's own values)."""
        from deepstrain.io import load_cine

        return load_cine(
            path,
            spacing=params.spacing_tuple(),
            heart_rate_bpm=params.heart_rate_bpm or None,
            rr_ms=params.rr_ms or None,
            ed=None if params.ed < 0 else params.ed,
            es=None if params.es < 0 else params.es,
            given_source=MODULE_FIELD,
        )

    def cine_from_sequence(self, seq: slicer.vtkMRMLSequenceNode, params: Parameters) -> Cine:
        """A Cine named after the sequence ``seq``, with the overrides of ``params`` (height and weight
        fields: applied by :meth:`run`)."""
        if params.heart_rate_bpm and params.rr_ms:  # as deepstrain.io.load_cine refuses for a file
            raise ValueError("give either the heart rate or the RR interval, not both")
        results = {n.GetNodeReferenceID(role) for n in self._module_nodes()
                   for role in ("SegmentationSequence", "DisplacementSequence", "GlyphSequence")}
        if seq.GetID() in results:
            raise ValueError(f"the sequence '{seq.GetName()}' is one of a study's results (segmentation, "
                             "displacement or glyphs), not a cine: choose the input cine (or the study's cine)")
        cine = mrml.sequence_to_cine(seq, name=seq.GetName() or "study")
        sp = params.spacing_tuple()
        if sp is not None:
            g = cine.geometry
            cine.geometry = type(g)(np.array(sp), g.origin, g.direction)
        rr = None
        if params.heart_rate_bpm:
            rr = 60000.0 / params.heart_rate_bpm
        if params.rr_ms:
            rr = params.rr_ms
        if rr is not None:
            cine.times_ms = np.arange(cine.n_frames) * rr / cine.n_frames
            cine.subject.given("heart_rate_bpm", 60000.0 / rr, MODULE_FIELD)
        cine.ed = None if params.ed < 0 else params.ed
        cine.es = None if params.es < 0 else params.es
        return cine

    @staticmethod
    def require_torch() -> None:
        """RuntimeError with install help when PyTorch is missing (the networks need it)."""
        try:
            import torch  # noqa: F401
        except ImportError:
            raise RuntimeError(TORCH_MISSING) from None

    # ----------------------------------------------------------------- build
    def run(self, cine: Cine, params: Parameters, labels: np.ndarray | None = None,
            displacement: np.ndarray | None = None, progress: ProgressCallback = _no_progress,
            labels_origin: str | None = None):
        """Analyse ``cine`` and build all nodes. Without ``labels``/``displacement`` the networks run.
        ``labels_origin``: where given ``labels`` come from, for the report's provenance (e.g. the
        study's hand-edited segmentation kept at Run: :meth:`edited_labels`).
        The height and weight fields of ``params`` go over the subject of ``cine`` (not changed).
        An anterior RV insertion point placed in the study is kept, and orients the AHA segments,
        when ``cine`` is the study's input (:meth:`kept_rv_insertion`); else it goes with the study.

        The new study is built beside the previous one, whose nodes are removed only once it is
        complete: on any error or :class:`Cancelled` raised by ``progress`` the new nodes are removed
        and the scene, the parameter node and the study in memory are as they were.
        Returns the :class:`deepstrain.pipeline.Analysis`.
        """
        from deepstrain.analyze import analyze_cine

        timing = _timing_fields(params)  # as the input was read: the fields may change while Run works
        with self._study_or_nothing(params):
            progress(0.0, "starting")
            if labels is None or displacement is None:
                self.require_torch()
            point = self.kept_rv_insertion(params, cine)[0]
            point_node = params.ref("RvInsertion") if point is not None else None
            input_subject = _input_part(cine.subject.as_dict())
            cine = dataclasses.replace(cine, subject=subject_with_fields(input_subject, params))
            # the same engine as deepstrain analyze: networks for what is missing, strain, volumes, provenance
            analysis = analyze_cine(cine, labels=labels, displacement=displacement,
                                    ed=cine.ed, es=cine.es,  # the fields, read as frame indices by the loaders
                                    progress=lambda f, m: progress(0.5 * f, m), tta="all" if params.tta else "ed-es",
                                    weights_dir=params.weights_dir or None, refine_motion=params.refine_motion,
                                    keep_network_motion=True, rv_insertion_ras=point,
                                    spacing_source=MODULE_FIELD if params.spacing_tuple() is not None else "input")
            kept = bool(labels_origin) and labels is not None
            if kept:
                prov = analysis.report["provenance"]
                prov["segmentation"] = labels_origin
                if prov.get("motion_refined_with") == "given segmentation":
                    prov["motion_refined_with"] = "segmentation edited in Slicer"
            kept_ids = set() if point_node is None else {n.GetID() for n in [point_node, *_owned_nodes(point_node)]}
            previous = [n.GetID() for n in self.study_nodes(params) if n.GetID() not in kept_ids]
            for role in Parameters.ROLES:
                if role not in ("InputSequence", "PolarView"):
                    params.set_ref(role, None)
            params.study_id = uuid.uuid4().hex
            params.highlighted_segment = 0
            params.input_subject, params.subject = input_subject, cine.subject.as_dict()
            params.input_warnings = list(cine.warnings)
            # the input's own ES, for Recompute on auto; not known when the ES field replaced it
            params.input_es = -2 if params.es >= 0 else (-1 if cine.es is None else int(cine.es))
            params.analysis_timing = timing
            before = node_ids(self.scene)
            self._build_nodes(cine, analysis, params, progress)
            if point_node is not None:  # the user's point, as it was: now the new study's
                params.set_ref("RvInsertion", point_node)
            self._tag(node_ids(self.scene) - before, params.study_id)
            progress(1.0, "done")
        if point_node is not None:  # after the block: a failed Run leaves the point the old study's
            point_node.SetName(f"{params.study_name} anterior RV insertion")
            self._tag(kept_ids, params.study_id)
        remove_nodes(self.scene, previous)
        self.show_study(params)
        # the network's raw motion (memory only): Recompute refines it again with edited contours;
        # run_labels: the networks' own, which later edits are told from (kept edits are edits)
        run_labels = analysis.network_motion.labels if kept and analysis.network_motion else analysis.labels
        self._cache.update(network_motion=analysis.network_motion, run_labels=run_labels,
                           motion_made_with=(bool(params.refine_motion), analysis.labels))
        analysis.network_motion = None
        self.analysis = analysis
        return analysis

    def edited_labels(self, params: Parameters, cine: Cine) -> tuple[np.ndarray | None, str]:
        """The study's segmentation as it is in the scene, when Run is about to replace it: ``(labels on
        the grid of ``cine`` (the input Run reads), why)``. ``labels`` is None with why ``""`` when
        there is nothing to keep (no study, or the segmentation is as the last Run made it:
        :meth:`_as_run_made_it`), and None with the reason when the segmentation differs (hand edits,
        also those already recomputed; or, in a scene saved before edits were recorded, may differ)
        but ``cine`` is another grid, so it cannot be kept."""
        if params.ref("Browser") is None or params.ref("SegmentationSequence") is None:
            return None, ""
        try:
            study_cine, labels, _ = self.study_arrays(params)
        except ValueError as exc:  # e.g. a segment deleted or added by hand: Run may still segment again
            return None, f"the study's segmentation cannot be read ({exc})"
        if self._as_run_made_it(params, labels):
            return None, ""
        flip, why_not = _study_axes_on(study_cine, cine)
        if flip is None:
            return None, why_not
        return (np.ascontiguousarray(np.flip(labels, axis=flip)) if flip else labels), ""

    def kept_rv_insertion(self, params: Parameters, cine: Cine) -> tuple[np.ndarray | None, str]:
        """The anterior RV insertion point placed in the study (:meth:`rv_insertion_node`), when Run is
        about to replace the study with an analysis of ``cine``: ``(point RAS mm, "")`` when ``cine`` is
        the study's input (same grid and images: the point keeps its place, and Run keeps it);
        ``(None, why)`` when a point is placed but ``cine`` is another input (Run removes it); ``(None,
        "")`` when no point is placed."""
        point = self.rv_insertion_point(params)
        if point is None or params.ref("Browser") is None:
            return None, ""
        try:
            study_cine = self.study_arrays(params)[0]
        except ValueError as exc:
            return None, f"the study cannot be read ({exc})"
        flip, why_not = _study_axes_on(study_cine, cine)
        return (point, "") if flip is not None else (None, why_not)

    def kept_edits_origin(self, params: Parameters) -> str:
        """The provenance of the study's edited segmentation kept at Run: :data:`KEPT_EDITS` for the
        networks' labels edited by hand, else the same for the labels' own origin (e.g. "given")."""
        seg = str((self.report(params).get("provenance") or {}).get("segmentation") or "networks")
        base = seg.split(",")[0].strip() or "networks"
        return KEPT_EDITS if base == "networks" else f"{base}, edited in Slicer (kept at Run)"

    def _as_run_made_it(self, params: Parameters, labels: np.ndarray) -> bool:
        """Whether ``labels`` are the study's segmentation as the last Run made it (the networks', or
        the one given), not edited since (a segmentation edited and then recomputed is edited): known
        from memory in the session that ran it; in a scene loaded from a file, from the stored report
        (its provenance marks no edit) and the checksum of the labels its results were computed from."""
        if self._cache_is_for(params.ref("Browser")) and self._cache.get("run_labels") is not None:
            return bool(np.array_equal(labels, self._cache["run_labels"]))
        seg = str((self.report(params).get("provenance") or {}).get("segmentation", ""))
        return _are_results_labels(params, labels) is True and "edited" not in seg and "as stored" not in seg

    def _build_nodes(self, cine: Cine, analysis, params: Parameters, progress: ProgressCallback) -> None:
        scene, name = self.scene, cine.name
        params.study_name = name
        progress(0.55, "cine sequence")
        cine_seq = mrml.cine_to_sequence(scene, cine, f"{name} cine")
        progress(0.62, "segmentation sequence")
        seg_seq = mrml.labels_to_segmentation_sequence(scene, analysis.labels, cine.geometry, cine.times_ms,
                                                       f"{name} segmentation")
        progress(0.72, "displacement sequence")
        disp = np.asarray(analysis.displacement, dtype=np.float32)
        disp_seq = mrml.displacement_to_transform_sequence(scene, disp, cine.geometry, cine.times_ms,
                                                           f"{name} displacement")
        progress(0.82, "glyph sequence")
        glyph_seq = self._glyph_sequence(disp, analysis.labels[analysis.ed] == 2, cine, f"{name} displacement glyphs")
        progress(0.88, "browser")
        browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", f"{name} browser")
        browser.SetAndObserveMasterSequenceNodeID(cine_seq.GetID())
        for s in (seg_seq, disp_seq, glyph_seq):
            browser.AddSynchronizedSequenceNodeID(s.GetID())
        browser.SetSaveChanges(seg_seq, True)  # edits of the segmentation proxy go back into the sequence
        self.sequences_logic.UpdateProxyNodesFromSequences(browser)
        for role, node in (("Browser", browser), ("CineSequence", cine_seq), ("SegmentationSequence", seg_seq),
                           ("DisplacementSequence", disp_seq), ("GlyphSequence", glyph_seq)):
            params.set_ref(role, node)
        self._cache = {"study": params.study_id, "browser": browser, "cine": cine, "displacement": disp}
        self._setup_proxy_display(params)
        browser.SetSelectedItemNumber(analysis.ed)  # before the polar map, which may follow the shown frame
        progress(0.92, "curves and polar map")
        self._update_results(analysis, params)

    def _glyph_sequence(self, disp: np.ndarray, myo: np.ndarray, cine: Cine, name: str) -> slicer.vtkMRMLSequenceNode:
        box = mrml.crop_box(myo, margin=1)
        sub = mrml.sub_geometry(cine.geometry, box)
        masked = disp[(slice(None), slice(None)) + box] * myo[box][None, None]
        return mrml.displacement_to_transform_sequence(self.scene, masked.astype(np.float32), sub, cine.times_ms, name)

    def _refresh_glyphs(self, params: Parameters, cine: Cine, disp: np.ndarray, myo: np.ndarray) -> None:
        """Re-mask the glyph sequence to the (edited) ED myocardium, with the displacement ``disp``."""
        self._replace_items(params.ref("GlyphSequence"), self._glyph_sequence(disp, myo, cine, "tmp glyphs"))
        self.sequences_logic.UpdateProxyNodesFromSequences(params.ref("Browser"))

    def _replace_items(self, seq: slicer.vtkMRMLSequenceNode, fresh: slicer.vtkMRMLSequenceNode) -> None:
        """Give ``seq`` the items of ``fresh`` (same frames), then remove ``fresh``: the node, its ID
        and the browser's synchronisation stay."""
        try:
            seq.RemoveAllDataNodes()
            for i in range(fresh.GetNumberOfDataNodes()):
                seq.SetDataNodeAtValue(fresh.GetNthDataNode(i), fresh.GetNthIndexValue(i))
        finally:
            self.scene.RemoveNode(fresh)

    def _setup_proxy_display(self, params: Parameters) -> None:
        browser = params.ref("Browser")
        vol = browser.GetProxyNode(params.ref("CineSequence"))
        vol.CreateDefaultDisplayNodes()
        cine = self._cache.get("cine")
        if cine is not None:
            # one fixed window for all frames (no flicker), from the 1st-99.5th percentiles of the cine
            lo, hi = np.percentile(cine.data[:, :: max(1, cine.data.shape[1] // 4)], [1.0, 99.5])
            vd = vol.GetDisplayNode()
            vd.SetAutoWindowLevel(False)
            vd.SetWindowLevel(float(max(hi - lo, 1e-6)), float((hi + lo) / 2))
        seg = browser.GetProxyNode(params.ref("SegmentationSequence"))
        seg.CreateDefaultDisplayNodes()
        seg.SetReferenceImageGeometryParameterFromVolumeNode(vol)
        seg.GetDisplayNode().SetOpacity2DFill(0.35)
        seg.GetDisplayNode().SetOpacity2DOutline(1.0)
        seg.GetDisplayNode().SetVisibility3D(False)
        for role in ("DisplacementSequence", "GlyphSequence"):
            tr = browser.GetProxyNode(params.ref(role))
            tr.CreateDefaultDisplayNodes()
        glyph = browser.GetProxyNode(params.ref("GlyphSequence")).GetDisplayNode()
        glyph.SetVisualizationMode(slicer.vtkMRMLTransformDisplayNode.VIS_MODE_GLYPH)
        glyph.SetGlyphType(slicer.vtkMRMLTransformDisplayNode.GLYPH_TYPE_ARROW)
        spacing = mrml.geometry_of_volume(vol).spacing
        glyph.SetGlyphSpacingMm(float(max(2.0 * min(spacing[1:]), 2.5)))
        glyph.SetGlyphDisplayRangeMinMm(0.05)  # zero outside the myocardium: no glyph there
        glyph.SetGlyphDisplayRangeMaxMm(1000.0)
        glyph.SetVisibility3D(False)
        self.set_glyph_scale(params, params.glyph_scale_percent)
        self.set_overlays(params, params.show_segmentation, params.show_glyphs)

    def set_glyph_scale(self, params: Parameters, percent: float) -> None:
        """Arrow length of the displacement glyphs in percent of the displacement (100: true length in mm)."""
        params.glyph_scale_percent = float(percent)
        browser = params.ref("Browser")
        tr = browser.GetProxyNode(params.ref("GlyphSequence")) if browser is not None else None
        if tr is not None and tr.GetDisplayNode():
            tr.GetDisplayNode().SetGlyphScalePercent(float(percent))

    def set_overlays(self, params: Parameters, segmentation: bool, glyphs: bool) -> None:
        """Toggle the segmentation overlay and the displacement glyphs in slice views."""
        params.show_segmentation, params.show_glyphs = bool(segmentation), bool(glyphs)
        browser = params.ref("Browser")
        if browser is None:
            return
        seg = browser.GetProxyNode(params.ref("SegmentationSequence"))
        if seg is not None and seg.GetDisplayNode():
            seg.GetDisplayNode().SetVisibility(bool(segmentation))
        tr = browser.GetProxyNode(params.ref("GlyphSequence"))
        if tr is not None and tr.GetDisplayNode():
            d = tr.GetDisplayNode()
            d.SetVisibility(bool(glyphs))
            d.SetVisibility2D(bool(glyphs))

    def show_study(self, params: Parameters) -> None:
        """Show the study of ``params`` in the views and hide every other study's (a scene may hold
        several: :meth:`parameter_node`): the other studies' nodes stay in the scene, unchanged but
        for the visibility of their display nodes (segmentation, glyphs, polar map and its legend,
        AHA segmentation, RV insertion point); the shown study's follow its settings (overlay
        toggles, highlighted segment). The module calls it whenever the shown study may change."""
        mine = {n.GetID() for n in self.study_nodes(params)}
        others = [Parameters(n) for n in self._module_nodes() if n.GetID() != params.node.GetID()]
        for other in others:
            if other.ref("Browser") is None:
                continue
            for node in self.study_nodes(other):
                if (node.GetID() in mine or not node.IsA("vtkMRMLDisplayableNode")
                        or node.IsA("vtkMRMLVolumeNode")):  # a cine shows where the slice views put it
                    continue
                for i in range(node.GetNumberOfDisplayNodes()):
                    if (d := node.GetNthDisplayNode(i)) is not None:
                        d.SetVisibility(False)
        if params.ref("Browser") is None:
            return
        for role in ("PolarModel", "PolarLabels", "RvInsertion"):  # the polar map's legend is the model's
            if (node := params.ref(role)) is not None:
                for i in range(node.GetNumberOfDisplayNodes()):
                    if (d := node.GetNthDisplayNode(i)) is not None:
                        d.SetVisibility(True)
        self.set_overlays(params, params.show_segmentation, params.show_glyphs)
        self.highlight_segment(params, params.highlighted_segment or None)

    @contextlib.contextmanager
    def _study_or_nothing(self, params: Parameters) -> Iterator[None]:
        """On any error inside the block (incl. :class:`Cancelled`): the nodes added are removed, and
        the parameter node and the study in memory are restored."""
        state, cache, analysis = params.snapshot(), dict(self._cache), self.analysis
        try:
            with nodes_or_nothing(self.scene):
                yield
        except BaseException:
            params.restore(state)
            self._cache, self.analysis = cache, analysis
            raise

    def _tag(self, ids: set[str], study_id: str) -> None:
        """Mark the nodes ``ids`` (not singletons) as made for the study ``study_id``."""
        for node_id in ids:
            node = self.scene.GetNodeByID(node_id)
            if node is not None and study_id and not node.GetSingletonTag():
                node.SetAttribute(STUDY_ATTRIBUTE, study_id)

    def study_nodes(self, params: Parameters) -> list[slicer.vtkMRMLNode]:
        """The nodes of the shown study: those tagged with its ``study_id`` and those the parameter node
        references in a study role (references follow IDs renumbered on import), with the display,
        storage, plot series and proxy nodes they own. Never the input sequence, the polar view, the
        parameter node, nor a node tagged for another study."""
        sid = params.study_id
        keep = {n.GetID() for n in (params.ref("InputSequence"), params.ref("PolarView"), params.node) if n is not None}
        roots = [params.ref(r) for r in Parameters.ROLES if r not in ("InputSequence", "PolarView")]
        if sid:
            roots += [n for n in _scene_nodes(self.scene) if n.GetAttribute(STUDY_ATTRIBUTE) == sid]
        found: dict[str, slicer.vtkMRMLNode] = {}
        for node in roots:
            if node is None or node.GetID() in keep or node.GetAttribute(STUDY_ATTRIBUTE) not in (None, sid):
                continue
            found[node.GetID()] = node
            for part in _owned_nodes(node):
                if part.GetID() not in keep and part.GetAttribute(STUDY_ATTRIBUTE) in (None, sid):
                    found.setdefault(part.GetID(), part)
        return list(found.values())

    def _remove(self, node: slicer.vtkMRMLNode) -> None:
        """Remove a node with its display and storage nodes."""
        extra = []
        if hasattr(node, "GetNumberOfDisplayNodes"):
            extra += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
        if hasattr(node, "GetNumberOfStorageNodes"):
            extra += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
        self.scene.RemoveNode(node)
        for n in extra:
            if n is not None and self.scene.IsNodePresent(n):
                self.scene.RemoveNode(n)

    # ----------------------------------------------------------------- results: tables, plots, polar map
    def _update_results(self, analysis, params: Parameters) -> None:
        params.analysis_ed, params.analysis_es = analysis.ed, analysis.es
        params.results_labels_sha256 = labels_digest(analysis.labels)
        report = analysis.report
        self._update_curve_tables(report, params, analysis.volume_curves)
        self._update_results_table(report, params)
        self._update_slice_table(report, params)
        self._update_report_text(report, params)  # before the charts: their time axis is read from it
        self._update_charts(params)
        self._update_aha_segmentation(analysis, params)
        self.update_polar_map(params)

    def _update_report_text(self, report: dict, params: Parameters) -> None:
        node = params.ref("ReportText")
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLTextNode", f"{params.study_name} report")
            params.set_ref("ReportText", node)
        node.SetText(json.dumps(report, indent=1))

    def report(self, params: Parameters) -> dict:
        node = params.ref("ReportText")
        if node is None:
            raise ValueError("no analysis in this scene yet")
        return json.loads(node.GetText())

    def quality_findings(self, params: Parameters) -> list[dict]:
        """The automatic checks' findings of the current analysis (the report's ``quality``,
        :mod:`deepstrain.quality`); empty without an analysis. Recompute checks the edited labels again."""
        return self._report_list(params, "quality")

    def analysis_warnings(self, params: Parameters) -> list[str]:
        """The current analysis's warnings (the report's ``warnings``: what the input lacked, such as frame
        timing or a voxel size that looks lost, and what could not be computed); empty without an analysis."""
        return [str(w) for w in self._report_list(params, "warnings")]

    def _report_list(self, params: Parameters, key: str) -> list:
        """The report's list ``key``; empty without an analysis."""
        return list(self.report(params).get(key) or []) if params.ref("ReportText") is not None else []

    def go_to_finding(self, params: Parameters, index: int) -> dict:
        """Show finding ``index``: the cine at its frame, and every slice view moved (along its normal)
        to the finding's first point (RAS mm). Returns the finding."""
        findings = self.quality_findings(params)
        if not 0 <= index < len(findings):
            raise ValueError(f"finding {index} outside 0..{len(findings) - 1}")
        finding = findings[index]
        if finding.get("frame") is not None:
            self.go_to_frame(params, int(finding["frame"]))
        if finding.get("points_ras"):
            r, a, s = (float(v) for v in finding["points_ras"][0])
            slicer.vtkMRMLSliceNode.JumpAllSlices(self.scene, r, a, s)
        return finding

    def _update_curve_tables(self, report: dict, params: Parameters, volume_curves: dict[str, np.ndarray]) -> None:
        n = report["frames"]["count"]
        x, xcol = time_axis(report)  # "time (ms)", or "frame" when the input has no timing
        cols: dict[str, np.ndarray] = {"frame": np.arange(n, dtype=float), xcol: x}
        for c in COMPONENTS:
            v = report["global_strain"][f"{c}_percent"]
            cols[f"{c} strain (%)"] = _curve(v, n)
        for c in COMPONENTS:
            v = report["global_strain_rate"][f"{c}_per_s"]
            cols[f"{c} strain rate (1/s)"] = _curve(v, n)
        for key, column in VOLUME_COLUMNS.items():  # the volume chart's curves
            cols[column] = np.asarray(volume_curves[key], dtype=float)
        rotation = {**(report.get("rotation") or {}), "twist_deg": (report.get("twist") or {}).get("twist_deg")}
        for key, (column, _) in ROTATION_COLUMNS.items():
            v = rotation.get(key)
            cols[column] = _curve(v, n)
        table = params.ref("CurveTable")
        if table is None:
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{params.study_name} strain curves")
            params.set_ref("CurveTable", table)
        _fill_table(table, cols)
        ed, es = report["frames"]["ed"], report["frames"]["es"]
        strain_vals = np.concatenate([cols[f"{c} strain (%)"] for c in COMPONENTS])
        rate_vals = np.concatenate([cols[f"{c} strain rate (1/s)"] for c in COMPONENTS])
        volume_vals = np.concatenate([cols[c] for c in VOLUME_COLUMNS.values()] + [np.zeros(1)])
        rotation_vals = np.concatenate([cols[c] for c, _ in ROTATION_COLUMNS.values()])
        markers = {
            "ED time": np.array([x[ed], x[ed]]), "ES time": np.array([x[es], x[es]]),
            "strain range": _padded_range(strain_vals), "rate range": _padded_range(rate_vals),
            "volume range": _padded_range(volume_vals), "rotation range": _padded_range(rotation_vals),
        }
        mt = params.ref("MarkerTable")
        if mt is None:
            mt = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{params.study_name} ED ES markers")
            params.set_ref("MarkerTable", mt)
        _fill_table(mt, markers)

    def _update_results_table(self, report: dict, params: Parameters) -> None:
        """The single-number results (volumes, indexed volumes, subject, ESS, SRs, SRe, twist) as a
        table node with the columns quantity, value and unit (empty value: not computed)."""
        from deepstrain.report import scalar_results

        table = params.ref("ResultsTable")
        if table is None:
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{params.study_name} results")
            params.set_ref("ResultsTable", table)
        rows = scalar_results(report)
        t = vtk.vtkTable()
        cols = (vtk.vtkStringArray(), vtk.vtkDoubleArray(), vtk.vtkStringArray())
        for arr, name in zip(cols, ("quantity", "value", "unit")):
            arr.SetName(name)
            arr.SetNumberOfValues(len(rows))
            t.AddColumn(arr)
        for i, (name, value, unit) in enumerate(rows):
            cols[0].SetValue(i, name)
            cols[1].SetValue(i, math.nan if value is None else float(value))
            cols[2].SetValue(i, unit)
        table.SetAndObserveTable(t)
        table.Modified()

    def _update_slice_table(self, report: dict, params: Parameters) -> None:
        """Per-slice volumes at ED and ES (the report's ``slices`` block, as ``slices.csv``) as a table
        node: where EDV and ESV come from, slice by slice (NaN: no position without a cardiac frame)."""
        slices = report.get("slices")
        if not slices:
            return
        table = params.ref("SliceTable")
        if table is None:
            table = self.scene.AddNewNodeByClass("vtkMRMLTableNode", f"{params.study_name} volumes per slice")
            params.set_ref("SliceTable", table)
        _fill_table(table, {SLICE_TABLE_COLUMNS[key]: _curve(values, len(slices["slice"]))
                            for key, values in slices.items()})

    def results(self, params: Parameters) -> dict[str, tuple[float | None, str]]:
        """``quantity -> (value, unit)`` from the results table (None: not computed)."""
        table = params.ref("ResultsTable")
        if table is None:
            return {}
        t = table.GetTable()
        q, v, u = (t.GetColumnByName(n) for n in ("quantity", "value", "unit"))
        out = {}
        for i in range(t.GetNumberOfRows()):
            x = v.GetValue(i)
            out[q.GetValue(i)] = (None if math.isnan(x) else x, u.GetValue(i))
        return out

    def _update_charts(self, params: Parameters) -> None:
        report = self.report(params) if params.ref("ReportText") else None
        table, mt = params.ref("CurveTable"), params.ref("MarkerTable")
        _, xlabel = time_axis(report) if report else (None, "frame")  # also the x column's name
        curves = {  # chart role: (y axis, marker range column, name, [(series, table column, colour)])
            "StrainChart": ("strain (%)", "strain range", "global strain",
                            [(f"{c} strain", f"{c} strain (%)", COMPONENT_COLORS[c]) for c in COMPONENTS]),
            "RateChart": ("strain rate (1/s)", "rate range", "global strain rate",
                          [(f"{c} strain rate", f"{c} strain rate (1/s)", COMPONENT_COLORS[c]) for c in COMPONENTS]),
            "VolumeChart": ("volume (ml)", "volume range", "volumes",
                            [(col.split(" (")[0], col, VOLUME_COLORS[k]) for k, col in VOLUME_COLUMNS.items()]),
            "RotationChart": ("rotation (deg), counter-clockwise from the apex", "rotation range", "LV rotation and twist",
                              [(col.split(" (")[0], col, color) for col, color in ROTATION_COLUMNS.values()]),
        }
        for role, (ylabel, range_col, title, series) in curves.items():
            suffix = title.replace("global ", "")
            chart = params.ref(role)
            if chart is None:
                chart = self.scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"{params.study_name} {suffix}")
                params.set_ref(role, chart)
                for name, col, color in series:
                    s = self._series(name, table, xlabel, col, color)
                    s.SetAttribute("DeepStrain.column", col)
                    chart.AddAndObservePlotSeriesNodeID(s.GetID())
                for label, xcol, color in (("ED", "ED time", (0.3, 0.3, 0.3)), ("ES", "ES time", (0.0, 0.0, 0.0))):
                    s = self._series(f"{label} ({suffix})", mt, xcol, range_col, color)
                    s.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleNone)
                    s.SetLineStyle(slicer.vtkMRMLPlotSeriesNode.LineStyleDash)
                    s.SetAttribute("DeepStrain.marker", label)
                    chart.AddAndObservePlotSeriesNodeID(s.GetID())
            for i in range(chart.GetNumberOfPlotSeriesNodes()):  # the time axis may have changed (Recompute)
                s = chart.GetNthPlotSeriesNode(i)
                if s is not None and s.GetAttribute("DeepStrain.column"):
                    s.SetXColumnName(xlabel)
            chart.SetTitle(f"{params.study_name}: {title}")
            chart.SetXAxisTitle(xlabel)
            chart.SetYAxisTitle(ylabel)
            chart.SetLegendVisibility(True)

    def _series(self, name: str, table, xcol: str, ycol: str, color) -> slicer.vtkMRMLPlotSeriesNode:
        s = self.scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", name)
        s.SetAndObserveTableNodeID(table.GetID())
        s.SetXColumnName(xcol)
        s.SetYColumnName(ycol)
        s.SetPlotType(slicer.vtkMRMLPlotSeriesNode.PlotTypeScatter)
        s.SetMarkerStyle(slicer.vtkMRMLPlotSeriesNode.MarkerStyleCircle)
        s.SetColor(*color)
        return s

    def chart_series(self, params: Parameters, role: str = "StrainChart") -> list[slicer.vtkMRMLPlotSeriesNode]:
        chart = params.ref(role)
        return [self.scene.GetNodeByID(chart.GetNthPlotSeriesNodeID(i)) for i in range(chart.GetNumberOfPlotSeriesNodes())]

    # ----------------------------------------------------------------- frames
    def go_to_frame(self, params: Parameters, frame: int) -> None:
        browser = params.ref("Browser")
        n = browser.GetNumberOfItems()
        if not 0 <= frame < n:
            raise ValueError(f"frame {frame} outside 0..{n - 1}")
        browser.SetSelectedItemNumber(int(frame))
        if params.polar_follows_frame:
            self.update_polar_map(params)

    def current_frame(self, params: Parameters) -> int:
        return int(params.ref("Browser").GetSelectedItemNumber())

    def frame_for_plot_point(self, params: Parameters, series_id: str, point_index: int) -> int | None:
        """Frame of a clicked plot point (curve series: table row = frame; ED/ES lines: that frame)."""
        s = self.scene.GetNodeByID(series_id)
        if s is None:
            return None
        marker = s.GetAttribute("DeepStrain.marker")
        if marker == "ED":
            return params.analysis_ed
        if marker == "ES":
            return params.analysis_es
        table = s.GetTableNode()
        if table is None or table.GetID() != (params.ref("CurveTable").GetID() if params.ref("CurveTable") else None):
            return None
        frames = _column(table, "frame")
        if not 0 <= point_index < len(frames):
            return None
        return int(frames[point_index])

    def on_plot_point_clicked(self, params: Parameters, series_id: str, point_index: int) -> int | None:
        frame = self.frame_for_plot_point(params, series_id, point_index)
        if frame is not None:
            self.go_to_frame(params, frame)
        return frame

    # ----------------------------------------------------------------- polar map
    def polar_values(self, params: Parameters, frame: int | None = None) -> tuple[dict[int, float | None], int]:
        """Per-segment values (percent) of the chosen component at ES, or at ``frame``/the current frame
        when ``polar_follows_frame``."""
        report = self.report(params)
        comp = params.component
        if comp not in COMPONENTS:
            raise ValueError(f"component must be one of {COMPONENTS}, got '{comp}'")
        if frame is None:
            frame = self.current_frame(params) if params.polar_follows_frame else report["frames"]["es"]
        curves = report["aha_curves"][f"{comp}_percent"] or {}
        vals: dict[int, float | None] = {}
        for s in range(1, 18):
            c = curves.get(str(s)) if curves else None
            vals[s] = None if c is None or c[frame] is None else float(c[frame])
        return vals, int(frame)

    def ensure_polar_view(self, params: Parameters) -> slicer.vtkMRMLViewNode:
        view = self.scene.GetSingletonNode(POLAR_VIEW_TAG, "vtkMRMLViewNode")
        if view is None:
            view = slicer.vtkMRMLViewNode()
            view.SetSingletonTag(POLAR_VIEW_TAG)
            view.SetLayoutName(POLAR_VIEW_TAG)
            view.SetLayoutLabel("AHA")
            view.SetName("View" + POLAR_VIEW_TAG)
            self.scene.AddNode(view)
        view.SetBoxVisible(False)
        view.SetAxisLabelsVisible(False)
        view.SetOrientationMarkerType(slicer.vtkMRMLAbstractViewNode.OrientationMarkerTypeNone)
        view.SetBackgroundColor(1.0, 1.0, 1.0)
        view.SetBackgroundColor2(1.0, 1.0, 1.0)
        if hasattr(view, "SetRenderMode"):
            view.SetRenderMode(slicer.vtkMRMLViewNode.Orthographic)
        params.set_ref("PolarView", view)
        return view

    def attach_views(self, params: Parameters, table_role: str = "ResultsTable") -> None:
        """Show the study in the module layout's own views (:data:`LAYOUT_XML`, once the layout exists):
        the strain chart in the plot view and a table (``table_role``: ``ResultsTable``, the global
        figures, or ``SliceTable``, the volumes per slice) in the table view."""
        if table_role not in ("ResultsTable", "SliceTable"):
            raise ValueError(f"no table role {table_role!r}: ResultsTable or SliceTable")
        plot_view = self.scene.GetSingletonNode(PLOT_VIEW_TAG, "vtkMRMLPlotViewNode")
        if plot_view is not None and params.ref("StrainChart") is not None:
            plot_view.SetPlotChartNodeID(params.ref("StrainChart").GetID())
        table_view = self.scene.GetSingletonNode(TABLE_VIEW_TAG, "vtkMRMLTableViewNode")
        if table_view is not None and params.ref(table_role) is not None:
            table_view.SetTableNodeID(params.ref(table_role).GetID())

    def update_polar_map(self, params: Parameters, frame: int | None = None) -> None:
        """(Re)build the polar map model, colours, legend and labels for the current settings."""
        vals, frame = self.polar_values(params, frame)
        report = self.report(params)
        comp = params.component
        all_vals = [v for s in range(1, 18) for v in (report["aha_curves"][f"{comp}_percent"] or {}).get(str(s)) or []]
        vmin, vmax = polarmap.symmetric_range(all_vals or vals)
        view = self.ensure_polar_view(params)
        model = params.ref("PolarModel")
        if model is None:
            model = self.scene.AddNewNodeByClass("vtkMRMLModelNode", f"{params.study_name} AHA polar map")
            model.SetAndObservePolyData(polarmap.bullseye_polydata(vals))
            model.CreateDefaultDisplayNodes()
            params.set_ref("PolarModel", model)
            labels = self.scene.AddNewNodeByClass("vtkMRMLModelNode", f"{params.study_name} AHA numbers")
            labels.SetAndObservePolyData(polarmap.labels_polydata())
            labels.CreateDefaultDisplayNodes()
            ld = labels.GetDisplayNode()
            ld.SetColor(0.0, 0.0, 0.0)
            ld.SetScalarVisibility(False)
            ld.SetLighting(False) if hasattr(ld, "SetLighting") else None
            ld.SetViewNodeIDs([view.GetID()])
            params.set_ref("PolarLabels", labels)
            hl = self.scene.AddNewNodeByClass("vtkMRMLModelNode", f"{params.study_name} AHA highlight")
            hl.SetAndObservePolyData(polarmap.outline_polydata(1))
            hl.CreateDefaultDisplayNodes()
            hd = hl.GetDisplayNode()
            hd.SetColor(1.0, 0.85, 0.0)
            hd.SetLineWidth(5.0)
            hd.SetViewNodeIDs([view.GetID()])
            hd.SetVisibility(False)
            params.set_ref("PolarHighlight", hl)
        else:
            polarmap.set_values(model.GetPolyData(), vals)
            model.Modified()
        colors = params.ref("PolarColors")
        if colors is None:
            colors = self.scene.AddNewNodeByClass("vtkMRMLColorTableNode", f"{params.study_name} strain colours")
            colors.SetTypeToUser()
            colors.SetNumberOfColors(256)
            for i in range(256):
                colors.SetColor(i, "", *polarmap.diverging_rgb(i / 255.0), 1.0)
            colors.GetLookupTable().SetNanColor(*polarmap.NAN_COLOR, 1.0)
            params.set_ref("PolarColors", colors)
        colors.GetLookupTable().SetTableRange(vmin, vmax)
        d = model.GetDisplayNode()
        d.SetActiveScalar("Strain", vtk.vtkAssignAttribute.CELL_DATA)
        d.SetAndObserveColorNodeID(colors.GetID())
        d.SetScalarRangeFlag(slicer.vtkMRMLDisplayNode.UseManualScalarRange)
        d.SetScalarRange(vmin, vmax)
        d.SetScalarVisibility(True)
        d.SetViewNodeIDs([view.GetID()])
        d.SetAmbient(1.0)
        d.SetDiffuse(0.0)
        d.SetSpecular(0.0)
        # frames are the study's (as the browser, the tables, the findings and the file names number them);
        # where the study holds only some frames of the cycle (an ACDC folder: ED and ES), the frame of the
        # cycle too, as the ED / ES fields take it
        cycle = cycle_frames(report["frames"])[frame]
        shown = f"frame {frame}" + (f", frame {cycle} of the cycle" if cycle != frame else "")
        when = shown if params.polar_follows_frame else f"ES ({shown})"
        model.SetAttribute("DeepStrain.title", f"{comp} strain (%) at {when}")  # the exported picture's caption
        self._color_legend(d, f"{comp} (%)\n{when}", view)  # two short lines: one long line runs over the map

    def _color_legend(self, display: slicer.vtkMRMLDisplayNode, title: str, view) -> None:
        model = display.GetDisplayableNode()
        legend = color_legend(model)
        if legend is None:
            legend = self.scene.AddNewNodeByClass("vtkMRMLColorLegendDisplayNode", "AHA colour legend")
            model.AddAndObserveDisplayNodeID(legend.GetID())
            legend.SetAndObservePrimaryDisplayNode(display)
        legend.SetTitleText(title)
        # the scale runs over +-(a multiple of 5): five labels fall on halves of it (2.5, 7.5)
        legend.SetLabelFormat("%.3g")
        legend.SetNumberOfLabels(5)
        for prop in (legend.GetTitleTextProperty(), legend.GetLabelTextProperty()):
            prop.SetColor(0.1, 0.1, 0.1)  # the polar view's background is white
            prop.SetShadow(False)
        legend.SetOrientation(legend.Vertical)
        legend.SetViewNodeIDs([view.GetID()])
        legend.SetVisibility(True)

    def segment_at(self, params: Parameters, point: tuple[float, float, float] | np.ndarray,
                   frame: int | None = None) -> SegmentInfo | None:
        """Segment under a point of the polar map (RAS of its view; z ignored): number, name, value."""
        from deepstrain.aha import SEGMENT_NAMES

        seg = polarmap.segment_at(float(point[0]), float(point[1]))
        if seg is None:
            return None
        vals, f = self.polar_values(params, frame)
        return SegmentInfo(seg, SEGMENT_NAMES[seg], vals[seg], params.component, f)

    def highlight_segment(self, params: Parameters, segment: int | None) -> None:
        """Outline ``segment`` on the polar map and show only its voxels in the AHA segmentation (None: clear)."""
        params.highlighted_segment = int(segment or 0)
        hl, aha = params.ref("PolarHighlight"), params.ref("AhaSegmentation")
        if hl is not None:
            if segment:
                hl.SetAndObservePolyData(polarmap.outline_polydata(int(segment)))
            hl.GetDisplayNode().SetVisibility(bool(segment))
        if aha is not None:
            d = aha.GetDisplayNode()
            d.SetVisibility(bool(segment))
            for s in range(1, 18):
                d.SetSegmentVisibility(f"aha_{s}", bool(segment) and s == int(segment))

    def _update_aha_segmentation(self, analysis, params: Parameters) -> None:
        from deepstrain.aha import SEGMENT_NAMES

        old = params.ref("AhaSegmentation")
        if old is not None:
            self._remove(old)
        if analysis.segments is None:
            params.set_ref("AhaSegmentation", None)
            return
        mrml.ensure_segmentation_converters()
        cine = self._cache.get("cine")
        geometry = cine.geometry if cine is not None else mrml.geometry_of_volume(
            params.ref("Browser").GetProxyNode(params.ref("CineSequence")))
        seg_node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{params.study_name} AHA segments (ED)")
        img = slicer.vtkOrientedImageData()
        img.ShallowCopy(mrml.image_from_array(np.asarray(analysis.segments).astype(np.uint8)))
        img.SetImageToWorldMatrix(mrml.ijk_to_ras(geometry))
        segmentation = seg_node.GetSegmentation()
        for s in range(1, 18):
            seg = slicer.vtkSegment()
            seg.SetName(f"{s} {SEGMENT_NAMES[s]}")
            # distinct hues around the bullseye
            rgb = colorsys.hsv_to_rgb((s * 0.381966) % 1.0, 0.8, 1.0)
            seg.SetColor(*rgb)
            seg.SetLabelValue(s)
            seg.AddRepresentation(slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName(), img)
            segmentation.AddSegment(seg, f"aha_{s}")
        seg_node.CreateDefaultDisplayNodes()
        seg_node.GetDisplayNode().SetOpacity2DFill(0.6)
        seg_node.GetDisplayNode().SetVisibility3D(False)
        params.set_ref("AhaSegmentation", seg_node)
        self.highlight_segment(params, params.highlighted_segment or None)

    # ----------------------------------------------------------------- AHA reference point
    def rv_insertion_node(self, params: Parameters) -> slicer.vtkMRMLMarkupsFiducialNode:
        """The study's "anterior RV insertion" point list (one point at most), made on first use.
        A point placed in it orients the AHA segments at the next Recompute instead of the RV
        contours (:func:`deepstrain.aha.aha_segments`); deleting the point restores them. It belongs
        to the study (removed with its nodes when the analysis is run again)."""
        node = params.ref("RvInsertion")
        if node is None:
            if params.ref("Browser") is None:
                raise ValueError("no study in this scene: run the analysis first")
            before = node_ids(self.scene)
            node = self.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                                f"{params.study_name} anterior RV insertion")
            node.SetMaximumNumberOfControlPoints(1)
            node.SetMarkupLabelFormat("RV insertion")
            node.CreateDefaultDisplayNodes()
            params.set_ref("RvInsertion", node)
            self._tag(node_ids(self.scene) - before, params.study_id)
        return node

    @staticmethod
    def rv_insertion_point(params: Parameters) -> np.ndarray | None:
        """World RAS (mm) of the anterior RV insertion point placed by the user, or None."""
        node = params.ref("RvInsertion")
        if node is None or node.GetNumberOfControlPoints() < 1:
            return None
        p = [0.0, 0.0, 0.0]
        node.GetNthControlPointPositionWorld(0, p)
        return np.array(p, dtype=np.float64)

    # ----------------------------------------------------------------- recompute after manual correction
    def study_arrays(self, params: Parameters) -> tuple[Cine, np.ndarray, np.ndarray]:
        """Cine, labels (read back from the possibly edited segmentation sequence) and displacement
        (the cached field, else read back from the displacement transform sequence)."""
        browser = params.ref("Browser")
        if browser is None:
            raise ValueError("no study in this scene: run the analysis first")
        # save the edits of the segmentation shown now (e.g. made in Segment Editor) into its sequence item
        seg_seq = params.ref("SegmentationSequence")
        proxy = browser.GetProxyNode(seg_seq)
        if proxy is not None and browser.GetSaveChanges(seg_seq):
            self.sequences_logic.UpdateSequencesFromProxyNodes(browser, proxy)
        cache_ok = self._cache_is_for(browser)
        cine = self._cache["cine"] if cache_ok else self._stored_cine(params)
        labels = mrml.segmentation_sequence_to_labels(params.ref("SegmentationSequence"), cine.geometry, cine.shape3d)
        disp = self._cache["displacement"] if cache_ok else mrml.transform_sequence_to_displacement(
            params.ref("DisplacementSequence"), cine.geometry)
        if not cache_ok:
            if self._cache:  # the memory held another study: its analysis is not this one's either
                self.analysis = None
            self._cache = {"study": browser.GetAttribute(STUDY_ATTRIBUTE) or "", "browser": browser,
                           "cine": cine, "displacement": disp}
        return cine, labels, disp

    def _stored_cine(self, params: Parameters) -> Cine:
        """The cine read back from its sequence, indexed as when the analysis ran: a scene saved and
        loaded again may hold the volumes with an axis stored in the opposite order (Slicer writes
        left-handed volumes right-handed), while the displacement grids keep the analysis' order."""
        from deepstrain.cine import reversed_axes

        cine = mrml.sequence_to_cine(params.ref("CineSequence"), params.study_name)
        cine.subject = Subject.from_dict(params.subject)
        cine.warnings = list(params.input_warnings)
        disp_seq = params.ref("DisplacementSequence")
        if disp_seq is not None and disp_seq.GetNumberOfDataNodes():
            grid = mrml.grid_transform_geometry(disp_seq.GetNthDataNode(0))
            try:
                axes = reversed_axes(cine.geometry, grid, cine.shape3d)
            except ValueError as exc:
                raise ValueError(f"the cine '{params.ref('CineSequence').GetName()}' and the displacement "
                                 f"'{disp_seq.GetName()}' are not on the same voxels: {exc}") from None
            if axes:
                cine.data = np.ascontiguousarray(np.flip(cine.data, axis=[a + 1 for a in axes]))
            cine.geometry = grid
        return cine

    def recompute(self, params: Parameters, progress: ProgressCallback = _no_progress):
        """Strain, volumes and AHA from the edited segmentation (and the AHA orientation from the
        anterior RV insertion point, when one is placed: :meth:`rv_insertion_node`).

        The motion, when the networks made it: "Refine motion" on: refined again with the edited
        segmentation (about 1-2 s; :func:`deepstrain.refinement.motion_for_labels`), and the
        displacement sequence updated; off: the network's field as it is. This needs the networks'
        raw motion, kept in memory by the session that ran them. After the scene was saved and loaded
        again, the first Recompute runs the networks again for it (:meth:`_network_motion_again`,
        about as long as Run) and checks that they reproduce the stored motion; where that is not
        possible (no PyTorch, other weights, another computer's arithmetic) the stored motion is used
        as it is and the report's provenance says why. A given motion is used as it is. Updates
        tables, charts, polar map, AHA segmentation, glyphs and report in place.
        """
        from deepstrain.pipeline import compute

        frames = self.report(params)["frames"]  # the fields hold frame numbers of the cycle, as at Run
        cycle = cycle_frames(frames)
        ed_field = self._frame_of_field(params.ed, cycle, "ED")
        if ed_field is not None and ed_field != params.analysis_ed:
            raise ValueError(f"the ED field (frame {params.ed}) is not the analysed ED: the motion is measured from "
                             "ED, so press Run to analyse from the new ED (Run offers to keep your hand edits)")
        es_field = self._frame_of_field(params.es, cycle, "ES")
        if params.analysis_timing and params.analysis_timing != _timing_fields(params):
            raise ValueError("the heart rate or RR field changed after Run: the frame times are set when the study "
                             "is read, so press Run to use them (it offers to keep your hand edits), or set the "
                             "fields back")
        progress(0.0, "reading segmentation")
        cine, labels, disp = self.study_arrays(params)
        # the height and weight fields as they are now (empty: the input's value, or none)
        cine.subject = subject_with_fields(params.input_subject or params.subject, params)
        state, made = self._cache.get("network_motion"), self._cache.get("motion_made_with")
        want = bool(params.refine_motion)
        rerun: str | None = None  # what running the networks again gave, for the provenance
        remade = None  # the motion made while checking the networks run again, when it is the one wanted
        if state is None and "network_motion_unavailable" not in self._cache:
            state, remade, rerun = self._network_motion_again(params, cine, labels, disp, want, progress)
            if state is not None:
                made = (not want, None)  # the motion is made again below, whatever it was made with
                self._cache.update(network_motion=state, run_labels=state.labels, motion_made_with=made)
            elif rerun is not None:  # not tried again on the next Recompute
                self._cache["network_motion_unavailable"] = rerun
        rerun = rerun or self._cache.get("network_motion_unavailable")
        new_motion = state is not None and made is not None and (
            made[0] != want or (want and not np.array_equal(made[1], labels)))
        if new_motion and remade is not None:
            disp = remade
        elif new_motion:
            from deepstrain.refinement import motion_for_labels

            progress(0.6, "refining the motion with the edited segmentation" if want else "motion network's field")
            disp = motion_for_labels(state, labels, refine=want)
        progress(0.7, "computing strain")
        es = self._es_to_compute(params, es_field)
        analysis = compute(dataclasses.replace(cine, es=None), labels, disp, ed=params.analysis_ed, es=es,
                           rv_insertion_ras=self.rv_insertion_point(params))
        params.subject = cine.subject.as_dict()
        if new_motion:
            made = (want, labels)
        analysis.report["provenance"] = self._provenance_after_edit(params, labels, made if state is not None else None,
                                                                    rerun)
        progress(0.8, "updating views")
        with nodes_or_nothing(self.scene):
            before = node_ids(self.scene)
            if new_motion:
                self._replace_items(params.ref("DisplacementSequence"), mrml.displacement_to_transform_sequence(
                    self.scene, disp, cine.geometry, cine.times_ms, "tmp displacement"))
                self._cache.update(displacement=disp, motion_made_with=made)
            self._refresh_glyphs(params, cine, disp, analysis.labels[analysis.ed] == 2)
            self._update_results(analysis, params)
            self._tag(node_ids(self.scene) - before, params.study_id)
        self.analysis = analysis
        progress(1.0, "done")
        return analysis

    @staticmethod
    def _es_to_compute(params: Parameters, es_field: int | None) -> int | None:
        """The ES frame (index) Recompute uses: the ES field's (``es_field``); on auto the input's own
        ES, else None (the frame of smallest LV cavity in the labels)."""
        if es_field is not None:
            return es_field
        if params.input_es == -2:  # the input's not known (the field set at Run, or an older scene)
            return params.analysis_es
        return None if params.input_es == -1 else params.input_es

    def changes_since_results(self, params: Parameters, cine: Cine, labels: np.ndarray) -> list[str]:
        """What was changed since the shown results were computed (``cine``, ``labels``: the study's
        now, :meth:`study_arrays`), each with the button that applies it: edited contours, height or
        weight fields, the RV insertion point, the ES field (Recompute); the ED, heart-rate or RR
        fields (Run). Empty when the results are those of the study as it is."""
        from deepstrain.volumetrics import find_ed_es, label_volumes_ml

        report = self.report(params)
        cycle = cycle_frames(report["frames"])
        changes = []
        if _are_results_labels(params, labels) is False:
            changes.append("the segmentation was edited (press Recompute)")
        if params.subject and subject_with_fields(params.input_subject or params.subject, params).as_dict() != params.subject:
            changes.append("the height or weight field was changed (press Recompute)")
        point = self.rv_insertion_point(params)
        used = (report.get("aha_reference") or {}).get("rv_insertion_ras")
        if (point is None) != (used is None) or (point is not None and not np.allclose(point, used, atol=1e-3)):
            changes.append("the anterior RV insertion point was placed, moved or deleted (press Recompute)")
        ed_field = self._frame_of_field(params.ed, cycle, "ED")
        if ed_field is not None and ed_field != params.analysis_ed:
            changes.append(f"the ED field (frame {params.ed}) is not the analysed ED (press Run)")
        if params.analysis_timing and params.analysis_timing != _timing_fields(params):
            changes.append("the heart rate or RR field was changed (press Run)")
        es = self._es_to_compute(params, self._frame_of_field(params.es, cycle, "ES"))
        if es is None:
            es = find_ed_es(label_volumes_ml(labels, cine.geometry)["lv"])[1]
        if es != int(report["frames"]["es"]):
            changes.append(f"the ES field gives frame {cycle[es]}, the results are at frame "
                           f"{cycle[int(report['frames']['es'])]} (press Recompute)")
        return changes

    @staticmethod
    def _frame_of_field(value: int, cycle: list[int], name: str) -> int | None:
        """The frame index of an ED / ES field value (a frame number of the cardiac cycle, as Run reads
        it: for an ACDC folder of two frames, e.g. 0 and 11); None on auto (-1)."""
        if value < 0:
            return None
        index = frame_index(cycle, value)
        if index is None:
            raise ValueError(f"the {name} field (frame {value}) is not among the study's frames {cycle}")
        return index

    def _network_motion_again(self, params: Parameters, cine: Cine, labels: np.ndarray, disp: np.ndarray,
                              want: bool, progress: ProgressCallback):
        """(the networks' raw motion, the motion wanted now or None, "yes, ...") by running them again
        as the scene's report records, when the stored motion came from them and refining is wanted
        now or was done then; else (None, None, "no: why not") for the provenance, or (None, None,
        None) when nothing is needed. The networks run again must reproduce the stored motion on the
        frames not edited by hand (:func:`deepstrain.refinement.reproduces`), else the stored motion
        is kept. The motion made for that check (with the current labels) is returned when it is
        made the way wanted now, so it is not made twice."""
        try:
            prov = self.report(params).get("provenance") or {}
        except ValueError:
            return None, None, None
        refined = bool(prov.get("motion_refined_with_segmentation"))
        if prov.get("motion") != "networks" or not (want or refined):
            return None, None, None
        try:
            self.require_torch()
        except RuntimeError:
            return None, None, "no: PyTorch is not installed"
        from deepstrain.analyze import network_motion_again
        from deepstrain.refinement import motion_for_labels, reproduces

        try:
            state = network_motion_again(cine, prov, weights_dir=params.weights_dir or None,
                                         progress=lambda f, m: progress(0.05 + 0.5 * f, f"running the networks again: {m}"))
        except (ValueError, OSError) as exc:  # deepstrain.errors.InputError is a ValueError
            return None, None, f"no: {exc}"
        progress(0.6, "checking the motion of the networks run again")
        fresh = motion_for_labels(state, labels, refine=refined)
        same, mm = reproduces(state, disp, labels, refined=refined, motion=fresh)
        if not same:
            where = "every frame was edited" if math.isnan(mm) else f"{mm:.3g} mm apart"
            return None, None, ("no: run again, the networks did not reproduce the stored motion on the frames "
                                f"not edited ({where}: other weights, input or arithmetic)")
        return (state, fresh if refined == want else None,
                f"yes, after the scene was loaded: they reproduced the stored motion to {mm:.2g} mm")

    def _provenance_after_edit(self, params: Parameters, labels: np.ndarray,
                               made: tuple[bool, np.ndarray] | None = None, rerun: str | None = None) -> dict:
        """The run's provenance (kept in the scene's report), with the segmentation marked as edited
        when it differs from the last analysis, or after reloading a saved scene from the networks'
        labels when they were run again, else from the labels the stored results were computed from
        (their checksum; "as stored in the scene", unknown, in scenes saved without it). ``made``:
        (refined?, labels) of the motion made from the network's field kept in memory; None when
        there is none. ``rerun``: what running the networks again after a scene reload gave
        (:meth:`_network_motion_again`)."""
        prov = dict(self.report(params).get("provenance") or {})
        base = str(prov.get("segmentation", "unknown"))
        run_labels = self._cache.get("run_labels")
        if self.analysis is not None:
            suffix = "" if np.array_equal(self.analysis.labels, labels) else ", edited in Slicer"
        elif run_labels is not None and base.startswith("networks"):
            suffix = "" if np.array_equal(run_labels, labels) else ", edited in Slicer"
        elif (same := _are_results_labels(params, labels)) is not None:  # the stored results' labels, or edited since
            suffix = "" if same else ", edited in Slicer"
        else:
            suffix = ", as stored in the scene"
        if suffix and suffix not in base:
            prov["segmentation"] = base + suffix
        if prov.get("motion") != "networks":
            return prov
        if rerun is not None:
            prov["networks_run_again"] = rerun
        if made is not None:  # the motion is made from the network's field kept in memory
            prov["motion_refined_with_segmentation"] = made[0]
            if not made[0]:
                prov.pop("motion_refined_with", None)
            elif run_labels is not None and not np.array_equal(made[1], run_labels):
                prov["motion_refined_with"] = "segmentation edited in Slicer"
            else:
                given = str(prov.get("segmentation", "")).startswith("given")
                prov["motion_refined_with"] = "given segmentation" if given else "network segmentation"
        elif prov.get("motion_refined_with_segmentation") and suffix:
            first = str(prov.get("motion_refined_with", "network segmentation")).split(" (")[0]
            why = rerun[len("no: "):] if rerun else "the network's raw motion is not in this scene"
            prov["motion_refined_with"] = (first + f" (the motion as stored, not refined again: {why}; run the "
                                           "analysis again to refine it with newly edited contours)")
        return prov

    # ----------------------------------------------------------------- export
    def export(self, params: Parameters, folder: str | os.PathLike, renderer_factory=None,
               now: _dt.datetime | None = None) -> list[Path]:
        """Write PNG pictures (slice view at ED and ES with overlays, curves, polar map, and the
        one-page QC picture of :mod:`deepstrain.qc`) and the report (JSON + CSV) into a new
        sub-folder ``<study>_<YYYYmmdd-HHMMSS>`` of ``folder``.

        File names carry the study name and the time stamp; an existing folder is never reused or
        overwritten (a ``-2``, ``-3``... suffix is added). All or nothing: on error nothing is left.
        Refused when anything the results depend on was changed since they were computed
        (:meth:`changes_since_results`: contours, fields, RV insertion point), so that the pictures
        and the tables always describe the same study.
        """
        from deepstrain.outputs import atomic_output_dir
        from deepstrain.pipeline import compute
        from deepstrain.qc import qc_figure
        from deepstrain.report import write_report

        from . import render

        folder = Path(folder)
        if not folder.is_dir():
            raise ValueError(f"{folder}: export folder does not exist")
        stamp = (now or _dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
        stem = f"{_safe(params.study_name)}_{stamp}"
        out = folder / stem
        k = 2
        while out.exists():
            out = folder / f"{stem}-{k}"
            k += 1
        report = self.report(params)
        cine, labels, disp = self.study_arrays(params)
        if changes := self.changes_since_results(params, cine, labels):
            raise ValueError("the results are not those of the study as it is now: " + "; ".join(changes)
                             + ". Export writes the results with the pictures of the same study, so apply "
                             "the changes first (or undo them)")
        # the QC page from the contours shown, with the report as computed (its numbers and provenance)
        analysis = compute(cine, labels, disp, ed=report["frames"]["ed"], es=report["frames"]["es"],
                           rv_insertion_ras=self.rv_insertion_point(params))
        analysis.report = report
        written: list[str] = []
        with atomic_output_dir(out, kind="Slicer export") as tmp:
            pictures = render.export_pictures(self, params, tmp, stem, analysis.volume_curves, renderer_factory)
            for name, path in pictures.items():
                written.append(path.name)
            written.append(qc_figure(analysis, tmp / f"{stem}_qc.png").name)
            for p in write_report(report, tmp, volume_curves=analysis.volume_curves):  # full precision
                name = f"{stem}_{p.name}"  # report.json, strain.csv, results.csv, slices.csv
                os.replace(p, tmp / name)
                written.append(name)
        return [out / n for n in written]


# --------------------------------------------------------------------------- helpers
def subject_with_fields(subject: dict, params: Parameters) -> Subject:
    """``subject`` (:meth:`Subject.as_dict`) with the module's height and weight fields over it; an
    empty field (0) gives the input's own value, or none."""
    s = Subject.from_dict(_input_part(subject))
    for name in ("height_cm", "weight_kg"):
        if value := getattr(params, name):
            s.given(name, value, MODULE_FIELD)
    return s


def _input_part(subject: dict) -> dict:
    """``subject`` without the height and weight that came from the module's fields."""
    d = dict(subject or {})
    sources = dict(d.get("sources") or {})
    for name in ("height_cm", "weight_kg"):
        if sources.get(name) == MODULE_FIELD:
            d[name] = None
            del sources[name]
    d["sources"] = sources
    return d


def color_legend(model: slicer.vtkMRMLDisplayableNode) -> slicer.vtkMRMLColorLegendDisplayNode | None:
    """The colour legend among the display nodes of ``model`` (display node references follow
    renumbered IDs), or None."""
    for i in range(model.GetNumberOfDisplayNodes()):
        d = model.GetNthDisplayNode(i)
        if d is not None and d.IsA("vtkMRMLColorLegendDisplayNode"):
            return d
    return None


def _scene_nodes(scene: slicer.vtkMRMLScene) -> list[slicer.vtkMRMLNode]:
    return [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]


def _owned_nodes(node: slicer.vtkMRMLNode) -> list[slicer.vtkMRMLNode]:
    """The display and storage nodes of ``node``, the series of a chart, the proxies of a browser."""
    parts = []
    if node.IsA("vtkMRMLDisplayableNode"):
        parts += [node.GetNthDisplayNode(i) for i in range(node.GetNumberOfDisplayNodes())]
    if node.IsA("vtkMRMLStorableNode"):
        parts += [node.GetNthStorageNode(i) for i in range(node.GetNumberOfStorageNodes())]
    if node.IsA("vtkMRMLPlotChartNode"):
        parts += [node.GetNthPlotSeriesNode(i) for i in range(node.GetNumberOfPlotSeriesNodes())]
    if node.IsA("vtkMRMLSequenceBrowserNode"):
        proxies = vtk.vtkCollection()
        node.GetAllProxyNodes(proxies)
        parts += [proxies.GetItemAsObject(i) for i in range(proxies.GetNumberOfItems())]
    return [p for p in parts if p is not None]


def _study_axes_on(study_cine: Cine, cine: Cine) -> tuple[list[int] | None, str]:
    """The axes of a 4D array (frames first) to flip to bring the study's arrays onto the grid of
    ``cine`` ([] for none), or ``(None, why)`` when ``cine`` is another grid or other images (another
    study): a saved scene may hold the study's volumes with an axis in the opposite order."""
    from deepstrain.cine import reversed_axes

    if study_cine.n_frames != cine.n_frames or study_cine.shape3d != cine.shape3d:
        return None, (f"the input has {cine.n_frames} frames of {cine.shape3d}, the study "
                      f"{study_cine.n_frames} of {study_cine.shape3d}")
    try:
        axes = reversed_axes(study_cine.geometry, cine.geometry, cine.shape3d)
    except ValueError as exc:
        return None, f"the input is not on the study's grid: {exc}"
    flip = [a - 3 for a in axes]
    study_images = np.flip(study_cine.data, axis=flip) if axes else study_cine.data
    if not np.allclose(study_images, cine.data, rtol=1e-5, atol=1e-6 * float(np.abs(cine.data).max() or 1.0)):
        return None, "the input's images are not the study's (another study on the same grid)"
    return flip, ""


def _are_results_labels(params: Parameters, labels: np.ndarray) -> bool | None:
    """Whether ``labels`` are those the shown results were computed from (their checksum); None in
    scenes saved before the checksum was kept."""
    return labels_digest(labels) == params.results_labels_sha256 if params.results_labels_sha256 else None


def labels_digest(labels: np.ndarray) -> str:
    """sha256 of a label array (uint8, C order): which contours a set of results was computed from."""
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.uint8).tobytes()).hexdigest()


def _safe(name: str) -> str:
    """``name`` as a file-name part: letters, digits, ``_.-`` only, no leading dot (hidden files),
    at most 80 characters (with the time stamp and suffixes well within file-system limits)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).lstrip(".").strip("_")[:80].rstrip("._") or "study"


def _curve(values: list | None, n: int) -> np.ndarray:
    """A report curve (list with nulls, or null) as ``n`` floats, NaN where missing."""
    return np.array([np.nan if a is None else a for a in (values or [None] * n)], dtype=float)


def _padded_range(values: np.ndarray) -> np.ndarray:
    v = values[np.isfinite(values)]
    if v.size == 0:
        return np.array([-1.0, 1.0])
    lo, hi = float(min(v.min(), 0.0)), float(max(v.max(), 0.0))
    pad = 0.05 * (hi - lo or 1.0)
    return np.array([lo - pad, hi + pad])


def _timing_fields(params: Parameters) -> str:
    """The heart-rate and RR fields as Run read them (a Recompute with other values must Run again)."""
    return json.dumps([float(params.heart_rate_bpm or 0.0), float(params.rr_ms or 0.0)])


def _fill_table(table: slicer.vtkMRMLTableNode, columns: dict[str, np.ndarray]) -> None:
    t = vtk.vtkTable()
    for name, values in columns.items():
        arr = vtk.vtkDoubleArray()
        arr.SetName(name)
        arr.SetNumberOfTuples(len(values))
        for i, v in enumerate(values):
            arr.SetValue(i, float(v))
        t.AddColumn(arr)
    table.SetAndObserveTable(t)
    table.Modified()


def _column(table: slicer.vtkMRMLTableNode, name: str) -> np.ndarray:
    arr = table.GetTable().GetColumnByName(name)
    if arr is None:
        raise KeyError(name)
    return np.array([arr.GetValue(i) for i in range(arr.GetNumberOfTuples())])
