"""The analysis report: ``report.json`` (keys of ``notes/strain_spec.md``), ``strain.csv``,
``results.csv`` and ``slices.csv``.

Floats are rounded to 4 decimals; NaN, infinities and missing values are written as JSON
``null`` (empty cells in the CSV). Frames are 0-based.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .dyssynchrony import KEYS as DYSSYNCHRONY_KEYS
from .errors import InputError
from .rotation import LEVELS
from .strain import COMPONENTS
from .volumetrics import BSA_FORMULA

DECIMALS = 4

TWIST_CURVES = ("twist_deg", "twist_rate_deg_per_s")
TWIST_KEYS = TWIST_CURVES + ("es_twist_deg", "peak_systolic_twist_deg", "es_torsion_deg_per_cm",
                             "peak_untwisting_rate_deg_per_s", "level_separation_mm")

SUBJECT_KEYS = ("height_cm", "weight_kg", "bsa_m2", "heart_rate_bpm")


def aha_column(component: str, segment: int) -> str:
    """The table column of one AHA segment's strain (percent): ``aha_<component>_<segment>_percent``,
    in ``strain.csv`` (per frame) and the batch ``summary.csv`` (at ES)."""
    return f"aha_{component}_{segment}_percent"


CONVENTIONS = (
    "Strain is the Lagrangian Green-Lagrange strain E = (F^T F - I)/2 relative to end-diastole (ED), "
    "F = I + du/dX with X the ED position in RAS world mm (voxel spacing and orientation applied), "
    "reported in percent (100*E). Cardiac frame at ED: long axis l from base to apex (line through "
    "the per-slice LV centres), radial r from the slice's LV centre perpendicular to l, "
    "circumferential c = l x r. Sign convention: radial positive = wall thickening; circumferential "
    "and longitudinal negative = shortening. Global strain = mean over the ED myocardium voxels. "
    "Strain rate = time derivative of the global strain (as a fraction) in 1/s (central differences "
    "on the frame times, one-sided at the first and last frame; null without timing or with fewer "
    "than 3 frames). ESS = global strain at "
    "ES (percent); SRs / SRe = signed strain rate of largest magnitude in systole (ED..ES) / early "
    "diastole (first half of the frames after ES). Rotation of the basal (AHA 1-6), mid (7-12) and "
    "apical (13-16) myocardium about l in degrees (least-squares rotation of the level's ED voxels, "
    "each slice's translation removed), positive = counter-clockwise viewed from the apex; twist = "
    "apical - basal rotation (deg), twist rate in deg/s; torsion = ES twist / distance along l between "
    "the basal and apical levels' ED centroids (deg/cm); peak untwisting rate = twist rate of largest "
    "magnitude in early diastole. Dyssynchrony: time to peak (AHA 1-16) = time after ED of a "
    "segment's largest radial thickening / circumferential shortening over the recorded cycle "
    "(parabola-refined); indices over the 12 basal and mid segments: SD of the times to peak (ms); septal-lateral delay = mean time to peak of "
    "segments 5, 6, 11, 12 minus 2, 3, 8, 9 (ms, positive = lateral later); post-systolic segments = "
    "circumferential peaks more than one frame interval after the ES frame; CURE = (1 + S1/S0)^-1/2 of the basal "
    "and mid rings' circumferential strain over systole (1 = synchronous). AHA 17 segments: signed angle from the septal "
    "direction (bisector of the RV insertion points), anterior at negative angles when viewed with "
    "l base to apex; aha = segment mean at ES. Volumes in ml by voxel counting (LV = LV cavity, "
    "RV = RV cavity), LV mass in g = ED myocardium volume x 1.05 g/ml, EF in percent; indexed values "
    "(ml/m^2, g/m^2) divide by the body surface area (Mosteller) of the subject's height and weight, "
    "cardiac output (l/min) = LV stroke volume x heart rate, null where these are unknown. "
    "Frames are 0-based; times in ms after the R wave."
)


def _num(x: Any) -> float | None:
    if x is None:
        return None
    v = float(x)
    if not math.isfinite(v):
        return None
    return round(v, DECIMALS)


def cycle_frames(frames: Mapping[str, Any]) -> list[int]:
    """The frame of the cardiac cycle (0-based) of each of a report's frames (its ``frames`` block;
    reports written before ``cycle_frames`` was recorded: the frames are the cycle's)."""
    return [int(f) for f in (frames.get("cycle_frames") or range(int(frames.get("count") or 0)))]


def json_safe(x: Any) -> Any:
    """``x`` with every non-finite float (NaN, inf) in nested dicts/lists replaced by None."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x


def _list(a: Any) -> list[float | None] | None:
    if a is None:
        return None
    return [_num(v) for v in np.asarray(a, dtype=np.float64).reshape(-1)]


def build_report(
    *,
    study: str,
    n_frames: int,
    ed: int,
    es: int,
    times_ms: np.ndarray,
    volumetrics: Mapping[str, float | None],
    subject: Mapping[str, Any] | None = None,
    curves: Mapping[str, np.ndarray] | None = None,
    rates: Mapping[str, np.ndarray] | None = None,
    peaks: Mapping[str, Mapping[str, float | None]] | None = None,
    aha_curves: Mapping[str, Mapping[int, np.ndarray | None]] | None = None,
    rotations: Mapping[str, np.ndarray | None] | None = None,
    twist: Mapping[str, Any] | None = None,
    dyssynchrony: Mapping[str, Any] | None = None,
    warnings: list[str] | None = None,
    cycle_frames: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Assemble the JSON-safe report dict.

    ``frames.ed`` / ``frames.es`` index the frames of the outputs (the rows of ``strain.csv``);
    ``frames.cycle_frames`` is each frame's 0-based number in the cardiac cycle (``cycle_frames``;
    default 0, 1, ...), the numbering ``--ed`` / ``--es`` take. They differ only for inputs that
    hold some frames of a cycle (an ACDC folder with ED and ES: ``[0, 11]``).

    ``curves`` and ``rates``: ``{"radial", "circumferential", "longitudinal"}`` -> ``(T,)``
    (percent; 1/s); ``peaks`` as returned by :func:`deepstrain.strain.peak_values`;
    ``aha_curves``: component -> ``{1..17: (T,) or None}``; ``rotations`` and ``twist`` as
    returned by :func:`deepstrain.rotation.level_rotations` and
    :func:`deepstrain.rotation.twist_summary`; ``dyssynchrony`` as returned by
    :func:`deepstrain.dyssynchrony.dyssynchrony`; ``subject``: ``height_cm``, ``weight_kg``,
    ``heart_rate_bpm``, ``bsa_m2`` and ``sources`` (where each came from). Missing parts become
    ``null``.
    """
    subj = dict(subject or {})
    times = np.asarray(times_ms, dtype=np.float64).reshape(-1)
    if times.size != n_frames:
        raise ValueError("times_ms needs one value per frame")
    aha_es: dict[str, dict[str, float | None]] = {}
    aha_cur: dict[str, dict[str, list[float | None] | None]] = {}
    for comp in COMPONENTS:
        segs = None if aha_curves is None else aha_curves.get(comp)
        aha_es[f"{comp}_percent"] = {
            str(s): (None if segs is None or segs.get(s) is None else _num(np.asarray(segs[s])[es]))
            for s in range(1, 18)
        }
        aha_cur[f"{comp}_percent"] = {
            str(s): (None if segs is None else _list(segs.get(s))) for s in range(1, 18)
        }

    def peak(kind: str) -> dict[str, float | None]:
        return {c: (None if peaks is None else _num(peaks[kind].get(c))) for c in COMPONENTS}

    return {
        "study": str(study),
        "frames": {"count": int(n_frames), "ed": int(ed), "es": int(es), "times_ms": _list(times),
                   "cycle_frames": [int(k) for k in (range(int(n_frames)) if cycle_frames is None else cycle_frames)]},
        "volumetrics": {k: _num(v) for k, v in volumetrics.items()},
        "subject": {**{k: _num(subj.get(k)) for k in SUBJECT_KEYS}, "bsa_formula": BSA_FORMULA,
                    "sources": {str(k): str(v) for k, v in (subj.get("sources") or {}).items()}},
        "global_strain": {
            f"{c}_percent": (None if curves is None else _list(curves.get(c))) for c in COMPONENTS
        },
        "global_strain_rate": {
            f"{c}_per_s": (None if rates is None else _list(rates.get(c))) for c in COMPONENTS
        },
        "ess": peak("ess"),
        "srs": peak("srs"),
        "sre": peak("sre"),
        "aha": aha_es,
        "aha_curves": aha_cur,
        "rotation": {f"{lv}_deg": _list((rotations or {}).get(lv)) for lv in LEVELS},
        "twist": {k: (_list if k in TWIST_CURVES else _num)((twist or {}).get(k)) for k in TWIST_KEYS},
        "dyssynchrony": _dyssynchrony_block(dyssynchrony),
        "conventions": CONVENTIONS,
        "warnings": [str(w) for w in (warnings or [])],
    }


SLICE_COLUMNS = ("slice", "position_mm", "lv_ed_ml", "lv_es_ml", "myo_ed_ml", "myo_es_ml", "rv_ed_ml", "rv_es_ml")
"""Columns of the report's ``slices`` block and of ``slices.csv``."""


def slices_block(ed_ml: Mapping[str, np.ndarray], es_ml: Mapping[str, np.ndarray],
                 position_mm: np.ndarray | None) -> dict[str, list]:
    """The report's ``slices`` block: per slice of the stack (array index ``slice``, 0-based), its
    ``position_mm`` along the long axis from the stack's most basal slice (0) towards the apex
    (None without a cardiac frame), and the LV cavity, myocardium and RV volumes (ml) at ED and ES
    (``ed_ml`` / ``es_ml``: ``"lv"``, ``"myo"``, ``"rv"`` -> ``(Z,)``, from
    :func:`deepstrain.volumetrics.slice_volumes_ml`). They show which slices make up EDV and
    ESV: a basal slice with cavity at ED and none at ES is a common reason two EFs differ."""
    n = len(np.asarray(ed_ml["lv"]))
    pos = [None] * n if position_mm is None else _list(np.asarray(position_mm, np.float64) - np.min(position_mm))
    out: dict[str, list] = {"slice": list(range(n)), "position_mm": pos}  # type: ignore[dict-item]
    for key in ("lv", "myo", "rv"):  # the order of SLICE_COLUMNS
        out[f"{key}_ed_ml"], out[f"{key}_es_ml"] = _list(ed_ml[key]), _list(es_ml[key])  # type: ignore[assignment]
    return out


def _dyssynchrony_block(d: Mapping[str, Any] | None) -> dict[str, Any]:
    d = d or {}
    out: dict[str, Any] = {k: _num(d.get(k)) for k in DYSSYNCHRONY_KEYS}
    if out["post_systolic_segments"] is not None:
        out["post_systolic_segments"] = int(out["post_systolic_segments"])
    for comp in ("radial", "circumferential"):
        ttp = d.get(f"ttp_{comp}_ms") or {}
        out[f"ttp_{comp}_ms"] = {str(s): _num(ttp.get(s)) for s in range(1, 17)}
    return out


_UNITS = (("_l_per_min_per_m2", "l/min/m2"), ("_ml_per_m2", "ml/m2"), ("_g_per_m2", "g/m2"),
          ("_l_per_min", "l/min"), ("_deg_per_cm", "deg/cm"), ("_deg_per_s", "deg/s"), ("_per_s", "1/s"),
          ("_percent", "%"), ("_ml", "ml"), ("_g", "g"), ("_cm", "cm"), ("_kg", "kg"), ("_m2", "m2"),
          ("_bpm", "beats/min"), ("_deg", "deg"), ("_mm", "mm"), ("_ms", "ms"))


def _split_unit(key: str) -> tuple[str, str]:
    for suffix, unit in _UNITS:
        if key.endswith(suffix):
            return key[: -len(suffix)], unit
    return key, ""


def scalar_results(report: Mapping[str, Any]) -> list[tuple[str, float | None, str]]:
    """The report's single-number results as ``(quantity, value, unit)`` rows, in a fixed order:
    subject, volumes, ESS, SRs, SRe, twist, dyssynchrony (None where not computed)."""
    rows: list[tuple[str, float | None, str]] = []
    for block in ("subject", "volumetrics"):
        for key, value in (report.get(block) or {}).items():
            if value is None or isinstance(value, (int, float)):  # not the formula text or the sources
                name, unit = _split_unit(key)
                if unit:
                    rows.append((name, value, unit))
    for peak, unit in (("ess", "%"), ("srs", "1/s"), ("sre", "1/s")):
        vals = report.get(peak) or {}
        rows.extend((f"{peak}_{c}", vals.get(c), unit) for c in COMPONENTS)
    twist = report.get("twist") or {}
    for key in TWIST_KEYS:
        if key not in TWIST_CURVES:
            name, unit = _split_unit(key)
            rows.append((name, twist.get(key), unit))
    dys = report.get("dyssynchrony") or {}
    for key in DYSSYNCHRONY_KEYS:
        name, unit = _split_unit(key)
        unit = unit or {"post_systolic_segments": "segments", "cure": "1"}[key]
        rows.append((name, dys.get(key), unit))
    return rows


def _cell(v: float | None) -> str:
    return "" if v is None else repr(v)


def write_report(
    report: Mapping[str, Any],
    out_dir: str | os.PathLike,
    volume_curves: Mapping[str, np.ndarray] | None = None,
) -> tuple[Path, ...]:
    """Write ``report.json``, ``strain.csv``, ``results.csv`` and (when the report has its
    ``slices`` block, see :func:`slices_block`) ``slices.csv`` into the existing folder ``out_dir``;
    returns their paths in that order.

    ``results.csv``: the single-number results of :func:`scalar_results`, one per row, with the
    columns quantity, value (empty: not computed) and unit.

    ``strain.csv`` has one row per frame: frame, time_ms, global strain (percent), strain rates
    (1/s), the volumes when ``volume_curves`` (``{"lv", "myo", "rv"}`` -> ``(T,)`` ml) is given,
    the level rotations ``rotation_<level>_deg``, ``twist_deg`` and ``twist_rate_deg_per_s``,
    then ``aha_<component>_<segment>_percent`` (:func:`aha_column`). ``slices.csv`` has one row per slice with the
    columns of :data:`SLICE_COLUMNS`. Refuses to replace existing files.
    """
    out = Path(out_dir)
    if not out.is_dir():
        raise InputError(out, "output folder does not exist")
    json_path, csv_path, results_path = out / "report.json", out / "strain.csv", out / "results.csv"
    slices = report.get("slices")
    paths = (json_path, csv_path, results_path) + ((out / "slices.csv",) if slices else ())
    for p in paths:
        if p.exists():
            raise InputError(p, "file exists; refusing to overwrite it")
    text = json.dumps(report, indent=2, allow_nan=False)

    n = int(report["frames"]["count"])
    columns: list[tuple[str, list[float | None]]] = [
        ("frame", list(range(n))),  # type: ignore[arg-type]
        ("time_ms", report["frames"]["times_ms"]),
    ]
    empty = [None] * n
    for c in COMPONENTS:
        columns.append((f"global_{c}_percent", report["global_strain"][f"{c}_percent"] or empty))
    for c in COMPONENTS:
        columns.append((f"{c}_rate_per_s", report["global_strain_rate"][f"{c}_per_s"] or empty))
    if volume_curves is not None:
        for key in ("lv", "myo", "rv"):
            vals = _list(volume_curves[key]) or empty
            if len(vals) != n:
                raise ValueError(f"volume curve {key!r} has {len(vals)} values for {n} frames")
            columns.append((f"{key}_volume_ml", vals))
    rotation = report.get("rotation") or {}
    for lv in LEVELS:
        columns.append((f"rotation_{lv}_deg", rotation.get(f"{lv}_deg") or empty))
    twist = report.get("twist") or {}
    for key in TWIST_CURVES:
        columns.append((key, twist.get(key) or empty))
    for c in COMPONENTS:
        for s in range(1, 18):
            columns.append((aha_column(c, s), report["aha_curves"][f"{c}_percent"][str(s)] or empty))

    with open(json_path, "x", encoding="utf-8") as fh:
        fh.write(text + "\n")
    with open(csv_path, "x", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow([name for name, _ in columns])
        for i in range(n):
            w.writerow([str(vals[i]) if name == "frame" else _cell(vals[i]) for name, vals in columns])
    with open(results_path, "x", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["quantity", "value", "unit"])
        for name, value, unit in scalar_results(report):
            w.writerow([name, _cell(value), unit])
    if slices:
        with open(paths[3], "x", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(SLICE_COLUMNS)
            for i in range(len(slices["slice"])):
                w.writerow([str(slices[c][i]) if c == "slice" else _cell(slices[c][i]) for c in SLICE_COLUMNS])
    return paths
