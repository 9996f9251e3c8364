"""The control experiment's figures, each readable in seconds: one dose drawn as dots per direction kind
(a line needs two doses), only the intervals the data support (none on fewer than 2 degrees of freedom, each
clipped to the values the metric can take: a divergence's at 0), axes in the metric's units, colours fixed
per direction kind across every figure of one report. :func:`error_bars` serves the SVD experiment's too."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from rwedit.probes.report import pyplot, save_figure

#: fewest degrees of freedom an interval is drawn with (a t interval on one is wider than the data can say)
MIN_DF = 2


#: the unit of a metric (and of its shift), by the last part of its name (lm-eval's task/metric included)
UNITS = {"pref_margin": "nats", "ce": "nats/token", "kl_post_condition": "nats/token", "kl_base_edited": "nats/token",
         "ppl": "perplexity", "pref_acc": "fraction of pairs", "acc": "fraction of items",
         "acc_norm": "fraction of items"}


def with_unit(text: str, metric: str) -> str:
    """``text (unit)`` where the metric's unit is known."""
    unit = UNITS.get(metric.split("/")[-1])
    return f"{text} ({unit})" if unit else text


def shift_range(metric: str) -> tuple[float | None, float | None]:
    """The values a metric's shift can take: a divergence is never below 0, a fraction moves by at most 1 either
    way; (None, None) when unbounded. Drawn intervals are clipped to it."""
    last = metric.split("/")[-1]
    if last.startswith("kl"):
        return 0.0, None
    return (-1.0, 1.0) if UNITS.get(last, "").startswith("fraction") or last == "pref_acc_shift" else (None, None)


def error_bars(frame: pd.DataFrame, value: str = "shift", bounds: tuple[float | None, float | None] = (None, None)
               ) -> tuple[np.ndarray, list[str]]:
    """The 2 × n error bars (below, above) of estimates with 95% intervals (``ci_low``, ``ci_high``, optional
    ``df``): NaN, i.e. not drawn, for an interval that is missing or rests on fewer than :data:`MIN_DF`
    degrees of freedom, clipped to the values the quantity can take (``bounds``, e.g. :func:`shift_range`);
    and the rows left without one."""
    df = frame["df"].astype(float) if "df" in frame else pd.Series(np.nan, index=frame.index)
    lo, hi = frame["ci_low"].astype(float).clip(lower=bounds[0]), frame["ci_high"].astype(float).clip(upper=bounds[1])
    bad = lo.isna() | hi.isna() | (df < MIN_DF)
    err = np.array([(frame[value] - lo).where(~bad), (hi - frame[value]).where(~bad)], dtype=float)
    return np.clip(err, 0, None), [str(i) for i in frame.index[bad]]


def omitted(labels: Sequence[str]) -> str:
    """The note under an axis naming what has no interval drawn ('' when all have one)."""
    import textwrap

    return "\n" + textwrap.fill(f"(no interval drawn for {', '.join(dict.fromkeys(labels))}: none, or on fewer than "
                                f"{MIN_DF} degrees of freedom)", 48) if labels else ""


def _g(x) -> str:
    return "–" if x is None or pd.isna(x) else f"{x:.3g}"


def dose_label(v) -> str:
    """A verdict's dose as given: α, or a multiple of the observed update along v."""
    return f"α = {v['alpha']:.3g}" if v.get("dose_unit", "alpha") == "alpha" else f"{v['dose']:g} × observed"


def versus(v) -> str:
    """A verdict's control, and what it is matched in when not ‖ΔW‖."""
    return f"vs {v['control']}" + (" (KL-matched)" if v.get("match", "norm") == "kl" else "")


def kind_colours(kinds: Sequence[str]) -> dict[str, str]:
    """One colour per direction kind, in the report's kind order, the same in every figure."""
    return {k: f"C{i}" for i, k in enumerate(dict.fromkeys(kinds))}


def plot_dose_response(head: pd.DataFrame, metric: str, path: Path, label: str | None = None) -> Path:
    """Shift vs α from the headline table (mean, 95% interval per kind and α; the norm-matched conditions: a
    KL-matched control's α is its own). One α: a dot per direction kind with its interval. Several: one panel per
    control kind next to the principal edit (so one noisy control does not squash the others), α ticks at the
    doses."""
    plt = pyplot()
    colours = kind_colours(head["kind"])
    sel = head[(head["metric"] == metric) & ((head["match"] == "norm") if "match" in head else True)]
    kinds = list(dict.fromkeys(sel["kind"]))
    alphas = sorted(sel["alpha"].unique())
    bounds = shift_range(metric)
    label = label or f"{metric} shift"
    if len(alphas) == 1:
        g = sel.set_index("kind").loc[kinds]
        err, missing = error_bars(g, bounds=bounds)
        fig, ax = plt.subplots(figsize=(1.15 * len(kinds) + 2.2, 3.6))
        for i, k in enumerate(kinds):
            ax.errorbar([i], [g.loc[k, "shift"]], yerr=err[:, i:i + 1], fmt="o", ms=6, capsize=4, color=colours[k])
        ax.set_xticks(range(len(kinds)), [f"{k}\n(n={int(g.loc[k, 'n'])})" for k in kinds], fontsize=8)
        ax.set_xlim(-0.6, len(kinds) - 0.4)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel(f"direction kind, one dose α = {alphas[0]:g} (= signed ‖ΔW‖_F)" + omitted(missing), fontsize=8)
        ax.set_title(f"{metric}: mean and 95% interval per direction kind", fontsize=9)
        return save_figure(fig, path, dpi=120)
    controls = [k for k in kinds if k != "principal"] or kinds
    fig, axes = plt.subplots(1, len(controls), figsize=(3.4 * len(controls) + 0.6, 3.8), squeeze=False)
    for ax, control in zip(axes[0], controls):
        missing = []
        for kind in dict.fromkeys(["principal", control]):
            g = sel[sel["kind"] == kind].sort_values("alpha")
            if g.empty:
                continue
            err, bad = error_bars(g, bounds=bounds)
            missing += [kind] if bad else []
            ax.errorbar(g["alpha"], g["shift"], yerr=err, marker="o", capsize=3, color=colours[kind],
                        label=f"{kind} (n={int(g['n'].max())})")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(alphas, [f"{a:g}" for a in alphas])
        ax.set_xlabel("α (= signed ‖ΔW‖_F)" + omitted(missing), fontsize=8)
        ax.set_title(f"principal vs {control}", fontsize=9)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel(label, fontsize=8)
    fig.suptitle(f"dose–response: {metric} (mean, 95% interval)", fontsize=10)
    return save_figure(fig, path, dpi=120)


def plot_overview(head: pd.DataFrame, ver: Sequence[dict], metric: str, path: Path, label: str | None = None) -> Path:
    """The report's first figure: one panel per control at the largest |α|, the principal edit's and the
    control's mean shift of the primary metric (95% interval), each panel on its own scale, titled with its
    verdict and paired effect."""
    plt = pyplot()
    colours = kind_colours(head["kind"])
    top = max(ver, key=lambda v: abs(v["alpha"]))
    unit, amount = top.get("dose_unit", "alpha"), top.get("dose", top["alpha"])  # verdicts of before: α only
    ver = [v for v in ver if (v.get("dose_unit", "alpha"), v.get("dose", v["alpha"])) == (unit, amount)]
    sel = head[(head["metric"] == metric) & (head["dose_unit"] == unit) & (head["dose"] == amount)]
    fig, axes = plt.subplots(1, len(ver), figsize=(3.3 * len(ver) + 0.6, 3.6), squeeze=False)
    for ax, v in zip(axes[0], ver):
        matched = {"principal": "norm", v["control"]: v.get("match", "norm")}  # the edit and this verdict's control
        g = pd.concat([sel[(sel["kind"] == k) & (sel["match"] == m)] for k, m in matched.items()]).set_index("kind")
        kinds = list(g.index)
        err, missing = error_bars(g, bounds=shift_range(metric))
        ax.bar(range(len(g)), g["shift"], yerr=err, capsize=4, color=[colours[k] for k in kinds])
        ax.set_xticks(range(len(g)), [f"{k}\n(n={int(g.loc[k, 'n'])})" for k in kinds], fontsize=8)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(f"{versus(v)}: {v['answer']}\npaired {_g(v['effect'])} [{_g(v['ci_low'])}, "
                     f"{_g(v['ci_high'])}]", fontsize=8)
        if missing:
            ax.set_xlabel(omitted(missing).strip(), fontsize=7)
    axes[0][0].set_ylabel(label or f"{metric} shift", fontsize=8)
    fig.suptitle(f"principal edit vs each control at {dose_label(top)} (mean shift, 95% interval)", fontsize=9)
    return save_figure(fig, path, dpi=120)


def plot_forest(ver: Sequence[dict], metric: str, path: Path, label: str | None = None) -> Path:
    """Forest plot: each replicate unit's paired effect with its 95% interval and the pooled estimate, one
    panel per control and match (columns) and dose (rows), zero marked."""
    plt = pyplot()
    ver = [v for v in ver if v.get("units")]
    controls = list(dict.fromkeys(versus(v) for v in ver))
    alphas = list(dict.fromkeys(dose_label(v) for v in sorted(ver, key=lambda v: abs(v["alpha"]))))
    n_units = max(len(v["units"]) for v in ver)
    fig, axes = plt.subplots(len(alphas), len(controls), squeeze=False, sharey=True,
                             figsize=(max(5.5, 3.2 * len(controls) + 1.2), 0.28 * (n_units + 2) * len(alphas) + 1.4))
    for v in ver:
        ax = axes[alphas.index(dose_label(v))][controls.index(versus(v))]
        u = v["units"]
        y = np.arange(len(u), 0, -1)
        err, _ = error_bars(pd.DataFrame(u), value="effect")
        ax.errorbar([x["effect"] for x in u], y, xerr=err, fmt="o", ms=3, color="tab:blue", lw=1)
        pooled, _ = error_bars(pd.DataFrame([v]), value="effect")
        ax.errorbar([v["effect"]], [0], xerr=pooled, fmt="D", ms=6, color="black", lw=2)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(list(y) + [0], [x["unit"] for x in u] + ["pooled"], fontsize=7)
        ax.set_title(f"{versus(v)}, {dose_label(v)}", fontsize=9)
        ax.tick_params(axis="x", labelsize=7)
    fig.supxlabel(f"paired effect, principal − control: {label or metric}", fontsize=8)
    fig.suptitle("each replicate unit's paired effect, 95% interval\n(pooled: bootstrap over items, members and "
                 "units)", fontsize=9)
    return save_figure(fig, path, dpi=120)


__all__ = ["MIN_DF", "UNITS", "dose_label", "error_bars", "omitted", "versus", "with_unit", "kind_colours", "plot_dose_response", "plot_forest", "plot_overview", "shift_range"]
