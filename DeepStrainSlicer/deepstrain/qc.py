"""A one-page quality-control picture of one analysed study (``deepstrain analyze --qc``).

For checking a cohort without opening each study in Slicer: the contours on the images, the
curves and the polar maps, with the key numbers in the title.

Layout (``qc.png``, 1500 x 900 pixels):

* left, two rows (ED, ES) x three columns (a basal, the middle and an apical slice of the ED
  myocardium): the cine cropped to the heart (labels at ED and ES, plus :data:`MARGIN_MM`), with
  the contours of the LV cavity (red), the epicardium (green: myocardium and cavity) and the RV
  cavity (blue). Slices are shown in the radiological convention, as near as quarter turns and
  flips of the stored slice allow (:func:`display_view`): the patient's left on the right of the
  picture and anterior up, whatever order the file stores rows and columns in; with their pixel
  aspect; the grey scale is fixed over the cine (1st to 99.5th percentile). Basal and apical
  follow the long axis of the cardiac frame (base -> apex) when there is one, else the slice order;
* right: global strain curves, LV / myocardium / RV volume curves (ED and ES marked), and the AHA
  polar maps of radial and circumferential strain at ES (:func:`deepstrain.groups.draw_bullseye`).

Drawn with matplotlib (Agg, no display); the same analysis gives the same PNG bytes.
"""
from __future__ import annotations

import os
import textwrap
from pathlib import Path

import numpy as np

from .pipeline import Analysis

MARGIN_MM = 15.0
"""Margin (mm) around the heart's bounding box in the image panels."""
COMPONENT_COLORS = {"radial": (0.85, 0.20, 0.20), "circumferential": (0.20, 0.40, 0.85),
                    "longitudinal": (0.15, 0.60, 0.25)}
"""Colour of each strain component in every picture (also the Slicer module's charts)."""
VOLUME_COLORS = {"lv": (0.85, 0.25, 0.25), "myo": (0.25, 0.60, 0.30), "rv": (0.25, 0.45, 0.85)}
"""Colour of each volume curve (keys of ``Analysis.volume_curves``)."""
VOLUME_NAMES = {"lv": "LV", "myo": "myocardium", "rv": "RV"}
CONTOURS = ((3, (0.9, 0.15, 0.15), "LV cavity"), ((2, 3), (0.15, 0.75, 0.25), "epicardium"),
            (1, (0.2, 0.45, 0.95), "RV cavity"))


def time_axis(report: dict) -> tuple[np.ndarray, str]:
    """The frame times (ms) of a report and their axis label; frame numbers when the input has no timing."""
    t = np.array([np.nan if v is None else v for v in report["frames"]["times_ms"]], dtype=float)
    if np.all(np.isfinite(t)):
        return t, "time (ms)"
    return np.arange(report["frames"]["count"], dtype=float), "frame"


def plot_components(ax, t: np.ndarray, values: dict, unit_suffix: str) -> int:
    """Plot the global curve of each strain component (``values[f"{comp}_{unit_suffix}"]``, a list
    with None for missing frames, or None) in its colour; returns how many were drawn."""
    drawn = 0
    for comp, colour in COMPONENT_COLORS.items():
        v = (values or {}).get(f"{comp}_{unit_suffix}")
        if v is not None:
            ax.plot(t, [np.nan if a is None else a for a in v], "o-", ms=3, color=colour, label=comp)
            drawn += 1
    return drawn


def plot_volumes(ax, t: np.ndarray, volume_curves: dict[str, np.ndarray]) -> None:
    """Plot the LV, myocardium and RV volume curves (ml) in their colours, from zero up."""
    for key, colour in VOLUME_COLORS.items():
        ax.plot(t, np.asarray(volume_curves[key], dtype=float), "o-", ms=3, color=colour, label=VOLUME_NAMES[key])
    ax.set_ylabel("volume (ml)")
    ax.set_ylim(bottom=0.0)


def mark_ed_es(ax, t: np.ndarray, ed: int, es: int, names: bool = True) -> None:
    """ED (dashed) and ES (dotted) lines, optionally named at the top, and a light grid."""
    for f, name, ls in ((ed, "ED", "--"), (es, "ES", ":")):
        ax.axvline(t[f], color="black", ls=ls, lw=1.2)
        if names:
            ax.text(t[f], 1.0, f" {name}", transform=ax.get_xaxis_transform(), va="top", fontsize=8)
    ax.grid(alpha=0.3)


def middle_slice(labels_ed: np.ndarray) -> int:
    """Middle slice of the ED myocardium (label 2); the middle of the volume if there is none.

    Between two middle slices, the one with more myocardium (then more LV cavity), so that the
    choice does not depend on the order in which the slices are stored (a scene saved and loaded
    again may hold them reversed). Used by every picture of a study (here and in Slicer exports)."""
    k = np.nonzero((labels_ed == 2).any(axis=(1, 2)))[0]
    n = labels_ed.shape[0]
    lo, hi = ((int(k[0]) + int(k[-1])) // 2, (int(k[0]) + int(k[-1]) + 1) // 2) if k.size else ((n - 1) // 2, n // 2)
    if lo == hi:
        return lo
    score = [(int((labels_ed[i] == 2).sum()), int((labels_ed[i] == 3).sum())) for i in (lo, hi)]
    return hi if score[1] > score[0] else lo


def qc_slices(analysis: Analysis) -> list[tuple[str, int]]:
    """(name, slice index) of the basal, middle and apical slices shown: the first and last slice
    with ED myocardium, ordered base -> apex along the cardiac frame's long axis, and
    :func:`middle_slice`."""
    lab = analysis.labels[analysis.ed]
    k = np.nonzero((lab == 2).any(axis=(1, 2)))[0]
    if k.size == 0:
        k = np.arange(lab.shape[0])
    first, last = int(k[0]), int(k[-1])
    if analysis.frame is not None:
        g = analysis.cine.geometry
        along = float(analysis.frame.long_axis @ (g.direction[:, 0] * g.spacing[0]))
        if along < 0:  # increasing slice index goes towards the base
            first, last = last, first
    return [("basal", first), ("mid", middle_slice(lab)), ("apical", last)]


def _heart_box(analysis: Analysis) -> tuple[slice, slice]:
    lab = analysis.labels[[analysis.ed, analysis.es]] > 0
    g = analysis.cine.geometry
    rows, cols = np.nonzero(lab.any(axis=(0, 1)))
    ny, nx = lab.shape[-2:]
    if rows.size == 0:
        return slice(0, ny), slice(0, nx)
    # (a spacing read back from a file as 1.4999999 must not add a pixel: the same picture after a reload)
    mr, mc = (int(np.ceil(MARGIN_MM / s - 1e-6)) for s in g.spacing[1:])
    return (slice(max(int(rows.min()) - mr, 0), min(int(rows.max()) + mr + 1, ny)),
            slice(max(int(cols.min()) - mc, 0), min(int(cols.max()) + mc + 1, nx)))


_PATIENT_LEFT = np.array([-1.0, 0.0, 0.0])  # RAS
_ANTERIOR = np.array([0.0, 1.0, 0.0])
_SUPERIOR = np.array([0.0, 0.0, 1.0])


def display_view(direction: np.ndarray) -> tuple[bool, bool, bool]:
    """How to turn a stored slice (rows, columns) for the radiological convention.

    ``direction``: the 3x3 RAS direction matrix (columns: slice, row, column axes). Returns
    ``(transpose, flip_rows, flip_cols)``, applied in that order by :func:`to_display`: of the 8
    quarter turns and flips, the one whose picture-right is closest to the patient's left and
    picture-up closest to anterior (superior breaks ties). Deterministic.
    """
    e_row, e_col = np.asarray(direction, dtype=np.float64)[:, 1], np.asarray(direction, dtype=np.float64)[:, 2]
    best, best_score = (False, False, False), -np.inf
    for transpose in (False, True):
        down0, right0 = (e_col, e_row) if transpose else (e_row, e_col)
        for flip_rows in (False, True):
            for flip_cols in (False, True):
                up = down0 if flip_rows else -down0
                right = -right0 if flip_cols else right0
                score = right @ _PATIENT_LEFT + up @ _ANTERIOR + 1e-3 * (up @ _SUPERIOR)
                if score > best_score + 1e-12:
                    best, best_score = (transpose, flip_rows, flip_cols), score
    return best


def to_display(slice2d: np.ndarray, view: tuple[bool, bool, bool]) -> np.ndarray:
    """``slice2d`` (rows, columns) turned as :func:`display_view` says."""
    transpose, flip_rows, flip_cols = view
    a = np.swapaxes(slice2d, 0, 1) if transpose else slice2d  # trailing axes (e.g. RGB) stay
    if flip_rows:
        a = a[::-1]
    if flip_cols:
        a = a[:, ::-1]
    return a


def _fmt(v, unit: str, digits: int = 1) -> str:
    return "n/a" if v is None else f"{v:.{digits}f} {unit}".strip()


def qc_figure(analysis: Analysis, path: str | os.PathLike) -> Path:
    """Write the QC picture of ``analysis`` to ``path`` (PNG) and return the path."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    from .groups import draw_bullseye

    rep, cine = analysis.report, analysis.cine
    ed, es = analysis.ed, analysis.es
    fig = Figure(figsize=(15, 9), dpi=100)
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, 5, width_ratios=[1, 1, 1, 1.25, 1.25], hspace=0.35, wspace=0.3)

    # images with contours
    data = cine.data
    sample = data[:, :: max(1, data.shape[1] // 4)]
    lo, hi = (float(v) for v in np.percentile(sample, [1.0, 99.5]))
    rows, cols = _heart_box(analysis)
    sp = cine.geometry.spacing
    view = display_view(cine.geometry.direction)
    aspect = sp[2] / sp[1] if view[0] else sp[1] / sp[2]  # height / width of a displayed pixel
    for r, (phase, frame) in enumerate((("ED", ed), ("ES", es))):
        for c, (name, z) in enumerate(qc_slices(analysis)):
            ax = fig.add_subplot(grid[r, c])
            img = to_display(data[frame, z, rows, cols], view)
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, aspect=aspect,
                      interpolation="nearest")
            lab = to_display(analysis.labels[frame, z, rows, cols], view)
            for value, colour, _ in CONTOURS:
                mask = np.isin(lab, value).astype(float)
                if mask.any() and not mask.all():
                    ax.contour(mask, levels=[0.5], colors=[colour], linewidths=1.2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{phase} (frame {frame}), {name} slice {z}", fontsize=9)
    legend = fig.add_subplot(grid[2, 0:3])
    legend.axis("off")
    for i, (_, colour, name) in enumerate(CONTOURS):
        legend.plot([], [], color=colour, lw=2, label=name)
    legend.legend(loc="upper left", ncol=3, fontsize=9, frameon=False)

    def wrapped(items: list[str], limit: int) -> list[str]:
        lines = [textwrap.fill(f"- {w}", width=110, subsequent_indent="  ", max_lines=3, placeholder=" ...")
                 for w in items]
        return lines[:limit] + ([f"- and {len(lines) - limit} more (report.json)"] if len(lines) > limit else [])

    findings = wrapped([f"{q['check']}: {q['message']}" for q in rep.get("quality") or []], 3)
    notes = wrapped(list(rep.get("warnings") or []), 3)
    text = "\n".join((["quality checks:"] + findings if findings else ["quality checks: no finding"])
                     + (["warnings:"] + notes if notes else ["no warnings"]))
    legend.text(0.0, 0.75, text, va="top", fontsize=8, transform=legend.transAxes)

    # curves
    t, xlabel = time_axis(rep)
    ax = fig.add_subplot(grid[0, 3:5])
    ax.set_ylabel("global strain (%)")
    ax.axhline(0, color="0.6", lw=0.8)
    if plot_components(ax, t, rep.get("global_strain"), "percent"):
        ax.legend(fontsize=8, loc="best")
    else:
        ax.text(0.5, 0.5, "strain not computed (see warnings)", transform=ax.transAxes, ha="center")
    ax2 = fig.add_subplot(grid[1, 3:5], sharex=ax)
    plot_volumes(ax2, t, analysis.volume_curves)
    ax2.set_xlabel(xlabel)
    ax2.legend(fontsize=8, loc="best")
    mark_ed_es(ax, t, ed, es)
    mark_ed_es(ax2, t, ed, es, names=False)

    # polar maps at ES
    cmap = colormaps["RdBu_r"]
    for i, comp in enumerate(("radial", "circumferential")):
        values = {int(s): v for s, v in ((rep.get("aha") or {}).get(f"{comp}_percent") or {}).items()}
        finite = [abs(v) for v in values.values() if v is not None]
        lim = max(finite + [1e-6])
        pax = fig.add_subplot(grid[2, 3 + i])
        draw_bullseye(pax, values, cmap=cmap, norm=Normalize(-lim, lim), title=f"{comp} strain at ES (%)")
    reference = (rep.get("aha_reference") or {}).get("septum_from")
    if reference:
        fig.text(0.78, 0.03, f"AHA segments oriented by the {reference}", ha="center", fontsize=8)

    vol, ess = rep.get("volumetrics") or {}, rep.get("ess") or {}
    fig.suptitle(
        f"{cine.name}: LV EDV {_fmt(vol.get('lv_edv_ml'), 'ml')}, ESV {_fmt(vol.get('lv_esv_ml'), 'ml')}, "
        f"EF {_fmt(vol.get('lv_ef_percent'), '%')}, mass {_fmt(vol.get('lv_mass_g'), 'g')}, "
        f"RV EDV {_fmt(vol.get('rv_edv_ml'), 'ml')}  |  ESS radial {_fmt(ess.get('radial'), '%')}, "
        f"circumferential {_fmt(ess.get('circumferential'), '%')}, longitudinal {_fmt(ess.get('longitudinal'), '%')}",
        fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=100, metadata={"Software": None})
    return path
