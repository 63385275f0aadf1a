"""Chamber volumes, ejection fractions and LV mass from label maps (voxel counting).

Labels are ACDC: 1 RV cavity, 2 LV myocardium, 3 LV cavity. A voxel's volume is
``|det(direction @ diag(spacing))|`` mm^3 (the product of the spacings for an orthonormal
direction matrix); volumes are in ml, mass in g with a myocardial density of 1.05 g/ml.

Indexed values divide by the body surface area (BSA, m^2, Mosteller's formula
``sqrt(height_cm * weight_kg / 3600)``, one formula for every study so that cohorts compare);
cardiac output is the LV stroke volume times the heart rate, in l/min.
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


def slice_volumes_ml(labels: np.ndarray, geometry: Geometry) -> dict[str, np.ndarray]:
    """Volumes (ml) of the LV cavity (``"lv"``), myocardium (``"myo"``) and RV (``"rv"``) on each
    slice of one frame ``(Z, Y, X)``; each value is ``(Z,)`` and they sum to the frame's volumes
    of :func:`label_volumes_ml` (slice thickness = the slice spacing, as for those)."""
    lab = np.asarray(labels)
    if lab.ndim != 3:
        raise ValueError(f"labels must be one frame (Z, Y, X), got shape {lab.shape}")
    return label_volumes_ml(lab[:, None], geometry)


def find_ed_es(lv_volume: np.ndarray) -> tuple[int, int]:
    """ED = frame of largest LV volume, ES = frame of smallest; ties go to the earliest frame."""
    v = np.asarray(lv_volume, dtype=np.float64).reshape(-1)
    if v.size < 2 or not np.all(np.isfinite(v)):
        raise ValueError("ED/ES need a finite LV volume for at least two frames")
    ed, es = int(np.argmax(v)), int(np.argmin(v))
    if ed == es:
        raise ValueError("the LV volume is the same in every frame: ED and ES cannot be found")
    return ed, es


BSA_FORMULA = "Mosteller: sqrt(height_cm * weight_kg / 3600)"

INDEXED = {"lv_edvi_ml_per_m2": "lv_edv_ml", "lv_esvi_ml_per_m2": "lv_esv_ml", "lv_svi_ml_per_m2": "lv_sv_ml",
           "lv_mass_index_g_per_m2": "lv_mass_g", "rv_edvi_ml_per_m2": "rv_edv_ml",
           "rv_esvi_ml_per_m2": "rv_esv_ml", "rv_svi_ml_per_m2": "rv_sv_ml"}
"""Indexed key -> the key it divides by the BSA."""


def body_surface_area(height_cm: float | None, weight_kg: float | None) -> float | None:
    """Body surface area in m^2 (Mosteller), or None when the height or the weight is unknown."""
    if height_cm is None or weight_kg is None:
        return None
    if not (np.isfinite(height_cm) and np.isfinite(weight_kg)) or height_cm <= 0 or weight_kg <= 0:
        raise ValueError(f"height {height_cm} cm and weight {weight_kg} kg must be positive")
    return float(np.sqrt(height_cm * weight_kg / 3600.0))


def _ef(edv: float, esv: float) -> float | None:
    return 100.0 * (edv - esv) / edv if edv > 0 else None


def volumetrics(labels: np.ndarray, geometry: Geometry, ed: int, es: int, *, bsa_m2: float | None = None,
                heart_rate_bpm: float | None = None) -> dict[str, float | None]:
    """LV/RV volumes (ml), stroke volumes (ml), ejection fractions (%) and LV mass (g); indexed to
    ``bsa_m2`` (ml/m^2, g/m^2: the keys of :data:`INDEXED`), and the LV cardiac output (l/min) and
    cardiac index (l/min/m^2) with ``heart_rate_bpm`` (beats/min).

    ``labels`` ``(T, Z, Y, X)``; ``ed``/``es`` are 0-based frame indices. An EF is ``None``
    when its end-diastolic volume is zero; indexed values are ``None`` without ``bsa_m2``, the
    cardiac output without ``heart_rate_bpm``. Every key is always present.
    """
    for name, v in (("bsa_m2", bsa_m2), ("heart_rate_bpm", heart_rate_bpm)):
        if v is not None and not (np.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be positive, got {v}")
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
    out: dict[str, float | None] = {
        "lv_edv_ml": lv_edv,
        "lv_esv_ml": lv_esv,
        "lv_sv_ml": lv_edv - lv_esv,
        "lv_ef_percent": _ef(lv_edv, lv_esv),
        "lv_mass_g": float(vols["myo"][0]) * MYOCARDIUM_DENSITY_G_PER_ML,
        "rv_edv_ml": rv_edv,
        "rv_esv_ml": rv_esv,
        "rv_sv_ml": rv_edv - rv_esv,
        "rv_ef_percent": _ef(rv_edv, rv_esv),
    }
    for key, of in INDEXED.items():
        out[key] = None if bsa_m2 is None else out[of] / bsa_m2  # type: ignore[operator]
    co = None if heart_rate_bpm is None else (lv_edv - lv_esv) * heart_rate_bpm / 1000.0
    out["lv_cardiac_output_l_per_min"] = co
    out["lv_cardiac_index_l_per_min_per_m2"] = None if co is None or bsa_m2 is None else co / bsa_m2
    return out
