"""Automatic plausibility checks of a study's segmentation and motion: what to look at before trusting the numbers.

Each check looks for one pattern that manual contours of the ACDC training set (100 patients, ED
and ES) almost never show but a failed segmentation, a poor acquisition or a wrong motion field does. A finding is a
prompt to look (in Slicer: the named frame and slices), not a verdict; the numbers are still
computed. How often each check fires on the manual labels and on the networks' segmentations is
measured by ``benchmarks/quality_checks.py`` (figures in the README).

Conventions: frames and slices are 0-based array indices (frame axis 0, slice axis 0 of
``(Z, Y, X)``), as everywhere in :mod:`deepstrain`. Base and apex come from the cardiac frame of
the ED labels (:func:`deepstrain.strain.cardiac_frame`); checks that need them are skipped
without one. The checks:

``open_myocardium``
    At ED or ES, on a slice with LV cavity other than the most basal and the most apical one, more
    than :data:`OPEN_BORDER_FRACTION` of the cavity's border (pixel edges between a cavity pixel and
    a non-cavity pixel, 4-neighbours) touches background or RV instead of myocardium. The most
    basal slice is left out because the outflow tract legitimately opens the ring there; the most
    apical one because the networks leave its thin, blurred ring open in about a fifth of the ACDC
    patients without larger volume errors (measured by ``benchmarks/quality_checks.py``), so a flag
    there would mostly be noise.
``cavity_missing_at_es``
    A mid-ventricular slice (the middle third of the ED cavity's extent along the long axis, as
    for the AHA levels) has LV cavity at ED and none at ES. Basal and apical slices are not
    checked: the base descends 1-2 slices at ES and ACDC's annotators then drew no cavity there,
    and an apical cavity may close at ES (hypertrophy); on the manual labels both happen often.
``apex_not_covered``
    At ED, the stack's last slice on the apex side still has an LV cavity of at least
    :data:`APEX_CAVITY_AREA_FRACTION` of the largest slice cavity: the stack may stop short of
    the apex, so EDV, ESV and mass miss a part of the ventricle.
``slice_misalignment``
    At ED, the LV centre of a slice with cavity (not the most basal or apical one) lies more than
    :data:`MISALIGNMENT_MM` from the long axis fitted through the slice centres (typically a
    breath-hold at another depth); volumes and, more so, strain across that slice suffer. The
    axis is the cardiac frame's (:func:`deepstrain.strain.cardiac_frame`), which the misaligned
    slice itself pulls towards it: in a stack of about 8 slices a single slice is found from
    about 12-13 mm off the axis through the others. Measuring from the axis through the other
    slices only was tried (2026-11-23) and rejected: the real ACDC centre lines curve, and
    leaving slices out flagged more good slices (8 of 100 expert-labelled patients instead of 4,
    and neighbours of a misaligned slice).
``ed_es_frames``
    For a cine of at least 3 frames whose ED / ES came from the input (header, ``--ed`` /
    ``--es``, Info.cfg) rather than from the volume curve: another frame's LV cavity is more than
    :data:`FRAME_VOLUME_TOLERANCE` larger than ED's (smaller than ES's).
``ef_outside_range``
    LV EF above :data:`EF_HIGH_PERCENT` (above the normal range by a margin; with a small ES
    cavity it usually means trabeculae or papillary muscles were left out of the ES cavity, or the
    basal ES slice) or below :data:`EF_LOW_PERCENT` (ED and ES frames swapped or wrong). A high EF
    names the basal slices with LV cavity at ED and none at ES, where there are such (the base
    descends through them; ACDC's annotators, whom the networks follow, then drew no cavity,
    other conventions count it), with their ED cavity in ml.
``heart_size``
    The LV end-diastolic volume or the LV mass lies outside the range of adult human hearts
    (:data:`HEART_EDV_ML`, :data:`HEART_MASS_G`; the 100 ACDC patients span EDV 49-374 ml and
    mass 34-272 g), or no LV cavity was found at ED. A wrong voxel size is the usual cause (a file
    whose spacing was lost reads as 1 x 1 x 1 mm: volumes too small by the true voxel volume, about
    20 times for 10 x 1.4 x 1.4 mm voxels, and the networks see the heart at the wrong scale); a
    failed segmentation is the other.
``motion_mismatch``
    With a displacement: the ES labels pulled back to ED along the motion
    (:func:`pull_back_labels`, ``labels_ES(X + u(X))``) overlap the ED myocardium (Dice) less than
    the ES labels do without any motion, or less than :data:`MOTION_DICE_MIN`. A motion that
    follows the heart carries the ES myocardium back onto the ED one; one in another convention
    (LPS instead of RAS components, voxels instead of mm, from ES instead of from ED) or from a
    failed tracker does not, and every strain value rests on it. A field in voxels still carries the
    heart back part of the way where the pixels are near 1 mm (about 0.7 of the motion for 1.4 mm
    pixels: Dice 0.75-0.87 on ACDC cines); so the check also fires when the field multiplied by the
    in-plane pixel size carries the ES myocardium back better by more than
    :data:`MOTION_UNITS_MARGIN` (pixels at least 15 % away from 1 mm; on five ACDC cines the true
    fields lost 0.03-0.16 of Dice when so multiplied, the same fields in voxels gained 0.05-0.12).
``strain_sign``
    A global end-systolic strain with the sign no contracting heart gives: radial not above zero,
    circumferential or longitudinal not below zero. Circumferential and radial strain keep their
    signs even in severe dysfunction; a positive longitudinal strain from a short-axis stack
    usually means the through-plane motion, which thick slices hardly show, was not captured.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np

from .cine import Geometry, lost_spacing_hint
from .strain import CardiacFrame

OPEN_BORDER_FRACTION = 0.10
"""Largest share of an LV cavity's border that may touch background or RV (most basal and apical cavity slices not checked)."""
APEX_CAVITY_AREA_FRACTION = 0.5
"""An ED cavity on the stack's apical end slice at least this share of the largest one: apex not covered."""
MISALIGNMENT_MM = 10.0
"""Largest distance (mm) of a slice's LV centre from the fitted long axis (as :data:`deepstrain.strain.AXIS_OUTLIER_MM`)."""
FRAME_VOLUME_TOLERANCE = 0.05
"""A frame whose LV cavity exceeds ED's (falls below ES's) by more than this share questions the given frame."""
EF_HIGH_PERCENT = 80.0
EF_LOW_PERCENT = 5.0
HEART_EDV_ML = (25.0, 600.0)
"""Plausible range (ml) of an adult LV end-diastolic volume (``heart_size``)."""
HEART_MASS_G = (25.0, 600.0)
"""Plausible range (g) of an adult LV mass (``heart_size``)."""
MOTION_DICE_MIN = 0.7
MOTION_UNITS_MARGIN = 0.02
"""Dice gained by multiplying the field by the pixel size above which it is taken to be in voxels."""
"""Least myocardium Dice between the ED labels and the ES labels pulled back to ED along the motion."""

CHECKS = ("open_myocardium", "cavity_missing_at_es", "apex_not_covered", "slice_misalignment", "ed_es_frames",
          "ef_outside_range", "heart_size", "motion_mismatch", "strain_sign")
_CONTRACTION_SIGN = {"radial": 1.0, "circumferential": -1.0, "longitudinal": -1.0}


@dataclass(frozen=True)
class Finding:
    """One check that fired: its name (one of :data:`CHECKS`), where, and a sentence for the user.

    ``points_ras``: one world point (RAS mm) per slice in ``slices``, where to look: the slice's LV
    centre at ED, else the middle of the slice (what the Slicer module jumps the views to).
    """

    check: str
    message: str
    frame: int | None = None
    slices: tuple[int, ...] = ()
    points_ras: tuple[tuple[float, float, float], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"check": self.check, "frame": self.frame, "slices": list(self.slices),
                "points_ras": [[round(float(v), 2) for v in p] for p in self.points_ras], "message": self.message}


def _slices_text(slices: Sequence[int]) -> str:
    return ("slice " if len(slices) == 1 else "slices ") + ", ".join(str(k) for k in slices)


def slice_positions_mm(n_slices: int, geometry: Geometry, frame: CardiacFrame) -> np.ndarray:
    """Position (mm) of each of ``n_slices`` slices along the cardiac long axis (base -> apex); ``(Z,)``."""
    first_voxels = np.zeros((n_slices, 3))
    first_voxels[:, 0] = np.arange(n_slices)
    world = first_voxels @ geometry.index_to_world[:3, :3].T + geometry.origin
    return world @ frame.long_axis


def open_border_fraction(labels2d: np.ndarray) -> float | None:
    """Share of the LV cavity's border (4-neighbour pixel edges) that touches labels other than myocardium.

    Pixels outside the image count as background. None when the slice has no cavity.
    """
    lab = np.pad(np.asarray(labels2d), 1, constant_values=0)
    cav = lab == 3
    if not cav.any():
        return None
    total = opened = 0
    for axis in (0, 1):
        for shift in (1, -1):
            nb = np.roll(lab, shift, axis=axis)
            edge = cav & (nb != 3)
            total += int(np.count_nonzero(edge))
            opened += int(np.count_nonzero(edge & (nb != 2)))
    return opened / total if total else 0.0


def _has_cavity(labels3d: np.ndarray) -> np.ndarray:
    """``(Z,)`` bool: the slice has LV cavity."""
    return (labels3d == 3).reshape(labels3d.shape[0], -1).any(axis=1)


def _cavity_slices(labels3d: np.ndarray) -> np.ndarray:
    return np.nonzero(_has_cavity(labels3d))[0]


def _basal_apical(ks: np.ndarray, pos: np.ndarray) -> tuple[int, int]:
    """The most basal and most apical of slices ``ks`` (``pos``: position along base -> apex)."""
    return int(ks[np.argmin(pos[ks])]), int(ks[np.argmax(pos[ks])])


def check_open_myocardium(labels: np.ndarray, frames: dict[str, int], pos: np.ndarray) -> list[Finding]:
    """``open_myocardium`` for each named frame (``{"ED": ed, "ES": es}``) of ``labels`` ``(T, Z, Y, X)``."""
    out = []
    for name, f in frames.items():
        ks = _cavity_slices(labels[f])
        if ks.size < 3:
            continue
        ends = _basal_apical(ks, pos)
        bad, worst = [], 0.0
        for k in ks:
            if k in ends:
                continue
            frac = open_border_fraction(labels[f, k])
            if frac is not None and frac > OPEN_BORDER_FRACTION:
                bad.append(int(k))
                worst = max(worst, frac)
        if bad:
            out.append(Finding("open_myocardium", f"frame {f} ({name}), {_slices_text(bad)}: the myocardium does not "
                               f"surround the LV cavity (up to {100 * worst:.0f} % of the cavity border touches "
                               "background or RV); check the contours there", f, tuple(bad)))
    return out


def check_cavity_missing_at_es(labels: np.ndarray, ed: int, es: int, pos: np.ndarray) -> list[Finding]:
    """``cavity_missing_at_es`` (see the module docstring)."""
    has_ed, has_es = _has_cavity(labels[ed]), _has_cavity(labels[es])
    ks = np.nonzero(has_ed)[0]
    if ks.size < 3:
        return []
    s_base, s_apex = float(pos[ks].min()), float(pos[ks].max())
    level = (pos - s_base) / (s_apex - s_base)
    bad = [int(k) for k in ks if 1 / 3 <= level[k] < 2 / 3 and not has_es[k]]
    if not bad:
        return []
    return [Finding("cavity_missing_at_es", f"frame {es} (ES), {_slices_text(bad)}: no LV cavity on this "
                    "mid-ventricular slice, though there is one at ED; if the cavity was missed, ESV is "
                    "under-estimated and EF over-estimated", es, tuple(bad))]


def check_apex_coverage(labels_ed: np.ndarray, ed: int, pos: np.ndarray) -> list[Finding]:
    """``apex_not_covered`` (see the module docstring)."""
    area = (labels_ed == 3).reshape(labels_ed.shape[0], -1).sum(axis=1)
    if area.max() == 0 or labels_ed.shape[0] < 2:
        return []
    end = int(np.argmax(pos))  # the stack's last slice towards the apex
    if area[end] < APEX_CAVITY_AREA_FRACTION * area.max():
        return []
    return [Finding("apex_not_covered", f"frame {ed} (ED), slice {end}: the stack's most apical slice still has "
                    f"{100 * area[end] / area.max():.0f} % of the largest LV cavity cross-section; the stack may "
                    "stop short of the apex (EDV, ESV and mass too small)", ed, (end,))]


def check_slice_alignment(labels_ed: np.ndarray, ed: int, frame: CardiacFrame, pos: np.ndarray) -> list[Finding]:
    """``slice_misalignment`` (see the module docstring)."""
    ks = _cavity_slices(labels_ed)
    ok = np.all(np.isfinite(frame.centers), axis=1)
    ks = np.array([k for k in ks if ok[k]], dtype=int)
    if ks.size < 3:
        return []
    basal, apical = _basal_apical(ks, pos)
    bad, worst = [], 0.0
    for k in ks:
        if k in (basal, apical):
            continue
        d = frame.centers[k] - frame.axis_point
        dist = float(np.linalg.norm(d - (d @ frame.long_axis) * frame.long_axis))
        if dist > MISALIGNMENT_MM:
            bad.append(int(k))
            worst = max(worst, dist)
    if not bad:
        return []
    return [Finding("slice_misalignment", f"frame {ed} (ED), {_slices_text(bad)}: the LV centre lies up to "
                    f"{worst:.0f} mm from the long axis fitted through the slice centres (a breath-hold at another "
                    "depth?); volumes and strain across these slices are less reliable", ed, tuple(bad))]


def check_ed_es_frames(lv_volume_ml: np.ndarray, ed: int | None, es: int | None) -> list[Finding]:
    """``ed_es_frames`` for the frames given by the input (None: found from ``lv_volume_ml`` ``(T,)``, not checked).

    A finding's ``frame`` is the frame to look at: the one with the larger (smaller) cavity."""
    v = np.asarray(lv_volume_ml, dtype=np.float64)
    if v.size < 3:
        return []
    out = []
    f_max, f_min = int(np.argmax(v)), int(np.argmin(v))
    if ed is not None and v[f_max] > (1 + FRAME_VOLUME_TOLERANCE) * v[ed]:
        out.append(Finding("ed_es_frames", f"frame {f_max} has a larger LV cavity ({v[f_max]:.1f} ml) than the given "
                           f"ED frame {ed} ({v[ed]:.1f} ml); check which frame is end-diastole", f_max, ()))
    if es is not None and v[f_min] < (1 - FRAME_VOLUME_TOLERANCE) * v[es]:
        out.append(Finding("ed_es_frames", f"frame {f_min} has a smaller LV cavity ({v[f_min]:.1f} ml) than the "
                           f"given ES frame {es} ({v[es]:.1f} ml); check which frame is end-systole", f_min, ()))
    return out


def basal_slices_lost_at_es(labels: np.ndarray, ed: int, es: int, pos: np.ndarray) -> list[int]:
    """Slices (most basal first) with LV cavity at ED and none at ES, counted from the most basal
    ED cavity slice towards the apex until the first slice with cavity at ES."""
    has_ed, has_es = _has_cavity(labels[ed]), _has_cavity(labels[es])
    lost = []
    for k in (int(k) for k in np.argsort(pos, kind="stable")):
        if has_es[k]:
            break
        if has_ed[k]:
            lost.append(k)
    return lost


def check_ef(ef_percent: float | None, es: int | None = None, lost_slices_ml: dict[int, float] | None = None
             ) -> list[Finding]:
    """``ef_outside_range`` (see the module docstring). ``lost_slices_ml``: the basal slices with LV
    cavity at ED and none at ES (frame ``es``; :func:`basal_slices_lost_at_es`) -> their ED cavity (ml)."""
    if ef_percent is None or not np.isfinite(ef_percent):
        return []
    if ef_percent > EF_HIGH_PERCENT:
        text = f"LV EF {ef_percent:.1f} % is above {EF_HIGH_PERCENT:.0f} %: check that the ES cavity includes " \
               "trabeculae and papillary muscles, and the basal ES slice"
        if not lost_slices_ml:
            return [Finding("ef_outside_range", text)]
        ks = tuple(lost_slices_ml)
        ml = ", ".join(f"{lost_slices_ml[k]:.1f}" for k in ks)
        return [Finding("ef_outside_range", text + f": {_slices_text(list(ks))} ({ml} ml of LV cavity at ED) "
                        f"{'has' if len(ks) == 1 else 'have'} no LV cavity at ES (frame {es}); where the ES "
                        "cavity is drawn there, ESV grows and EF falls", es, ks)]
    if ef_percent < EF_LOW_PERCENT:
        return [Finding("ef_outside_range", f"LV EF {ef_percent:.1f} % is below {EF_LOW_PERCENT:.0f} %: check the "
                        "ED and ES frames and their contours")]
    return []


def check_heart_size(edv_ml: float | None, mass_g: float | None, geometry: Geometry) -> list[Finding]:
    """``heart_size`` (see the module docstring): LV EDV (ml) and mass (g) against the adult range."""
    sp = " x ".join(f"{v:g}" for v in geometry.spacing)
    hint = lost_spacing_hint(geometry.spacing) or f"check the voxel size ({sp} mm: slice, row, column) and the segmentation"
    if edv_ml is None or not np.isfinite(edv_ml) or edv_ml <= 0:
        return [Finding("heart_size", f"no LV cavity found at ED; {hint}")]
    out_of_range = []
    if not HEART_EDV_ML[0] <= edv_ml <= HEART_EDV_ML[1]:
        out_of_range.append(f"LV EDV {edv_ml:.1f} ml (expected {HEART_EDV_ML[0]:g}-{HEART_EDV_ML[1]:g} ml)")
    if mass_g is not None and np.isfinite(mass_g) and not HEART_MASS_G[0] <= mass_g <= HEART_MASS_G[1]:
        out_of_range.append(f"LV mass {mass_g:.1f} g (expected {HEART_MASS_G[0]:g}-{HEART_MASS_G[1]:g} g)")
    if not out_of_range:
        return []
    return [Finding("heart_size", f"{' and '.join(out_of_range)}: outside the range of adult hearts; {hint}")]


def pull_back_labels(labels3d: np.ndarray, displacement3d: np.ndarray, geometry: Geometry) -> np.ndarray:
    """``labels3d(X + u(X))`` on the ED grid (nearest neighbour; beyond the grid: the nearest edge voxel).

    ``labels3d`` ``(Z, Y, X)`` of one frame; ``displacement3d`` ``(3, Z, Y, X)`` mm, RAS components,
    Lagrangian from ED (as everywhere in :mod:`deepstrain`).
    """
    from scipy import ndimage

    to_index = np.linalg.inv(geometry.index_to_world[:3, :3])
    offset = np.einsum("ij,jzyx->izyx", to_index, np.asarray(displacement3d, dtype=np.float64))
    idx = np.indices(labels3d.shape, dtype=np.float64) + offset
    return ndimage.map_coordinates(np.asarray(labels3d), idx, order=0, mode="nearest")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / s if s else 1.0


def motion_overlap(labels: np.ndarray, displacement: np.ndarray, geometry: Geometry, ed: int,
                   frame: int, scale: float = 1.0) -> tuple[float, float]:
    """Myocardium Dice against the ED labels of ``frame``'s labels pulled back along the motion (times
    ``scale``), and without motion."""
    myo_ed = labels[ed] == 2
    pulled = pull_back_labels(labels[frame], np.asarray(displacement[frame], dtype=np.float64) * scale, geometry) == 2
    return _dice(pulled, myo_ed), _dice(labels[frame] == 2, myo_ed)


def check_motion(labels: np.ndarray, displacement: np.ndarray, geometry: Geometry, ed: int, es: int) -> list[Finding]:
    """``motion_mismatch`` (see the module docstring)."""
    if not (labels[ed] == 2).any() or not (labels[es] == 2).any():
        return []
    with_motion, without = motion_overlap(labels, displacement, geometry, ed, es)
    if with_motion < max(without, MOTION_DICE_MIN):
        return [Finding("motion_mismatch", f"frame {es} (ES): the motion does not carry the ES myocardium back onto "
                        f"the ED myocardium (Dice {with_motion:.2f} along the motion, {without:.2f} without any "
                        "motion); check the displacement's convention (RAS mm, from ED) or the tracking; the strain "
                        "values rest on it", es)]
    pixel = float(np.mean(geometry.spacing[1:]))
    if abs(pixel - 1.0) < 0.15:  # voxels and mm nearly agree: nothing to tell them apart
        return []
    scaled, _ = motion_overlap(labels, displacement, geometry, ed, es, scale=pixel)
    if scaled <= with_motion + MOTION_UNITS_MARGIN:
        return []
    return [Finding("motion_mismatch", f"frame {es} (ES): the motion carries the ES myocardium back onto the ED "
                    f"myocardium better when multiplied by the pixel size {pixel:.2f} mm (Dice {scaled:.2f} against "
                    f"{with_motion:.2f}): the displacement may be in voxels, not mm; the strain values rest on it", es)]


def check_strain_signs(ess_percent: dict[str, float | None] | None) -> list[Finding]:
    """``strain_sign`` on the global end-systolic strains (percent; None: not computed)."""
    out = []
    for comp, sign in _CONTRACTION_SIGN.items():
        v = None if ess_percent is None else ess_percent.get(comp)
        if v is not None and np.isfinite(v) and sign * v <= 0:
            expected = "positive (thickening)" if sign > 0 else "negative (shortening)"
            note = (" Longitudinal strain from a short-axis stack rests on the through-plane motion, which "
                    "thick slices hardly show; do not read it for this study." if comp == "longitudinal" else
                    " Check the motion and the ED / ES frames.")
            out.append(Finding("strain_sign", f"global {comp} end-systolic strain is {v:+.1f} %; a contracting "
                               f"heart gives a {expected} value.{note}"))
    return out


def check_study(labels: np.ndarray, geometry: Geometry, ed: int, es: int, *,
                frame: CardiacFrame | None, lv_volume_ml: np.ndarray, lv_ed_slice_ml: np.ndarray,
                ef_percent: float | None,
                lv_mass_g: float | None = None, ed_given: bool = False, es_given: bool = False,
                displacement: np.ndarray | None = None,
                ess_percent: dict[str, float | None] | None = None) -> list[Finding]:
    """All checks of :data:`CHECKS` on ``labels`` ``(T, Z, Y, X)`` (ACDC values), in that order.

    ``frame``: the cardiac frame of the ED labels (None: the checks that need base and apex are
    skipped). ``lv_volume_ml``: the LV cavity volume of every frame; ``lv_ed_slice_ml``: that of
    every slice at ED (:func:`deepstrain.volumetrics.slice_volumes_ml`); ``lv_mass_g``: the LV mass
    (``heart_size`` checks it with the ED volume). ``ed_given`` / ``es_given``:
    that frame came from the input (not from the volume curve), so ``ed_es_frames`` checks it.
    ``displacement`` ``(T, 3, Z, Y, X)`` (mm, RAS, from ED): ``motion_mismatch`` checks it;
    ``ess_percent``: the global end-systolic strains, for ``strain_sign``.
    """
    lab = np.asarray(labels)
    found: list[Finding] = []
    lost: dict[int, float] = {}
    if frame is not None:
        pos = slice_positions_mm(lab.shape[1], geometry, frame)
        if ef_percent is not None and ef_percent > EF_HIGH_PERCENT:  # only a high EF names them
            lost = {k: float(lv_ed_slice_ml[k]) for k in basal_slices_lost_at_es(lab, ed, es, pos)}
        found += check_open_myocardium(lab, {"ED": ed, "ES": es}, pos)
        found += check_cavity_missing_at_es(lab, ed, es, pos)
        found += check_apex_coverage(lab[ed], ed, pos)
        found += check_slice_alignment(lab[ed], ed, frame, pos)
    found += check_ed_es_frames(lv_volume_ml, ed if ed_given else None, es if es_given else None)
    found += check_ef(ef_percent, es, lost)
    found += check_heart_size(float(np.asarray(lv_volume_ml)[ed]), lv_mass_g, geometry)
    if displacement is not None:
        found += check_motion(lab, displacement, geometry, ed, es)
    found += check_strain_signs(ess_percent)
    return [replace(f, points_ras=tuple(_look_at(k, lab.shape[1:], geometry, frame) for k in f.slices))
            for f in found]


def _look_at(k: int, shape3d: tuple[int, ...], geometry: Geometry,
             frame: CardiacFrame | None) -> tuple[float, float, float]:
    """World point (RAS mm) to show for slice ``k``: its LV centre at ED, else the slice's middle voxel."""
    if frame is not None and np.all(np.isfinite(frame.centers[k])):
        p = frame.centers[k]
    else:
        idx = np.array([k, (shape3d[1] - 1) / 2.0, (shape3d[2] - 1) / 2.0])
        p = geometry.index_to_world[:3, :3] @ idx + geometry.origin
    return (float(p[0]), float(p[1]), float(p[2]))
