"""The one in-memory representation of a cine study.

Conventions (used by every module of the package):

* Image arrays are ``(T, Z, Y, X)`` = frames x slices x rows x columns, ``float32``.
  A single frame or label map is ``(Z, Y, X)``.
* ``Geometry.spacing`` is in mm and in **array-axis order** ``(slice, row, column)``.
* World coordinates are RAS (right, anterior, superior) in mm, as in NIfTI and 3D Slicer.
  ``Geometry.direction`` is a 3x3 matrix whose *columns* are the unit RAS directions of the
  array axes ``(slice, row, column)``; ``Geometry.origin`` is the RAS position of the centre
  of voxel ``[0, 0, 0]``. A voxel centre at array index ``(k, j, i)`` is at
  ``origin + direction @ (spacing * (k, j, i))``.
* Labels use the ACDC values: 0 background, 1 RV cavity, 2 LV myocardium, 3 LV cavity.
* Displacement fields are ``(T, 3, Z, Y, X)`` ``float32``: for every frame, the displacement
  in mm, **RAS world components**, of the material point that sits at the centre of each
  voxel at end-diastole (Lagrangian, ED is the reference; the ED frame is all zeros).
* Frames are 0-based everywhere inside the package (``ed``, ``es``); ``times_ms`` is the time
  of each frame after the R wave in ms, or NaN where the input carries no timing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

ACDC_LABELS = {"background": 0, "rv": 1, "myocardium": 2, "lv": 3}


@dataclass
class Geometry:
    """Voxel grid to RAS world mapping (see module docstring for the conventions)."""

    spacing: np.ndarray
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        self.spacing = np.asarray(self.spacing, dtype=np.float64).reshape(3)
        self.origin = np.asarray(self.origin, dtype=np.float64).reshape(3)
        self.direction = np.asarray(self.direction, dtype=np.float64).reshape(3, 3)
        if not np.all(np.isfinite(self.spacing)) or np.any(self.spacing <= 0):
            raise ValueError(f"voxel spacing must be positive and finite, got {self.spacing.tolist()}")

    @property
    def index_to_world(self) -> np.ndarray:
        """4x4 matrix from array index ``(k, j, i, 1)`` to RAS mm."""
        m = np.eye(4)
        m[:3, :3] = self.direction * self.spacing[None, :]
        m[:3, 3] = self.origin
        return m

    def voxel_points(self, kk: np.ndarray, jj: np.ndarray, ii: np.ndarray) -> np.ndarray:
        """RAS coordinates (mm) ``(N, 3)`` of the voxel centres at array indices ``(kk, jj, ii)``."""
        idx = np.stack([kk, jj, ii], axis=1).astype(np.float64)
        return self.origin + idx @ (self.direction * self.spacing[None, :]).T

    def world_points(self, shape: tuple[int, int, int]) -> np.ndarray:
        """RAS coordinates (mm) of every voxel centre, shape ``(Z, Y, X, 3)``."""
        k, j, i = np.meshgrid(*(np.arange(n, dtype=np.float64) for n in shape), indexing="ij")
        idx = np.stack([k, j, i], axis=-1) * self.spacing
        return idx @ self.direction.T + self.origin

    def to_nifti_affine(self) -> np.ndarray:
        """NIfTI affine: voxel ``(i=column, j=row, k=slice)`` to RAS mm."""
        m = self.index_to_world
        a = np.eye(4)
        a[:3, :3] = m[:3, [2, 1, 0]]
        a[:3, 3] = m[:3, 3]
        return a

    @classmethod
    def from_nifti_affine(cls, affine: np.ndarray, zooms: tuple[float, float, float] | None = None) -> "Geometry":
        """Build from a NIfTI affine (``i, j, k`` = column, row, slice).

        If ``zooms`` (pixdim of i, j, k in mm) is given it sets the spacing and the affine is
        used for orientation only (the ACDC quirk: an sform without voxel size).
        """
        a = np.asarray(affine, dtype=np.float64)
        cols = a[:3, :3]
        norms = np.linalg.norm(cols, axis=0)
        if np.any(norms == 0):
            raise ValueError("NIfTI affine is singular")
        spacing_ijk = norms if zooms is None else np.asarray(zooms, dtype=np.float64)
        direction_ijk = cols / norms
        return cls(
            spacing=spacing_ijk[[2, 1, 0]],
            origin=a[:3, 3].copy(),
            direction=direction_ijk[:, [2, 1, 0]],
        )

    def copy(self) -> "Geometry":
        return Geometry(self.spacing.copy(), self.origin.copy(), self.direction.copy())


def lost_spacing_hint(spacing: Sequence[float]) -> str | None:
    """The end of a message when the voxel size reads 1 x 1 x 1 mm (a spacing lost when a file was
    re-saved; the networks and all volumes need the true one), else None."""
    if not np.allclose(np.asarray(spacing, dtype=np.float64), 1.0):
        return None
    return ("the voxel size reads 1 x 1 x 1 mm, as in files whose spacing was lost: give the true spacing "
            "(deepstrain analyze --spacing SLICE ROW COL)")


def flip_axis(data: np.ndarray, geometry: Geometry, axis: int) -> tuple[np.ndarray, Geometry]:
    """Flip spatial ``axis`` (0 slice, 1 row, 2 column; the last three array axes) together with its
    direction column: the same world anatomy in a different storage order. Vector components
    (RAS) are unchanged."""
    if axis not in (0, 1, 2):
        raise ValueError("axis must be 0, 1 or 2")
    arr = np.asarray(data)
    n = arr.shape[arr.ndim - 3 + axis]
    g = geometry.copy()
    g.origin = g.origin + g.direction[:, axis] * g.spacing[axis] * (n - 1)
    g.direction[:, axis] *= -1.0
    return np.flip(arr, axis=arr.ndim - 3 + axis).copy(), g


def reversed_axes(src: Geometry, dst: Geometry, shape: tuple[int, int, int], tol_mm: float = 1e-3) -> tuple[int, ...]:
    """The array axes (0 slice, 1 row, 2 column) to reverse so that a ``shape`` grid on ``src`` is
    indexed as on ``dst``, when both describe the same voxel centres with some axes stored in the
    opposite order (e.g. a volume written with a left-handed index order and read back
    right-handed); ``()`` when they are the same. Raises ``ValueError`` for any other difference.
    Use as ``np.flip(data, axis=[a - 3 for a in axes])`` on arrays ``(..., Z, Y, X)``."""
    axes = []
    for a in range(3):
        dot = float(src.direction[:, a] @ dst.direction[:, a])
        if abs(abs(dot) - 1.0) > 1e-4 or abs(src.spacing[a] - dst.spacing[a]) > 1e-4 * src.spacing[a]:
            raise ValueError(f"the grids differ in more than the order of their voxels (axis {a})")
        if dot < 0:
            axes.append(a)
    first = np.zeros(3)
    first[axes] = np.asarray(shape, dtype=np.float64)[axes] - 1  # src index of dst voxel [0, 0, 0]
    corner = src.origin + src.direction @ (src.spacing * first)
    if np.linalg.norm(corner - dst.origin) > tol_mm:
        raise ValueError(f"the grids are {np.linalg.norm(corner - dst.origin):.3g} mm apart")
    return tuple(axes)


PLAUSIBLE_SUBJECT = {"height_cm": (40.0, 250.0), "weight_kg": (2.0, 350.0), "heart_rate_bpm": (20.0, 300.0)}
"""Ranges outside which a subject value is refused (given by the user) or ignored (read from a header)."""


def frame_index(cycle_frames: Sequence[int], number: int) -> int | None:
    """Index among a cine's frames of the frame ``number`` of the cardiac cycle (0-based, as
    ``--ed`` / ``--es`` and the report's ``frames.cycle_frames`` give it); None when not among them."""
    numbers = [int(n) for n in cycle_frames]
    return numbers.index(int(number)) if int(number) in numbers else None


def subject_value_problem(name: str, value: float | None) -> str | None:
    """Why ``value`` is not a plausible ``name`` (a key of :data:`PLAUSIBLE_SUBJECT`), or None."""
    if value is None:
        return None
    lo, hi = PLAUSIBLE_SUBJECT[name]
    unit = name.rsplit("_", 1)[1]
    if not np.isfinite(value) or not lo <= value <= hi:
        return f"{name.rsplit('_', 1)[0].replace('_', ' ')} {value:g} {unit} is not plausible ({lo:g} to {hi:g} {unit})"
    return None


@dataclass
class Subject:
    """What the input (or the user) says about the person: body size for indexing volumes to the
    body surface area, heart rate for cardiac output. ``None`` = unknown. ``sources`` names where
    each known value came from (a file and its field, or the command line)."""

    height_cm: float | None = None
    weight_kg: float | None = None
    heart_rate_bpm: float | None = None
    sources: dict[str, str] = field(default_factory=dict)

    def given(self, name: str, value: float, source: str) -> None:
        """Set ``name`` (``height_cm``, ``weight_kg`` or ``heart_rate_bpm``) to a value the user gave,
        recording ``source``; ``ValueError`` when it is not plausible."""
        if problem := subject_value_problem(name, float(value)):
            raise ValueError(problem)
        setattr(self, name, float(value))
        self.sources[name] = source

    def as_dict(self) -> dict:
        return {"height_cm": self.height_cm, "weight_kg": self.weight_kg, "heart_rate_bpm": self.heart_rate_bpm,
                "sources": dict(self.sources)}

    @classmethod
    def from_dict(cls, d: dict | None) -> "Subject":
        d = d or {}
        return cls(d.get("height_cm"), d.get("weight_kg"), d.get("heart_rate_bpm"), dict(d.get("sources") or {}))


@dataclass
class Cine:
    """A cine study: image frames, geometry, timing and what the input said about ED/ES."""

    data: np.ndarray
    geometry: Geometry
    times_ms: np.ndarray
    name: str = "study"
    source: str = ""
    ed: int | None = None
    es: int | None = None
    frame_numbers: np.ndarray | None = None
    """0-based index of each frame in the full cardiac cycle (ACDC folders hold only ED and ES)."""
    frame_files: list[str] | None = None
    """One source file per frame when the input was one file per frame (ACDC folders)."""
    labels: dict[int, np.ndarray] = field(default_factory=dict)
    """Manual label maps shipped with the input, by frame index into ``data``."""
    group: str | None = None
    subject: Subject = field(default_factory=Subject)
    """Height, weight and heart rate when the input or the user gave them (indexed volumes, cardiac output)."""
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.data = np.asarray(self.data)
        if self.data.ndim != 4:
            raise ValueError(f"cine data must be (T, Z, Y, X), got shape {self.data.shape}")
        self.times_ms = np.asarray(self.times_ms, dtype=np.float64).reshape(-1)
        if self.times_ms.shape[0] != self.data.shape[0]:
            raise ValueError("times_ms needs one value per frame")
        if self.frame_numbers is None:
            self.frame_numbers = np.arange(self.data.shape[0])

    @property
    def n_frames(self) -> int:
        return int(self.data.shape[0])

    @property
    def shape3d(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.data.shape[1:])  # type: ignore[return-value]

    @property
    def has_timing(self) -> bool:
        return bool(np.all(np.isfinite(self.times_ms)))
