"""A small analytic left/right ventricle model for the strain, AHA and pipeline tests.

Heart coordinates ``h = (x, y, z)`` in mm: ``z`` is the long axis from base (z = 0) to apex,
``x`` points to the septum (towards the RV), ``y = z x x``. ``rotation`` maps heart to world
(RAS) directions and ``centre`` is the world position of the basal LV centre.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deepstrain.cine import Geometry


def rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    t = np.radians(angle_deg)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k


APEX_PRIOR_RAS = np.array([-1.0, 1.0, -1.0]) / np.sqrt(3.0)
"""Left, anterior, inferior: where a patient's LV apex points (deepstrain.strain's anatomical prior)."""


def anatomical_rotation(axis: np.ndarray, angle_deg: float) -> np.ndarray:
    """:func:`rotation`, turned half round the heart's x axis when that is needed for the apex (heart
    z) to point like a patient's (towards :data:`APEX_PRIOR_RAS`): the engine takes a world whose
    apex points the other way for a mirror image of the patient."""
    r = rotation(axis, angle_deg)
    return r if r[:, 2] @ APEX_PRIOR_RAS > 0 else r @ np.diag([1.0, -1.0, -1.0])


def header_without_orientation(geo: Geometry, row_sign: float = -1.0) -> Geometry:
    """The same voxels under a header with no scanner orientation, as ACDC's: columns along -R (to the
    left), rows along ``row_sign`` A (ACDC's frames: -1, posterior; the acdc_cine_crop files: +1),
    slices along +S."""
    columns = [[0.0, 0.0, 1.0], [0.0, row_sign, 0.0], [-1.0, 0.0, 0.0]]  # slice, row, column axes in RAS
    return Geometry(geo.spacing.copy(), np.zeros(3), np.stack(columns, axis=1))


@dataclass
class Heart:
    rotation: np.ndarray  # heart -> world
    centre: np.ndarray
    a_in: float = 22.0  # cavity semi-axis (mm) in the short-axis plane at the base
    a_out: float = 31.0
    c_in: float = 60.0  # cavity semi-axis along z
    c_out: float = 70.0
    rv_side: float = 1.0  # +1: RV towards +x (septum at +x); -1: mirrored

    def to_heart(self, world: np.ndarray) -> np.ndarray:
        return (world - self.centre) @ self.rotation

    def labels(self, h: np.ndarray) -> np.ndarray:
        x, y, z = h[..., 0], h[..., 1], h[..., 2]
        rho2 = x**2 + y**2
        zc = np.clip(z, 0, None)
        inside_base = z >= 0
        cav = inside_base & (rho2 / self.a_in**2 + zc**2 / self.c_in**2 < 1)
        outer = inside_base & (rho2 / self.a_out**2 + zc**2 / self.c_out**2 < 1)
        lab = np.zeros(h.shape[:-1], dtype=np.uint8)
        # RV: a disc shifted to the septal side, outside the LV, down to 70% of the length
        xr = self.rv_side * x
        rv = inside_base & (z < 0.7 * self.c_in) & ((xr - 30.0) ** 2 + (y / 1.3) ** 2 < 30.0**2) & ~outer
        lab[rv] = 1
        lab[outer] = 2
        lab[cav] = 3
        return lab


def grid_for(heart: Heart, spacing, tilt_deg: float = 0.0, flip=(False, False, False), shape=None):
    """A short-axis voxel grid around the heart: axis 0 (slices) along the long axis (tilted)."""
    spacing = np.asarray(spacing, dtype=np.float64)
    tilt = rotation([1.0, 0.4, 0.0], tilt_deg)
    # array axes (slice, row, column) in heart coordinates: z, -y, x
    d_heart = tilt @ np.array([[0, 0, 1], [0, -1, 0], [1, 0, 0]], dtype=np.float64).T
    direction = heart.rotation @ d_heart
    extent = np.array([heart.c_out + 2 * spacing[0] + 6, 2 * 66.0, 2 * 66.0])
    if shape is None:
        shape = tuple(int(np.ceil(e / s)) + 1 for e, s in zip(extent, spacing))
    start_heart = np.array([-4.0 - spacing[0], -66.0, -66.0])  # (slice, row, col) offsets in mm
    origin = heart.centre + direction @ start_heart
    geo = Geometry(spacing=spacing, origin=origin, direction=direction)
    for ax, f in enumerate(flip):
        if f:
            geo = flip_geometry(geo, shape, ax)
    return geo, shape


def flip_geometry(geo: Geometry, shape, axis: int) -> Geometry:
    """Geometry of the same voxels with array axis ``axis`` reversed."""
    d = geo.direction.copy()
    origin = geo.origin + d[:, axis] * geo.spacing[axis] * (shape[axis] - 1)
    d[:, axis] = -d[:, axis]
    return Geometry(geo.spacing.copy(), origin, d)


def sample(heart: Heart, geo: Geometry, shape):
    world = geo.world_points(shape)
    h = heart.to_heart(world)
    return world, h, heart.labels(h)
