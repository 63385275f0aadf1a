"""Reading and writing cine studies, label maps and displacement fields.

Inputs understood by :func:`load_cine` (array conventions: :mod:`deepstrain.cine`):

* **4D NIfTI** ``(x, y, z, t)`` (``.nii`` / ``.nii.gz``). The NIfTI axes ``i, j, k`` are the
  array's column, row and slice axes; the array becomes ``(T, Z, Y, X)`` ``float32`` with the
  header's ``scl_slope``/``scl_inter`` applied. Complex-valued images are refused (give a
  magnitude image).

  - *Orientation* comes from the sform or the qform as ITK (and so 3D Slicer) chooses:
    the sform of code 1 (scanner), else the qform when ``qform_code > 0``, else the sform of
    any code, else there is none (ITK's axis-aligned default is used, with a warning). When
    both forms are valid and disagree, a warning names the one used (:func:`nifti_affine`).
  - *Spacing* always comes from ``pixdim`` (``header.get_zooms()``), never from the affine's
    column lengths. This is the ACDC quirk: ACDC files have ``qform_code = 0``,
    ``sform_code = 2`` and an sform ``diag(-1, -1, 1)`` without the voxel size; the true
    spacing is only in ``pixdim`` (checked on the real files: pixdim gives 1.5625 x 1.5625 x
    10 mm for ACDC patient001, the affine gives 1 x 1 x 1). 3D Slicer / ITK read these files
    the same way (sform direction, pixdim spacing), so outputs written by this module overlay
    the input in Slicer. Exception: when pixdim is exactly 1, 1, 1 but the affine columns
    have other lengths, the affine's lengths are used (with a warning). When the affine's columns
    carry a voxel size (not unit length) that differs from pixdim by more than 1 %, pixdim is
    used with a warning.
  - *Lost spacing*: pixdim exactly 1.0, 1.0, 1.0 and an affine that says nothing else (as in
    the ``acdc_cine_crop`` files of patients 051, 083, 098) gives a :class:`DeepStrainWarning`
    asking for ``--spacing``; ``spacing=`` replaces the header's spacing and silences it.
  - *Timing*: ``times_ms[t] = toffset + t * pixdim[4]`` when the time unit (``xyzt_units``)
    is s, ms or us and the frame interval is plausible (5 to 500 ms). Otherwise NaN (no
    timing) and a warning. ACDC files carry no timing (unit unknown, pixdim[4] = 1).

* **ACDC patient folder** (recognised by its ``Info.cfg``): ``ED``/``ES`` are 1-based in
  ``Info.cfg``; ``Group``; ``NbFrame``. If a ``<name>_4d.nii.gz`` is present the whole cycle
  is loaded from it; otherwise the cine holds only the ``<name>_frameXX.nii.gz`` images (ED
  and ES: 2 frames), with ``frame_numbers`` their 0-based indices in the cycle (``XX - 1``)
  and ``frame_files`` their paths. ED, ES and NbFrame must be positive whole numbers; ED, ES or a
  frame file beyond NbFrame is an error. A folder of ``<name>_frameXX.nii.gz`` files without
  ``Info.cfg`` (or UK Biobank's ``sa_ED.nii.gz`` without ``sa_ES.nii.gz``, or the reverse) is an
  error naming the missing file. The ``<name>_frameXX_gt.nii.gz`` manual labels are
  attached as ``cine.labels[index into data]``. ``cine.ed`` / ``cine.es`` are **indices into
  ``cine.data``** (for patient001: ``frame_numbers == [0, 11]``, ``ed == 0``, ``es == 1``).

* **UK Biobank subject folder** (the layout of Bai et al.'s pipeline, recognised by ``sa.nii.gz``
  or by ``sa_ED.nii.gz`` + ``sa_ES.nii.gz``): the whole short-axis cycle from ``sa.nii.gz`` when
  present (a 4D NIfTI as above), else the two frames (``ed == 0``, ``es == 1``, no timing,
  ``frame_files`` set). UK Biobank's ``seg_sa_ED/ES.nii.gz`` (1 LV cavity, 2 myocardium, 3 RV)
  are attached as ``cine.labels`` in ACDC values. Long-axis images are not used.

* **DICOM cine folder** (any other folder; searched recursively; files read with
  ``force=True``; files that are not DICOM images are skipped). A file that looks like DICOM
  (``.dcm``/``.ima``/``.dicom``, no or a numeric extension, or the DICM magic; not hidden files nor
  ``DICOMDIR``) and cannot be parsed, is empty or is an image without geometry or pixel data
  (truncated) is left out and named: in the error when the series then fails, else in a warning. Images with pixel data and
  ``ImagePositionPatient``/``ImageOrientationPatient`` are grouped by ``SeriesInstanceUID``.
  A study stored as **one series per slice** (common for cine stacks) is assembled: series
  that each hold a single slice position (and more than one image), with the same orientation,
  rows/columns and pixel spacing, form one candidate stack (two such series at the same
  position are an error: ambiguous). Several candidates (series or assembled stacks): the one
  with the most images is used and a warning lists the others; a tie for the most images is an
  error (ambiguous). Within the chosen series or stack:

  - all images must share orientation, rows/columns and pixel spacing;
  - slices are ordered by ascending position along the normal ``n = row_dir x col_dir``
    (``ImageOrientationPatient``), so the written NIfTI affine is right-handed; images at the
    same position (within 0.05 mm) form one slice;
  - frames of each slice are ordered by ``TriggerTime``; every slice must have the same
    number of frames; ``times_ms`` is the per-frame mean of ``TriggerTime`` over slices; a
    median frame interval outside 5 to 500 ms (e.g. TriggerTime written in seconds) gives a
    warning and no timing, as for NIfTI; a slice whose own frame interval differs from the
    median of the slices' by more than 25 % gives a warning (its frames cover another part of
    the cycle than the other slices'; breath-holds at other heart rates differ by a few %: up to
    6 % in the Sunnybrook cine); fewer frames than the header's ``CardiacNumberOfImages`` (a
    phase missing from every slice) give a warning;
  - spacing: rows/columns from ``PixelSpacing`` (row spacing, column spacing); the slice
    spacing is the median distance between neighbouring slice positions (not
    ``SliceThickness``); gaps more than 10 % off the median (a missing slice) are an error,
    and so are slices shifted in-plane by more than half a pixel;
  - DICOM patient coordinates are LPS; they are converted to RAS (x and y negated). The
    origin is the RAS position of the first (most negative along ``n``) slice's
    ``ImagePositionPatient``;
  - ``RescaleSlope`` / ``RescaleIntercept`` are applied; colour images are refused.
  - **Multi-frame (enhanced MR) files**: each frame counts as one image, with its position,
    orientation, pixel spacing, rescaling and trigger time (``NominalCardiacTriggerDelayTime``)
    from the per-frame functional groups, or the shared ones; frames without trigger times are
    ordered by their order in the file. Enhanced and single-frame files can form one series.

* **Subject** (``cine.subject``: height, weight, heart rate; for volumes indexed to the body
  surface area and the cardiac output): ACDC ``Info.cfg`` ``Height`` (cm) and ``Weight`` (kg);
  DICOM ``PatientSize`` (m), ``PatientWeight`` (kg) and ``HeartRate`` (beats/min; else
  ``60000 / NominalInterval`` ms), each the median over the series' images; NIfTI files carry
  none. A header value outside :data:`deepstrain.cine.PLAUSIBLE_SUBJECT` is ignored with a
  warning (a height entered in cm where DICOM wants m, a zero weight); ``height_cm``,
  ``weight_kg`` and ``heart_rate_bpm`` / ``rr_ms`` replace what the input says, and an
  implausible one is an error.

* Overrides: ``spacing`` = ``(slice, row, col)`` mm replaces the input's spacing;
  ``heart_rate_bpm`` or ``rr_ms`` (not both) sets ``times_ms = frame_number * RR / N`` with
  ``N`` the number of frames in the cycle (``NbFrame`` for ACDC, else the number of frames)
  and replaces any timing in the input; ``ed`` / ``es`` are 0-based frame numbers in the
  cardiac cycle (the same as indices into the data except for two-frame ACDC folders, where
  they must be one of ``frame_numbers``). Inputs other than ACDC carry no ED/ES: ``cine.ed``
  and ``cine.es`` stay ``None`` unless given.

File layouts written and read here (all keep the input geometry so outputs overlay it):

* cine: 4D NIfTI ``(x, y, z, t)`` ``float32``; ``pixdim[4]`` = frame interval in ms and
  ``toffset`` = time of frame 0 in ms when the timing is known and evenly spaced (1 % tol.),
  else ``pixdim[4] = 0`` (read back as "no timing"); ``xyzt_units`` = mm, ms.
* labels: NIfTI ``(x, y, z, t)`` or ``(x, y, z)`` ``uint8`` with the ACDC values.
* displacement: 5D NIfTI ``(x, y, z, t, 3)`` ``float32``, intent ``NIFTI_INTENT_VECTOR``,
  components in RAS mm, Lagrangian from the ED voxel centres, same affine as the cine.
* Every file written by :func:`save_cine`, :func:`save_labels` and :func:`save_displacement`
  has its sform **and** qform set to the geometry's affine, both with code 1 (scanner): any
  reader (nibabel, ITK/Slicer, FSL) then sees the same grid. :func:`save_frame_labels` instead
  copies the header of the input frame file (codes and affines included), so its output
  reads exactly like that input in every reader.
* Writers refuse to replace an existing file unless ``overwrite=True`` and write through a
  temporary file in the same folder, renamed when complete (no half-written files).

Geometry round trips are exact up to the ``float32`` precision of NIfTI headers.
"""
from __future__ import annotations

import io as _stdio
import itertools
import os
import re
import tempfile
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np

from .cine import Cine, Geometry, Subject, frame_index, subject_value_problem
from .errors import InputError, first_few
from .outputs import apply_umask

__all__ = [
    "DeepStrainWarning",
    "load_cine",
    "load_labels",
    "load_displacement",
    "save_cine",
    "save_labels",
    "save_displacement",
    "save_frame_labels",
]

PathLike = str | os.PathLike
LABEL_VALUES = (0, 1, 2, 3)
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_PLAUSIBLE_FRAME_INTERVAL_MS = (5.0, 500.0)
SLICE_INTERVAL_TOLERANCE = 0.25
"""A DICOM slice whose frame interval is this much off the slices' median gets a warning."""
_GRID_ATOL_MM = 1e-2  # origin tolerance for "same grid"
_GRID_RTOL = 1e-3  # spacing / direction tolerance for "same grid"


class DeepStrainWarning(UserWarning):
    """Something about an input that the user should know (it is also kept in ``cine.warnings``)."""


def _warn(messages: list[str], message: str) -> None:
    """Collect a warning; :func:`load_cine` emits the ones that still apply when it returns."""
    messages.append(message)


# =========================================================================== NIfTI helpers
def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(_NIFTI_SUFFIXES)


def _load_nifti(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    """Image and its data (scaling applied); any read failure becomes an InputError."""
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "is not a file")
    if not _is_nifti(path):
        raise InputError(path, "not a NIfTI file (expected .nii or .nii.gz)")
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as exc:  # nibabel, gzip/zlib and OS errors alike
        raise InputError(path, f"cannot be read as NIfTI (truncated or corrupt file?): {exc}") from exc
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(path, f"not a NIfTI image ({type(img).__name__})")
    if np.iscomplexobj(data):  # its real part alone is not the image (and numpy would drop the rest silently)
        raise InputError(path, f"complex-valued image ({data.dtype}): give a magnitude image")
    return img, data


def nifti_affine(img: nib.Nifti1Image) -> tuple[np.ndarray, bool]:
    """The affine that orients the image, chosen as ITK, and so 3D Slicer, chooses it (checked
    against SimpleITK 2.5 for every pair of codes), and whether the header had one:

    1. the sform when ``sform_code`` is 1 (scanner) and its columns are orthogonal;
    2. else the qform when ``qform_code > 0`` (also when an sform of code 2-4 is there);
    3. else the sform when ``sform_code > 0`` (ACDC: code 2, no qform);
    4. else none: ITK's default, ``diag(-dx, -dy, dz)`` in RAS at the origin (LPS identity).

    nibabel's own ``img.affine`` prefers any sform, and its default is another one, so outputs
    written on it would not overlay the input in Slicer for headers of rules 2 and 4.
    """
    hdr = img.header
    sform_code, qform_code = int(hdr["sform_code"]), int(hdr["qform_code"])
    sform = np.asarray(hdr.get_sform(), dtype=np.float64)
    if sform_code == 1 and (qform_code == 0 or _orthogonal_columns(sform[:3, :3])):
        return sform, True
    if qform_code > 0:
        return np.asarray(hdr.get_qform(), dtype=np.float64), True
    if sform_code > 0:
        return sform, True
    zooms = [float(z) for z in hdr.get_zooms()[:3]] + [1.0] * max(0, 3 - len(hdr.get_zooms()))
    return np.diag([-zooms[0], -zooms[1], zooms[2], 1.0]), False


def _other_form(img: nib.Nifti1Image, used: np.ndarray) -> tuple[str, int] | None:
    """(name, code) of the form used when the header holds both, with codes above 0, and they
    disagree (unit directions by more than 1e-3 or origins by more than 0.01 mm); else None."""
    hdr = img.header
    if int(hdr["sform_code"]) == 0 or int(hdr["qform_code"]) == 0:
        return None
    a = np.asarray(hdr.get_sform(), dtype=np.float64)
    b = np.asarray(hdr.get_qform(), dtype=np.float64)

    def unit(m: np.ndarray) -> np.ndarray:  # a zero column gives NaN: counted as disagreeing
        with np.errstate(divide="ignore", invalid="ignore"):
            return m[:3, :3] / np.linalg.norm(m[:3, :3], axis=0)

    if np.abs(unit(a) - unit(b)).max() <= 1e-3 and np.abs(a[:3, 3] - b[:3, 3]).max() <= 0.01:
        return None
    name = "sform" if np.array_equal(used, a) else "qform"
    return name, int(hdr[f"{name}_code"])


def _orthogonal_columns(m: np.ndarray, tol: float = 1e-4) -> bool:
    """Whether the columns of ``m`` are orthogonal (a rotation times axis scales, no shear)."""
    norms = np.linalg.norm(m, axis=0)
    if np.any(norms == 0) or not np.all(np.isfinite(m)):
        return False
    u = m / norms
    return bool(np.abs(u.T @ u - np.eye(3)).max() < tol)


_SPATIAL_SCALE_TO_MM = {"mm": 1.0, "unknown": 1.0, "meter": 1000.0, "micron": 1e-3}


def _nifti_geometry(path: Path, img: nib.Nifti1Image, messages: list[str], *, quiet: bool = False
                    ) -> tuple[Geometry, bool]:
    """Geometry from a NIfTI header (orientation: affine; spacing: pixdim) and whether the
    spacing looks lost (pixdim exactly 1, 1, 1 and no other information)."""
    hdr = img.header
    affine, oriented = nifti_affine(img)
    if not oriented and not quiet:
        _warn(messages, f"{path}: the header has no orientation (qform_code and sform_code are 0); "
                        "an axis-aligned orientation is assumed (3D Slicer's and ITK's default)")
    if not quiet and (other := _other_form(img, affine)) is not None:
        _warn(messages, f"{path}: the header's sform and qform disagree (directions or origin); the {other[0]} "
                        f"(code {other[1]}) is used, as 3D Slicer and ITK use it, and the outputs are on it")
    space_unit, _ = hdr.get_xyzt_units()
    scale = _SPATIAL_SCALE_TO_MM.get(space_unit)
    if scale is None:
        raise InputError(path, f"spatial unit '{space_unit}' is not a length")
    zooms = np.asarray(hdr.get_zooms()[:3], dtype=np.float64)
    if zooms.shape[0] < 3:
        zooms = np.concatenate([zooms, np.ones(3 - zooms.shape[0])])
    col_norms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(col_norms == 0) or not np.all(np.isfinite(affine)):
        raise InputError(path, "the header's affine is singular or not finite")
    lost = False
    if np.all(zooms == 1.0):
        if np.allclose(col_norms, 1.0, rtol=1e-4):
            lost = True
        else:
            if not quiet:
                _warn(messages, f"{path}: pixdim says 1 x 1 x 1 mm but the affine says "
                                f"{_fmt(col_norms)} mm (i, j, k); using the affine's spacing")
            zooms = col_norms
    elif not np.allclose(col_norms, 1.0, rtol=1e-4) and not np.allclose(col_norms, zooms, rtol=1e-2) and not quiet:
        # an affine that carries a voxel size other than pixdim's (not ACDC's unit-length sform)
        _warn(messages, f"{path}: the affine's voxel size {_fmt(col_norms)} mm (i, j, k) differs from pixdim's "
                        f"{_fmt(zooms)} mm; pixdim is used (as 3D Slicer and ITK do), and the outputs' affine is "
                        "built from it: check that they overlay the input in your viewer")
    if np.any(~np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(path, f"voxel size in the header is not positive: {_fmt(zooms)}")
    affine = affine.copy()
    affine[:3, 3] *= scale
    geom = Geometry.from_nifti_affine(affine, tuple(zooms * scale))
    return geom, lost


def _fmt(values: Sequence[float]) -> str:
    return " x ".join(f"{float(v):.6g}" for v in values)


def _lost_spacing_message(path: Path) -> str:
    return (f"{path}: the voxel spacing looks lost (the header says 1 x 1 x 1 mm, as happens when a file "
            "is re-saved by a tool that drops it); distances, volumes and strain rates would be wrong. "
            "Give the true spacing with --spacing SLICE ROW COL (mm, e.g. --spacing 10 1.5625 1.5625), "
            "or spacing=(slice, row, col) in Python")


def _nifti_times(path: Path, img: nib.Nifti1Image, n_frames: int, messages: list[str]) -> np.ndarray:
    hdr = img.header
    _, time_unit = hdr.get_xyzt_units()
    zooms = hdr.get_zooms()
    dt = float(zooms[3]) if len(zooms) > 3 else 0.0
    toffset = float(hdr["toffset"]) if "toffset" in hdr else 0.0
    scale = {"sec": 1000.0, "msec": 1.0, "usec": 1e-3}.get(time_unit)
    nan = np.full(n_frames, np.nan)
    if scale is None:
        _warn(messages, f"{path}: no frame timing (time unit '{time_unit}', frame interval {dt:g}); "
                        "strain rates cannot be computed. Give the heart rate with --heart-rate BPM or the "
                        "RR interval with --rr-ms MS")
        return nan
    dt_ms = dt * scale
    lo, hi = _PLAUSIBLE_FRAME_INTERVAL_MS
    if not np.isfinite(dt_ms) or not lo <= dt_ms <= hi:
        _warn(messages, f"{path}: frame interval {dt_ms:g} ms in the header is not plausible "
                        f"(expected {lo:g} to {hi:g} ms); timing ignored. Give the heart rate with "
                        "--heart-rate BPM or the RR interval with --rr-ms MS")
        return nan
    t0 = toffset * scale if np.isfinite(toffset) else 0.0
    return t0 + dt_ms * np.arange(n_frames, dtype=np.float64)


def _check_finite(path: Path, data: np.ndarray) -> None:
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InputError(path, f"the image holds {n_bad} NaN or infinite values")


def _to_tzyx(data: np.ndarray) -> np.ndarray:
    """NIfTI (x, y, z, t) -> (T, Z, Y, X) float32, C-contiguous."""
    return np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)), dtype=np.float32)


def _load_nifti_cine(path: Path, messages: list[str]) -> tuple[np.ndarray, Geometry, bool, np.ndarray, nib.Nifti1Image]:
    img, data = _load_nifti(path)
    shape = data.shape
    if data.ndim == 5 and shape[4] == 1:
        data = data[..., 0]
    if data.ndim == 3 or (data.ndim == 4 and shape[3] == 1):
        raise InputError(path, f"a single 3D frame {tuple(shape)}, not a cine: a cine needs a 4D image "
                               "(x, y, z, t) with at least 2 frames")
    if data.ndim != 4:
        raise InputError(path, f"image of shape {tuple(shape)} ({data.ndim}D) is not a cine: expected a 4D "
                               "image (x, y, z, t)")
    _check_finite(path, data)
    geom, lost = _nifti_geometry(path, img, messages)
    times = _nifti_times(path, img, data.shape[3], messages)
    return _to_tzyx(data), geom, lost, times, img


# =========================================================================== load_cine
def load_cine(
    path: PathLike,
    *,
    spacing: Sequence[float] | None = None,
    heart_rate_bpm: float | None = None,
    rr_ms: float | None = None,
    ed: int | None = None,
    es: int | None = None,
    height_cm: float | None = None,
    weight_kg: float | None = None,
    given_source: str | None = None,
) -> Cine:
    """Load a cine from a 4D NIfTI file, an ACDC patient folder or a DICOM cine folder.

    ``spacing`` ``(slice, row, col)`` in mm replaces the input's voxel size; ``heart_rate_bpm``
    (beats/min) or ``rr_ms`` (ms) sets ``times_ms = frame_number * RR / frames_per_cycle`` and
    the subject's heart rate; ``ed``/``es`` are 0-based frame numbers in the cardiac cycle;
    ``height_cm`` / ``weight_kg`` replace the subject's height and weight from the input;
    ``given_source`` says where these three values came from, for the report (default: the
    command-line flag, e.g. ``--height``). See
    the module docstring for the layouts. Raises :class:`InputError` for unusable input;
    problems that do not stop the analysis are warned (:class:`DeepStrainWarning`) and kept in
    ``cine.warnings``.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file or folder not found")
    for name, value in (("height_cm", height_cm), ("weight_kg", weight_kg)):
        if value is not None and (problem := subject_value_problem(name, float(value))):
            raise InputError(path, f"{_SUBJECT_FLAGS[name]}: {problem}")
    if spacing is not None:
        spacing_arr = np.asarray(spacing, dtype=np.float64).reshape(-1)
        if spacing_arr.shape != (3,) or not np.all(np.isfinite(spacing_arr)) or np.any(spacing_arr <= 0):
            raise InputError(path, f"--spacing must be three positive numbers (slice, row, col) in mm, got {spacing}")
    if heart_rate_bpm is not None and rr_ms is not None:
        raise InputError(path, "give either the heart rate or the RR interval, not both")
    rr = None
    if heart_rate_bpm is not None:
        if problem := subject_value_problem("heart_rate_bpm", float(heart_rate_bpm)):
            raise InputError(path, problem)
        rr = 60000.0 / float(heart_rate_bpm)
    if rr_ms is not None:
        if not np.isfinite(rr_ms) or not 200 <= rr_ms <= 3000:
            raise InputError(path, f"RR interval {rr_ms} ms is not plausible (200 to 3000 ms)")
        rr = float(rr_ms)

    messages: list[str] = []
    frames_per_cycle: int | None = None
    if path.is_file():
        if not _is_nifti(path) and looks_like_dicom(path):
            cine = _load_dicom_folder(path, messages)  # one multi-frame (enhanced) file holding the cine
            lost = False
        else:
            data, geom, lost, times, _ = _load_nifti_cine(path, messages)
            cine = Cine(data=data, geometry=geom, times_ms=times, name=_nifti_stem(path), source=str(path))
    elif (path / "Info.cfg").is_file():
        cine, lost, frames_per_cycle = _load_acdc_folder(path, messages)
    elif is_ukbb_folder(path):
        cine, lost = _load_ukbb_folder(path, messages)
        if rr is not None and cine.frame_files:
            raise InputError(path, "--heart-rate / --rr-ms cannot set frame times for sa_ED + sa_ES alone: where ES "
                                   "falls in the cycle is unknown (give the folder with sa.nii.gz)")
    else:
        cine = _load_dicom_folder(path, messages)
        lost = False

    if lost:
        if spacing is None:
            _warn(messages, _lost_spacing_message(path))
    if spacing is not None:
        cine.geometry = Geometry(spacing_arr, cine.geometry.origin, cine.geometry.direction)

    if rr is not None:
        n_cycle = frames_per_cycle or cine.n_frames
        cine.times_ms = np.asarray(cine.frame_numbers, dtype=np.float64) * rr / n_cycle
        # the timing warnings of the input no longer apply
        messages[:] = [m for m in messages if "--heart-rate" not in m]
        cine.subject.given("heart_rate_bpm", 60000.0 / rr,
                           given_source or ("--heart-rate" if heart_rate_bpm is not None else "--rr-ms"))
    for name, value in (("height_cm", height_cm), ("weight_kg", weight_kg)):
        if value is not None:  # checked above, before reading the input
            cine.subject.given(name, value, given_source or _SUBJECT_FLAGS[name])

    for attr, value in (("ed", ed), ("es", es)):
        if value is None:
            continue
        index = frame_index(cine.frame_numbers, value)
        if index is None:
            raise InputError(path, f"{attr.upper()} frame {value} is not among the frames of the input: --{attr} "
                                   "takes a frame's 0-based number in the cardiac cycle, here one of "
                                   f"{[int(n) for n in cine.frame_numbers]} (report.json: frames.cycle_frames)")
        setattr(cine, attr, index)

    sp = cine.geometry.spacing
    if not lost and cine.data.shape[1] > 1 and sp[0] < 0.9 * max(sp[1], sp[2]):
        _warn(messages, f"{path}: the slices are {sp[0]:g} mm apart, closer than the pixels are wide "
                        f"({sp[1]:g} x {sp[2]:g} mm): deepstrain takes the file's third axis (NIfTI k, the "
                        "stacked DICOM slices) as the short-axis slice axis; if the short-axis slices lie along "
                        "another axis, the segmentation and strain are meaningless: store the stack with its "
                        "slices along the third axis")

    cine.warnings = messages
    for message in messages:
        warnings.warn(message, DeepStrainWarning, stacklevel=2)
    return cine


_DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


def _has_dicm_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return head[128:132] == b"DICM"


def looks_like_dicom(path: Path) -> bool:
    """True for a ``.dcm``/``.ima``/``.dicom`` file or a file with the DICM magic at byte 128."""
    return path.suffix.lower() in _DICOM_SUFFIXES or _has_dicm_magic(path)


def _meant_as_dicom(path: Path) -> bool:
    """Whether a file in a DICOM folder that cannot be read is worth naming: a DICOM extension, the DICM
    magic, no extension or a numeric one (scanners often write ``IM0001`` or UID-named files). Hidden
    files (``.DS_Store``), ``DICOMDIR`` and files of other types (``.txt``, ``Thumbs.db``, ``.pdf``) are
    not: they stay quietly ignored."""
    if path.name.startswith(".") or path.name.upper() == "DICOMDIR":
        return False
    suffix = path.suffix.lower()
    return suffix in _DICOM_SUFFIXES or suffix == "" or suffix[1:].isdigit() or _has_dicm_magic(path)


_PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _broken_dicom(path: Path, ds: object) -> str | None:
    """Why a file that parsed without an image's geometry is a broken DICOM file (empty, no DICOM header,
    an image whose pixel data is missing: truncated), or None for a whole DICOM object that is simply
    not a cine image (DICOMDIR, structured report, secondary capture, ...)."""
    import pydicom

    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
    except OSError as exc:
        return f"cannot be read: {exc}"
    meta = getattr(ds, "file_meta", None)
    sop = str(ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta is not None else ""))
    if not sop:
        return "no DICOM header could be read (truncated, or not a DICOM file)"
    if "Image Storage" not in pydicom.uid.UID(sop).name:
        return None
    try:
        full = pydicom.dcmread(str(path), force=True, defer_size=1024)
        has_pixels = any(tag in full for tag in _PIXEL_DATA_TAGS)
    except Exception as exc:
        return f"cannot be parsed as DICOM ({type(exc).__name__}: {exc})"
    if not has_pixels:
        return "a DICOM image without geometry or pixel data (truncated file?)"
    return None


def _nifti_stem(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# =========================================================================== ACDC folders
_ACDC_FRAME = re.compile(r"^(?P<name>.+)_frame(?P<n>\d+)\.nii(\.gz)?$")
_ACDC_GT = re.compile(r"^(?P<name>.+)_frame(?P<n>\d+)_gt\.nii(\.gz)?$")
_ACDC_4D = re.compile(r"^(?P<name>.+)_4d\.nii(\.gz)?$")


def read_info_cfg(path: Path) -> dict[str, str]:
    """An ACDC ``Info.cfg`` (``Key: value`` lines) as a dict of strings; UTF-8, with or without
    the byte-order mark some Windows editors write."""
    info: dict[str, str] = {}
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot be read: {exc}") from exc
    for line in text.splitlines():
        if ":" in line:
            key, value = line.split(":", 1)
            info[key.strip()] = value.strip()
    return info


def _cfg_int(cfg_path: Path, info: dict[str, str], key: str) -> int | None:
    if key not in info:
        return None
    try:
        value = float(info[key])
    except ValueError:
        raise InputError(cfg_path, f"{key} is not a number: {info[key]!r}") from None
    if not np.isfinite(value) or value != int(value) or value < 1:  # NaN / inf: int() would raise
        raise InputError(cfg_path, f"{key} must be a positive whole number (1-based), got {info[key]!r}")
    return int(value)


_SUBJECT_FLAGS = {"height_cm": "--height", "weight_kg": "--weight", "heart_rate_bpm": "--heart-rate"}


def _header_subject(where: Path, values: dict[str, tuple[float | None, str]], messages: list[str]) -> Subject:
    """A :class:`Subject` from header values ``name -> (value, field description)``; implausible ones
    are left out with a warning naming the file and the field."""
    subject = Subject()
    for name, (value, source) in values.items():
        if value is None:
            continue
        if problem := subject_value_problem(name, value):
            _warn(messages, f"{where}: {source}: {problem}; ignored (give {_SUBJECT_FLAGS[name]})")
            continue
        setattr(subject, name, float(value))
        subject.sources[name] = f"{where} {source}"
    return subject


def _cfg_float(cfg_path: Path, info: dict[str, str], key: str, messages: list[str]) -> float | None:
    if key not in info:
        return None
    try:
        return float(info[key])
    except ValueError:
        _warn(messages, f"{cfg_path}: {key} is not a number: {info[key]!r}; ignored")
        return None


def _dicom_subject(folder: Path, dsets: list, messages: list[str]) -> Subject:
    """Height, weight and heart rate of a DICOM series (the median of each tag over its images)."""
    def median(key: str) -> float | None:
        xs = []
        for ds in dsets:
            try:
                x = float(ds.get(key))
            except (TypeError, ValueError):
                continue
            if np.isfinite(x) and x > 0:
                xs.append(x)
        return float(np.median(xs)) if xs else None

    size_m, hr, rr = median("PatientSize"), median("HeartRate"), median("NominalInterval")
    if hr is None and rr is not None:
        hr_value = (60000.0 / rr, "NominalInterval (RR, ms)")
    else:
        hr_value = (hr, "HeartRate")
    return _header_subject(folder, {"height_cm": (None if size_m is None else 100.0 * size_m, "PatientSize (m)"),
                                    "weight_kg": (median("PatientWeight"), "PatientWeight (kg)"),
                                    "heart_rate_bpm": hr_value}, messages)


def _load_acdc_labels(path: Path, shape3d: tuple[int, int, int], geom: Geometry) -> np.ndarray:
    img, data = _load_nifti(path)
    if data.ndim != 3 or tuple(data.shape[::-1]) != tuple(shape3d):
        raise InputError(path, f"labels grid does not match the cine: shape {tuple(data.shape)} (x, y, z), "
                               f"expected {tuple(shape3d[::-1])}")
    lab_geom, _ = _nifti_geometry(path, img, [], quiet=True)
    _check_same_grid(path, lab_geom, geom, check_spacing=True, what="labels grid")
    return _checked_labels(path, data).transpose(2, 1, 0).copy()


def _load_frame_files(files: list[Path], messages: list[str]) -> tuple[np.ndarray, Geometry, bool]:
    """(T, Z, Y, X) data, geometry and lost-spacing flag of 3D frame files on one grid."""
    vols, geom, lost = [], None, False
    for f in files:
        img, d = _load_nifti(f)
        if d.ndim != 3:
            raise InputError(f, f"expected one 3D frame, got shape {tuple(d.shape)}")
        _check_finite(f, d)
        g, lost_k = _nifti_geometry(f, img, messages)
        if geom is None:
            geom, lost, shape0, first = g, lost_k, d.shape, f
        else:
            if d.shape != shape0:
                raise InputError(f, f"frame shape {tuple(d.shape)} differs from {first.name} {tuple(shape0)}")
            _check_same_grid(f, g, geom, check_spacing=True, what=f"frame grid (compared with {first.name})")
        vols.append(d)
    return _to_tzyx(np.stack(vols, axis=-1)), geom, lost


UKBB_TO_ACDC = np.array([0, 3, 2, 1], dtype=np.uint8)
"""UK Biobank segmentation values (Bai et al.: 1 LV cavity, 2 LV myocardium, 3 RV cavity) -> ACDC values."""


def is_ukbb_folder(path: Path) -> bool:
    """A UK Biobank subject folder (layout of Bai et al.'s pipeline): ``sa.nii.gz``, or ``sa_ED.nii.gz``
    and ``sa_ES.nii.gz``."""
    return path.is_dir() and ((path / "sa.nii.gz").is_file()
                              or ((path / "sa_ED.nii.gz").is_file() and (path / "sa_ES.nii.gz").is_file()))


def _load_ukbb_folder(folder: Path, messages: list[str]) -> tuple[Cine, bool]:
    """The short-axis cine of a UK Biobank subject folder: ``sa.nii.gz`` (the whole cycle) when
    present, else the two frames ``sa_ED.nii.gz`` and ``sa_ES.nii.gz`` (ED = 0, ES = 1, no timing;
    one ``<frame>_seg.nii.gz`` output each). ``seg_sa_ED.nii.gz`` / ``seg_sa_ES.nii.gz`` (UK
    Biobank's segmentation) are attached as ``cine.labels`` in ACDC values. Long-axis files are not used."""
    if (folder / "sa.nii.gz").is_file():
        data, geom, lost, times, _ = _load_nifti_cine(folder / "sa.nii.gz", messages)
        return Cine(data=data, geometry=geom, times_ms=times, name=folder.name, source=str(folder)), lost
    files = [folder / "sa_ED.nii.gz", folder / "sa_ES.nii.gz"]
    data, geom, lost = _load_frame_files(files, messages)
    cine = Cine(data=data, geometry=geom, times_ms=np.full(2, np.nan), name=folder.name, source=str(folder),
                ed=0, es=1, frame_files=[str(f) for f in files])
    _warn(messages, f"{folder}: sa_ED and sa_ES only (no sa.nii.gz): no frame timing, strain rates cannot be "
                    "computed, and the ES frame's place in the cycle is unknown")
    for i, phase in enumerate(("ED", "ES")):
        seg = folder / f"seg_sa_{phase}.nii.gz"
        if seg.is_file():
            cine.labels[i] = UKBB_TO_ACDC[_load_acdc_labels(seg, cine.shape3d, geom)]
    return cine, lost


def _load_acdc_folder(folder: Path, messages: list[str]) -> tuple[Cine, bool, int | None]:
    cfg = folder / "Info.cfg"
    info = read_info_cfg(cfg)
    ed_1 = _cfg_int(cfg, info, "ED")
    es_1 = _cfg_int(cfg, info, "ES")
    nb = _cfg_int(cfg, info, "NbFrame")
    group = info.get("Group")
    frames: dict[int, Path] = {}
    gts: dict[int, Path] = {}
    fourd: list[Path] = []
    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        if m := _ACDC_GT.match(f.name):
            gts[int(m["n"])] = f
        elif m := _ACDC_FRAME.match(f.name):
            frames[int(m["n"])] = f
        elif _ACDC_4D.match(f.name):
            fourd.append(f)
    if len(fourd) > 1:
        raise InputError(folder, f"several 4D files: {[p.name for p in fourd]}")
    if ed_1 is None or es_1 is None:
        messages_missing = [k for k, v in (("ED", ed_1), ("ES", es_1)) if v is None]
        raise InputError(cfg, f"missing {' and '.join(messages_missing)}")
    if nb is not None:  # frames past the end of the cycle would get times later than the RR interval
        for key, one_based in (("ED", ed_1), ("ES", es_1)):
            if one_based > nb:
                raise InputError(cfg, f"{key} frame {one_based} is beyond NbFrame {nb} (the number of frames in the "
                                      "cycle): ED, ES and NbFrame contradict each other")
        beyond = [frames[k].name for k in sorted(frames) if k > nb]
        if beyond and not fourd:
            raise InputError(cfg, f"NbFrame is {nb} but the folder holds frame(s) beyond it: {first_few(beyond)}")

    lost = False
    if fourd:
        data, geom, lost, times, _ = _load_nifti_cine(fourd[0], messages)
        n = data.shape[0]
        if nb is not None and nb != n:
            _warn(messages, f"{cfg}: NbFrame is {nb} but {fourd[0].name} has {n} frames")
        frame_numbers = np.arange(n)
        frame_files = None
        nb_cycle = n
    else:
        if not frames:
            raise InputError(folder, "ACDC folder without images (no <name>_frameXX.nii.gz or <name>_4d.nii.gz)")
        numbers = sorted(frames)
        if len(numbers) < 2:
            raise InputError(frames[numbers[0]], "only one frame in the folder: a cine needs at least 2 frames")
        data, geom, lost = _load_frame_files([frames[k] for k in numbers], messages)
        frame_numbers = np.asarray([k - 1 for k in numbers])
        frame_files = [str(frames[k]) for k in numbers]
        times = np.full(len(numbers), np.nan)
        _warn(messages, f"{folder}: ACDC folders carry no frame timing; strain rates cannot be computed. Give the "
                        "heart rate with --heart-rate BPM or the RR interval with --rr-ms MS")
        nb_cycle = nb if nb is not None else int(frame_numbers.max()) + 1

    idx_of = {int(n): i for i, n in enumerate(frame_numbers)}
    for key, one_based in (("ED", ed_1), ("ES", es_1)):
        if one_based - 1 not in idx_of:
            raise InputError(cfg, f"{key} frame {one_based} (1-based) is not among the images of the folder")
    cine = Cine(data=data, geometry=geom, times_ms=times, name=folder.name, source=str(folder),
                ed=idx_of[ed_1 - 1], es=idx_of[es_1 - 1], frame_numbers=frame_numbers,
                frame_files=frame_files, group=group,
                subject=_header_subject(cfg, {"height_cm": (_cfg_float(cfg, info, "Height", messages), "Height (cm)"),
                                              "weight_kg": (_cfg_float(cfg, info, "Weight", messages), "Weight (kg)")},
                                        messages))
    for k in sorted(gts):
        if k - 1 not in idx_of:
            _warn(messages, f"{gts[k]}: frame {k} has labels but is not among the loaded frames; ignored")
            continue
        cine.labels[idx_of[k - 1]] = _load_acdc_labels(gts[k], cine.shape3d, geom)
    return cine, lost, nb_cycle


# =========================================================================== DICOM folders
def _load_dicom_folder(folder: Path, messages: list[str]) -> Cine:
    # pydicom warns about non-conforming tag values (e.g. Sunnybrook's UIDs); they do not
    # affect what is read here, so they are not passed on to the user
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=UserWarning, module=r"pydicom(\.|$)")
        return _read_dicom_folder(folder, messages)


def _files_below(folder: Path) -> list[Path]:
    """Every file in ``folder`` and its sub-folders, sorted, symbolic links to folders followed
    (each real folder once, so a link loop ends)."""
    files, seen = [], set()
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        files.extend(Path(root) / n for n in names if (Path(root) / n).is_file())
    return sorted(files)


def _read_dicom_folder(folder: Path, messages: list[str]) -> Cine:
    import pydicom

    files = [folder] if folder.is_file() else _files_below(folder)
    series: dict[str, list[tuple[Path, object]]] = {}
    nifti_seen = []
    unreadable: list[tuple[Path, str]] = []  # files meant as DICOM that cannot be read: named, never hidden
    multi_frame = False
    for f in files:
        if _is_nifti(f):
            nifti_seen.append(f.name)
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True, force=True)
        except Exception as exc:
            if folder.is_file() or _meant_as_dicom(f):
                unreadable.append((f, f"cannot be parsed as DICOM ({type(exc).__name__}: {exc})"))
            continue  # not DICOM
        if _number_of_frames(ds) > 1:
            if not _has_frame_geometry(ds):
                raise InputError(f, "multi-frame DICOM without a plane position per frame (not an enhanced MR "
                                    "image) is not supported; export the cine as one image per file")
            images = _enhanced_frames(f, ds)
            multi_frame = True
        elif "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds or "Rows" not in ds:
            if (folder.is_file() or _meant_as_dicom(f)) and (problem := _broken_dicom(f, ds)):
                unreadable.append((f, problem))
            continue  # not an image with geometry (DICOMDIR, report, ...)
        elif "Columns" not in ds:
            raise InputError(f, "DICOM image without Columns (0028,0011): its pixel data cannot be read")
        else:
            images = [ds]
        uid = str(ds.get("SeriesInstanceUID", ""))
        series.setdefault(uid, []).extend((f, d) for d in images)
    if folder.is_file() and unreadable:
        raise InputError(folder, unreadable[0][1])
    if folder.is_file() and not multi_frame:
        raise InputError(folder, "a single DICOM image; give the folder that holds the whole cine series")
    left_out = ""
    if unreadable:
        left_out = (f"{len(unreadable)} file(s) that look like DICOM could not be read and were left out: "
                    + first_few(f"{_within(f, folder)} ({why})" for f, why in unreadable))
    if not series:
        _refuse_incomplete_nifti_folder(folder, [f.name for f in files if f.parent == folder])
        hint = f"; it holds NIfTI files ({', '.join(nifti_seen[:3])}): give the file itself" if nifti_seen else ""
        raise InputError(folder, "no DICOM images found (and neither an ACDC folder's Info.cfg nor a UK Biobank "
                                 f"folder's sa.nii.gz or sa_ED.nii.gz + sa_ES.nii.gz){hint}"
                                 + (f"; {left_out}" if left_out else ""))
    try:
        cine = _choose_dicom_series(folder, series, messages)
    except InputError as exc:
        if not left_out:
            raise
        raise InputError(exc.path, f"{exc.problem}; note: {left_out}") from exc
    if left_out:
        _warn(messages, f"{folder}: {left_out}")
    return cine


def _refuse_incomplete_nifti_folder(folder: Path, names: list[str]) -> None:
    """A folder without DICOM images whose NIfTI files are named as in an ACDC patient folder or a UK
    Biobank subject folder: the error names the file that is missing (rather than "no DICOM images")."""
    acdc = sorted(n for n in names if _ACDC_FRAME.match(n) or _ACDC_4D.match(n) or _ACDC_GT.match(n))
    if acdc:
        raise InputError(folder / "Info.cfg", f"not found: {folder} holds ACDC images ({first_few(acdc, 3)}) but no "
                                              "Info.cfg, which gives the ED and ES frames (lines 'ED: <n>', "
                                              "'ES: <n>', 1-based); add it, or give a 4D NIfTI file itself")
    phases = [p for p in ("ED", "ES") if f"sa_{p}.nii.gz" in names]
    if len(phases) == 1 and "sa.nii.gz" not in names:
        missing = "sa_ES.nii.gz" if phases == ["ED"] else "sa_ED.nii.gz"
        raise InputError(folder / missing, f"not found: {folder} is a UK Biobank subject folder with "
                                           f"sa_{phases[0]}.nii.gz but no {missing} (and no sa.nii.gz, the whole "
                                           "cycle): both the ED and the ES frame are needed")


def _choose_dicom_series(folder: Path, series: dict[str, list[tuple[Path, object]]], messages: list[str]) -> Cine:
    """The cine of the series (or assembled stack) with the most images; see the module docstring."""

    def describe(what: str, items: list[tuple[Path, object]]) -> str:
        desc = str(items[0][1].get("SeriesDescription", "")).strip()
        return f"{what} ({len(items)} images{', ' + desc if desc else ''})"

    candidates = {uid: (describe(uid or "<no SeriesInstanceUID>", items), items) for uid, items in series.items()}
    for key, uids in _single_slice_stacks(folder, series).items():
        for uid in uids:
            candidates.pop(uid)
        items = [it for uid in uids for it in series[uid]]
        candidates[key] = (describe(f"{len(uids)} single-slice series assembled into one stack", items), items)
    counts = sorted(((len(v[1]), k) for k, v in candidates.items()), key=lambda c: (-c[0], c[1]))
    if len(counts) > 1:
        if counts[0][0] == counts[1][0]:
            tied = [k for n, k in counts if n == counts[0][0]]
            raise InputError(folder, "ambiguous: several DICOM series with the same number of images: "
                                     + "; ".join(candidates[k][0] for k in tied)
                                     + ". Put the series to analyse in a folder of its own")
        chosen = counts[0][1]
        _warn(messages, f"{folder}: several DICOM series; using {candidates[chosen][0]}; ignoring "
                        + "; ".join(candidates[k][0] for _, k in counts[1:]))
    else:
        chosen = counts[0][1]
    if chosen not in series:
        _warn(messages, f"{folder}: {candidates[chosen][0]}")
    return _assemble_dicom_series(folder, candidates[chosen][1], messages)


def _single_slice_stacks(folder: Path, series: dict[str, list[tuple[Path, object]]]) -> dict[str, list[str]]:
    """Groups (of 2 or more) of series that each hold one slice position of the same stack.

    Key: a name for the assembled stack; value: the series UIDs, ordered. Series are grouped by
    orientation (within 1e-3), rows/columns and pixel spacing; a series counts as one slice when
    all its images lie within 0.05 mm of one position along the normal and it has 2+ images.
    """
    groups: dict[tuple, list[tuple[float, str]]] = {}
    for uid, items in series.items():
        if len(items) < 2:
            continue
        try:
            f0, ds0 = items[0]
            iop = _dicom_float(ds0, "ImageOrientationPatient", f0, 6)
            ps = _dicom_float(ds0, "PixelSpacing", f0, 2)
            normal = np.cross(iop[:3], iop[3:])
            normal /= np.linalg.norm(normal)
            pos = [float(_dicom_float(ds, "ImagePositionPatient", f, 3) @ normal) for f, ds in items]
        except (InputError, ValueError, ZeroDivisionError):
            continue  # left to the assembler, which names the file and the problem
        if max(pos) - min(pos) > 0.05:
            continue  # more than one slice: a series of its own
        key = (tuple(np.round(iop, 3)), int(ds0.Rows), int(ds0.Columns), tuple(np.round(ps, 4)))
        groups.setdefault(key, []).append((float(np.mean(pos)), uid))
    out = {}
    for n, members in enumerate(sorted(groups.values(), key=lambda m: sorted(u for _, u in m))):
        if len(members) < 2:
            continue
        members.sort()
        for (p_a, u_a), (p_b, u_b) in itertools.pairwise(members):
            if abs(p_b - p_a) <= 0.05:
                raise InputError(folder, f"ambiguous: single-slice DICOM series {u_a} and {u_b} are at the same "
                                         "slice position (a repeated acquisition?); put the series to analyse in "
                                         "a folder of their own")
        out[f"<stack {n + 1}: {members[0][1]} ...>"] = [u for _, u in members]
    return out


FRAME_INDEX_ATTR = "deepstrain_frame_index"
"""Python attribute (not a DICOM tag) marking a frame of a multi-frame file."""


def _number_of_frames(ds) -> int:
    """``NumberOfFrames`` (1 when absent or malformed)."""
    try:
        return int(float(str(ds.get("NumberOfFrames", 1) or 1)))
    except (TypeError, ValueError, OverflowError):
        return 1


def _has_frame_geometry(ds) -> bool:
    """Whether a multi-frame file gives each frame a plane position (enhanced MR): in its per-frame
    functional groups, one per frame, or in the shared ones. A file with an empty per-frame sequence
    (as some scanners write) has none."""
    per = ds.get("PerFrameFunctionalGroupsSequence") or []
    shared = ds.get("SharedFunctionalGroupsSequence") or []
    return len(per) > 0 and ("PlanePositionSequence" in per[0] or (len(shared) > 0 and "PlanePositionSequence" in shared[0]))


def _enhanced_frames(f: Path, ds: object) -> list:
    """One header-only dataset per frame of a multi-frame (enhanced) file, with the tags the
    assembler reads (geometry, rescaling, trigger time) taken from the per-frame functional
    groups, else from the shared ones; ``FRAME_INDEX_ATTR`` holds the frame's index in the file."""
    from pydicom.dataset import Dataset

    shared_seq = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_seq[0] if shared_seq else None
    per = ds.PerFrameFunctionalGroupsSequence
    n = int(ds.NumberOfFrames)
    if len(per) != n:
        raise InputError(f, f"enhanced DICOM: {len(per)} per-frame functional groups for {n} frames")

    def group(i: int, name: str):
        for src in (per[i], shared):
            if src is not None and name in src and len(src[name].value):
                return src[name].value[0]
        return None

    out = []
    for i in range(n):
        pos, ori, pm = (group(i, k) for k in ("PlanePositionSequence", "PlaneOrientationSequence",
                                              "PixelMeasuresSequence"))
        if pos is None or ori is None or pm is None or "PixelSpacing" not in pm:
            raise InputError(f, f"enhanced DICOM frame {i + 1} has no plane position, orientation or pixel spacing")
        fr = Dataset()
        fr.Rows, fr.Columns = ds.Rows, ds.Columns
        fr.ImagePositionPatient = pos.ImagePositionPatient
        fr.ImageOrientationPatient = ori.ImageOrientationPatient
        fr.PixelSpacing = pm.PixelSpacing
        for key in ("SliceThickness", "SpacingBetweenSlices"):
            if key in pm:
                setattr(fr, key, pm.get(key))
        card = group(i, "CardiacSynchronizationSequence")
        if card is not None and card.get("NominalCardiacTriggerDelayTime") not in (None, ""):
            fr.TriggerTime = card.NominalCardiacTriggerDelayTime
        pvt = group(i, "PixelValueTransformationSequence")
        for key in ("RescaleSlope", "RescaleIntercept"):
            src = pvt if pvt is not None and key in pvt else ds
            if key in src:
                setattr(fr, key, src.get(key))
        fr.InstanceNumber = i + 1
        for key in ("SeriesInstanceUID", "SeriesDescription", "PatientSize", "PatientWeight", "HeartRate",
                    "NominalInterval"):
            if key in ds:
                setattr(fr, key, ds.get(key))
        setattr(fr, FRAME_INDEX_ATTR, i)
        out.append(fr)
    return out


def _dicom_float(ds: object, key: str, f: Path, n: int | None = None) -> np.ndarray:
    try:
        value = np.asarray([float(v) for v in (ds.get(key) if n else [ds.get(key)])], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f, f"DICOM tag {key} is missing or not numeric") from None
    if n is not None and value.shape != (n,):
        raise InputError(f, f"DICOM tag {key} must have {n} values")
    return value


def _within(f: Path, folder: Path) -> str:
    """``f`` as a path below the study ``folder`` (two files of one name in sub-folders stay apart)."""
    try:
        return str(f.relative_to(folder))
    except ValueError:
        return str(f)


def _assemble_dicom_series(folder: Path, items: list[tuple[Path, object]], messages: list[str]) -> Cine:
    import pydicom

    f0, ds0 = items[0]
    iop0 = _dicom_float(ds0, "ImageOrientationPatient", f0, 6)
    ps0 = _dicom_float(ds0, "PixelSpacing", f0, 2)
    rc0 = (int(ds0.Rows), int(ds0.Columns))
    recs = []
    for f, ds in items:
        iop = _dicom_float(ds, "ImageOrientationPatient", f, 6)
        ps = _dicom_float(ds, "PixelSpacing", f, 2)
        if not np.allclose(iop, iop0, atol=1e-4):
            raise InputError(f, f"inconsistent DICOM series: orientation {iop.tolist()} differs from {_within(f0, folder)} "
                                f"{iop0.tolist()}")
        if not np.allclose(ps, ps0, rtol=1e-4):
            raise InputError(f, f"inconsistent DICOM series: PixelSpacing {ps.tolist()} differs from {_within(f0, folder)} "
                                f"{ps0.tolist()}")
        if (int(ds.Rows), int(ds.Columns)) != rc0:
            raise InputError(f, f"inconsistent DICOM series: {ds.Rows}x{ds.Columns} pixels differs from "
                                f"{_within(f0, folder)} {rc0[0]}x{rc0[1]}")
        ipp = _dicom_float(ds, "ImagePositionPatient", f, 3)
        tt = ds.get("TriggerTime")
        try:
            trigger = float(tt) if tt is not None and str(tt).strip() != "" else np.nan
        except (TypeError, ValueError):
            trigger = np.nan
        recs.append((f, ipp, trigger, _instance_number(ds), ds))

    row_dir, col_dir = iop0[:3], iop0[3:]  # row_dir: along a row (increasing column index)
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    if abs(float(row_dir @ col_dir)) > 1e-3:
        raise InputError(f0, "ImageOrientationPatient row and column directions are not perpendicular")
    normal = np.cross(row_dir, col_dir)
    normal /= np.linalg.norm(normal)

    # group images into slices by position along the normal
    pos = np.array([r[1] @ normal for r in recs])
    order = np.argsort(pos, kind="stable")
    slices: list[list[int]] = []
    for i in order:
        if slices and abs(pos[i] - pos[slices[-1][0]]) <= 0.05:
            slices[-1].append(int(i))
        else:
            slices.append([int(i)])

    per_slice = [_frames_in_order(members, recs, f"the slice at {pos[members[0]]:.2f} mm", folder)
                 for members in slices]
    untimed = [k for k, m in enumerate(per_slice) if not all(np.isfinite(recs[i][2]) for i in m)]
    if untimed:  # not a timing note: it stays when --heart-rate gives the frame times
        _warn(messages, f"{folder}: images without TriggerTime in {len(untimed)} of {len(per_slice)} slices ("
                        + first_few(f"{pos[per_slice[k][0]]:.2f} mm" for k in untimed)
                        + "): their frames are ordered by InstanceNumber (checked against the trigger times present)")
    n_frames = {len(m) for m in per_slice}
    if len(n_frames) != 1:
        detail = ", ".join(f"slice {k} at {pos[m[0]]:.2f} mm: {len(m)}" for k, m in enumerate(per_slice))
        raise InputError(folder, f"inconsistent DICOM series: the slices have different numbers of frames ({detail})")
    T = n_frames.pop()
    Z = len(per_slice)
    if T < 2:
        raise InputError(folder, f"only one frame per slice ({Z} slices): not a cine")
    expected = _dicom_cardiac_images(recs)
    if expected is not None and T < expected:
        _warn(messages, f"{folder}: {T} frames per slice found, but the header's CardiacNumberOfImages says "
                        f"{expected} frames per cycle: frames missing from every slice? (where a frame is missing, "
                        "the interval between its neighbours is longer than the others)")

    # geometry
    positions = np.array([recs[m[0]][1] for m in per_slice])  # LPS, first frame of each slice
    for m in per_slice:
        for i in m:
            if np.linalg.norm(recs[i][1] - recs[m[0]][1]) > 0.05:
                raise InputError(recs[i][0], "inconsistent DICOM series: frames of one slice have different "
                                             "ImagePositionPatient")
    if Z > 1:
        gaps = np.diff(positions @ normal)
        dz = float(np.median(gaps))
        if np.any(np.abs(gaps - dz) > 0.1 * dz):
            raise InputError(folder, "slices are not evenly spaced (missing slice?): gaps "
                                     + ", ".join(f"{g:.2f}" for g in gaps) + " mm")
        if np.any(np.abs(gaps - dz) > 1e-3 * dz + 1e-3):
            _warn(messages, f"{folder}: slice gaps vary slightly ({gaps.min():.3f} to {gaps.max():.3f} mm); "
                            f"using {dz:.4f} mm")
        inplane = positions - positions[:1] - np.outer((positions - positions[:1]) @ normal, normal)
        shift = np.linalg.norm(inplane, axis=1).max()
        if shift > 0.5 * float(ps0.min()):
            raise InputError(folder, f"slices are shifted in-plane by up to {shift:.2f} mm: not a regular grid")
    else:
        dz = float(ds0.get("SpacingBetweenSlices", ds0.get("SliceThickness", 0)) or 0)
        if dz <= 0:
            dz = 1.0
            _warn(messages, f"{folder}: a single slice without SliceThickness; slice spacing set to 1 mm")
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    direction = lps_to_ras @ np.stack([normal, col_dir, row_dir], axis=1)
    origin = lps_to_ras @ positions[0]
    geom = Geometry(spacing=(dz, ps0[0], ps0[1]), origin=origin, direction=direction)

    # pixels
    data = np.empty((T, Z, rc0[0], rc0[1]), dtype=np.float32)
    decoded: dict[Path, np.ndarray] = {}  # multi-frame files are decoded once
    for z, members in enumerate(per_slice):
        for t, i in enumerate(members):
            f, meta = recs[i][0], recs[i][4]
            frame = getattr(meta, FRAME_INDEX_ATTR, None)
            try:
                if frame is None:
                    meta = pydicom.dcmread(str(f), force=True)
                    arr = np.asarray(meta.pixel_array)
                else:
                    if f not in decoded:
                        decoded[f] = np.asarray(pydicom.dcmread(str(f), force=True).pixel_array)
                    arr = decoded[f][frame]
            except Exception as exc:
                raise InputError(f, f"DICOM pixel data cannot be read: {exc}") from exc
            if arr.shape != rc0:
                raise InputError(f, f"pixel data of shape {arr.shape} (colour or multi-frame?) where {rc0} was expected")
            slope = float(meta.get("RescaleSlope", 1) or 1)
            inter = float(meta.get("RescaleIntercept", 0) or 0)
            data[t, z] = arr.astype(np.float64) * slope + inter
    _check_finite(folder, data)
    if len(untimed) == Z:
        times = np.full(T, np.nan)
        _warn(messages, f"{folder}: no slice has a TriggerTime on every image: no frame timing; strain rates "
                        "cannot be computed. Give the heart rate with --heart-rate BPM or the RR interval with --rr-ms MS")
    else:  # from the slices with a trigger time on every frame
        times = _dicom_frame_times(folder, np.array([[recs[i][2] for i in m] for m in per_slice]),
                                   [pos[m[0]] for m in per_slice], messages)
    name = folder.stem if folder.is_file() else folder.name
    return Cine(data=data, geometry=geom, times_ms=times, name=name, source=str(folder),
                subject=_dicom_subject(folder, [r[4] for r in recs], messages))


def _instance_number(ds) -> int | None:
    """``InstanceNumber`` as an integer; None when absent or not an integer (then it cannot order)."""
    try:  # pydicom converts the value when it is read: a malformed one raises there
        number = float(str(ds.get("InstanceNumber")).strip())
    except (TypeError, ValueError):
        return None
    return int(number) if np.isfinite(number) and number == int(number) else None


def _frames_in_order(members: list[int], recs: list, where: str, folder: Path) -> list[int]:
    """The images ``members`` of one slice in frame order: by TriggerTime where every image has one
    (two images with one TriggerTime are an error); else by InstanceNumber, which every image must
    then have, once each, in an order that agrees with the trigger times present. Never by file name.
    ``recs``: (file, position, TriggerTime or NaN, InstanceNumber or None, dataset)."""
    def names(idx: list[int]) -> str:
        return first_few(_within(recs[i][0], folder) for i in idx)

    if all(np.isfinite(recs[i][2]) for i in members):
        members = sorted(members, key=lambda i: (recs[i][2], recs[i][3] if recs[i][3] is not None else 0))
        tts = [recs[i][2] for i in members]
        dup = [t for a, t in zip(tts, tts[1:]) if t == a]
        if dup:
            raise InputError(folder, f"inconsistent DICOM series: two images of {where} have the same TriggerTime "
                                     f"{dup[0]} ms ({names([i for i in members if recs[i][2] == dup[0]])})")
        return members
    unnumbered = [i for i in members if recs[i][3] is None]
    if unnumbered:
        raise InputError(folder, f"the frames of {where} cannot be ordered: {len(unnumbered)} of its images have "
                                 f"neither a TriggerTime nor an integer InstanceNumber ({names(unnumbered)}); "
                                 "the order of the file names is not trusted")
    members = sorted(members, key=lambda i: recs[i][3])
    numbers = [recs[i][3] for i in members]
    dup = [n for a, n in zip(numbers, numbers[1:]) if n == a]
    if dup:
        raise InputError(folder, f"the frames of {where} cannot be ordered: some images have no TriggerTime and "
                                 f"two have the InstanceNumber {dup[0]} ({names([i for i in members if recs[i][3] == dup[0]])})")
    timed = [i for i in members if np.isfinite(recs[i][2])]
    late = [b for a, b in zip(timed, timed[1:]) if recs[b][2] <= recs[a][2]]
    if late:
        raise InputError(folder, f"the frames of {where} cannot be ordered: some images have no TriggerTime, and "
                                 f"the InstanceNumber order of the others disagrees with their TriggerTime "
                                 f"({names(late)} comes after a later trigger time)")
    return members


def _dicom_cardiac_images(recs: list) -> int | None:
    """The median ``CardiacNumberOfImages`` (frames per cycle) of the images that carry a positive one."""
    values = []
    for rec in recs:
        try:
            v = int(float(rec[4].get("CardiacNumberOfImages")))
        except (TypeError, ValueError, OverflowError):
            continue
        if v > 0:
            values.append(v)
    return int(np.median(values)) if values else None


def _dicom_frame_times(folder: Path, trigger_ms: np.ndarray, positions: list[float], messages: list[str]) -> np.ndarray:
    """Frame times (ms) of a DICOM cine from its ``TriggerTime`` s ``(Z, T)``: the mean over the slices
    with a TriggerTime on every frame (NaN elsewhere; at least one such slice);
    NaN (with a warning) when the median frame interval is not plausible; a warning for slices
    whose own frame interval is more than :data:`SLICE_INTERVAL_TOLERANCE` off the slices' median."""
    complete = np.all(np.isfinite(trigger_ms), axis=1)  # slices with a TriggerTime on every frame
    trigger_ms = np.where(complete[:, None], trigger_ms, np.nan)
    times = np.nanmean(trigger_ms, axis=0)
    dt = float(np.median(np.diff(times)))
    lo, hi = _PLAUSIBLE_FRAME_INTERVAL_MS
    if not np.isfinite(dt) or not lo <= dt <= hi:
        _warn(messages, f"{folder}: frame interval {dt:g} ms from TriggerTime is not plausible (expected {lo:g} "
                        f"to {hi:g} ms; TriggerTime in seconds?); timing ignored. Give the heart rate with "
                        "--heart-rate BPM or the RR interval with --rr-ms MS")
        return np.full(times.shape, np.nan)
    per_slice = np.median(np.diff(trigger_ms, axis=1), axis=1)  # NaN for the other slices: not compared
    typical = float(np.nanmedian(per_slice))
    bad = np.flatnonzero(np.abs(per_slice / typical - 1.0) > SLICE_INTERVAL_TOLERANCE)
    if bad.size:
        which = ", ".join(f"slice {k} at {positions[k]:.2f} mm ({per_slice[k]:.1f} ms)" for k in bad[:4])
        _warn(messages, f"{folder}: the frame interval of {which}{' ...' if bad.size > 4 else ''} differs from the "
                        f"slices' median ({typical:.1f} ms) by more than {SLICE_INTERVAL_TOLERANCE:.0%}: their "
                        "frames cover another part of the cycle than the other slices' (frames are matched by "
                        "their order)")
    return times


# =========================================================================== labels / displacement
def _grid_problems(geom: Geometry, ref: Geometry, *, check_spacing: bool) -> str:
    """Empty when ``geom`` is ``ref`` within tolerance, else what differs."""
    problems = []
    if check_spacing and not np.allclose(geom.spacing, ref.spacing, rtol=_GRID_RTOL):
        problems.append(f"spacing {_fmt(geom.spacing)} mm vs {_fmt(ref.spacing)} mm")
    if not np.allclose(geom.direction, ref.direction, atol=_GRID_RTOL):
        problems.append("different orientation")
    if not np.allclose(geom.origin, ref.origin, atol=_GRID_ATOL_MM + _GRID_RTOL * float(ref.spacing.max())):
        problems.append(f"origin {np.round(geom.origin, 3).tolist()} vs {np.round(ref.origin, 3).tolist()} mm")
    return "; ".join(problems)


def _check_same_grid(path: Path, geom: Geometry, ref: Geometry, *, check_spacing: bool, what: str) -> None:
    problems = _grid_problems(geom, ref, check_spacing=check_spacing)
    if problems:
        raise InputError(path, f"{what} does not match the cine: {problems}")


def _checked_labels(path: Path, data: np.ndarray) -> np.ndarray:
    if np.issubdtype(data.dtype, np.floating):
        if not np.all(np.isfinite(data)):
            raise InputError(path, "labels hold NaN or infinite values")
        values = np.unique(data)
        if np.any(values != np.round(values)):
            bad = values[values != np.round(values)][:5]
            raise InputError(path, f"labels are not whole numbers (e.g. {bad.tolist()}); expected only "
                                   f"{list(LABEL_VALUES)}")
    else:
        values = np.unique(data)
    bad = [v for v in values.tolist() if v not in LABEL_VALUES]
    if bad:
        raise InputError(path, f"unexpected label values {bad[:10]}; expected only {list(LABEL_VALUES)} "
                               "(0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity)")
    return data.astype(np.uint8)


def load_labels(path: PathLike, cine: Cine) -> np.ndarray:
    """A 4D label map ``(x, y, z, t)`` on the cine's grid -> ``(T, Z, Y, X)`` ``uint8``.

    It must have one map per frame of the cine, the cine's grid (shape and affine; a file
    whose spacing was lost is accepted if shape, orientation and origin match) and only the
    ACDC values 0-3.
    """
    path = Path(path)
    img, data = _load_nifti(path)
    expected = tuple(cine.shape3d[::-1]) + (cine.n_frames,)
    if data.ndim == 3:
        raise InputError(path, f"a single 3D label map {tuple(data.shape)}; expected a 4D label map (x, y, z, t) "
                               f"with one map per frame, shape {expected}")
    if data.ndim != 4 or tuple(data.shape) != expected:
        raise InputError(path, f"labels grid does not match the cine: shape {tuple(data.shape)} (x, y, z, t), "
                               f"expected {expected}")
    labels = _checked_labels(path, data)
    geom, lost = _nifti_geometry(path, img, [], quiet=True)
    _check_same_grid(path, geom, cine.geometry, check_spacing=not lost, what="labels grid")
    return np.ascontiguousarray(labels.transpose(3, 2, 1, 0))


def load_displacement(path: PathLike, cine: Cine) -> np.ndarray:
    """A 5D displacement file ``(x, y, z, t, 3)`` (RAS mm, Lagrangian from ED) -> ``(T, 3, Z, Y, X)`` float32."""
    path = Path(path)
    img, data = _load_nifti(path)
    expected = tuple(cine.shape3d[::-1]) + (cine.n_frames, 3)
    if data.ndim != 5 or tuple(data.shape) != expected:
        raise InputError(path, f"displacement grid does not match the cine: shape {tuple(data.shape)}, expected "
                               f"{expected} (x, y, z, t, 3)")
    intent = img.header.get_intent()[0]
    if intent not in ("none", "vector"):
        raise InputError(path, f"NIfTI intent is '{intent}', expected 'vector' (a displacement field)")
    if not np.all(np.isfinite(data)):
        raise InputError(path, "displacement holds NaN or infinite values")
    geom, lost = _nifti_geometry(path, img, [], quiet=True)
    _check_same_grid(path, geom, cine.geometry, check_spacing=not lost, what="displacement grid")
    return np.ascontiguousarray(np.transpose(data, (3, 4, 2, 1, 0)), dtype=np.float32)


# =========================================================================== writers
GZIP_BLOCK_BYTES = 4 << 20
"""Uncompressed bytes per gzip member of the ``.nii.gz`` files this package writes."""


class _GzipMembersWriter(_stdio.RawIOBase):
    """A write-only stream that compresses what is written to it into ``fh`` as consecutive gzip
    members of ``block`` (default :data:`GZIP_BLOCK_BYTES`) uncompressed bytes each, in parallel
    threads, holding a few blocks at a time.

    A concatenation of gzip members is one valid gzip file (RFC 1952; read by nibabel, ITK/Slicer
    and ``gunzip``). The members depend only on the bytes, ``level`` and ``block`` (header time
    0), so the file is byte-identical whatever the number of threads; level 1, as nibabel's
    default. Streaming keeps the whole file out of memory (for a 30-frame displacement on a
    512 x 512 grid, 1.1 GB of raw data, turning the image into bytes first raised the peak memory
    by about twice that). ``seek`` only to where it is; ``tell`` counts the bytes written.
    """

    def __init__(self, fh, level: int = 1, block: int | None = None) -> None:
        super().__init__()
        self._fh, self._level, self._block = fh, level, int(block or GZIP_BLOCK_BYTES)
        self._buf = bytearray()
        self._pos = 0
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max(1, workers))
        self._pending: list = []
        self._limit = 2 * max(1, workers)

    def _member(self, chunk: bytes) -> bytes:
        c = zlib.compressobj(self._level, zlib.DEFLATED, 31)  # wbits 31: gzip wrapper, mtime 0
        return c.compress(chunk) + c.flush()

    def _submit(self, chunk: bytes) -> None:
        self._pending.append(self._pool.submit(self._member, chunk))
        while len(self._pending) > self._limit:
            self._fh.write(self._pending.pop(0).result())

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n, i = len(view), 0
        if self._buf:  # complete the block begun by earlier writes
            i = min(n, self._block - len(self._buf))
            self._buf += view[:i]
            if len(self._buf) == self._block:
                self._submit(bytes(self._buf))
                self._buf = bytearray()
        while n - i >= self._block:  # whole blocks straight from ``data``, one copy of 4 MB at a time
            self._submit(bytes(view[i : i + self._block]))
            i += self._block
        self._buf += view[i:]
        self._pos += n
        return n

    def writable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence != 0 or offset != self._pos:
            raise OSError("a compressed output stream cannot seek")
        return self._pos

    def close(self) -> None:
        """Compress what is left (an empty stream still gets one member: a valid gzip file)."""
        if self.closed:
            return
        try:
            if self._buf or not self._pos:
                self._submit(bytes(self._buf))
                self._buf = bytearray()
            for f in self._pending:
                self._fh.write(f.result())
        finally:
            self._pending = []
            self._pool.shutdown()
            super().close()


def _write_nifti(img: nib.Nifti1Image, stream) -> None:
    """``img`` (single-file NIfTI-1, unscaled data of the header's type) into ``stream``: header and
    extensions as nibabel writes them, zeros up to the data offset, then the data in NIfTI's
    (Fortran) order in blocks of at most :data:`GZIP_BLOCK_BYTES`-sized pieces of contiguous
    memory, so that no copy of a large field is made (nibabel's own writer copies a whole
    sub-volume of a non-contiguous array at a time)."""
    hdr = img.header
    data = np.asanyarray(img.dataobj)
    dtype = hdr.get_data_dtype()
    if data.dtype != dtype:
        raise ValueError(f"data of type {data.dtype} in an image of type {dtype}")
    hdr.set_slope_inter(1.0, 0.0)  # unscaled, as nibabel records it when it writes such data
    hdr.write_to(stream)
    offset = hdr.get_data_offset()
    if stream.tell() > offset:
        raise ValueError("NIfTI header longer than its data offset")
    stream.write(b"\x00" * (offset - stream.tell()))

    def blocks(a: np.ndarray):
        if a.nbytes <= GZIP_BLOCK_BYTES or a.ndim == 1 or a.flags.c_contiguous:
            yield np.ascontiguousarray(a)
        else:
            for sub in a:
                yield from blocks(sub)

    for b in blocks(data.T):  # Fortran order of ``data`` = C order of its transpose
        stream.write(b.astype(dtype.newbyteorder("="), copy=False).data if b.size else b"")


def _atomic_save(img: nib.Nifti1Image, path: PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if not _is_nifti(path):
        raise InputError(path, "output must end in .nii or .nii.gz")
    if path.exists() and not overwrite:
        raise InputError(path, "exists; will not overwrite it")
    if path.is_dir():
        raise InputError(path, "is a folder")
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.lower().endswith(".nii.gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, "wb") as fh:
            if suffix == ".nii.gz":
                stream = _GzipMembersWriter(fh)
                try:
                    _write_nifti(img, stream)
                finally:
                    stream.close()
            else:
                _write_nifti(img, fh)
        apply_umask(tmp)  # mkstemp creates the file private (0600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _even_frame_timing(times_ms: np.ndarray | None) -> tuple[float, float]:
    """(frame interval, time of frame 0) in ms when ``times_ms`` is known and evenly spaced
    (within 1 %); (0, 0) otherwise: NIfTI's "no timing"."""
    if times_ms is None:
        return 0.0, 0.0
    t = np.asarray(times_ms, dtype=np.float64)
    if t.size < 2 or not np.all(np.isfinite(t)):
        return 0.0, 0.0
    step = (t[-1] - t[0]) / (t.size - 1)
    if step > 0 and np.all(np.abs(np.diff(t) - step) <= 0.01 * step):
        return float(step), float(t[0])
    return 0.0, 0.0


def _nifti_image(data_xyz: np.ndarray, geometry: Geometry, dtype: type,
                 times_ms: np.ndarray | None = None) -> nib.Nifti1Image:
    """A NIfTI image on ``geometry`` (sform = qform, code 1; pixdim from the spacing); for 4D and
    5D data ``pixdim[4]`` and ``toffset`` carry the frame timing (:func:`_even_frame_timing`)."""
    affine = geometry.to_nifti_affine()
    img = nib.Nifti1Image(np.asarray(data_xyz, dtype=dtype), affine)
    hdr = img.header
    hdr.set_data_dtype(dtype)
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    zooms = list(hdr.get_zooms())
    zooms[:3] = geometry.spacing[[2, 1, 0]].tolist()
    if len(zooms) > 3:
        zooms[3], hdr["toffset"] = _even_frame_timing(times_ms)
    hdr.set_zooms(zooms)
    hdr.set_xyzt_units("mm", "msec")
    return img


def save_cine(cine: Cine, path: PathLike, *, overwrite: bool = False) -> Path:
    """Write ``cine.data`` as a 4D NIfTI ``(x, y, z, t)`` float32 on the cine's geometry.

    ``pixdim[4]`` is the frame interval in ms and ``toffset`` the time of frame 0 when the
    timing is known and even; otherwise ``pixdim[4] = 0`` (no timing).
    """
    data = np.transpose(np.asarray(cine.data, dtype=np.float32), (3, 2, 1, 0))
    return _atomic_save(_nifti_image(data, cine.geometry, np.float32, cine.times_ms), path, overwrite)


def save_labels(labels: np.ndarray, geometry: Geometry, path: PathLike, *, times_ms: np.ndarray | None = None,
                overwrite: bool = False) -> Path:
    """Write a label map ``(T, Z, Y, X)`` or ``(Z, Y, X)`` as ``uint8`` NIfTI on ``geometry``
    (``times_ms``: the frames' times, written as in :func:`save_cine`)."""
    labels = np.asarray(labels)
    if labels.ndim not in (3, 4):
        raise ValueError(f"labels must be (T, Z, Y, X) or (Z, Y, X), got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255 or np.any(labels != np.round(labels))):
        raise ValueError("labels must be whole numbers in 0..255")
    data = np.transpose(labels, tuple(range(labels.ndim))[::-1])
    img = _nifti_image(data, geometry, np.uint8, times_ms)
    return _atomic_save(img, path, overwrite)


def save_displacement(disp: np.ndarray, geometry: Geometry, path: PathLike, *, times_ms: np.ndarray | None = None,
                      overwrite: bool = False) -> Path:
    """Write a displacement field ``(T, 3, Z, Y, X)`` (RAS mm) as 5D NIfTI ``(x, y, z, t, 3)``
    (``times_ms``: the frames' times, written as in :func:`save_cine`)."""
    disp = np.asarray(disp, dtype=np.float32)
    if disp.ndim != 5 or disp.shape[1] != 3:
        raise ValueError(f"displacement must be (T, 3, Z, Y, X), got shape {disp.shape}")
    data = np.transpose(disp, (4, 3, 2, 0, 1))
    img = _nifti_image(data, geometry, np.float32, times_ms)
    img.header.set_intent("vector")
    return _atomic_save(img, path, overwrite)


def save_frame_labels(labels3d: np.ndarray, reference_nifti_path: PathLike, out_path: PathLike, *,
                      overwrite: bool = False) -> Path:
    """Write a ``(Z, Y, X)`` label map with exactly the grid and header of an input frame file."""
    ref = Path(reference_nifti_path)
    out = Path(out_path)
    if out.absolute() == ref.absolute():
        raise InputError(out, "would overwrite the input frame file")
    img, _ = _load_nifti(ref)
    labels3d = np.asarray(labels3d)
    shape_xyz = tuple(img.shape[:3])
    if labels3d.ndim != 3 or tuple(labels3d.shape[::-1]) != shape_xyz:
        raise ValueError(f"labels of shape {labels3d.shape} (Z, Y, X) do not fit {ref} of shape {shape_xyz} (x, y, z)")
    if labels3d.size and (labels3d.min() < 0 or labels3d.max() > 255 or np.any(labels3d != np.round(labels3d))):
        raise ValueError("labels must be whole numbers in 0..255")
    hdr = img.header.copy()
    hdr.set_data_dtype(np.uint8)
    hdr.set_slope_inter(1.0, 0.0)
    hdr["cal_min"], hdr["cal_max"] = 0, 0
    out_img = nib.Nifti1Image(np.ascontiguousarray(labels3d.transpose(2, 1, 0), dtype=np.uint8), None, header=hdr)
    # keep the reference's affines and codes exactly (nibabel would otherwise rebuild them)
    out_img.header.set_sform(img.header.get_sform(), code=int(img.header["sform_code"]))
    out_img.header.set_qform(img.header.get_qform(), code=int(img.header["qform_code"]))
    return _atomic_save(out_img, out, overwrite)
