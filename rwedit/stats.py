"""The one statistics module: means with standard errors, 95% intervals, differences and verdicts (quantiles
from ``scipy.stats``: Student t over n members with n − 1 degrees of freedom, the normal for one measurement).

A group of conditions has one of two standard errors (:func:`over_members`): *a sample of directions* (the
control experiment's random controls: is the edit beyond their distribution?) takes the spread ``s/√n``, which
already holds each member's evaluation noise; *one construction measured several times* (the SVD experiment's
seeded disruptions, scored on the same items) adds the noise the seeds share: ``√(s²/n + mean(se_i²))``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

LEVEL = 0.95


def quantile(df: float | None = None, level: float = LEVEL) -> float:
    """Two-sided quantile at ``level``: Student t with ``df`` degrees of freedom, the normal when ``df`` is
    None or infinite; NaN when ``df < 1`` (no interval from one member)."""
    from scipy import stats

    p = 0.5 + level / 2
    if df is None or math.isinf(df):
        return float(stats.norm.ppf(p))
    if df < 1:
        return math.nan
    return float(stats.t.ppf(p, df))


def mean_se(x) -> tuple[float, float]:
    """Mean and its standard error (sd with ddof = 1 over √n) of a tensor or a sequence of numbers."""
    import torch

    t = x.double() if isinstance(x, torch.Tensor) else torch.as_tensor(list(x), dtype=torch.float64)
    return float(t.mean()), float(t.std(correction=1) / math.sqrt(t.numel()))


def combined_se(*ses: float | None) -> float | None:
    """√(Σ se²) of independent estimates (None when any is unknown)."""
    if any(s is None or (isinstance(s, float) and math.isnan(s)) for s in ses):
        return None
    return math.sqrt(sum(s * s for s in ses))


@dataclass(frozen=True)
class Interval:
    """An estimate with its standard error and a two-sided interval (t with ``df``, else normal)."""

    estimate: float
    se: float | None
    df: float | None = None
    n: int = 1
    how: str = ""
    level: float = LEVEL

    @property
    def q(self) -> float:
        return quantile(self.df, self.level)

    @property
    def half(self) -> float:
        return math.nan if self.se is None or math.isnan(self.se) else self.q * self.se

    @property
    def low(self) -> float:
        return self.estimate - self.half

    @property
    def high(self) -> float:
        return self.estimate + self.half

    def verdict(self, threshold: float = 0.0) -> str:
        """``yes`` when the whole interval lies above ``threshold``, ``no`` below it, else ``inconclusive``."""
        return verdict(self.low, self.high, threshold)

    def text(self, digits: int = 3) -> str:
        """``mean [low, high]`` for reports."""
        return f"{self.estimate:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"


def interval(estimate: float, se: float | None, df: float | None = None, how: str = "") -> Interval:
    """A single estimate with its standard error (normal quantile unless ``df`` is given)."""
    return Interval(float(estimate), None if se is None else float(se), df, 1, how or "±z·stderr")


def over_members(values: Sequence[float], ses: Sequence[float | None] | None = None) -> Interval:
    """Mean over a group's members with a t interval on n − 1 degrees of freedom; one member keeps its own
    stderr (normal quantile). ``ses`` given (none None): the members' shared evaluation noise is added,
    ``√(s²/n + mean(se²))`` (the module docstring says when each applies)."""
    n = len(values)
    if n == 0:
        raise ValueError("no members to summarise")
    mean = sum(values) / n
    if n == 1:
        return interval(mean, None if ses is None else ses[0])
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    if ses is not None and all(s is not None and not math.isnan(s) for s in ses):
        se = math.sqrt(sd ** 2 / n + sum(s * s for s in ses) / n)
        how = f"t over {n} members + evaluation noise"
    else:
        se = sd / math.sqrt(n)
        how = f"t over {n} members"
    return Interval(mean, se, n - 1, n, how)


def difference(a: Interval, b: Interval) -> Interval:
    """``a − b`` of two independent estimates: √(se_a² + se_b²), with the smaller of their t degrees of
    freedom (normal when both are single measurements)."""
    dfs = [d for d in (a.df, b.df) if d is not None]
    return Interval(a.estimate - b.estimate, combined_se(a.se, b.se), min(dfs) if dfs else None,
                    min(a.n, b.n), "unpaired difference")


def paired_ratio(num, den) -> Interval:
    """``mean(num) / mean(den)`` of per-item values scored on the same items (e.g. the share of a behavioural
    shift a part of an update keeps), with the delta-method standard error of a ratio of paired means:
    ``sd(num − R·den) / (√n·|mean(den)|)``, t on n − 1 degrees of freedom; NaN when ``mean(den)`` is 0."""
    import torch

    x, y = (torch.as_tensor(list(v) if not isinstance(v, torch.Tensor) else v, dtype=torch.float64)
            for v in (num, den))
    n, d = x.numel(), float(y.mean())
    if n != y.numel() or n < 2:
        raise ValueError(f"need per-item values of numerator and denominator on the same n >= 2 items; got "
                         f"{n} and {y.numel()}")
    if d == 0:
        return Interval(math.nan, math.nan, n - 1, n, "paired ratio (zero denominator)")
    r = float(x.mean()) / d
    return Interval(r, float((x - r * y).std(correction=1)) / (math.sqrt(n) * abs(d)), n - 1, n,
                    "paired ratio, delta method")


POWER = 0.80


def mde(sd: float, n: int, level: float = LEVEL, power: float = POWER) -> float:
    """Minimum detectable effect of a mean over ``n`` items with per-item sd ``sd``: the true effect a
    two-sided test at ``1 − level`` detects with probability ``power``, (z_{1−α/2} + z_power)·sd/√n."""
    from scipy import stats

    if n < 2 or not math.isfinite(sd):
        return math.nan
    return (quantile(None, level) + float(stats.norm.ppf(power))) * sd / math.sqrt(n)


def items_to_detect(effect: float, sd: float, level: float = LEVEL, power: float = POWER) -> float:
    """Items a paired mean needs for ``effect`` to be detected with probability ``power``: the n at which
    :func:`mde` equals |effect| (inf for a zero effect)."""
    from scipy import stats

    if not math.isfinite(sd) or not math.isfinite(effect):
        return math.nan
    if effect == 0:
        return math.inf
    z = quantile(None, level) + float(stats.norm.ppf(power))
    return float(math.ceil((z * sd / abs(effect)) ** 2))


def hierarchical_bootstrap(principal, controls, statistic: str = "signed", n_boot: int = 2000, seed: int = 0,
                           level: float = LEVEL) -> Interval:
    """Paired comparison of a condition with a group of control members scored on the same items.

    ``principal``: per-item values (n,); ``controls``: per-item values of each member (m, n). The effect is
    ``mean_i p_i − mean_j mean_i c_ji`` (``signed``) or ``|mean_i p_i| − mean_j |mean_i c_ji|``
    (``magnitude``). The interval resamples members (with replacement) and, independently, items (the same
    items for the condition and every member, which keeps the pairing) ``n_boot`` times; its percentile
    bounds are returned with the bootstrap sd as ``se``. (One replicate unit of :func:`pooled_bootstrap`.)"""
    import numpy as np

    return pooled_bootstrap(np.asarray(principal, dtype=np.float64)[None, :], [controls], None, statistic, n_boot,
                            seed, level)


def pooled_bootstrap(units, controls, groups=None, statistic: str = "signed", n_boot: int = 2000, seed: int = 0,
                     level: float = LEVEL) -> Interval:
    """The pooled paired effect of U replicate units (e.g. principal directions × layers), each compared with
    its own group of control members, every condition scored on the same n items.

    ``units``: per-item values (U, n); ``controls``: one (m_g, n) array of member values per control group;
    ``groups``: the control group of each unit (length U; default all 0). A unit's effect is the statistic of
    :func:`hierarchical_bootstrap` against its group; the pooled effect is their mean over units. The
    interval resamples items (one draw shared by every condition: the pairing, and the correlation between
    units scored on the same items, are kept), the members of each control group (one draw per group, shared
    by the units that use it) and the units (the between-unit spread: a random-effects interval), ``n_boot``
    times; percentile bounds, bootstrap sd as ``se``."""
    import numpy as np

    P = np.atleast_2d(np.asarray(units, dtype=np.float64))
    Cs = [np.atleast_2d(np.asarray(c, dtype=np.float64)) for c in controls]
    U, n = P.shape
    g = np.zeros(U, dtype=int) if groups is None else np.asarray(groups, dtype=int)
    if n < 2 or not Cs or any(c.shape[1] != n or c.shape[0] < 1 for c in Cs):
        raise ValueError(f"need per-item values of each unit (U, n) and of control members (m, n) on the same "
                         f"n >= 2 items; got {P.shape} and {[c.shape for c in Cs]}")
    if g.shape != (U,) or g.min() < 0 or g.max() >= len(Cs):
        raise ValueError(f"groups must give each of the {U} units a control group in 0..{len(Cs) - 1}")
    if statistic not in ("signed", "magnitude"):
        raise ValueError(f"statistic must be signed or magnitude, not {statistic!r}")
    f = (lambda x: x) if statistic == "signed" else np.abs

    def effect(pm, cms):  # pm: (B, U) unit means; cms[g]: (B, m_g) member means of group g -> (B, U)
        cstat = np.stack([f(cm).mean(axis=1) for cm in cms], axis=1)  # (B, G)
        return f(pm) - cstat[:, g]

    est = float(effect(P.mean(axis=1)[None], [c.mean(axis=1)[None] for c in Cs]).mean())
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n, size=(n_boot, n))
    members = [rng.integers(0, c.shape[0], size=(n_boot, c.shape[0])) if c.shape[0] > 1
               else np.zeros((n_boot, 1), dtype=int) for c in Cs]
    pick = rng.integers(0, U, size=(n_boot, U)) if U > 1 else np.zeros((n_boot, 1), dtype=int)
    # every condition's mean over each bootstrap's items, via the item counts: (B, n) @ (n, ·)
    counts = np.zeros((n_boot, n))
    np.add.at(counts, (np.repeat(np.arange(n_boot), n), items.ravel()), 1.0)
    pm = counts @ P.T / n
    cms = [np.take_along_axis(counts @ c.T / n, mem, axis=1) for c, mem in zip(Cs, members)]
    boot = np.take_along_axis(effect(pm, cms), pick, axis=1).mean(axis=1)
    a = (1 - level) / 2
    low, high = np.quantile(boot, [a, 1 - a])
    m = sorted({c.shape[0] for c in Cs})
    how = (f"paired {statistic}, hierarchical bootstrap over {n} items"
           + (f", {'/'.join(map(str, m))} members" if max(m) > 1 else "")
           + (f" and {U} units" if U > 1 else "") + f" ({n_boot} resamples, seed {seed})")
    return BootInterval(est, float(boot.std(ddof=1)), None, n, how, level, float(low), float(high))


@dataclass(frozen=True)
class BootInterval(Interval):
    """An :class:`Interval` whose bounds are bootstrap percentiles rather than ± quantile·se."""

    boot_low: float = math.nan
    boot_high: float = math.nan

    @property
    def low(self) -> float:
        return self.boot_low

    @property
    def high(self) -> float:
        return self.boot_high


@dataclass(frozen=True)
class NullInterval(Interval):
    """Where one more draw of a null lands, from K draws of it (e.g. seeds of a random update): ``estimate``
    their mean, ``sd`` their sd, ``low``/``high`` the prediction interval mean ± t_{K−1}·sd·√(1 + 1/K) (a normal
    null: a draw falls outside it with probability 1 − level)."""

    sd: float = math.nan

    def z(self, x: float) -> float:
        """(x − mean) / sd of the draws (±inf for a null without spread that x misses, NaN when x hits it)."""
        d = x - self.estimate
        return d / self.sd if self.sd > 0 else (math.nan if d == 0 else math.copysign(math.inf, d))

    def outside(self, x: float, side: str = "either") -> bool:
        """Whether x lies beyond the interval: ``below`` it, ``above`` it, or on ``either`` side."""
        if side not in ("below", "above", "either"):
            raise ValueError(f"side must be below, above or either, not {side!r}")
        return (side != "above" and x < self.low) or (side != "below" and x > self.high)


def null_interval(draws: Sequence[float], level: float = LEVEL) -> NullInterval:
    """The :class:`NullInterval` of K >= 2 draws of a null statistic (NaN bounds for fewer)."""
    k = len(draws)
    mean = sum(draws) / k if k else math.nan
    sd = math.sqrt(sum((d - mean) ** 2 for d in draws) / (k - 1)) if k > 1 else math.nan
    return NullInterval(mean, sd * math.sqrt(1 + 1 / k) if k > 1 else math.nan, k - 1 if k > 1 else 0, k,
                        f"prediction interval of one more draw, t over {k} draws", level, sd)


def verdict(low: float, high: float, threshold: float = 0.0) -> str:
    """``yes`` when the interval [low, high] lies wholly above ``threshold``, ``no`` wholly below it,
    ``inconclusive`` otherwise (also when it is undefined)."""
    if low > threshold:
        return "yes"
    if high < threshold:
        return "no"
    return "inconclusive"


__all__ = ["LEVEL", "POWER", "BootInterval", "Interval", "NullInterval", "combined_se", "difference",
           "hierarchical_bootstrap", "interval", "paired_ratio", "pooled_bootstrap", "items_to_detect", "mde",
           "mean_se", "null_interval", "over_members", "quantile", "verdict"]
