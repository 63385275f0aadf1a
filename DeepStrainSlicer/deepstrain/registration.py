"""Classical registration baseline (SimpleITK demons): displacement from ED to every frame.

Same output layout as the motion network after :mod:`deepstrain.inference`:
``(T, 3, Z, Y, X)`` float32, mm, **RAS world components**, Lagrangian (ED voxel centres are
the material points; ``frame_t(X + u(X)) ~ ED(X)``), on the input grid; the ED frame is zero.

Method: for each frame ``t``, fast symmetric-forces demons with ED as the fixed image and
frame ``t`` as the moving image, on the voxel grid with its anisotropic spacing (slices are not
resampled), two levels (in-plane x2 coarser, then full resolution). The field is smoothed
with a Gaussian of ``sigma_mm`` in-plane and ``sigma_slices`` through-plane (in slices, as
ACDC-like slices are 5-10 mm apart). Intensities of all frames are rescaled with ED's 1st/99th
percentiles. Deterministic (no random sampling).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .cine import Geometry

__all__ = ["register_pair", "register_cine"]


def _image(arr: np.ndarray, spacing: np.ndarray):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr, dtype=np.float32))  # index (col, row, slice)
    img.SetSpacing([float(spacing[2]), float(spacing[1]), float(spacing[0])])
    return img


def register_pair(
    fixed: np.ndarray,
    moving: np.ndarray,
    spacing: Sequence[float],
    *,
    iterations: tuple[int, int] = (60, 30),
    sigma_mm: float = 3.0,
    sigma_slices: float = 0.5,
) -> np.ndarray:
    """Demons displacement ``u`` (3, Z, Y, X) in mm along array axes (slice, row, col).

    ``moving(X + u(X)) ~ fixed(X)``. ``fixed``/``moving`` are ``(Z, Y, X)`` on the same grid,
    ``spacing`` is (slice, row, col) mm.
    """
    import SimpleITK as sitk

    sp = np.asarray(spacing, dtype=np.float64).reshape(3)
    fixed = np.asarray(fixed, dtype=np.float32)
    moving = np.asarray(moving, dtype=np.float32)
    if fixed.shape != moving.shape or fixed.ndim != 3:
        raise ValueError(f"fixed and moving must be (Z,Y,X) of the same shape, got {fixed.shape}, {moving.shape}")
    f_img, m_img = _image(fixed, sp), _image(moving, sp)
    field = None
    for level, shrink in enumerate((2, 1)):
        factors = [shrink, shrink, 1]
        f_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(f_img, [0.5 * shrink * sp[2], 0.5 * shrink * sp[1], 1e-3]), factors) if shrink > 1 else f_img
        m_l = sitk.Shrink(sitk.SmoothingRecursiveGaussian(m_img, [0.5 * shrink * sp[2], 0.5 * shrink * sp[1], 1e-3]), factors) if shrink > 1 else m_img
        demons = sitk.FastSymmetricForcesDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(iterations[level]))
        demons.SetSmoothDisplacementField(True)
        l_sp = f_l.GetSpacing()  # smoothing is in voxels of this level
        demons.SetStandardDeviations([sigma_mm / l_sp[0], sigma_mm / l_sp[1], float(sigma_slices)])
        demons.SetMaximumUpdateStepLength(0.5 * min(l_sp[0], l_sp[1]))
        if field is None:
            field = demons.Execute(f_l, m_l)
        else:
            init = sitk.Resample(field, f_l, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkVectorFloat64)
            field = demons.Execute(f_l, m_l, init)
    arr = sitk.GetArrayFromImage(field)  # (Z, Y, X, 3) components (x=col, y=row, z=slice) in mm
    return np.moveaxis(arr[..., [2, 1, 0]], -1, 0).astype(np.float32)


def register_cine(
    images: np.ndarray,
    geometry: Geometry,
    ed: int = 0,
    **kwargs,
) -> np.ndarray:
    """Lagrangian displacement ED -> every frame of ``images`` (T, Z, Y, X).

    Returns ``(T, 3, Z, Y, X)`` float32 in mm, RAS world components, on the input grid.
    Extra keyword arguments go to :func:`register_pair`.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be (T, Z, Y, X), got {images.shape}")
    if not 0 <= ed < images.shape[0]:
        raise ValueError(f"ED frame {ed} outside 0..{images.shape[0] - 1}")
    lo, hi = np.percentile(images[ed], [1.0, 99.0])
    norm = (images - lo) / max(float(hi - lo), 1e-6)
    out = np.zeros((images.shape[0], 3) + images.shape[1:], dtype=np.float32)
    direction = np.asarray(geometry.direction, dtype=np.float64)
    for t in range(images.shape[0]):
        if t == ed:
            continue
        u = register_pair(norm[ed], norm[t], geometry.spacing, **kwargs)
        out[t] = np.einsum("ij,jzyx->izyx", direction, u).astype(np.float32)
    return out
