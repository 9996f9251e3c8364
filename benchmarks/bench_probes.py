#!/usr/bin/env python
"""Benchmark the probes: the RSF grid over a ~1.1B pair, the cost of activation statistics, SVD lowrank vs full.

What it measures, and why
-------------------------
1. RSF grid (``rwedit.probes.grid.rsf_grid_pair``) on the synthetic ~1.1B Llama pair (TinyLlama shapes,
   bf16) that ``bench_pair_pass.py`` builds into ``benchmarks/.cache/llama-1.1b-pair``: k in {1,4,16,64},
   the default null, every layer and role, given cached activation statistics.  The grid promises to cost
   about what a bare streaming pass over the pair costs (target <= 2x) and to hold O(largest tensor) in
   memory.  Two steps, each in a fresh subprocess so that its peak RSS is its own, each the fastest of
   ``--repeats`` runs (as the floor's product rate and eigensolve are their best: one run of a 6 s grid moves
   ±10 % on this machine):
     (i)  bare - ``delta_norms`` (the row-block pair pass) computing ||ΔW||_F per role (the floor of any pair probe);
     (ii) grid - ``list(rsf_grid_pair(pair, stats, GridSettings()))`` (the default: no seeds,
          ``null: auto``, which sketches Σσ⁴ of every 1.1B matrix: 2·64 multiply-adds per element of ΔW);
     (iii) the grid with the other nulls: the exact one (``null: exact``: one Gram matrix of the smaller side
          per delta, d_out·d_in·min(d) multiply-adds) and 8 seeds alone (``null: seeds``: 8·64 more columns of
          projections per side); and the sketch's error: |sketched − exact| null sd over its stated 95 % bound
          (``null_rel_error``), per matrix and side at k = 4;
     (iv) floor - the grid's arithmetic: its multiply-adds (projections, closed-form nulls, the unembedding's
          Gram) at this machine's measured float32 product rate on the pass's own block shapes, plus the
          prediction subspace's top eigenvectors solved on a like matrix; with the bare pass, the least any grid
          of these rows costs here.
   The activation statistics are SYNTHETIC: real ones would need a forward pass of the 1.1B model over a
   calibration set (hours on 2 CPU cores, and the synthetic pair's random weights give no meaningful
   activations anyway).  They have the exact sizes a real float64 collection would have (attn_in, mlp_in,
   o_in: 2048; down_in: 5632; per layer), sums = n·C with C = Q diag(λ) Qᵀ (Haar Q, a power-law bulk plus a
   few large spikes) and n_tokens = 1e5, and go through ``ActivationStats.save`` / ``.load`` like a cache.
   If the grid is over the target, a subset of layers is run again under cProfile to say where the time
   goes, followed by micro-benchmarks of the obvious alternatives (top-k eigensolver, float32 and nested
   null projections) so that suggestions come with numbers.
2. Activation-statistics overhead: tokens/s of a bare forward pass (no_grad, use_cache=False) of a ~130M
   randomly initialised Llama (hidden 768, 12 layers, intermediate 2048, vocab 32000) versus
   ``collect_activation_stats`` with roles (q, o, up, down), in float64 (the default) and float32, over the
   same packed batches after a warm-up.  Target ratio >= 0.85.
3. SVD probe: ``svd_structure(method="lowrank", r=64)`` (the randomized range finder, stopped by its a
   posteriori residual certificate) vs ``method="full"`` (float64 LAPACK SVD) on planted matrices with
   σ_i ∝ i^-1/2 of the MLP's shapes (2048 x 2048, 5632 x 2048, 2048 x 5632; target >= 10x on 2048 x 5632):
   speed-up, passes, and |lowrank - full| of every metric against ``LOWRANK_BOUND``; and on q and down of
   layer 0 of the pair (random Gaussian weights: flat Marchenko-Pastur spectra, where lowrank cannot certify
   its tolerance): the time it takes to refuse, and what ``method="auto"`` (refusal, then the full SVD) costs.

All ratios are against baselines measured in the same run.  Peak memory is reported as the child's
``ru_maxrss`` (the driver imports no torch, so the parent's peak that Linux folds into a child's ru_maxrss
at exec stays small), its own ``VmHWM``, and sampled peaks of RssAnon (tensors) and RssFile (memory-mapped
checkpoint pages, reclaimable).  Results are printed as tables and written to
``benchmarks/results/probes.json`` (after each part, so a partial run keeps what it measured).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

from _common import write_results
from _common import emit, measured
from _common import add_child_options, child_cmd
from _common import run_child as _run_child
from _common import status_kb as _status_kb

HERE = Path(__file__).resolve().parent
PAIR_CACHE = HERE / ".cache" / "llama-1.1b-pair"
STATS_CACHE = HERE / ".cache" / "synthetic-stats-llama-1.1b"
DEFAULT_RESULTS = HERE / "results" / "probes.json"
DEFAULT_PROFILE = HERE / "results" / "probes_grid.prof"
WIKITEXT_NAME = "bundled:wikitext-2/valid.txt.gz"  # the calibration text the package ships
CHILD_TAG = "@@BENCH_PROBES@@ "

GRID_TIME_TARGET = 2.0  # grid wall time <= 2x the bare pair pass
ACTS_RATIO_TARGET = 0.85  # tokens/s with statistics >= 0.85x bare forward
SVD_SPEEDUP_TARGET = 10.0  # svd_structure top-64 lowrank >= 10x the full SVD on 2048 x 5632
PAIR_DEFAULTS = dict(seed=0, base_shard_gb=1.0, post_shard_gb=0.8, delta_scale=1e-3)  # bench_pair_pass defaults

#: the synthetic statistics' generator settings (its fingerprint: a cache built with other values is rebuilt)
STATS_SPEC = dict(kind="synthetic spiked second moments", n_tokens=100_000, seed=0, bulk_exponent=-0.5,
                  spikes=[50.0, 20.0, 10.0, 5.0], layer_gain=0.1, mean_along_top=0.5, dtype="float64",
                  spectra="from the construction (Q, λ known), kept top/bottom SPECTRUM_KEEP like a real cache")
#: the ~100M model of part 2
ACTS_MODEL = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, num_key_value_heads=12,
                  intermediate_size=2048, vocab_size=32000, max_position_embeddings=2048, tie_word_embeddings=False)


# --- memory measurement ----------------------------------------------------------------------


def _mb(kb: float) -> float:
    return round(kb / 1024, 1)


# --- part 1: synthetic pair, synthetic statistics, bare pass, grid, profile -------------------


def _pair_dirs(cache: Path) -> tuple[Path, Path]:
    return cache / "base", cache / "post"


def step_pair(p: dict) -> dict:
    """Reuse (or build, with bench_pair_pass.build_pair) the synthetic 1.1B pair; never rebuild a complete one."""
    sys.path.insert(0, str(HERE))
    import bench_pair_pass as bpp

    cache = Path(p["cache"])
    marker = cache / bpp.MARKER
    fp = dict(PAIR_DEFAULTS)
    if marker.exists():  # build with the recorded settings so that a complete cache is always reused
        rec = json.loads(marker.read_text()).get("fingerprint", {})
        fp.update({k: rec[k] for k in PAIR_DEFAULTS if k in rec})
    t0 = time.perf_counter()
    base, post = bpp.build_pair(cache, fp["seed"], fp["base_shard_gb"], fp["post_shard_gb"], fp["delta_scale"])
    info = json.loads(marker.read_text())
    return dict(base=str(base), post=str(post), fingerprint=info["fingerprint"], n_params=info["n_params"],
                ensure_s=time.perf_counter() - t0,
                checkpoint_bytes=sum(f.stat().st_size for d in (base, post) for f in d.glob("*.safetensors")))


def _group_dims(config) -> dict[str, int]:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return {"attn_in": config.hidden_size, "mlp_in": config.hidden_size,
            "o_in": config.num_attention_heads * head_dim, "down_in": config.intermediate_size}


def _haar_square(d: int, gen):
    import torch

    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def build_synthetic_stats(config, spec: dict):
    """ActivationStats with sums = n·C_l for every (layer, group): C_0 = Q diag(λ) Qᵀ per group (Haar Q,
    λ_i = (i+1)^bulk_exponent with the top few multiplied by `spikes`), C_l = its symmetric permutation and
    sign flip times (1 + layer_gain·l) (same spectrum, other eigenvectors; exactly symmetric); the mean is
    mean_along_top·sqrt(λ_0) along the top eigenvector, so the centred covariance stays PSD."""
    import torch
    from rwedit.probes.activations import SPECTRUM_KEEP, ActivationStats
    from rwedit.probes.subspaces import Spectrum

    gen = torch.Generator().manual_seed(spec["seed"])
    n = spec["n_tokens"]
    proto = {}
    for group, d in _group_dims(config).items():
        lam = torch.arange(1, d + 1, dtype=torch.float64) ** spec["bulk_exponent"]
        lam[: len(spec["spikes"])] *= torch.tensor(spec["spikes"], dtype=torch.float64)
        q = _haar_square(d, gen)
        c = (q * lam) @ q.T
        c = 0.5 * (c + c.T)
        mu = spec["mean_along_top"] * float(lam[0]) ** 0.5 * q[:, 0]
        proto[group] = (c, mu, q, lam)
    sums, firsts, spectra = {}, {}, {}
    for layer in range(config.num_hidden_layers):
        gain = 1.0 + spec["layer_gain"] * layer
        for group, (c, mu, q, lam) in proto.items():
            d = c.shape[0]
            perm = torch.randperm(d, generator=gen)
            sign = torch.randint(0, 2, (d,), generator=gen).to(torch.float64).mul_(2).sub_(1)
            s = c.index_select(0, perm).index_select(1, perm)
            s.mul_(sign[:, None]).mul_(sign[None, :]).mul_(n * gain)
            sums[(layer, group)] = s
            firsts[(layer, group)] = mu[perm] * sign * (n * gain ** 0.5)
            # C_l = gain · S P C Pᵀ S: eigenvalues gain·λ (descending by construction), eigenvectors S P q
            vecs = q.index_select(0, perm) * sign[:, None]
            spectra[(layer, group, False)] = Spectrum(lam * gain, vecs).truncated(SPECTRUM_KEEP)
    meta = {"source": "synthetic (bench_probes.py): NOT from a forward pass", "synthetic": spec,
            "model_type": config.model_type}
    return ActivationStats(sums, firsts, n, meta, spectra)


def _stats_cache_ok(folder: Path, spec: dict) -> bool:
    try:
        return (folder / "stats.safetensors").exists() and (folder / "spectra.safetensors").exists() and \
            json.loads((folder / "stats.json").read_text()).get("synthetic") == spec
    except (OSError, ValueError):
        return False


def step_stats(p: dict) -> dict:
    """Build and save the synthetic statistics, unless a cache with the same fingerprint exists."""
    from transformers import AutoConfig

    folder = Path(p["stats"])
    config = AutoConfig.from_pretrained(p["base"])
    dims = _group_dims(config)
    out = dict(path=str(folder), groups=dims, layers=config.num_hidden_layers, n_tokens=STATS_SPEC["n_tokens"],
               spec=STATS_SPEC, sum_bytes=8 * config.num_hidden_layers * sum(d * d + d for d in dims.values()))
    if _stats_cache_ok(folder, STATS_SPEC) and not p.get("rebuild"):
        out.update(reused=True)
        return out
    t0 = time.perf_counter()
    stats = build_synthetic_stats(config, STATS_SPEC)
    t1 = time.perf_counter()
    stats.save(folder)
    out.update(reused=False, build_s=t1 - t0, save_s=time.perf_counter() - t1)
    return out


def step_bare(p: dict) -> dict:
    """(i) The bare pair pass: ``delta_norms`` (row blocks) over every (layer, role), ||ΔW||_F and the two norms."""
    from rwedit.checkpoints import CheckpointPair
    from rwedit.probes.norms import delta_norms

    t0 = time.perf_counter()
    pair = CheckpointPair(p["base"], p["post"])
    rows = delta_norms(pair, layers=p.get("layers"))
    largest = max(r.d_out * r.d_in for r in rows)
    return dict(wall_s=time.perf_counter() - t0, roles=len(rows), sumsq=sum(r.delta_norm ** 2 for r in rows),
                largest_numel=largest)


def _grid_settings(p: dict):
    from rwedit.probes.grid import GridSettings

    layers = p.get("layers")
    return GridSettings(layers=tuple(layers) if layers is not None else None, null_seeds=p.get("null_seeds", 0),
                        null=p.get("null", "auto"))


def _load_stats(p: dict):
    from rwedit.probes.activations import ActivationStats

    t0 = time.perf_counter()
    stats = ActivationStats.load(p["stats"])
    return stats, time.perf_counter() - t0


def _summarise_rows(rows: list[dict]) -> dict:
    import math

    out = {"rows": len(rows), "deltas": len({(r["layer"], r["role"]) for r in rows})}
    for name in ("activation", "prediction", "random"):
        sel = [r for r in rows if r["subspace"] == name and not math.isnan(r["null_z"])]
        if sel:
            out[name] = dict(rows=len(sel), mean_rsf=sum(r["rsf"] for r in sel) / len(sel),
                             frac_abs_z_gt_3=sum(abs(r["null_z"]) > 3 for r in sel) / len(sel))
    return out


def step_grid(p: dict) -> dict:
    """(ii) The full grid, given cached (loaded) activation statistics."""
    from rwedit.checkpoints import CheckpointPair
    from rwedit.probes.grid import null_methods, rsf_grid_pair

    settings = _grid_settings(p)
    stats, load_s = _load_stats(p)
    anon_after_load = _status_kb("RssAnon")
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt
    t0 = time.perf_counter()
    pair = CheckpointPair(p["base"], p["post"])
    rows = list(rsf_grid_pair(pair, stats, settings))
    wall = time.perf_counter() - t0
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_majflt - faults  # pages read from disk inside the clock
    # what the stats keep in memory: per (layer, input group) the eigenvalues and 2·SPECTRUM_KEEP eigenvectors
    from rwedit.probes.activations import SPECTRUM_KEEP

    dims = _group_dims(pair.base.config)
    n_layers = len(settings.layers) if settings.layers is not None else pair.layout.n_layers
    spectra_bytes = 8 * n_layers * sum(d * (1 + 2 * min(SPECTRUM_KEEP, d // 2)) for d in dims.values())
    return dict(wall_s=wall, major_faults=faults, stats_load_s=load_s, anon_after_stats_load_mb=_mb(anon_after_load),
                spectra_cache_bytes_est=spectra_bytes, settings=dict(ks=list(settings.ks), null_seeds=settings.null_seeds,
                null=settings.null, null_methods=null_methods(rows, settings),
                subspaces=list(settings.subspaces), layers=p.get("layers") or "all"), summary=_summarise_rows(rows),
                null_sd={f"{r['layer']}.{r['role']}.{r['side']}": [r["null_exact_sd"], r.get("null_rel_error", 0.0)]
                         for r in rows if r["subspace"] == "random" and r["k"] == 4})


def step_floor(p: dict) -> dict:
    """The grid's arithmetic: the multiply-adds its projections and closed-form nulls do on this pair (counted
    from the grid's own plan of each matrix side, :func:`rwedit.probes.grid._side_plans`) and the unembedding's
    Gram matrix (the prediction subspace; its top eigenvectors' solve timed on a like matrix), and this machine's
    float32 matrix-product rate on the pass's own blocks (a row block of BLOCK_BYTES times the widest side's bases, run
    through the pass's workers, :func:`rwedit.stream.ordered_map`): their quotient is the least compute time any
    grid of these rows can take here, whatever its code."""
    import torch

    from rwedit.checkpoints import CheckpointPair
    from rwedit.probes.grid import GridContext, _side_plans, null_method, prediction_from_pair
    from rwedit.stream import BLOCK_BYTES, ordered_map

    settings = _grid_settings(p)
    stats, _ = _load_stats(p)
    pair = CheckpointPair(p["base"], p["post"])
    layout = pair.layout
    ctx = GridContext(stats, prediction_from_pair(pair, settings.prediction_gain))
    proj = null = 0
    widest = 0
    for view in layout.views(settings.roles or layout.roles(), settings.layers):
        numel = view.d_out * view.d_in
        widths = [plan.stacked.shape[1] for plan in _side_plans(view.shape, view.layer, view.role, ctx, settings)]
        widest = max([widest, *widths])
        proj += numel * sum(widths)
        method = null_method(settings, view.shape)
        null += numel * (2 * settings.null_sketch if method == "sketch" else min(view.shape) if method == "exact" else 0)
    vocab, d = layout.view(None, "unembed").shape
    pred = vocab * d * d  # the prediction subspace's Gram matrix of the unembedding (its eigendecomposition aside)
    rows = BLOCK_BYTES // (4 * d)
    gen = torch.Generator().manual_seed(0)
    X, B = torch.randn(rows, d, generator=gen), torch.randn(d, widest, generator=gen)
    threads = torch.get_num_threads()

    def rate() -> float:
        n = 8 * threads
        t0 = time.perf_counter()
        for _ in ordered_map(lambda _: X @ B, range(n)):
            pass
        return n * rows * d * B.shape[1] / (time.perf_counter() - t0)

    rate()  # warm-up
    macs_per_s = max(rate() for _ in range(5))
    # the prediction subspace's top-k eigenvectors of the d x d Gram: the kept-vectors solve (one tridiagonal
    # reduction, no full eigenvector matrix), timed here on a like matrix: the least any grid pays for them
    from rwedit.probes.subspaces import _spectrum_of_symmetric

    A = torch.randn(2 * d, d, generator=gen, dtype=torch.float64)
    G = A.T @ A

    def eig() -> float:
        t0 = time.perf_counter()
        _spectrum_of_symmetric(G, keep=max(settings.ks), exact=True)
        return time.perf_counter() - t0

    eig_s = min(eig() for _ in range(2))
    return dict(projection_macs=proj, null_macs=null, prediction_gram_macs=pred, macs=proj + null + pred,
                gemm_macs_per_s=macs_per_s, gemm_shape=[rows, d, B.shape[1]], threads=threads,
                prediction_eig_s=eig_s, compute_s=(proj + null + pred) / macs_per_s + eig_s,
                compute_projections_s=proj / macs_per_s)


def _pstats_index(st):
    """(file suffix, function name) lookups into a pstats.Stats: cumulative time, calls, per-caller split."""

    def find(suffix: str, name: str):
        for (f, _, fn), v in st.stats.items():
            if fn == name and f.endswith(suffix):
                return v
        return None

    def cum(suffix: str, name: str) -> tuple[float, int]:
        v = find(suffix, name)
        return (v[3], v[1]) if v else (0.0, 0)

    def cum_from(suffix: str, name: str, caller: str) -> float:
        v = find(suffix, name)
        return sum(c[3] for (f, _, fn), c in v[4].items() if fn == caller) if v else 0.0

    def builtin(substr: str) -> tuple[float, int]:
        hits = [v for (f, _, fn), v in st.stats.items() if f == "~" and substr in fn]
        return sum(v[3] for v in hits), sum(v[1] for v in hits)

    return cum, cum_from, builtin


def _time(fn, *a, **k):
    t0 = time.perf_counter()
    out = fn(*a, **k)
    return out, time.perf_counter() - t0


def step_profile(p: dict) -> dict:
    """The grid on a layer subset under cProfile, broken down by where the time goes; then micro-benchmarks
    of alternatives (top-k eigensolver, float32 / nested null projections) for the suggestions."""
    import cProfile
    import io
    import pstats

    import torch
    from rwedit.checkpoints import CheckpointPair
    from rwedit.probes.grid import rsf_grid_pair

    settings = _grid_settings(p)
    stats, _ = _load_stats(p)
    pair = CheckpointPair(p["base"], p["post"])
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    rows = prof.runcall(lambda: list(rsf_grid_pair(pair, stats, settings)))
    wall = time.perf_counter() - t0
    prof.dump_stats(p["profile_out"])
    st = pstats.Stats(prof)
    cum, cum_from, builtin = _pstats_index(st)
    eigh_s, eigh_n = builtin("eigh")
    qr_s, qr_n = builtin("linalg_qr")
    parts = {
        "prediction spectrum (read W_U, float64 Gram, eigh)": cum("grid.py", "prediction_from_pair")[0],
        "activation spectra (second moment, checks, eigh)": cum("grid.py", "activation_spectrum")[0],
        "random null (Haar bases + float32 nested projections)": cum("rsf.py", "random_null_nested")[0],
        "subspace RSF (rsf_nested: checks + projections)": cum("rsf.py", "rsf_nested")[0],
        "random-subspace basis (haar_basis in rows_for_delta)": cum_from("subspaces.py", "haar_basis", "rows_for_delta"),
        "checkpoint reads in iter_roles (bf16 -> f32, isfinite)": cum_from("checkpoints.py", "read", "iter_roles"),
    }
    parts["other (ΔW = post - base, bookkeeping)"] = wall - sum(parts.values())
    detail = {
        "eigh (all calls)": [eigh_s, eigh_n],
        "QR (all calls; Haar bases)": [qr_s, qr_n],
        "haar_basis (all callers; randn + QR + sign fix)": list(cum("subspaces.py", "haar_basis")),
        "_energies called by random_null_nested (float32 projections)":
            [cum_from("rsf.py", "_energies", "random_null_nested"), None],
        "_energies called by rsf_nested (float64 projections)": [cum_from("rsf.py", "_energies", "rsf_nested"), None],
        "_read_energies (all float64 projections)": list(cum("rsf.py", "_read_energies")),
        "eig_subspace (validation + eigh)": list(cum("subspaces.py", "eig_subspace")),
        "_spectrum_of_symmetric (eigh + sign fix)": list(cum("subspaces.py", "_spectrum_of_symmetric")),
        "gram_matrix (W_U float64 Gram)": list(cum("subspaces.py", "gram_matrix")),
        "_check_basis (orthonormality checks)": list(cum("rsf.py", "_check_basis")),
    }
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
    out = dict(wall_s=wall, layers=p.get("layers"), rows=len(rows), parts_s=parts, detail=detail,
               top_tottime=buf.getvalue().split("\n", 6)[-1][:6000], profile_file=p["profile_out"])
    if p.get("suggest", True):
        out["alternatives"] = _alternatives(stats, pair, settings)
    return out


def _alternatives(stats, pair, settings) -> dict:
    """Micro-benchmarks behind the suggestions, on layer 0's down_in statistic and down delta."""
    import torch
    from rwedit.probes.rsf import random_null_samples
    from rwedit.probes.subspaces import haar_basis

    res = {}
    kmax = max(settings.ks)
    # (a) the activation spectrum: full float64 eigh (what the grid does) vs float32 eigh vs randomized top-k
    for group, role in (("down_in", "down"), ("attn_in", "q")):
        c = stats.second_moment(0, role)
        (ev, vecs), t64 = _time(torch.linalg.eigh, c)
        top = vecs.flip(1)[:, :kmax]
        _, t32 = _time(torch.linalg.eigh, c.float())
        with torch.random.fork_rng():
            torch.manual_seed(0)
            (u, s, _), tlr = _time(torch.svd_lowrank, c, q=kmax + 64, niter=4)
        # 1 - ||V_kᵀ V̂_k||²_F / k: the share of the exact top-k subspace the randomized one misses
        missed = {k: float(1 - (top[:, :k].T @ u[:, :k]).pow(2).sum() / k) for k in settings.ks}
        res[f"eigh_{group}_{c.shape[0]}"] = dict(full_f64_s=t64, full_f32_s=t32, randomized_topk_s=tlr,
                                                 randomized=f"svd_lowrank(C, q={kmax + 64}, niter=4)",
                                                 topk_subspace_missed=missed,
                                                 top_eig_rel_err=float(abs(s[0] - ev[-1]) / ev[-1]))
        del c, vecs, top, u
    # (b) the null projections of one delta: as done now, vs one nested float32 pass per side
    rp = next(pair.iter_roles(("down",), (0,)))
    delta = rp.post - rp.base
    seeds = [settings.seed + 1 + i for i in range(settings.null_seeds or 8)]  # 8 where the grid draws none
    ks = sorted(settings.ks)
    cur = {}
    for side in settings.sides:
        _, cur[side] = _time(lambda: [random_null_samples(delta, side, k, seeds) for k in ks])
    haar_now = _time(lambda: [haar_basis(delta.shape[1], k, s) for k in ks for s in seeds])[1]
    haar_nested = _time(lambda: [haar_basis(delta.shape[1], kmax, s) for s in seeds])[1]

    def nested(side: str, dtype):
        mat = delta if side == "read" else delta.T
        b = torch.cat([haar_basis(mat.shape[1], kmax, s) for s in seeds], 1).to(dtype)
        proj = mat.to(dtype) @ b
        e = proj.double().pow(2).sum(0).reshape(len(seeds), kmax).cumsum(1)
        total = float(mat.double().pow(2).sum())
        return torch.stack([e[:, k - 1] / total / (k / mat.shape[1]) for k in ks], 1)

    alt = {}
    for side in settings.sides:
        r64, t64 = _time(nested, side, torch.float64)
        r32, t32 = _time(nested, side, torch.float32)
        alt[side] = dict(now_s=cur[side], nested_f64_s=t64, nested_f32_s=t32,
                         f32_vs_f64_max_rel_diff=float(((r32 - r64) / r64).abs().max()))
    res["null_projections_down_L0"] = dict(shape=list(delta.shape), ks=ks, seeds=len(seeds), by_side=alt,
                                           haar_bases_now_s=haar_now, haar_bases_nested_s=haar_nested)
    return res


# --- part 2: activation statistics overhead -------------------------------------------------


def _tokens(n: int, vocab: int) -> tuple["torch.Tensor", str]:
    import gzip

    import torch

    from rwedit.bundled import resolve

    raw = gzip.open(resolve(WIKITEXT_NAME)).read()
    if len(raw) >= n:
        ids = torch.frombuffer(bytearray(raw[:n]), dtype=torch.uint8).to(torch.int64)
        return ids, f"real text: the first {n} UTF-8 bytes of {WIKITEXT_NAME} used as token ids 0-255"
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, vocab, (n,), generator=g), f"random token ids in [0, {vocab})"


def step_acts(p: dict) -> dict:
    """Tokens/s of a bare forward pass vs collect_activation_stats (float64, mixed, float32) on the same batches."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rwedit.data import batches, tensor_hash
    from rwedit.probes.activations import StatsSettings, collect_activation_stats, model_fingerprint

    bs, seq, nb, reps = p["batch_size"], p["seq_len"], p["batches"], p["repeats"]
    config = LlamaConfig(**ACTS_MODEL)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    n_params = sum(x.numel() for x in model.parameters())
    flat, source = _tokens((nb + 1) * bs * seq, config.vocab_size)
    ids = flat.reshape(nb + 1, bs, seq)
    warm, timed = ids[0], ids[1:].reshape(nb * bs, seq)
    roles = ("q", "o", "up", "down")
    settings = {dt: StatsSettings(roles=roles, dtype=dt, seq_len=seq, batch_size=bs) for dt in ("float64", "mixed", "float32")}

    @torch.no_grad()
    def bare(tok):
        for b in batches(tok, bs):
            model(input_ids=b, use_cache=False)

    bare(warm)  # warm-up: allocator, kernels, hooks
    for s in settings.values():
        collect_activation_stats(model, warm, s, progress=False)
    times: dict[str, list[float]] = {"bare": [], **{dt: [] for dt in settings}}
    for _ in range(reps):  # interleaved, so that drift in machine load hits all three alike
        times["bare"].append(_time(bare, timed)[1])
        for dt, s in settings.items():
            times[dt].append(_time(collect_activation_stats, model, timed, s, progress=False)[1])
    fp_s = min(_time(model_fingerprint, model)[1] for _ in range(2))
    hash_s = min(_time(tensor_hash, timed)[1] for _ in range(2))
    n_tok = timed.numel()
    best = {k: min(v) for k, v in times.items()}
    tps = {k: n_tok / v for k, v in best.items()}
    # per-token multiply-adds: the linear layers of the forward pass vs the a aᵀ updates of the hooks
    h, i, L = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    fwd_macs = L * (4 * h * h + 3 * h * i) + h * config.vocab_size
    hook_macs = L * (3 * h * h + i * i)
    # collect_activation_stats runs the model for its hooks: no logits (rwedit.models.hooks_pass)
    collect_macs = fwd_macs - h * config.vocab_size + hook_macs
    return dict(model=dict(config=ACTS_MODEL, n_params=n_params, dtype="float32", attn=model.config._attn_implementation),
                tokens=source, batch_size=bs, seq_len=seq, timed_batches=nb, timed_tokens=n_tok, repeats=reps,
                roles=list(roles), times_s=times, tokens_per_s=tps,
                ratio={dt: tps[dt] / tps["bare"] for dt in settings},
                fixed_costs_s=dict(model_fingerprint=fp_s, tensor_hash=hash_s),
                ratio_hooks_only={dt: best["bare"] / (best[dt] - fp_s - hash_s) for dt in settings},
                macs_per_token=dict(forward_linear=fwd_macs, hooks=hook_macs, hooks_over_forward=hook_macs / fwd_macs,
                                    unembedding=h * config.vocab_size, collect_over_forward=collect_macs / fwd_macs))


# --- part 3: SVD probe, lowrank vs full -----------------------------------------------------


def _planted(shape: tuple[int, int], seed: int, exponent: float = -0.5, scale: float = 1.05, noise: float = 0.01):
    """W_base = U diag(σ) Vᵀ with σ_i = i^exponent; W_post = scale·W_base + Gaussian noise of ||·||_F = noise·||W_base||_F."""
    import torch

    g = torch.Generator().manual_seed(seed)
    m, n = shape
    r = min(m, n)
    u, _ = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))
    sig = torch.arange(1, r + 1, dtype=torch.float64) ** exponent
    base = (u * sig) @ v.T
    e = torch.randn(m, n, generator=g, dtype=torch.float64)
    post = scale * base + e * (noise * float(base.norm()) / float(e.norm()))
    return base.float(), post.float()


def step_svd(p: dict) -> dict:
    import torch
    from rwedit.checkpoints import CheckpointPair
    from rwedit.probes.svd import LOWRANK_BOUND, MAX_PASSES, RESIDUAL_TOL, LowRankAccuracyError, svd_structure

    r = p["r"]
    mats = []
    for i, shape in enumerate([(2048, 2048), (5632, 2048), (2048, 5632)]):
        b, q = _planted(shape, seed=i)
        mats.append(("planted σ∝i^-0.5", b, q, True))
    pair = CheckpointPair(p["base"], p["post"])
    for rp in pair.iter_roles(("q", "down"), (0,)):
        mats.append((f"pair L0 {rp.role} (Gaussian, flat)", rp.base.clone(), rp.post.clone(), False))
    svd_structure(mats[0][1][:256, :256], mats[0][2][:256, :256], r=16, method="full")  # warm-up (LAPACK init)
    svd_structure(mats[0][1][:512, :512], mats[0][2][:512, :512], r=16, method="lowrank")
    out = []
    for name, b, q, decaying in mats:
        row = dict(name=name, shape=list(b.shape), r=r, decaying_spectrum=decaying, threads=torch.get_num_threads(),
                   loadavg_before=os.getloadavg())
        full, row["full_s"] = _time(svd_structure, b, q, r=r, method="full")
        try:
            lows = [_time(svd_structure, b, q, r=r, method="lowrank") for _ in range(3)]
        except LowRankAccuracyError as e:  # cannot certify tol here: how fast it says so, and what auto costs
            t0 = time.perf_counter()
            try:
                svd_structure(b, q, r=r, method="lowrank")
            except LowRankAccuracyError:
                pass
            auto, t_auto = _time(svd_structure, b, q, r=r, method="auto")
            row.update(lowrank_refused=str(e), refuse_s=time.perf_counter() - t0 - t_auto, auto_s=t_auto,
                       auto_method=auto.method, auto_over_full=t_auto / row["full_s"],
                       auto_equals_full=auto.consistency == full.consistency and auto.scale == full.scale,
                       loadavg_after=os.getloadavg())
            out.append(row)
            continue
        low, t_low = lows[0][0], min(t for _, t in lows)
        sig = max(float(((getattr(low, s) - getattr(full, s)).abs() / getattr(full, s)).max())
                  for s in ("sigma_base", "sigma_post"))
        diffs = {"sigma_rel": sig, "scale_rel": abs(low.scale - full.scale) / abs(full.scale)}
        for m in ("scale_residual", "consistency", "reparam_error", "orth_U", "orth_V"):
            diffs[m] = abs(getattr(low, m) - getattr(full, m))
        bound = {m: LOWRANK_BOUND["orth" if m.startswith("orth") else m] for m in diffs}
        metrics = {m: {"full": getattr(full, m), "lowrank": getattr(low, m)}
                   for m in ("scale", "scale_residual", "orth_U", "orth_V", "consistency", "reparam_error")}
        row.update(lowrank_s=t_low, lowrank_runs_s=[t for _, t in lows], speedup=row["full_s"] / t_low,
                   passes=low.passes, residual=low.residual, abs_diff=diffs, bound=bound,
                   within_bound={m: diffs[m] <= bound[m] for m in diffs},
                   max_error_over_bound=max(diffs[m] / bound[m] for m in diffs),
                   sigma_r_over_sigma_1=float(full.sigma_base[-1] / full.sigma_base[0]), metrics=metrics,
                   loadavg_after=os.getloadavg())
        out.append(row)
    return dict(matrices=out, lowrank_bound=LOWRANK_BOUND, residual_tol=RESIDUAL_TOL, max_passes=MAX_PASSES,
                threads=torch.get_num_threads(), target_speedup=SVD_SPEEDUP_TARGET, target_shape=[2048, 5632])


# --- child processes --------------------------------------------------------------------------

STEPS = {"pair": step_pair, "stats": step_stats, "bare": step_bare, "grid": step_grid, "floor": step_floor,
         "profile": step_profile, "acts": step_acts, "svd": step_svd}
#: scipy.linalg: the kept-vectors eigensolver's LAPACK, imported on its first call (0.25 s, in the grid's clock
#: until 2026-12-07 while the floor's eigensolve ran with it imported)
PRE_IMPORTS = ["torch", "scipy.linalg", "rwedit.checkpoints", "rwedit.probes.grid", "rwedit.probes.svd",
               "transformers.models.llama.configuration_llama"]


def child_main(step: str, params: dict) -> None:
    import importlib

    for mod in PRE_IMPORTS + (["transformers.models.llama.modeling_llama"] if step == "acts" else []):
        importlib.import_module(mod)  # imports are not part of any measurement
    load0 = os.getloadavg()
    out, m = measured(lambda: STEPS[step](params), interval_s=0.01)
    out.setdefault("wall_s", m["wall_s"])
    import torch

    out["process"] = dict(
        peak_rss_mb=_mb(m["vmhwm_kb"]),  # this process's own high-water mark
        ru_maxrss_mb=_mb(m["ru_maxrss_kb"]),
        # CPU seconds of all threads over the step: less sensitive than wall time to other jobs on the machine
        cpu_s=m["cpu_s"],
        rss_start_mb=_mb(m["rss_start_kb"]), peak_anon_mb=_mb(m["peak_anon_kb"]), peak_file_mb=_mb(m["peak_file_kb"]),
        torch_threads=torch.get_num_threads(), loadavg_before=load0, loadavg_after=os.getloadavg())
    emit(CHILD_TAG, out)


def run_child(step: str, params: dict) -> dict:
    """Run one step in a fresh interpreter (stderr passes through) and return what it reports."""
    cmd = child_cmd(__file__, step, params)
    out, info = _run_child(cmd, CHILD_TAG, step, pass_stderr=True, echo_prefix="    | ")
    out["process"]["process_wall_s"] = info["process_wall_s"]
    return out


# --- driver ------------------------------------------------------------------------------------


def warm_read(folders: list[Path]) -> float:
    """Read every safetensors file once (page cache warm for the timed steps); returns the seconds taken."""
    buf = memoryview(bytearray(8 << 20))
    t0 = time.perf_counter()
    for d in folders:
        for f in sorted(d.glob("*.safetensors")):
            with open(f, "rb", buffering=0) as fh:
                while fh.readinto(buf):
                    pass
    return time.perf_counter() - t0


def run_grid_part(args, res: dict) -> None:
    pair = res["pair"]
    common = dict(base=pair["base"], post=pair["post"], stats=str(args.stats_cache), layers=args.layers)
    print("synthetic activation statistics (sizes of a real float64 collection; see the docstring) ...", flush=True)
    st = run_child("stats", dict(common, rebuild=args.rebuild_stats))
    res["stats"] = st
    how = "reused" if st["reused"] else f"built in {st['build_s']:.0f} s, saved in {st['save_s']:.0f} s"
    print(f"  {st['path']}: {st['sum_bytes'] / 1e9:.2f} GB float64 ({how})", flush=True)
    res["warm_read_s"] = warm_read([Path(pair["base"]), Path(pair["post"])])
    # the bare pass and the grid alternated, each the fastest of its fresh runs (as the floor's rate and eigensolve
    # are their best), and the floor measured right after them: this machine's speed drifts by 15 % over minutes
    bare, runs = [], []
    for i in range(args.repeats):
        print(f"(i) bare pair pass, run {i + 1}/{args.repeats} ...", flush=True)
        bare.append(run_child("bare", common))
        print(f"(ii) full RSF grid, the default null (auto: sketched at 1.1B), run {i + 1}/{args.repeats} ...", flush=True)
        runs.append(run_child("grid", common))
    b, g = dict(min(bare, key=lambda r: r["wall_s"])), dict(min(runs, key=lambda r: r["wall_s"]))
    b["all_wall_s"], g["all_wall_s"] = [round(r["wall_s"], 2) for r in bare], [round(r["wall_s"], 2) for r in runs]
    res["bare"], res["grid"] = b, g
    print(f"  bare {b['wall_s']:.1f} s, grid {g['wall_s']:.1f} s", flush=True)
    print("(iv) the grid's arithmetic floor: its multiply-adds at this machine's GEMM rate, the prediction "
          "subspace's eigensolve ...", flush=True)
    f = res["floor"] = run_child("floor", common)
    f["floor_s"] = b["wall_s"] + f["compute_s"]  # the read and the products share the same two cores
    f["floor_over_bare"], f["grid_over_floor"] = f["floor_s"] / b["wall_s"], g["wall_s"] / f["floor_s"]
    # the other nulls: one Gram matrix per delta (the exact Σσ⁴), and the seeds' projections alone
    for key, extra, label in (("grid_exact_only", dict(null="exact"), "the exact null"),
                              ("grid_seeds_only", dict(null="seeds", null_seeds=8), "8 null seeds, no closed form")):
        print(f"(iii) RSF grid, {label} ...", flush=True)
        res[key] = run_child("grid", dict(common, **extra))
    exact = res["grid_exact_only"]["null_sd"]
    errs = [abs(sd - exact[key][0]) / sd / bound for key, (sd, bound) in g["null_sd"].items()
            if bound and bound == bound and sd > 0]
    res["sketch_error"] = dict(matrices_sides=len(errs), max_error_over_bound=max(errs, default=None),
                               within_bound=sum(e <= 1 for e in errs), max_bound=max(
                                   (b for _, b in g["null_sd"].values() if b == b), default=None))
    for key in ("grid", "grid_exact_only", "grid_seeds_only"):  # per-matrix figures: used, not kept
        res[key].pop("null_sd", None)
    res["null_variants"] = {key: dict(wall_s=res[key]["wall_s"], over_bare=res[key]["wall_s"] / b["wall_s"],
                                      within_time_target=res[key]["wall_s"] / b["wall_s"] <= GRID_TIME_TARGET,
                                      settings=res[key]["settings"])
                            for key in ("grid", "grid_exact_only", "grid_seeds_only")}
    largest_f32_mb = b["largest_numel"] * 4 / 2**20
    ratio = g["wall_s"] / b["wall_s"]
    res["grid_checks"] = dict(
        grid_over_bare_time=ratio, grid_over_bare_cpu=g["process"]["cpu_s"] / b["process"]["cpu_s"], grid_plus_stats_load_over_bare_time=(g["wall_s"] + g["stats_load_s"]) / b["wall_s"],
        time_target=GRID_TIME_TARGET, within_time_target=ratio <= GRID_TIME_TARGET,
        largest_tensor_f32_mb=largest_f32_mb, stats_in_memory_mb=st["sum_bytes"] / 2**20,
        spectra_cache_mb=g["spectra_cache_bytes_est"] / 2**20,
        grid_over_bare_peak_rss=g["process"]["peak_rss_mb"] / b["process"]["peak_rss_mb"],
        grid_over_bare_peak_anon=g["process"]["peak_anon_mb"] / b["process"]["peak_anon_mb"],
        grid_peak_anon_over_largest_tensor=g["process"]["peak_anon_mb"] / largest_f32_mb,
        grid_working_anon_over_largest_tensor=(g["process"]["peak_anon_mb"] - g["anon_after_stats_load_mb"]) / largest_f32_mb)
    if args.profile == "always" or (args.profile == "auto" and ratio > GRID_TIME_TARGET):
        layers = [int(x) for x in args.profile_layers.split(",")]
        print(f"profiling the grid on layers {layers} (+ unembed) under cProfile, then alternatives ...", flush=True)
        pr = res["profile"] = run_child("profile", dict(common, layers=layers, profile_out=str(args.profile_file),
                                                        suggest=not args.no_alternatives))
        alt = pr.get("alternatives", {})
        big, small = alt.get("eigh_down_in_5632"), alt.get("eigh_attn_in_2048")
        if big and small:
            # per layer: one down_in (5632) and three 2048 spectra (attn_in, mlp_in, o_in)
            n_layers = len(args.layers) if args.layers else st["layers"]
            eigh = n_layers * (big["full_f64_s"] + 3 * small["full_f64_s"])
            rnd = n_layers * (big["randomized_topk_s"] + 3 * small["randomized_topk_s"])
            pr["extrapolated"] = dict(layers=n_layers, kmax=max(g["settings"]["ks"]), eigh_f64_s=eigh, randomized_s=rnd, grid_s=g["wall_s"],
                                      eigh_share_of_grid=eigh / g["wall_s"],
                                      grid_with_randomized_s=g["wall_s"] - eigh + rnd,
                                      grid_with_randomized_over_bare=(g["wall_s"] - eigh + rnd) / b["wall_s"])


def print_grid(res: dict) -> None:
    b, g, c, st = res["bare"], res["grid"], res["grid_checks"], res["stats"]
    print("\n== 1. RSF grid on the synthetic 1.1B pair (synthetic activation statistics) ==")
    hdr = f"{'step':<34}{'wall s':>9}{'cpu s':>9}{'ru_maxrss MB':>14}{'VmHWM MB':>10}{'anon MB':>9}{'file MB':>9}"
    print(hdr + "\n" + "-" * len(hdr))
    for label, r in (("(i) bare pair pass (||ΔW||_F)", b), ("(ii) full grid (stats loaded)", g)):
        q = r["process"]
        print(f"{label:<34}{r['wall_s']:>9.1f}{q['cpu_s']:>9.1f}{q['ru_maxrss_mb']:>14.0f}{q['peak_rss_mb']:>10.0f}"
              f"{q['peak_anon_mb']:>9.0f}{q['peak_file_mb']:>9.0f}")
    print(f"grid rows: {g['summary']['rows']} over {g['summary']['deltas']} deltas; stats load "
          f"{g['stats_load_s']:.1f} s (not in the grid's wall time)")
    print(f"grid / bare time: {c['grid_over_bare_time']:.1f}x (target <= {GRID_TIME_TARGET}x: "
          f"{'yes' if c['within_time_target'] else 'NO'}); with the stats load: "
          f"{c['grid_plus_stats_load_over_bare_time']:.1f}x; CPU seconds grid / bare: {c['grid_over_bare_cpu']:.1f}x")
    if "null_variants" in res:
        labels = {"grid": "the default null (auto: sketch)", "grid_exact_only": "the exact null",
                  "grid_seeds_only": "8 seeds, no closed-form null"}
        for key, v in res["null_variants"].items():
            print(f"  grid, {labels[key]:<34} {v['wall_s']:>7.1f} s = {v['over_bare']:.1f}x bare "
                  f"(target <= {GRID_TIME_TARGET}x: {'yes' if v['within_time_target'] else 'NO'})")
    if "floor" in res:
        f = res["floor"]
        print(f"  floor: the bare pass + {f['macs'] / 1e9:.0f} G multiply-adds (projections "
              f"{f['projection_macs'] / 1e9:.0f} G, closed-form nulls {f['null_macs'] / 1e9:.0f} G, the unembedding's "
              f"Gram {f.get('prediction_gram_macs', 0) / 1e9:.0f} G) at {f['gemm_macs_per_s'] / 1e9:.0f} G/s + its "
              f"eigensolve {f.get('prediction_eig_s', 0):.1f} s = "
              f"{f['floor_s']:.1f} s = {f['floor_over_bare']:.1f}x bare; the grid {f['grid_over_floor']:.2f}x its floor")
    if "sketch_error" in res:
        e = res["sketch_error"]
        print(f"  sketched null sd vs exact: largest |error| / stated 95 % bound {e['max_error_over_bound']:.3f}; "
              f"{e['within_bound']}/{e['matrices_sides']} matrix sides inside; widest bound {e['max_bound']:.3g}")
    print(f"peak RSS grid / bare: {c['grid_over_bare_peak_rss']:.1f}x (anon {c['grid_over_bare_peak_anon']:.1f}x); "
          f"largest tensor (unembed, f32) {c['largest_tensor_f32_mb']:.0f} MB; grid peak anon = "
          f"{c['grid_peak_anon_over_largest_tensor']:.0f}x it, of which after loading the stats "
          f"({g['anon_after_stats_load_mb']:.0f} MB) {c['grid_working_anon_over_largest_tensor']:.0f}x")
    print(f"  stats file {c['stats_in_memory_mb']:.0f} MB (float64 d×d per layer and group), memory-mapped by "
          f"read only on demand by ActivationStats.load; the stored spectra (top/bottom eigenvectors) held "
          f"in memory: ~{c['spectra_cache_mb']:.0f} MB")
    if "profile" in res:
        pr = res["profile"]
        print(f"\n-- cProfile of the grid on layers {pr['layers']} + unembed: {pr['wall_s']:.1f} s --")
        for k, v in sorted(pr["parts_s"].items(), key=lambda kv: -kv[1]):
            print(f"  {v:>8.1f} s  {100 * v / pr['wall_s']:>5.1f}%  {k}")
        for k, (v, n) in pr["detail"].items():
            print(f"  {'':>8}   {v:>7.1f} s  {k}" + (f" ({n} calls)" if n else ""))
        alt = pr.get("alternatives")
        if alt:
            print("-- alternatives (micro-benchmarks, layer 0) --")
            for k, v in alt.items():
                if k.startswith("eigh"):
                    ov = ", ".join(f"k={kk}: {x:.0e}" for kk, x in v["topk_subspace_missed"].items())
                    print(f"  {k}: full eigh f64 {v['full_f64_s']:.1f} s, f32 {v['full_f32_s']:.1f} s, "
                          f"{v['randomized']} {v['randomized_topk_s']:.2f} s (share of the top-k subspace missed: {ov})")
            if "extrapolated" in pr:
                e = pr["extrapolated"]
                print(f"  extrapolated to the full grid ({e['layers']} layers): full f64 eigh of all activation "
                      f"spectra ~{e['eigh_f64_s']:.0f} s = {100 * e['eigh_share_of_grid']:.0f}% of the grid's "
                      f"{e['grid_s']:.0f} s; randomized top-{e['kmax']} ~{e['randomized_s']:.0f} s -> grid "
                      f"~{e['grid_with_randomized_s']:.0f} s = {e['grid_with_randomized_over_bare']:.1f}x bare")
            nv = alt["null_projections_down_L0"]
            for side, v in nv["by_side"].items():
                print(f"  null projections, down L0 {nv['shape']}, {side}: now {v['now_s']:.2f} s; one nested pass "
                      f"f64 {v['nested_f64_s']:.2f} s, f32 {v['nested_f32_s']:.2f} s (f32 max rel diff "
                      f"{v['f32_vs_f64_max_rel_diff']:.1e})")
            print(f"  Haar bases for one side: now {nv['haar_bases_now_s']:.2f} s, nested {nv['haar_bases_nested_s']:.2f} s")


def acts_ceiling(macs: dict) -> float:
    """The statistics' tokens/s over the bare pass's at equal arithmetic efficiency: the bare pass's multiply-adds
    over the statistics pass's (which computes no logits; runs before it did: 1 / (1 + hooks / forward))."""
    return 1 / macs.get("collect_over_forward", 1 + macs["hooks_over_forward"])


def print_acts(a: dict) -> None:
    print(f"\n== 2. activation statistics overhead ({a['model']['n_params'] / 1e6:.0f}M-param random Llama, "
          f"{a['timed_tokens']} tokens, best of {a['repeats']}) ==")
    print(f"tokens: {a['tokens']}")
    hdr = f"{'pass':<36}{'s':>8}{'tokens/s':>10}{'ratio':>8}{'hooks-only':>12}"
    print(hdr + "\n" + "-" * len(hdr))
    print(f"{'bare forward (no_grad, no cache)':<36}{min(a['times_s']['bare']):>8.2f}{a['tokens_per_s']['bare']:>10.0f}"
          f"{1.0:>8.2f}{'':>12}")
    for dt in a["ratio"]:
        print(f"{'collect_activation_stats ' + dt:<36}{min(a['times_s'][dt]):>8.2f}{a['tokens_per_s'][dt]:>10.0f}"
              f"{a['ratio'][dt]:>8.2f}{a['ratio_hooks_only'][dt]:>12.2f}")
    m = a["macs_per_token"]
    ok = ", ".join(f"{dt} {'yes' if r >= ACTS_RATIO_TARGET else 'NO'}" for dt, r in a["ratio"].items())
    bound = acts_ceiling(m)
    print(f"target ratio >= {ACTS_RATIO_TARGET}: {ok}; ceiling at equal arithmetic efficiency forward / (forward - "
          f"unembedding + hooks) = "
          f"{bound:.2f}; hook a·aᵀ multiply-adds = "
          f"{m['hooks_over_forward']:.2f}x the forward's linear layers; fixed costs (fingerprint "
          f"{a['fixed_costs_s']['model_fingerprint']:.2f} s, token hash {a['fixed_costs_s']['tensor_hash']:.3f} s) "
          f"are excluded from 'hooks-only'")


def print_svd(s: dict) -> None:
    r = s["matrices"][0]["r"] if s["matrices"] else "?"
    print(f"\n== 3. SVD probe: svd_structure lowrank vs full (r = {r}; tol {s['residual_tol']:.0e}, "
          f"{s['threads']} torch threads) ==")
    keys = ["sigma_rel", "scale_rel", "scale_residual", "consistency", "reparam_error", "orth_U", "orth_V"]
    hdr = (f"{'matrix':<38}{'full s':>7}{'low s':>7}{'speedup':>8}{'passes':>7}{'resid':>8}{'err/bnd':>8}  "
           + "".join(f"{k:>15}" for k in keys))
    print(hdr + "\n" + "-" * len(hdr))
    for m in s["matrices"]:
        head = f"{m['name'] + ' ' + 'x'.join(map(str, m['shape'])):<38}{m['full_s']:>7.1f}"
        if "lowrank_refused" in m:
            print(f"{head}  lowrank refused in {m['refuse_s']:.2f} s (no certificate within {s['max_passes']} passes); "
                  f"auto -> {m['auto_method']} {m['auto_s']:.1f} s = {m['auto_over_full']:.2f}x full"
                  f"{'' if m['auto_equals_full'] else ' (DIFFERS from full)'}")
            continue
        cells = "".join(f"{m['abs_diff'][k]:>14.1e}{'' if m['within_bound'][k] else '!'}"
                        f"{' ' if m['within_bound'][k] else ''}" for k in keys)
        print(f"{head}{m['lowrank_s']:>7.2f}{m['speedup']:>8.1f}{m['passes']:>7}{m['residual']:>8.0e}"
              f"{m['max_error_over_bound']:>8.3f}  {cells}")
    print("bound".ljust(91) + "".join(f"{s['lowrank_bound']['orth' if k.startswith('orth') else k]:>15.0e}" for k in keys))
    tgt = [m for m in s["matrices"] if m["shape"] == s["target_shape"] and "speedup" in m]
    ok = ", ".join(f"{m['speedup']:.1f}x {'yes' if m['speedup'] >= s['target_speedup'] else 'NO'}" for m in tgt)
    print(f"target >= {s['target_speedup']:.0f}x on {'x'.join(map(str, s['target_shape']))} (planted): {ok}")
    print("(|lowrank - full| per metric; '!' = over LOWRANK_BOUND; err/bnd = the largest error / its bound. The pair's\n"
          " Gaussian weights have flat spectra: lowrank refuses them and auto falls back to the full SVD.)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring for what is measured and why.")
    ap.add_argument("--parts", default="grid,acts,svd", help="comma list of parts to run: grid, acts, svd (default: %(default)s)")
    ap.add_argument("--pair-cache", type=Path, default=PAIR_CACHE, help="synthetic pair of bench_pair_pass.py (default: %(default)s)")
    ap.add_argument("--stats-cache", type=Path, default=STATS_CACHE, help="synthetic statistics folder (default: %(default)s)")
    ap.add_argument("--rebuild-stats", action="store_true", help="rebuild the synthetic statistics even if cached")
    ap.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON output (default: %(default)s)")
    ap.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=None,
                    help="restrict part 1 (bare pass and grid) to these layers, e.g. 0,1 (default: all)")
    ap.add_argument("--repeats", type=int, default=2, help="bare-pass and default grid runs, each in a fresh process "
                    "(the fastest of each reported) (default: %(default)s)")
    ap.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                    help="profile the grid when it is over the 2x target (auto), always or never (default: %(default)s)")
    ap.add_argument("--profile-layers", default="0", help="layers of the profiled grid run (default: %(default)s)")
    ap.add_argument("--profile-file", type=Path, default=DEFAULT_PROFILE, help="cProfile output (default: %(default)s)")
    ap.add_argument("--no-alternatives", action="store_true", help="skip the micro-benchmarks after profiling")
    ap.add_argument("--acts-batches", type=int, default=3, help="timed batches in part 2 (default: %(default)s)")
    ap.add_argument("--acts-batch-size", type=int, default=8, help="sequences per batch (default: %(default)s)")
    ap.add_argument("--acts-seq-len", type=int, default=256, help="tokens per sequence (default: %(default)s)")
    ap.add_argument("--acts-repeats", type=int, default=2, help="interleaved repeats in part 2 (default: %(default)s)")
    ap.add_argument("--svd-rank", type=int, default=64, help="r of svd_structure (default: %(default)s)")
    add_child_options(ap, STEPS)
    args = ap.parse_args(argv)

    if args.child:
        child_main(args.child, json.loads(args.child_args))
        return 0

    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    bad = set(parts) - {"grid", "acts", "svd"}
    if bad:
        ap.error(f"unknown parts {sorted(bad)}")
    t_start = time.perf_counter()
    res: dict = dict(machine=dict(nproc=os.cpu_count(), nproc_usable=len(os.sched_getaffinity(0)),
                                  python=platform.python_version(), platform=platform.platform(),
                                  loadavg_start=os.getloadavg()),
                     parts=parts, targets=dict(grid_over_bare_time=GRID_TIME_TARGET, acts_ratio=ACTS_RATIO_TARGET))

    def save() -> None:
        res["total_s"] = time.perf_counter() - t_start
        res["machine"]["loadavg_end"] = os.getloadavg()
        args.results.parent.mkdir(parents=True, exist_ok=True)
        write_results(args.results, res)

    if "grid" in parts or "svd" in parts:
        print(f"synthetic 1.1B pair in {args.pair_cache} ...", flush=True)
        res["pair"] = run_child("pair", dict(cache=str(args.pair_cache)))
    if "svd" in parts:
        print("part 3: SVD probe ...", flush=True)
        res["svd"] = run_child("svd", dict(base=res["pair"]["base"], post=res["pair"]["post"], r=args.svd_rank))
        save()
    if "acts" in parts:
        print("part 2: activation statistics overhead ...", flush=True)
        res["acts"] = run_child("acts", dict(batch_size=args.acts_batch_size, seq_len=args.acts_seq_len,
                                             batches=args.acts_batches, repeats=args.acts_repeats))
        save()
    if "grid" in parts:
        print("part 1: RSF grid ...", flush=True)
        run_grid_part(args, res)
        save()

    if "grid" in res:
        print_grid(res)
    if "acts" in res:
        print_acts(res["acts"])
    if "svd" in res:
        print_svd(res["svd"])
    save()
    print(f"\ntotal {res['total_s'] / 60:.1f} min; wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
