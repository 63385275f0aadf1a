"""The Python packages the module installs into a stock Slicer: pins, what is missing, pip commands."""
from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path

import pytest

from DeepStrainSlicerLib import dependencies

REPO = Path(__file__).resolve().parents[2]
CPU = "--index-url https://download.pytorch.org/whl/cpu"


def test_pins_are_those_of_pyproject():
    """Every requirement installed into Slicer is pinned as in pyproject.toml; only the packages
    that Slicer bundles (numpy, scipy) are left out."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    ours = set(dependencies.REQUIREMENTS.values())
    assert ours <= set(project), ours - set(project)
    assert {r for r in project if not r.startswith(("numpy", "scipy"))} == ours
    assert dependencies.REQUIREMENTS["torch"] == dependencies.TORCH


@pytest.fixture
def importable(monkeypatch):
    """find_spec answering from a set of importable names."""
    names: set[str] = set()
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name in names else None)
    return names


def test_missing_checks_torch_only_when_asked(importable):
    importable.update({"pydicom"})
    assert dependencies.missing(need_torch=False) == ["nibabel>=5.0", "matplotlib>=3.7"]
    assert dependencies.missing(need_torch=True) == ["nibabel>=5.0", "matplotlib>=3.7", "torch==2.13.0"]
    importable.update({"nibabel", "matplotlib", "torch"})
    assert dependencies.missing(need_torch=True) == []


@pytest.mark.parametrize("platform, torch_command", [
    ("linux", f"torch==2.13.0 {CPU}"),
    ("win32", f"torch==2.13.0 {CPU}"),
    ("darwin", "torch==2.13.0"),
])
def test_torch_comes_from_the_cpu_index_except_on_macos(platform, torch_command):
    assert dependencies.pip_commands(["nibabel>=5.0", "torch==2.13.0", "matplotlib>=3.7"], platform) == [
        "nibabel>=5.0 matplotlib>=3.7", torch_command]
    assert dependencies.pip_commands(["torch==2.13.0"], platform) == [torch_command]
    assert dependencies.pip_commands(["matplotlib>=3.7"], platform) == ["matplotlib>=3.7"]
    assert dependencies.pip_commands([], platform) == []


def test_messages_name_the_packages_the_size_and_the_commands():
    needed = ["nibabel>=5.0", "torch==2.13.0"]
    commands = dependencies.pip_commands(needed, "linux")
    question = dependencies.install_question(needed, commands)
    assert "nibabel>=5.0, torch==2.13.0" in question and "about 200 MB" in question
    assert f"slicer.util.pip_install('torch==2.13.0 {CPU}')" in question
    assert "MB" not in dependencies.install_question(["nibabel>=5.0"], ["nibabel>=5.0"])
    declined = dependencies.declined_message(commands)
    assert "slicer.util.pip_install('nibabel>=5.0')" in declined and CPU in declined

