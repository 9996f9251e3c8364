"""The probe stage's one entry point: :func:`run_probe` over a :class:`ProbeRequest` — a base against one post,
several fine-tunes side by side, or an ordered checkpoint series (checkpoints or LoRA adapters) — with the RSF
grid and the SVD structure probe of every post, one pass over the pair per probe with the base read once for
all posts. It returns the tables (:class:`ProbeResult`) and writes a folder only when asked."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pandas as pd
import torch
import yaml
from tqdm.auto import tqdm

from rwedit import __version__
from rwedit.checkpoints import Checkpoint, CheckpointPair, check_members, iter_posts
from rwedit.config import Config, option
from rwedit.data import CalibrationSettings, pack_tokens, read_texts  # noqa: F401  (CalibrationSettings re-exported)
from rwedit.errors import ConfigError
from rwedit.models import check_window, load_model_and_tokenizer
from rwedit.outputs import atomic_folder, check_not_input, check_output_folder, dumps, write_json, write_text
from rwedit.pages import write_pages
from rwedit.probes.activations import (ActivationStats, StatsSettings, collect_activation_stats,
                                       lookup_activation_stats, store_activation_stats)
from rwedit.probes.directions import (Direction, activation_directions, cards_frame, cards_html, delta_directions,
                                     cached_explain, prediction_directions)
from rwedit.probes.grid import (GridSettings, check_ks, columns, null_methods, prediction_from_pair, read_unembedding,
                                rsf_grid_posts)
from rwedit.probes.norms import delta_norms, delta_norms_posts
from rwedit.probes.report import markdown_table, plot_rsf_heatmaps, plot_rsf_vs_k, pyplot, rsf_headline, save_figure
from rwedit.probes.svd import DEFAULT_R, SVDMetrics, clip_rank, svd_structure
from rwedit.runtime import release_memory, runtime, stage, using
from rwedit.stream import ordered_map

SVD_COLUMNS = ("layer", "role", "r", "method", "scale", "scale_residual", "orth_U", "orth_V", "consistency",
               "reparam_error", "truncation_floor")


def calibration_pass(ckpt: Checkpoint, calib: CalibrationSettings):
    """The base model, its tokenizer and the packed calibration tokens (n × seq_len)."""
    check_window(ckpt.config, calib.seq_len, "calibration.seq_len")
    model, tok = load_model_and_tokenizer(ckpt, calib.device, calib.dtype, calib.placement)
    ids = pack_tokens(tok, read_texts(calib.data, field=calib.field), calib.seq_len, calib.tokens)
    return model, tok, ids


def activation_stats_for(ckpt: Checkpoint, calib: CalibrationSettings, roles: tuple[str, ...]) -> ActivationStats:
    """Collect (or reuse from the run-wide cache folder) second moments of the base model's reader inputs."""
    model, tok, ids = calibration_pass(ckpt, calib)
    settings = StatsSettings(roles=roles, seq_len=calib.seq_len, batch_size=calib.batch_size)
    rt = runtime()
    folder, stats, note = lookup_activation_stats(model, ids, settings, rt.cache_dir)
    if stats is None:
        stats = collect_activation_stats(model, ids, settings, str(calib.data), rt.progress)
        del model, tok  # loaded for the statistics alone: gone before their decompositions and write
        release_memory()
        stats = store_activation_stats(stats, folder, note, rt.progress)
    return stats


def spikedness_rows(stats: ActivationStats, ks: tuple[int, ...], centred: bool) -> list[dict]:
    """Top-k variance share and participation ratio of every collected input's spectrum."""
    from rwedit.architectures import GROUP_ROLE

    rows = []
    for layer, group in sorted(stats.sums):
        spec = stats.spectrum(layer, GROUP_ROLE[group], centred, top=0)
        for k in sorted({min(k, spec.d) for k in ks}):
            s = spec.spikedness(k)
            rows.append({"layer": layer, "input": group, "k": k, "d": spec.d, "topk_share": s["topk_share"],
                         "participation_ratio": s["participation_ratio"], "top_eigenvalue": float(spec.eigenvalues[0])})
    return rows


@dataclass(frozen=True)
class SvdSettings(Config):
    """The SVD structure probe (He & Cao) of every layer matrix (a probe request's ``svd:``, ``rwedit svd``)."""

    r: int | str = option(DEFAULT_R, help=f"top-r singular triplets of each matrix (all of a smaller one's), "
                          f"or 'full' (default {DEFAULT_R})")
    method: str = option("auto", help="full SVD, the certified randomized top-r SVD (refused where it cannot "
                         "meet its error bound), or auto (full when min(d) <= 1024, else randomized with the full "
                         "SVD as fallback)")
    roles: tuple[str, ...] | None = option(None, help="roles of the SVD probe (default: every layer role)")
    null_seeds: int = option(0, help="same-norm random updates of the base (Gaussian and rotation) measured per "
                             "matrix and seed, the null HC's verdicts are judged against (svd_null.csv; 0: none)")

    def __post_init__(self):
        if self.null_seeds < 0:
            raise ConfigError(f"null_seeds = {self.null_seeds}: give 0 (no null) or a number of seeds")
        if self.r != "full" and (not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1):
            raise ConfigError(f"r = {self.r!r}: give a positive number of singular triplets, or 'full'")
        if self.method not in ("auto", "full", "lowrank"):
            raise ConfigError(f"method = {self.method!r}: choose auto, full or lowrank")


@dataclass(frozen=True)
class NormsSettings(Config):
    """The norms probe: ‖W_base‖, ‖W_post‖ and ‖ΔW‖ of every role (``deltas.csv``), one streamed pass."""

    roles: tuple[str, ...] | None = option(None, help="roles (default: every role, unembed included)")
    layers: tuple[int, ...] | None = option(None, help="layers (default: all)")


@dataclass(frozen=True)
class ProbeRequest(Config):
    """One probe run: a base against one post, several side by side, or an ordered checkpoint series
    (checkpoints or LoRA adapters); every setting holds in every mode (progress, cache, pickle: rwedit.runtime)."""

    base: str = option(help="the base: a checkpoint folder or Hub id[@revision]")
    posts: tuple[str, ...] = option((), help="the post side: one, or several fine-tunes of the base side by side "
                                    "(checkpoint folders, Hub ids, LoRA adapter folders)")
    series: str | None = option(None, help="instead of posts, a checkpoint series ordered by step: a comma list, "
                                "a YAML list file or a folder of checkpoint folders (checkpoint-N); with `out`, "
                                "probed member by member into OUT/members/ and resumable")
    calibration: CalibrationSettings | None = option(None, help="calibration data of the activation subspaces "
                                                     "(unset: no activation rows)")
    grid: GridSettings | None = option(factory=GridSettings, help="the RSF grid (null: no RSF probe)")
    svd: SvdSettings | None = option(factory=SvdSettings, help="the SVD structure probe (null: none)")
    norms: NormsSettings | None = option(None, help="the per-role weight and delta norms (unset: none)")
    claim_k: int = option(4, help="k of the per-post claims table (the grid's largest k not above it)")
    cards: int = option(4, help="direction cards: the top-m directions of every probed cell (activation, ΔW's "
                        "singular directions, prediction) shown by the calibration texts that drive them and the "
                        "tokens they write (directions.jsonl, summary.html); 0: none")
    out: str | None = option(None, path=True, output=True,
                             help="write the results into this folder (unset: only return them)")
    overwrite: bool = option(False, help="replace an existing output folder")
    allow_dtype_mismatch: bool = option(False, help="probe a post stored in another dtype than the base (the "
                                        "rounding-noise floor is reported next to the deltas)")
    stop_after: int | None = option(None, help="a series: probe at most this many new members (a later run resumes)")

    def __post_init__(self):
        posts = (self.posts,) if isinstance(self.posts, (str, Path)) else self.posts
        object.__setattr__(self, "posts", tuple(map(str, posts)))
        if self.out is not None:
            object.__setattr__(self, "out", str(self.out))
        if bool(self.series) == bool(self.posts):
            raise ConfigError("give --post / posts (one or several fine-tunes) or --series / series (a checkpoint "
                              "series), not both and not neither")
        if self.grid is None and self.svd is None and self.norms is None:
            raise ConfigError("grid, svd and norms are all off: nothing to probe")

    def inputs(self) -> list[str]:
        """Everything the probe reads (base, posts, the series, calibration data): never its output folder."""
        return [self.base, *self.posts, *(self.series.split(",") if self.series else []), *self.input_paths()]


@dataclass(frozen=True)
class ProbeResult:
    """What :func:`run_probe` measured: ``rsf``, ``svd`` and ``norms`` with a ``post`` column; ``claims``, per post
    (a series: per step) the pathway claims at one k and the SVD means; ``headline``, a single post's grid
    averaged over layers (else its SVD metrics per role); ``meta``; ``folder`` (None when none was written)."""

    rsf: pd.DataFrame | None
    svd: pd.DataFrame | None
    claims: pd.DataFrame
    headline: pd.DataFrame | None
    meta: dict
    folder: Path | None = None
    norms: pd.DataFrame | None = None
    cards: pd.DataFrame | None = None  # the direction cards (:mod:`rwedit.probes.directions`), one row a direction

    @property
    def table(self) -> pd.DataFrame:
        """The table a command shows: a single post's headline, else the per-post claims."""
        return self.headline if self.headline is not None else self.claims


@dataclass
class _Run:
    """A request opened and checked: the base, every post's pair, the roles and the statistics."""

    rq: ProbeRequest
    base: Checkpoint
    pairs: dict[str, CheckpointPair]
    roles: tuple[str, ...]
    svd_roles: tuple[str, ...]
    k_skipped: dict[int, int]
    stats: ActivationStats | None
    t0: float

    def measure(self, names: list[str]) -> tuple[list[dict], list[dict], dict, dict, dict]:
        """The grid rows and the SVD rows of the named posts, each with its ``post``, in the order of the pass
        (one pass over the pair per probe, the base read once for all), the matrices whose rank clipped r,
        each post's unchanged matrices and its norms."""
        rq, posts = self.rq, {n: self.pairs[n].post for n in names}
        rsf = list(rsf_grid_posts(self.base, posts, self.stats, rq.grid)) if rq.grid is not None else []
        svd: list[dict] = []
        clipped: dict[str, int] = {}
        unchanged: dict[str, list[str]] = {n: [] for n in names}
        if rq.svd is not None:
            r, views = rq.svd.r, self.base.layout.views(self.svd_roles)

            def structure(rp) -> SVDMetrics:  # in a worker: one matrix per core
                return svd_structure(rp.base, rp.post, r=clip_rank(r, rp.base.shape), method=rq.svd.method,
                                     null_seeds=range(rq.svd.null_seeds), null_key=f"{rp.layer}.{rp.role}")

            pairs = ((n, rp) for rps in iter_posts(self.base, list(posts.values()), views) for n, rp in zip(names, rps))
            for name, rp, m in tqdm(ordered_map(lambda x: (*x, structure(x[1])), pairs), total=len(views) * len(names),
                                    desc="SVD probe", disable=not runtime().progress):
                if r != "full" and m.r < int(r):  # a matrix smaller than r: all its triplets
                    clipped[f"{rp.layer}.{rp.role}"] = m.r
                if torch.equal(rp.base, rp.post):
                    unchanged[name].append(f"{rp.layer}.{rp.role}")
                cell = {"post": name, "layer": rp.layer, "role": rp.role}
                svd += [{**cell, **{c: getattr(m, c) for c in SVD_COLUMNS[2:]}}] + [{**cell, **x} for x in m.null]
        norms = delta_norms_posts({n: self.pairs[n] for n in names}, rq.norms.roles, rq.norms.layers) \
            if rq.norms is not None else {}
        return rsf, svd, clipped, unchanged, norms

    def settings_meta(self) -> dict:
        rq = self.rq
        return {"rwedit_version": __version__,
                "probe": "+".join(p for p, s in (("rsf", rq.grid), ("svd", rq.svd), ("norms", rq.norms)) if s),
                "base": rq.base, "model_type": self.base.model_type,
                **({"grid": asdict(rq.grid), "calibration": asdict(rq.calibration) if rq.calibration else None,
                    "activation_stats": self.stats.meta if self.stats else None,
                    "k_skipped": {str(k): n for k, n in self.k_skipped.items()}} if rq.grid else {}),
                **({"svd": asdict(rq.svd)} if rq.svd else {}), **({"norms": asdict(rq.norms)} if rq.norms else {})}


def run_probe(request: ProbeRequest) -> ProbeResult:
    """Probe the request's posts against its base (:class:`ProbeRequest`). Every post is opened and checked
    against the base before any heavy work; the activation statistics are collected once."""
    rq, t0 = request, time.perf_counter()
    if rq.out is not None:
        check_not_input(rq.out, rq.inputs())
    final = check_output_folder(rq.out, rq.overwrite, inputs=rq.inputs()) if rq.out is not None and not rq.series \
        else None
    base = Checkpoint.open(rq.base)
    members = check_members(series_members(rq.series) if rq.series else
                            [(n, p, None) for n, p in zip(post_names(rq.posts), rq.posts)], base, rq)
    pairs = {n: CheckpointPair(base, ref, allow_dtype_mismatch=rq.allow_dtype_mismatch) for n, ref, _ in members}
    roles = tuple((rq.grid.roles if rq.grid else None) or base.layout.roles())
    k_skipped = check_ks(rq.grid, base.layout, roles) if rq.grid else {}
    svd_roles = tuple((rq.svd.roles if rq.svd else None) or [x for x in base.layout.roles() if x != "unembed"])
    base.layout.views(svd_roles)  # an unknown role fails here, before any work
    stats = None
    if rq.calibration is not None and rq.grid is not None and "activation" in rq.grid.subspaces:
        with stage("probe: statistics"):
            stats = activation_stats_for(base, rq.calibration, tuple(r for r in roles if r != "unembed"))
    run = _Run(rq, base, pairs, roles, svd_roles, k_skipped, stats, t0)
    if rq.series:
        return _run_series(run, members)
    with stage("probe: RSF grid" if rq.svd is None and rq.norms is None else "probe: pass"):
        measured = run.measure(list(pairs))
    with stage("probe: report"):
        if final is None:
            return _write(run, members, measured, None)
        with atomic_folder(final, rq.overwrite, inputs=rq.inputs()) as tmp:
            res = _write(run, members, measured, tmp)
    return replace(res, folder=final)


def _write(run: _Run, members: list, measured: tuple, out: Path | None) -> ProbeResult:
    """The results of one post or several, and with ``out`` their folder: ``rsf.csv``, ``svd.csv``, ``deltas.csv``
    (a ``post`` column when several), ``meta.json``, ``summary.md``/``.html``; one post adds ``headline.csv``,
    ``spectrum.csv``, plots and ``directions.jsonl``, several ``compare.csv``/``compare.png``."""
    rq, (rows, svd_rows, clipped, unchanged, norms) = run.rq, measured
    null_rows = [r for r in svd_rows if "null" in r]  # the same-norm null's draws (SvdSettings.null_seeds)
    svd_rows = [r for r in svd_rows if "null" not in r]
    names = [n for n, _, _ in members]
    one = len(names) == 1
    rsf = pd.DataFrame(rows, columns=["post", *columns(rows)]) if rq.grid else None
    svd = pd.DataFrame(svd_rows, columns=["post", *SVD_COLUMNS]) if rq.svd else None
    claims = _claims(run, names, rsf, svd)
    tables = {"rsf.csv": rsf, "headline.csv": None, "svd.csv": svd, "deltas.csv": _norms_frame(norms),
              "svd_null.csv": pd.DataFrame(null_rows) if null_rows else None}
    meta, head, svd_head, spiked, cards, plots = run.settings_meta(), None, None, [], [], []
    if rq.grid is not None:
        meta["grid"]["null_methods"] = null_methods(rows, rq.grid)
    if one:
        (name, ref, _), pair = members[0], run.pairs[names[0]]
        tables = {f: t if t is None else t.drop(columns="post") for f, t in tables.items()}
        meta.update(post=str(ref), sources=pair.sources(),
                    dtype_mismatch=_rounding_floor(pair, run.roles, rq.grid.layers if rq.grid else None))
        if rq.grid is not None:
            head = tables["headline.csv"] = rsf_headline(tables["rsf.csv"])
            spiked = spikedness_rows(run.stats, rq.grid.ks, rq.grid.centred) if run.stats is not None else []
            cards = _cards(run, name) if rq.cards > 0 else []
        if rq.svd is not None:
            meta["svd"] = {**meta["svd"], "r_clipped_to_rank": clipped, "unchanged_matrices": unchanged[name]}
            svd_head = svd.groupby("role", sort=False)[["scale", "scale_residual", "orth_U", "orth_V", "consistency",
                                                        "reparam_error"]].agg(["mean", "std"])
            svd_head.columns = [f"{a}_{b}" for a, b in svd_head.columns]
            svd_head = svd_head.reset_index()
    else:
        sources = {n: run.pairs[n].sources()["post"] for n in names}
        meta.update(probe="rsf-compare", posts={n: str(ref) for n, ref, _ in members},
                    sources={"base": run.pairs[names[0]].sources()["base"], **sources},
                    k=claim_k(rq.grid, rq.claim_k) if rq.grid else None)
        tables["compare.csv"] = claims
    files = [f for f, t in tables.items() if t is not None] + (["directions.jsonl"] if cards else [])
    if out is not None:
        for f, t in tables.items():
            if t is not None:
                t.to_csv(out / f, index=False)
        if one and rq.grid is not None:
            plots += plot_rsf_heatmaps(tables["rsf.csv"], out, claim_k(rq.grid, rq.claim_k))  # at the claims' k
            if (tables["rsf.csv"]["subspace"] != "random").any():  # random subspaces alone draw no curve
                plots.append(plot_rsf_vs_k(tables["rsf.csv"], out))
        if one and rq.svd is not None:
            plots += _plot_svd(tables["svd.csv"], out)
        if not one and "rsf_mean" in claims:
            plots.append(plot_compare(claims, out / "compare.png"))
        if spiked:
            pd.DataFrame(spiked).to_csv(out / "spectrum.csv", index=False)
        if cards:
            write_text(out / "directions.jsonl", "".join(dumps(c.row()) + "\n" for c in cards))
    meta["seconds"] = round(time.perf_counter() - run.t0, 2)
    if one:
        meta["files"] = (files + ["summary.md", "summary.html"] + [p.name for p in plots]
                         + (["spectrum.csv"] if spiked else []))
    if out is not None:
        write_json(out / "meta.json", meta)
        write_pages(out, [_summary(meta, claims, head, spiked, svd_head, len(svd_rows), plots)], name="summary",
                    extra_html=cards_html([c.row() for c in cards]))
    headline = svd_head if head is None else head[head["subspace"] != "random"].reset_index(drop=True)
    return ProbeResult(rsf, svd, claims, headline, meta, out, _norms_frame(norms),
                       cards_frame(cards) if cards else None)


def _cards(run: _Run, name: str) -> list:
    """The direction cards of one post: every probed cell's top activation, ΔW-singular and prediction directions,
    explained by one pass over the calibration tokens and the logit lens."""
    rq, pair, m = run.rq, run.pairs[name], run.rq.cards
    dirs: list[Direction] = []
    for rp in pair.iter_roles(tuple(r for r in rq.grid.roles or run.roles if r != "unembed"), rq.grid.layers):
        if run.stats is not None:
            dirs += activation_directions(run.stats, rp.layer, rp.role, m, rq.grid.centred)
        dirs += delta_directions(rp.delta, rp.layer, rp.role, m)
    dirs += prediction_directions(prediction_from_pair(pair, top=m), m)
    try:  # the lens as the model computes logits: the final norm's gain folded in where it has one
        unembed = read_unembedding(run.base, gain=True)
    except ConfigError:
        unembed = read_unembedding(run.base)
    load = (lambda: calibration_pass(run.base, rq.calibration)) if rq.calibration is not None else None
    return cached_explain(run.stats, dirs, load, progress=runtime().progress, unembed=unembed)


def _norms_frame(norms: dict[str, list]) -> pd.DataFrame | None:
    """The norms of each post as one table (a ``post`` column; ``layer`` is NA for unembed)."""
    if not norms:
        return None
    df = pd.DataFrame([{"post": n, **asdict(r), "relative": r.relative} for n, rows in norms.items() for r in rows])
    return df.astype({"layer": "Int64"})


def _claims(run: _Run, names: list[str], rsf: pd.DataFrame | None, svd: pd.DataFrame | None) -> pd.DataFrame:
    """Per post: the pathway claims at the request's k (:func:`compare_table`) and the SVD probe's mean scale
    and consistency over the layer matrices (``rsf``, ``svd``: with a ``post`` column)."""
    rq = run.rq
    table = compare_table(rsf, claim_k(rq.grid, rq.claim_k)) if rsf is not None else pd.DataFrame({"post": names})
    if svd is not None and not table.empty:
        means = svd.groupby("post")[["scale", "consistency"]].mean()
        table["svd_scale"] = table["post"].map(means["scale"])
        table["svd_consistency"] = table["post"].map(means["consistency"])
    return table


def _run_series(run: _Run, members: list[tuple[str, str, int]]) -> ProbeResult:
    """A checkpoint series member by member: with ``out``, each member's folder ``OUT/members/NAME`` (a complete
    one is reused: a stopped run resumes) and ``series.csv``/``.png`` (claims and SVD means by step)."""
    rq, out = run.rq, None if run.rq.out is None else Path(run.rq.out)
    kk = claim_k(rq.grid, rq.claim_k) if rq.grid else None
    results: dict[str, ProbeResult] = {}
    done_now = 0
    for name, ref, step in tqdm(members, desc="series", disable=not runtime().progress):
        folder = None if out is None else out / "members" / name
        if folder is not None and (folder / "meta.json").exists():
            results[name] = _read_member(folder, name, kk)
            continue
        if rq.stop_after is not None and done_now >= rq.stop_after:
            break
        with using(progress=False):
            measured = run.measure([name])
        if folder is None:
            results[name] = _write(run, [(name, ref, step)], measured, None)
        else:
            with atomic_folder(folder, overwrite=True) as tmp:
                _write(run, [(name, ref, step)], measured, tmp)
            results[name] = _read_member(folder, name, kk)  # as a resumed run reads it
        done_now += 1
    rows = []
    for name, ref, step in members:
        if name not in results:
            continue
        res = results[name]
        src = res.meta["sources"]["post"]
        claims = res.claims.set_index("claim")["rsf_mean"].to_dict() if "claim" in res.claims else {}
        rows.append({"member": name, "step": step, "ref": ref, "commit": src.get("commit"),
                     "fingerprint": src.get("fingerprint"), "k": kk, **{f"rsf {c}": v for c, v in claims.items()},
                     **({"svd_scale": res.svd["scale"].mean(), "svd_consistency": res.svd["consistency"].mean()}
                        if res.svd is not None else {})})
    table = pd.DataFrame(rows)
    if out is not None and not table.empty:
        table.to_csv(out / "series.csv", index=False)
        plot_series(table, out / "series.png")
    frames = [r.rsf for r in results.values() if r.rsf is not None]
    svds = [r.svd for r in results.values() if r.svd is not None]
    meta = {**run.settings_meta(), "probe": "rsf-series", "members": {n: ref for n, ref, _ in members},
            "seconds": round(time.perf_counter() - run.t0, 2)}
    return ProbeResult(pd.concat(frames) if frames else None, pd.concat(svds) if svds else None, table, None, meta, out)


def _read_member(folder: Path, name: str, k: int | None) -> ProbeResult:
    """A series member's results read back from its folder (claims at ``k`` from its ``rsf.csv``)."""
    meta = json.loads((folder / "meta.json").read_text())
    rsf = pd.read_csv(folder / "rsf.csv") if (folder / "rsf.csv").exists() else None
    svd = pd.read_csv(folder / "svd.csv") if (folder / "svd.csv").exists() else None
    claims = compare_table(rsf.assign(post=name), k) if rsf is not None and k is not None else pd.DataFrame()
    return ProbeResult(None if rsf is None else rsf.assign(post=name)[["post", *rsf.columns]],
                       None if svd is None else svd.assign(post=name)[["post", *SVD_COLUMNS]], claims, None, meta, folder)


def post_names(posts) -> list[str]:
    """Short distinct names of several posts (a folder's name, a Hub id's name), in order."""
    names = []
    for p in posts:
        name = Path(str(p).split("@")[0].rstrip("/")).name or str(p)
        names.append(name if name not in names else f"{name}_{len(names)}")
    return names


def series_members(spec: str | list[str]) -> list[tuple[str, str, int]]:
    """(name, reference, step) of each member of a series, by step: a list (comma list, YAML list file) of folders
    or Hub ids, or a folder of ``checkpoint-N`` folders; the step is the trailing number (else the position)."""
    if isinstance(spec, str):
        path = Path(spec)
        if path.is_dir() and not (path / "config.json").exists():
            refs = [str(p) for p in path.iterdir() if (p / "config.json").exists() or (p / "adapter_config.json").exists()]
            if not refs:
                raise ConfigError(f"--series {spec}: the folder holds no checkpoint folders (with config.json)")
        elif path.suffix in (".yaml", ".yml") and path.is_file():
            refs = yaml.safe_load(path.read_text())
            if not isinstance(refs, list) or not refs:
                raise ConfigError(f"--series {spec}: expected a YAML list of checkpoints")
            refs = [str(r) for r in refs]
        else:
            refs = [r.strip() for r in spec.split(",") if r.strip()]
    else:
        refs = [str(r) for r in spec]
    if not refs:
        raise ConfigError("--series: give at least one member")
    steps = [(ref, int(m.group(1)) if (m := re.search(r"(\d+)$", ref.rstrip("/"))) else i)
             for i, ref in enumerate(refs)]
    steps.sort(key=lambda x: x[1])
    return [(n, r, step) for n, (r, step) in zip(post_names([r.replace("@", "_") for r, _ in steps]), steps)]


#: the SVD probe's per-matrix means as plotted: axis label (its unit) and the reference value of no change
SVD_AXES = {"scale": ("singular-value scale s (σ′/σ; 1 = unchanged)", 1.0),
            "consistency": ("consistency ‖Q_U − Q_V‖ / ‖Q_U‖\n(0 = one rotation on both sides)", 0.0)}


def plot_series(table: pd.DataFrame, path: Path) -> Path:
    """Each headline metric against the step (whole steps): read- and write-side RSF side by side on one scale,
    then the SVD probe's, each with its reference value (RSF 1 = isotropic, scale 1, consistency 0)."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    rsf_cols = [c for c in table.columns if c.startswith("rsf ")]
    cols = rsf_cols + [c for c in ("svd_scale", "svd_consistency") if c in table]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols) + 0.5, 3.4), squeeze=False, layout="constrained")
    for ax, c in zip(axes[0], cols):
        if c in rsf_cols[1:]:  # the RSF claims on one scale
            ax.sharey(axes[0][0])
        ax.plot(table["step"], table[c], marker="o")
        label, ref = (f"RSF at k = {table['k'].iloc[0]} (1 = isotropic)", 1.0) if c in rsf_cols else \
            SVD_AXES[c.removeprefix("svd_")]
        ax.axhline(ref, color="k", lw=0.8)
        ax.set_title(c.replace("rsf ", "RSF, ").replace("svd_", "SVD "), fontsize=9)
        ax.set_ylabel(label, fontsize=8)
        ax.set_xlabel("step")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return save_figure(fig, path)


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
    """Bars from isotropy (RSF 1): each post's read- and write-side RSF (± sem) over the null band (mean ± 2
    sd); beside it the SVD probe's mean consistency (a rotation of fixed subspaces has ~0); the legend below."""
    from rwedit.probes.report import plain_log

    plt = pyplot()
    posts = list(dict.fromkeys(table["post"]))
    claims = list(dict.fromkeys(table["claim"]))
    svd = "svd_consistency" in table
    fig, axes = plt.subplots(1, 1 + svd, figsize=(1.2 * len(posts) * (1.5 if svd else 1) + 3.5, 4.2), squeeze=False,
                             width_ratios=[2, 1][:1 + svd], layout="constrained")
    ax = axes[0][0]
    width = 0.8 / max(len(claims), 1)
    for j, claim in enumerate(claims):
        t = table[table["claim"] == claim].set_index("post").reindex(posts)
        x = [i + (j - (len(claims) - 1) / 2) * width for i in range(len(posts))]
        ax.bar(x, t["rsf_mean"] - 1, width, bottom=1, yerr=t["rsf_sem"], capsize=3, label=claim)
    lo = float((table["null_mean"] - 2 * table["null_sd"]).min())
    hi = float((table["null_mean"] + 2 * table["null_sd"]).max())
    ax.axhspan(max(lo, 1e-3), hi, color="grey", alpha=0.25, label="random null ±2 sd")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    plain_log(ax)
    ax.set_xticks(range(len(posts)), posts, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(f"RSF at k = {int(table['k'].iloc[0])} (1 = isotropic)")
    ax.set_title("RSF per pathway (± sem over matrices)", fontsize=9)
    if svd:
        per = table.drop_duplicates("post").set_index("post").reindex(posts)
        label, ref = SVD_AXES["consistency"]
        ax2 = axes[0][1]
        ax2.bar(range(len(posts)), per["svd_consistency"], color="C2")
        ax2.axhline(ref, color="k", lw=0.8)
        ax2.set_xticks(range(len(posts)), posts, rotation=20, ha="right", fontsize=8)
        ax2.set_ylabel(label, fontsize=8)
        ax2.set_title("SVD probe (mean over matrices)", fontsize=9)
    fig.legend(*ax.get_legend_handles_labels(), fontsize=7, loc="outside lower center", ncol=len(claims) + 1)
    fig.suptitle("fine-tunes of one base: where each changed the weights", fontsize=10)
    return save_figure(fig, path)


def _rounding_floor(pair: CheckpointPair, roles, layers) -> dict | None:
    """For a pair stored in two dtypes: the ‖ΔW‖ a bare conversion of the base shows, against the deltas."""
    if pair.dtype_mismatch is None:
        return None
    with using(progress=False):
        norms = delta_norms(pair, roles, layers)
    ratios = sorted(n.delta_norm / n.rounding_floor for n in norms if n.rounding_floor > 0)
    return {"base": pair.dtype_mismatch[0], "post": pair.dtype_mismatch[1],
            "median_delta_over_floor": ratios[len(ratios) // 2] if ratios else None,
            "min_delta_over_floor": ratios[0] if ratios else None}


def _g(x) -> str:
    return "–" if x is None else f"{x:.3g}"


def _summary(meta: dict, claims, head, spiked, svd_head, n_svd: int, plots) -> str:
    """``summary.md``: what each probe measured, how, and its headline table; several posts: their claims."""
    if "posts" in meta:
        svd = meta.get("svd")
        lines = [f"# RSF of {len(meta['posts'])} fine-tunes of `{meta['base']}`", "",
                 f"RSF at k = {meta['k']}, mean over layers and the roles of each pathway (± sem over matrices); the "
                 f"null is the random-subspace null (mean ± sd; 1 is isotropic). One base read, one set of activation "
                 f"statistics for all posts. Full grid: `rsf.csv` (a `post` column)."
                 + (f" SVD probe: top-{svd['r']} singular triplets of each matrix (`svd.csv`; the table shows its "
                    f"mean scale and consistency)." if svd else ""), "", markdown_table(claims), ""]
    else:
        what = "RSF probe" if "grid" in meta else "SVD structure probe" if "svd" in meta else "Weight-delta norms"
        lines = [f"# {what}: {meta['post']} vs {meta['base']}", "",
                 f"Architecture `{meta['model_type']}`; rwedit {meta['rwedit_version']}; {meta['seconds']} s.", ""]
        if "grid" in meta:
            lines += _rsf_lines(head, meta, spiked)
        if "svd" in meta:
            lines += _svd_lines(meta, svd_head, n_svd)
        lines += ["## Files", ""] + [f"- `{f}`" for f in meta["files"]] + [""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def _rsf_lines(head, meta: dict, spiked) -> list[str]:
    calib = meta["calibration"]
    lines = [
        "RSF = share of ||dW||_F^2 inside a k-dim subspace divided by k/d (1 = isotropic). "
        + (f"`null_mean ± null_sd` is the RSF of the same delta against random subspaces "
           f"({meta['grid']['null_seeds']} seeds); " if meta['grid']['null_seeds'] else
           "`null_mean ± null_sd` is the exact null below (null_seeds = 0: no random subspaces were drawn); ")
        + "`z_mean` = (RSF − null)/sd averaged over layers. "
        "`null_exact_sd` is the exact sd of that null (its mean is exactly 1: Var f = 2k(d−k)/(d(d−1)(d+2))·(tr G² − 1/d) "
        "with G the delta's normalised Gram matrix), `exact_z_mean` the z against it."
        + (f" tr G² is sketched for {n} matrices (`null_rel_error`: a 95 % bound on that sd's relative error)."
           if (n := meta["grid"].get("null_methods", {}).get("sketch")) else ""),
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
        sp = pd.DataFrame(spiked).groupby(["input", "k"])[["topk_share", "participation_ratio"]].mean().reset_index()
        lines += ["## Spikedness of the activation spectra (mean over layers)", "", markdown_table(sp), ""]
    return lines


def _svd_lines(meta: dict, head, n: int) -> list[str]:
    svd = meta["svd"]
    r, clipped, unchanged = svd["r"], svd["r_clipped_to_rank"], svd["unchanged_matrices"]
    return ["## SVD structure (He & Cao)", "",
            f"Top-{r} singular triplets ({svd['method']}); per matrix: least-squares scale s (σ' ≈ sσ) and residual, "
            "orthogonality ‖QᵀQ − I‖ of Q_U = UᵀU' and Q_V = VᵀV', consistency ‖Q_U − Q_V‖/‖Q_U‖ "
            "(small = one rotation acts on both sides), and the reparameterisation error of U Q Σ' (V Q)ᵀ." +
            (f" {len(clipped)} matrices have fewer than {r} singular values and use all of theirs." if clipped else "")
            + (f" **{len(unchanged)} of {n} matrices are identical in base and post** (no delta: their "
               f"scale 1 and zero rotation say nothing about post-training)." if unchanged else ""),
            "", "### Per role (mean and sd over layers)", "", markdown_table(head), ""]


def _plot_svd(df, out: Path) -> list[Path]:
    """Scale and consistency per layer (whole layers) and role, with the value of no change marked."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    paths = []
    for metric, (ylabel, ref) in SVD_AXES.items():
        fig, ax = plt.subplots(figsize=(7, 4.2), layout="constrained")
        for role, g in df.groupby("role", sort=False):
            ax.plot(g["layer"], g[metric], marker="o", label=role)
        ax.axhline(ref, color="k", lw=0.8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        ax.set_ylabel(ylabel)
        ax.set_title(f"SVD probe: {metric} per layer and role", fontsize=10)
        fig.legend(*ax.get_legend_handles_labels(), fontsize=8, loc="outside lower center", ncol=8)
        paths.append(save_figure(fig, out / f"svd_{metric}.png"))
    return paths
