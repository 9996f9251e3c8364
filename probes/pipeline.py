"""End-to-end probes on a checkpoint pair: results file + headline + plots + summary in one folder."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from rwedit import __version__
from rwedit.checkpoints import Checkpoint, CheckpointPair
from rwedit.config import Config, option
from rwedit.data import pack_tokens, read_texts
from rwedit.models import Placement, check_window, load_model_and_tokenizer
from rwedit.probes.activations import ActivationStats, StatsSettings, cached_activation_stats
from rwedit.probes.grid import COLUMNS, GridSettings, check_ks, rsf_grid_pair
from rwedit.probes.report import (
    markdown_table,
    plot_rsf_heatmaps,
    plot_rsf_vs_k,
    pyplot,
    rsf_headline,
    save_figure,
    write_rows,
)
from rwedit.errors import ConfigError
from rwedit.outputs import atomic_folder, check_output_folder, write_json
from rwedit.probes.svd import clip_rank, svd_structure

SVD_COLUMNS = ("layer", "role", "r", "method", "scale", "scale_residual", "orth_U", "orth_V", "consistency",
               "reparam_error", "truncation_floor")


@dataclass(frozen=True)
class CalibrationSettings(Config):
    """Where activation statistics come from (recorded in every result): the ``calibration:`` section of
    edit specs and recipes, and the ``--calib*`` options of ``rwedit probe``."""

    data: str = option(path=True, help="calibration text: .txt[.gz] (one text per line), .jsonl[.gz] (field "
                       "'text' or 'chosen'), a datasets folder, a dataset name, or bundled:NAME")
    tokens: int = option(50_000, help="token budget of the calibration set")
    seq_len: int = option(256, help="calibration sequence length (tokens)")
    batch_size: int = option(8, help="sequences per forward pass")
    field: str | None = option(None, help="jsonl/dataset field holding the text")
    device: str = option("cpu", help="device of the calibration forward passes (cpu, cuda, auto)")
    dtype: str = option("float32", help="the model's dtype during the calibration passes")
    placement: Placement | None = option(None, help="the model placed across devices for the calibration passes "
                                         "(device_map, max_memory, offload_folder, dtype); unset: whole on device")


def activation_stats_for(ckpt: Checkpoint, calib: CalibrationSettings, roles: tuple[str, ...],
                         cache_dir: str | Path | None = None, progress: bool = True) -> ActivationStats:
    """Collect (or reuse from the cache) second moments of the base model's reader inputs."""
    check_window(ckpt.config, calib.seq_len, "calibration.seq_len")
    model, tok = load_model_and_tokenizer(ckpt, calib.device, calib.dtype, calib.placement)
    texts = read_texts(calib.data, field=calib.field)
    ids = pack_tokens(tok, texts, calib.seq_len, calib.tokens)
    settings = StatsSettings(roles=roles, seq_len=calib.seq_len, batch_size=calib.batch_size)
    stats = cached_activation_stats(model, ids, settings, source=str(calib.data), cache_dir=cache_dir,
                                    progress=progress)
    del model
    return stats


def spikedness_rows(stats: ActivationStats, ks: tuple[int, ...], centred: bool) -> list[dict]:
    """Top-k variance share and participation ratio of every collected input's spectrum."""
    from rwedit.architectures import GROUP_ROLE

    rows = []
    seen = set()
    for layer, group in sorted(stats.sums):
        if (layer, group) in seen:
            continue
        seen.add((layer, group))
        spec = stats.spectrum(layer, GROUP_ROLE[group], centred, top=0)
        for k in sorted({min(k, spec.d) for k in ks}):
            s = spec.spikedness(k)
            rows.append({"layer": layer, "input": group, "k": k, "d": spec.d, "topk_share": s["topk_share"],
                         "participation_ratio": s["participation_ratio"], "top_eigenvalue": float(spec.eigenvalues[0])})
    return rows


@dataclass(frozen=True)
class ProbeRun:
    """What a probe run returns: the folder it wrote and the headline table its ``summary.md`` shows."""

    folder: Path
    table: pd.DataFrame


def run_rsf_probe(
    base: str,
    post: str,
    out: str | Path,
    calib: CalibrationSettings | None = None,
    settings: GridSettings = GridSettings(),
    allow_pickle: bool | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    allow_dtype_mismatch: bool = False,
) -> ProbeRun:
    """RSF grid of (post − base): ``rsf.csv``, ``headline.csv``, plots and ``summary.md`` in ``out``
    (written whole into a temporary folder and renamed into place; an existing ``out`` needs ``overwrite``)."""
    t0 = time.perf_counter()
    final = check_output_folder(out, overwrite)
    pair = CheckpointPair(Checkpoint.open(base, allow_pickle=allow_pickle), post, allow_pickle=allow_pickle,
                          allow_dtype_mismatch=allow_dtype_mismatch)  # validated before heavy work; post may be a LoRA
    roles = settings.roles or pair.layout.roles()
    skipped_ks = check_ks(settings, pair.layout, roles)
    with atomic_folder(final, overwrite) as out:
        head = _rsf_probe_into(out, pair, base, post, calib, settings, roles, skipped_ks, cache_dir, progress, t0)
    return ProbeRun(final, head)


def _rsf_probe_into(out: Path, pair: CheckpointPair, base: str, post: str, calib, settings: GridSettings, roles,
                    skipped_ks: dict[int, int], cache_dir, progress: bool, t0: float) -> pd.DataFrame:
    stats = None
    if calib is not None and "activation" in settings.subspaces:
        stat_roles = tuple(r for r in roles if r != "unembed")
        stats = activation_stats_for(pair.base, calib, stat_roles, cache_dir, progress)
    rows = list(rsf_grid_pair(pair, stats, settings, progress))
    df = write_rows(rows, out / "rsf.csv", COLUMNS)
    head = rsf_headline(df)
    head.to_csv(out / "headline.csv", index=False)
    plots = plot_rsf_heatmaps(df, out) + [plot_rsf_vs_k(df, out)]
    spiked = []
    if stats is not None:
        spiked = spikedness_rows(stats, settings.ks, settings.centred)
        write_rows(spiked, out / "spectrum.csv", list(spiked[0]) if spiked else [])
    meta = {
        "rwedit_version": __version__,
        "probe": "rsf",
        "base": base, "post": post, "sources": pair.sources(), "model_type": pair.base.model_type,
        "grid": asdict(settings),
        "calibration": asdict(calib) if calib else None,
        "activation_stats": stats.meta if stats else None,
        "k_skipped": {str(k): n for k, n in skipped_ks.items()},
        "dtype_mismatch": _rounding_floor(pair, roles, settings, df),
        "seconds": round(time.perf_counter() - t0, 2),
        "files": ["rsf.csv", "headline.csv", "summary.md"] + [p.name for p in plots] + (["spectrum.csv"] if spiked else []),
    }
    write_json(out / "meta.json", meta)
    (out / "summary.md").write_text(_rsf_summary(head, meta, spiked, plots))
    return head[head["subspace"] != "random"].reset_index(drop=True)


def post_names(posts) -> list[str]:
    """Short distinct names of several posts (a folder's name, a Hub id's name), in order."""
    names = []
    for p in posts:
        name = Path(str(p).split("@")[0].rstrip("/")).name or str(p)
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def run_rsf_compare(
    base: str,
    posts: list[str],
    out: str | Path,
    calib: CalibrationSettings | None = None,
    settings: GridSettings = GridSettings(),
    allow_pickle: bool | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    overwrite: bool = False,
    k: int = 4,
    svd_r: int | None = 16,
) -> ProbeRun:
    """Many fine-tunes of one base side by side: the RSF grid of each post (checkpoints or LoRA adapters)
    against the base, read once per tensor for all of them with one set of activation statistics, into
    ``rsf.csv`` (a ``post`` column), ``compare.csv`` / ``compare.png`` (per post: read side vs the
    activation subspace and write side vs the prediction subspace at ``k``, with the null; and, unless
    ``svd_r`` is None, the SVD probe's mean scale and consistency over the layer matrices, from a second pass
    over the base shared by all posts into ``svd.csv``) and ``summary.md``. Each post's rows equal its
    single-pair probe's."""
    from rwedit.probes.grid import rsf_grid_posts

    t0 = time.perf_counter()
    final = check_output_folder(out, overwrite)
    base_ckpt = Checkpoint.open(base, allow_pickle=allow_pickle)
    names = post_names(posts)
    pairs = {n: CheckpointPair(base_ckpt, p, allow_pickle=allow_pickle) for n, p in zip(names, posts)}  # all checked
    roles = settings.roles or base_ckpt.layout.roles()
    skipped_ks = check_ks(settings, base_ckpt.layout, roles)
    with atomic_folder(final, overwrite) as tmp:
        stats = None
        if calib is not None and "activation" in settings.subspaces:
            stats = activation_stats_for(base_ckpt, calib, tuple(r for r in roles if r != "unembed"), cache_dir, progress)
        rows = list(rsf_grid_posts(base_ckpt, {n: pr.post for n, pr in pairs.items()}, stats, settings, progress))
        df = write_rows(rows, tmp / "rsf.csv", ["post", *COLUMNS])
        kk = claim_k(settings, k)
        table = compare_table(df, kk)
        if svd_r is not None:
            svd = _svd_posts(base_ckpt, {n: pr.post for n, pr in pairs.items()}, svd_r, progress)
            svd.to_csv(tmp / "svd.csv", index=False)
            means = svd.groupby("post")[["scale", "consistency"]].mean()
            table["svd_scale"] = table["post"].map(means["scale"])
            table["svd_consistency"] = table["post"].map(means["consistency"])
        table.to_csv(tmp / "compare.csv", index=False)
        plot = plot_compare(table, tmp / "compare.png")
        sources = {"base": pairs[names[0]].sources()["base"], **{n: pr.sources()["post"] for n, pr in pairs.items()}}
        write_json(tmp / "meta.json", {
            "rwedit_version": __version__, "probe": "rsf-compare", "base": base, "posts": dict(zip(names, map(str, posts))),
            "sources": sources, "model_type": base_ckpt.model_type, "grid": asdict(settings), "k": kk,
            "calibration": asdict(calib) if calib else None, "activation_stats": stats.meta if stats else None,
            "k_skipped": {str(x): n for x, n in skipped_ks.items()}, "seconds": round(time.perf_counter() - t0, 2)})
        (tmp / "summary.md").write_text("\n".join([
            f"# RSF of {len(names)} fine-tunes of `{base}`", "",
            f"RSF at k = {kk}, mean over layers and the roles of each pathway (± sem over matrices); the null is "
            f"the random-subspace null (mean ± sd; 1 is isotropic). One base read, one set of activation "
            f"statistics for all posts. Full grid: `rsf.csv` (a `post` column).", "",
            markdown_table(table), "", f"![{plot.stem}]({plot.name})", ""]))
    return ProbeRun(final, table)


def series_members(spec: str | list[str]) -> list[tuple[str, str, int]]:
    """(name, reference, step) of each member of a checkpoint series, ordered by step: a list (or a comma
    list, or a YAML file holding one) of folders / Hub ids with revisions, or a folder of checkpoint folders
    (a Trainer's ``checkpoint-N``). The step is the trailing number of the name or revision (else the
    position)."""
    import re as _re

    if isinstance(spec, str):
        path = Path(spec)
        if path.is_dir() and not (path / "config.json").exists():
            refs = [str(p) for p in path.iterdir() if (p / "config.json").exists() or (p / "adapter_config.json").exists()]
            if not refs:
                raise ConfigError(f"--series {spec}: the folder holds no checkpoint folders (with config.json)")
        elif path.suffix in (".yaml", ".yml") and path.is_file():
            import yaml

            refs = yaml.safe_load(path.read_text())
            if not isinstance(refs, list) or not refs:
                raise ConfigError(f"--series {spec}: expected a YAML list of checkpoints")
            refs = [str(r) for r in refs]
        else:
            refs = [r.strip() for r in spec.split(",") if r.strip()]
    else:
        refs = [str(r) for r in spec]
    if len(refs) < 1:
        raise ConfigError("--series: give at least one member")
    out = []
    for i, ref in enumerate(refs):
        m = _re.search(r"(\d+)$", ref.rstrip("/"))
        out.append((ref, int(m.group(1)) if m else i))
    out.sort(key=lambda x: x[1])
    names = post_names([r.replace("@", "_") for r, _ in out])
    return [(n, r, step) for n, (r, step) in zip(names, out)]


def run_rsf_series(
    base: str,
    members: str | list[str],
    out: str | Path,
    calib: CalibrationSettings | None = None,
    settings: GridSettings = GridSettings(),
    svd_r: int | str = 16,
    cache_dir: str | Path | None = None,
    progress: bool = True,
    k: int = 4,
    stop_after: int | None = None,
) -> ProbeRun:
    """The RSF grid and the SVD probe of each member of a checkpoint series against one base (one set of
    activation statistics, cached), one member at a time into ``OUT/members/NAME/{rsf,svd}``; a member whose
    folders are complete is not recomputed, so a killed run resumes where it stopped. ``series.csv`` (per
    member: name, step, commit or fingerprint, read/write-side RSF at ``k``, SVD scale and consistency) and
    ``series.png`` (each against the step) are rebuilt from the member folders."""
    out = Path(out)
    todo = series_members(members)
    base_ckpt = Checkpoint.open(base)
    for _, ref, _ in todo:  # every member fits the base before the first one is probed
        CheckpointPair(base_ckpt, ref)
    done_now = 0
    for name, ref, step in tqdm(todo, desc="series", disable=not progress):
        folder = out / "members" / name
        if (folder / "rsf" / "meta.json").exists() and (folder / "svd" / "meta.json").exists():
            continue
        if stop_after is not None and done_now >= stop_after:
            break
        if not (folder / "rsf" / "meta.json").exists():
            run_rsf_probe(base, ref, folder / "rsf", calib, settings, cache_dir=cache_dir, progress=False, overwrite=True)
        run_svd_probe(base, ref, folder / "svd", r=svd_r, progress=False, overwrite=True)
        done_now += 1
    rows = []
    kk = claim_k(settings, k)
    for name, ref, step in todo:
        folder = out / "members" / name
        if not (folder / "svd" / "meta.json").exists():
            continue
        meta = json.loads((folder / "rsf" / "meta.json").read_text())
        grid = pd.read_csv(folder / "rsf" / "rsf.csv").assign(post=name)
        claims = compare_table(grid, kk).set_index("claim")["rsf_mean"].to_dict()
        svd = pd.read_csv(folder / "svd" / "svd.csv")
        src = meta["sources"]["post"]
        rows.append({"member": name, "step": step, "ref": ref, "commit": src.get("commit"),
                     "fingerprint": src.get("fingerprint"), "k": kk,
                     **{f"rsf {c}": v for c, v in claims.items()},
                     "svd_scale": svd["scale"].mean(), "svd_consistency": svd["consistency"].mean()})
    table = pd.DataFrame(rows)
    if not table.empty:
        table.to_csv(out / "series.csv", index=False)
        plot_series(table, out / "series.png")
    return ProbeRun(out, table)


def plot_series(table: pd.DataFrame, path: Path) -> Path:
    """Each headline metric against the step: read- and write-side RSF side by side, then the SVD probe's."""
    plt = pyplot()
    rsf_cols = [c for c in table.columns if c.startswith("rsf ")]
    cols = rsf_cols + ["svd_scale", "svd_consistency"]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols) + 0.5, 3.2), squeeze=False)
    for ax, c in zip(axes[0], cols):
        ax.plot(table["step"], table[c], marker="o")
        if c in rsf_cols:
            ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(c.replace("rsf ", "RSF, "), fontsize=9)
        ax.set_xlabel("step")
    return save_figure(fig, path)


def _svd_posts(base: Checkpoint, posts: dict, r: int, progress: bool) -> pd.DataFrame:
    """The SVD probe of every layer matrix of each post, the base read once per tensor for all posts."""
    from rwedit.checkpoints import iter_posts

    views = base.layout.views([x for x in base.layout.roles() if x != "unembed"])
    rows = []
    for rps in tqdm(iter_posts(base, list(posts.values()), views), total=len(views), desc="SVD probe",
                    disable=not progress):
        for name, rp in zip(posts, rps):
            m = svd_structure(rp.base, rp.post, r=clip_rank(r, rp.base.shape))
            rows.append({"post": name, "layer": rp.layer, "role": rp.role, **{c: getattr(m, c) for c in SVD_COLUMNS[2:]}})
    return pd.DataFrame(rows)


#: the pathway claims a comparison shows: (label, side, subspace, roles)
CLAIMS = (("read side vs activation", "read", "activation", ("q", "k", "v", "up", "gate")),
          ("write side vs prediction", "write", "prediction", ("o", "down")))


def claim_k(settings: GridSettings, k: int) -> int:
    """The grid's largest k not above ``k`` (its smallest if all are): the k a comparison reports."""
    return max([x for x in settings.ks if x <= k] or [min(settings.ks)])


def compare_table(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per post and pathway claim: mean RSF at ``k`` over layers and roles, its sem over matrices, the null."""
    out = []
    for post, part in df.groupby("post", sort=False):
        for label, side, sub, roles in CLAIMS:
            sel = part[(part["side"] == side) & (part["subspace"] == sub) & (part["k"] == k) & part["role"].isin(roles)]
            sel = sel[sel["rsf"].notna()]
            if sel.empty:
                continue
            n = len(sel)
            out.append({"post": post, "claim": label, "k": k, "matrices": n, "rsf_mean": sel["rsf"].mean(),
                        "rsf_sem": sel["rsf"].std(ddof=1) / n ** 0.5 if n > 1 else float("nan"),
                        "null_mean": sel["null_mean"].mean(), "null_sd": sel["null_sd"].mean(),
                        "z_mean": sel["null_z"].mean()})
    return pd.DataFrame(out)


def plot_compare(table: pd.DataFrame, path: Path) -> Path:
    """Grouped bars: each post's read- and write-side RSF (± sem), the null band (mean ± 2 sd) behind them."""
    plt = pyplot()
    posts = list(dict.fromkeys(table["post"]))
    claims = list(dict.fromkeys(table["claim"]))
    fig, ax = plt.subplots(figsize=(1.3 * len(posts) + 3, 3.8))
    width = 0.8 / max(len(claims), 1)
    for j, claim in enumerate(claims):
        t = table[table["claim"] == claim].set_index("post").reindex(posts)
        x = [i + (j - (len(claims) - 1) / 2) * width for i in range(len(posts))]
        ax.bar(x, t["rsf_mean"], width, yerr=t["rsf_sem"], capsize=3, label=claim)
    lo = float((table["null_mean"] - 2 * table["null_sd"]).min())
    hi = float((table["null_mean"] + 2 * table["null_sd"]).max())
    ax.axhspan(max(lo, 1e-3), hi, color="grey", alpha=0.25, label="random null ±2 sd")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(posts)), posts, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"RSF at k = {int(table['k'].iloc[0])}")
    ax.set_title("fine-tunes of one base: where each changed the weights", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    if "svd_consistency" in table:  # the SVD probe beside it: a rotation of fixed subspaces has consistency ~0
        per = table.drop_duplicates("post").set_index("post").reindex(posts)
        ax2 = ax.inset_axes([1.45, 0.0, 0.45, 1.0])
        ax2.bar(range(len(posts)), per["svd_consistency"], color="C2")
        ax2.set_xticks(range(len(posts)), posts, rotation=20, ha="right", fontsize=8)
        ax2.set_title("SVD consistency (mean)", fontsize=9)
    return save_figure(fig, path)


def _rounding_floor(pair: CheckpointPair, roles, settings: GridSettings, df: pd.DataFrame) -> dict | None:
    """For a pair stored in two dtypes: the ‖ΔW‖ a bare conversion of the base shows, against the deltas."""
    if pair.dtype_mismatch is None:
        return None
    from rwedit.probes.norms import delta_norms

    norms = delta_norms(pair, roles, settings.layers, progress=False)
    ratios = sorted(n.delta_norm / n.rounding_floor for n in norms if n.rounding_floor > 0)
    return {"base": pair.dtype_mismatch[0], "post": pair.dtype_mismatch[1],
            "median_delta_over_floor": ratios[len(ratios) // 2] if ratios else None,
            "min_delta_over_floor": ratios[0] if ratios else None}


def _g(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def _rsf_summary(head, meta, spiked, plots) -> str:
    calib = meta["calibration"]
    lines = [
        f"# RSF probe: {meta['post']} vs {meta['base']}",
        "",
        f"Architecture `{meta['model_type']}`; rwedit {meta['rwedit_version']}; {meta['seconds']} s.",
        "RSF = share of ||dW||_F^2 inside a k-dim subspace divided by k/d (1 = isotropic). "
        + (f"`null_mean ± null_sd` is the RSF of the same delta against random subspaces "
           f"({meta['grid']['null_seeds']} seeds); " if meta['grid']['null_seeds'] else
           "`null_mean ± null_sd` is the exact null below (null_seeds = 0: no random subspaces were drawn); ")
        + "`z_mean` = (RSF − null)/sd averaged over layers. "
        "`null_exact_sd` is the exact sd of that null (its mean is exactly 1: Var f = 2k(d−k)/(d(d−1)(d+2))·(tr G² − 1/d) "
        "with G the delta's normalised Gram matrix), `exact_z_mean` the z against it.",
        "",
    ]
    if calib:
        st = meta["activation_stats"]
        lines.append(
            f"Activation subspaces: top eigenvectors of {'centred covariance' if meta['grid']['centred'] else 'E[a aᵀ] (uncentred)'} "
            f"of each module's inputs over {st['n_sequences'] * calib['seq_len']} tokens of `{calib['data']}` "
            f"(seq_len {calib['seq_len']}; cache {'hit' if st.get('cache', {}).get('hit') else 'miss'})."
        )
    else:
        lines.append("No calibration data given (--calib): activation-subspace rows are absent.")
    if meta.get("k_skipped"):
        lines.append("Skipped: " + "; ".join(f"k = {k} for {n} matrix side(s) whose dimension is not above it"
                                              for k, n in meta["k_skipped"].items())
                     + " (a k ≥ d subspace is the whole space: RSF = 1 by construction).")
    mm = meta.get("dtype_mismatch")
    if mm:
        lines.append(f"**Mixed precision**: base stored as {mm['base']}, post as {mm['post']}; each ‖ΔW‖ contains "
                     f"rounding noise. ‖ΔW‖ / (‖ΔW‖ of a bare conversion of the base): median "
                     f"{_g(mm['median_delta_over_floor'])}, min {_g(mm['min_delta_over_floor'])} "
                     f"(near 1 = the delta is rounding noise).")
    lines.append(f"Prediction subspace: top right singular vectors of W_U{' · diag(γ_final)' if meta['grid']['prediction_gain'] else ''} of the base.")
    lines += ["", "## Headline (mean over layers)", "", markdown_table(head[head["subspace"] != "random"]), ""]
    if spiked:
        import pandas as pd

        sp = pd.DataFrame(spiked).groupby(["input", "k"])[["topk_share", "participation_ratio"]].mean().reset_index()
        lines += ["## Spikedness of the activation spectra (mean over layers)", "", markdown_table(sp), ""]
    lines += ["## Files", ""] + [f"- `{f}`" for f in meta["files"]] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def run_svd_probe(
    base: str,
    post: str,
    out: str | Path,
    r: int | str = 64,
    method: str = "auto",
    roles: tuple[str, ...] | None = None,
    allow_pickle: bool | None = None,
    progress: bool = True,
    overwrite: bool = False,
    allow_dtype_mismatch: bool = False,
) -> ProbeRun:
    """HC's SVD structure probe per matrix: ``svd.csv``, plots and ``summary.md`` in ``out`` (written whole
    into a temporary folder and renamed into place; an existing ``out`` needs ``overwrite``)."""
    t0 = time.perf_counter()
    final = check_output_folder(out, overwrite)
    if r != "full" and (not isinstance(r, int) or r < 1):
        raise ConfigError(f"r = {r!r}: give a positive number of singular triplets, or 'full'")
    pair = CheckpointPair(Checkpoint.open(base, allow_pickle=allow_pickle), post, allow_pickle=allow_pickle,
                          allow_dtype_mismatch=allow_dtype_mismatch)
    roles = roles or tuple(x for x in pair.layout.roles() if x != "unembed")
    pair.layout.views(roles)  # an unknown role fails here, before any work
    with atomic_folder(final, overwrite) as out:
        head = _svd_probe_into(out, pair, base, post, r, method, roles, progress, t0)
    return ProbeRun(final, head)


def _svd_probe_into(out: Path, pair: CheckpointPair, base: str, post: str, r, method: str, roles, progress: bool,
                    t0: float) -> pd.DataFrame:
    rows = []
    n = len(pair.layout.views(roles))
    clipped: dict[str, int] = {}
    unchanged: list[str] = []
    for rp in tqdm(pair.iter_roles(roles), total=n, desc="SVD probe", disable=not progress):
        r_eff = clip_rank(r, rp.base.shape)  # a matrix smaller than r: all its triplets
        if r_eff != "full" and r_eff < int(r):
            clipped[f"{rp.layer}.{rp.role}"] = r_eff
        if torch.equal(rp.base, rp.post):
            unchanged.append(f"{rp.layer}.{rp.role}")
        m = svd_structure(rp.base, rp.post, r=r_eff, method=method)
        rows.append({"layer": rp.layer, "role": rp.role, **{c: getattr(m, c) for c in SVD_COLUMNS[2:]}})
    df = write_rows(rows, out / "svd.csv", SVD_COLUMNS)
    plots = _plot_svd(df, out)
    head = df.groupby("role", sort=False)[["scale", "scale_residual", "orth_U", "orth_V", "consistency",
                                           "reparam_error"]].agg(["mean", "std"])
    head.columns = [f"{a}_{b}" for a, b in head.columns]
    head = head.reset_index()
    meta = {"rwedit_version": __version__, "probe": "svd", "base": base, "post": post, "sources": pair.sources(),
            "model_type": pair.base.model_type, "r": r, "r_clipped_to_rank": clipped, "method": method,
            "roles": list(roles), "dtype_mismatch": list(pair.dtype_mismatch) if pair.dtype_mismatch else None,
            "unchanged_matrices": unchanged,
            "seconds": round(time.perf_counter() - t0, 2)}
    write_json(out / "meta.json", meta)
    text = [f"# SVD structure probe: {post} vs {base}", "",
            f"Top-{r} singular triplets ({method}); per matrix: least-squares scale s (σ' ≈ sσ) and residual, "
            "orthogonality ‖QᵀQ − I‖ of Q_U = UᵀU' and Q_V = VᵀV', consistency ‖Q_U − Q_V‖/‖Q_U‖ "
            "(small = one rotation acts on both sides), and the reparameterisation error of U Q Σ' (V Q)ᵀ." +
            (f" {len(clipped)} matrices have fewer than {r} singular values and use all of theirs." if clipped else "")
            + (f" **{len(unchanged)} of {len(rows)} matrices are identical in base and post** (no delta: their "
               f"scale 1 and zero rotation say nothing about post-training)." if unchanged else ""),
            "", "## Per role (mean and sd over layers)", "", markdown_table(head), "", "## Files", "",
            "- `svd.csv`", "- `meta.json`"] + [f"- `{p.name}`" for p in plots] + [""] + \
           [f"![{p.stem}]({p.name})" for p in plots]
    (out / "summary.md").write_text("\n".join(text) + "\n")
    return head


def _plot_svd(df, out: Path) -> list[Path]:
    from rwedit.probes.report import pyplot, save_figure

    plt = pyplot()
    paths = []
    for metric, ylabel in (("scale", "singular-value scale s"), ("consistency", "‖Q_U − Q_V‖ / ‖Q_U‖")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for role, g in df.groupby("role", sort=False):
            ax.plot(g["layer"], g[metric], marker="o", label=role)
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(f"{metric} per layer and role")
        ax.legend(fontsize=8, ncol=4)
        paths.append(save_figure(fig, out / f"svd_{metric}.png"))
    return paths
