"""DeepStrainSlicer.py itself, loaded with stand-ins for what only the application has (qt, the
ScriptedLoadableModule base classes, slicer.modules): its self test and the widget's scene handlers."""
from __future__ import annotations

import importlib.util
import sys
import types
import unittest
from pathlib import Path

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

    class ScriptedLoadableModuleTest(unittest.TestCase):
        def delayDisplay(self, message, msec=None):
            pass

    for cls in (ScriptedLoadableModule, ScriptedLoadableModuleLogic, ScriptedLoadableModuleWidget,
                ScriptedLoadableModuleTest):
        setattr(base, cls.__name__, cls)
    monkeypatch.setitem(sys.modules, "qt", types.ModuleType("qt"))
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


def test_closing_the_scene_forgets_the_study_in_memory(monkeypatch, harness, phantom):
    cine, labels, disp = phantom
    module = _module(monkeypatch, harness)
    harness.logic.run(cine, harness.params, labels, disp)
    widget = module.DeepStrainSlicerWidget()
    widget.logic, widget._to_gui = harness.logic, lambda: None
    harness.scene.Clear(0)
    widget._on_scene_closed()
    assert harness.logic._cache == {} and harness.logic.analysis is None
    assert widget.params.node is harness.logic.parameter_node().node
