"""Robustness of the strain results to small perturbations of the input images.

A study is analysed as given (the baseline) and again after each perturbation:

* ``shift``: the images (and any manual label files) moved by one voxel along the first NIfTI
  axis (in-plane, column direction), the vacated edge filled with the edge values; the affine is
  unchanged, so the heart moves by one voxel in the world. Strain is a tissue property and should
  not change.
* ``noise``: Rician noise, ``sqrt((I + n1)^2 + n2^2)`` with ``n1, n2 ~ N(0, sigma^2)``,
  ``sigma = S / SNR`` where ``S`` is the 95th percentile of the study's intensities (a bright-
  tissue level), fixed seed.
* ``scale``: intensities multiplied by 1.2.

Differences are ``perturbed - baseline`` in percentage points: global ESS (radial,
circumferential), and over the AHA segments at ES present in both (mean and max of the absolute
differences, per component and pooled). A perturbation is *within tolerance* when both
``|dESS| <= tolerance.global_ess`` and the pooled segment mean ``|d| <= tolerance.segment_mean``.
The default tolerances (2 and 4 percentage points) are engineering choices for this tool, about
a tenth of a normal radial/circumferential ESS; they are not taken from the DeepStrain paper.

Inputs: a 4D NIfTI file or an ACDC patient folder (NIfTI frames). Output folder (atomic):
``robustness.json`` and ``robustness.csv`` (one row per perturbation), and the analysis folders
``baseline/`` and ``<perturbation>/``.
"""
from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .errors import InputError
from .report import json_safe
from .outputs import atomic_output_dir, check_output_dir

PERTURBATIONS = ("shift", "noise", "scale")
CSV_COLUMNS = ("name", "description", "error", "ess_radial_diff_percent", "ess_circumferential_diff_percent",
               "segments_radial_mean_abs_diff_percent", "segments_radial_max_abs_diff_percent",
               "segments_circumferential_mean_abs_diff_percent", "segments_circumferential_max_abs_diff_percent",
               "segments_mean_abs_diff_percent", "segments_max_abs_diff_percent", "n_segment_values", "within_tolerance")


@dataclass(frozen=True)
class Tolerance:
    """Allowed differences in percentage points of strain."""

    global_ess: float = 2.0
    segment_mean: float = 4.0


def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith((".nii", ".nii.gz"))


def _is_label_file(p: Path) -> bool:
    stem = p.name.lower().split(".nii")[0]
    return stem.endswith("_gt") or stem.endswith("_seg")


def _write_like(img, data: np.ndarray, path: Path) -> None:
    """Save ``data`` with ``img``'s header (sform, qform and voxel size kept as they are)."""
    import nibabel as nib

    hdr = img.header.copy()
    hdr.set_data_dtype(data.dtype)
    nib.save(nib.Nifti1Image(data, None, header=hdr), str(path))


def perturb_image(data: np.ndarray, kind: str, *, snr: float = 20.0, scale: float = 1.2,
                  rng: np.random.Generator | None = None, level: float | None = None) -> np.ndarray:
    """One perturbation of an image array in NIfTI order ``(x, y, z[, t])`` (float32 result).

    ``level`` is the signal level S for the noise (default: 95th percentile of ``data``).
    """
    d = np.asarray(data, dtype=np.float32)
    if kind == "shift":
        out = np.empty_like(d)
        out[1:] = d[:-1]
        out[0] = d[0]
        return out
    if kind == "noise":
        if not snr > 0:
            raise ValueError(f"SNR must be positive, got {snr}")
        rng = rng or np.random.default_rng(0)
        s = float(np.percentile(d, 95)) if level is None else float(level)
        sigma = s / snr
        n1 = rng.normal(0.0, sigma, d.shape)
        n2 = rng.normal(0.0, sigma, d.shape)
        return np.sqrt((d + n1) ** 2 + n2**2).astype(np.float32)
    if kind == "scale":
        return (d * np.float32(scale)).astype(np.float32)
    raise ValueError(f"unknown perturbation {kind!r}; known: {PERTURBATIONS}")


def _shift_labels(data: np.ndarray) -> np.ndarray:
    out = np.empty_like(data)
    out[1:] = data[:-1]
    out[0] = data[0]
    return out


def check_input(src: Path) -> None:
    """:class:`InputError` unless ``src`` is what the perturbations can copy: a 4D NIfTI file of
    several frames (as a batch finds studies: :func:`deepstrain.batch._is_cine_nifti`) or an ACDC
    patient folder (checked before any analysis runs)."""
    from .batch import _is_cine_nifti

    if src.is_file() and _is_nifti(src) and _is_cine_nifti(src) or src.is_dir() and (src / "Info.cfg").is_file():
        return
    raise InputError(src, "robustness perturbs a 4D NIfTI file or an ACDC patient folder; write a DICOM or UK "
                          "Biobank cine as a 4D NIfTI first (e.g. the cine that 3D Slicer loads, saved as .nii.gz)")


def perturbed_copy(input_path: str | os.PathLike, kind: str, dest: str | os.PathLike, *, snr: float = 20.0,
                   scale: float = 1.2, seed: int = 0) -> Path:
    """Write a perturbed copy of a 4D NIfTI file or an ACDC folder under ``dest``; returns its path."""
    import nibabel as nib

    src = Path(input_path)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    check_input(src)
    if src.is_file():
        files, out_root = [src], dest
    else:
        out_root = dest / src.name
        out_root.mkdir()
        files = sorted(f for f in src.iterdir() if f.is_file())
    images = [f for f in files if _is_nifti(f) and not _is_label_file(f)]
    if not images:
        raise InputError(src, "no NIfTI image to perturb")
    loaded = {f: nib.load(str(f)) for f in images}
    arrays = {f: np.asarray(img.dataobj, dtype=np.float32) for f, img in loaded.items()}
    level = float(np.percentile(np.concatenate([a.ravel() for a in arrays.values()]), 95))
    rng = np.random.default_rng(seed)
    for f in files:
        target = (out_root / f.name) if src.is_dir() else (dest / f.name)
        if f in loaded:
            _write_like(loaded[f], perturb_image(arrays[f], kind, snr=snr, scale=scale, rng=rng, level=level), target)
        elif kind == "shift" and _is_nifti(f):
            img = nib.load(str(f))
            _write_like(img, _shift_labels(np.asanyarray(img.dataobj)), target)
        else:
            shutil.copy2(f, target)
    return out_root if src.is_dir() else dest / src.name


@contextlib.contextmanager
def _warnings_naming(scratch: Path, name: str) -> Iterator[None]:
    """Warnings raised inside the block, passed on with the path of the perturbed copy's scratch folder
    (deleted afterwards) replaced by ``name``, as :func:`_name_the_copy` names it in the files."""
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            yield
    finally:  # also those of an analysis that failed
        for w in caught:
            warnings.warn_explicit(str(w.message).replace(str(scratch), name), w.category, w.filename, w.lineno)


def _name_the_copy(folder: Path, scratch: Path, name: str) -> None:
    """Replace the path of the perturbed copy's scratch folder (deleted afterwards) by ``name`` in the
    analysis written to ``folder``: inside the strings of its JSON files (its report's warnings and
    sources; written back as :func:`deepstrain.report.write_report` writes them) and in its CSV files."""
    old = str(scratch)

    def fix(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace(old, name)
        if isinstance(v, list):
            return [fix(x) for x in v]
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        return v

    for f in sorted(folder.rglob("*")):
        if f.suffix == ".json" and f.is_file():
            data = json.loads(f.read_text())
            fixed = fix(data)
            if fixed != data:
                f.write_text(json.dumps(fixed, indent=2, allow_nan=False) + "\n")
        elif f.suffix == ".csv" and f.is_file():
            text = f.read_text()
            if old in text:
                f.write_text(text.replace(old, name))


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


def compare_reports(base: Mapping, other: Mapping) -> dict[str, float | int]:
    """Differences ``other - base`` in ESS and AHA segment values at ES (percentage points)."""
    out: dict[str, float | int] = {}
    pooled: list[float] = []
    for c in ("radial", "circumferential"):
        out[f"ess_{c}_diff_percent"] = _num(other["ess"].get(c)) - _num(base["ess"].get(c))
        a = (base.get("aha") or {}).get(f"{c}_percent") or {}
        b = (other.get("aha") or {}).get(f"{c}_percent") or {}
        d = [abs(_num(b.get(str(s))) - _num(a.get(str(s)))) for s in range(1, 18)]
        d = [x for x in d if math.isfinite(x)]
        out[f"segments_{c}_mean_abs_diff_percent"] = float(np.mean(d)) if d else math.nan
        out[f"segments_{c}_max_abs_diff_percent"] = float(np.max(d)) if d else math.nan
        pooled += d
    out["segments_mean_abs_diff_percent"] = float(np.mean(pooled)) if pooled else math.nan
    out["segments_max_abs_diff_percent"] = float(np.max(pooled)) if pooled else math.nan
    out["n_segment_values"] = len(pooled)  # segments x components
    return out


def robustness_study(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    study_fn: Callable[..., Any] | None = None,
    study_kwargs: Mapping[str, Any] | None = None,
    perturbations: tuple[str, ...] = PERTURBATIONS,
    snr: float = 20.0,
    scale: float = 1.2,
    seed: int = 0,
    tolerance: Tolerance = Tolerance(),
    overwrite: bool = False,
) -> dict:
    """Analyse ``input_path`` and its perturbed copies; write and return the differences.

    ``study_fn(input_path, out_dir, **study_kwargs)`` is the per-study analysis (default
    :func:`deepstrain.batch.analyze_study`, the networks). Raises if the baseline fails; a failing
    perturbed analysis is recorded with its error and counts as outside the tolerance.
    """
    from .batch import _one_line, analyze_study, load_report

    fn = study_fn or analyze_study
    kw = dict(study_kwargs or {})
    src = Path(input_path)
    if not src.exists():
        raise InputError(src, "file or folder not found")
    for p in perturbations:
        if p not in PERTURBATIONS:
            raise InputError(src, f"unknown perturbation {p!r}; known: {', '.join(PERTURBATIONS)}")
    if not snr > 0:
        raise InputError(src, f"SNR must be positive, got {snr}")
    check_input(src)
    describe = {"shift": "one-voxel in-plane shift (first NIfTI axis), edge replicated",
                "noise": f"Rician noise, SNR {snr:g} (sigma = 95th percentile / SNR), seed {seed}",
                "scale": f"intensities x {scale:g}"}
    check_output_dir(out_dir, overwrite, (src,), kind="robustness")  # refuse at once, not after the analyses
    with atomic_output_dir(out_dir, overwrite=overwrite, inputs=(src,), kind="robustness") as tmp:
        fn(str(src), str(tmp / "baseline"), **kw)
        base = load_report(tmp / "baseline")
        if base is None:
            raise RuntimeError("the baseline analysis wrote no valid report.json")
        rows = []
        scratch = tmp / ".inputs"
        for name in perturbations:
            row: dict[str, Any] = {"name": name, "description": describe[name], "error": ""}
            # a perturbed copy that cannot be made is the input's problem (an error); an analysis of
            # the copy that fails (e.g. no LV found in the noise) is a result, recorded in its row
            copy = perturbed_copy(src, name, scratch / name, snr=snr, scale=scale, seed=seed)
            try:
                with _warnings_naming(scratch / name, f"<{name} copy of {src.name}>"):
                    fn(str(copy), str(tmp / name), **kw)
                _name_the_copy(tmp / name, scratch / name, f"<{name} copy of {src.name}>")
                rep = load_report(tmp / name)
                if rep is None:
                    raise RuntimeError("the analysis wrote no valid report.json")
                row.update(compare_reports(base, rep))
                row["within_tolerance"] = bool(
                    abs(row["ess_radial_diff_percent"]) <= tolerance.global_ess
                    and abs(row["ess_circumferential_diff_percent"]) <= tolerance.global_ess
                    and row["segments_mean_abs_diff_percent"] <= tolerance.segment_mean)
            except Exception as exc:
                msg = _one_line(exc).replace(str(copy), f"<{name} copy of {src.name}>")  # not the scratch path
                row.update({k: math.nan for k in CSV_COLUMNS[3:-2]}, n_segment_values=0, within_tolerance=False,
                           error=msg)
            rows.append(row)
        shutil.rmtree(scratch, ignore_errors=True)
        result = {
            "input": str(src),
            "baseline": {"ess": base.get("ess"), "aha": base.get("aha")},
            "tolerance": asdict(tolerance),
            "definitions": {"difference": "perturbed - baseline, percentage points of strain",
                            "within_tolerance": "|dESS radial|, |dESS circumferential| <= global_ess and pooled "
                                                "segment mean |d| <= segment_mean"},
            "perturbations": rows,
            "baseline_quality": sorted({str(q.get("check")) for q in base.get("quality") or []}),
        }
        (tmp / "robustness.json").write_text(json.dumps(json_safe(result), indent=1) + "\n")
        with open(tmp / "robustness.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(CSV_COLUMNS), lineterminator="\n")
            w.writeheader()
            for r in rows:
                w.writerow({k: _cell(r.get(k)) for k in CSV_COLUMNS})
    return result


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(round(v, 4))
    return "" if v is None else str(v)


