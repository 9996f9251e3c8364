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
    """Lay out, write and close a figure (legends placed outside the axes included); returns its path."""
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


def _heat_k(df: pd.DataFrame, prefer: int = 16) -> int:
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


def plot_rsf_heatmaps(df: pd.DataFrame, out: Path, k: int | None = None) -> list[Path]:
    """One layer × role heatmap of RSF per (side, subspace), at one k (default: 16 or the nearest below): a
    diverging log scale centred at 1, the null band (1 ± 2 null sd, mean over cells) marked on the colour
    bar, and cells inside it (|z| < 2) printed in brackets."""
    plt = pyplot()
    k = k or _heat_k(df)
    layer_rows = df[df["layer"].notna() & (df["k"] == k)]
    paths = []
    for (side, sub), part in layer_rows.groupby(["side", "subspace"]):
        roles = [r for r in ROLES if r in set(part["role"])]
        table = part.pivot_table(index="layer", columns="role", values="rsf", aggfunc="mean").reindex(columns=roles)
        z = part.pivot_table(index="layer", columns="role", values="null_z", aggfunc="mean").reindex(
            index=table.index, columns=roles)
        norm = centred_log_norm(table.values)
        fig, ax = plt.subplots(figsize=(1.1 * len(roles) + 2.8, 0.32 * len(table) + 1.9))
        im = ax.imshow(table.values.astype(float), aspect="auto", cmap="RdBu_r", norm=norm, interpolation="nearest")
        ax.set_xticks(range(len(roles)), roles)
        ax.set_yticks(range(len(table)), [int(x) for x in table.index])
        ax.set_xlabel("role")
        ax.set_ylabel("layer")
        ax.set_title(f"RSF {side} side vs {sub}, k = {k}\n(bracketed: inside the null, |z| < 2)", fontsize=9)
        bar = fig.colorbar(im, ax=ax, label="RSF (1 = isotropic, log scale)")
        sd = float(part["null_sd"].mean())
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
    """RSF against k per role (mean over layers), one panel per side, with the random null band."""
    plt = pyplot()
    sides = [s for s in ("read", "write") if s in set(df["side"])]
    fig, axes = plt.subplots(1, len(sides), figsize=(5.5 * len(sides), 4.5), squeeze=False)
    colors = {r: f"C{i}" for i, r in enumerate(ROLES)}
    for ax, side in zip(axes[0], sides):
        part = df[(df["side"] == side) & (df["subspace"] != "random")]
        # the null band of the deltas actually plotted (the null depends on the delta and on d)
        null = part.groupby("k")[["null_mean", "null_sd"]].mean()
        ax.fill_between(null.index, null["null_mean"] - 2 * null["null_sd"], null["null_mean"] + 2 * null["null_sd"],
                        color="grey", alpha=0.25, label="random null ±2 sd")
        for (role, sub), g in part.groupby(["role", "subspace"], observed=True):
            m = g.groupby("k")["rsf"].mean()
            ax.plot(m.index, m.values, marker="o", color=colors.get(role, "k"), label=f"{role} vs {sub}",
                    linestyle="-" if sub == "activation" else "--")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ks = sorted(int(x) for x in part["k"].unique())
        ax.set_xticks(ks, [str(x) for x in ks])
        ax.minorticks_off()
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("k (subspace dimension)")
        ax.set_ylabel("RSF (mean over layers)")
        ax.set_title(f"{side} side")
    seen = {}  # one legend for both panels, outside the data
    for ax in axes[0]:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    fig.legend(list(seen.values()), list(seen.keys()), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save_figure(fig, out / "rsf_vs_k.png")



