"""Cheap stand-ins for the per-study analysis, for the cohort tests (module-level: picklable).

``fake_study`` writes a ``report.json`` with the keys of ``notes/strain_spec.md`` whose numbers
are a deterministic function of the study's name and group (healthy NOR strongest, DCM weakest),
so the tests can recompute every group statistic independently.
"""
from __future__ import annotations

import json
import os
import time
import zlib
from pathlib import Path

import numpy as np
import nibabel as nib

from deepstrain.errors import InputError
from deepstrain.outputs import atomic_output_dir

# (radial ESS %, circumferential ESS %) by group
GROUP_ESS = {"NOR": (45.0, -22.0), "HCM": (35.0, -17.0), "DCM": (15.0, -7.0)}
DEFAULT_ESS = (30.0, -14.0)
N_FRAMES = 20
ES = 8
DT_MS = 40.0


def study_name(input_path: str) -> str:
    name = Path(input_path).name
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def fake_group(input_path: str) -> str | None:
    cfg = Path(input_path) / "Info.cfg"
    if cfg.is_file():
        for line in cfg.read_text().splitlines():
            if line.startswith("Group:"):
                return line.split(":", 1)[1].strip()
    return None


def fake_report(input_path: str, n_frames: int = N_FRAMES) -> dict:
    name = study_name(input_path)
    jitter = (zlib.crc32(name.encode()) % 1000) / 1000.0 - 0.5  # in [-0.5, 0.5)
    rad, circ = GROUP_ESS.get(fake_group(input_path) or "", DEFAULT_ESS)
    rad, circ = rad * (1 + 0.1 * jitter), circ * (1 + 0.1 * jitter)
    es = ES if n_frames > 2 else 1
    t = np.arange(n_frames)
    shape = np.sin(np.pi * t / (2 * es)) ** 2 if n_frames > 2 else np.array([0.0, 1.0])
    shape = np.where(t <= es, shape, np.cos(np.pi * (t - es) / (2 * (n_frames - es))) ** 2) if n_frames > 2 else shape
    curves = {"radial": rad * shape, "circumferential": circ * shape, "longitudinal": 0.6 * circ * shape}
    times = t * DT_MS if n_frames > 2 else np.full(n_frames, np.nan)
    rates = {c: (np.gradient(v / 100.0, times / 1000.0) if n_frames > 2 else None) for c, v in curves.items()}

    def seg(value: float, s: int) -> float | None:
        return None if s == 17 and name.endswith("7") else round(value * (0.8 + 0.025 * s), 4)

    return {
        "study": name,
        "frames": {"count": n_frames, "ed": 0, "es": es,
                   "times_ms": [None if np.isnan(x) else float(x) for x in times]},
        "volumetrics": {"lv_edv_ml": 150 + 10 * jitter, "lv_esv_ml": 60 + 5 * jitter, "lv_sv_ml": 90 + 5 * jitter,
                        "lv_ef_percent": 60 + 3 * jitter, "lv_mass_g": 110.0, "rv_edv_ml": 140.0,
                        "rv_esv_ml": 65.0, "rv_ef_percent": 53.6},
        "global_strain": {f"{c}_percent": [float(x) for x in v] for c, v in curves.items()},
        "global_strain_rate": {f"{c}_per_s": (None if v is None else [float(x) for x in v]) for c, v in rates.items()},
        "ess": {c: float(v[es]) for c, v in curves.items()},
        "srs": {c: (None if v is None else float(v[np.argmax(np.abs(v[: es + 1]))])) for c, v in rates.items()},
        "sre": {c: (None if v is None else float(v[es + 1 + np.argmax(np.abs(v[es + 1:]))])) for c, v in rates.items()},
        "aha": {f"{c}_percent": {str(s): seg(float(v[es]), s) for s in range(1, 18)} for c, v in curves.items()},
        "aha_curves": {},
        "conventions": "fake",
        "warnings": [],
    }


def fake_study(input_path: str, out_dir: str, *, delay: float = 0.0, log: str | None = None,
               fail: tuple[str, ...] = (), n_frames: int = N_FRAMES) -> dict:
    """Write ``out_dir/report.json`` (atomically); fail for names in ``fail``; log each call."""
    name = study_name(input_path)
    if log:
        with open(log, "a") as f:
            f.write(f"{name} {os.getpid()}\n")
    if delay:
        time.sleep(delay)
    if name in fail:
        raise InputError(input_path, "simulated unusable input")
    rep = fake_report(input_path, n_frames=n_frames)
    with atomic_output_dir(out_dir) as tmp:
        (tmp / "report.json").write_text(json.dumps(rep))
        (tmp / "strain.csv").write_text("frame\n")
    return rep


def crashing_study(input_path: str, out_dir: str) -> dict:
    """``fake_study``, except that a study whose name starts with ``crash`` kills its process (as
    running out of memory does)."""
    if study_name(input_path).startswith("crash"):
        os._exit(3)
    return fake_study(input_path, out_dir)


def perturbation_sensitive_study(input_path: str, out_dir: str) -> dict:
    """Like ``fake_study`` but the radial ESS follows the mean intensity of the input images and the
    circumferential ESS their noise level (robustness tests)."""
    p = Path(input_path)
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.name.endswith(".nii.gz") and "_gt" not in f.name)
    data = np.concatenate([np.asarray(nib.load(str(f)).dataobj, dtype=np.float64).ravel() for f in files])
    rep = fake_report(input_path)
    rep["ess"]["radial"] = float(data.mean())
    rep["ess"]["circumferential"] = -float(np.std(np.diff(data)))
    for c in ("radial", "circumferential"):
        rep["aha"][f"{c}_percent"] = {str(s): rep["ess"][c] + s for s in range(1, 17)} | {"17": None}
    with atomic_output_dir(out_dir) as tmp:
        (tmp / "report.json").write_text(json.dumps(rep))
    return rep


def make_cohort(root: Path, groups: dict[str, str], *, with_others: bool = True) -> Path:
    """ACDC-like folders ``root/<name>/Info.cfg`` (+ a 4D NIfTI, a DICOM folder, distractors)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, grp in groups.items():
        d = root / name
        d.mkdir()
        (d / "Info.cfg").write_text(f"ED: 1\nES: 9\nGroup: {grp}\nNbFrame: {N_FRAMES}\n")
    if with_others:
        nii = root / "more"
        nii.mkdir()
        aff = np.diag([1.5, 1.5, 8.0, 1.0])
        nib.save(nib.Nifti1Image(np.zeros((3, 3, 2, 4), np.float32), aff), str(nii / "cine4d.nii.gz"))
        nib.save(nib.Nifti1Image(np.zeros((3, 3, 2), np.float32), aff), str(nii / "single3d.nii.gz"))
        nib.save(nib.Nifti1Image(np.zeros((3, 3, 2, 4), np.uint8), aff), str(nii / "seg_sa.nii.gz"))  # labels
        nib.save(nib.Nifti1Image(np.zeros((3, 3, 2, 4), np.uint8), aff), str(nii / "cine4d_gt.nii.gz"))
        dcm = root / "more" / "dicomseries"
        dcm.mkdir()
        (dcm / "IM0001").write_bytes(b"\0" * 128 + b"DICM" + b"\0" * 16)  # DICM magic, no suffix
        (dcm / "sub").mkdir()
        (dcm / "sub" / "x.dcm").write_bytes(b"\0" * 132)
        hidden = root / ".cache" / "patient999"
        hidden.mkdir(parents=True)
        (hidden / "Info.cfg").write_text("ED: 1\nES: 2\nGroup: NOR\n")
        (root / "README.txt").write_text("not a study\n")
    return root
