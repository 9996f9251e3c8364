"""rwedit.stats against independent derivations: textbook and closed-form t quantiles, numpy means and
standard errors, both group formulas written out by hand, the verdict rule at its edges, and the
coverage of the 95% interval over seeded normal samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rwedit.stats import Interval, combined_se, difference, interval, mean_se, over_members, quantile, verdict

#: two-sided 95% Student-t quantiles for 1..30 degrees of freedom, as printed in textbook tables (3 decimals)
TEXTBOOK_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
                 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
                 2.045, 2.042)
Z975 = 1.959963984540054


def test_quantile_matches_textbook_values():
    assert quantile(1) == pytest.approx(12.706, abs=1e-3)
    assert quantile(10) == pytest.approx(2.228, abs=1e-3)
    assert quantile(30) == pytest.approx(2.042, abs=1e-3)
    assert quantile() == pytest.approx(1.95996, abs=1e-3) and quantile(None) == pytest.approx(Z975, abs=1e-9)
    assert quantile(math.inf) == quantile(None)
    for df, t in enumerate(TEXTBOOK_T975, start=1):  # the table is rounded to 3 decimals
        assert quantile(df) == pytest.approx(t, abs=6e-4), df


def test_quantile_closed_forms_and_large_df():
    p = 0.975
    assert quantile(1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-10)  # Cauchy
    assert quantile(2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
    # beyond the table: the Cornish–Fisher expansion around the normal quantile (error < 1e-4 from 31 on)
    z = Z975
    for df in (31, 40, 60, 120, 1000):
        cf = z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
        assert quantile(df) == pytest.approx(cf, abs=1e-4), df
    qs = [quantile(df) for df in range(1, 200)]
    assert all(a > b for a, b in zip(qs, qs[1:])) and qs[-1] > z
    assert quantile(None, level=0.9) == pytest.approx(1.6448536, abs=1e-6)
    assert math.isnan(quantile(0)) and math.isnan(quantile(0.5))


def test_mean_se_against_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 2.0, size=17)
    want = (x.mean(), np.std(x, ddof=1) / math.sqrt(len(x)))
    assert mean_se(x.tolist()) == pytest.approx(want, rel=1e-12)
    assert mean_se(torch.tensor(x, dtype=torch.float32)) == pytest.approx(want, rel=1e-6)
    assert mean_se(torch.tensor(x)) == pytest.approx(want, rel=1e-12)


def test_combined_se_is_the_root_sum_of_squares():
    assert combined_se(3.0, 4.0) == pytest.approx(5.0)
    assert combined_se(1.0, 2.0, 2.0) == pytest.approx(3.0)
    assert combined_se(0.5, None) is None and combined_se(float("nan"), 1.0) is None


def test_over_members_sample_of_directions_against_numpy():
    x = np.array([0.3, -0.1, 0.45, 0.2, 0.05])
    iv = over_members(x.tolist())
    se = np.std(x, ddof=1) / math.sqrt(len(x))
    assert (iv.estimate, iv.se, iv.df, iv.n) == (pytest.approx(x.mean()), pytest.approx(se), 4, 5)
    assert iv.low == pytest.approx(x.mean() - 2.776445 * se, rel=1e-6)
    assert iv.high == pytest.approx(x.mean() + 2.776445 * se, rel=1e-6)
    assert iv.how == "t over 5 members"


def test_over_members_one_construction_adds_the_evaluation_noise():
    x = np.array([-0.5, -0.49, -0.51])
    ses = np.array([0.02, 0.03, 0.025])
    iv = over_members(x.tolist(), ses.tolist())
    se = math.sqrt(np.var(x, ddof=1) / len(x) + np.mean(ses ** 2))
    assert iv.se == pytest.approx(se) and iv.df == 2 and "evaluation noise" in iv.how
    assert iv.high == pytest.approx(x.mean() + 4.302653 * se, rel=1e-6)
    # a member without its stderr: the spread over members alone
    assert over_members(x.tolist(), [0.02, None, 0.025]).se == pytest.approx(np.std(x, ddof=1) / math.sqrt(3))


def test_one_member_keeps_its_own_stderr_and_no_member_is_an_error():
    one = over_members([0.7], [0.1])
    assert (one.estimate, one.se, one.df) == (0.7, 0.1, None)
    assert one.low == pytest.approx(0.7 - Z975 * 0.1)
    bare = over_members([0.7])
    assert bare.se is None and math.isnan(bare.low) and bare.verdict() == "inconclusive"
    with pytest.raises(ValueError):
        over_members([])


def test_interval_uses_the_normal_quantile_unless_given_dof():
    iv = interval(1.0, 0.5)
    assert (iv.low, iv.high) == (pytest.approx(1.0 - Z975 * 0.5), pytest.approx(1.0 + Z975 * 0.5))
    assert interval(1.0, 0.5, df=10).high == pytest.approx(1.0 + 2.228139 * 0.5, rel=1e-6)
    assert math.isnan(interval(1.0, float("nan")).high)


def test_difference_se_is_hypot_and_df_the_smaller():
    a, b = Interval(2.0, 0.3, df=9, n=10), Interval(0.5, 0.4, df=4, n=5)
    d = difference(a, b)
    assert d.estimate == pytest.approx(1.5) and d.se == pytest.approx(math.hypot(0.3, 0.4))
    assert d.df == 4 and d.n == 5
    assert difference(a, interval(0.0, 0.1)).df == 9
    single = difference(interval(1.0, 0.3), interval(0.2, 0.4))
    assert single.df is None and single.se == pytest.approx(0.5) and single.q == pytest.approx(Z975)
    assert difference(a, interval(0.0, None)).se is None


def test_verdict_edges():
    assert verdict(0.1, 0.5) == "yes" and verdict(-0.5, -0.1) == "no" and verdict(-0.1, 0.1) == "inconclusive"
    assert verdict(0.0, 0.5) == "inconclusive" and verdict(-0.5, 0.0) == "inconclusive"  # touching the threshold
    assert verdict(-0.05, 0.5, threshold=-0.1) == "yes" and verdict(-0.5, -0.2, threshold=-0.1) == "no"
    nan = float("nan")
    assert verdict(nan, nan) == "inconclusive" and verdict(nan, 1.0) == "inconclusive"
    assert verdict(-1.0, nan) == "inconclusive"
    assert interval(1.0, 0.1).verdict() == "yes" and interval(-1.0, 0.1).verdict() == "no"
    assert interval(1.0, 0.1).verdict(threshold=1.5) == "no" and interval(1.0, None).verdict() == "inconclusive"


def test_the_95_percent_interval_over_five_members_covers_the_mean():
    rng = np.random.default_rng(20240601)
    mu, trials = 1.7, 4000
    samples = rng.normal(mu, 2.5, size=(trials, 5))
    hits = 0
    for x in samples:
        iv = over_members(x.tolist())
        hits += iv.low <= mu <= iv.high
    assert abs(hits / trials - 0.95) < 0.015, hits / trials
    # the normal quantile instead of t would undercover badly at n = 5 (about 88%)
    se = samples.std(axis=1, ddof=1) / math.sqrt(5)
    z_cover = np.mean(np.abs(samples.mean(axis=1) - mu) <= Z975 * se)
    assert z_cover < 0.91
