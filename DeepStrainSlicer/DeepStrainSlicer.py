"""DeepStrainSlicer: myocardial strain from cine MRI in 3D Slicer (thin module file).

The work is done by :mod:`DeepStrainSlicerLib.logic` (no qt) on top of the Slicer-free package
``deepstrain``; this file holds the module description, the Qt widget and the self test.
"""
from __future__ import annotations

import importlib
import os
import sys
import time

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:  # the deepstrain package and DeepStrainSlicerLib live beside this file
    sys.path.insert(0, _HERE)

from DeepStrainSlicerLib import dependencies  # noqa: E402
from DeepStrainSlicerLib import logic as dlogic  # noqa: E402

HOMEPAGE = "https://github.com/DeepStrainSlicer/DeepStrainSlicer"  # EXTENSION_HOMEPAGE in CMakeLists.txt


class DeepStrainSlicer(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        parent.title = "DeepStrain"
        parent.categories = ["Cardiac"]
        parent.dependencies = ["Sequences", "Segmentations", "Plots"]
        parent.contributors = ["DeepStrainSlicer contributors"]
        parent.helpText = (
            "Myocardial strain from short-axis cine MRI: LV/RV segmentation and motion (DeepStrain "
            "networks, or a given segmentation + displacement), Green-Lagrange strain in the cardiac "
            "frame, global curves, strain rate and the AHA 17-segment polar map. Edit the segmentation "
            "in Segment Editor and press Recompute to update the results without re-running the networks; "
            "with 'Refine motion' on, the motion of the edited frames is refined again with your contours "
            "(the networks' raw motion is kept in memory; after a saved scene is loaded again, the first "
            "Recompute runs the networks again to restore it, about as long as Run). A new ED, heart rate or RR "
            "interval needs Run, which asks whether to keep your edited segmentation or segment again. "
            "Radial strain from the motion network is less reliable than circumferential strain and volumes "
            f"(see the <a href=\"{HOMEPAGE}#readme\">README</a>'s measured figures); 'Refine motion' (on by "
            "default) corrects the motion with the "
            "segmentation of every frame, which reduces the radial error. Longitudinal strain from a short-axis "
            "stack is not validated on real hearts (it comes out much smaller than long-axis methods give). "
            "'Place the anterior RV insertion point' orients the AHA segments by a point you click "
            "(where the RV's anterior wall meets the septum) instead of the RV contours, at the next Recompute. "
            "The plot view offers strain, strain-rate, volume and LV rotation / twist charts (rotation positive "
            "counter-clockwise viewed from the apex). The networks' motion does not measure real LV twist "
            "(phantoms: about half of it; real hearts: near zero): the rotation chart is for displacements from "
            f"a tracker that follows rotation (see the <a href=\"{HOMEPAGE}#readme\">README</a>). "
            "'Automatic checks' lists what looks wrong in the segmentation and motion (an open myocardium, "
            "a mid-ventricular ES slice without cavity, apex not covered, misaligned slices, ED/ES frames, "
            "EF out of range, a heart of implausible size, a motion that does not follow the contours, "
            "a strain of implausible sign); "
            "click a finding to show its frame and slice, correct, and Recompute checks again. "
            "Under it, 'Warnings' says what the input lacked (frame timing, a voxel size that looks lost) and "
            "what could therefore not be computed. "
            "'Height' and 'Weight' (from the file when it has them: an ACDC Info.cfg, the DICOM header) add "
            "volumes and LV mass indexed to the body surface area (Mosteller); with a heart rate (DICOM "
            "HeartRate, or the Heart rate field) the report also gives the cardiac output and index. "
            "The ED and ES frames are segmented 4 times (flipped) and averaged; 'Test-time flips on every frame' "
            "does that for all frames (slower). "
            "'Weights' may name another weights folder (with its manifest.json); the report records which "
            "weights were used. On studies from outside ACDC, check the most basal slice at end-systole "
            "before reading EF: the networks follow ACDC's convention there. "
            "The first Run or Export offers to install the Python packages that Slicer does not bundle "
            "(nibabel, matplotlib; PyTorch, CPU build, for run mode 'networks'). "
            f"Documentation: <a href=\"{HOMEPAGE}\">{HOMEPAGE}</a>."
        )
        parent.acknowledgementText = (
            "Method: Morales et al., DeepStrain (Front. Cardiovasc. Med. 2021). Weights trained on ACDC "
            "(Bernard et al., IEEE TMI 2018, CC BY-NC-SA 4.0)."
        )


class DeepStrainSlicerLogic(ScriptedLoadableModuleLogic, dlogic.DeepStrainLogic):
    """The module logic inside the application: the scene and Sequences logic of Slicer."""

    def __init__(self):
        ScriptedLoadableModuleLogic.__init__(self)
        dlogic.DeepStrainLogic.__init__(self, slicer.mrmlScene, slicer.modules.sequences.logic())


class DeepStrainSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None):
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self.params = None
        self._cancel = False
        self._updating = False
        self._finding_shown = (None, 0.0)  # (row, time.monotonic()) of the finding last gone to

    # ------------------------------------------------------------------ setup
    def setup(self):
        ScriptedLoadableModuleWidget.setup(self)
        self.ui = slicer.util.childWidgetVariables(
            self._load_ui(self.resourcePath("UI/DeepStrainSlicer.ui")))
        self.ui.inputSequenceSelector.setMRMLScene(slicer.mrmlScene)
        self.logic = DeepStrainSlicerLogic()
        self.params = self.logic.parameter_node()
        self.ui.componentCombo.addItems(list(dlogic.COMPONENTS))
        self.ui.runModeCombo.addItems(["networks", "given"])
        # controls -> parameter node
        self.ui.inputPathEdit.connect("currentPathChanged(QString)", self._from_gui)
        self.ui.inputSequenceSelector.connect("currentNodeChanged(vtkMRMLNode*)", self._from_gui)
        for w in (self.ui.spacingEdit,):
            w.connect("editingFinished()", self._from_gui)
        for w in (self.ui.heartRateSpin, self.ui.rrSpin, self.ui.heightSpin, self.ui.weightSpin):
            w.connect("valueChanged(double)", self._from_gui)
        self.ui.glyphScaleSpin.connect("valueChanged(double)", self._on_glyph_scale)
        for w in (self.ui.edSpin, self.ui.esSpin):
            w.connect("valueChanged(int)", self._from_gui)
        self.ui.runModeCombo.connect("currentTextChanged(QString)", self._from_gui)
        self.ui.ttaCheck.connect("toggled(bool)", self._from_gui)
        self.ui.refineMotionCheck.connect("toggled(bool)", self._from_gui)
        self.ui.weightsFolderEdit.connect("currentPathChanged(QString)", self._from_gui)
        self.ui.componentCombo.connect("currentTextChanged(QString)", self._on_polar_settings)
        self.ui.followFrameCheck.connect("toggled(bool)", self._on_polar_settings)
        self.ui.showSegmentationCheck.connect("toggled(bool)", self._on_overlays)
        self.ui.showGlyphsCheck.connect("toggled(bool)", self._on_overlays)
        self.ui.exportFolderEdit.connect("currentPathChanged(QString)", self._from_gui)
        # actions
        self.ui.runButton.connect("clicked()", self.on_run)
        self.ui.cancelButton.connect("clicked()", self.on_cancel)
        self.ui.recomputeButton.connect("clicked()", self.on_recompute)
        self.ui.layoutButton.connect("clicked()", self.on_layout)
        self.ui.exportButton.connect("clicked()", self.on_export)
        self.ui.editButton.connect("clicked()", self.on_edit_segmentation)
        self.ui.rvInsertionButton.connect("clicked()", self.on_place_rv_insertion)
        self.ui.qualityList.connect("currentRowChanged(int)", self.on_finding)  # keyboard, or a click on another row
        self.ui.qualityList.connect("itemClicked(QListWidgetItem*)",  # also a click on the current row
                                    lambda item: self.on_finding(self.ui.qualityList.row(item)))
        self._register_layout()
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self._on_scene_closed)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self._on_scene_changed)
        self._on_scene_changed()  # a scene loaded before the panel opened may hold several studies

    def _load_ui(self, path):
        w = slicer.util.loadUI(path)
        self.layout.addWidget(w)
        w.setMRMLScene(slicer.mrmlScene)
        return w

    def cleanup(self):
        self.removeObservers()

    def _on_scene_closed(self, caller=None, event=None):
        """The study kept in memory belonged to the closed scene; so did the polar view's picking."""
        self.logic.forget_study()
        self.removeObservers(self._on_polar_click)
        self.removeObservers(self._on_polar_hover)
        self._polar_view = None
        self.ui.statusLabel.text = ""
        self.ui.progressBar.value = 0
        self._on_scene_changed()

    def _on_scene_changed(self, caller=None, event=None):
        self.params = self.logic.parameter_node()
        self.logic.show_study(self.params)
        self._to_gui()
        others = self.logic.other_studies(self.params)
        if others:
            self.ui.statusLabel.text = (
                f"the scene holds {len(others) + 1} DeepStrain studies; shown: '{self.params.study_name}' (added last). "
                f"Not shown (hidden in the views; their nodes are left in the scene as they are): {', '.join(repr(o) for o in others)}")

    # ------------------------------------------------------------------ parameter node <-> GUI
    def _to_gui(self):
        p, ui = self.params, self.ui
        self._updating = True
        try:
            ui.inputPathEdit.currentPath = p.input_path
            ui.inputSequenceSelector.setCurrentNode(p.ref("InputSequence"))
            ui.spacingEdit.text = p.spacing
            ui.heartRateSpin.value = p.heart_rate_bpm
            ui.rrSpin.value = p.rr_ms
            ui.heightSpin.value = p.height_cm
            ui.weightSpin.value = p.weight_kg
            ui.edSpin.value = p.ed
            ui.esSpin.value = p.es
            ui.runModeCombo.currentText = p.run_mode
            ui.ttaCheck.checked = p.tta
            ui.refineMotionCheck.checked = p.refine_motion
            ui.weightsFolderEdit.currentPath = p.weights_dir
            ui.componentCombo.currentText = p.component
            ui.followFrameCheck.checked = p.polar_follows_frame
            ui.showSegmentationCheck.checked = p.show_segmentation
            ui.showGlyphsCheck.checked = p.show_glyphs
            ui.glyphScaleSpin.value = p.glyph_scale_percent
            ui.exportFolderEdit.currentPath = p.export_folder
            self._show_findings()
            self._enable_study_buttons(p.ref("Browser") is not None)
            self._observe_browser(p.ref("Browser"))
        finally:
            self._updating = False

    def _observe_browser(self, browser):
        """Follow the study's sequence browser (slider, play, Sequences toolbar): with "polar map follows
        the current frame" on, the map shows the frame the browser shows."""
        if browser is getattr(self, "_observed_browser", None):
            return
        self.removeObservers(self._on_browser_modified)
        self._observed_browser = browser
        if browser is not None:
            self.addObserver(browser, vtk.vtkCommand.ModifiedEvent, self._on_browser_modified)

    def _on_browser_modified(self, caller=None, event=None):
        p = self.params
        if p.polar_follows_frame and p.ref("Browser") is caller and p.ref("PolarModel") is not None:
            frame = self.logic.current_frame(p)
            if frame != getattr(self, "_polar_frame", None):
                self._polar_frame = frame
                self.logic.update_polar_map(p)

    def _from_gui(self, *args):
        if self._updating:
            return
        p, ui = self.params, self.ui
        p.input_path = ui.inputPathEdit.currentPath
        p.set_ref("InputSequence", ui.inputSequenceSelector.currentNode())
        p.spacing = ui.spacingEdit.text
        p.heart_rate_bpm = ui.heartRateSpin.value
        p.rr_ms = ui.rrSpin.value
        p.height_cm = ui.heightSpin.value
        p.weight_kg = ui.weightSpin.value
        p.ed = ui.edSpin.value
        p.es = ui.esSpin.value
        p.run_mode = ui.runModeCombo.currentText
        p.tta = ui.ttaCheck.checked
        p.refine_motion = ui.refineMotionCheck.checked
        p.weights_dir = ui.weightsFolderEdit.currentPath
        p.export_folder = ui.exportFolderEdit.currentPath

    def _on_overlays(self, *args):
        if not self._updating:
            self.logic.set_overlays(self.params, self.ui.showSegmentationCheck.checked, self.ui.showGlyphsCheck.checked)

    def _on_glyph_scale(self, *args):
        if not self._updating:
            self.logic.set_glyph_scale(self.params, self.ui.glyphScaleSpin.value)

    def _on_polar_settings(self, *args):
        if self._updating:
            return
        self.params.component = self.ui.componentCombo.currentText
        self.params.polar_follows_frame = self.ui.followFrameCheck.checked
        if self.params.ref("ReportText") is not None:
            self.logic.update_polar_map(self.params)

    # ------------------------------------------------------------------ long work with progress / cancel
    def _progress(self, fraction, message):
        self.ui.progressBar.value = int(100 * fraction)
        self.ui.statusLabel.text = message
        slicer.app.processEvents()
        if self._cancel and fraction < 1.0:  # at 1.0 the work is done and shown: too late to cancel
            raise dlogic.Cancelled()

    def on_cancel(self):
        self._cancel = True

    def _busy(self, busy):
        """While Run or Recompute works, only Cancel is enabled (the study is being rebuilt)."""
        cancelled, self._cancel = self._cancel, False
        ui = self.ui
        ui.cancelButton.enabled = busy
        ui.runButton.enabled = not busy
        # the input fields are read when Run starts: a value typed while it works would be taken for it
        ui.inputCollapsible.enabled = not busy
        ui.qualityList.enabled = not busy
        if not busy and cancelled and ui.progressBar.value < 100:  # Cancel at the very end came too late
            ui.progressBar.value = 0
        self._enable_study_buttons(not busy and self.params.ref("Browser") is not None)

    def _enable_study_buttons(self, enabled):
        """The buttons that act on the study in the scene (none without one, or while busy)."""
        ui = self.ui
        for b in (ui.recomputeButton, ui.exportButton, ui.layoutButton, ui.editButton, ui.rvInsertionButton):
            b.enabled = enabled

    def _ensure_packages(self, need_torch):
        """True when the Python packages needed are there, after installing them if the user agrees."""
        needed = dependencies.missing(need_torch)
        if not needed:
            return True
        commands = dependencies.pip_commands(needed)
        if not slicer.util.confirmOkCancelDisplay(dependencies.install_question(needed, commands),
                                                  windowTitle="DeepStrain: install Python packages"):
            self.ui.statusLabel.text = dependencies.declined_message(commands)
            slicer.util.warningDisplay(dependencies.declined_message(commands), windowTitle="DeepStrain")
            return False
        ok = False
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            for command in commands:
                self.ui.statusLabel.text = f"installing {command} (this can take a few minutes)"
                slicer.app.processEvents()
                slicer.util.pip_install(command)
            importlib.invalidate_caches()
            still = dependencies.missing(need_torch)
            if still:
                raise RuntimeError(f"still not importable after installing: {', '.join(still)}; restart Slicer")
            ok = True
        # tryWithErrorDisplay shows an error and goes on: only a complete install lets the action run
        self.ui.statusLabel.text = ("installed: " + ", ".join(needed)) if ok else "the packages were not installed"
        return ok

    def on_run(self):
        self._from_gui()
        p = self.params
        if not self._ensure_packages(need_torch=p.run_mode == "networks"):
            return
        self._busy(True)
        try:
            with slicer.util.tryWithErrorDisplay("DeepStrain analysis failed.", waitCursor=True):
                if p.ref("InputSequence") is not None:
                    cine = self.logic.cine_from_sequence(p.ref("InputSequence"), p)
                elif p.input_path:
                    self.ui.statusLabel.text = f"reading {p.input_path}"  # a DICOM folder can take a while
                    slicer.app.processEvents()
                    cine = self.logic.load_cine_file(p.input_path, p)
                else:
                    raise ValueError("choose a loaded cine (sequence) or a file/folder first")
                labels = disp = origin = None
                if p.run_mode == "given":
                    labels, disp = self._given_inputs(cine)
                    if labels is None:
                        self.ui.statusLabel.text = "Run cancelled: run mode 'given' needs a label map and a displacement file"
                        return
                else:
                    edited, why_not = self.logic.edited_labels(p, cine)
                    choice = self._ask_keep_edits(why_not) if edited is not None or why_not else "again"
                    if choice is None:
                        self.ui.statusLabel.text = "Run cancelled: the study and your edits are as they were"
                        return
                    if choice == "keep":
                        labels, origin = edited, self.logic.kept_edits_origin(p)
                point_lost = self.logic.kept_rv_insertion(p, cine)[1]  # Run keeps it for the same input
                if point_lost and not slicer.util.confirmOkCancelDisplay(
                        f"The anterior RV insertion point placed in the study cannot be kept: {point_lost}. "
                        "Run anyway (the point is removed with the study)?", windowTitle="DeepStrain"):
                    self.ui.statusLabel.text = "Run cancelled: the study and its RV insertion point are as they were"
                    return
                try:
                    self.logic.run(cine, p, labels, disp, progress=self._progress, labels_origin=origin)
                except dlogic.Cancelled:
                    self.ui.statusLabel.text = "cancelled: the scene is as it was"
                    return
                self.on_layout()
                self._connect_plot_view()
        finally:
            self._busy(False)
            self._to_gui()

    def _ask_keep_edits(self, why_not: str) -> str | None:
        """Before Run replaces a study whose segmentation was edited (or may have been: a scene loaded
        from a file): "keep" (Run uses it; the motion is measured again and refined with it),
        "again" (the networks segment again) or None (cancel). ``why_not``: why the edits cannot be
        kept (another input grid), when they cannot."""
        if why_not:
            ok = slicer.util.confirmOkCancelDisplay(
                f"Run segments the study again and replaces its segmentation, with any hand edits: {why_not}, "
                "so they cannot be kept. Run anyway?", windowTitle="DeepStrain")
            return "again" if ok else None
        answer = qt.QMessageBox.question(
            slicer.util.mainWindow(), "DeepStrain",
            "The study's segmentation was edited since Run made it (or may have been: a scene saved by an older "
            "version). Keep it?\n\nYes: Run uses it as it is (the motion is measured again and refined with it).\n"
            "No: the networks segment the study again and the edits are lost.",
            qt.QMessageBox.Yes | qt.QMessageBox.No | qt.QMessageBox.Cancel)
        return {qt.QMessageBox.Yes: "keep", qt.QMessageBox.No: "again"}.get(answer)

    def _given_inputs(self, cine):
        """Run mode 'given': a label map and a displacement file chosen by the user (deepstrain.io);
        (None, None) when the user cancels a file dialog."""
        from deepstrain.io import load_displacement, load_labels

        labels_path = qt.QFileDialog.getOpenFileName(None, "Label map (T,Z,Y,X) NIfTI", "", "NIfTI (*.nii *.nii.gz)")
        disp_path = labels_path and qt.QFileDialog.getOpenFileName(None, "Displacement NIfTI (mm, RAS)", "",
                                                                   "NIfTI (*.nii *.nii.gz)")
        if not labels_path or not disp_path:
            return None, None
        return load_labels(labels_path, cine), load_displacement(disp_path, cine)

    def on_recompute(self):
        self._busy(True)
        try:
            with slicer.util.tryWithErrorDisplay("Recompute failed.", waitCursor=True):
                try:
                    a = self.logic.recompute(self.params, progress=self._progress)
                except dlogic.Cancelled:
                    self.ui.statusLabel.text = "cancelled"
                    return
                v = a.report["volumetrics"]
                prov = a.report.get("provenance", {})
                note = ("; motion refined with your contours"
                        if prov.get("motion_refined_with") == "segmentation edited in Slicer" else "")
                if str(prov.get("networks_run_again", "")).startswith("no:"):
                    note += "; motion as stored, not refined again (see the report's provenance)"
                edv, ef = (("n/a" if v.get(k) is None else f"{v[k]:.1f}") for k in ("lv_edv_ml", "lv_ef_percent"))
                self.ui.statusLabel.text = f"recomputed: LV EDV {edv} ml, EF {ef} %{note}"
                self._show_findings()
        finally:
            self._busy(False)

    def _show_findings(self):
        """List the automatic checks' findings (click one: its frame and slice are shown) and the analysis's warnings."""
        findings = self.logic.quality_findings(self.params)
        was_updating, self._updating = self._updating, True  # filling the list must not jump the views
        try:
            self.ui.qualityList.clear()
            self._finding_shown = (None, 0.0)
            for f in findings:
                self.ui.qualityList.addItem(f"{f['check']}: {f['message']}")
        finally:
            self._updating = was_updating
        if self.params.ref("Browser") is None:
            self.ui.qualityLabel.text = "Automatic checks: no analysis yet"
        else:
            self.ui.qualityLabel.text = (f"Automatic checks: {len(findings)} finding(s); click one to show it"
                                         if findings else "Automatic checks: no finding")
        notes = self.logic.analysis_warnings(self.params)
        self.ui.warningsLabel.text = "Warnings:\n" + "\n".join(f"- {w}" for w in notes) if notes else ""
        self.ui.warningsLabel.visible = bool(notes)

    def on_finding(self, row):
        """Go to finding ``row``. A click on another row emits currentRowChanged and then itemClicked:
        the second call within half a second for the same row is that same click, not another one."""
        if row < 0 or self._updating:
            return
        now = time.monotonic()
        last_row, last_time = self._finding_shown
        if row == last_row and now - last_time < 0.5:
            return
        self._finding_shown = (row, now)
        with slicer.util.tryWithErrorDisplay("Cannot show this finding.", waitCursor=True):
            f = self.logic.go_to_finding(self.params, row)
            self.ui.statusLabel.text = f"showing: {f['message']}"

    def on_edit_segmentation(self):
        """Open Segment Editor on the segmentation proxy (edits are saved into the sequence)."""
        with slicer.util.tryWithErrorDisplay("Cannot open the segmentation for editing.", waitCursor=True):
            browser = self.params.ref("Browser")
            if browser is None:
                raise ValueError("no study in this scene: run the analysis first")
            seg = browser.GetProxyNode(self.params.ref("SegmentationSequence"))
            slicer.util.selectModule("SegmentEditor")
            slicer.modules.SegmentEditorWidget.editor.setSegmentationNode(seg)

    def on_place_rv_insertion(self):
        """Place mode for the study's single "anterior RV insertion" point (replacing any earlier one)."""
        with slicer.util.tryWithErrorDisplay("Cannot place the RV insertion point.", waitCursor=False):
            node = self.logic.rv_insertion_node(self.params)
            node.RemoveAllControlPoints()
            markups = slicer.modules.markups.logic()
            markups.SetActiveList(node)
            markups.StartPlaceMode(False)
            self.ui.statusLabel.text = ("click where the RV's anterior wall meets the septum, then Recompute "
                                        "(the AHA segments are then oriented by this point)")

    def on_export(self):
        self._from_gui()
        if not self._ensure_packages(need_torch=False):  # the pictures need matplotlib
            return
        folder = self.params.export_folder or qt.QFileDialog.getExistingDirectory(None, "Export folder")
        if not folder or not self._recomputed_for_export():
            return
        self.ui.statusLabel.text = f"exporting pictures and tables to {folder} (a few seconds)"
        slicer.app.processEvents()
        done = False
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            files = self.logic.export(self.params, folder)
            self.ui.statusLabel.text = f"exported {len(files)} files to {files[0].parent}"
            done = True
        if not done:  # the error was shown; the export writes all of its folder or nothing
            self.ui.statusLabel.text = "export failed: nothing was written"

    def _recomputed_for_export(self):
        """Before Export: when only Recompute stands between the study and its results (edits, fields,
        the RV insertion point), offer to recompute first. False: the user cancelled, or Recompute
        failed. What needs Run is left to Export, which refuses naming it."""
        p = self.params
        with slicer.util.tryWithErrorDisplay("Export failed.", waitCursor=True):
            changes = self.logic.changes_since_results(p, *self.logic.study_arrays(p)[:2])
            if not changes or any("press Run" in c for c in changes):
                return True
            if not slicer.util.confirmOkCancelDisplay(
                    "The results are not those of the study as it is now: " + "; ".join(changes)
                    + ".\n\nRecompute now, then export the new results?", windowTitle="DeepStrain"):
                self.ui.statusLabel.text = "export cancelled: nothing was written"
                return False
            self.on_recompute()
            return not self.logic.changes_since_results(p, *self.logic.study_arrays(p)[:2])
        return False

    # ------------------------------------------------------------------ layout, plots, polar map picking
    def _register_layout(self):
        lm = slicer.app.layoutManager()
        if lm is not None and not lm.layoutLogic().GetLayoutNode().IsLayoutDescription(dlogic.LAYOUT_ID):
            lm.layoutLogic().GetLayoutNode().AddLayoutDescription(dlogic.LAYOUT_ID, dlogic.LAYOUT_XML)

    def on_layout(self):
        """One click: cine slice views, the plot, the polar map and the results table together."""
        p = self.params
        self.logic.ensure_polar_view(p)
        lm = slicer.app.layoutManager()
        lm.setLayout(dlogic.LAYOUT_ID)
        browser = p.ref("Browser")
        vol = browser.GetProxyNode(p.ref("CineSequence")) if browser else None
        if vol is not None:
            slicer.util.setSliceViewerLayers(background=vol, fit=True)
            for name in ("Red", "Yellow"):
                w = lm.sliceWidget(name)
                if w is not None and name == "Red":
                    w.mrmlSliceNode().RotateToVolumePlane(vol)
        self.logic.attach_views(p)
        polar = lm.threeDWidget(self._polar_view_index())
        if polar is not None:
            view = polar.threeDView()
            view.resetFocalPoint()
            cam = view.cameraNode() if hasattr(view, "cameraNode") else None
            if cam is not None:
                cam.SetPosition(0, 0, 30)
                cam.SetFocalPoint(0, 0, 0)
                cam.SetViewUp(0, 1, 0)
            self._connect_polar_picking(view)
        self._connect_plot_view()

    def _polar_view_index(self):
        lm = slicer.app.layoutManager()
        for i in range(lm.threeDViewCount):
            if lm.threeDWidget(i).mrmlViewNode().GetSingletonTag() == dlogic.POLAR_VIEW_TAG:
                return i
        return 0

    def _connect_plot_view(self):
        lm = slicer.app.layoutManager()
        for i in range(lm.plotViewCount):
            view = lm.plotWidget(i).plotView()
            try:
                view.disconnect("dataPointClicked(QString,int)", self._on_plot_point)
            except Exception:
                pass
            view.connect("dataPointClicked(QString,int)", self._on_plot_point)

    def _on_plot_point(self, series_id, point_index):
        frame = self.logic.on_plot_point_clicked(self.params, series_id, point_index)
        if frame is not None:
            self.ui.statusLabel.text = f"frame {frame}"

    def _connect_polar_picking(self, view):
        interactor = view.interactor()
        self.removeObservers(self._on_polar_click)
        self.removeObservers(self._on_polar_hover)
        self.addObserver(interactor, "LeftButtonReleaseEvent", self._on_polar_click)
        self.addObserver(interactor, "MouseMoveEvent", self._on_polar_hover)
        self._polar_view = view

    def _pick(self):
        """The AHA segment under the mouse in the polar view; None off the map or without a study."""
        import vtk

        view = getattr(self, "_polar_view", None)
        if view is None or self.params.ref("PolarModel") is None:
            return None
        x, y = view.interactor().GetEventPosition()
        picker = vtk.vtkWorldPointPicker()
        picker.Pick(x, y, 0, view.renderWindow().GetRenderers().GetFirstRenderer())
        return self.logic.segment_at(self.params, picker.GetPickPosition())

    def _on_polar_hover(self, caller=None, event=None):
        info = self._pick()
        if info is not None:
            value = "n/a" if info.value is None else f"{info.value:.1f} %"
            self.ui.statusLabel.text = f"segment {info.segment} ({info.name}): {info.component} {value}, frame {info.frame}"

    def _on_polar_click(self, caller=None, event=None):
        if self.params.ref("PolarModel") is None:
            return
        info = self._pick()
        self.logic.highlight_segment(self.params, info.segment if info else None)


class DeepStrainSlicerTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer: the same logic as Testing/slicer on a small phantom (run mode 'given')."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_phantom_study()

    def test_phantom_study(self):
        import numpy as np
        import tempfile
        import vtk
        from deepstrain.phantom import PhantomParams, generate_phantom

        ph = generate_phantom(PhantomParams(n_frames=10, matrix_size=96, n_slices=8, pv_samples=1))
        logic = DeepStrainSlicerLogic()
        p = logic.parameter_node()
        before = {slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())}

        def cancel(fraction, message):
            if fraction > 0.9:
                raise dlogic.Cancelled()

        with self.assertRaises(dlogic.Cancelled):
            logic.run(ph.cine, p, ph.labels, ph.displacement, progress=cancel)
        after = {slicer.mrmlScene.GetNthNode(i).GetID() for i in range(slicer.mrmlScene.GetNumberOfNodes())}
        self.assertEqual(after, before)

        a = logic.run(ph.cine, p, ph.labels, ph.displacement)
        for role in ("CineSequence", "SegmentationSequence", "DisplacementSequence", "GlyphSequence"):
            self.assertEqual(p.ref(role).GetNumberOfDataNodes(), ph.cine.n_frames)
        browser = p.ref("Browser")
        browser.SetSelectedItemNumber(a.es)
        tr = vtk.vtkGeneralTransform()
        browser.GetProxyNode(p.ref("DisplacementSequence")).GetTransformToWorld(tr)
        kji = np.argwhere(ph.labels[a.ed] == 2)[0]
        g = ph.cine.geometry
        x = g.origin + g.direction @ (g.spacing * kji)
        np.testing.assert_allclose(np.array(tr.TransformPoint(*x)) - x, ph.displacement[(a.es, slice(None)) + tuple(kji)], atol=1e-4)
        info = logic.segment_at(p, (0.0, 3.5, 0.0))
        self.assertEqual(info.segment, 1)
        out = tempfile.mkdtemp()
        files = logic.export(p, out)
        stem = files[0].parent.name  # <study>_<time stamp>, a new folder in an empty one
        expected = [f"slice_ED_frame{a.ed}.png", f"slice_ES_frame{a.es}.png", "curves.png", "polar_map.png",
                    "qc.png", "report.json", "strain.csv", "results.csv", "slices.csv"]
        self.assertEqual(sorted(f.name for f in files), sorted(f"{stem}_{name}" for name in expected))
        self.assertTrue(all(f.is_file() for f in files))
        self.delayDisplay("DeepStrainSlicer test passed")
