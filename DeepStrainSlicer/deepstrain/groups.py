"""Group figures of a batch: strain and strain-rate curves, AHA polar maps, ESS per group.

Input: the output folder of ``deepstrain batch`` (``summary.csv`` + ``<id>/report.json``); only
studies with status ``ok`` are used. A study's group is the table's ``group`` (ACDC ``Info.cfg`` or
the batch's groups CSV), or ``groups_csv`` here; studies without a group form the group ``none``.

Decisions:

* **Time normalisation.** Curves are put on the fraction of the cardiac cycle from ED,
  ``u = ((frame - ED) mod T) / T`` (frames are assumed to cover one cycle evenly, as in
  retrospectively gated cine), closed periodically (``u = 1`` is ED again) and linearly
  interpolated onto ``n_points`` evenly spaced values of ``u`` in ``[0, 1]``.
* Studies with fewer than :data:`MIN_CYCLE_FRAMES` frames (e.g. ACDC folders holding only ED and
  ES) have no curve: they are left out of the curve figures (their count is in ``groups.json``)
  but are in the ESS plot and the polar maps, which only need values at ES.
* Strain-rate curves use only studies whose report has strain rates (timed inputs).
* Mean and SD over the studies of a group (SD with n - 1; 0 for a single study). Polar maps show
  the group mean of each AHA segment at ES (studies with a null segment are left out of that
  segment); one colour scale, symmetric about 0, for all groups of a component.

Outputs (in ``figures/``): ``strain_curves.png``, ``strain_rate_curves.png`` (when any study has
curves), ``polar_radial.png``, ``polar_circumferential.png``, ``ess_by_group.png``, and
``groups.json`` with every number drawn.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from .errors import InputError, first_few
from .io import DeepStrainWarning
from .outputs import atomic_output_dir

MIN_CYCLE_FRAMES = 6
COMPONENTS = ("radial", "circumferential")
NO_GROUP = "none"

# AHA bullseye layout: (inner radius, outer radius, first segment, number of segments, start angle)
# Angles in degrees counter-clockwise from 3 o'clock; anterior at the top, septum on the left.
_RINGS = ((3.0, 4.0, 1, 6, 60.0), (2.0, 3.0, 7, 6, 60.0), (1.0, 2.0, 13, 4, 45.0))


def cycle_normalise(curve, ed: int, n_points: int = 50) -> np.ndarray:
    """Resample a per-frame curve onto ``n_points`` cycle fractions in [0, 1] starting at ED."""
    y = np.asarray(curve, dtype=np.float64).reshape(-1)
    t = y.size
    u = ((np.arange(t) - int(ed)) % t) / t
    order = np.argsort(u)
    u, y = np.append(u[order], 1.0), np.append(y[order], y[order][0])
    return np.interp(np.linspace(0.0, 1.0, n_points), u, y)


def _values(seq) -> np.ndarray | None:
    if seq is None:
        return None
    a = np.asarray([np.nan if v is None else v for v in seq], dtype=np.float64)
    return None if a.size == 0 or not np.all(np.isfinite(a)) else a


def _mean_sd(stack: list[np.ndarray]) -> dict:
    a = np.asarray(stack, dtype=np.float64)
    sd = a.std(axis=0, ddof=1) if a.shape[0] > 1 else np.zeros(a.shape[1:])
    return {"n": int(a.shape[0]), "mean": a.mean(axis=0).tolist(), "sd": sd.tolist()}


def group_statistics(reports: Mapping[str, Mapping], groups: Mapping[str, str | None], n_points: int = 50) -> dict:
    """Per-group numbers behind the figures (see the module docstring); keys are JSON-ready."""
    out: dict = {"cycle_fraction": np.linspace(0.0, 1.0, n_points).tolist(), "groups": {}}
    names = sorted({groups.get(i) or NO_GROUP for i in reports})
    for g in names:
        ids = [i for i in sorted(reports) if (groups.get(i) or NO_GROUP) == g]
        entry: dict = {"ids": ids, "n": len(ids), "ess": {}, "curves": {}, "rate_curves": {}, "polar": {}}
        for c in COMPONENTS:
            ess = [reports[i].get("ess", {}).get(c) for i in ids]
            vals = [float(v) for v in ess if v is not None]
            entry["ess"][c] = {"values": vals, "mean": float(np.mean(vals)) if vals else None,
                               "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else (0.0 if vals else None)}
            curves, rates = [], []
            for i in ids:
                rep = reports[i]
                frames = rep.get("frames") or {}
                if int(frames.get("count") or 0) < MIN_CYCLE_FRAMES:
                    continue
                ed = int(frames.get("ed") or 0)
                y = _values((rep.get("global_strain") or {}).get(f"{c}_percent"))
                if y is not None:
                    curves.append(cycle_normalise(y, ed, n_points))
                r = _values((rep.get("global_strain_rate") or {}).get(f"{c}_per_s"))
                if r is not None:
                    rates.append(cycle_normalise(r, ed, n_points))
            entry["curves"][f"{c}_percent"] = _mean_sd(curves) if curves else {"n": 0}
            entry["rate_curves"][f"{c}_per_s"] = _mean_sd(rates) if rates else {"n": 0}
            seg_mean, seg_n = {}, {}
            for s in range(1, 18):
                v = [(reports[i].get("aha") or {}).get(f"{c}_percent", {}).get(str(s)) for i in ids]
                v = [float(x) for x in v if x is not None]
                seg_mean[str(s)] = float(np.mean(v)) if v else None
                seg_n[str(s)] = len(v)
            entry["polar"][c] = {"mean": seg_mean, "n": seg_n}
        out["groups"][g] = entry
    return out


# --------------------------------------------------------------------------- drawing
def draw_bullseye(ax, values: Mapping[int, float | None], *, cmap, norm, title: str = "") -> None:
    """AHA 17-segment bullseye on ``ax``: basal ring outside, apex (17) in the centre; anterior at
    the top, septum on the left (segments 2-3, 8-9, 14), lateral on the right. Empty segments grey."""
    from matplotlib.patches import Circle, Wedge

    def colour(v):
        return (0.85, 0.85, 0.85, 1.0) if v is None or not np.isfinite(v) else cmap(norm(v))

    def label(x, y, seg, v):
        txt = "–" if v is None or not np.isfinite(v) else f"{v:.1f}"
        r, g, b, _ = colour(v)
        dark = 0.2126 * r + 0.7152 * g + 0.0722 * b < 0.45  # relative luminance: white text on dark cells
        ax.text(x, y, f"{txt}", ha="center", va="center", fontsize=7, color="white" if dark else "black")
        ax.text(x, y - 0.28, f"{seg}", ha="center", va="center", fontsize=5, color="0.85" if dark else "0.3")

    for r0, r1, first, count, start in _RINGS:
        width = 360.0 / count
        for j in range(count):
            seg = first + j
            a0 = start + j * width
            v = values.get(seg)
            ax.add_patch(Wedge((0, 0), r1, a0, a0 + width, width=r1 - r0, facecolor=colour(v), edgecolor="k", lw=0.6))
            mid = np.deg2rad(a0 + width / 2)
            rm = (r0 + r1) / 2
            label(rm * np.cos(mid), rm * np.sin(mid), seg, v)
    v17 = values.get(17)
    ax.add_patch(Circle((0, 0), 1.0, facecolor=colour(v17), edgecolor="k", lw=0.6))
    label(0, 0.1, 17, v17)
    ax.set_xlim(-4.3, 4.3)
    ax.set_ylim(-4.3, 4.6)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.text(0, 4.3, "anterior", ha="center", va="bottom", fontsize=6)
    ax.text(-4.25, 0, "septal", ha="center", va="center", rotation=90, fontsize=6)
    if title:
        ax.set_title(title, fontsize=9)


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100)


def _save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=100, metadata={"Software": None})
    return path


def _colours(names: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    cm = colormaps["tab10"]
    return {g: cm(i % 10) for i, g in enumerate(names)}


def _curve_figure(stats: dict, key: str, fields: dict[str, str], ylabel: str, path: Path) -> Path | None:
    names = [g for g, e in stats["groups"].items() if any(e[key][f].get("n", 0) > 0 for f in fields)]
    if not names:
        return None
    u = np.asarray(stats["cycle_fraction"])
    col = _colours(list(stats["groups"]))
    fig = _figure(5 * len(fields), 3.8)
    axes = fig.subplots(1, len(fields), squeeze=False)[0]
    for ax, (f, title) in zip(axes, fields.items()):
        for g in names:
            e = stats["groups"][g][key][f]
            if e.get("n", 0) == 0:
                continue
            m, sd = np.asarray(e["mean"]), np.asarray(e["sd"])
            ax.plot(u, m, color=col[g], label=f"{g} (n={e['n']})")
            ax.fill_between(u, m - sd, m + sd, color=col[g], alpha=0.2, lw=0)
        ax.axhline(0, color="0.5", lw=0.5)
        ax.set_xlabel("fraction of the cardiac cycle from ED")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{title}: group mean ± SD", fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _polar_figure(stats: dict, comp: str, path: Path) -> Path:
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    names = list(stats["groups"])
    vals = [v for g in names for v in stats["groups"][g]["polar"][comp]["mean"].values() if v is not None]
    lim = max([abs(v) for v in vals] + [1e-6])
    norm = Normalize(-lim, lim)
    cmap = colormaps["RdBu_r"]
    fig = _figure(3.0 * len(names) + 1.0, 3.4)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, g in zip(axes, names):
        means = {int(s): v for s, v in stats["groups"][g]["polar"][comp]["mean"].items()}
        draw_bullseye(ax, means, cmap=cmap, norm=norm, title=f"{g} (n={stats['groups'][g]['n']})")
    cb = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), fraction=0.04, pad=0.02)
    cb.set_label(f"{comp} strain at ES (%)")
    fig.suptitle(f"AHA 17 segments, group mean of {comp} strain at ES", fontsize=10)
    return _save(fig, path)


def _ess_figure(stats: dict, path: Path) -> Path:
    names = list(stats["groups"])
    col = _colours(names)
    fig = _figure(2.0 + 1.2 * len(names) * 2, 3.8)
    axes = fig.subplots(1, 2, squeeze=False)[0]
    for ax, comp in zip(axes, COMPONENTS):
        data = [stats["groups"][g]["ess"][comp]["values"] for g in names]
        pos = np.arange(1, len(names) + 1)
        ax.boxplot([d if d else [np.nan] for d in data], positions=pos, widths=0.5, showfliers=False)
        for p, g, d in zip(pos, names, data):
            if d:  # evenly spread points (deterministic, no random jitter)
                x = p + (np.linspace(-0.15, 0.15, len(d)) if len(d) > 1 else np.zeros(1))
                ax.plot(x, d, "o", ms=3.5, color=col[g], alpha=0.8)
        ax.set_xticks(pos, [f"{g}\n(n={len(d)})" for g, d in zip(names, data)], fontsize=7)
        ax.axhline(0, color="0.5", lw=0.5)
        ax.set_ylabel(f"global {comp} ESS (%)")
        ax.set_title(f"{comp} end-systolic strain", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


# --------------------------------------------------------------------------- entry point
def make_group_figures(
    batch_dir: str | os.PathLike,
    *,
    out_dir: str | os.PathLike | None = None,
    groups_csv: str | os.PathLike | None = None,
    n_points: int = 50,
    exclude_checks: Sequence[str] = (),
) -> list[Path]:
    """Write the group figures and ``groups.json`` of a batch folder; returns the files written.

    ``out_dir`` (default ``batch_dir/figures``) is replaced atomically; an existing ``out_dir``
    must be empty or a previous figure folder (holding ``groups.json``). ``exclude_checks``: leave
    out the studies whose report has a finding of one of these quality checks
    (:data:`deepstrain.quality.CHECKS`; ``"any"``: any finding); ``groups.json`` lists them under
    ``notes.excluded_by_quality``.
    """
    from .batch import SUMMARY_NAME, load_report, read_groups_csv, read_summary

    batch_dir = Path(batch_dir)
    rows = read_summary(batch_dir / SUMMARY_NAME)
    groups = {r["id"]: (r.get("group") or None) for r in rows}
    if groups_csv is not None:
        given = read_groups_csv(groups_csv)
        unknown = sorted(set(given) - set(groups))
        if unknown and len(unknown) == len(given):
            raise InputError(Path(groups_csv), f"none of its ids is a study of {batch_dir / SUMMARY_NAME}: "
                                               f"{first_few(unknown)}")
        if unknown:  # a typing error in an id: that study would keep its old group silently
            warnings.warn(f"{groups_csv}: {len(unknown)} id(s) are not studies of {batch_dir / SUMMARY_NAME}: "
                          f"{first_few(unknown)}", DeepStrainWarning, stacklevel=2)
        groups.update({k: v for k, v in given.items() if k in groups})
    from .quality import CHECKS

    unknown = sorted(set(exclude_checks) - set(CHECKS) - {"any"})
    if unknown:
        raise ValueError(f"unknown quality checks {unknown}; known: {', '.join(CHECKS)} or 'any'")
    reports, excluded = {}, {}
    for r in rows:
        if r.get("status", "ok") != "ok":
            continue
        rep = load_report(batch_dir / r["id"])
        if rep is None:
            raise InputError(batch_dir / r["id"] / "report.json", "missing or not a valid report")
        fired = sorted({str(q.get("check")) for q in rep.get("quality") or []})
        hit = fired if "any" in exclude_checks else [c for c in fired if c in exclude_checks]
        if hit:
            excluded[r["id"]] = hit
            continue
        reports[r["id"]] = rep
    if not reports:
        raise InputError(batch_dir / SUMMARY_NAME, "no successfully analysed study to plot"
                         + (f" ({len(excluded)} left out by the quality checks)" if excluded else ""))
    out = Path(out_dir) if out_dir is not None else batch_dir / "figures"
    if out.is_dir() and any(out.iterdir()) and not (out / "groups.json").is_file():
        raise InputError(out, "folder exists, is not empty and is not a previous figure folder")
    stats = group_statistics(reports, groups, n_points)
    n_short = {g: sum(1 for i in e["ids"] if int((reports[i].get("frames") or {}).get("count") or 0) < MIN_CYCLE_FRAMES)
               for g, e in stats["groups"].items()}
    stats["notes"] = {
        "time_normalisation": "u = ((frame - ED) mod T) / T, periodic, linear interpolation",
        "min_cycle_frames": MIN_CYCLE_FRAMES,
        "studies_without_curves": n_short,
        "sd": "sample SD (n - 1); 0 for one study",
        "excluded_by_quality": {"checks": sorted(exclude_checks), "studies": excluded},
    }
    written: list[str] = []
    with atomic_output_dir(out, overwrite=True, kind="groups") as tmp:
        for made in (
            _curve_figure(stats, "curves", {"radial_percent": "radial strain", "circumferential_percent":
                          "circumferential strain"}, "strain (%)", tmp / "strain_curves.png"),
            _curve_figure(stats, "rate_curves", {"radial_per_s": "radial strain rate", "circumferential_per_s":
                          "circumferential strain rate"}, "strain rate (1/s)", tmp / "strain_rate_curves.png"),
            _polar_figure(stats, "radial", tmp / "polar_radial.png"),
            _polar_figure(stats, "circumferential", tmp / "polar_circumferential.png"),
            _ess_figure(stats, tmp / "ess_by_group.png"),
        ):
            if made is not None:
                written.append(made.name)
        stats["figures"] = written
        (tmp / "groups.json").write_text(json.dumps(stats, indent=1) + "\n")
    return [out / name for name in written] + [out / "groups.json"]
