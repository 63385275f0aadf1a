"""Cohort analysis: find the studies under a folder, analyse each, keep a summary table.

* Discovery (:func:`discover_studies`), sorted by path so the order is always the same:
  an **ACDC patient folder** is a folder with ``Info.cfg``; a **UK Biobank subject folder** one
  with ``sa.nii.gz`` or ``sa_ED.nii.gz`` + ``sa_ES.nii.gz`` (:func:`deepstrain.io.is_ukbb_folder`;
  its other files, e.g. long-axis cines, are not studies); a **DICOM cine folder** is a folder
  that directly holds ``*.dcm`` files or files with the ``DICM`` magic (its sub-folders belong to
  it); a **4D NIfTI** is a ``.nii``/``.nii.gz`` file whose header has 4 dimensions and more than
  one frame, unless its name marks a label map (``seg``, ``gt``, ``label``, ``mask`` or
  ``segmentation`` as a ``_``-separated word of the name, e.g. ``seg_sa``, ``x_gt``); other NIfTI
  files (3D, one frame, 5D such as a displacement) are named in a warning, not analysed. Hidden folders (``.name``) and the output folder are not searched. A study's id is its path
  relative to the input folder with ``/`` replaced by ``__`` (NIfTI suffix removed).
* Each study is analysed into ``OUT/<id>/`` atomically: the per-study function writes into a
  folder under ``OUT/.tmp/`` which is renamed to ``OUT/<id>`` only when complete, so a killed run
  never leaves a half-written study. A study is **done** when ``OUT/<id>/report.json`` is valid;
  a re-run skips done studies and retries failed ones.
* A **study table** (:func:`read_study_table`: ``id`` and any of ``group``, ``height_cm``,
  ``weight_kg``, ``heart_rate_bpm``, ``slice_mm``/``row_mm``/``col_mm``) gives each study its group
  and replaces the input's body size, heart rate and voxel spacing, as the ``--height`` /
  ``--weight`` / ``--heart-rate`` / ``--spacing`` options of one analysis do (indexed volumes,
  cardiac output; a heart rate also sets the frame times; a spacing mends a header that lost it).
  Its values are part of the study's result: a done study whose report used other values is
  reported as failed, with its folder kept, until the user removes that folder (never re-analysed
  or overwritten silently).
* ``OUT/summary.csv`` (:data:`SUMMARY_COLUMNS`) is rewritten atomically (temp file +
  ``os.replace``) after every study: one row per study known to this run (done or finished).
* Execution: one worker runs the studies in this process; ``workers > 1`` uses a
  ``ProcessPoolExecutor`` (spawned processes, each limited to ``threads`` torch/OpenMP threads,
  default ``cores // workers``); ``scheduler`` sends them to a Dask distributed cluster instead
  (the workers must see the input and output folders at the same paths, and import ``deepstrain``).
* Group figures (:mod:`deepstrain.groups`) are written to ``OUT/figures/`` at the end.
"""
from __future__ import annotations

import contextlib
import csv
import io as _io
import json
import math
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, TextIO

from .dyssynchrony import KEYS as DYSSYNCHRONY_KEYS
from .errors import InputError, first_few
from .io import DeepStrainWarning, is_ukbb_folder, looks_like_dicom, read_info_cfg
from .outputs import MARKER, apply_umask, marker_kind, write_atomically, write_marker
from .report import aha_column, cycle_frames

StudyFn = Callable[..., Any]

COMPONENTS = ("radial", "circumferential", "longitudinal")
VOLUME_KEYS = (
    "lv_edv_ml", "lv_esv_ml", "lv_sv_ml", "lv_ef_percent", "lv_mass_g",
    "rv_edv_ml", "rv_esv_ml", "rv_sv_ml", "rv_ef_percent",
    "lv_edvi_ml_per_m2", "lv_esvi_ml_per_m2", "lv_svi_ml_per_m2", "lv_mass_index_g_per_m2",
    "rv_edvi_ml_per_m2", "rv_esvi_ml_per_m2", "rv_svi_ml_per_m2",
    "lv_cardiac_output_l_per_min", "lv_cardiac_index_l_per_min_per_m2",
)  # fmt: skip
SUBJECT_SUMMARY_KEYS = ("height_cm", "weight_kg", "bsa_m2", "heart_rate_bpm")
PEAK_UNITS = {"ess": "percent", "srs": "per_s", "sre": "per_s"}
"""Unit suffix of the report's peak blocks' columns: ESS in %, SRs and SRe in 1/s."""


def peak_column(peak: str, component: str) -> str:
    """The ``summary.csv`` column of the report's ``peak`` block (``ess``, ``srs``, ``sre``) for
    ``component``: ``<peak>_<component>_<unit>``, e.g. ``ess_radial_percent``, ``srs_radial_per_s``."""
    return f"{peak}_{component}_{PEAK_UNITS[peak]}"


PEAK_KEYS = tuple(peak_column(p, c) for p in PEAK_UNITS for c in COMPONENTS)
TWIST_SUMMARY_KEYS = ("es_twist_deg", "peak_systolic_twist_deg", "es_torsion_deg_per_cm", "peak_untwisting_rate_deg_per_s")
AHA_COMPONENTS = ("radial", "circumferential")
AHA_KEYS = tuple(aha_column(c, s) for c in AHA_COMPONENTS for s in range(1, 18))
STUDY_KEYS = ("frames", "ed_frame", "es_frame", "slice_spacing_mm", "row_spacing_mm", "column_spacing_mm")
"""What was analysed: the frame count, ED and ES (0-based frame numbers of the cardiac cycle: an ACDC
folder's two frames give its Info.cfg ED and ES less one, as the report's ``cycle_frames``) and the voxel
spacing used (the header's, or the study table's / the flags' when given), so that a cohort table
shows a study read with another ES or a lost spacing at a glance."""
SUMMARY_COLUMNS = (("id", "group", "status", "error", "seconds", "input", "quality") + STUDY_KEYS
                   + SUBJECT_SUMMARY_KEYS
                   + VOLUME_KEYS + PEAK_KEYS
                   + TWIST_SUMMARY_KEYS + DYSSYNCHRONY_KEYS + AHA_KEYS)
"""Columns of ``summary.csv``: ``quality`` = the names of the automatic checks that fired
(:mod:`deepstrain.quality`; ``;``-separated, empty = none; the messages are in the study's
report.json), volumes in ml / g / %, ESS in % (``ess_<component>_percent``), SRs and SRe in 1/s
(``srs_<component>_per_s``, ``sre_<component>_per_s``: :func:`peak_column`), twist in deg, torsion in
deg/cm, untwisting rate in deg/s (:mod:`deepstrain.rotation`), dyssynchrony in ms, segments and
CURE (:mod:`deepstrain.dyssynchrony`), AHA values (segment mean at ES) in %
(``aha_<component>_<segment>_percent``: :func:`deepstrain.report.aha_column`). Tables written before
the unit suffixes were added (``ess_radial``, ``aha_radial_3``, ...) are still read by
:mod:`deepstrain.compare` (:data:`deepstrain.compare.LEGACY_COLUMNS`). Empty cell = not available."""

SUMMARY_NAME = "summary.csv"
SETTINGS_NAME = "settings.json"
"""``OUT/settings.json``: what besides the inputs decides the results (:func:`batch_settings`). A re-run
into the same folder must use the same settings, so one table never mixes two analyses."""
BATCH_INFO_NAME = "batch.json"
_TMP_NAME = ".tmp"
RESERVED_IDS = ("figures", _TMP_NAME)
"""Study ids that would name the batch's own folders (group figures, scratch): such a study is failed."""
_LOCK_NAME = ".deepstrain-batch.lock"
_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_BOM = b"\xef\xbb\xbf"
_LABEL_WORDS = re.compile(r"(^|_)(seg|gt|label|labels|mask|segmentation)\d*(_|$)", re.IGNORECASE)


# =========================================================================== discovery
@dataclass(frozen=True)
class Study:
    """One study found under the input folder."""

    id: str
    path: Path
    kind: str  # "acdc", "ukbb", "dicom" or "nifti"
    group: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Analysis options from the study table (:class:`TableRow`), replacing the input's values."""
    table_source: str = ""


def _nifti_stem(name: str) -> str | None:
    low = name.lower()
    for suffix in _NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _is_cine_nifti(path: Path) -> bool:
    """True for a 4D NIfTI with more than one frame, and for a NIfTI whose header cannot be read
    (so that the batch reports it as a failed study instead of ignoring it silently)."""
    import nibabel as nib

    try:
        shape = nib.load(str(path)).shape
    except Exception:
        return True
    return len(shape) == 4 and shape[3] > 1


def read_info_group(info_cfg: Path) -> str | None:
    """The ``Group`` of an ACDC ``Info.cfg`` (None when absent or unreadable: the study's own run
    then reports the file's problem)."""
    try:
        info = read_info_cfg(info_cfg)
    except InputError:
        return None
    group = next((v for k, v in info.items() if k.lower() == "group"), "")
    return group or None


SUBJECT_COLUMNS = ("height_cm", "weight_kg", "heart_rate_bpm")
"""Study-table columns that replace the input's body size and heart rate (cm, kg, beats/min), as
``--height`` / ``--weight`` / ``--heart-rate`` do for one study."""
SPACING_COLUMNS = ("slice_mm", "row_mm", "col_mm")
"""Study-table columns that replace the input's voxel spacing (mm; all three or none), as
``--spacing SLICE ROW COL`` does for one study (files whose header lost it)."""
_UNITLESS = {"height": "height_cm", "weight": "weight_kg", "heart_rate": "heart_rate_bpm", "hr": "heart_rate_bpm",
             "spacing": "slice_mm, row_mm, col_mm"}
_QUANTITIES = {  # first word(s) of a header -> (the column to use, what it holds)
    ("height",): ("height_cm", "the height in cm"),
    ("weight",): ("weight_kg", "the weight in kg"),
    ("heart", "rate"): ("heart_rate_bpm", "the heart rate in beats/min"),
    ("heartrate",): ("heart_rate_bpm", "the heart rate in beats/min"),
    ("hr",): ("heart_rate_bpm", "the heart rate in beats/min"),
    ("rr",): ("heart_rate_bpm", "the heart rate in beats/min (60000 / the RR interval in ms)"),
    ("spacing",): ("slice_mm, row_mm, col_mm", "the voxel spacing in mm"),
}
_SPACING_WORDS = {"slice": "slice_mm", "row": "row_mm", "col": "col_mm", "column": "col_mm"}
_LENGTH_UNITS = {"m", "cm", "mm", "um", "µm", "nm", "in", "inch", "inches", "ft", "px", "pixel", "pixels", "vox", "voxel",
                 "voxels"}


def _column_problem(name: str) -> str | None:
    """Why a study-table header ``name`` (not an accepted column) is refused, or None for a column that is
    ignored: a known quantity with another unit or spelling (``height_m``, ``weight_lb``, ``Height (cm)``,
    ``hr_bpm``, ``rr_ms``, ``spacing_mm``, ``slice_cm``...), which would otherwise be ignored silently."""
    low = name.strip().lower()
    if low in _UNITLESS:
        return f"name the unit in the header ({_UNITLESS[low]})"
    words = tuple(w for w in re.split(r"[^a-z0-9µ]+", low) if w)
    if words == ("heart", "rate"):
        return f"name the unit in the header ({_UNITLESS['heart_rate']})"
    for start, (column, what) in _QUANTITIES.items():
        if words[: len(start)] == start:
            return f"the study table takes {what} as column {column}: rename it (converting its values to that unit)"
    if len(words) == 2 and words[0] in _SPACING_WORDS and words[1] in _LENGTH_UNITS:
        column = _SPACING_WORDS[words[0]]
        return (f"the study table takes the voxel spacing in mm as columns {', '.join(SPACING_COLUMNS)}: "
                f"rename it {column} (converting its values to mm)")
    return None


@dataclass(frozen=True)
class TableRow:
    """What a study table says about one study: its group, and keyword arguments of
    :func:`deepstrain.analyze.analyze_path` (``height_cm``, ``weight_kg``, ``heart_rate_bpm``,
    ``spacing``)."""

    group: str | None
    options: dict[str, Any]
    source: str  # "<table> line N"


def _table_number(path: Path, line: int, sid: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, f"line {line} ({sid}): {name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(path, f"line {line} ({sid}): {name} {text!r} is not a finite number")
    return value


def _read_csv(path: Path, what: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """The header and rows of the CSV ``path``, the rows as ``(line, {header: cell})``, like
    :class:`csv.DictReader` (blank lines skipped; extra cells under the key None, missing cells None).
    ``line`` is the 1-based line of the file where the row starts (blank lines and the lines of
    multi-line quoted cells counted). The header is the first non-blank row (``[]`` for an empty file).

    Raises :class:`InputError` for a missing file, a folder, a file that cannot be read, text that is
    not UTF-8 (a UTF-8 byte order mark is allowed) and a malformed CSV (e.g. a NUL byte)."""
    if path.is_dir():
        raise InputError(path, f"is a folder, not a CSV file (give the {what} itself)")
    if not path.exists():
        raise InputError(path, f"{what} not found")
    if not path.is_file():
        raise InputError(path, f"{what} must be a regular CSV file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(path, f"cannot read the {what}: {exc.strerror or exc}") from None
    bom = len(_BOM) if data.startswith(_BOM) else 0
    try:
        text = data[bom:].decode("utf-8")
    except UnicodeDecodeError as exc:
        offset = bom + exc.start
        line = data.count(b"\n", 0, offset) + 1
        if data.startswith(b"PK\x03\x04"):
            kind = "a zip file (an Excel workbook?), not a CSV text file"
        elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
            kind = "UTF-16 text, not UTF-8"
        else:
            kind = f"not UTF-8 text: byte at offset {offset} (line {line}) is 0x{data[offset]:02x}"
        raise InputError(path, f"{kind}; the {what} must be a UTF-8 CSV (in Excel: Save As 'CSV UTF-8 "
                               f"(Comma delimited)'; or convert it, e.g. iconv -f cp1252 -t utf-8)") from None
    reader = csv.reader(_io.StringIO(text, newline=""))
    header: list[str] | None = None
    rows: list[tuple[int, dict]] = []
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise InputError(path, f"line {reader.line_num}: not a valid CSV row ({exc})") from None
        if not cells:  # a blank line
            continue
        if header is None:
            header = cells
            continue
        row: dict = dict(zip(header, cells))
        if len(cells) > len(header):
            row[None] = cells[len(header):]
        for name in header[len(cells):]:
            row[name] = None
        rows.append((start, row))
    return header or [], rows


def read_study_table(path: str | os.PathLike) -> dict[str, TableRow]:
    """``id -> TableRow`` from a UTF-8 CSV with a header: ``id`` and any of ``group``,
    :data:`SUBJECT_COLUMNS` and :data:`SPACING_COLUMNS` (other columns are ignored, unless their name
    is one of these quantities with another unit or spelling, e.g. ``height_m``, ``weight_lb``,
    ``rr_ms``, ``slice_cm``: refused; an empty cell = not given). A row's line (in messages and in
    :attr:`TableRow.source`) is the 1-based line of the file where the row starts, blank lines counted.

    Raises :class:`InputError` naming the file and line for a missing ``id`` column, a column
    whose unit is not in its name (``height``, ``weight``...) or is not the one taken, an empty or
    repeated id, a value that is not a number or not plausible (:data:`deepstrain.cine.PLAUSIBLE_SUBJECT`;
    spacing positive), a spacing with only some of its three values, and a file that is not UTF-8 text.
    """
    from .cine import subject_value_problem

    path = Path(path)
    fieldnames, rows = _read_csv(path, "study table")
    fields = {(name or "").strip().lower(): name for name in fieldnames}
    if "id" not in fields:
        raise InputError(path, f"study table needs a header with an 'id' column, got {fieldnames}")
    known = ("group", *SUBJECT_COLUMNS, *SPACING_COLUMNS)
    for low, name in fields.items():
        if low not in ("id", *known) and (problem := _column_problem(name)):
            raise InputError(path, f"column {name!r}: {problem}")
    if not any(k in fields for k in known):
        raise InputError(path, f"study table has none of the columns {', '.join(known)}: got {fieldnames}")

    def cell(row: dict, name: str) -> str:
        return (row.get(fields[name]) or "").strip() if name in fields else ""

    out: dict[str, TableRow] = {}
    for line, row in rows:
        if None in row:
            raise InputError(path, f"line {line}: more cells than header columns")
        sid = (row.get(fields["id"]) or "").strip()
        if not sid:
            raise InputError(path, f"line {line}: empty id")
        if sid in out:
            raise InputError(path, f"line {line}: id {sid!r} listed twice")
        options: dict[str, Any] = {}
        for name in SUBJECT_COLUMNS:
            if text := cell(row, name):
                value = _table_number(path, line, sid, name, text)
                if problem := subject_value_problem(name, value):
                    raise InputError(path, f"line {line} ({sid}): {problem}")
                options[name] = value
        texts = [cell(row, name) for name in SPACING_COLUMNS]
        if any(texts):
            if not all(texts):
                raise InputError(path, f"line {line} ({sid}): give all of {', '.join(SPACING_COLUMNS)} or none")
            spacing = tuple(_table_number(path, line, sid, n, t) for n, t in zip(SPACING_COLUMNS, texts))
            if min(spacing) <= 0:
                raise InputError(path, f"line {line} ({sid}): the voxel spacing must be positive, got {spacing} mm")
            options["spacing"] = spacing
        out[sid] = TableRow(cell(row, "group") or None, options, f"{path} line {line}")
    return out


def read_groups_csv(path: str | os.PathLike) -> dict[str, str]:
    """``id -> group`` of a study table (:func:`read_study_table`); an :class:`InputError` when
    no row gives a group."""
    groups = {sid: row.group for sid, row in read_study_table(path).items() if row.group}
    if not groups:
        raise InputError(path, "no row gives a group (needs a 'group' column with values)")
    return groups


def discover_studies(
    input_dir: str | os.PathLike,
    *,
    table: Mapping[str, TableRow] | None = None,
    exclude: Iterable[str | os.PathLike] = (),
) -> list[Study]:
    """Studies under ``input_dir`` sorted by path (see the module docstring for the rules).

    ``table`` (:func:`read_study_table`): its group overrides the ``Group`` of ``Info.cfg``, its
    analysis options (body size, heart rate, spacing) go to the study; ``exclude`` lists folders not to search (the output
    folder). Raises :class:`InputError` if the folder is missing or two
    studies get the same id.
    """
    root = Path(input_dir)
    if not root.exists():
        raise InputError(root, "input folder not found")
    if not root.is_dir():
        raise InputError(root, "input must be a folder of studies")
    root = root.absolute()
    skip = {Path(p).absolute() for p in exclude}
    found: list[tuple[str, Path, str, str | None]] = []
    not_cines: list[str] = []  # NIfTI files not 4D of several frames, not named as labels: said, not analysed

    def rel_id(p: Path, stem: str | None = None) -> str:
        if p == root:
            return root.name
        parts = list(p.relative_to(root).parts)
        if stem is not None:
            parts[-1] = stem
        return "__".join(parts)

    def walk(d: Path) -> None:
        try:
            entries = sorted(d.iterdir(), key=lambda e: e.name)
        except OSError as exc:
            raise InputError(d, f"cannot list folder: {exc.strerror or exc}") from exc
        if (d / "Info.cfg").is_file():
            found.append((rel_id(d), d, "acdc", read_info_group(d / "Info.cfg")))
            return
        if is_ukbb_folder(d):  # its long-axis cines are not short-axis studies
            found.append((rel_id(d), d, "ukbb", None))
            return
        files = [e for e in entries if e.is_file()]
        if any(looks_like_dicom(f) for f in files):
            found.append((rel_id(d), d, "dicom", None))
            return
        for f in files:
            stem = _nifti_stem(f.name)
            if stem is not None and not _LABEL_WORDS.search(stem):
                if _is_cine_nifti(f):
                    found.append((rel_id(f, stem), f, "nifti", None))
                else:
                    not_cines.append(str(f.relative_to(root)))
        for sub in entries:
            if sub.is_dir() and not sub.name.startswith(".") and sub.absolute() not in skip:
                walk(sub)

    walk(root)
    if not_cines:
        warnings.warn(f"{root}: {len(not_cines)} NIfTI file(s) that are not 4D cines of several frames left out: "
                      f"{first_few(not_cines)}", DeepStrainWarning, stacklevel=2)
    seen: dict[str, Path] = {}
    studies = []
    for sid, path, kind, grp in sorted(found, key=lambda t: str(t[1])):
        if sid in seen:
            raise InputError(path, f"has the same study id {sid!r} as {seen[sid]}; rename one of them")
        seen[sid] = path
        row = (table or {}).get(sid)
        if row is None:
            studies.append(Study(sid, path, kind, grp))
        else:
            studies.append(Study(sid, path, kind, row.group or grp, dict(row.options), row.source))
    return studies


# =========================================================================== results
def load_report(folder: str | os.PathLike) -> dict | None:
    """The report dict of a finished study folder, or None if it has no valid ``report.json``."""
    p = Path(folder) / "report.json"
    try:
        rep = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rep, dict) or not all(isinstance(rep.get(k), dict) for k in ("frames", "volumetrics", "ess")):
        return None
    return rep


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    try:
        x = float(v)
    except (TypeError, ValueError):
        return ""
    if not math.isfinite(x):
        return ""
    return repr(round(x, 4))


def summary_row(
    study: Study, report: Mapping | None, *, status: str, error: str = "", seconds: float | None = None
) -> dict[str, str]:
    """One ``summary.csv`` row (all cells as text) from a report dict (None for a failure)."""
    row = {k: "" for k in SUMMARY_COLUMNS}
    row.update(id=study.id, group=study.group or "", status=status, error=error, input=str(study.path),
               seconds="" if seconds is None else f"{seconds:.2f}")
    if report:
        row["quality"] = ";".join(dict.fromkeys(str(q.get("check")) for q in report.get("quality") or []))
        frames = report.get("frames") or {}
        cycle = cycle_frames(frames)
        ed, es = (None if frames.get(k) is None else cycle[int(frames[k])] for k in ("ed", "es"))
        spacing = (report.get("provenance") or {}).get("voxel_spacing_mm") or [None] * 3
        for key, value in zip(STUDY_KEYS, (frames.get("count"), ed, es, *spacing)):
            row[key] = "" if value is None else (str(value) if isinstance(value, int) else _fmt(value))
        for block, keys in (("subject", SUBJECT_SUMMARY_KEYS), ("volumetrics", VOLUME_KEYS),
                            ("twist", TWIST_SUMMARY_KEYS), ("dyssynchrony", DYSSYNCHRONY_KEYS)):
            vals = report.get(block) or {}
            for k in keys:
                row[k] = _fmt(vals.get(k))
        for p in PEAK_UNITS:
            vals = report.get(p) or {}
            for c in COMPONENTS:
                row[peak_column(p, c)] = _fmt(vals.get(c))
        aha = report.get("aha") or {}
        for c in AHA_COMPONENTS:
            segs = aha.get(f"{c}_percent") or {}
            for s in range(1, 18):
                row[aha_column(c, s)] = _fmt(segs.get(str(s)))
    return row


def write_summary(rows: Iterable[Mapping[str, str]], path: str | os.PathLike) -> Path:
    """Write ``rows`` as CSV atomically (temp file in the same folder, then ``os.replace``)."""
    path = Path(path)
    buf = _io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(SUMMARY_COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: r.get(k, "") for k in SUMMARY_COLUMNS})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="", encoding="utf-8") as f:
            f.write(buf.getvalue())
            f.flush()
            os.fsync(f.fileno())
        apply_umask(tmp)  # mkstemp creates the file private (0600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def read_summary(path: str | os.PathLike) -> list[dict[str, str]]:
    """Rows of a ``summary.csv`` (or any UTF-8 CSV with an ``id`` column) as dicts of text. A bad row
    is named by the 1-based line of the file where it starts (blank lines counted)."""
    path = Path(path)
    header, rows = _read_csv(path, "table")
    if "id" not in header:
        raise InputError(path, f"not a study table: needs an 'id' column, got {header or None}")
    for line, r in rows:
        if None in r or any(v is None for v in r.values()):
            raise InputError(path, f"line {line}: wrong number of cells")
    return [r for _, r in rows]


# =========================================================================== one study
def analyze_study(input_path: str, out_dir: str, **kwargs: Any) -> dict:
    """The default per-study function: :func:`deepstrain.analyze.analyze_path` (imported lazily)."""
    from .analyze import analyze_path

    return analyze_path(input_path, out_dir, **kwargs)


def _one_line(exc: BaseException) -> str:
    text = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
    return " ".join(text.split()) or type(exc).__name__


def _limit_threads(threads: int | None) -> None:
    if not threads:
        return
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def run_one(
    study: Study,
    out_dir: str,
    study_fn: StudyFn | None = None,
    study_kwargs: Mapping[str, Any] | None = None,
    threads: int | None = None,
) -> dict[str, str]:
    """Analyse one study into ``out_dir/<id>`` atomically and return its summary row.

    Never raises for a failing study: the row has status ``failed`` and the error message.
    Runs in a worker process or a Dask worker; everything it needs comes in its arguments.
    """
    fn = study_fn or analyze_study
    out = Path(out_dir)
    final = out / study.id
    t0 = time.perf_counter()
    done = done_row(study, final, table_given=bool(study.table_source))  # finished meanwhile by another run?
    if done is not None:
        return done
    if final.exists():
        return summary_row(study, None, status="failed", seconds=0.0,
                           error=f"{final}: exists but holds no valid report.json; remove it to analyse this study")
    tmp_root = out / _TMP_NAME
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{study.id}-", dir=tmp_root))
    work = tmp / "study"
    try:
        _limit_threads(threads)
        with warnings.catch_warnings():
            # the analysis keeps its warnings in report.json; printed here they would break the progress bar
            warnings.simplefilter("ignore")
            kwargs = dict(study_kwargs or {})
            if study.options:  # the study table's values, as --height / --weight / --heart-rate / --spacing
                kwargs.update(study.options, given_source=f"study table {study.table_source}")
            fn(str(study.path), str(work), **kwargs)
        report = load_report(work)
        if report is None:
            raise RuntimeError(f"the study function wrote no valid report.json into {work}")
        seconds = time.perf_counter() - t0
        info = {"id": study.id, "input": str(study.path), "kind": study.kind, "group": study.group,
                "seconds": round(seconds, 3), "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (work / BATCH_INFO_NAME).write_text(json.dumps(info, indent=1) + "\n")
        try:
            os.replace(work, final)
        except OSError:
            other = load_report(final)
            if other is None:
                raise
            report = other  # finished meanwhile by another worker (e.g. an orphan of a killed run)
        return summary_row(study, report, status="ok", seconds=seconds)
    except Exception as exc:  # a failing study is recorded and does not stop the others
        return summary_row(study, None, status="failed", error=_one_line(exc), seconds=time.perf_counter() - t0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def table_mismatch(study: Study, report: Mapping, table_given: bool = True) -> str | None:
    """Why a finished study's report disagrees with the study table's values for it (None if it
    does not): the table changed after the study was analysed. With ``table_given``, a value the
    report took from a study table that the table no longer gives (cell emptied, column or row
    gone) is a change too; without a table (a re-run with no ``--table``) the values stand."""
    subject = report.get("subject") or {}
    prov = report.get("provenance") or {}
    for name, value in study.options.items():
        if name == "spacing":
            what, where = "the voxel spacing (mm)", prov.get("voxel_spacing_source", "the input")
            new, old = tuple(value), prov.get("voxel_spacing_mm")
        else:
            what, where = name, (subject.get("sources") or {}).get(name, "the input")
            new, old = (value,), (None if subject.get(name) is None else [subject[name]])
        same = old is not None and len(old) == len(new) and all(
            math.isclose(float(o), v, rel_tol=1e-6, abs_tol=1e-9) for o, v in zip(old, new))
        if not same:
            was = "without it" if old is None else f"with {_joined(old)} (from {where})"
            return f"{what} is {_joined(new)} in the study table ({study.table_source}) but the study was analysed {was}"
    # a value the table gave when the study was analysed, and gives no more (cell emptied, column or row gone)
    for name in (*SUBJECT_COLUMNS, "spacing") if table_given else ():
        if name in study.options:
            continue
        if name == "spacing":
            what, where, old = "the voxel spacing (mm)", prov.get("voxel_spacing_source"), prov.get("voxel_spacing_mm")
        else:
            what, where = name, (subject.get("sources") or {}).get(name)
            old = None if subject.get(name) is None else [subject[name]]
        if old is not None and str(where or "").startswith("study table"):
            now = (f"the study table ({study.table_source}) gives none" if study.table_source
                   else "the study table has no line for it")
            return f"the study was analysed with {what} {_joined(old)} from the {where}, but {now}"
    return None


def _joined(values: Iterable[Any]) -> str:
    return " x ".join(f"{float(v):g}" for v in values)


def done_row(study: Study, folder: Path, table_given: bool = True) -> dict[str, str] | None:
    """The summary row of a study already analysed into ``folder`` (None when it is not done): ``ok``,
    or ``failed`` when the study table now gives other values than the analysis used (the folder is
    kept; the message says to remove it to analyse the study again)."""
    report = load_report(folder)
    if report is None:
        return None
    if problem := table_mismatch(study, report, table_given):
        return summary_row(study, None, status="failed",
                           error=f"{folder}: {problem}; remove {folder} to analyse it again with the table's values")
    return summary_row(study, report, status="ok", seconds=_recorded_seconds(folder))


def _recorded_seconds(folder: Path) -> float | None:
    try:
        return float(json.loads((folder / BATCH_INFO_NAME).read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# =========================================================================== progress
def _hms(seconds: float) -> str:
    s = int(round(max(0.0, seconds)))
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressBar:
    """Plain-text progress on a stream: counts, failures, elapsed and estimated time left.

    On a terminal the line is redrawn in place; otherwise one line per finished study.
    """

    def __init__(self, total: int, skipped: int = 0, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.skipped, self.width = total, skipped, width
        self.ok = self.failed = 0
        self.stream = stream
        self.t0 = time.monotonic()
        self.tty = bool(stream is not None and getattr(stream, "isatty", lambda: False)())

    @property
    def done(self) -> int:
        return self.skipped + self.ok + self.failed

    def line(self, last: str = "") -> str:
        frac = self.done / self.total if self.total else 1.0
        filled = int(round(frac * self.width))
        elapsed = time.monotonic() - self.t0
        run = self.ok + self.failed
        left = self.total - self.done
        eta = "--:--:--" if run == 0 else _hms(elapsed / run * left)
        text = (f"[{'#' * filled}{'.' * (self.width - filled)}] {self.done}/{self.total} "
                f"ok {self.ok} failed {self.failed} skipped {self.skipped} | elapsed {_hms(elapsed)} left {eta}")
        return f"{text} | {last}" if last else text

    def update(self, row: Mapping[str, str]) -> None:
        if row.get("status") == "ok":
            self.ok += 1
        else:
            self.failed += 1
        last = f"{row.get('id')} {row.get('status')}"
        if row.get("seconds"):
            last += f" {row['seconds']} s"
        self._emit(self.line(last))

    def start(self) -> None:
        self._emit(self.line("starting"))

    def finish(self) -> None:
        if self.stream is not None and self.tty:
            self.stream.write("\n")
            self.stream.flush()

    def _emit(self, text: str) -> None:
        if self.stream is None:
            return
        if self.tty:
            self.stream.write("\r" + text[:200].ljust(120))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


# =========================================================================== the batch
@dataclass
class BatchResult:
    """What a batch did. ``rows`` are the summary rows in study order."""

    out_dir: Path
    rows: list[dict[str, str]]
    n_ok: int
    n_failed: int
    n_skipped: int
    seconds: float
    figures: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 0 if self.n_failed == 0 else 1


class _Lock:
    """An exclusive lock on ``OUT/.deepstrain-batch.lock`` (no two batches write one folder)."""

    def __init__(self, out: Path) -> None:
        self.path = out / _LOCK_NAME
        self.f: Any = None

    def __enter__(self) -> "_Lock":
        self.f = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; rely on the user
            return self
        try:
            fcntl.flock(self.f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.f.close()
            raise InputError(self.path.parent, "another deepstrain batch is writing into this folder") from None
        return self

    def __exit__(self, *exc: object) -> None:
        self.f.close()


def _init_worker(threads: int | None, parent_pid: int) -> None:
    """Pool worker start-up: thread limits, allocator setting, and exit if the batch process dies (kill -9)."""
    from .memory import keep_freed_memory

    _limit_threads(threads)
    keep_freed_memory()

    def watch() -> None:
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watch, name="deepstrain-parent-watch", daemon=True).start()


def batch_settings(study_fn: StudyFn | None, study_kwargs: Mapping[str, Any] | None) -> dict:
    """The per-study function and, for the default analysis (``study_fn=None``), its options (e.g.
    ``tta``, ``precision``, ``weights_dir``) and the sha256 of the networks' weights it will use,
    from the weights folder's manifest (an absent or unreadable manifest is an :class:`InputError`
    naming it). A custom ``study_fn`` is recorded by name only: its options are its own business."""
    if study_fn is not None:
        return {"study_fn": f"{study_fn.__module__}.{study_fn.__qualname__}"}
    from .weights import NETWORKS, provenance

    options = {k: (str(Path(v).absolute()) if isinstance(v, (str, os.PathLike)) and k.endswith("_dir") else v)
               for k, v in sorted((study_kwargs or {}).items())}
    used = provenance(NETWORKS, options.get("weights_dir"))
    settings = {"study_fn": "deepstrain.analyze.analyze_path", "options": options,
                "weights_sha256": {n: used[n]["sha256"] for n in NETWORKS}}
    return json.loads(json.dumps(settings))  # plain JSON types, comparable with a stored copy


def _read_legacy_settings(stored: dict) -> dict:
    """Stored batch settings in today's terms: ``tta`` was a bool before the test-time flips of the
    ED and ES frames became the default (false = no flips, ``"off"``; true = every frame, ``"all"``)."""
    options = stored.get("options")
    if isinstance(options, dict) and isinstance(options.get("tta"), bool):
        stored = {**stored, "options": {**options, "tta": "all" if options["tta"] else "off"}}
    return stored


def _check_settings(out: Path, settings: dict) -> None:
    """Store ``settings`` in a new batch folder; refuse a folder whose stored settings differ."""
    path = out / SETTINGS_NAME
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InputError(path, f"unreadable batch settings ({exc})") from exc
        stored = _read_legacy_settings(stored)
        if stored != settings:
            changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
            old, new = stored.get("options") or {}, settings.get("options") or {}
            options = [f"{k}: {old.get(k)!r} stored, {new.get(k)!r} now" for k in sorted(set(old) | set(new))
                       if old.get(k) != new.get(k)]
            raise InputError(path, f"this folder holds results made with other settings ({', '.join(changed)} "
                                   f"differ{': ' + '; '.join(options) if options else ''}): use a new output "
                                   "folder, or the settings stored here")
        return
    write_atomically(path, path.with_name(path.name + ".tmp"), lambda tmp: tmp.write_text(json.dumps(settings, indent=1) + "\n"))


def run_batch(
    input_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    table_csv: str | os.PathLike | None = None,
    study_fn: StudyFn | None = None,
    study_kwargs: Mapping[str, Any] | None = None,
    threads: int | None = None,
    limit: int | None = None,
    progress: TextIO | None = sys.stderr,
    figures: bool = True,
) -> BatchResult:
    """Analyse every study under ``input_dir`` into ``out_dir`` (see the module docstring).

    ``study_fn(input_path, out_dir, **study_kwargs)`` analyses one study and writes ``report.json``
    into ``out_dir`` (default :func:`analyze_study`); with ``workers > 1`` or a ``scheduler`` it must
    be picklable (a module-level function). ``threads``: torch/OpenMP threads per worker (default
    ``max(1, cores // workers)`` locally, 1 on Dask). ``limit``: only the first N studies.
    ``progress``: stream for the progress bar (None for silence). The settings
    (:func:`batch_settings`) are stored in ``OUT/settings.json``; re-running into a folder made
    with other settings is refused.
    """
    t0 = time.perf_counter()
    if workers < 1:
        raise InputError(out_dir, f"--workers must be at least 1, got {workers}")
    out = Path(out_dir).absolute()
    if out.exists() and not out.is_dir():
        raise InputError(out, "output path exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not _is_batch_folder(out):
        there = marker_kind(out)
        raise InputError(out, "output folder is not empty and is not a batch output folder ("
                              + (f"it holds a deepstrain {there} output" if there else f"no {MARKER} file")
                              + "): choose another --out")
    table = read_study_table(table_csv) if table_csv is not None else None
    studies = discover_studies(input_dir, table=table, exclude=[out])
    if not studies:
        raise InputError(input_dir, "no studies found (ACDC folders with Info.cfg, UK Biobank subject folders, "
                                    "4D NIfTI files or DICOM cine folders)")
    if table:  # against every study found (--limit only chooses which to analyse now)
        unknown = sorted(set(table) - {s.id for s in studies})
        if unknown:  # a typing error in an id: the row's values would be lost silently
            warnings.warn(f"{table_csv}: {len(unknown)} id(s) of the study table are not among the studies found in "
                          f"{input_dir}: {first_few(unknown)}",
                          DeepStrainWarning, stacklevel=2)
    if limit is not None:
        studies = studies[: max(0, int(limit))]
        if not studies:
            raise InputError(input_dir, f"--limit {limit}: no study to analyse")
    settings = batch_settings(study_fn, study_kwargs)
    out.mkdir(parents=True, exist_ok=True)
    write_marker(out, "batch")
    with _Lock(out):
        _check_settings(out, settings)
        shutil.rmtree(out / _TMP_NAME, ignore_errors=True)  # leftovers of a killed run
        rows: dict[str, dict[str, str]] = {}
        todo: list[Study] = []
        stale: list[dict[str, str]] = []  # done, but the study table now disagrees
        for s in studies:
            if s.id in RESERVED_IDS:  # its folder would be the figures' (or the scratch) folder
                stale.append(_failed_row(s, f"the study id {s.id!r} names the batch's own {s.id} folder: rename "
                                            f"the input ({s.path})"))
                continue
            row = done_row(s, out / s.id, table_given=table is not None)
            if row is None:
                todo.append(s)
            elif row["status"] == "ok":
                rows[s.id] = row
            else:
                stale.append(row)
        order = {s.id: i for i, s in enumerate(studies)}
        summary_path = out / SUMMARY_NAME
        bar = ProgressBar(len(studies), skipped=len(rows), stream=progress)

        def record(row: dict[str, str]) -> None:
            rows[row["id"]] = row
            write_summary(sorted(rows.values(), key=lambda r: order[r["id"]]), summary_path)
            bar.update(row)

        write_summary(sorted(rows.values(), key=lambda r: order[r["id"]]), summary_path)
        bar.start()
        for row in stale:
            record(row)
        if todo:
            if scheduler:
                _run_dask(todo, out, scheduler, study_fn, study_kwargs, threads or 1, record)
            elif workers == 1:
                for s in todo:
                    record(run_one(s, str(out), study_fn, study_kwargs, threads))
            else:
                n_threads = threads or max(1, (os.cpu_count() or 1) // workers)
                _run_pool(todo, out, workers, study_fn, study_kwargs, n_threads, record)
        bar.finish()
        shutil.rmtree(out / _TMP_NAME, ignore_errors=True)
        ordered = sorted(rows.values(), key=lambda r: order[r["id"]])
        made: list[str] = []
        if figures and any(r["status"] == "ok" for r in ordered):
            from .groups import make_group_figures

            made = [str(p) for p in make_group_figures(out)]
    n_ok = sum(r["status"] == "ok" for r in ordered)
    return BatchResult(out, ordered, n_ok=n_ok - bar.skipped, n_failed=len(ordered) - n_ok,
                       n_skipped=bar.skipped, seconds=time.perf_counter() - t0, figures=made)


def _is_batch_folder(out: Path) -> bool:
    """A folder a batch wrote: its marker says batch (a marker written before markers named their
    kind: when the batch's settings and summary are beside it), or (batches before markers) both the
    settings and the summary; never just a ``summary.csv`` of the user's, nor another command's
    output (an analysis, a comparison)."""
    return marker_kind(out) == "batch" or ((out / SETTINGS_NAME).is_file() and (out / SUMMARY_NAME).is_file())


def _failed_row(study: Study, message: str) -> dict[str, str]:
    return summary_row(study, None, status="failed", error=message)


def _run_pool(todo, out, workers, study_fn, study_kwargs, threads, record) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold torch threads

    def pool(n: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                                   initargs=(threads, os.getpid()))

    # a worker that dies (crash, out of memory) breaks the whole pool: every study then unfinished
    # is a suspect, and each is run again alone in its own process, so that only the study that
    # kills its process is failed, and the others get done
    suspects: set[str] = set()
    with _stopped_on_interrupt(pool(min(workers, len(todo)))) as p:
        futures = {p.submit(run_one, s, str(out), study_fn, study_kwargs, threads): s for s in todo}
        for fut in as_completed(futures):
            s = futures[fut]
            try:
                record(fut.result())
            except BrokenProcessPool:
                suspects.add(s.id)
            except Exception as exc:  # e.g. the study function cannot be pickled
                record(_failed_row(s, _one_line(exc)))
    for s in (s for s in todo if s.id in suspects):
        with _stopped_on_interrupt(pool(1)) as p:
            try:
                record(p.submit(run_one, s, str(out), study_fn, study_kwargs, threads).result())
            except BrokenProcessPool:
                record(_failed_row(s, "the process analysing this study died (crash or out of memory), also when "
                                      "it ran alone"))
            except Exception as exc:
                record(_failed_row(s, _one_line(exc)))


@contextlib.contextmanager
def _stopped_on_interrupt(executor: ProcessPoolExecutor) -> Iterator[ProcessPoolExecutor]:
    """The pool, shut down on the way out; on Ctrl-C or SIGTERM (:class:`KeyboardInterrupt`, as the
    ``deepstrain`` command turns SIGTERM into) at once: the studies queued are cancelled and the
    workers stopped, instead of waiting for every study queued (the shutdown of a ``with`` block).
    Their unfinished folders are in ``OUT/.tmp``, which the next run clears."""
    interrupted = False
    try:
        yield executor
    except KeyboardInterrupt:
        interrupted = True
        workers = list((getattr(executor, "_processes", None) or {}).values())  # no public accessor
        executor.shutdown(wait=False, cancel_futures=True)  # (forgets the processes)
        for proc in workers:
            proc.terminate()
        raise
    finally:
        if not interrupted:
            executor.shutdown(wait=True)


def _run_dask(todo, out, address, study_fn, study_kwargs, threads, record) -> None:
    try:
        from distributed import Client, as_completed as dask_as_completed
    except ImportError as exc:  # pragma: no cover - optional dependency
        raise InputError(address, "--scheduler needs dask[distributed] (pip install 'deepstrain[cohort]')") from exc
    try:
        client = Client(address, set_as_default=False, timeout="20s")
    except Exception as exc:
        raise InputError(address, f"cannot connect to the Dask scheduler: {_one_line(exc)}") from exc
    try:
        futures = {}
        for s in todo:
            fut = client.submit(run_one, s, str(out), study_fn, study_kwargs, threads, pure=False,
                                key=f"deepstrain-{s.id}-{os.getpid()}-{time.time_ns()}")
            futures[fut] = s
        for fut in dask_as_completed(list(futures), loop=client.loop):
            s = futures[fut]
            try:
                record(fut.result())
            except Exception as exc:  # the worker died or the task could not run
                record(_failed_row(s, f"Dask task failed: {_one_line(exc)}"))
    finally:
        client.close()
