"""Agreement statistics checked against published worked examples."""
from __future__ import annotations

import numpy as np
import pytest

from deepstrain import stats

# Shrout PE, Fleiss JL (1979). Intraclass correlations: uses in assessing rater reliability.
# Psychological Bulletin 86(2):420-428, Table 2: 6 targets rated by 4 judges.
# Published (Table 3 mean squares, Table 4 ICCs): BMS 11.24, JMS 32.49, EMS 1.02, ICC(2,1) .29.
SHROUT_FLEISS = np.array(
    [[9, 2, 5, 8],
     [6, 1, 3, 2],
     [8, 4, 6, 8],
     [7, 1, 2, 6],
     [10, 5, 6, 9],
     [6, 2, 4, 7]], dtype=float)  # fmt: skip
# 95 % CI of ICC(2,1) on these data with the McGraw & Wong (1996) / Shrout & Fleiss approximate-F
# interval, as printed in the documented output of the R package psych, ICC() on this table
# (Revelle, psych; "Single_random_raters ICC2 0.29 ... lower bound 0.019, upper bound 0.76").
SF_CI = (0.019, 0.76)

# Bland JM, Altman DG (1986). Statistical methods for assessing agreement between two methods of
# clinical measurement. Lancet 327(8476):307-310, Table 1: PEFR (l/min), first reading with the
# Wright and with the mini Wright peak flow meter, 17 subjects. Published: mean difference -2.1 l/min,
# SD of differences 38.8 l/min, limits of agreement (mean -/+ 2 SD) -79.7 to 75.5 l/min.
WRIGHT = [494, 395, 516, 434, 476, 557, 413, 442, 650, 433, 417, 656, 267, 478, 178, 423, 427]
MINI = [512, 430, 520, 428, 500, 600, 364, 380, 658, 445, 432, 626, 260, 477, 259, 350, 451]


def test_icc_a1_reproduces_shrout_fleiss() -> None:
    r = stats.icc_a1(SHROUT_FLEISS)
    assert (r.n, r.k) == (6, 4)
    assert round(r.ms_rows, 2) == 11.24
    assert round(r.ms_cols, 2) == 32.49
    assert round(r.ms_error, 2) == 1.02
    assert round(r.icc, 2) == 0.29
    assert round(r.ci_low, 3) == SF_CI[0]
    assert round(r.ci_high, 2) == SF_CI[1]


def test_icc_a1_basic_properties() -> None:
    rng = np.random.default_rng(3)
    truth = rng.normal(0, 10, 40)
    a = truth + rng.normal(0, 1, 40)
    b = truth + rng.normal(0, 1, 40)
    good = stats.icc_a1(np.stack([a, b], 1))
    assert 0.95 < good.icc < 1 and good.ci_low < good.icc < good.ci_high
    # A constant offset between raters lowers absolute agreement.
    shifted = stats.icc_a1(np.stack([a, b + 15], 1))
    assert shifted.icc < good.icc - 0.2
    # Rows with a missing value are dropped, not treated as zeros.
    with_nan = np.stack([np.append(a, np.nan), np.append(b, 3.0)], 1)
    assert stats.icc_a1(with_nan).icc == pytest.approx(good.icc)


def test_bland_altman_reproduces_the_lancet_example() -> None:
    r = stats.bland_altman(MINI, WRIGHT, multiplier=2)  # difference Wright - mini Wright
    assert r.n == 17
    assert round(r.bias, 1) == -2.1
    assert round(r.sd, 1) == 38.8
    # The paper's limits are -2.1 -/+ 2 x 38.8 from the rounded numbers; unrounded they are
    # -79.65 and 75.41, within 0.1 of the printed -79.7 and 75.5.
    assert r.loa_low == pytest.approx(-79.7, abs=0.1)
    assert r.loa_high == pytest.approx(75.5, abs=0.1)
    # Exact values of the table (mean -36/17), and the 1.96 default.
    assert r.bias == pytest.approx(-36 / 17, abs=1e-12)
    r196 = stats.bland_altman(MINI, WRIGHT)
    assert r196.loa_low == pytest.approx(r196.bias - 1.96 * r196.sd)


def test_relative_change_formula() -> None:
    rel, abs_rel, n = stats.relative_change([10, 20, 0, np.nan], [12, 18, 0, 5])
    # pairs: (10,12) -> +18.18 %, (20,18) -> -10.53 %; (0,0) has zero mean; NaN pair dropped
    assert n == 2
    assert rel == pytest.approx((200 / 11 - 200 / 19) / 2)
    assert abs_rel == pytest.approx((200 / 11 + 200 / 19) / 2)


def test_agreement_combines_everything() -> None:
    out = stats.agreement(MINI, WRIGHT)
    assert out["n"] == 17 and out["bias"] == pytest.approx(-36 / 17)
    assert out["icc"] == pytest.approx(stats.icc_a1(np.stack([MINI, WRIGHT], 1)).icc)
    assert np.isfinite(out["icc_ci_low"]) and out["icc_ci_low"] < out["icc"] < out["icc_ci_high"]
    with pytest.raises(ValueError):
        stats.bland_altman([1, 2], [1, 2, 3])



def test_icc_interval_with_an_exactly_constant_offset() -> None:
    """MSE = 0 and ICC < 1: the McGraw & Wong interval is finite (v = k - 1); ICC = 1 has none."""
    a = np.array([1.0, 2.0, 3.0])
    r = stats.icc_a1(np.c_[a, a + 1])
    assert r.icc == pytest.approx(2 / 3) and r.ms_error == 0
    assert r.ci_low == pytest.approx(0.0025, abs=1e-4) and r.ci_high == pytest.approx(0.9872, abs=1e-4)
    same = stats.icc_a1(np.c_[a, a])
    assert same.icc == 1 and np.isnan(same.ci_low) and np.isnan(same.ci_high)
    flat = stats.icc_a1([[1, 2], [1, 2], [1, 2]])  # no target variance, no residual: v is infinite
    assert flat.icc == 0 and (flat.ci_low, flat.ci_high) == pytest.approx((0.0, 0.0))
