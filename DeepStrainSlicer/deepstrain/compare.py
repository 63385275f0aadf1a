"""Compare two study tables (e.g. two ``summary.csv``: scan-rescan, two readers, two versions).

Rows are paired by ``id`` (only rows with status ``ok`` when the table has a ``status`` column).
Every numeric column present in both tables is a metric (global values, and the AHA segment
columns ``aha_<component>_<segment>_percent``); an empty cell or a usual missing-value mark (:data:`MISSING`:
``NA``, ``N/A``, ``nan``, ``-``, ...) is a missing value, dropped pairwise. A column with numbers
and other text is left out with a warning, and listed in ``agreement.json`` (``skipped_columns``); for each, :func:`deepstrain.stats.agreement` gives
Bland-Altman bias / SD / 95 % limits (difference ``B - A``), ICC(A,1) = ICC(2,1) with its
McGraw & Wong 95 % CI, and the relative changes ``100 (B - A) / ((A + B) / 2)`` (mean and mean
absolute). Study ids in one table only, and columns in one table only, are left out with a
warning naming the table, and listed in ``agreement.json``; a cell ``inf`` is not a number. A column
in both tables that no study has a value for in both (e.g. a heart rate given for one run only) is
listed in ``agreement.json`` (``unpaired_columns``), with a warning when either table has values.
Outputs, written atomically: ``agreement.csv`` (one row per metric),
``agreement.json`` (the same plus the formulas and the unmatched ids and columns) and Bland-Altman plots
``bland_altman_global.png``, ``bland_altman_aha_radial.png``, ``bland_altman_aha_circumferential.png``.

Tables written before the column names carried their units are read under today's names
(:data:`LEGACY_COLUMNS`), so an old ``summary.csv`` pairs its columns with a new one's:
``ess_<component>`` -> ``ess_<component>_percent``, ``srs_<component>`` -> ``srs_<component>_per_s``,
``sre_<component>`` -> ``sre_<component>_per_s`` (component radial, circumferential or longitudinal) and
``aha_<component>_<segment>`` -> ``aha_<component>_<segment>_percent`` (radial or circumferential,
segments 1 to 17). A legacy name is left as it is in a table that also has its new name. The columns
renamed are listed per table in ``agreement.json`` (``renamed_columns``, old -> new name); warnings
and outputs use the new names.
"""
from __future__ import annotations

import csv
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from . import stats
from .batch import AHA_COMPONENTS, COMPONENTS, PEAK_UNITS, STUDY_KEYS, peak_column
from .errors import InputError, first_few
from .io import DeepStrainWarning
from .report import aha_column, json_safe
from .outputs import atomic_output_dir

MISSING = {"", "na", "n/a", "nan", "none", "null", "-", "--", "."}
"""Cell texts (case-insensitive) read as a missing value."""
NON_METRIC = {"id", "group", "status", "error", "seconds", "input", "quality", *STUDY_KEYS}
"""Columns that name or describe a study (:data:`deepstrain.batch.STUDY_KEYS`) rather than measure it: not compared."""
LEGACY_COLUMNS = {
    **{f"{p}_{c}": peak_column(p, c) for p in PEAK_UNITS for c in COMPONENTS},
    **{f"aha_{c}_{s}": aha_column(c, s) for c in AHA_COMPONENTS for s in range(1, 18)},
}
"""Column names of ``summary.csv`` before the unit suffixes (``ess_radial``, ``srs_radial``,
``sre_radial``, ``aha_radial_3``, ...) -> today's names (``ess_radial_percent``, ``srs_radial_per_s``,
``sre_radial_per_s``, ``aha_radial_3_percent``, ...), applied when a table is read."""
TABLE_COLUMNS = ("metric", "n", "mean_a", "mean_b", "bias", "sd_diff", "loa_low", "loa_high", "icc",
                 "icc_ci_low", "icc_ci_high", "relative_change_percent", "abs_relative_change_percent")


def _table(path: Path) -> tuple[list[str], dict[str, dict[str, str]], dict[str, str]]:
    """The table's columns (legacy names read as today's, :data:`LEGACY_COLUMNS`), its rows with status
    ok by id, and the columns renamed (old -> new)."""
    from .batch import read_summary

    rows = read_summary(path)
    if not rows:
        raise InputError(path, "the table has no rows (a header only, or empty)")
    renamed = {c: LEGACY_COLUMNS[c] for c in rows[0] if c in LEGACY_COLUMNS and LEGACY_COLUMNS[c] not in rows[0]}
    if renamed:
        rows = [{renamed.get(k, k): v for k, v in r.items()} for r in rows]
    cols = list(rows[0].keys())
    out: dict[str, dict[str, str]] = {}
    for r in rows:
        if "status" in r and r["status"] != "ok":
            continue
        sid = r["id"].strip()
        if sid in out:
            raise InputError(path, f"id {sid!r} appears more than once")
        out[sid] = r
    return cols, out, renamed


def _number(text: str) -> float | None:
    """Float of a cell; NaN for a missing value (:data:`MISSING`); None if it is not a (finite) number:
    ``inf`` is not a measurement, and would otherwise be dropped like a missing value."""
    t = (text or "").strip()
    if t.lower() in MISSING:
        return math.nan
    try:
        v = float(t)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def _one_sided(a_csv: Path, b_csv: Path, a: list[str], b: list[str], what: str) -> dict[str, list[str]]:
    """The items of ``a`` not in ``b`` and of ``b`` not in ``a`` (ids, or columns), each table's
    named in a warning (a typing error would otherwise drop a study or a column silently)."""
    only = {"a": [x for x in a if x not in set(b)], "b": [x for x in b if x not in set(a)]}
    for key, name in (("a", a_csv), ("b", b_csv)):
        if only[key]:
            warnings.warn(f"{name}: {len(only[key])} {what}: {first_few(only[key])}", DeepStrainWarning, stacklevel=3)
    return only


def compare_tables(a_csv: str | os.PathLike, b_csv: str | os.PathLike, out_dir: str | os.PathLike, *,
                   overwrite: bool = False, multiplier: float = 1.96) -> dict:
    """Agreement of table B against table A per metric (see the module docstring); returns the JSON dict."""
    a_csv, b_csv = Path(a_csv), Path(b_csv)
    cols_a, rows_a, renamed_a = _table(a_csv)
    cols_b, rows_b, renamed_b = _table(b_csv)
    for name, table in ((a_csv, rows_a), (b_csv, rows_b)):
        if not table:
            raise InputError(name, "no row with status ok")
    ids = sorted(set(rows_a) & set(rows_b))
    if not ids:
        raise InputError(b_csv, f"no study id in common with {a_csv} (among rows with status ok)")
    only = _one_sided(a_csv, b_csv, sorted(rows_a), sorted(rows_b), "study id(s) not in the other table, left out")
    columns_only = _one_sided(a_csv, b_csv, [c for c in cols_a if c not in NON_METRIC],
                              [c for c in cols_b if c not in NON_METRIC], "column(s) not in the other table, not compared")
    metrics: list[dict] = []
    skipped: dict[str, str] = {}
    unpaired: dict[str, str] = {}  # numeric in both, but never in both for one study
    at_fault: list[Path] = []  # the tables with cells that are not numbers, in the order A, B
    values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for col in cols_a:
        if col in NON_METRIC or col not in cols_b:
            continue
        a = [_number(rows_a[i][col]) for i in ids]
        b = [_number(rows_b[i][col]) for i in ids]
        if any(v is None for v in a + b):
            if any(v is not None and math.isfinite(v) for v in a + b):  # numbers and text: say so
                for name, rows, vals in ((a_csv, rows_a, a), (b_csv, rows_b, b)):
                    bad = [f"{i} ({rows[i][col]!r})" for i, v in zip(ids, vals) if v is None]
                    if bad:
                        at_fault += [name] if name not in at_fault else []
                        why = f"not a finite number in {first_few(bad)}"
                        skipped[col] = f"{name}: {why}" if col not in skipped else f"{skipped[col]}; {name}: {why}"
                        warnings.warn(f"{name}: column {col!r} left out: {why}", DeepStrainWarning, stacklevel=2)
            continue  # a text column
        a_arr, b_arr = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if not np.any(np.isfinite(a_arr) & np.isfinite(b_arr)):
            n_a, n_b = int(np.isfinite(a_arr).sum()), int(np.isfinite(b_arr).sum())
            unpaired[col] = f"no study with a value in both tables (values: {n_a} in A, {n_b} in B)"
            if n_a or n_b:  # e.g. a heart rate given for one run only
                warnings.warn(f"{b_csv}: column {col!r} not compared with {a_csv}: {unpaired[col]}",
                              DeepStrainWarning, stacklevel=2)
            continue
        values[col] = (a_arr, b_arr)
        metrics.append({"metric": col, **stats.agreement(a_arr, b_arr, multiplier=multiplier)})
    if not metrics:
        if skipped:  # every column in common was left out: name the file(s) at fault
            also = f" (and in {at_fault[1]})" if len(at_fault) > 1 else ""
            raise InputError(at_fault[0], f"every column in common with the other table was left out for cells that "
                                          f"are not numbers here{also}: "
                             + "; ".join(f"{c} ({why})" for c, why in skipped.items()))
        raise InputError(b_csv, f"no numeric column in common with {a_csv}")
    result = {
        "a": str(a_csv), "b": str(b_csv), "n_pairs": len(ids), "ids": ids,
        "only_in_a": only["a"], "only_in_b": only["b"],
        "columns_only_in_a": columns_only["a"], "columns_only_in_b": columns_only["b"],
        "skipped_columns": skipped,
        "unpaired_columns": unpaired,
        "renamed_columns": {"a": renamed_a, "b": renamed_b},
        "definitions": {
            "difference": "B - A",
            "bland_altman": f"bias = mean(B - A); sd_diff = SD(B - A), n - 1; limits = bias -/+ {multiplier} sd_diff",
            "icc": "ICC(A,1) = ICC(2,1): two-way random, absolute agreement, single measurement "
                   "(McGraw & Wong 1996; Shrout & Fleiss 1979), 95 % CI by the McGraw & Wong approximate F method",
            "relative_change": stats.RELATIVE_CHANGE_FORMULA,
        },
        "metrics": metrics,
    }
    with atomic_output_dir(out_dir, overwrite=overwrite, inputs=(a_csv, b_csv), kind="compare") as tmp:
        with open(tmp / "agreement.csv", "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(TABLE_COLUMNS)
            for m in metrics:
                w.writerow([m["metric"], m["n"]] + [_cell(m[k]) for k in TABLE_COLUMNS[2:]])
        (tmp / "agreement.json").write_text(json.dumps(json_safe(result), indent=1) + "\n")
        global_cols = [m["metric"] for m in metrics if not m["metric"].startswith("aha_")]
        _ba_grid(values, global_cols, multiplier, "Bland-Altman, global metrics (B - A)",
                 tmp / "bland_altman_global.png")
        for comp in AHA_COMPONENTS:
            seg_cols = [aha_column(comp, s) for s in range(1, 18) if aha_column(comp, s) in values]
            _ba_grid(values, seg_cols, multiplier, f"Bland-Altman, AHA segments, {comp} strain at ES (%)",
                     tmp / f"bland_altman_aha_{comp}.png")
    return result


def _cell(v: float) -> str:
    return "" if v is None or not math.isfinite(v) else repr(round(float(v), 6))




def _ba_grid(values: dict, cols: list[str], multiplier: float, title: str, path: Path) -> Path | None:
    cols = [c for c in cols if np.sum(np.isfinite(values[c][0]) & np.isfinite(values[c][1])) >= 2]
    if not cols:
        return None
    from matplotlib.figure import Figure

    ncol = min(5, len(cols))
    nrow = int(math.ceil(len(cols) / ncol))
    fig = Figure(figsize=(2.8 * ncol, 2.5 * nrow + 0.5), dpi=90)
    axes = fig.subplots(nrow, ncol, squeeze=False).ravel()
    for ax, col in zip(axes, cols):
        a, b = values[col]
        keep = np.isfinite(a) & np.isfinite(b)
        a, b = a[keep], b[keep]
        ba = stats.bland_altman(a, b, multiplier)
        ax.plot((a + b) / 2, b - a, "o", ms=3, color="tab:blue")
        ax.axhline(ba.bias, color="k", lw=1)
        for y in (ba.loa_low, ba.loa_high):
            ax.axhline(y, color="tab:red", lw=0.8, ls="--")
        ax.set_title(f"{col}\nbias {ba.bias:.2f}, LoA {ba.loa_low:.2f} to {ba.loa_high:.2f}", fontsize=7)
        ax.set_xlabel("mean of A and B", fontsize=7)
        ax.set_ylabel("B - A", fontsize=7)
        ax.tick_params(labelsize=6)
    for ax in axes[len(cols):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    return path
