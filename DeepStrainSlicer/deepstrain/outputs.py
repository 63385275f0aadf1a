"""Writing result folders atomically: all of it or nothing, and never over a user's files."""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import InputError


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; rename it to ``out`` only if the block succeeds.

    ``out`` must not exist, or be an empty folder, unless ``overwrite`` is true (then the old
    folder is replaced only after the new one is complete). On any exception the temporary
    folder is removed and ``out`` is left as it was.
    """
    out = Path(out).absolute()
    if out.exists():
        if not out.is_dir():
            raise InputError(out, "output path exists and is not a folder")
        if any(out.iterdir()) and not overwrite:
            raise InputError(out, "output folder exists and is not empty (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield tmp
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
