"""Python packages the module needs beyond what Slicer bundles, and the pip commands that install them.

Slicer bundles numpy, scipy and pydicom, but not nibabel (reading NIfTI: every Run), matplotlib
(Export) or PyTorch (run mode 'networks'). The pins are those of ``pyproject.toml`` (a test keeps them
equal). PyTorch comes from the PyTorch CPU wheel index on Linux and Windows: from plain PyPI it is a
CUDA build of several GB there. No slicer, no qt: the widget asks and calls ``slicer.util.pip_install``.
"""
from __future__ import annotations

import importlib.util
import sys

TORCH = "torch==2.13.0"
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_DOWNLOAD_MB = 200  # the CPU wheel, about

# import name -> requirement, as in pyproject.toml [project] dependencies
REQUIREMENTS = {
    "nibabel": "nibabel>=5.0",
    "pydicom": "pydicom>=2.4",
    "matplotlib": "matplotlib>=3.7",
    "torch": TORCH,
}


def missing(need_torch: bool) -> list[str]:
    """The requirements whose package cannot be imported (torch only when ``need_torch``)."""
    return [req for name, req in REQUIREMENTS.items()
            if (need_torch or name != "torch") and importlib.util.find_spec(name) is None]


def pip_commands(missing: list[str], platform: str = sys.platform) -> list[str]:
    """Arguments for ``slicer.util.pip_install``, one string per pip run: the small packages together,
    then PyTorch alone (CPU wheel index except on macOS, whose PyPI wheel has no CUDA)."""
    small = [req for req in missing if req != TORCH]
    commands = [" ".join(small)] if small else []
    if TORCH in missing:
        commands.append(TORCH if platform == "darwin" else f"{TORCH} --index-url {TORCH_CPU_INDEX}")
    return commands


def console_lines(commands: list[str]) -> str:
    """The commands as lines to paste into Slicer's Python console."""
    return "\n".join(f"slicer.util.pip_install('{c}')" for c in commands)


def install_question(missing: list[str], commands: list[str]) -> str:
    """The question asked before installing ``missing``."""
    size = (f" PyTorch is installed as its CPU build, a download of about {TORCH_DOWNLOAD_MB} MB "
            "(a few minutes)." if TORCH in missing else "")
    return (f"DeepStrain needs Python packages that this Slicer does not have: {', '.join(missing)}.{size}\n\n"
            f"Install them now? This runs:\n{console_lines(commands)}")


def declined_message(commands: list[str]) -> str:
    """What to do when the user did not want the packages installed now."""
    return ("Not installed, so this cannot go on. Install the packages from Slicer's Python console, "
            f"then try again:\n{console_lines(commands)}")
