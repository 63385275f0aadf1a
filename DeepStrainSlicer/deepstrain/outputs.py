"""Writing result folders atomically: all of it or nothing, and never over a user's files.

Rules (:func:`check_output_dir`):

* ``out`` must not exist or be an empty folder, unless ``overwrite`` is true;
* ``overwrite`` replaces only a folder that deepstrain wrote: one holding the marker file
  :data:`MARKER` (written into every result folder), never an arbitrary folder of the user's;
* ``out`` may never be, or contain, one of the run's inputs (with ``overwrite`` the input
  would be deleted).

The folder and the files in it get the permissions of the user's umask, as files written
with ``open`` do (temporary files are created private: ``mkdtemp`` gives 0700).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

MARKER = ".deepstrain-output"
"""Name of the marker file in every result folder: ``--overwrite`` replaces only folders holding it."""


def write_marker(folder: str | os.PathLike) -> None:
    """Mark ``folder`` as one deepstrain wrote (:data:`MARKER`)."""
    (Path(folder) / MARKER).write_text("Written by deepstrain; `--overwrite` may replace this folder.\n")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | os.PathLike) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the permissions of the umask:
    0666 (files) or 0777 (folders) less the umask."""
    mask = _umask()
    path = Path(path)
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            os.chmod(root, 0o777 & ~mask)
            for f in files:
                p = os.path.join(root, f)
                if not os.path.islink(p):
                    os.chmod(p, 0o666 & ~mask)
    else:
        os.chmod(path, 0o666 & ~mask)


def check_output_dir(out: str | os.PathLike, overwrite: bool = False,
                     inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Raise :class:`InputError` unless ``out`` may be written (module docstring); returns it absolute.

    Call it before a long computation, so a refusal comes at once; :func:`atomic_output_dir`
    checks again.
    """
    out = Path(out).absolute()
    real_out = out.resolve()
    for given in inputs:
        if given is None:
            continue
        src = Path(given).resolve()
        if src == real_out or real_out in src.parents:
            raise InputError(out, f"the output folder is, or contains, the input {given}: choose another --out")
    if out.exists():
        if not out.is_dir():
            raise InputError(out, "output path exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise InputError(out, "output folder exists and is not empty (use --overwrite to replace it)")
            if not (out / MARKER).is_file():
                raise InputError(out, f"output folder exists and was not written by deepstrain (no {MARKER} "
                                      "file): --overwrite replaces only deepstrain's own result folders; "
                                      "choose another --out")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; rename it to ``out`` only if the block succeeds.

    ``out`` is checked by :func:`check_output_dir` (with ``inputs``, the paths the run reads).
    An old folder is replaced only after the new one is complete. On any exception the
    temporary folder is removed and ``out`` is left as it was.
    """
    out = check_output_dir(out, overwrite, inputs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        write_marker(tmp)
        yield tmp
        apply_umask(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
