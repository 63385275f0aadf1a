"""LV rotation about the long axis, twist and torsion, from the displacement.

Rotation of a level (AHA basal segments 1-6, mid 7-12, apical 13-16, of the ED myocardium) at
frame ``t``: the angle of the least-squares rotation about the long axis ``l`` that carries the
level's ED myocardium points ``X`` onto their positions ``x = X + u_t(X)``, with each slice's
in-plane translation removed::

    theta = atan2(sum l . (a x b), sum a . b),   a = P (X - C_ED),   b = P (x - C_t)

``P`` projects perpendicular to ``l``; ``C_ED`` and ``C_t`` are the centroids of the same points
(ED and frame ``t``) within the same slice and level. Points far from their slice's centroid
weigh more (the weights are ``|a| |b|``), so the wall's rotation dominates, not noise near the
centre.

Sign convention (the usual one of tagging and feature tracking): positive = counter-clockwise
when viewed from the apex towards the base, i.e. right-handed about ``l`` pointing base to apex
(left-handed in a file whose world is the patient's mirror image: :attr:`CardiacFrame.mirrored`).
A normal LV in systole turns clockwise at the base (negative) and counter-clockwise at the apex
(positive). Twist = apical minus basal rotation (deg); torsion = twist divided by the distance
along ``l`` between the ED centroids of the basal and apical levels (deg/cm). The twist rate
(deg/s) is the time derivative of the twist curve (:func:`deepstrain.strain.time_derivative`);
the peak untwisting rate is its value of largest magnitude in early diastole, as for SRe.

The apical cap (segment 17) has no wall around a centre and is left out. Rotations are the
myocardium's, so they share the motion estimate's limits (see the README's accuracy figures).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .cine import Geometry
from .strain import CardiacFrame, early_diastole_frames, signed_peak, systole_frames, time_derivative

LEVELS = {"basal": (1, 6), "mid": (7, 12), "apical": (13, 16)}
"""AHA segment ranges (inclusive) of each level."""

MIN_LEVEL_VOXELS = 20
"""A level with fewer ED myocardium voxels has no rotation (``None``)."""


def level_rotations(displacement: np.ndarray, geometry: Geometry, frame: CardiacFrame,
                    segments: np.ndarray) -> dict[str, np.ndarray | None]:
    """Rotation (deg, ``(T,)``) of each level in :data:`LEVELS` (see the module docstring).

    ``displacement``: ``(T, 3, Z, Y, X)`` mm, RAS, Lagrangian from ED; ``segments``: ``(Z, Y, X)``
    AHA segment of each ED myocardium voxel (:func:`deepstrain.aha.aha_segments`).
    """
    l_vec = np.asarray(frame.long_axis, dtype=np.float64)
    seg = np.asarray(segments)
    out: dict[str, np.ndarray | None] = {}
    for name, (lo, hi) in LEVELS.items():
        kk, jj, ii = np.nonzero((seg >= lo) & (seg <= hi))
        if kk.size < MIN_LEVEL_VOXELS:
            out[name] = None
            continue
        x_ed = geometry.voxel_points(kk, jj, ii)
        u = np.asarray(displacement[:, :, kk, jj, ii], dtype=np.float64).transpose(0, 2, 1)  # (T, N, 3)
        x_t = x_ed[None] + u
        a = np.empty_like(x_ed)
        b = np.empty_like(x_t)
        for k in np.unique(kk):  # translation removed slice by slice
            sel = kk == k
            a[sel] = x_ed[sel] - x_ed[sel].mean(axis=0)
            b[:, sel] = x_t[:, sel] - x_t[:, sel].mean(axis=1, keepdims=True)
        a -= np.outer(a @ l_vec, l_vec)
        b -= (b @ l_vec)[..., None] * l_vec
        cross = np.cross(a[None], b) @ l_vec  # (T, N)
        dot = np.einsum("nc,tnc->tn", a, b)
        out[name] = frame.handedness * np.degrees(np.arctan2(cross.sum(axis=1), dot.sum(axis=1)))
    return out


def level_separation_mm(geometry: Geometry, frame: CardiacFrame, segments: np.ndarray) -> float | None:
    """Distance (mm) along the long axis between the ED centroids of the basal and apical levels."""
    seg = np.asarray(segments)
    centres = []
    for name in ("basal", "apical"):
        lo, hi = LEVELS[name]
        kk, jj, ii = np.nonzero((seg >= lo) & (seg <= hi))
        if kk.size < MIN_LEVEL_VOXELS:
            return None
        centres.append(geometry.voxel_points(kk, jj, ii).mean(axis=0))
    return float(abs((centres[1] - centres[0]) @ np.asarray(frame.long_axis, dtype=np.float64)))


def twist_summary(rotations: dict[str, np.ndarray | None], separation_mm: float | None, times_ms: np.ndarray | None,
                  ed: int, es: int, rr_ms: float | None = None) -> dict[str, Any]:
    """Twist curve and its figures from :func:`level_rotations` (deg, deg/cm, deg/s; ``None`` when undefined).

    ``times_ms``: frame times for the twist rate, or ``None`` when rates cannot be computed (no
    timing, fewer than 3 frames, frames not consecutive in the cycle); ``rr_ms``: the RR interval
    when known (:func:`deepstrain.strain.time_derivative`).
    """
    base, apex = rotations.get("basal"), rotations.get("apical")
    out: dict[str, Any] = {"twist_deg": None, "twist_rate_deg_per_s": None, "es_twist_deg": None,
                           "peak_systolic_twist_deg": None, "es_torsion_deg_per_cm": None,
                           "peak_untwisting_rate_deg_per_s": None, "level_separation_mm": separation_mm}
    if base is None or apex is None:
        return out
    twist = np.asarray(apex, dtype=np.float64) - np.asarray(base, dtype=np.float64)
    n = twist.size
    out["twist_deg"] = twist
    out["es_twist_deg"] = float(twist[es])
    out["peak_systolic_twist_deg"] = signed_peak(twist, systole_frames(ed, es, n))
    if separation_mm:
        out["es_torsion_deg_per_cm"] = float(twist[es] / (separation_mm / 10.0))
    rate = None if times_ms is None else time_derivative(twist, times_ms, rr_ms)
    if rate is not None:
        out["twist_rate_deg_per_s"] = rate
        out["peak_untwisting_rate_deg_per_s"] = signed_peak(rate, early_diastole_frames(ed, es, n))
    return out
