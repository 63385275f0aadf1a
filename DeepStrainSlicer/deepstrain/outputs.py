"""Writing result folders atomically: all of it or nothing, and never over a user's files.

Rules (:func:`check_output_dir`):

* ``out`` must not exist or be an empty folder, unless ``overwrite`` is true;
* ``overwrite`` replaces only a folder that deepstrain wrote: one holding the marker file
  :data:`MARKER` (written into every result folder), never an arbitrary folder of the user's,
  and only one of the same kind (the marker names it: ``analysis``, ``batch``, ``compare``...):
  ``compare --out BATCH --overwrite`` must not delete a cohort's analyses;
* ``out`` may never be, or contain, one of the run's inputs (with ``overwrite`` the input
  would be deleted), nor lie inside an input folder (an ACDC or DICOM study folder keeps only its
  own files);
* the nearest existing folder above ``out`` must be writable (checked before the computation);
  a folder that cannot be created or written later (a full disk) is an :class:`InputError`, and
  the folders made for it are removed again.

The folder and the files in it get the permissions of the user's umask, as files written
with ``open`` do (temporary files are created private: ``mkdtemp`` gives 0700).
"""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

from .errors import InputError

MARKER = ".deepstrain-output"
"""Name of the marker file in every result folder: ``--overwrite`` replaces only folders holding it."""


def write_marker(folder: str | os.PathLike, kind: str) -> None:
    """Mark ``folder`` as one deepstrain wrote (:data:`MARKER`), holding output of ``kind``."""
    (Path(folder) / MARKER).write_text(f"Written by deepstrain ({kind}); `--overwrite` may replace this folder "
                                       f"with another {kind} output.\nkind: {kind}\n")


def marker_kind(folder: str | os.PathLike) -> str | None:
    """The kind of output in ``folder`` (:func:`write_marker`); None without a marker; for a marker
    written before kinds were recorded, ``"batch"`` where a batch's ``settings.json`` and
    ``summary.csv`` are beside it, else ``""`` (unknown)."""
    folder = Path(folder)
    try:
        text = (folder / MARKER).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("kind: "):
            return line[len("kind: "):].strip()
    return "batch" if (folder / "settings.json").is_file() and (folder / "summary.csv").is_file() else ""


def write_atomically(path: str | os.PathLike, tmp: str | os.PathLike, write) -> None:
    """``write(tmp)``, then ``tmp`` replaces ``path``: a reader never sees a half-written ``path``. When
    writing fails or is interrupted (Ctrl-C), ``tmp`` is removed, so no partial file is left behind."""
    tmp = Path(tmp)
    try:
        write(tmp)
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
                     inputs: Iterable[str | os.PathLike | None] = (), kind: str = "analysis") -> Path:
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
        if src.is_dir() and src in real_out.parents:  # a study folder (ACDC, DICOM) keeps only its own files
            raise InputError(out, f"the output folder is inside the input folder {given}: the results would be "
                                  "mixed with the study's files; choose an --out outside it")
    check_folder_can_be_made(out)
    if out.exists():
        if not out.is_dir():
            raise InputError(out, "output path exists and is not a folder")
        if any(out.iterdir()):
            if not overwrite:
                raise InputError(out, "output folder exists and is not empty (use --overwrite to replace it)")
            there = marker_kind(out)
            if there is None:
                raise InputError(out, f"output folder exists and was not written by deepstrain (no {MARKER} "
                                      "file): --overwrite replaces only deepstrain's own result folders; "
                                      "choose another --out")
            if there and there != kind:
                raise InputError(out, f"output folder holds a deepstrain {there} output: --overwrite replaces "
                                      f"only an output of the same kind ({kind}); choose another --out")
    return out


def check_folder_can_be_made(folder: str | os.PathLike) -> None:
    """:class:`InputError` naming ``folder`` when it, or the first of its parents that exists, is a
    file or cannot be written: checked before a run writes anything."""
    folder = Path(folder)
    anchor = folder if folder.exists() else folder.parent
    while not anchor.exists() and anchor != anchor.parent:
        anchor = anchor.parent
    if not anchor.is_dir():
        raise InputError(folder, f"cannot be created: {anchor} is a file, not a folder" if anchor != folder
                         else "output path exists and is not a folder")
    if not os.access(anchor, os.W_OK | os.X_OK):
        raise InputError(folder, f"cannot be created: {anchor} is not writable (permissions, or a read-only disk)")


def remove_orphans(out: Path) -> list[Path]:
    """Remove the temporary folders of earlier runs writing ``out`` that were killed (SIGKILL, power
    loss) before they could clean up: ``.<name>.partial-<pid>-*`` (an unfinished output) and
    ``.<name>.old-<pid>`` (the output being replaced) beside ``out``, whose process ``pid`` no longer
    exists. Folders of a live process, of this process, or without a pid in their name (written
    before 2026-11-23) are left. Not on Windows (no safe way to ask whether a process exists).
    Returns the folders removed."""
    if os.name == "nt" or not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(?:partial-(\d+)-.+|old-(\d+))")
    removed = []
    for p in out.parent.iterdir():
        m = pattern.fullmatch(p.name)
        if m is None or not p.is_dir() or p.is_symlink():
            continue
        pid = int(m.group(1) or m.group(2))
        if pid != os.getpid() and not _process_exists(pid):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks (POSIX)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_empty(folders: list[Path]) -> None:
    """Remove the folders a failed run created for its output (deepest first), if still empty."""
    for f in folders:
        try:
            f.rmdir()
        except OSError:
            break


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike | None] = (), kind: str = "analysis") -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; rename it to ``out`` only if the block succeeds.

    ``out`` is checked by :func:`check_output_dir` (with ``inputs``, the paths the run reads, and
    ``kind``, the kind of output written: the marker records it).
    An old folder is replaced only after the new one is complete. On any exception the
    temporary folder is removed and ``out`` is left as it was.
    """
    out = check_output_dir(out, overwrite, inputs, kind)
    created = [p for p in (out.parent, *out.parent.parents) if not p.exists()]
    remove_orphans(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-{os.getpid()}-", dir=out.parent))
    except OSError as exc:
        _remove_empty(created)
        raise InputError(out, f"cannot be created ({exc.strerror or exc})") from exc
    try:
        write_marker(tmp, kind)
        yield tmp
        apply_umask(tmp)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        if isinstance(exc, OSError) and str(tmp) in str(exc.filename or ""):  # writing a result, not reading
            raise InputError(out, f"the results could not be written ({exc.strerror or exc}); "
                                  "nothing was kept") from exc
        raise
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.replace(out, old)
        os.replace(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, out)
