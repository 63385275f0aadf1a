"""Mechanical dyssynchrony from the AHA segment strain curves.

Conventions (all from the segment mean curves of :func:`deepstrain.aha.segment_curves`, percent,
with the frame times in ms after the R wave). Times to peak are given for the 16 segments 1-16;
the indices use the **12 basal and mid segments** (1-12), as the 12-segment indices of
echocardiography do: on phantoms, the apical segments' small circumferential strain put their peak
hundreds of ms off in 2 of 5 synchronous studies, which alone made the 16-segment SD 95-146 ms
(``benchmarks/dyssynchrony_accuracy.py``).

* **Time to peak** (``ttp``, ms after ED) of a segment: the frame of largest thickening (radial
  maximum) or shortening (circumferential minimum) over the whole recorded cycle, ED left out,
  refined below the frame interval by the vertex of the parabola through that frame and its two
  neighbours (kept between them). Searching the whole cycle, not only systole, is what lets a late
  wall's post-systolic peak count.
* ``sd_ttp_<component>_ms``: standard deviation (sample, ``ddof=1``) of the basal and mid segments'
  times to peak; needs at least 6 of them.
* ``septal_lateral_delay_<component>_ms``: mean time to peak of the lateral segments (5, 6, 11, 12:
  basal and mid inferolateral and anterolateral) minus that of the septal ones (2, 3, 8, 9);
  positive = the lateral wall peaks later (the pattern of left bundle branch block).
* ``post_systolic_segments``: how many of the 12 basal and mid segments reach their circumferential peak more than
  one frame interval after the ES frame (ES is the frame nearest end-systole, so a peak at the true
  end-systole can fall up to half a frame after it).
* ``cure``: circumferential uniformity ratio estimate (Bilchick et al., 2008). At each systolic frame
  (after ED, up to ES) the circumferential strain of the six segments of a ring (basal 1-6, mid
  7-12, in their order around the ring) is decomposed into Fourier terms; with ``S0`` the power of
  the zero-order term and ``S1`` that of the first-order terms, ``CURE = (1 + S1 / S0) ** -0.5``,
  averaged over the frames and the two rings. 1 = all segments shorten together; towards 0 = one
  side shortens while the other stretches.

Everything is ``None`` where it cannot be computed: no frame timing, fewer than 3 frames, or too
few segments.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

SEPTAL = (2, 3, 8, 9)
LATERAL = (5, 6, 11, 12)
RINGS = (tuple(range(1, 7)), tuple(range(7, 13)))
INDEX_SEGMENTS = tuple(range(1, 13))
COMPONENTS = ("radial", "circumferential")
KEYS = (
    "sd_ttp_radial_ms", "sd_ttp_circumferential_ms",
    "septal_lateral_delay_radial_ms", "septal_lateral_delay_circumferential_ms",
    "post_systolic_segments", "cure",
)  # fmt: skip
MIN_SEGMENTS = 6


def time_to_peak(curve: np.ndarray, times_ms: np.ndarray, sign: float) -> float | None:
    """Time (ms after ``times_ms[0]``) of the peak of ``sign * curve`` after the first frame, refined by
    a parabola through the peak frame and its neighbours; None for a curve without finite values."""
    y = sign * np.asarray(curve, dtype=np.float64).reshape(-1)
    t = np.asarray(times_ms, dtype=np.float64).reshape(-1)
    if y.size < 3 or not np.all(np.isfinite(y[1:])):
        return None
    i = 1 + int(np.argmax(y[1:]))
    if i == y.size - 1:
        return float(t[i] - t[0])
    (t0, t1, t2), (y0, y1, y2) = t[i - 1:i + 2], y[i - 1:i + 2]
    # vertex of the parabola through the three points (uneven spacing allowed)
    d01, d12 = (y1 - y0) / (t1 - t0), (y2 - y1) / (t2 - t1)
    curv = (d12 - d01) / (t2 - t0)
    peak = t1 if curv >= 0 else (t0 + t1) / 2 - d01 / (2 * curv)
    return float(np.clip(peak, t0, t2) - t[0])


def _cure_frame(values: np.ndarray) -> float | None:
    n = values.size
    c0 = values.mean()
    c1 = np.mean(values * np.exp(-2j * np.pi * np.arange(n) / n))
    s0, s1 = c0 * c0, 2.0 * abs(c1) ** 2
    if s0 + s1 <= 1e-12:
        return None
    return float((1.0 + s1 / s0) ** -0.5) if s0 > 0 else 0.0


def _from_ed(times_ms: np.ndarray, ed: int) -> tuple[np.ndarray, np.ndarray]:
    """Frame order starting at ED (the cycle wraps) and the times after ED of those frames (ms); a
    wrapped frame's time adds the recorded cycle length (last - first time + one frame interval)."""
    t = np.asarray(times_ms, dtype=np.float64).reshape(-1)
    order = (ed + np.arange(t.size)) % t.size
    rel = t[order] - t[ed]
    if t.size >= 2 and np.all(np.isfinite(t)):
        rel = np.where(order < ed, rel + (t[-1] - t[0] + float(np.median(np.diff(t)))), rel)
    return order, rel


def dyssynchrony(
    aha_curves: Mapping[str, Mapping[int, np.ndarray | None]], times_ms: np.ndarray, ed: int, es: int
) -> dict:
    """The indices of the module docstring, and ``ttp_<component>_ms`` (segment -> ms after ED, or None).

    ``aha_curves``: component -> ``{1..17: (T,) curve in percent or None}``; ``times_ms`` ``(T,)``
    (NaN when unknown); ``ed``, ``es``: frame indices (the cycle may wrap from the last frame to the
    first).
    """
    order, t = _from_ed(times_ms, ed)
    es = int((es - ed) % t.size)
    out: dict = {k: None for k in KEYS}
    timed = t.size >= 3 and bool(np.all(np.isfinite(t))) and bool(np.all(np.diff(t) > 0))
    aha_curves = {c: {s: (None if v is None else np.asarray(v, dtype=np.float64)[order]) for s, v in segs.items()}
                  for c, segs in aha_curves.items() if segs is not None}
    for comp, sign in zip(COMPONENTS, (1.0, -1.0)):
        curves = aha_curves.get(comp) or {}
        ttp: dict[int, float | None] = {}
        for seg in range(1, 17):
            c = curves.get(seg)
            ttp[seg] = time_to_peak(c, t, sign) if timed and c is not None else None
        out[f"ttp_{comp}_ms"] = ttp
        found = np.array([ttp[s] for s in INDEX_SEGMENTS if ttp[s] is not None])
        if found.size >= MIN_SEGMENTS:
            out[f"sd_ttp_{comp}_ms"] = float(found.std(ddof=1))
        sept = [ttp[s] for s in SEPTAL if ttp[s] is not None]
        lat = [ttp[s] for s in LATERAL if ttp[s] is not None]
        if sept and lat:
            out[f"septal_lateral_delay_{comp}_ms"] = float(np.mean(lat) - np.mean(sept))
        if comp == "circumferential" and found.size >= MIN_SEGMENTS and timed and 0 < es < t.size:
            frame = float(np.median(np.diff(t)))
            out["post_systolic_segments"] = int(np.sum(found > t[es] + frame))
    circ = aha_curves.get("circumferential") or {}
    values = []
    if 0 < es < t.size:
        for ring in RINGS:
            if any(circ.get(s) is None for s in ring):
                continue
            ring_curves = np.stack([np.asarray(circ[s], dtype=np.float64) for s in ring])  # (6, T)
            values += [v for f in range(1, es + 1) if (v := _cure_frame(ring_curves[:, f])) is not None]
    if values:
        out["cure"] = float(np.mean(values))
    return out
