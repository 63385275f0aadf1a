"""Strain, AHA segments and volumes of one study from given labels and motion.

This is the part of the analysis after segmentation and motion estimation: what
``deepstrain analyze --segmentation --displacement`` and the Slicer module's "Recompute after
manual correction" call. :func:`compute` validates its inputs and raises
:class:`deepstrain.errors.InputError` (naming ``cine.source`` or the study) on bad ones. It also
runs the automatic checks of the labels and the motion (:mod:`deepstrain.quality`; report key
``quality``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import aha as aha_mod
from .cine import Cine
from .errors import InputError
from .quality import check_study, slice_positions_mm
from .report import build_report, slices_block, write_report
from .dyssynchrony import dyssynchrony
from .rotation import level_rotations, level_separation_mm, twist_summary
from .strain import (
    COMPONENTS,
    CardiacFrame,
    cardiac_frame,
    global_curves,
    peak_values,
    strain_components,
    strain_rate,
)
from .volumetrics import body_surface_area, find_ed_es, label_volumes_ml, slice_volumes_ml, volumetrics

ED_DISPLACEMENT_TOLERANCE_MM = 0.01
"""The displacement at the ED frame must be zero (it is the reference): largest |u| allowed there."""


@dataclass
class Analysis:
    """Everything :func:`compute` derived; ``report`` is the JSON-safe dict written to report.json."""

    cine: Cine
    labels: np.ndarray
    """(T, Z, Y, X) uint8, ACDC values."""
    displacement: np.ndarray | None
    """(T, 3, Z, Y, X) float32 mm RAS, Lagrangian from ED; None when only labels were given."""
    ed: int
    es: int
    segments: np.ndarray | None
    """(Z, Y, X) int8 AHA segment (0 outside the ED myocardium, 1..17); None when undefined."""
    frame: CardiacFrame | None
    strain: dict[str, np.ndarray] | None
    """Per-voxel strain (percent), component -> (T, N) at the ED myocardium voxels (numpy.nonzero order)."""
    curves: dict[str, np.ndarray] | None
    rates: dict[str, np.ndarray] | None
    volume_curves: dict[str, np.ndarray]
    """"lv", "myo", "rv" -> (T,) ml."""
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    network_motion: Any = None
    """The networks' raw motion (:class:`deepstrain.refinement.NetworkMotion`) when
    :func:`deepstrain.analyze.analyze_cine` was asked to keep it; never written."""

    def write(self, out_dir: str | Path) -> tuple[Path, ...]:
        """Write report.json, strain.csv (with the volume curves), results.csv and slices.csv into the existing ``out_dir``."""
        return write_report(self.report, out_dir, volume_curves=self.volume_curves)


def _where(cine: Cine) -> str:
    return cine.source or cine.name


SLICE_AXIS_MIN_RATIO = 0.5
"""Slices closer than this share of the larger pixel size cannot be a short-axis stack along the
file's third axis (:func:`check_stack`); between it and 0.9 the loader only warns."""


def check_stack(cine: Cine) -> None:
    """:class:`InputError` for a cine that is not a short-axis stack along its slice axis (array
    axis 0): a single slice (strain needs derivatives along the slice axis, and volumes a stack),
    or slices less than half a pixel apart, where the short-axis slices lie along another axis
    (such a file gave meaningless results and took 7.6 GB for 2 MB of data). Called before the
    networks run."""
    if cine.data.ndim != 4 or cine.data.shape[1] < 2:
        raise InputError(_where(cine), f"{cine.data.shape[1] if cine.data.ndim == 4 else 0} slice(s): strain and "
                                       "volumes need a short-axis stack of at least 2 slices")
    sp = cine.geometry.spacing
    if sp[0] < SLICE_AXIS_MIN_RATIO * max(sp[1], sp[2]):
        raise InputError(_where(cine), f"the slices are {sp[0]:g} mm apart, less than half the pixel size ({sp[1]:g} x "
                                       f"{sp[2]:g} mm): the short-axis slices do not lie along the file's third axis "
                                       "(NIfTI k, the stacked DICOM slices), which deepstrain takes as the slice axis; "
                                       "store the stack with its slices along that axis")


def _check_labels(cine: Cine, labels: np.ndarray, where: str) -> np.ndarray:
    lab = np.asarray(labels)
    if lab.shape != cine.data.shape:
        raise InputError(where, f"labels have shape {lab.shape}, the cine {cine.data.shape} (T, Z, Y, X)")
    if lab.dtype.kind == "f":
        if not np.all(np.isfinite(lab)):
            raise InputError(where, "labels contain NaN or infinite values")
        if np.any(lab != np.round(lab)):
            raise InputError(where, "labels are not whole numbers")
    elif lab.dtype.kind not in "uib":
        raise InputError(where, f"labels have unsupported type {lab.dtype}")
    if lab.min() < 0 or lab.max() > 3:
        bad = np.setdiff1d(np.unique(lab), [0, 1, 2, 3])
        raise InputError(where, f"labels must be 0 bg, 1 RV, 2 myocardium, 3 LV cavity; found {bad[:5].tolist()}")
    return lab.astype(np.uint8, copy=False)


def _check_displacement(cine: Cine, displacement: np.ndarray, where: str) -> np.ndarray:
    disp = np.asarray(displacement)
    t, z, y, x = cine.data.shape
    if disp.shape != (t, 3, z, y, x):
        raise InputError(where, f"displacement has shape {disp.shape}, expected {(t, 3, z, y, x)} (T, 3, Z, Y, X)")
    if disp.dtype.kind != "f":
        raise InputError(where, f"displacement must be floating point (mm), got {disp.dtype}")
    if not all(np.isfinite(frame).all() for frame in disp):  # frame by frame: no full-size temporary
        raise InputError(where, "displacement contains NaN or infinite values")
    return disp


def _frame_index(cine: Cine, name: str, value: int | None, n: int) -> int | None:
    if value is None:
        return None
    v = int(value)
    if not 0 <= v < n:
        raise InputError(_where(cine), f"{name} frame {v} is outside 0..{n - 1}")
    return v


def compute(
    cine: Cine,
    labels: np.ndarray,
    displacement: np.ndarray | None,
    *,
    ed: int | None = None,
    es: int | None = None,
    rv_insertion_ras: np.ndarray | None = None,
    labels_source: str | None = None,
    displacement_source: str | None = None,
) -> Analysis:
    """Strain (when ``displacement`` is given), AHA segments and volumes of one study.

    ED/ES (0-based): the arguments, else ``cine.ed`` / ``cine.es``, else the frames of largest /
    smallest LV volume. Strain uses the ED labels (myocardium = label 2 at ED). Strain rates,
    SRs and SRe are null without timing or with fewer than 3 frames (an ACDC ED+ES pair).
    ``rv_insertion_ras``: the anterior RV insertion point (RAS mm) that orients the AHA segments,
    instead of the RV contact of the labels (:func:`deepstrain.aha.aha_segments`); the report's
    ``aha_reference`` says which was used. ``labels_source`` / ``displacement_source``: the files
    the labels and the displacement came from (given by the user), named by the errors they cause
    (default: the cine's).
    """
    n = cine.n_frames
    check_stack(cine)
    lab_where, disp_where = labels_source or _where(cine), displacement_source or _where(cine)
    lab = _check_labels(cine, labels, lab_where)
    disp = None if displacement is None else _check_displacement(cine, displacement, disp_where)
    warnings: list[str] = list(cine.warnings)

    vol_curves = label_volumes_ml(lab, cine.geometry)
    ed_i = _frame_index(cine, "ED", ed if ed is not None else cine.ed, n)
    es_i = _frame_index(cine, "ES", es if es is not None else cine.es, n)
    ed_given, es_given = ed_i is not None, es_i is not None
    if ed_i is None or es_i is None:
        try:
            f_ed, f_es = find_ed_es(vol_curves["lv"])
        except ValueError as exc:
            raise InputError(lab_where, f"cannot find ED/ES from the labels: {exc}") from None
        ed_i = f_ed if ed_i is None else ed_i
        es_i = f_es if es_i is None else es_i
    if ed_i == es_i:
        raise InputError(_where(cine), f"ED and ES are the same frame ({ed_i})")
    if not np.any(lab[ed_i] == 3):
        raise InputError(lab_where, f"no LV cavity (label 3) at ED (frame {ed_i}): EDV, EF and strain need it "
                                    "(is ED the right frame, and are the labels ACDC's: 1 RV, 2 myocardium, 3 LV cavity?)")
    subject = cine.subject
    bsa = body_surface_area(subject.height_cm, subject.weight_kg)
    vol = volumetrics(lab, cine.geometry, ed_i, es_i, bsa_m2=bsa, heart_rate_bpm=subject.heart_rate_bpm)

    lab_ed = lab[ed_i]
    frame: CardiacFrame | None = None
    segments: np.ndarray | None = None
    myo = lab_ed == 2
    if myo.any():
        try:
            frame = cardiac_frame(lab_ed, cine.geometry)
            warnings.extend(frame.warnings)
        except ValueError as exc:
            warnings.append(f"cardiac frame: {exc}")
    if frame is not None:
        try:
            segments = aha_mod.aha_segments(lab_ed, cine.geometry, frame, rv_insertion_ras=rv_insertion_ras)
        except ValueError as exc:
            if rv_insertion_ras is not None:  # asked for explicitly: not a warning but an error
                raise InputError(_where(cine), f"AHA segments from the given RV insertion point: {exc}") from None
            warnings.append(f"AHA segments not computed: {exc}")
    aha_reference = None if segments is None else {
        "septum_from": "RV contact of the ED labels" if rv_insertion_ras is None else "given anterior RV insertion point",
        "rv_insertion_ras": None if rv_insertion_ras is None else [round(float(v), 3) for v in rv_insertion_ras]}

    comps = curves = rates = peaks = aha_c = rotations = twist = dys = None
    if disp is not None:
        if frame is None or not myo.any():
            raise InputError(lab_where, f"no LV myocardium (label 2) in the ED labels (frame {ed_i}): strain needs it")
        u_ed = float(np.abs(disp[ed_i]).max())
        if u_ed > ED_DISPLACEMENT_TOLERANCE_MM:
            how = ("given" if ed_given else "chosen from the labels as the frame of largest LV cavity; if the labels "
                   f"are wrong ({lab_where}) or ED is another frame, give --ed")
            raise InputError(
                disp_where,
                f"displacement at the ED frame {ed_i} ({how}) is up to {u_ed:.3g} mm; it must be zero (Lagrangian "
                "from ED)",
            )
        comps = strain_components(disp, cine.geometry, frame, myo)
        curves = global_curves(comps)
        consecutive = n >= 3 and not np.any(np.diff(np.asarray(cine.frame_numbers)) != 1)
        hr = cine.subject.heart_rate_bpm
        rr_ms = 60000.0 / hr if hr else None  # the cycle's length for the rates, where known
        if n < 3:
            warnings.append(f"only {n} frames: strain rates not computed")
        elif not cine.has_timing:
            warnings.append("the input has no frame timing: strain rates not computed")
        elif not consecutive:
            warnings.append("the frames are not consecutive in the cycle: strain rates not computed")
        else:
            r = {c: strain_rate(curves[c], cine.times_ms, rr_ms) for c in COMPONENTS}
            if any(v is None for v in r.values()):
                warnings.append("frame times do not increase: strain rates not computed")
            else:
                rates = r  # type: ignore[assignment]
        peaks = peak_values(curves, rates, ed_i, es_i)
        if segments is not None:
            ids = segments[myo]
            aha_c = {c: aha_mod.segment_curves(comps[c], ids) for c in COMPONENTS}
            rotations = level_rotations(disp, cine.geometry, frame, segments)
            twist = twist_summary(rotations, level_separation_mm(cine.geometry, frame, segments),
                                  cine.times_ms if rates is not None else None, ed_i, es_i, rr_ms)
            if consecutive:
                # times to peak need the frame times (None without them); CURE only the frames
                dys = dyssynchrony(aha_c, cine.times_ms if rates is not None else np.full(n, np.nan), ed_i, es_i)
    else:
        warnings.append("no displacement given: volumes only, strain not computed")

    report = build_report(
        study=cine.name,
        n_frames=n,
        ed=ed_i,
        es=es_i,
        times_ms=cine.times_ms,
        volumetrics=vol,
        subject={**subject.as_dict(), "bsa_m2": bsa},
        curves=curves,
        rates=rates,
        peaks=peaks,
        aha_curves=aha_c,
        rotations=rotations,
        twist=twist,
        dyssynchrony=dys,
        warnings=warnings,
        cycle_frames=cine.frame_numbers,
    )
    report["aha_reference"] = aha_reference
    ed_slices_ml = slice_volumes_ml(lab[ed_i], cine.geometry)
    report["slices"] = slices_block(
        ed_slices_ml, slice_volumes_ml(lab[es_i], cine.geometry),
        None if frame is None else slice_positions_mm(lab.shape[1], cine.geometry, frame))
    findings = check_study(lab, cine.geometry, ed_i, es_i, frame=frame, lv_volume_ml=vol_curves["lv"],
                           lv_ed_slice_ml=ed_slices_ml["lv"],
                           ef_percent=vol["lv_ef_percent"], lv_mass_g=vol["lv_mass_g"], ed_given=ed_given,
                           es_given=es_given, displacement=disp, ess_percent=report["ess"])
    report["quality"] = [f.as_dict() for f in findings]
    return Analysis(
        cine=cine,
        labels=lab,
        displacement=disp,
        ed=ed_i,
        es=es_i,
        segments=segments,
        frame=frame,
        strain=comps,
        curves=curves,
        rates=rates,
        volume_curves=vol_curves,
        report=report,
        warnings=warnings,
    )
