"""A synthetic beating-heart short-axis cine with exact motion and exact strain.

The phantom is built in a *heart frame*: ``e1`` (unit, from the LV axis towards the septum /
RV), ``e2 = l x e1`` and ``l`` (the LV long axis, base -> apex, = the slice normal of the grid),
with origin at the centre of the LV base plane. Cylindrical heart coordinates are ``r`` (mm,
distance to the axis), ``theta`` (rad, from ``e1`` towards ``e2``; this is exactly the AHA angle
``phi`` of ``strain_spec.md``: anterior at negative angles) and ``z`` (mm along ``l``).

Anatomy at end-diastole (ED), in heart coordinates:

* LV cavity ``r^2 < a^2 q(z/c)``, ``0 <= z <= c``; LV epicardium ``r^2 < a_o^2 q(z/c_o)``,
  ``0 <= z <= c_o`` with ``q(s) = (1 - s^2)(1 - s^4)`` (a bullet shape), so the apical cap of
  myocardium (``c < z <= c_o``) lies beyond the cavity. Two papillary muscles inside the cavity
  (labelled cavity, as in ACDC).
* RV cavity: a crescent, an ellipse in each slice minus the LV, touching the LV epicardium
  between the insertion angles ``-rv_insertion_deg`` (anterior) and ``+rv_insertion_deg``
  (inferior), so the septal bisector is ``e1``. A thin RV free wall, an epicardial fat ring and a
  textured background (its percentiles calibrated on ACDC) around it.

Motion ``x = phi_t(X)`` (analytic, smooth, invertible, identity far from the heart), applied in
heart cylindrical coordinates as three steps, each a monotone map of one coordinate:

1. radial: ``r^2 -> r^2/lambda(z) - K(theta, z) m(r^2 / rho1(z))`` blended to the identity
   beyond the LV (window ``omega(r)``), minus an inward RV free-wall motion ``b(r, theta, z)``;
   with ``K = k(theta) A(z) / lambda(z)`` and ``A = (cavity radius)^2`` the cavity volume is
   exactly ``EDV (1 - mean_theta k)``; the myocardium is exactly incompressible.
2. twist: ``theta -> theta + tau(z) omega(r)``, linear base (-1/3 of the twist) to apex (+2/3).
3. longitudinal: ``z -> z + u(z) omega(r)``, ``u`` linear in the LV (stretch ``lambda``, apex
   fixed, base moving towards the apex) and saturating smoothly beyond.

All three scale with one temporal profile ``p(t)`` (0 at ED, 1 at ES, rapid early filling,
diastasis, atrial kick). The inverse map solves each 1D monotone step by Newton iterations
(accurate to about 1e-9 mm). Images and labels at every frame are the ED anatomy sampled at the
inverse-mapped positions (intensity averaged over the slice thickness: partial volume), then a
static coil-bias field, an in-plane blur and Rician noise. The displacement field is
``phi_t(X) - X`` at the ED voxel centres. The reference strain uses the analytic map's
deformation gradient (central differences, h = 1e-3 mm, on the analytic function).

:func:`generate_long_axis_phantom` renders the same heart (same params: same anatomy, motion and
world position) on one 4-chamber-like long-axis plane instead of the short-axis stack.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
from scipy import ndimage, special

from .cine import Cine, Geometry
from .strain import peak_values, strain_rate

# --------------------------------------------------------------------------- calibration
# Real-data targets, measured by ``benchmarks/realism.py`` (function ``acdc_cine_statistics``)
# on the 10 ACDC cines of shared/data/acdc_cine_crop with the cropped ED ground truth of
# shared/data/acdc: mean (min - max) over patients; intensities relative to the median LV blood.
#   myo_to_blood 0.384 (0.273-0.683)   rv_to_lv_blood 0.833 (0.762-0.925)
#   background within 15 mm of the heart: p10 0.143 (0.089-0.308), median 0.335 (0.238-0.500),
#   p90 0.751 (0.588-0.908)
#   blood_cv 0.270 (0.145-0.514)   myo_cv 0.226 (0.108-0.361)   noise (3x3 residual) 0.066 (0.040-0.123)
#   decorrelation of consecutive frames 0.022 (0.005-0.054), ED vs ES 0.315 (0.115-0.553)
# patient030 among the 10 is a validation patient (an indirect leak, kept for reproducibility of the
# shipped training data; without it the means move by at most 0.026: README, "Data, training and licences").
REAL_MYO_TO_BLOOD = 0.384
REAL_RV_TO_LV_BLOOD = 0.833
REAL_BG_P10, REAL_BG_P50, REAL_BG_P90 = 0.143, 0.335, 0.751
REAL_NOISE_RESIDUAL = 0.066

BLOOD_SIGNAL = 1000.0
"""Phantom LV blood intensity before bias and noise (arbitrary units, like MRI)."""
MYOCARDIUM_DENSITY_G_PER_ML = 1.05

CONVENTIONS = (
    "Lagrangian Green-Lagrange strain E = (F^T F - I)/2 in percent, F from the analytic motion; "
    "directions at ED: l = LV long axis base->apex, r = radial from the slice's LV centre (outward), "
    "c = l x r. Radial positive = thickening; circumferential and longitudinal negative = shortening. "
    "Global = mean over ED myocardium voxels (label 2, frame 0). Strain rate = numpy.gradient of the "
    "global strain (fraction) over frame times in s. AHA angle phi = atan2((l x s).r, s.r) with s the "
    "bisector of the RV insertion points (anterior negative); thirds from the ED label-3 extent along l. "
    "Rotation of the basal (AHA 1-6), mid (7-12) and apical (13-16) levels in degrees from the analytic "
    "twist step, positive counter-clockwise viewed from the apex; twist = apical - basal rotation; "
    "torsion = twist / distance along l between the levels' ED centroids, deg/cm."
)


class PhantomRefused(ValueError):
    """Valid parameters whose combination the phantom cannot build. ``parameter`` names the one to
    change (``"ef_percent"``: too high for the hypokinesis; ``"apex_wall_mm"``: too thin for the
    slice spacing); the message says why."""

    def __init__(self, parameter: str, problem: str) -> None:
        self.parameter = parameter
        super().__init__(f"{parameter} {problem}")


@dataclass
class PhantomParams:
    """Everything that defines a phantom (units in the names or below). Same params, same phantom."""

    n_frames: int = 30
    heart_rate_bpm: float = 70.0
    es_fraction: float = 0.35
    """End-systole time as a fraction of the RR interval (0.2 - 0.5); ES is the nearest frame."""
    pixel_spacing_mm: float = 1.5
    slice_spacing_mm: float = 8.0
    slice_thickness_mm: float | None = None
    """Slice profile width for partial volume (mm); None = slice spacing."""
    pv_samples: int = 5
    """Sub-samples (odd) across the slice thickness that are averaged (partial volume)."""
    n_slices: int | None = None
    """None = base to apical cap: slice k spans [k, k + 1] slice spacings from the base plane
    along l and the last slice is the first one centred beyond the cavity (the apical cap)."""
    matrix_size: int = 128
    lv_edv_ml: float = 120.0
    lv_length_to_radius: float = 2.6
    """Cavity length (base plane to endocardial apex) over basal cavity radius."""
    wall_thickness_mm: float = 9.0
    apex_wall_mm: float = 10.0
    ef_percent: float = 60.0
    longitudinal_shortening_percent: float = 15.0
    """Shortening of the LV length at ES (stretch along l is 1 - this/100 in the myocardium)."""
    twist_deg: float = 15.0
    """Apex minus base rotation at ES (deg), counter-clockwise seen from the apex positive."""
    hypokinesis: float = 0.6
    """Fractional loss of radial contraction at the centre of the hypokinetic sector (0 = none)."""
    hypokinetic_center_deg: float = 120.0
    """AHA angle of the hypokinetic sector's centre (120 = on the inferior / inferolateral boundary:
    segments 4 and 5 lose the same; septum 0, lateral 180)."""
    hypokinetic_width_deg: float = 100.0
    """Full width at half loss of the hypokinetic sector (deg)."""
    delay_ms: float = 0.0
    """Regional dyssynchrony: delay (ms) of the radial contraction at the centre of the delayed
    sector (0 = none, every wall contracts together). The sector's contraction follows the same
    time course shifted later, held at ED before it starts (a late-activated wall, as in left
    bundle branch block); longitudinal shortening and twist are not delayed."""
    delay_center_deg: float = 150.0
    """AHA angle of the delayed sector's centre (150 = mid inferolateral; septum 0, lateral 180)."""
    delay_width_deg: float = 120.0
    """Full width at half delay of the delayed sector (deg)."""
    rv_insertion_deg: float = 60.0
    rv_wall_motion_mm: float = 8.0
    """Inward motion of the RV free wall at ES (mm), on top of the LV-driven motion."""
    rv_side: str = "left"
    """Side of the image (column 0 = left) where the RV lies; 'right' rotates the heart by 180 deg."""
    rotation_deg: float = 0.0
    """Extra in-plane rotation of the heart (deg; positive turns the image left towards the image
    top: at 90 the RV of ``rv_side="left"`` lies above the LV)."""
    noise: float = 0.035
    """Rician noise: standard deviation of each complex channel over the LV blood signal."""
    blur_px: float = 0.5
    """In-plane Gaussian blur sigma (pixels): the finite k-space resolution."""
    bias: float = 0.12
    """Amplitude of the smooth static coil-sensitivity field (fraction)."""
    orientation: list | None = None
    """3x3 direction matrix of the grid (columns = RAS of the slice, row, column axes); None = a
    realistic oblique short-axis orientation. The slice axis is the LV long axis (base -> apex)
    unless ``tilt_deg`` turns the slices."""
    tilt_deg: float = 0.0
    """Angle (deg, 0 - 30) between the slice normal and the LV long axis: the grid turns about its
    row axis (the heart stays where ``orientation`` puts it), as in a short-axis stack not planned
    exactly across the ventricle. Slices still start at the base-plane centre; by default
    ``ceil(a_o sin(tilt) / slice spacing)`` more slices keep the apical cap in the stack."""
    seed: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ValueError(f"{f.name} must be a finite number, got {v}")
        if self.n_frames < 4:
            raise ValueError("n_frames must be >= 4")
        if self.n_slices is not None and self.n_slices < 1:
            raise ValueError("n_slices must be >= 1 (or None: base to apical cap)")
        if not 20 <= self.heart_rate_bpm <= 300:
            raise ValueError("heart_rate_bpm must be within 20 - 300")
        if not abs(self.twist_deg) <= 45:
            raise ValueError("twist_deg must be within -45 - 45 (the LV twists 10-20 deg)")
        if not 0.2 <= self.es_fraction <= 0.5:
            raise ValueError("es_fraction must be within 0.2 - 0.5")
        if self.pv_samples < 1 or self.pv_samples % 2 == 0:
            raise ValueError("pv_samples must be odd")
        if self.rv_side not in ("left", "right"):
            raise ValueError("rv_side must be 'left' or 'right'")
        if not 8 <= self.matrix_size <= 512:
            raise ValueError("matrix_size must be within 8 - 512")
        for name in ("pixel_spacing_mm", "slice_spacing_mm", "lv_edv_ml", "heart_rate_bpm", "wall_thickness_mm", "apex_wall_mm"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        if not 0 <= self.ef_percent < 80:
            raise ValueError("ef_percent must be within 0 - 80")
        if not 0 <= self.longitudinal_shortening_percent < 40:
            raise ValueError("longitudinal_shortening_percent must be within 0 - 40")
        if not 0 <= self.hypokinesis <= 1:
            raise ValueError("hypokinesis must be within 0 - 1")
        if not 0 <= self.delay_ms <= 0.3 * self.rr_ms:
            raise ValueError("delay_ms must be within 0 and 30 % of the RR interval")
        if not 0 < self.delay_width_deg <= 360:
            raise ValueError("delay_width_deg must be within 0 - 360")
        if self.noise < 0 or self.blur_px < 0 or self.bias < 0:
            raise ValueError("noise, blur_px and bias must be >= 0")
        if not 0 <= self.tilt_deg <= 30:
            raise ValueError("tilt_deg must be within 0 - 30")
        if self.orientation is not None:
            d = np.asarray(self.orientation, dtype=float)
            if d.shape != (3, 3) or not np.allclose(d.T @ d, np.eye(3), atol=1e-6):
                raise ValueError("orientation must be a 3x3 orthonormal matrix")
            self.orientation = d.tolist()

    @property
    def rr_ms(self) -> float:
        return 60000.0 / self.heart_rate_bpm


def default_orientation() -> np.ndarray:
    """An oblique short-axis grid: slice axis = LV long axis (to the left, anterior, inferior)."""
    l = np.array([-0.62, 0.50, -0.60])
    l /= np.linalg.norm(l)
    # column axis: towards the patient's left and posterior, so that the RV (septal direction
    # e1 = -column) lies anterior-right of the LV and the anterior wall is at the image top
    col = np.array([-0.55, -0.75, 0.1])
    col -= (col @ l) * l
    col /= np.linalg.norm(col)
    row = np.cross(col, l)  # so that slice x row = column: a right-handed grid
    return np.stack([l, row, col], axis=1)


# --------------------------------------------------------------------------- smooth 1D pieces
def _q5(u: np.ndarray) -> np.ndarray:
    """Quintic smoothstep on [0, 1], 0 below, 1 above (C2)."""
    u = np.clip(u, 0.0, 1.0)
    return u * u * u * (u * (6.0 * u - 15.0) + 10.0)


def _dq5(u: np.ndarray) -> np.ndarray:
    u = np.clip(u, 0.0, 1.0)
    return 30.0 * u * u * (u - 1.0) ** 2


def _iq5(u: np.ndarray) -> np.ndarray:
    """Integral of the smoothstep from 0 to u (u in [0, 1])."""
    u = np.clip(u, 0.0, 1.0)
    return u**4 * (u * (u - 3.0) + 2.5)


def _ramp_linear(z: np.ndarray, z0: float, z1: float, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Value and slope of a function with slope 1 on [z0, z1] that flattens smoothly over ``d``
    outside (slope = smoothstep), equal to 0 at z0."""
    z = np.asarray(z, dtype=np.float64)
    below = (z - (z0 - d)) / d
    above = (z - z1) / d
    val = np.where(
        z < z0, -d * (0.5 - _iq5(below)), np.where(z > z1, (z1 - z0) + d * (np.clip(above, 0, 1) - _iq5(above)), z - z0)
    )
    slope = np.where(z < z0, _q5(below), np.where(z > z1, 1.0 - _q5(above), 1.0))
    return val, slope


def temporal_profile(t_over_rr: np.ndarray, es_fraction: float) -> np.ndarray:
    """Contraction 0 (ED) .. 1 (ES): systole, rapid early filling (to 0.2), diastasis (to 0.15),
    atrial kick (to 0). C1-smooth piecewise cosines; ``t_over_rr`` in [0, 1]."""
    q = np.asarray(t_over_rr, dtype=np.float64) % 1.0
    ts, d1, d3, pd, pa = es_fraction, 0.22, 0.15, 0.2, 0.15
    up = (1 - np.cos(np.pi * np.clip(q / ts, 0, 1))) / 2
    fill = 1 - (1 - pd) * (1 - np.cos(np.pi * np.clip((q - ts) / d1, 0, 1))) / 2
    dias = pd - (pd - pa) * (1 - np.cos(np.pi * np.clip((q - ts - d1) / (1 - d3 - ts - d1), 0, 1))) / 2
    kick = pa * (1 + np.cos(np.pi * np.clip((q - (1 - d3)) / d3, 0, 1))) / 2
    return np.where(q <= ts, up, np.where(q <= ts + d1, fill, np.where(q <= 1 - d3, dias, kick)))


def _bullet(z: np.ndarray, radius: float, length: float) -> np.ndarray:
    """Squared radius ``radius^2 (1 - s^2)(1 - s^4)``, s = z/length, zero for |s| >= 1 (C1)."""
    s = np.asarray(z, dtype=np.float64) / length
    s2 = s * s
    return np.where(s2 < 1.0, radius * radius * (1 - s2) * (1 - s2 * s2), 0.0)


# --------------------------------------------------------------------------- shape + motion
@dataclass
class _Shape:
    a: float  # basal cavity radius, mm
    c: float  # cavity length, mm
    a_o: float
    c_o: float
    r_w: float  # radius where the radial/twist/long motion starts fading, mm
    d_w: float  # fading width, mm
    z_rv: float  # apical end of the RV, mm
    rv_depth: float  # RV cavity depth at the septum (mm)


def _shape(p: PhantomParams) -> _Shape:
    ratio = p.lv_length_to_radius
    a = (p.lv_edv_ml * 1000.0 * 105.0 / (64.0 * math.pi * ratio)) ** (1.0 / 3.0)
    c = ratio * a
    a_o = a + p.wall_thickness_mm
    c_o = c + p.apex_wall_mm
    return _Shape(a=a, c=c, a_o=a_o, c_o=c_o, r_w=a_o + 2.0, d_w=48.0, z_rv=0.72 * c_o, rv_depth=0.55 * a)


_DELTA, _BETA = 0.05, 0.2  # cavity motion blend: linear below (1-beta)(1-delta) A, untouched myocardium above (1-delta)A
_M_SLOPE = 1.0 / (1.0 - _BETA / 2)


def _m(u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cavity blend m(u) (0 at 0, linear, C1, exactly 1 for u >= 1) and its derivative."""
    v = u - (1 - _BETA)
    cv = np.clip(v, 0, _BETA)
    val = np.where(
        u <= 1 - _BETA, u * _M_SLOPE, np.where(u >= 1, 1.0, _M_SLOPE * ((1 - _BETA) + cv / 2 + _BETA / (2 * np.pi) * np.sin(np.pi * cv / _BETA)))
    )
    der = np.where(u <= 1 - _BETA, _M_SLOPE, np.where(u >= 1, 0.0, _M_SLOPE * (1 + np.cos(np.pi * cv / _BETA)) / 2))
    return val, der


class PhantomMotion:
    """The analytic motion of a phantom: :meth:`forward` and :meth:`inverse` in world RAS mm."""

    def __init__(self, params: PhantomParams, shape: _Shape, frame_origin: np.ndarray, axes: np.ndarray, times_ms: np.ndarray) -> None:
        self.params = params
        self.shape = shape
        self.origin = np.asarray(frame_origin, dtype=np.float64)  # base-plane centre, RAS mm
        self.axes = np.asarray(axes, dtype=np.float64)  # columns e1, e2, l
        self.times_ms = np.asarray(times_ms, dtype=np.float64)
        self.p = temporal_profile(self.times_ms / params.rr_ms, params.es_fraction)
        self.k0 = params.ef_percent / 100.0
        self.lam_es = 1.0 - params.longitudinal_shortening_percent / 100.0
        h = params.hypokinesis
        w = math.radians(params.hypokinetic_width_deg) / 2
        self._kappa = math.log(2.0) / max(1.0 - math.cos(w), 1e-9)
        mean_bump = float(special.i0e(self._kappa))
        self._hnorm = 1.0 / (1.0 - h * mean_bump)
        wd = math.radians(params.delay_width_deg) / 2
        self._kappa_delay = math.log(2.0) / max(1.0 - math.cos(wd), 1e-9)
        kmax = self.k0 * self._hnorm
        if kmax * _M_SLOPE / (1 - _DELTA) >= 0.97:
            raise PhantomRefused("ef_percent", "too high for this hypokinesis (the cavity motion would fold)")

    # ---- coordinates
    def to_heart(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.origin) @ self.axes

    def to_world(self, h: np.ndarray) -> np.ndarray:
        return h @ self.axes.T + self.origin

    # ---- pieces
    def k_theta(self, theta: np.ndarray) -> np.ndarray:
        """Fraction of cavity area lost at ES along angle theta (its mean over theta = EF)."""
        bump = np.exp(self._kappa * (np.cos(theta - math.radians(self.params.hypokinetic_center_deg)) - 1.0))
        return self.k0 * self._hnorm * (1.0 - self.params.hypokinesis * bump)

    def cavity_loss(self) -> np.ndarray:
        """Fraction of the ED cavity volume lost at each frame: the mean over theta of
        :meth:`k_theta` x :meth:`radial_profile` (each angle loses area ``k_theta`` x its own, possibly
        delayed, contraction; the longitudinal stretch is compensated in the radial step). Without
        dyssynchrony it is ``k0 * p``; the mean is taken on 3600 angles (exact to float rounding for
        these smooth periodic functions)."""
        theta = np.linspace(-math.pi, math.pi, 3600, endpoint=False)
        k = self.k_theta(theta)
        return np.array([float(np.mean(k * self.radial_profile(theta, f))) for f in range(len(self.times_ms))])

    def delay_theta_ms(self, theta: np.ndarray) -> np.ndarray:
        """Delay (ms) of the radial contraction along angle theta (0 everywhere without dyssynchrony)."""
        bump = np.exp(self._kappa_delay * (np.cos(theta - math.radians(self.params.delay_center_deg)) - 1.0))
        return self.params.delay_ms * bump

    def radial_profile(self, theta: np.ndarray, f: int) -> np.ndarray | float:
        """Contraction 0 (ED) .. 1 of the radial step along angle theta at frame f: the global time
        course, delayed by :meth:`delay_theta_ms` and held at 0 before the delayed start."""
        if self.params.delay_ms == 0:
            return self.p[f]
        t = np.maximum(self.times_ms[f] - self.delay_theta_ms(theta), 0.0)
        return temporal_profile(t / self.params.rr_ms, self.params.es_fraction)

    def _window(self, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = self.shape
        u = (r - s.r_w) / s.d_w
        return 1.0 - _q5(u), -_dq5(u) / s.d_w

    def _long(self, z: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
        """Longitudinal displacement u(z) (mm, before the radial window) and du/dz at frame f."""
        s = self.shape
        amp = (self.lam_es - 1.0) * self.p[f]
        val, slope = _ramp_linear(z, -6.0, s.c_o + 2.0, 25.0)
        val0, _ = _ramp_linear(np.array(s.c_o), -6.0, s.c_o + 2.0, 25.0)
        return amp * (val - val0), amp * slope

    def _twist(self, z: np.ndarray, f: int) -> np.ndarray:
        s = self.shape
        val, _ = _ramp_linear(z, 0.0, s.c_o, 15.0)
        tw = math.radians(self.params.twist_deg) * self.p[f]
        return tw * (-1.0 / 3.0 + val / s.c_o)

    def _radial_setup(self, theta: np.ndarray, z: np.ndarray, f: int) -> tuple[np.ndarray, ...]:
        """Per-point quantities of the radial step that do not depend on r."""
        s = self.shape
        _, dudz = self._long(z, f)
        lam = 1.0 + dudz
        A = _bullet(z, s.a, s.c)
        K = self.k_theta(theta) * self.radial_profile(theta, f) * A / lam
        rho1 = np.maximum((1 - _DELTA) * A, 1e-12)
        ro = np.sqrt(_bullet(z, s.a_o, s.c_o))
        ang = 1.0 - _q5((np.abs(np.angle(np.exp(1j * theta))) - math.radians(50)) / math.radians(40))
        zz = _q5((z + 8.0) / 8.0) * (1.0 - _q5((z - (s.z_rv - 12.0)) / 12.0))
        amp = self.params.rv_wall_motion_mm * self.p[f] * ang * zz
        return lam, K, rho1, ro, amp

    def _radial_eval(self, r: np.ndarray, setup: tuple[np.ndarray, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Radius after the radial step and d r_R / d r, for ED radius r."""
        lam, K, rho1, ro, amp = setup
        rho = r * r
        mv, md = _m(rho / rho1)
        G = rho / lam - K * mv
        dG = 2 * r * (1.0 / lam - K * md / rho1)
        w, dw = self._window(r)
        rhoR = rho + w * (G - rho)
        drhoR = 2 * r + dw * (G - rho) + w * (dG - 2 * r)
        rR = np.sqrt(np.maximum(rhoR, 0.0))
        ramp, dec = self.shape.rv_depth + 6.0, 25.0
        d = r - ro
        b = amp * (_q5((d - 1.0) / ramp) - _q5((d - 1.0 - ramp) / dec))
        db = amp * (_dq5((d - 1.0) / ramp) / ramp - _dq5((d - 1.0 - ramp) / dec) / dec)
        safe = rR > 1e-6
        drR = np.where(safe, drhoR / (2 * np.where(safe, rR, 1.0)), np.sqrt(np.maximum(G / np.maximum(rho, 1e-300), 0)))
        return rR - b, drR - db

    def _radial(self, r: np.ndarray, theta: np.ndarray, z: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray]:
        return self._radial_eval(r, self._radial_setup(theta, z, f))

    # ---- the map
    def forward_heart(self, h: np.ndarray, f: int) -> np.ndarray:
        """Heart coordinates (..., 3) at ED -> at frame f."""
        h = np.asarray(h, dtype=np.float64)
        r = np.hypot(h[..., 0], h[..., 1])
        theta = np.arctan2(h[..., 1], h[..., 0])
        z = h[..., 2]
        rR, _ = self._radial(r, theta, z, f)
        w, _ = self._window(rR)
        th2 = theta + self._twist(z, f) * w
        u, _ = self._long(z, f)
        z2 = z + u * w
        return np.stack([rR * np.cos(th2), rR * np.sin(th2), z2], axis=-1)

    def inverse_heart(self, h: np.ndarray, f: int, tol: float = 1e-10, max_iter: int = 30) -> np.ndarray:
        """Heart coordinates (..., 3) at frame f -> at ED.

        Newton iterations on each monotone 1D step (longitudinal, then radial), each point until
        its update is below ``tol`` mm; the twist step is inverted in closed form.
        """
        h = np.asarray(h, dtype=np.float64)
        shape = h.shape[:-1]
        h = h.reshape(-1, 3)
        rR = np.hypot(h[:, 0], h[:, 1])
        th2 = np.arctan2(h[:, 1], h[:, 0])
        z2 = h[:, 2].copy()
        z = z2.copy()
        r = rR.copy()
        theta = th2.copy()
        if self.p[f] != 0.0:
            moving = np.flatnonzero(rR < self.shape.r_w + self.shape.d_w)
            w, _ = self._window(rR[moving])
            zm, z2m = z2[moving], z2[moving]
            idx = np.arange(moving.size)
            for _ in range(max_iter):
                u, du = self._long(zm[idx], f)
                step = (zm[idx] + u * w[idx] - z2m[idx]) / (1.0 + du * w[idx])
                zm[idx] -= step
                idx = idx[np.abs(step) > tol]
                if idx.size == 0:
                    break
            z[moving] = zm
            theta[moving] = th2[moving] - self._twist(zm, f) * w
            setup = self._radial_setup(theta[moving], zm, f)
            target = rR[moving]
            lam, K = setup[0], setup[1]
            rm = np.sqrt(np.maximum(lam * (target * target + K), 0.0))  # exact where m = 1, w = 1, b = 0
            idx = np.arange(moving.size)
            for _ in range(max_iter):
                sub = tuple(a[idx] for a in setup)
                val, der = self._radial_eval(rm[idx], sub)
                new = np.maximum(rm[idx] - (val - target[idx]) / der, 0.0)
                step = new - rm[idx]
                rm[idx] = new
                idx = idx[np.abs(step) > tol]
                if idx.size == 0:
                    break
            r[moving] = rm
        out = np.stack([r * np.cos(theta), r * np.sin(theta), z], axis=-1)
        return out.reshape(shape + (3,))

    def forward(self, x: np.ndarray, f: int) -> np.ndarray:
        """World points (..., 3) RAS mm at ED -> their positions at frame f."""
        return self.to_world(self.forward_heart(self.to_heart(x), f))

    def inverse(self, x: np.ndarray, f: int) -> np.ndarray:
        """World points (..., 3) RAS mm at frame f -> their ED positions."""
        return self.to_world(self.inverse_heart(self.to_heart(x), f))

    def volume_jacobian_heart(self, r: np.ndarray, theta: np.ndarray, z: np.ndarray, f: int) -> np.ndarray:
        """det(d phi / d X) at ED cylindrical heart coordinates (exact from the step structure)."""
        rR, drR = self._radial(r, theta, z, f)
        w, _ = self._window(rR)
        _, du = self._long(z, f)
        return rR / np.maximum(r, 1e-12) * drR * (1.0 + du * w)


# --------------------------------------------------------------------------- anatomy + contrast
class _Texture:
    """A smooth random field with unit variance: Gaussian-filtered white noise on a grid in heart
    coordinates (mm), sampled by trilinear interpolation (so it moves with the tissue)."""

    def __init__(self, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, step_mm: float, sigma_mm: float) -> None:
        self.lo = np.asarray(lo, dtype=np.float64)
        self.step = step_mm
        # the extent is often a whole number of steps: the tolerance keeps the grid size (and so every
        # random number drawn for it) the same on every CPU, whose last bits may differ
        n = np.ceil((np.asarray(hi) - self.lo) / step_mm - 1e-6).astype(int) + 2
        g = ndimage.gaussian_filter(rng.normal(size=tuple(n)), sigma_mm / step_mm, mode="wrap")
        self.grid = ((g - g.mean()) / g.std()).astype(np.float32)

    def __call__(self, h: np.ndarray) -> np.ndarray:
        idx = [(h[..., i].ravel() - self.lo[i]) / self.step for i in range(3)]
        return ndimage.map_coordinates(self.grid, idx, order=1, mode="nearest").reshape(h.shape[:-1])


class _Anatomy:
    """Labels and noise-free intensity (LV blood = 1) of the ED anatomy at heart coordinates."""

    MYO = 0.33
    FAT = 0.80

    def __init__(self, params: PhantomParams, shape: _Shape, rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray) -> None:
        self.p, self.s = params, shape
        self.papillary_deg = (100.0 + rng.uniform(-10, 10), -150.0 + rng.uniform(-10, 10))
        self.bg_field = _Texture(rng, lo, hi, 3.0, 12.0)
        self.tissue_field = _Texture(rng, lo, hi, 2.0, 2.5)

    def rv_ellipse(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centre along e1, semi-axes along e1 and e2 (mm) of the RV ellipse in each plane z."""
        s, ti = self.s, math.radians(self.p.rv_insertion_deg)
        ro = np.sqrt(_bullet(z, s.a_o, s.c_o))
        taper = np.sqrt(np.clip(1 - (np.maximum(z, 0) / s.z_rv) ** 2, 0, 1))
        b1 = np.maximum(s.rv_depth * taper, 0.5)
        b2 = np.maximum(1.3 * ro, 0.5)
        d = ro * math.cos(ti) + b1 * np.sqrt(np.clip(1 - (ro * math.sin(ti) / b2) ** 2, 0, 1))
        return d, b1, b2

    def __call__(self, h: np.ndarray, labels_only: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        s = self.s
        x1, x2, z = h[..., 0], h[..., 1], h[..., 2]
        rho = x1 * x1 + x2 * x2
        ri2 = _bullet(z, s.a, s.c)
        ro2 = _bullet(z, s.a_o, s.c_o)
        lv_all = (z >= 0) & (z <= s.c_o) & (rho < ro2)
        cav = (z >= 0) & (z <= s.c) & (rho < ri2)
        myo = lv_all & ~cav
        d, b1, b2 = self.rv_ellipse(z)
        e = ((x1 - d) / b1) ** 2 + (x2 / b2) ** 2
        ew = ((x1 - d) / (b1 + 3.0)) ** 2 + (x2 / (b2 + 3.0)) ** 2
        rv_z = (z >= 0) & (z <= s.z_rv)
        rv = rv_z & (e < 1) & ~lv_all
        rv_wall = rv_z & (ew < 1) & ~rv & ~lv_all
        ro = np.sqrt(ro2)
        fat = (z >= 0) & (z <= s.c_o) & ~lv_all & ~rv & ~rv_wall & (rho < (ro + 3.0) ** 2)
        pap = np.zeros_like(cav)
        ri = np.sqrt(ri2)
        zin = (z > 0.3 * s.c) & (z < 0.75 * s.c)
        for deg in self.papillary_deg:
            cx, cy = 0.55 * ri * math.cos(math.radians(deg)), 0.55 * ri * math.sin(math.radians(deg))
            pap |= zin & ((x1 - cx) ** 2 + (x2 - cy) ** 2 < (0.13 * ri) ** 2 + 4.0)
        pap &= cav
        labels = np.zeros(h.shape[:-1], dtype=np.uint8)
        labels[rv] = 1
        labels[myo] = 2
        labels[cav] = 3
        if labels_only:
            return labels, None
        fb = self.bg_field(h)
        # background percentiles: the measured ones scaled (p10 by 0.6, p50 and p90 by 0.85), because
        # the fat ring and the RV wall (also inside the measured 15 mm ring), blur and the Rician
        # noise floor lift the measured percentiles of the rendered image
        bg = np.interp(fb, [-3.0, -1.2816, 0.0, 1.2816, 3.0], [0.02, 0.6 * REAL_BG_P10, 0.85 * REAL_BG_P50, 0.85 * REAL_BG_P90, 1.0])
        tex = 1.0 + 0.07 * self.tissue_field(h)
        flow = 1.0 + 0.15 * fb  # slow blood-pool inhomogeneity (flow, trabeculae)
        img = np.where(cav, flow, bg)
        img = np.where(rv, 1.08 * REAL_RV_TO_LV_BLOOD * flow, img)  # +8 %: the thin RV loses signal to partial volume
        img = np.where(myo | rv_wall | pap, self.MYO, img)
        img = np.where(fat, self.FAT, img)
        return labels, img * tex


# --------------------------------------------------------------------------- the phantom
@dataclass
class Phantom:
    """A generated phantom: the cine, its labels ``(T, Z, Y, X)`` uint8 (ACDC values), the exact
    displacement ``(T, 3, Z, Y, X)`` float32 (mm, RAS, Lagrangian from the ED voxel centres) and the
    reference report (``reference.json`` keys of ``strain_spec.md``; a smaller dict for the long-axis
    view of :func:`generate_long_axis_phantom`)."""

    cine: Cine
    labels: np.ndarray
    displacement: np.ndarray
    reference: dict
    params: PhantomParams
    motion: PhantomMotion = field(repr=False)


def _grid(params: PhantomParams, shape: _Shape) -> tuple[Geometry, np.ndarray, np.ndarray, np.ndarray]:
    """Grid geometry, heart axes (e1, e2, l as columns), base-plane centre (RAS) and slice positions
    (mm from the base-plane centre along the slice normal: along l unless ``params.tilt_deg``)."""
    d = default_orientation() if params.orientation is None else np.asarray(params.orientation, dtype=np.float64)
    l = d[:, 0]
    alpha = math.radians(params.rotation_deg + (180.0 if params.rv_side == "right" else 0.0))
    e1 = -(math.cos(alpha) * d[:, 2] + math.sin(alpha) * d[:, 1])
    e2 = np.cross(l, e1)
    axes = np.stack([e1, e2, l], axis=1)
    s = params.slice_spacing_mm
    # slice k covers [k s, (k + 1) s] along l: the first slab starts at the base plane; the cap
    # slice is the first one whose centre lies beyond the cavity
    n_cap = int(math.floor((shape.c - s / 2) / s)) + 2
    if s / 2 + (n_cap - 1) * s > shape.c_o - 0.5:
        raise PhantomRefused("apex_wall_mm", "too thin for this slice spacing: no slice would show the apical cap")
    tilt = math.radians(params.tilt_deg)
    if tilt:  # turn the grid about its row axis: slice normal and column axis leave l and its normal
        n_cap += int(math.ceil(shape.a_o * math.sin(tilt) / s))
        d = np.stack([math.cos(tilt) * l + math.sin(tilt) * d[:, 2], d[:, 1],
                      -math.sin(tilt) * l + math.cos(tilt) * d[:, 2]], axis=1)
    n = params.n_slices if params.n_slices is not None else n_cap
    if n < 1:
        raise ValueError("n_slices must be >= 1")
    z = s / 2 + np.arange(n) * s
    base = np.array([8.0, -12.0, 25.0])  # a plausible RAS position of the LV base centre
    sp = params.pixel_spacing_mm
    m = params.matrix_size
    centre = base + 0.35 * shape.a * e1
    origin = centre + d[:, 0] * z[0] - (d[:, 1] + d[:, 2]) * sp * (m - 1) / 2.0
    geom = Geometry(spacing=(s, sp, sp), origin=origin, direction=d)
    return geom, axes, base, z


def _rician(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    if sigma == 0:
        return img
    re = img + rng.normal(0.0, sigma, size=img.shape)
    im = rng.normal(0.0, sigma, size=img.shape)
    return np.hypot(re, im)


@dataclass
class _Heart:
    """What both views share, drawn from ``params.seed`` in this order: the short-axis grid, the
    motion and the ED anatomy (its textures span the short-axis field of view, so a long-axis
    view of the same params shows the same tissue); ``rng`` then serves the acquisition."""

    rng: np.random.Generator
    motion: PhantomMotion
    anatomy: _Anatomy
    sa_geometry: Geometry
    slice_z: np.ndarray  # mm along l of the short-axis slice centres
    sa_plane: np.ndarray  # heart coordinates of the short-axis in-plane grid (m, m, 3)
    sa_thickness: float  # mm


def _heart(p: PhantomParams) -> _Heart:
    rng = np.random.default_rng(p.seed)
    shape = _shape(p)
    geom, axes, base, zs = _grid(p, shape)
    times = np.arange(p.n_frames) * (p.rr_ms / p.n_frames)
    motion = PhantomMotion(p, shape, base, axes, times)
    # heart coordinates of the in-plane grid (identical for every slice when the slices are normal to l)
    h_plane = motion.to_heart(geom.world_points((1, p.matrix_size, p.matrix_size))[0])
    thick = p.slice_thickness_mm if p.slice_thickness_mm is not None else p.slice_spacing_mm
    lo = np.array([h_plane[..., 0].min(), h_plane[..., 1].min(), zs[0] - thick - 30.0])
    hi = np.array([h_plane[..., 0].max(), h_plane[..., 1].max(), zs[-1] + thick + 30.0])
    if p.tilt_deg:  # tilted slices: the textures must span every slice's points
        h_all = motion.to_heart(geom.world_points((len(zs), p.matrix_size, p.matrix_size)))
        lo = np.minimum(lo, h_all.min(axis=(0, 1, 2)) - np.array([0.0, 0.0, thick + 30.0]))
        hi = np.maximum(hi, h_all.max(axis=(0, 1, 2)) + np.array([0.0, 0.0, thick + 30.0]))
    anatomy = _Anatomy(p, shape, rng, lo, hi)
    return _Heart(rng, motion, anatomy, geom, zs, h_plane, thick)


def _pv_offsets(p: PhantomParams, thickness_mm: float) -> np.ndarray:
    """Positions (mm) of the ``pv_samples`` sub-samples across a slice of ``thickness_mm``."""
    ns = p.pv_samples
    return ((np.arange(ns) + 0.5) / ns - 0.5) * thickness_mm


def _within_reach(motion: PhantomMotion, x1: np.ndarray, x2: np.ndarray | float) -> np.ndarray:
    """True where the heart-coordinate point (x1, x2) lies within the motion's reach of the LV axis
    (farther points never move: :func:`_render` renders them once)."""
    return np.hypot(x1, x2) < motion.shape.r_w + motion.shape.d_w


def _render(heart: _Heart, pts: np.ndarray, moving: np.ndarray, n_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Noise-free images (float64, partial volume: mean over the sub-samples) and labels (those of
    the central sub-sample), ``(T, Z, Y, X)``, of the heart-coordinate points ``pts`` ``(Z, S, Y, X,
    3)`` (S sub-samples across each slice). Pixels where ``moving`` ``(Y, X)`` is False lie beyond
    the motion's reach for every sub-sample: they are rendered once."""
    n_z, ns = pts.shape[:2]
    images = np.empty((n_frames, n_z) + moving.shape, dtype=np.float64)
    labels = np.empty((n_frames, n_z) + moving.shape, dtype=np.uint8)
    static_lab, static_img = heart.anatomy(pts[:, :, ~moving])
    images[:, :, ~moving] = static_img.mean(axis=1)[None]
    labels[:, :, ~moving] = static_lab[:, ns // 2][None]
    pts_moving = pts[:, :, moving]
    for f in range(n_frames):
        lab, img = heart.anatomy(heart.motion.inverse_heart(pts_moving, f))
        images[f][:, moving] = img.mean(axis=1)
        labels[f][:, moving] = lab[:, ns // 2]
    return images, labels


def _acquire(images: np.ndarray, p: PhantomParams, rng: np.random.Generator) -> np.ndarray:
    """Static coil sensitivity (smooth, low order in-plane), in-plane blur and Rician noise applied
    to noise-free ``(T, Z, Y, X)`` images (LV blood = 1); float32 in ``BLOOD_SIGNAL`` units."""
    vv, uu = np.meshgrid(np.linspace(-1.0, 1.0, images.shape[2]), np.linspace(-1.0, 1.0, images.shape[3]), indexing="ij")
    coef = rng.normal(size=5)
    field2d = coef[0] * uu + coef[1] * vv + coef[2] * uu * vv + coef[3] * (uu**2 - 1 / 3) + coef[4] * (vv**2 - 1 / 3)
    field2d /= max(float(field2d.std()), 1e-12)
    images *= (1.0 + p.bias * field2d)[None, None] * BLOOD_SIGNAL
    if p.blur_px > 0:
        images = ndimage.gaussian_filter(images, sigma=(0, 0, p.blur_px, p.blur_px), mode="nearest")
    return _rician(images, p.noise * BLOOD_SIGNAL, rng).astype(np.float32)


def _exact_displacement(motion: PhantomMotion, geom: Geometry, shape3d: tuple[int, int, int]) -> np.ndarray:
    """``phi_f(X) - X`` at the ED voxel centres, ``(T, 3, Z, Y, X)`` float32 (mm, RAS); frame 0 zero."""
    centres = geom.world_points(shape3d)
    disp = np.empty((len(motion.times_ms), 3) + tuple(shape3d), dtype=np.float32)
    for f in range(len(motion.times_ms)):
        disp[f] = np.moveaxis(motion.forward(centres, f) - centres, -1, 0)
    disp[0] = 0.0
    return disp


def _view(heart: _Heart, p: PhantomParams, pts: np.ndarray, moving: np.ndarray, geom: Geometry, name: str) -> tuple[Cine, np.ndarray, np.ndarray]:
    """Cine, labels and exact displacement of the view whose voxel sub-samples are ``pts`` (heart
    coordinates, see :func:`_render`) on the grid ``geom``."""
    images, labels = _render(heart, pts, moving, p.n_frames)
    images = _acquire(images, p, heart.rng)
    disp = _exact_displacement(heart.motion, geom, (pts.shape[0],) + moving.shape)
    es = int(np.argmax(heart.motion.p))
    cine = Cine(
        data=images,
        geometry=geom,
        times_ms=heart.motion.times_ms.copy(),
        name=name,
        source="deepstrain.phantom",
        ed=0,
        es=es,
        labels={0: labels[0].copy(), es: labels[es].copy()},
    )
    return cine, labels, disp


def generate_phantom(params: PhantomParams | None = None) -> Phantom:
    """Generate a phantom (deterministic for given ``params``, including ``params.seed``)."""
    p = params if params is not None else PhantomParams()
    heart = _heart(p)
    geom, zs, h_plane, motion = heart.sa_geometry, heart.slice_z, heart.sa_plane, heart.motion
    m, n_z, ns = p.matrix_size, len(zs), p.pv_samples
    offsets = _pv_offsets(p, heart.sa_thickness)
    if p.tilt_deg:  # sub-samples across each slice along the grid's slice normal, not along l
        world = geom.world_points((n_z, m, m))[:, None] + offsets[None, :, None, None, None] * geom.direction[:, 0]
        pts = motion.to_heart(world)
        moving = _within_reach(motion, pts[..., 0], pts[..., 1]).any(axis=(0, 1))
    else:
        # points farther than the motion's reach from the LV axis never move: render them once
        moving = _within_reach(motion, h_plane[..., 0], h_plane[..., 1])
        pts = np.empty((n_z, ns, m, m, 3))
        pts[..., 0] = h_plane[..., 0]
        pts[..., 1] = h_plane[..., 1]
        pts[..., 2] = (zs[:, None] + offsets[None, :])[:, :, None, None]
    cine, labels, disp = _view(heart, p, pts, moving, geom, f"phantom_seed{p.seed}")
    reference = _reference(p, motion, heart.anatomy, geom, labels[0], cine.es)
    return Phantom(cine=cine, labels=labels, displacement=disp, reference=reference, params=p, motion=motion)


LONG_AXIS_THICKNESS_MM = 8.0
"""Slice thickness of the long-axis view when ``params.slice_thickness_mm`` is None."""
LONG_AXIS_MARGIN_MM = 15.0
"""Margin of the default long-axis field of view around the LV (base plane, epicardial apex,
lateral wall) and the RV."""


def _long_axis_extent(heart: _Heart) -> tuple[float, float, float, float]:
    """Default long-axis field of view in heart coordinates: ``(z_top, z_bottom, x1_lo, x1_hi)``
    mm: base plane to epicardial apex along l, LV lateral epicardium to the RV free wall along
    e1, each with ``LONG_AXIS_MARGIN_MM`` around."""
    s, mg = heart.motion.shape, LONG_AXIS_MARGIN_MM
    z = np.linspace(0.0, s.z_rv, 200)
    d, b1, _ = heart.anatomy.rv_ellipse(z)
    rv_outer = float(np.max(d + b1)) + 3.0  # the RV wall is 3 mm thick
    return -mg, s.c_o + mg, -s.a_o - mg, max(rv_outer, s.a_o) + mg


def generate_long_axis_phantom(params: PhantomParams | None = None, *, matrix_rows: int | None = None, matrix_cols: int | None = None) -> Phantom:
    """The same heart as :func:`generate_phantom` (same ``params``: same anatomy, motion and world
    position) on one long-axis plane: a 4-chamber-like view through the LV axis.

    The plane holds the LV long axis ``l`` and the septal direction ``e1`` (``x2 = 0`` in heart
    coordinates), so it shows the LV horseshoe with the RV beside it. Arrays are ``(T, 1, Y, X)``:
    rows run along ``l`` (base at the top, apex below), columns along ``e1`` (the RV on the
    high-column side), pixels ``params.pixel_spacing_mm``. The slice is
    ``params.slice_thickness_mm`` thick along ``e2`` (``LONG_AXIS_THICKNESS_MM`` = 8 mm when None),
    averaged over ``params.pv_samples`` sub-samples (partial volume); labels are those of the plane
    itself. ``Geometry.direction`` columns are ``(e2, l, e1)``, a cyclic permutation of the
    right-handed heart frame ``(e1, e2, l)``: right-handed (determinant +1). By default the matrix
    covers the base plane to the epicardial apex and the LV lateral wall to the RV free wall, each
    with ``LONG_AXIS_MARGIN_MM`` (15 mm) around; ``matrix_rows`` / ``matrix_cols`` set the matrix
    instead, centred on that field of view. Coil bias, blur and Rician noise as in
    :func:`generate_phantom`. ``displacement`` is exact (``(T, 3, 1, Y, X)``, RAS mm, Lagrangian
    from the ED pixel centres; twist moves tissue through the plane, so it has a component along
    ``e2``). ``reference`` holds only ``"view"`` (``"long_axis_4ch"``), ``"ed"``, ``"es"``,
    ``"times_ms"`` and ``"phantom"`` (params, slice thickness, the heart's axes, contraction
    profile); strain references are left to the caller (from the exact displacement or ``motion``).
    """
    p = params if params is not None else PhantomParams()
    for name, value in (("matrix_rows", matrix_rows), ("matrix_cols", matrix_cols)):
        if value is not None and not 8 <= value <= 1024:
            raise ValueError(f"{name} must be within 8 - 1024")
    heart = _heart(p)
    motion, sp = heart.motion, p.pixel_spacing_mm
    z_top, z_bottom, x1_lo, x1_hi = _long_axis_extent(heart)
    n_rows = matrix_rows if matrix_rows is not None else int(math.ceil((z_bottom - z_top) / sp)) + 1
    n_cols = matrix_cols if matrix_cols is not None else int(math.ceil((x1_hi - x1_lo) / sp)) + 1
    z0 = (z_top + z_bottom) / 2 - sp * (n_rows - 1) / 2
    x0 = (x1_lo + x1_hi) / 2 - sp * (n_cols - 1) / 2
    e1, e2, l = motion.axes[:, 0], motion.axes[:, 1], motion.axes[:, 2]
    thick = p.slice_thickness_mm if p.slice_thickness_mm is not None else LONG_AXIS_THICKNESS_MM
    geom = Geometry(spacing=(thick, sp, sp), origin=motion.origin + z0 * l + x0 * e1, direction=np.stack([e2, l, e1], axis=1))
    offsets = _pv_offsets(p, thick)
    zz, xx = np.meshgrid(z0 + sp * np.arange(n_rows), x0 + sp * np.arange(n_cols), indexing="ij")
    pts = np.empty((1, offsets.size, n_rows, n_cols, 3))
    pts[..., 0] = xx
    pts[..., 1] = offsets[:, None, None]
    pts[..., 2] = zz
    moving = _within_reach(motion, xx, np.min(np.abs(offsets)))  # the sub-sample nearest the axis decides
    cine, labels, disp = _view(heart, p, pts, moving, geom, f"phantom_seed{p.seed}_la")
    reference = {
        "view": "long_axis_4ch",
        "ed": 0,
        "es": cine.es,
        "times_ms": motion.times_ms.tolist(),
        "phantom": {
            "params": asdict(p),
            "seed": p.seed,
            "slice_thickness_mm": thick,
            "long_axis_ras": l.tolist(),
            "septal_direction_ras": e1.tolist(),
            "base_centre_ras": motion.origin.tolist(),
            "contraction_profile": motion.p.tolist(),
        },
    }
    return Phantom(cine=cine, labels=labels, displacement=disp, reference=reference, params=p, motion=motion)


# --------------------------------------------------------------------------- reference
def _deformation_gradients(motion: PhantomMotion, x: np.ndarray, f: int, h: float = 1e-3) -> np.ndarray:
    """F = d phi_f / d X (N, 3, 3) in world RAS, by central differences (step h mm) on the analytic map."""
    out = np.empty((x.shape[0], 3, 3))
    for j in range(3):
        step = np.zeros(3)
        step[j] = h
        out[:, :, j] = (motion.forward(x + step, f) - motion.forward(x - step, f)) / (2 * h)
    return out


def _rv_volume_ml(motion: PhantomMotion, anatomy: _Anatomy, f: int) -> float:
    """RV cavity volume (ml) at frame f: integral of det F over the ED RV (polar midpoint rule)."""
    s = motion.shape
    dr, dth, dz = 0.4, math.radians(1.0), 1.0
    r = np.arange(s.a * 0.3, s.a_o + s.rv_depth * 2.5 + 10, dr) + dr / 2
    th = np.arange(-math.pi / 2 - 0.3, math.pi / 2 + 0.3, dth) + dth / 2
    total = 0.0
    for z in np.arange(0.0, s.z_rv, dz) + dz / 2:
        rr, tt = np.meshgrid(r, th, indexing="ij")
        zz = np.full_like(rr, z)
        h = np.stack([rr * np.cos(tt), rr * np.sin(tt), zz], axis=-1)
        lab, _ = anatomy(h, labels_only=True)
        inside = lab == 1
        if not inside.any():
            continue
        jac = motion.volume_jacobian_heart(rr[inside], tt[inside], zz[inside], f) if f else 1.0
        total += float(np.sum(jac * rr[inside])) * dr * dth * dz
    return total / 1000.0


def _aha_segments(theta_deg: np.ndarray, z: np.ndarray, cavity_z: np.ndarray) -> np.ndarray:
    """AHA segment (1..17) of each ED myocardium voxel from its angle (deg) and position along l."""
    s_base, s_apex = float(cavity_z.min()), float(cavity_z.max())
    frac = (z - s_base) / (s_apex - s_base) if s_apex > s_base else np.zeros_like(z)
    seg = np.zeros(z.shape, dtype=int)
    six = np.floor((theta_deg + 180.0) / 60.0).astype(int) % 6  # 0: [-180,-120) ... 5: [120, 180]
    six = np.where(theta_deg >= 180.0, 5, six)
    six_to_aha = np.array([6, 1, 2, 3, 4, 5])  # anterolateral, anterior, anteroseptal, inferoseptal, inferior, inferolateral
    four = np.where((theta_deg >= -135) & (theta_deg < -45), 13, np.where((theta_deg >= -45) & (theta_deg < 45), 14, np.where((theta_deg >= 45) & (theta_deg < 135), 15, 16)))
    # A slice lying exactly on a level boundary belongs to the level below it (inclusive lower
    # bounds); eps absorbs floating-point rounding of positions (~1e-14) so it is not split.
    eps = 1e-6
    basal = frac < 1 / 3 - eps
    mid = (frac >= 1 / 3 - eps) & (frac < 2 / 3 - eps)
    apical = (frac >= 2 / 3 - eps) & (z <= s_apex + 1e-6)
    seg[basal] = six_to_aha[six[basal]]
    seg[mid] = six_to_aha[six[mid]] + 6
    seg[apical] = four[apical]
    seg[z > s_apex + 1e-6] = 17
    return seg


_ROTATION_LEVELS = {"basal": (1, 6), "mid": (7, 12), "apical": (13, 16)}  # kept apart from deepstrain.rotation: the reference must not share the engine's code


def _reference_rotation(motion: PhantomMotion, x: np.ndarray, seg: np.ndarray, n_frames: int, es: int) -> dict:
    """Exact rotation (deg) of each AHA level about l, and the twist, from the analytic twist step.

    A point's rotation is the twist step's angle ``tau(z) omega(r)`` (the radial and longitudinal
    steps do not turn it); a level's is the mean over its ED myocardium voxels weighted by
    ``r r_t`` (ED and current distance from the axis), the weighting of a least-squares rotation.
    Positive = counter-clockwise viewed from the apex (right-handed about l, base to apex).
    """
    hx = motion.to_heart(x)
    r = np.hypot(hx[:, 0], hx[:, 1])
    hand = float(np.sign(np.linalg.det(motion.axes)))  # a mirrored heart turns the other way in the world
    curves: dict[str, list[float] | None] = {}
    for name, (lo, hi) in _ROTATION_LEVELS.items():
        sel = (seg >= lo) & (seg <= hi)
        if not sel.any():
            curves[f"{name}_deg"] = None
            continue
        vals = [0.0]
        for f in range(1, n_frames):
            rt = np.hypot(*motion.forward_heart(hx[sel], f)[:, :2].T)
            w, _ = motion._window(rt)
            ang = np.degrees(motion._twist(hx[sel, 2], f) * w)
            vals.append(hand * float(np.average(ang, weights=r[sel] * rt)))
        curves[f"{name}_deg"] = vals
    out: dict = {"rotation": curves, "twist": {"twist_deg": None, "es_twist_deg": None, "es_torsion_deg_per_cm": None}}
    if curves["basal_deg"] is not None and curves["apical_deg"] is not None:
        twist = np.array(curves["apical_deg"]) - np.array(curves["basal_deg"])
        z_b = hx[(seg >= 1) & (seg <= 6), 2].mean()
        z_a = hx[(seg >= 13) & (seg <= 16), 2].mean()
        out["twist"] = {"twist_deg": twist.tolist(), "es_twist_deg": float(twist[es]),
                        "es_torsion_deg_per_cm": float(twist[es] / (abs(z_a - z_b) / 10.0)),
                        "level_separation_mm": float(abs(z_a - z_b))}
    return out


def _reference(p: PhantomParams, motion: PhantomMotion, anatomy: _Anatomy, geom: Geometry, labels_ed: np.ndarray, es: int) -> dict:
    s = motion.shape
    times = motion.times_ms
    T = p.n_frames
    centres = geom.world_points(labels_ed.shape)
    myo = labels_ed == 2
    x = centres[myo]
    hx = motion.to_heart(x)
    theta = np.arctan2(hx[:, 1], hx[:, 0])
    e1, e2, l = motion.axes[:, 0], motion.axes[:, 1], motion.axes[:, 2]
    rdir = np.cos(theta)[:, None] * e1 + np.sin(theta)[:, None] * e2
    cdir = np.cross(l, rdir)
    ldir = np.broadcast_to(l, rdir.shape)
    comps = {"radial": rdir, "circumferential": cdir, "longitudinal": ldir}
    per_voxel = {k: np.zeros((T, x.shape[0])) for k in comps}
    for f in range(1, T):
        F = _deformation_gradients(motion, x, f)
        E = 0.5 * (np.einsum("nki,nkj->nij", F, F) - np.eye(3))
        for k, v in comps.items():
            per_voxel[k][f] = 100.0 * np.einsum("ni,nij,nj->n", v, E, v)
    cavity_z = motion.to_heart(centres[labels_ed == 3])[:, 2]
    seg = _aha_segments(np.degrees(theta), hx[:, 2], cavity_z)
    glob = {k: v.mean(axis=1) for k, v in per_voxel.items()}
    rates = {k: strain_rate(v, times) for k, v in glob.items()}  # the engine's definitions (deepstrain.strain)
    peaks = peak_values(glob, rates, 0, es)
    aha_curves = {
        f"{k}_percent": {str(i): (per_voxel[k][:, seg == i].mean(axis=1).tolist() if np.any(seg == i) else None) for i in range(1, 18)}
        for k in comps
    }
    aha = {k: {i: (c[es] if c is not None else None) for i, c in v.items()} for k, v in aha_curves.items()}
    edv = math.pi * s.a**2 * s.c * 64.0 / 105.0 / 1000.0
    lv_curve = edv * (1.0 - motion.cavity_loss())
    epi = math.pi * s.a_o**2 * s.c_o * 64.0 / 105.0 / 1000.0
    rv_ed, rv_es = _rv_volume_ml(motion, anatomy, 0), _rv_volume_ml(motion, anatomy, es)
    return {
        "frames": {"count": T, "ed": 0, "es": es, "times_ms": times.tolist()},
        "volumetrics": {
            "lv_edv_ml": edv,
            "lv_esv_ml": float(lv_curve[es]),
            "lv_sv_ml": float(edv - lv_curve[es]),
            "lv_ef_percent": float(100.0 * (edv - lv_curve[es]) / edv),
            "lv_mass_g": (epi - edv) * MYOCARDIUM_DENSITY_G_PER_ML,
            "rv_edv_ml": rv_ed,
            "rv_esv_ml": rv_es,
            "rv_ef_percent": 100.0 * (rv_ed - rv_es) / rv_ed,
        },
        "global_strain": {f"{k}_percent": v.tolist() for k, v in glob.items()},
        "global_strain_rate": {f"{k}_per_s": v.tolist() for k, v in rates.items()},
        "ess": {k: float(v[es]) for k, v in glob.items()},
        "srs": peaks["srs"],
        "sre": peaks["sre"],
        "aha": aha,
        "aha_curves": aha_curves,
        **_reference_rotation(motion, x, seg, T, es),
        "conventions": {"text": CONVENTIONS},
        "phantom": {
            "params": asdict(p),
            "seed": p.seed,
            "lv_volume_ml": lv_curve.tolist(),
            "contraction_profile": motion.p.tolist(),
            "long_axis_ras": l.tolist(),
            "septal_direction_ras": e1.tolist(),
            "base_centre_ras": motion.origin.tolist(),
            "rv_insertion_angles_deg": [-p.rv_insertion_deg, p.rv_insertion_deg],
            "cavity_radius_mm": s.a,
            "cavity_length_mm": s.c,
            "epicardial_radius_mm": s.a_o,
            "epicardial_length_mm": s.c_o,
            "slice_positions_along_l_mm": (motion.to_heart(geom.world_points((labels_ed.shape[0], 1, 1))[:, 0, 0])[:, 2]).tolist(),
            "myocardium_voxels_per_segment": {str(i): int(np.sum(seg == i)) for i in range(1, 18)},
        },
    }


# --------------------------------------------------------------------------- files
def write_phantom(phantom: Phantom, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write ``cine.nii.gz`` (x, y, z, t) float32, ``labels.nii.gz`` (x, y, z, t) uint8,
    ``displacement.nii.gz`` (x, y, z, t, 3) float32 (intent vector, RAS mm), all with the frame
    interval in ``pixdim[4]`` (:mod:`deepstrain.io`), and ``reference.json``.
    All or nothing (:func:`deepstrain.outputs.atomic_output_dir`); returns the folder."""
    from .io import save_cine, save_displacement, save_labels
    from .outputs import atomic_output_dir

    cine = phantom.cine
    out = Path(out_dir)
    with atomic_output_dir(out, overwrite=overwrite, kind="phantom") as tmp:
        save_cine(cine, tmp / "cine.nii.gz")
        save_labels(phantom.labels, cine.geometry, tmp / "labels.nii.gz", times_ms=cine.times_ms)
        save_displacement(phantom.displacement, cine.geometry, tmp / "displacement.nii.gz", times_ms=cine.times_ms)
        (tmp / "reference.json").write_text(json.dumps(phantom.reference, indent=1))
    return out
