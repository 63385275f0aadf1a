"""The module's Qt-side files, checked without Qt: widget names, CMake lists, icon, layout."""
from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import vtk

MODULE = Path(__file__).resolve().parents[2] / "DeepStrainSlicer"


def test_widget_uses_only_widgets_of_the_ui_file():
    names = {w.get("name") for w in ET.parse(MODULE / "Resources/UI/DeepStrainSlicer.ui").getroot().iter("widget")}
    src = (MODULE / "DeepStrainSlicer.py").read_text()
    used = set(re.findall(r"\bui\.(\w+)", src))
    assert used and used <= names, used - names


def test_module_file_defines_the_slicer_classes_and_keeps_qt_out_of_the_lib():
    tree = ast.parse((MODULE / "DeepStrainSlicer.py").read_text())
    classes = {n.name for n in tree.body if isinstance(n, ast.ClassDef)}
    assert {"DeepStrainSlicer", "DeepStrainSlicerWidget", "DeepStrainSlicerLogic", "DeepStrainSlicerTest"} <= classes
    for f in (MODULE / "DeepStrainSlicerLib").glob("*.py"):
        mods = {a.name.split(".")[0] for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Import) for a in n.names}
        mods |= {(n.module or "").split(".")[0] for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.ImportFrom)}
        assert not mods & {"qt", "ctk", "PythonQt"}, f.name


def test_icon_is_a_png():
    r = vtk.vtkPNGReader()
    r.SetFileName(str(MODULE / "Resources/Icons/DeepStrainSlicer.png"))
    r.Update()
    assert r.GetOutput().GetDimensions()[:2] == (128, 128)


def test_cmake_builds_the_scripted_module_with_its_test():
    text = (MODULE / "CMakeLists.txt").read_text()
    assert "slicerMacroBuildScriptedModule" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text
    assert "DeepStrainSlicerLib/*.py" in text and "Resources/UI/${MODULE_NAME}.ui" in text
    top = (MODULE.parent / "CMakeLists.txt").read_text()
    assert "project(DeepStrainSlicer)" in top and "add_subdirectory(DeepStrainSlicer)" in top


INTERACTIVE = {"QPushButton", "QCheckBox", "QComboBox", "QSpinBox", "QDoubleSpinBox", "QLineEdit", "QListWidget",
               "ctkPathLineEdit", "qMRMLNodeComboBox"}


def test_every_interactive_widget_has_a_tooltip():
    widgets = list(ET.parse(MODULE / "Resources/UI/DeepStrainSlicer.ui").getroot().iter("widget"))
    assert {w.get("class") for w in widgets} <= INTERACTIVE | {"QLabel", "QProgressBar", "ctkCollapsibleButton",
                                                              "qMRMLWidget"}, "a widget class to classify"
    bare = [w.get("name") for w in widgets if w.get("class") in INTERACTIVE
            and not (w.findtext("property[@name='toolTip']/string") or "").strip()]
    assert not bare, bare


def test_extension_urls_point_at_files_of_this_repository():
    """The icon and screenshot URLs of the top-level CMakeLists.txt (the extension index shows them)
    name files that are in the repository, and the screenshots are PNG pictures."""
    text = (MODULE.parent / "CMakeLists.txt").read_text()
    urls = re.findall(r"https://raw\.githubusercontent\.com/[^/]+/[^/]+/main/([^\s\"]+)", text)
    shots = [u for u in urls if "Screenshots" in u]
    assert len(shots) >= 1 and any("Icons" in u for u in urls)
    for rel in urls:
        path = MODULE.parent / rel
        assert path.is_file(), rel
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", rel
