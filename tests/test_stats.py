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


# ----------------------------------------------------------------------------- paired verdicts and power


def _planted(rng, n, effect, m=5, shared=1.0, own=0.2, member=0.02):
    """Per-item shifts of a principal condition and m control members on the same n items: a per-item
    sensitivity u_i shared by every condition (the noise pairing removes), own noise, a per-member offset."""
    import numpy as np

    u = rng.normal(0, shared, n)
    p = effect + u + rng.normal(0, own, n)
    c = np.stack([rng.normal(0, member) + u + rng.normal(0, own, n) for _ in range(m)])
    return p, c


def test_paired_verdict_detects_a_planted_effect_the_unpaired_one_cannot():
    import numpy as np

    from rwedit.stats import difference, hierarchical_bootstrap, interval, over_members

    rng = np.random.default_rng(1)
    p, c = _planted(rng, n=200, effect=0.12)
    paired = hierarchical_bootstrap(p, c, "signed", n_boot=2000, seed=0)
    unpaired = difference(interval(p.mean(), p.std(ddof=1) / np.sqrt(len(p))), over_members(list(c.mean(axis=1))))
    assert paired.verdict() == "yes" and paired.low > 0.05
    assert unpaired.verdict() == "inconclusive"  # the shared per-item noise swamps it without pairing
    assert paired.estimate == pytest.approx(unpaired.estimate)  # same effect, far smaller interval


def test_a_null_edit_is_detected_about_5_percent_of_the_time():
    import numpy as np

    from rwedit.stats import hierarchical_bootstrap

    rng = np.random.default_rng(7)
    runs, hits = 200, 0
    for s in range(runs):
        p, c = _planted(rng, n=60, effect=0.0, member=0.0)
        hits += hierarchical_bootstrap(p, c, "signed", n_boot=500, seed=s).verdict() != "inconclusive"
    assert hits / runs <= 0.10  # nominal 5%; 200 runs give a binomial sd of 1.5%


def test_paired_interval_matches_the_closed_form_of_the_stored_items():
    """One control member: the paired bootstrap is the paired mean difference with se sd(d)/√n; several:
    se² ≈ s_d²/n + s_members²/m. Both recomputed here with numpy from the per-item values."""
    import numpy as np

    from rwedit.stats import hierarchical_bootstrap

    rng = np.random.default_rng(3)
    p, c = _planted(rng, n=2000, effect=0.05, m=1)
    d = p - c[0]
    iv = hierarchical_bootstrap(p, c, "signed", n_boot=4000, seed=1)
    assert iv.estimate == pytest.approx(d.mean())
    half = 1.959964 * d.std(ddof=1) / np.sqrt(len(d))
    assert (iv.high - iv.low) / 2 == pytest.approx(half, rel=0.08)
    assert iv.se == pytest.approx(d.std(ddof=1) / np.sqrt(len(d)), rel=0.08)
    p, c = _planted(rng, n=2000, effect=0.05, m=8, member=0.05)
    iv = hierarchical_bootstrap(p, c, "signed", n_boot=4000, seed=2)
    dd = p - c.mean(axis=0)
    se = np.sqrt(dd.var(ddof=1) / len(dd) + c.mean(axis=1).var(ddof=1) / c.shape[0])
    assert iv.estimate == pytest.approx(p.mean() - c.mean(axis=1).mean())
    assert iv.se == pytest.approx(se, rel=0.2)


def test_minimum_detectable_effect_and_items_needed_follow_the_textbook_formula():
    from statistics import NormalDist

    from rwedit.stats import items_to_detect, mde

    z = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.80)
    assert mde(0.7, 128) == pytest.approx(z * 0.7 / math.sqrt(128))
    assert items_to_detect(0.1, 0.7) == math.ceil((z * 0.7 / 0.1) ** 2)
    assert mde(0.7, items_to_detect(0.1, 0.7)) <= 0.1 < mde(0.7, items_to_detect(0.1, 0.7) - 1)
    assert math.isinf(items_to_detect(0.0, 1.0)) and math.isnan(mde(1.0, 1))


def _units(rng, n, mu, tau, U=8, m=4, groups=2, shared=1.0, own=0.3):
    """U replicate units (true effects mu + N(0, tau²)) in ``groups`` control groups of m members each, every
    condition on the same n items with a shared per-item sensitivity."""
    import numpy as np

    u = rng.normal(0, shared, n)
    effects = mu + rng.normal(0, tau, U)
    P = np.stack([e + u + rng.normal(0, own, n) for e in effects])
    Cs = [np.stack([u + rng.normal(0, own, n) for _ in range(m)]) for _ in range(groups)]
    return P, Cs, np.arange(U) % groups, effects


def test_pooled_estimate_is_the_mean_of_the_unit_effects_recomputed_with_numpy():
    import numpy as np

    from rwedit.stats import hierarchical_bootstrap, pooled_bootstrap

    rng = np.random.default_rng(11)
    P, Cs, g, _ = _units(rng, 50, 0.2, 0.1)
    for stat, f in (("signed", lambda x: x), ("magnitude", np.abs)):
        units = [f(P[u].mean()) - f(Cs[g[u]].mean(axis=1)).mean() for u in range(len(P))]
        iv = pooled_bootstrap(P, Cs, g, stat, n_boot=300)
        assert iv.estimate == pytest.approx(np.mean(units))
        one = pooled_bootstrap(P[:1], Cs[:1], None, stat, n_boot=300, seed=4)
        assert one.estimate == pytest.approx(units[0])
        h = hierarchical_bootstrap(P[0], Cs[0], stat, n_boot=300, seed=4)
        assert (one.low, one.high, one.se) == (h.low, h.high, h.se)


def test_pooled_interval_covers_the_mean_effect_of_heterogeneous_units():
    """Units whose true effects differ (tau > 0): the interval resampling units covers the mean effect at
    about the nominal rate; an interval that held the units fixed (items and members only) would not."""
    import numpy as np

    from rwedit.stats import pooled_bootstrap

    rng = np.random.default_rng(5)
    cover = 0
    runs = 80
    for s in range(runs):
        P, Cs, g, effects = _units(rng, 400, 0.3, 0.25, U=8)
        iv = pooled_bootstrap(P, Cs, g, "signed", n_boot=600, seed=s)
        cover += iv.low <= 0.3 <= iv.high
    assert cover / runs >= 0.85  # nominal 95%; holding the units fixed covers ~20% here (measured)


def test_replicate_units_detect_more_often_than_one_unit():
    """Eight units with the same planted effect: the pooled verdict detects it in most simulations, one unit
    alone in about half (the shared control members limit the gain; pooling shrinks the units' own noise)."""
    import numpy as np

    from rwedit.stats import hierarchical_bootstrap, pooled_bootstrap

    rng = np.random.default_rng(0)
    runs, single, pooled = 30, 0, 0
    for s in range(runs):
        P, Cs, g, _ = _units(rng, 60, 0.12, 0.0, U=8, own=0.4)
        single += hierarchical_bootstrap(P[0], Cs[0], "signed", n_boot=400, seed=s).verdict() == "yes"
        pooled += pooled_bootstrap(P, Cs, g, "signed", n_boot=400, seed=s).verdict() == "yes"
    assert pooled / runs >= 0.75 and pooled - single >= 0.2 * runs
