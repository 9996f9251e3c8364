"""Results files, headline tables and plots of the probes (tidy CSV first; everything else from it)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import pandas as pd

from rwedit.architectures import ROLES


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend (plots are written to files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay out, write and close a figure; returns its path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return Path(path)


def write_rows(rows: Sequence[dict], path: str | Path, columns: Sequence[str]) -> pd.DataFrame:
    df = pd.DataFrame(list(rows), columns=list(columns))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(path, index=False)
    return df


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


def plot_rsf_heatmaps(df: pd.DataFrame, out: Path, k: int | None = None) -> list[Path]:
    """One layer × role heatmap of RSF per (side, subspace), at one k (default: 16 or the nearest below)."""
    plt = pyplot()
    k = k or _heat_k(df)
    layer_rows = df[df["layer"].notna() & (df["k"] == k)]
    paths = []
    for (side, sub), part in layer_rows.groupby(["side", "subspace"]):
        roles = [r for r in ROLES if r in set(part["role"])]
        table = part.pivot_table(index="layer", columns="role", values="rsf", aggfunc="mean").reindex(columns=roles)
        fig, ax = plt.subplots(figsize=(1.1 * len(roles) + 2.5, 0.32 * len(table) + 1.8))
        im = ax.imshow(table.values.astype(float), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set_xticks(range(len(roles)), roles)
        ax.set_yticks(range(len(table)), [int(x) for x in table.index])
        ax.set_xlabel("role")
        ax.set_ylabel("layer")
        ax.set_title(f"RSF, {side} side vs {sub} subspace, k={k} (1 = isotropic)")
        fig.colorbar(im, ax=ax, label="RSF")
        for (i, j), v in pd.DataFrame(table.values).stack().items():
            ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=7, color="w")
        paths.append(save_figure(fig, out / f"rsf_heatmap_{side}_{sub}.png"))
    return paths


def plot_rsf_vs_k(df: pd.DataFrame, out: Path) -> Path:
    """RSF against k per role (mean over layers), one panel per side, with the random null band."""
    plt = pyplot()
    sides = [s for s in ("read", "write") if s in set(df["side"])]
    fig, axes = plt.subplots(1, len(sides), figsize=(6.5 * len(sides), 4.5), squeeze=False)
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
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_xlabel("k (subspace dimension)")
        ax.set_ylabel("RSF (mean over layers)")
        ax.set_title(f"{side} side")
        ax.legend(fontsize=7, ncol=2)
    return save_figure(fig, out / "rsf_vs_k.png")



