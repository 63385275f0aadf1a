"""Agreement and repeatability statistics for paired measurements (method A vs method B).

Conventions:

* A difference is always ``B - A`` (the second method minus the first).
* Bland-Altman (Bland & Altman, Lancet 1986): ``bias`` = mean difference, ``sd`` = sample SD of the
  differences (n - 1), 95 % limits of agreement ``bias -/+ multiplier * sd`` (multiplier 1.96 by
  default; the 1986 paper used 2).
* ICC(A,1) of McGraw & Wong (1996), which is ICC(2,1) of Shrout & Fleiss (1979): two-way random
  effects, absolute agreement, single measurement, from the two-way ANOVA mean squares, with the
  approximate-F 95 % confidence interval of McGraw & Wong (1996), Table 7 (case 2A).
* Relative change of a pair, in %: ``100 * (B - A) / ((A + B) / 2)``; the report gives its mean
  (``relative_change_percent``) and the mean of its absolute value (``abs_relative_change_percent``).
  Pairs whose mean ``(A + B) / 2`` is zero are left out of these two numbers.

Missing values (NaN) are dropped pairwise before any computation.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as _st

RELATIVE_CHANGE_FORMULA = "100 * (B - A) / ((A + B) / 2), averaged over pairs (abs: mean of its absolute value)"


def _pairs(a: np.ndarray | list, b: np.ndarray | list) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    b = np.asarray(b, dtype=np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired measurements need the same length, got {a.size} and {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


@dataclass(frozen=True)
class BlandAltman:
    """Bland-Altman agreement of B against A (units of the measurement)."""

    n: int
    bias: float
    sd: float
    loa_low: float
    loa_high: float
    multiplier: float

    def as_dict(self) -> dict:
        return asdict(self)


def bland_altman(a, b, multiplier: float = 1.96) -> BlandAltman:
    """Mean difference ``B - A``, its SD (ddof 1) and the limits ``bias -/+ multiplier * SD``."""
    a, b = _pairs(a, b)
    n = int(a.size)
    if n < 2:
        nan = float("nan")
        return BlandAltman(n, float(np.mean(b - a)) if n else nan, nan, nan, nan, multiplier)
    d = b - a
    bias = float(d.mean())
    sd = float(d.std(ddof=1))
    return BlandAltman(n, bias, sd, bias - multiplier * sd, bias + multiplier * sd, multiplier)


@dataclass(frozen=True)
class ICC:
    """ICC(A,1) with its confidence interval and the ANOVA mean squares it came from."""

    n: int
    k: int
    icc: float
    ci_low: float
    ci_high: float
    ms_rows: float
    ms_cols: float
    ms_error: float
    confidence: float

    def as_dict(self) -> dict:
        return asdict(self)


def icc_a1(ratings, confidence: float = 0.95) -> ICC:
    """ICC(A,1) = ICC(2,1) of an ``(n targets, k raters)`` table (rows with any NaN are dropped).

    ``ICC = (MSR - MSE) / (MSR + (k - 1) MSE + k (MSC - MSE) / n)`` with MSR, MSC, MSE the row
    (target), column (rater) and residual mean squares. Confidence interval: McGraw & Wong (1996),
    with ``a = k ICC / (n (1 - ICC))``, ``b = 1 + k ICC (n - 1) / (n (1 - ICC))``, Satterthwaite
    degrees of freedom ``v = (a MSC + b MSE)^2 / ((a MSC)^2 / (k - 1) + (b MSE)^2 / ((n - 1)(k - 1)))``,
    ``F_L = F_{1-alpha/2}(n - 1, v)``, ``F_U = F_{1-alpha/2}(v, n - 1)`` and
    ``low = n (MSR - F_L MSE) / (F_L (k MSC + (k n - k - n) MSE) + n MSR)``,
    ``high = n (F_U MSR - MSE) / (k MSC + (k n - k - n) MSE + n F_U MSR)``. The interval is NaN
    when ICC is 1 (perfect agreement) or undefined (fewer than 2 complete rows, or all values equal).
    """
    x = np.asarray(ratings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"ratings must be a 2-D (targets, raters) table, got shape {x.shape}")
    x = x[np.all(np.isfinite(x), axis=1)]
    n, k = x.shape
    nan = float("nan")
    if n < 2 or k < 2:
        return ICC(int(n), int(k), nan, nan, nan, nan, nan, nan, confidence)
    grand = x.mean()
    rows = x.mean(axis=1)
    cols = x.mean(axis=0)
    msr = k * float(((rows - grand) ** 2).sum()) / (n - 1)
    msc = n * float(((cols - grand) ** 2).sum()) / (k - 1)
    resid = x - rows[:, None] - cols[None, :] + grand
    mse = float((resid**2).sum()) / ((n - 1) * (k - 1))
    denom = msr + (k - 1) * mse + k * (msc - mse) / n
    if denom == 0:  # every value identical: agreement is undefined, not perfect
        return ICC(int(n), int(k), nan, nan, nan, msr, msc, mse, confidence)
    icc = (msr - mse) / denom
    lo = hi = nan
    if icc < 1:  # at ICC = 1 the interval is undefined (NaN); MSE = 0 with ICC < 1 gives v = k - 1
        alpha = 1 - confidence
        a = k * icc / (n * (1 - icc))
        b = 1 + k * icc * (n - 1) / (n * (1 - icc))
        num = (a * msc + b * mse) ** 2
        den = (a * msc) ** 2 / (k - 1) + (b * mse) ** 2 / ((n - 1) * (k - 1))
        v = min(num / den, 1e12) if den > 0 else 1e12  # no residual and no rater variance: v -> infinity
        f_l = float(_st.f.ppf(1 - alpha / 2, n - 1, v))  # (scipy gives NaN for an infinite v; 1e12 is its limit)
        f_u = float(_st.f.ppf(1 - alpha / 2, v, n - 1))
        c = k * msc + (k * n - k - n) * mse
        lo = n * (msr - f_l * mse) / (f_l * c + n * msr)
        hi = n * (f_u * msr - mse) / (c + n * f_u * msr)
    return ICC(int(n), int(k), float(icc), float(lo), float(hi), msr, msc, mse, confidence)


def relative_change(a, b) -> tuple[float, float, int]:
    """Mean relative change and mean absolute relative change of B vs A in %, and the pair count.

    Per pair ``100 * (B - A) / ((A + B) / 2)``; pairs with ``A + B == 0`` are left out.
    """
    a, b = _pairs(a, b)
    m = (a + b) / 2
    keep = m != 0
    if not np.any(keep):
        return float("nan"), float("nan"), 0
    r = 100.0 * (b[keep] - a[keep]) / m[keep]
    return float(r.mean()), float(np.abs(r).mean()), int(r.size)


def agreement(a, b, multiplier: float = 1.96, confidence: float = 0.95) -> dict:
    """Everything for one metric: Bland-Altman, ICC(A,1) with CI, relative changes, both means."""
    a, b = _pairs(a, b)
    ba = bland_altman(a, b, multiplier)
    icc = icc_a1(np.stack([a, b], axis=1), confidence) if a.size else icc_a1(np.zeros((0, 2)))
    rel, abs_rel, _ = relative_change(a, b)
    return {
        "n": ba.n,
        "mean_a": float(a.mean()) if a.size else float("nan"),
        "mean_b": float(b.mean()) if b.size else float("nan"),
        "bias": ba.bias,
        "sd_diff": ba.sd,
        "loa_low": ba.loa_low,
        "loa_high": ba.loa_high,
        "icc": icc.icc,
        "icc_ci_low": icc.ci_low,
        "icc_ci_high": icc.ci_high,
        "relative_change_percent": rel,
        "abs_relative_change_percent": abs_rel,
    }
