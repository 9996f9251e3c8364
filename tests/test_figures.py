"""The experiment figures read in seconds: one dose is dots per direction kind (no line), an interval on one
degree of freedom is left out and said so, a divergence's interval never goes below 0, axes carry units, and
no text lands on other text (renderer boxes)."""

from __future__ import annotations

import pytest

import rwedit.evals.plots as plots
from figures import capture, drawn_intervals, text_overlaps
from rwedit.evals.report import DIRECT_SHIFTS, headline, long_shifts

KL_RANDOM = (0.01, 0.05, 0.002)  # t over 3 members: mean − t·se < 0, a negative KL bound unless clipped


def rows(alphas):
    """A base row and, per α, one principal edit (own stderr), three random directions (t, 2 df) and a write
    control on two layers (t, 1 df)."""
    out = [{"condition": "base", "kind": "base", "alpha": 0.0, "delta_norm": 0.0, "pref_margin_shift": 0.0,
            "kl_base_edited": 0.0}]
    for a in alphas:
        def row(name, kind, margin, kl, layers=(1,), se=0.4):
            return {"condition": f"{name}_a{a:g}", "kind": kind, "alpha": a, "delta_norm": abs(a), "layers": list(layers),
                    "pref_margin_shift": margin * a, "pref_margin_shift_stderr": se,
                    "kl_base_edited": kl * a, "kl_base_edited_stderr": 0.002}
        out.append(row("principal0", "principal", 2.0, 0.06))
        out += [row(f"random_s{i}", "random", m, kl) for i, (m, kl) in enumerate(zip((-0.3, 0.4, 0.1), KL_RANDOM))]
        out += [row(f"L{l}_write_o", "write", m, 0.015, layers=(l,)) for l, m in ((0, -3.0), (1, 2.0))]
    return out


@pytest.mark.parametrize("alphas", [(2.0,), (1.0, 2.0)])
def test_dose_plots_draw_only_supported_intervals_in_units_without_overlaps(alphas, tmp_path, monkeypatch):
    figs = capture(monkeypatch, plots)
    head = headline(long_shifts(rows(alphas)))
    for metric, unit in (("pref_margin_shift", "(nats)"), ("kl_base_edited", "nats/token")):
        plots.plot_dose_response(head, metric, tmp_path / f"{metric}.png", {"pref_margin_shift": "margin shift (nats)",
                                                                          "kl_base_edited": "KL, nats/token"}[metric])
        fig = figs[-1]
        assert text_overlaps(fig) == [], metric
        axes = [ax for ax in fig.axes]
        assert unit in axes[0].get_ylabel()
        lows = [lo for ax in axes for lo, _ in drawn_intervals(ax)]
        n_drawn = sum(len(drawn_intervals(ax)) for ax in axes)
        notes = " ".join(" ".join(ax.get_xlabel().split()) for ax in axes)
        assert "no interval drawn for write" in notes and "principal" not in notes.split("no interval drawn")[1]
        if len(alphas) == 1:  # dots per kind: one axes, the kinds as ticks, no line through the doses
            (ax,) = axes
            assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["principal", "random", "write"]
            assert all(ln.get_linestyle() == "None" for ln in ax.get_lines() if len(ln.get_xdata()) == 1)
            assert n_drawn == 2  # principal and random; the write control's 1-df interval is left out
        else:  # a panel per control, a line through the doses
            assert len(axes) == 2 and n_drawn == 2 * 2 + 2 * 1  # principal twice (one per panel) + random
        if metric == "kl_base_edited":
            assert min(lows) == pytest.approx(0.0) and all(lo >= 0 for lo in lows)
        else:
            assert min(lows) < 0


def test_the_overview_and_the_forest_plot_carry_units_and_do_not_overlap(tmp_path, monkeypatch):
    figs = capture(monkeypatch, plots)
    head = headline(long_shifts(rows((2.0,))))
    units = [{"unit": f"L{l} principal[{i}]", "effect": 1.0 + l - i, "ci_low": 0.2 + l - i, "ci_high": 1.8 + l - i}
             for l in (0, 1) for i in (0, 1)]
    ver = [{"control": c, "alpha": 2.0, "effect": 1.2, "ci_low": 0.1, "ci_high": 2.3, "answer": "yes", "units": units}
           for c in ("random", "lowvar", "write")]
    label = DIRECT_SHIFTS["pref_margin_shift"]  # as the report passes it
    plots.plot_overview(head, ver, "pref_margin_shift", tmp_path / "o.png", label)
    plots.plot_forest(ver, "pref_margin_shift", tmp_path / "f.png", label)
    overview, forest = figs
    assert text_overlaps(overview) == [] and text_overlaps(forest) == []
    assert overview.axes[0].get_ylabel() == label and "(nats)" in forest.get_supxlabel()
    assert "no interval drawn for write" in " ".join(overview.axes[-1].get_xlabel().split())  # the 2-layer write control: 1 df
    assert len(drawn_intervals(overview.axes[-1])) == 1 and len(drawn_intervals(forest.axes[0])) == 5


def test_the_overlap_check_sees_overlapping_text(monkeypatch):
    """The checker itself: two labels placed on each other are reported."""
    from rwedit.probes.report import pyplot

    fig, ax = pyplot().subplots()
    ax.set_title("a title")
    ax.text(0.5, 1.02, "on the title", transform=ax.transAxes, ha="center")
    fig.texts.append(ax.texts[0])
    assert ("a title", "on the title") in text_overlaps(fig) or ("on the title", "a title") in text_overlaps(fig)


def test_the_svd_conditions_plot_clips_to_what_a_metric_can_take_and_omits_one_df(tmp_path, monkeypatch):
    """An accuracy shift's interval of ±1.4 (two items) is drawn within [−1, 1]; a seeded condition of two
    members (1 df) gets no interval and a note; units on every axis; no overlapping text."""
    import pandas as pd

    import rwedit.evals.svd_report as svd_report

    figs = capture(monkeypatch, svd_report)
    summ = pd.DataFrame([
        {"metric": m, "kind": k, "n": n, "shift": s, "ci_low": s - w, "ci_high": s + w, "df": df}
        for m in ("task/acc", "pref_margin")
        for k, n, s, w, df in (("base", 1, -0.2, 1.4, None), ("sv_replacement", 1, 0.1, 0.3, None),
                               ("disrupt_left_random", 2, -0.5, 9.0, 1))])
    svd_report.plot_conditions(summ, tmp_path / "c.png")
    (fig,) = figs
    assert text_overlaps(fig) == []
    acc, margin = fig.axes
    assert acc.get_ylabel() == "shift vs post (fraction of items)" and margin.get_ylabel() == "shift vs post (nats)"
    lows, highs = zip(*drawn_intervals(acc))
    assert len(lows) == 2 and min(lows) == pytest.approx(-1.0) and max(highs) <= 1.0
    assert max(hi for _, hi in drawn_intervals(margin)) == pytest.approx(1.2)  # unbounded: as computed
    assert all("no interval drawn for disrupt_left_random" in " ".join(ax.get_xlabel().split()) for ax in fig.axes)


def test_training_trajectories_have_whole_step_ticks(tmp_path, monkeypatch):
    """Three snapshots at steps 0, 1, 2: the step axis is ticked at whole steps only (not 0.25, 0.5, …)."""
    import pandas as pd

    import rwedit.probes.report as probe_report
    from figures import whole_ticks
    from rwedit.apps.quickstart.run import plot_trajectories

    figs = capture(monkeypatch, probe_report)
    pd.DataFrame([{"step": s, "layer": l, "role": r, "side": side, "subspace": sub, "k": 4, "rsf": 1 + s * (l + 1) / 4}
                  for s in (0, 1, 2) for l in range(3) for r, side, sub in (("q", "read", "activation"),
                                                                           ("o", "write", "prediction"))]
                 ).to_csv(tmp_path / "t.csv", index=False)
    plot_trajectories({"pretrain": tmp_path / "t.csv"}, tmp_path / "t.png")
    (fig,) = figs
    assert whole_ticks(fig.axes[0].xaxis) and not whole_ticks(fig.axes[0].yaxis)
    assert text_overlaps(fig) == []


# --- the probe's figures: heatmaps at the claims' k on one colour scale, RSF vs k by role, the comparison, SVD


def plain_numbers(ax) -> bool:
    """Whether every labelled tick of ``ax`` reads as a plain number (0.9, 2), none as 9×10⁻¹ or 10⁰."""
    import re

    from figures import texts

    ticks = [t for t in texts(ax.figure) if t in ax.get_yticklabels() + ax.get_yticklabels(minor=True)]
    return bool(ticks) and all(re.fullmatch(r"[−-]?\d+(\.\d+)?", t.get_text()) for t in ticks)


def grid(spread: dict[tuple[str, str], float]):
    """A tidy rsf.csv of 3 layers × the roles each (side, subspace) covers × k in 1, 4, 16: RSF = spread ** x with
    x in [−1, 1] across cells, so a (side, subspace)'s extremes are spread and 1/spread, at k = 4 only."""
    import numpy as np
    import pandas as pd

    cells = {("read", "activation"): ("q", "k", "v", "o", "up", "gate", "down"), ("read", "random"): ("q", "o"),
             ("read", "prediction"): ("q", "k", "v", "up", "gate", "unembed"), ("write", "prediction"): ("o", "down")}
    rows = []
    for (side, sub), roles in cells.items():
        x = np.linspace(-1, 1, 3 * len(roles))
        for i, (layer, role) in enumerate((l, r) for l in range(3) for r in roles):
            for k in (1, 4, 16):
                s = spread.get((side, sub), 1.2) if k == 4 else 1.1
                rows.append({"layer": layer, "role": role, "side": side, "subspace": sub, "k": k, "rsf": s ** x[i],
                             "null_mean": 1.0, "null_sd": 0.1 / k, "null_z": 3.0 * x[i]})
    return pd.DataFrame(rows)


def test_rsf_heatmaps_show_the_claims_k_on_one_colour_scale(tmp_path, monkeypatch):
    """Each heatmap of one call at k = 4 (the claims'), all with the colour limits of the widest table (read
    side vs activation spans 1/6 … 6): 1.2 is pale in every figure, not saturated in its own; plain ticks."""
    import rwedit.probes.report as report

    figs = capture(monkeypatch, report)
    df = grid({("read", "activation"): 6.0, ("write", "prediction"): 1.2})
    paths = report.plot_rsf_heatmaps(df, tmp_path)
    assert len(paths) == len(figs) == 4 and all("k = 4" in f.axes[0].get_title() for f in figs)
    clims = {f.axes[0].images[0].get_clim() for f in figs}
    assert len(clims) == 1 and clims.pop() == pytest.approx((1 / 6, 6))
    write = next(f for f, p in zip(figs, paths) if p.name == "rsf_heatmap_write_prediction.png")
    assert write.axes[0].images[0].get_array().max() == pytest.approx(1.2)
    assert all(plain_numbers(f.axes[1]) and text_overlaps(f) == [] for f in figs)
    assert "k = 16" in (report.plot_rsf_heatmaps(df, tmp_path, k=16) and figs[-1].axes[0].get_title())
    assert "k = 4" in (report.plot_rsf_heatmaps(df, tmp_path, k=8) and figs[-1].axes[0].get_title())  # below 8


def test_rsf_vs_k_is_a_panel_per_role_with_at_most_two_lines(tmp_path, monkeypatch):
    """Small multiples: every (role, side, subspace) of the grid but the random one drawn once, at most two
    lines a panel, one legend below, no overlapping text, plain RSF ticks."""
    import rwedit.probes.report as report

    figs = capture(monkeypatch, report)
    df = grid({})
    report.plot_rsf_vs_k(df, tmp_path)
    (fig,) = figs
    lines = [[ln for ln in ax.get_lines() if not ln.get_label().startswith("_")] for ax in fig.axes]
    assert max(map(len, lines)) <= 2 and sum(map(len, lines)) == len(
        df[df["subspace"] != "random"].groupby(["role", "side", "subspace"]))
    assert [ax.get_title() for ax in fig.axes] == ["q", "k", "v", "o", "up", "gate", "down", "unembed"]
    assert text_overlaps(fig) == [] and plain_numbers(fig.axes[0])


def test_the_comparison_has_its_svd_panel_beside_it_and_nothing_overlaps(tmp_path, monkeypatch):
    """compare.png: RSF bars from 1 (isotropy) to each post's mean, the SVD consistency as a second panel inside
    the figure (not an inset past its edge), the legend below, units, no overlapping text."""
    import pandas as pd

    import rwedit.probes.pipeline as pipeline
    from rwedit.probes.pipeline import CLAIMS

    figs = capture(monkeypatch, pipeline)
    table = pd.DataFrame([{"post": p, "claim": c[0], "k": 4, "rsf_mean": 1 + 0.3 * i - 0.4 * j, "rsf_sem": 0.05,
                           "null_mean": 1.0, "null_sd": 0.1, "svd_consistency": 0.02 * (i + 1)}
                          for i, p in enumerate(("a-long-fine-tune-name", "b", "c")) for j, c in enumerate(CLAIMS)])
    pipeline.plot_compare(table, tmp_path / "compare.png")
    (fig,) = figs
    rsf, svd = fig.axes
    assert text_overlaps(fig) == [] and plain_numbers(rsf)
    assert all(0 <= ax.get_position().x0 and ax.get_position().x1 <= 1 for ax in fig.axes)
    tops = sorted(round(b.get_y() + b.get_height(), 9) for b in rsf.patches if b.get_width() < 1)
    assert {round(b.get_y(), 9) for b in rsf.patches if b.get_width() < 1} == {1.0}
    assert tops == sorted(round(x, 9) for x in table["rsf_mean"])
    assert "k = 4" in rsf.get_ylabel() and "‖Q_U − Q_V‖" in svd.get_ylabel()
    assert [round(b.get_height(), 9) for b in svd.patches] == [0.02, 0.04, 0.06]


def reference_lines(ax) -> set[float]:
    """The heights of the horizontal lines across the whole axes (axhline)."""
    return {float(ln.get_ydata()[0]) for ln in ax.get_lines() if ln.get_transform() != ax.transData}


def test_svd_and_series_plots_tick_whole_layers_and_steps_and_mark_no_change(tmp_path, monkeypatch):
    """Two layers, three steps: ticks on whole layers and steps only; scale marked at 1, consistency at 0, RSF
    at 1; units on the y axes; no overlapping text."""
    import pandas as pd

    import rwedit.probes.pipeline as pipeline
    from figures import whole_ticks

    figs = capture(monkeypatch, pipeline)
    svd = pd.DataFrame([{"role": r, "layer": l, "scale": 1 + 0.001 * (l - i), "consistency": 0.05 * (i + l)}
                        for l in (0, 1) for i, r in enumerate(("q", "k", "v", "o", "up", "gate", "down"))])
    pipeline._plot_svd(svd, tmp_path)
    series = pd.DataFrame([{"member": f"checkpoint-{s}", "step": s, "k": 4, "rsf read side vs activation": 0.9 + s / 10,
                            "rsf write side vs prediction": 1.1, "svd_scale": 1 + s / 1e3, "svd_consistency": s / 20}
                           for s in (1, 2, 3)])
    pipeline.plot_series(series, tmp_path / "series.png")
    scale, consistency, series_fig = figs
    assert reference_lines(scale.axes[0]) == {1.0} and reference_lines(consistency.axes[0]) == {0.0}
    assert [reference_lines(ax) for ax in series_fig.axes] == [{1.0}, {1.0}, {1.0}, {0.0}]
    assert "σ′/σ" in scale.axes[0].get_ylabel() and "k = 4" in series_fig.axes[0].get_ylabel()
    for fig in figs:
        assert all(whole_ticks(ax.xaxis) for ax in fig.axes) and text_overlaps(fig) == []
