"""Dyssynchrony indices: times to peak, their spread, the septal-lateral delay, post-systolic peaks, CURE."""
from __future__ import annotations

import numpy as np
import pytest

from deepstrain.dyssynchrony import KEYS, dyssynchrony, time_to_peak

DT = 34.0  # ms between frames
T = np.arange(25) * DT
ES = 9  # 306 ms


def _bump(peak_ms: float, amplitude: float = -20.0, width_ms: float = 300.0) -> np.ndarray:
    """A smooth strain curve, 0 at ED, largest magnitude at ``peak_ms``."""
    x = np.clip((T - peak_ms) / width_ms, -1, 1)
    return amplitude * np.cos(np.pi * x / 2) ** 2 * (T > 0)


def _curves(peaks: dict[int, float], default: float = 290.0) -> dict:
    circ = {s: _bump(peaks.get(s, default)) for s in range(1, 17)} | {17: None}
    rad = {s: -2.0 * c for s, c in circ.items() if c is not None} | {17: None}
    return {"circumferential": circ, "radial": rad}


def test_time_to_peak_is_refined_below_the_frame_interval() -> None:
    # frames at 272 and 306 ms; the true peak at 290
    got = time_to_peak(_bump(290.0), T, -1.0)
    assert got == pytest.approx(290.0, abs=3.0)
    assert abs(T[np.argmin(_bump(290.0))] - 290.0) >= 16  # the frame alone is 16-18 ms off
    assert time_to_peak(-_bump(290.0), T, 1.0) == pytest.approx(got)
    # a peak on the last frame is that frame's time; an unusable curve gives None
    assert time_to_peak(np.linspace(0, -10, 25), T, -1.0) == T[-1]
    assert time_to_peak(np.full(25, np.nan), T, -1.0) is None


def test_synchronous_walls() -> None:
    d = dyssynchrony(_curves({}), T, 0, ES)
    assert set(KEYS) <= set(d)
    assert d["sd_ttp_circumferential_ms"] == pytest.approx(0.0, abs=1e-9)
    assert d["septal_lateral_delay_circumferential_ms"] == pytest.approx(0.0, abs=1e-9)
    assert d["sd_ttp_radial_ms"] == pytest.approx(0.0, abs=1e-9)
    assert d["post_systolic_segments"] == 0 and d["cure"] == pytest.approx(1.0)
    assert d["ttp_circumferential_ms"][7] == pytest.approx(290.0, abs=3.0)


def test_late_lateral_wall() -> None:
    lateral = {s: 390.0 for s in (5, 6, 11, 12)}
    d = dyssynchrony(_curves(lateral), T, 0, ES)
    assert d["septal_lateral_delay_circumferential_ms"] == pytest.approx(100.0, abs=4.0)
    assert d["septal_lateral_delay_radial_ms"] == pytest.approx(100.0, abs=4.0)
    ttp = np.array([290.0] * 8 + [390.0] * 4)  # the 12 basal and mid segments
    assert d["sd_ttp_circumferential_ms"] == pytest.approx(ttp.std(ddof=1), abs=2.0)
    assert d["post_systolic_segments"] == 4  # peaks more than one frame after ES (306 ms)
    # the apical segments give their times but do not enter the indices
    apex = dyssynchrony(_curves({s: 600.0 for s in (13, 14, 15, 16)}), T, 0, ES)
    assert apex["ttp_circumferential_ms"][14] == pytest.approx(600.0, abs=3.0)
    assert apex["sd_ttp_circumferential_ms"] == pytest.approx(0.0, abs=1e-9) and apex["post_systolic_segments"] == 0
    assert 0.0 < d["cure"] < 0.999
    # a septum that peaks later gives a negative delay
    assert dyssynchrony(_curves({s: 390.0 for s in (2, 3, 8, 9)}), T, 0, ES)[
        "septal_lateral_delay_circumferential_ms"] == pytest.approx(-100.0, abs=4.0)


def test_cure_of_opposite_walls_is_zero() -> None:
    """Half of each ring shortens while the other half stretches as much: no uniform part, CURE 0."""
    c = _curves({})
    for s in (1, 2, 3, 7, 8, 9):
        c["circumferential"][s] = -c["circumferential"][s]
    assert dyssynchrony(c, T, 0, ES)["cure"] == pytest.approx(0.0, abs=1e-9)


def test_cycle_starting_elsewhere_and_missing_timing() -> None:
    c = _curves({5: 390.0, 6: 390.0})
    ref = dyssynchrony(c, T, 0, ES)
    shift = 7  # the recording starts 7 frames before ED
    rolled = {k: {s: (None if v is None else np.roll(v, shift)) for s, v in segs.items()} for k, segs in c.items()}
    got = dyssynchrony(rolled, T + 1000.0, shift, ES + shift)
    for k in KEYS:
        assert got[k] == pytest.approx(ref[k], abs=1e-9), k
    none = dyssynchrony(c, np.full(25, np.nan), 0, ES)
    assert none["sd_ttp_circumferential_ms"] is None and none["ttp_radial_ms"][1] is None
    assert none["post_systolic_segments"] is None and none["cure"] == pytest.approx(ref["cure"])
    # too few segments for a spread
    few = {k: {s: (v if s <= 5 else None) for s, v in segs.items()} for k, segs in c.items()}
    assert dyssynchrony(few, T, 0, ES)["sd_ttp_radial_ms"] is None
