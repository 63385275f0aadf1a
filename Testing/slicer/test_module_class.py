"""DeepStrainSlicer.py itself, loaded with stand-ins for what only the application has (qt, the
ScriptedLoadableModule base classes, slicer.modules, slicer.app, the widgets of the .ui file): its
self test, its help text, and the widget's handlers."""
from __future__ import annotations

import importlib.util
import re
import sys
import types
import unittest
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import slicer

MODULE_DIR = Path(__file__).resolve().parents[2] / "DeepStrainSlicer"


def _module(monkeypatch, harness):
    """Import DeepStrainSlicer.py on the harness's scene."""
    base = types.ModuleType("slicer.ScriptedLoadableModule")

    class ScriptedLoadableModule:
        def __init__(self, parent):
            self.parent = parent

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            pass

    class ScriptedLoadableModuleWidget:
        def __init__(self, parent=None):
            self.parent = parent

        def setup(self):
            pass

        def resourcePath(self, name):
            return str(MODULE_DIR / "Resources" / name)

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleTest):
        setattr(base, cls.__name__, cls)
    qt = types.ModuleType("qt")
    qt.Qt = types.SimpleNamespace(WaitCursor=3)
    monkeypatch.setitem(sys.modules, "qt", qt)
    monkeypatch.setitem(sys.modules, "slicer.ScriptedLoadableModule", base)
    sequences = types.SimpleNamespace(logic=lambda: harness.sequences_logic)
    monkeypatch.setattr(slicer, "modules", types.SimpleNamespace(sequences=sequences), raising=False)
    spec = importlib.util.spec_from_file_location("DeepStrainSlicerModuleUnderTest", MODULE_DIR / "DeepStrainSlicer.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_modules_self_test_passes(monkeypatch, harness, egl):
    """The self test run by Slicer's "Reload and Test" (it checks the exported files by name)."""
    module = _module(monkeypatch, harness)
    test = module.DeepStrainSlicerTest("test_phantom_study")
    test.runTest()


class FakeWidget:
    """A Qt widget stand-in: attributes as set, connect() records the slot, emit() calls the slots."""

    def __init__(self):
        self.slots = {}

    def connect(self, signal, slot):
        self.slots.setdefault(signal, []).append(slot)

    def emit(self, signal, *args):
        for slot in self.slots.get(signal, []):
            slot(*args)

    def __getattr__(self, name):  # setMRMLScene, addItems, setCurrentNode...: nothing to do here
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: None


class FakeList(FakeWidget):
    def __init__(self):
        super().__init__()
        self.items = []

    def clear(self):
        self.items = []

    def addItem(self, text):
        self.items.append(text)

    def row(self, item):
        return self.items.index(item)


class FakeApp:
    def layoutManager(self):
        return None

    def processEvents(self):
        pass

    def setOverrideCursor(self, cursor):
        pass

    def restoreOverrideCursor(self):
        pass

    def testingEnabled(self):
        return True  # slicer.util's dialogs are skipped


@pytest.fixture
def widget(monkeypatch, harness):
    """The module's widget after setup(), on fake widgets named as in the .ui file."""
    module = _module(monkeypatch, harness)
    monkeypatch.setattr(slicer, "app", FakeApp(), raising=False)
    names = [w.get("name") for w in ET.parse(MODULE_DIR / "Resources/UI/DeepStrainSlicer.ui").getroot().iter("widget")]
    ui = types.SimpleNamespace(**{n: FakeList() if n == "qualityList" else FakeWidget() for n in names})
    monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda w: ui, raising=False)
    w = module.DeepStrainSlicerWidget()
    w._load_ui = lambda path: None
    w.setup()
    w.module = module
    yield w
    w.cleanup()


def test_help_text_links_the_homepage_and_names_the_heart_rate_field(monkeypatch, harness):
    module = _module(monkeypatch, harness)
    parent = types.SimpleNamespace()
    module.DeepStrainSlicer(parent)
    cmake = (MODULE_DIR.parent / "CMakeLists.txt").read_text()
    homepage = re.search(r'set\(EXTENSION_HOMEPAGE "([^"]+)"\)', cmake).group(1)
    assert module.HOMEPAGE == homepage
    assert f'<a href="{homepage}">' in parent.helpText and f'<a href="{homepage}#readme">README</a>' in parent.helpText
    assert "the Heart rate field" in parent.helpText and "field above" not in parent.helpText


def test_glyph_scale_field_changes_the_shown_glyphs(widget, harness, phantom):
    cine, labels, disp = phantom
    harness.logic.run(cine, harness.params, labels, disp)
    p = harness.params
    glyphs = p.ref("Browser").GetProxyNode(p.ref("GlyphSequence")).GetDisplayNode()
    widget.ui.glyphScaleSpin.value = 300.0
    widget.ui.glyphScaleSpin.emit("valueChanged(double)", 300.0)
    assert glyphs.GetGlyphScalePercent() == 300.0 and p.glyph_scale_percent == 300.0


class FindingLogic:
    def __init__(self):
        self.shown = []

    def quality_findings(self, params):
        return [{"check": "a", "message": "first"}, {"check": "b", "message": "second"}]

    def analysis_warnings(self, params):
        return []

    def go_to_finding(self, params, row):
        self.shown.append(row)
        return self.quality_findings(params)[row]


def test_one_click_on_a_finding_goes_there_once_also_on_the_current_row(widget, monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(widget.module, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    widget.logic = logic = FindingLogic()
    widget._show_findings()
    findings = widget.ui.qualityList
    # a click on another row: currentRowChanged (press), then itemClicked (release)
    findings.emit("currentRowChanged(int)", 1)
    clock[0] += 0.1
    findings.emit("itemClicked(QListWidgetItem*)", findings.items[1])
    assert logic.shown == [1]
    # the views moved away; a click on the current row (itemClicked only) goes there again
    clock[0] += 3.0
    findings.emit("itemClicked(QListWidgetItem*)", findings.items[1])
    assert logic.shown == [1, 1]
    # the keyboard (currentRowChanged only)
    clock[0] += 3.0
    findings.emit("currentRowChanged(int)", 0)
    assert logic.shown == [1, 1, 0]


class PackageLogic(FindingLogic):
    def __init__(self):
        super().__init__()
        self.exported = []

    def export(self, params, folder):
        self.exported.append(folder)
        return [Path(folder) / "study" / "report.json"]

    def study_arrays(self, params):
        return None, None, None

    def changes_since_results(self, params, cine, labels):
        return []

    def run(self, *args, **kwargs):
        raise AssertionError("Run went on without the packages")


@pytest.fixture
def packages(widget, monkeypatch):
    """Missing packages (torch and matplotlib) until pip_install runs; the dialogs and pip recorded."""
    state = {"missing": ["matplotlib>=3.7", "torch==2.13.0"], "pip": [], "asked": [], "warned": [], "answer": False}

    def missing(need_torch):
        return [r for r in state["missing"] if need_torch or not r.startswith("torch")]

    def pip_install(command):
        state["pip"].append(command)
        state["missing"] = []

    def confirm(text, **kwargs):
        state["asked"].append(text)
        return state["answer"]

    monkeypatch.setattr(widget.module.dependencies, "missing", missing)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm, raising=False)
    monkeypatch.setattr(slicer.util, "warningDisplay", lambda text, **kw: state["warned"].append(text), raising=False)
    widget.logic = PackageLogic()
    return state


def test_run_asks_to_install_torch_and_stops_with_the_commands_when_declined(widget, packages):
    widget.params.run_mode = "networks"
    widget._to_gui()
    widget.on_run()
    torch = "torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" if sys.platform != "darwin" else "torch==2.13.0"
    assert len(packages["asked"]) == 1 and "torch==2.13.0" in packages["asked"][0] and "200 MB" in packages["asked"][0]
    assert packages["pip"] == []
    assert f"slicer.util.pip_install('{torch}')" in widget.ui.statusLabel.text
    assert f"slicer.util.pip_install('{torch}')" in packages["warned"][0]


def test_export_installs_matplotlib_when_accepted_then_exports(widget, packages, tmp_path):
    packages["answer"] = True
    widget.ui.exportFolderEdit.currentPath = str(tmp_path)
    widget.on_export()
    assert packages["pip"] == ["matplotlib>=3.7"]  # not torch: Export does not need it
    assert widget.logic.exported == [str(tmp_path)]


def _widget_study(widget, harness, phantom):
    cine, labels, disp = phantom
    harness.logic.run(cine, widget.params, labels, disp)
    widget._to_gui()
    return cine


def test_polar_map_follows_the_browser_frame(widget, harness, phantom):
    _widget_study(widget, harness, phantom)
    p = widget.params
    widget.ui.followFrameCheck.checked = True
    widget.ui.followFrameCheck.emit("toggled(bool)", True)
    model = p.ref("PolarModel")
    for frame in (2, 6):
        p.ref("Browser").SetSelectedItemNumber(frame)  # the slider or the Sequences toolbar
        assert model.GetAttribute("DeepStrain.title").endswith(f"at frame {frame}")


def test_cancelled_recompute_says_cancelled_not_failed(widget, harness, phantom, monkeypatch):
    _widget_study(widget, harness, phantom)
    errors = []
    monkeypatch.setattr(FakeApp, "testingEnabled", lambda self: False)
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: errors.append(text), raising=False)
    monkeypatch.setattr(slicer.app, "processEvents", lambda: widget.on_cancel())  # Cancel clicked at once
    widget.on_recompute()
    assert widget.ui.statusLabel.text == "cancelled" and errors == []
    assert widget.ui.recomputeButton.enabled and widget.ui.exportButton.enabled


def test_buttons_that_need_the_study_are_off_while_busy(widget, harness, phantom):
    _widget_study(widget, harness, phantom)
    widget._busy(True)
    ui = widget.ui
    assert ui.cancelButton.enabled and not any(
        b.enabled for b in (ui.runButton, ui.recomputeButton, ui.exportButton, ui.editButton, ui.rvInsertionButton,
                            ui.layoutButton))
    widget._busy(False)
    assert ui.exportButton.enabled and ui.editButton.enabled and not ui.cancelButton.enabled


def test_a_heart_rate_entered_after_run_asks_for_run(widget, harness, phantom):
    _widget_study(widget, harness, phantom)
    widget.params.heart_rate_bpm = 60.0
    with pytest.raises(ValueError, match="press Run"):
        harness.logic.recompute(widget.params)
    widget.params.heart_rate_bpm = 0.0
    harness.logic.recompute(widget.params)


@pytest.mark.parametrize("answer", ["keep", "again", None])
def test_run_after_hand_edits_asks_whether_to_keep_them(widget, harness, phantom, monkeypatch, answer):
    """Run on a study whose segmentation was edited asks first: keep (Run gets the edited labels and
    says where they come from), segment again (the networks' way) or cancel (nothing runs)."""
    from DeepStrainSlicerLib import mrml

    cine, labels, disp = phantom
    p = widget.params
    p.set_ref("InputSequence", mrml.cine_to_sequence(harness.scene, cine, "input cine"))
    first = widget.logic.run(cine, p, labels, disp)
    edited = first.labels.copy()
    edited[first.es][edited[first.es] == 3] = 0  # LV cavity erased at ES
    browser = p.ref("Browser")
    browser.SetSelectedItemNumber(first.es)
    proxy = browser.GetProxyNode(p.ref("SegmentationSequence"))
    mrml.set_segment_mask(proxy, "lv_cavity", edited[first.es] == 3, cine.geometry)
    asked, runs = [], []
    monkeypatch.setattr(widget, "_ask_keep_edits", lambda why: asked.append(why) or answer)
    monkeypatch.setattr(widget, "on_layout", lambda: None)  # no layout manager here
    monkeypatch.setattr(widget, "_connect_plot_view", lambda: None)
    monkeypatch.setattr(widget.logic, "run", lambda c, prm, lab, d, progress=None, labels_origin=None:
                        runs.append((lab, labels_origin)))
    p.run_mode = "networks"
    widget._to_gui()
    seq = p.ref("InputSequence")
    widget.ui.inputSequenceSelector.currentNode = lambda: seq
    widget.on_run()
    assert asked == [""]
    if answer is None:
        assert runs == [] and widget.ui.statusLabel.text.startswith("Run cancelled")
    elif answer == "keep":
        # the labels were given (a file) and edited: the provenance says so, not "networks"
        assert np.array_equal(runs[0][0], edited) and runs[0][1] == "given, edited in Slicer (kept at Run)"
    else:
        assert runs == [(None, None)]


def test_closing_the_scene_forgets_the_study_and_clears_what_it_showed(widget, harness, phantom):
    """After Close Scene: the study in memory is dropped, the status line and the progress bar no
    longer show the closed study's results, and the checks say there is no analysis."""
    cine, labels, disp = phantom
    widget.logic.run(cine, widget.params, labels, disp)
    assert widget.logic._cache
    widget.ui.statusLabel.text, widget.ui.progressBar.value = "done: LV EDV 123.4 ml", 100
    harness.scene.Clear(0)
    widget._on_scene_closed()
    assert widget.logic._cache == {} and widget.logic.analysis is None
    assert widget.params.node is widget.logic.parameter_node().node
    assert widget.ui.statusLabel.text == "" and widget.ui.progressBar.value == 0
    assert widget.ui.qualityLabel.text == "Automatic checks: no analysis yet"
    assert widget._pick() is None  # the polar view's picking has nothing to pick


def test_the_polar_map_follows_the_frame_shown_after_run(widget, harness, phantom):
    """With "follows the current frame" on, Run shows ED and the map is drawn for ED, not frame 0."""
    import dataclasses

    cine, labels, disp = phantom
    p = widget.params
    p.polar_follows_frame = True
    shifted = dataclasses.replace(cine, data=np.roll(cine.data, 3, axis=0), ed=3,
                                  es=None if cine.es is None else (cine.es + 3) % cine.n_frames)
    harness.logic.run(shifted, p, np.roll(labels, 3, axis=0), np.roll(disp, 3, axis=0))
    assert harness.logic.current_frame(p) == 3
    assert p.ref("PolarModel").GetAttribute("DeepStrain.title").endswith("at frame 3")


def test_the_input_fields_are_locked_while_run_works(widget, harness, phantom, monkeypatch):
    """The fields are read when Run starts: they are disabled while it works, and the timing fields
    recorded are those Run read, even if one changes meanwhile."""
    cine, labels, disp = phantom
    p = widget.params
    widget._busy(True)
    assert not widget.ui.inputCollapsible.enabled and not widget.ui.qualityList.enabled
    widget._busy(False)
    assert widget.ui.inputCollapsible.enabled

    def typed_meanwhile(fraction, message):
        p.heart_rate_bpm = 75.0

    harness.logic.run(cine, p, labels, disp, progress=typed_meanwhile)
    p.heart_rate_bpm = 0.0
    harness.logic.recompute(p)  # the fields as Run read them: no heart rate
    p.heart_rate_bpm = 75.0
    with pytest.raises(ValueError, match="press Run"):
        harness.logic.recompute(p)


def test_the_polar_caption_names_the_frame_of_the_cycle_too(harness, phantom):
    """A study of two frames of a cycle (an ACDC folder: frames 0 and 11 of the cycle): the map's
    caption names ES as the study's frame 1 (as the browser, the tables and the findings do) and as
    frame 11 of the cycle (as the ES field takes it)."""
    import dataclasses

    cine, labels, disp = phantom
    es = int(np.argmin([(lab == 3).sum() for lab in labels]))
    two = dataclasses.replace(cine, data=cine.data[[0, es]], times_ms=np.full(2, np.nan), frame_numbers=np.array([0, 11]),
                              ed=0, es=1)
    p = harness.params
    harness.logic.run(two, p, labels[[0, es]], disp[[0, es]])
    assert harness.logic.report(p)["frames"]["cycle_frames"] == [0, 11]
    assert p.ref("PolarModel").GetAttribute("DeepStrain.title").endswith("at ES (frame 1, frame 11 of the cycle)")


def test_a_scene_with_two_studies_shows_one_and_says_so(widget, harness, phantom, tmp_path):
    """A saved study added to a scene holding another (the panel's scene-change handler, also run at
    setup): the study added is shown, the other one's polar map is hidden, the status line names it."""
    cine, labels, disp = phantom
    other = type(harness)()
    try:
        other.logic.run(cine, other.params, labels, disp)
        saved = other.write_mrb(tmp_path)
    finally:
        other.close()
    harness.logic.run(cine, harness.params, labels, disp)
    first = harness.params
    harness.load_mrb(saved, tmp_path / "cache")  # File > Add data: the application then sends EndImportEvent
    widget._on_scene_changed()
    assert widget.params.node is not first.node and widget.params.ref("Browser") is not None
    assert not first.ref("PolarModel").GetDisplayNode().GetVisibility()
    assert widget.params.ref("PolarModel").GetDisplayNode().GetVisibility()
    assert "holds 2 DeepStrain studies" in widget.ui.statusLabel.text and "hidden in the views" in widget.ui.statusLabel.text


@pytest.mark.parametrize("answer", [True, False])
def test_export_offers_to_recompute_a_changed_field_first(widget, harness, phantom, monkeypatch, tmp_path, answer):
    """A weight entered after Run: Export asks to Recompute first; yes: the results are recomputed and
    exported with it; no: nothing is exported."""
    _widget_study(widget, harness, phantom)
    asked, exported = [], []
    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", lambda text, **kw: asked.append(text) or answer,
                        raising=False)
    monkeypatch.setattr(widget.module.dependencies, "missing", lambda need_torch: [])
    monkeypatch.setattr(widget.logic, "export", lambda params, folder: exported.append(params.subject["weight_kg"])
                        or [Path(folder) / "study" / "report.json"])
    widget.ui.weightSpin.value = 120.0
    widget.ui.weightSpin.emit("valueChanged(double)", 120.0)
    widget.ui.exportFolderEdit.currentPath = str(tmp_path)
    widget.on_export()
    assert len(asked) == 1 and "height or weight field" in asked[0]
    assert exported == ([120.0] if answer else [])
    assert ("exported" if answer else "export cancelled") in widget.ui.statusLabel.text
