"""Chamber volumes, ejection fractions and LV mass from label maps (voxel counting).

Labels are ACDC: 1 RV cavity, 2 LV myocardium, 3 LV cavity. A voxel's volume is
``|det(direction @ diag(spacing))|`` mm^3 (the product of the spacings for an orthonormal
direction matrix); volumes are in ml, mass in g with a myocardial density of 1.05 g/ml.
"""
from __future__ import annotations

import numpy as np

from .cine import Geometry

MYOCARDIUM_DENSITY_G_PER_ML = 1.05

_LABEL_OF = {"lv": 3, "myo": 2, "rv": 1}


def voxel_volume_ml(geometry: Geometry) -> float:
    """Volume of one voxel in ml."""
    m = geometry.direction * geometry.spacing[None, :]
    return abs(float(np.linalg.det(m))) / 1000.0


def label_volumes_ml(labels: np.ndarray, geometry: Geometry) -> dict[str, np.ndarray]:
    """Per-frame volumes (ml) of the LV cavity (``"lv"``), myocardium (``"myo"``) and RV (``"rv"``).

    ``labels`` is ``(T, Z, Y, X)`` or a single frame ``(Z, Y, X)``; each value is ``(T,)``
    (``(1,)`` for a single frame).
    """
    lab = np.asarray(labels)
    if lab.ndim == 3:
        lab = lab[None]
    if lab.ndim != 4:
        raise ValueError(f"labels must be (T, Z, Y, X) or (Z, Y, X), got shape {lab.shape}")
    vox = voxel_volume_ml(geometry)
    flat = lab.reshape(lab.shape[0], -1)
    if np.issubdtype(flat.dtype, np.unsignedinteger) or flat.dtype == bool:
        counts = np.stack([np.bincount(fr, minlength=4)[:4] for fr in flat])  # one pass per frame
    else:
        counts = np.stack([[np.count_nonzero(fr == v) for v in range(4)] for fr in flat])
    return {name: counts[:, value].astype(np.float64) * vox for name, value in _LABEL_OF.items()}


def find_ed_es(lv_volume: np.ndarray) -> tuple[int, int]:
    """ED = frame of largest LV volume, ES = frame of smallest; ties go to the earliest frame."""
    v = np.asarray(lv_volume, dtype=np.float64).reshape(-1)
    if v.size < 2 or not np.all(np.isfinite(v)):
        raise ValueError("ED/ES need a finite LV volume for at least two frames")
    ed, es = int(np.argmax(v)), int(np.argmin(v))
    if ed == es:
        raise ValueError("the LV volume is the same in every frame: ED and ES cannot be found")
    return ed, es


def _ef(edv: float, esv: float) -> float | None:
    return 100.0 * (edv - esv) / edv if edv > 0 else None


def volumetrics(labels: np.ndarray, geometry: Geometry, ed: int, es: int) -> dict[str, float | None]:
    """LV/RV volumes (ml), stroke volume (ml), ejection fractions (%) and LV mass (g).

    ``labels`` ``(T, Z, Y, X)``; ``ed``/``es`` are 0-based frame indices. An EF is ``None``
    when its end-diastolic volume is zero.
    """
    lab = np.asarray(labels)
    if lab.ndim != 4:
        raise ValueError(f"labels must be (T, Z, Y, X), got shape {lab.shape}")
    n = lab.shape[0]
    for name, f in (("ed", ed), ("es", es)):
        if not 0 <= int(f) < n:
            raise ValueError(f"{name} frame {f} is outside 0..{n - 1}")
    vols = label_volumes_ml(lab[[int(ed), int(es)]], geometry)
    lv_edv, lv_esv = float(vols["lv"][0]), float(vols["lv"][1])
    rv_edv, rv_esv = float(vols["rv"][0]), float(vols["rv"][1])
    return {
        "lv_edv_ml": lv_edv,
        "lv_esv_ml": lv_esv,
        "lv_sv_ml": lv_edv - lv_esv,
        "lv_ef_percent": _ef(lv_edv, lv_esv),
        "lv_mass_g": float(vols["myo"][0]) * MYOCARDIUM_DENSITY_G_PER_ML,
        "rv_edv_ml": rv_edv,
        "rv_esv_ml": rv_esv,
        "rv_ef_percent": _ef(rv_edv, rv_esv),
    }
