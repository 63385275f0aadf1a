"""AHA 17-segment model of the LV myocardium, from the ED labels.

Definitions follow ``notes/strain_spec.md``; the details decided here:

* RV insertion points: in each slice, the ED myocardium voxels whose in-plane distance to an
  RV cavity voxel (label 1) is at most ``contact_mm`` (+ 1e-6 mm for rounding) form the RV contact. Their angles about
  their slice's LV centre (in the plane perpendicular to the long axis) are pooled over the
  mid-ventricular slices (slice centre at 1/3 <= f < 2/3; all slices if those have no contact).
  The contact arc is the circle minus its largest angular gap; its two ends are the insertion
  points. One septal direction ``s_dir`` (the middle of the arc, which equals the bisector of the
  two insertion directions for arcs under 180 deg) is used for the whole LV.
* A voxel's signed angle ``phi = atan2(h (l x s_dir) . r, s_dir . r)`` in degrees, with ``r`` its
  radial direction, ``l`` the base->apex axis and ``h`` the frame's handedness (-1 when the
  file's world is the patient's mirror image, e.g. ACDC's headers: see
  :func:`deepstrain.strain.cardiac_frame`), rounded to 1e-9 deg. This uses world (RAS)
  vectors only, so it does not depend on how the voxels are stored (nor on the rounding of a
  spacing read back from an affine).
* Levels: ``f = (s - s_base) / (s_apex - s_base)`` with ``s = p . l`` and the LV cavity extent
  ``[s_base, s_apex]``; basal ``f < 1/3`` (also above the cavity), mid ``1/3 <= f < 2/3``, apical
  ``f >= 2/3``; a voxel less than ``LEVEL_TOLERANCE_MM`` (0.5 mm) short of a boundary counts
  as past it, so a slice lying on a boundary (common with regular slice spacing: f = 2/6) is
  not split by the sub-degree error of the fitted long axis.
* A user may instead give the anterior RV insertion point (RAS mm): ``s_dir`` is then its
  direction from the LV centre turned 60 degrees towards the septum (it sits at phi = -60,
  the anterior / anteroseptal boundary), for when the RV contours are wrong or absent.
* Segment 17 (apex) = every myocardium voxel in a slice with no cavity whose LV centre is more
  apical than the centre of the most apical cavity slice.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from .cine import Geometry
from .strain import CardiacFrame, cardiac_frame

SEGMENT_NAMES: dict[int, str] = {
    1: "basal anterior",
    2: "basal anteroseptal",
    3: "basal inferoseptal",
    4: "basal inferior",
    5: "basal inferolateral",
    6: "basal anterolateral",
    7: "mid anterior",
    8: "mid anteroseptal",
    9: "mid inferoseptal",
    10: "mid inferior",
    11: "mid inferolateral",
    12: "mid anterolateral",
    13: "apical anterior",
    14: "apical septal",
    15: "apical inferior",
    16: "apical lateral",
    17: "apex",
}

DEFAULT_CONTACT_MM = 3.0
"""A myocardium voxel within this in-plane distance (mm) of an RV cavity voxel touches the RV."""

CONTACT_TOLERANCE_MM = 1e-6
"""Added to ``contact_mm``: with pixels of 1.5, 1.0, 0.75 or 0.6 mm whole rings of voxels lie
exactly 3 mm from the RV, and a spacing read from an oblique affine (1.5000000000000002 mm)
must not move them out of the contact."""

ANGLE_DECIMALS = 9
"""A voxel's angle ``phi`` (deg) is rounded to this many decimals before the sectors are assigned."""

LEVEL_TOLERANCE_MM = 0.5
"""Level boundaries are inclusive within this distance along the long axis (see the module docstring)."""


def _plane_basis(l_vec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors spanning the plane perpendicular to ``l`` (``e1 x e2 = l``)."""
    helper = np.eye(3)[int(np.argmin(np.abs(l_vec)))]
    e1 = helper - (helper @ l_vec) * l_vec
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(l_vec, e1)
    return e1, e2


def _arc_middle(angles: np.ndarray) -> tuple[float, float, float]:
    """Contact arc of a set of angles (radians): (start, end, middle), going counter-clockwise.

    The arc is the circle minus the largest gap between consecutive angles.
    """
    a = np.sort(np.mod(angles, 2 * math.pi))
    gaps = np.diff(np.concatenate([a, a[:1] + 2 * math.pi]))
    g = int(np.argmax(gaps))  # largest gap runs from a[g] to a[g+1]
    start = float(a[(g + 1) % a.size])
    end = float(a[g])
    length = (end - start) % (2 * math.pi)
    return start, end, start + length / 2


def septal_direction(
    labels_ed: np.ndarray,
    geometry: Geometry,
    frame: CardiacFrame,
    contact_mm: float = DEFAULT_CONTACT_MM,
) -> tuple[np.ndarray, np.ndarray]:
    """Septal unit direction ``s_dir`` (perpendicular to ``l``, RAS) and the two insertion directions.

    Returns ``(s_dir, insertions)`` with ``insertions`` ``(2, 3)``: the directions from the LV
    centre to the ends of the RV contact arc (first the one at negative phi = anterior).
    Raises ``ValueError`` when no RV cavity touches the myocardium.
    """
    lab = np.asarray(labels_ed)
    l_vec = frame.long_axis
    e1, e2 = _plane_basis(l_vec)
    m = geometry.direction * geometry.spacing[None, :]
    cav_s = _cavity_extent(lab, geometry, l_vec)
    per_slice: list[tuple[np.ndarray, bool]] = []
    for k in range(lab.shape[0]):
        myo = lab[k] == 2
        rv = lab[k] == 1
        if not myo.any() or not rv.any() or not np.all(np.isfinite(frame.centers[k])):
            continue
        dist = ndimage.distance_transform_edt(~rv, sampling=geometry.spacing[1:])
        jj, ii = np.nonzero(myo & (dist <= contact_mm + CONTACT_TOLERANCE_MM))
        if jj.size == 0:
            continue
        pts = geometry.origin + np.stack([np.full(jj.size, k), jj, ii], axis=1).astype(np.float64) @ m.T
        d = pts - frame.centers[k]
        ang = np.arctan2(d @ e2, d @ e1)
        f_slice = (float(frame.centers[k] @ l_vec) - cav_s[0]) / max(cav_s[1] - cav_s[0], 1e-9)
        per_slice.append((ang, 1 / 3 <= f_slice < 2 / 3))
    if not per_slice:
        raise ValueError(
            f"no RV cavity (label 1) within {contact_mm} mm of the LV myocardium at ED: "
            "the RV insertion points, hence the AHA segments, are undefined"
        )
    mid = [a for a, is_mid in per_slice if is_mid]
    angles = np.concatenate(mid if mid else [a for a, _ in per_slice])
    start, end, middle = _arc_middle(angles)
    s_dir = math.cos(middle) * e1 + math.sin(middle) * e2
    ins = np.array([math.cos(start) * e1 + math.sin(start) * e2, math.cos(end) * e1 + math.sin(end) * e2])
    return s_dir, (ins[::-1] if frame.handedness < 0 else ins)


INSERTION_TO_SEPTUM_DEG = 60.0
"""Angle (deg) from the anterior RV insertion point to the septal direction: the anteroseptal and
inferoseptal segments are the two 60-degree sectors between the insertion points."""


def septal_direction_from_insertion(point_ras: np.ndarray, frame: CardiacFrame) -> np.ndarray:
    """Septal unit direction ``s_dir`` from a given **anterior RV insertion point** (RAS mm).

    The point's direction from the LV centre of the slice nearest to it along the long axis,
    perpendicular to ``l``, turned by :data:`INSERTION_TO_SEPTUM_DEG` towards the septum (the
    anterior insertion is at phi = -60 deg). Raises ``ValueError`` for a point on the long axis
    (closer than 2 mm to that LV centre in the short-axis plane) or without any LV centre.
    """
    p = np.asarray(point_ras, dtype=np.float64).reshape(3)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"RV insertion point {p.tolist()} is not a finite RAS position")
    l_vec = frame.long_axis
    ok = np.all(np.isfinite(frame.centers), axis=1)
    if not ok.any():
        raise ValueError("no LV centre at ED: the RV insertion point cannot be placed on the LV")
    centres = frame.centers[ok]
    c = centres[int(np.argmin(np.abs((centres - p) @ l_vec)))]
    d = (p - c) - ((p - c) @ l_vec) * l_vec
    dist = float(np.linalg.norm(d))
    if dist < 2.0:
        raise ValueError(f"RV insertion point {np.round(p, 1).tolist()} is {dist:.1f} mm from the LV centre in "
                         "the short-axis plane: place it where the RV wall meets the septum")
    d /= dist
    a = math.radians(INSERTION_TO_SEPTUM_DEG) * frame.handedness
    return math.cos(a) * d + math.sin(a) * np.cross(l_vec, d)


def _cavity_extent(lab: np.ndarray, geometry: Geometry, l_vec: np.ndarray) -> tuple[float, float]:
    kk, jj, ii = np.nonzero(lab == 3)
    if kk.size == 0:
        raise ValueError("no LV cavity (label 3) at ED: the AHA levels are undefined")
    s = geometry.voxel_points(kk, jj, ii) @ l_vec
    return float(s.min()), float(s.max())


def segment_of(phi_deg: np.ndarray, level: np.ndarray) -> np.ndarray:
    """AHA segment (1..16) from the signed angle (deg, (-180, 180]) and level (0 basal, 1 mid, 2 apical)."""
    phi = np.asarray(phi_deg, dtype=np.float64)
    # 60-degree sectors starting at -180: anterolateral, anterior, anteroseptal, inferoseptal, inferior, inferolateral
    sector6 = np.clip(np.floor((phi + 180.0) / 60.0), 0, 5).astype(np.int64)
    six = np.array([6, 1, 2, 3, 4, 5])[sector6]
    # 90-degree sectors starting at -135: anterior, septal, inferior, lateral (lateral wraps)
    sector4 = np.floor(np.mod(phi + 135.0, 360.0) / 90.0).astype(np.int64) % 4
    four = np.array([13, 14, 15, 16])[sector4]
    return np.where(level == 0, six, np.where(level == 1, six + 6, four))


def aha_segments(
    labels_ed: np.ndarray,
    geometry: Geometry,
    frame: CardiacFrame | None = None,
    contact_mm: float = DEFAULT_CONTACT_MM,
    rv_insertion_ras: np.ndarray | None = None,
) -> np.ndarray:
    """AHA segment of every ED myocardium voxel: ``(Z, Y, X)`` int8, 0 outside the myocardium, 1..17.

    ``rv_insertion_ras``: the anterior RV insertion point (RAS mm) given by the user, which sets
    the septal direction (:func:`septal_direction_from_insertion`) instead of the RV contact arc of
    the labels (then no RV label is needed). Raises ``ValueError`` when the segments are undefined
    (no cavity, fewer than two slices with cavity, no RV contact and no point given, or a point
    on the long axis).
    """
    lab = np.asarray(labels_ed)
    if frame is None:
        frame = cardiac_frame(lab, geometry)
    l_vec = frame.long_axis
    out = np.zeros(lab.shape, dtype=np.int8)
    myo = lab == 2
    if not myo.any():
        return out
    cav_slices = np.nonzero(np.any(lab == 3, axis=(1, 2)))[0]
    if cav_slices.size < 2:
        raise ValueError("the AHA levels need LV cavity in at least two slices")
    s_base, s_apex = _cavity_extent(lab, geometry, l_vec)
    if rv_insertion_ras is None:
        s_dir, _ = septal_direction(lab, geometry, frame, contact_mm)
    else:
        s_dir = septal_direction_from_insertion(rv_insertion_ras, frame)

    kk, jj, ii = np.nonzero(myo)
    pts = geometry.voxel_points(kk, jj, ii)
    s = pts @ l_vec
    # f >= 1/3 (2/3) within LEVEL_TOLERANCE_MM counts as mid (apical): see the module docstring
    tol = LEVEL_TOLERANCE_MM / (s_apex - s_base)
    f = (s - s_base) / (s_apex - s_base)
    level = np.where(f < 1 / 3 - tol, 0, np.where(f < 2 / 3 - tol, 1, 2))

    centre_s = frame.centers @ l_vec
    last_cavity_s = float(np.max(centre_s[cav_slices]))
    has_cav = np.zeros(lab.shape[0], dtype=bool)
    has_cav[cav_slices] = True
    cap_slice = (~has_cav) & np.isfinite(centre_s) & (np.nan_to_num(centre_s, nan=-np.inf) > last_cavity_s)

    r, _, _ = frame.directions(pts, kk)
    t_dir = frame.handedness * np.cross(l_vec, s_dir)
    # rounded to ANGLE_DECIMALS: a voxel on a sector boundary (common on regular grids) must not
    # change segment with the last bit of the geometry (a spacing read from an affine)
    phi = np.round(np.degrees(np.arctan2(r @ t_dir, r @ s_dir)), ANGLE_DECIMALS)
    phi = np.where(phi <= -180.0, 180.0, phi)
    seg = segment_of(np.nan_to_num(phi), level)
    seg = np.where(np.isfinite(phi), seg, 0)
    seg = np.where(cap_slice[kk], 17, seg)
    out[kk, jj, ii] = seg.astype(np.int8)
    return out


def segment_curves(values: np.ndarray, segment_ids: np.ndarray) -> dict[int, np.ndarray | None]:
    """Mean of ``values`` ``(T, N)`` over the voxels of each segment (``segment_ids`` ``(N,)``).

    Returns ``{1..17: (T,) curve, or None for an empty segment}``; NaN voxels are left out.
    """
    v = np.asarray(values, dtype=np.float64)
    ids = np.asarray(segment_ids).reshape(-1)
    if v.ndim != 2 or v.shape[1] != ids.size:
        raise ValueError(f"values must be (T, {ids.size}), got {v.shape}")
    finite = np.all(np.isfinite(v), axis=0)
    out: dict[int, np.ndarray | None] = {}
    for seg in range(1, 18):
        sel = (ids == seg) & finite
        out[seg] = v[:, sel].mean(axis=1) if sel.any() else None
    return out
