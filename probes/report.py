"""Results files, headline tables and plots of the probes (tidy CSV first; everything else from it)."""

from __future__ import annotations

import math
from pathlib import Path
import pandas as pd

from rwedit.architectures import ROLES


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (plots are written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out (tight, unless the figure has a layout engine of its own: constrained), write and close a figure
    (legends placed outside the axes included); returns its path."""
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    return Path(path)


def rsf_headline(df: pd.DataFrame) -> pd.DataFrame:
    """Per (role, side, subspace, k): RSF mean over layers with its spread, next to the null."""
    g = df.groupby(["role", "side", "subspace", "k"], sort=False)
    out = g.agg(
        layers=("rsf", "count"),
        rsf_mean=("rsf", "mean"),
        rsf_sd=("rsf", "std"),
        rsf_min=("rsf", "min"),
        rsf_max=("rsf", "max"),
        null_mean=("null_mean", "mean"),
        null_sd=("null_sd", "mean"),
        z_mean=("null_z", "mean"),
        null_exact_sd=("null_exact_sd", "mean"),
        exact_z_mean=("null_exact_z", "mean"),
    ).reset_index()
    out["role"] = pd.Categorical(out["role"], [r for r in ROLES if r in set(out["role"])], ordered=True)
    return out.sort_values(["subspace", "side", "role", "k"]).reset_index(drop=True)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".3g") -> str:
    cols = list(df.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, row in df.iterrows():
        cells = []
        for c in cols:
            v = row[c]
            if isinstance(v, float):
                cells.append("nan" if math.isnan(v) else format(v, floatfmt))
            else:
                cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _heat_k(df: pd.DataFrame, prefer: int) -> int:
    ks = sorted(df["k"].unique())
    below = [k for k in ks if k <= prefer]
    return int(below[-1] if below else ks[0])


def centred_log_norm(values):
    """A colour scale for RSF: logarithmic and symmetric about 1 (isotropic), so 4x concentrated and 4x
    depleted are equally far from the neutral colour of a diverging map."""
    from matplotlib.colors import LogNorm
    import numpy as np

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v) & (v > 0)]
    m = float(max(np.max(v), 1 / np.min(v), 1.5)) if v.size else 2.0
    return LogNorm(vmin=1 / m, vmax=m)


def plain_log(ax, gap: float = 1 / 7) -> None:
    """Ticks of a log-scaled y axis on round numbers, the roundest first (1 and the decades, then 2, 5, 1.5,
    3, …) as long as each keeps ``gap`` of the axis from the others, labelled plainly (0.9, 2, not 9×10⁻¹).
    Call it once the data are drawn: it ticks the view as it is then."""
    import numpy as np
    from matplotlib.ticker import MaxNLocator, NullLocator

    lo, hi = sorted(ax.get_ylim())
    span = math.log10(hi / lo)
    decades = sorted(range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1), key=abs)
    ticks = []
    for t in (m * 10.0 ** d for m in (1, 2, 5, 1.5, 3, 8, 1.2, 4, 7, 1.1, 6, 9, 1.3, 1.4) for d in decades):
        if lo <= t <= hi and all(abs(math.log10(t / u)) >= gap * span for u in ticks):
            ticks.append(t)
    if len(ticks) < 2:  # a view narrower than round numbers allow: as on a linear axis
        ticks = [t for t in MaxNLocator(5, steps=[1, 2, 2.5, 5, 10]).tick_values(lo, hi) if lo <= t <= hi]
    ticks = sorted(float(f"{t:.12g}") for t in ticks)
    ax.set_yticks(ticks, [np.format_float_positional(t, trim="-") for t in ticks])  # shortest exact digits
    ax.yaxis.set_minor_locator(NullLocator())


def plot_rsf_heatmaps(df: pd.DataFrame, out: Path, k: int = 4) -> list[Path]:
    """One layer × role heatmap of RSF per (side, subspace) at the claims' k (``ProbeRequest.claim_k``; the
    grid's nearest k below when absent), all on one colour scale (diverging, log, centred at 1: one colour is
    one RSF in every figure), the null band (1 ± 2 null sd, mean over cells) marked on the colour bar, and
    cells inside it (|z| < 2) printed in brackets."""
    import numpy as np

    plt = pyplot()
    k = _heat_k(df, k)
    tables = {}
    for (side, sub), part in df[df["layer"].notna() & (df["k"] == k)].groupby(["side", "subspace"]):
        roles = [r for r in ROLES if r in set(part["role"])]
        table = part.pivot_table(index="layer", columns="role", values="rsf", aggfunc="mean").reindex(columns=roles)
        z = part.pivot_table(index="layer", columns="role", values="null_z", aggfunc="mean").reindex(
            index=table.index, columns=roles)
        tables[side, sub] = table, z, float(part["null_sd"].mean())
    norm = centred_log_norm(np.concatenate([t.values.ravel() for t, _, _ in tables.values()] or [[]]))
    ticks = norm.vmax ** np.linspace(-1, 1, 5)  # symmetric about 1 on the log scale, labelled as plain numbers
    paths = []
    for (side, sub), (table, z, sd) in tables.items():
        roles = list(table.columns)
        fig, ax = plt.subplots(figsize=(1.1 * len(roles) + 2.8, 0.32 * len(table) + 1.9))
        im = ax.imshow(table.values.astype(float), aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(roles)), roles)
        ax.set_yticks(range(len(table)), [int(x) for x in table.index])
        ax.set_xlabel("role")
        ax.set_ylabel("layer")
        ax.set_title(f"RSF {side} side vs {sub}, k = {k}\n(bracketed: inside the null, |z| < 2)", fontsize=9)
        bar = fig.colorbar(im, ax=ax, label="RSF (1 = isotropic; log scale,\nthe same in every heatmap)")
        bar.ax.minorticks_off()
        bar.set_ticks(ticks, labels=[f"{t:.2g}" for t in ticks])
        if math.isfinite(sd) and sd > 0:
            for y in (max(1 - 2 * sd, norm.vmin), min(1 + 2 * sd, norm.vmax)):
                bar.ax.axhline(y, color="k", lw=1, ls="--")
        for (i, j), v in pd.DataFrame(table.values).stack().items():
            inside = abs(z.values[i, j]) < 2 if math.isfinite(z.values[i, j]) else False
            dark = abs(math.log(v)) > 0.6 * math.log(norm.vmax) if v > 0 else False
            ax.text(j, i, f"({v:.2g})" if inside else f"{v:.2g}", ha="center", va="center", fontsize=7,
                    color="w" if dark else "k")
        paths.append(save_figure(fig, out / f"rsf_heatmap_{side}_{sub}.png"))
    return paths


def plot_rsf_vs_k(df: pd.DataFrame, out: Path) -> Path:
    """RSF against k (mean over layers), a panel per role on shared axes with at most its two lines: colour
    for the side (read, write), solid against the activation subspace and dashed against the prediction
    subspace, over the random null band of the deltas in that panel."""
    from matplotlib.ticker import NullLocator

    plt = pyplot()
    part = df[df["subspace"] != "random"]
    roles = [r for r in ROLES if r in set(part["role"])]
    ncol = min(4, len(roles))
    nrow = -(-len(roles) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(2.4 * ncol + 0.8, 2.1 * nrow + 1.0), sharex=True, sharey=True,
                             squeeze=False, layout="constrained")
    ks = sorted(int(x) for x in part["k"].unique())
    for ax, role in zip(axes.flat, roles):
        g = part[part["role"] == role]
        null = g.groupby("k")[["null_mean", "null_sd"]].mean()  # the null depends on the delta and on d
        ax.fill_between(null.index, null["null_mean"] - 2 * null["null_sd"], null["null_mean"] + 2 * null["null_sd"],
                        color="grey", alpha=0.25, lw=0, label="random null ±2 sd")
        for (side, sub), line in g.groupby(["side", "subspace"]):
            m = line.groupby("k")["rsf"].mean()
            ax.plot(m.index, m.values, marker="o", ms=4, color="C0" if side == "read" else "C1",
                    linestyle="-" if sub == "activation" else "--", label=f"{side} side vs {sub}")
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(role, fontsize=9)
    for ax in axes.flat[len(roles):]:
        ax.remove()
    ax = axes.flat[0]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(ks, [str(x) for x in ks])
    ax.xaxis.set_minor_locator(NullLocator())
    plain_log(ax)
    seen = {lab: h for a in axes.flat[:len(roles)] for h, lab in zip(*a.get_legend_handles_labels())}  # one legend
    fig.legend(list(seen.values()), list(seen.keys()), fontsize=7, loc="outside upper center", ncol=min(len(seen), 4))
    fig.supxlabel("k (subspace dimension)", fontsize=9)
    fig.supylabel("RSF, mean over layers (1 = isotropic)", fontsize=9)
    return save_figure(fig, out / "rsf_vs_k.png")
