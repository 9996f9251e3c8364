"""Relative-subspace-fraction (RSF) grid of W_post - W_base, with plots and a summary.

RSF of every layer x role delta on the read side (vs the principal subspace of the module's input
activations, from --calib) and the write side (vs the prediction subspace of the unembedding), against
random subspaces as the null, and the SVD structure probe of each matrix (unless --no-svd). Writes rsf.csv
(tidy, one row per layer x role x side x subspace x k), headline.csv, spectrum.csv, svd.csv, heatmaps, RSF-vs-k
curves, summary.md and meta.json (every setting and the statistics' provenance).
"""

from __future__ import annotations

import argparse

from rwedit.cli import options
from rwedit.cli.options import config_help
from rwedit.cli.svd import rank_arg

CALIBRATION = "rwedit.probes.pipeline:CalibrationSettings"
GRID = "rwedit.probes.grid:GridSettings"
SVD = "rwedit.probes.pipeline:SvdSettings"
REQUEST = "rwedit.probes.pipeline:ProbeRequest"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from rwedit.probes.grid import DEFAULT_KS

    options.add_pair(p, many=True)
    p.add_argument("--series", help="a checkpoint series against the base instead of --post: a comma list of "
                   "folders or Hub ids with @revision, a YAML list, or a folder of checkpoint folders (checkpoint-N); "
                   "one member at a time into OUT/members/, resumable, with series.csv and series.png by step")
    p.add_argument("--svd-r", type=rank_arg, help=config_help(SVD, "r", "singular triplets of each matrix's SVD probe, or 'full'"))
    p.add_argument("--no-svd", action="store_true", help="skip the SVD structure probe (the RSF grid alone)")
    p.add_argument("--calib", help=config_help(
        CALIBRATION, "data", "calibration text for activation subspaces: .txt[.gz] (one text per line), "
        ".jsonl[.gz] (field 'text' or 'chosen'), a datasets folder, or a dataset name"))
    p.add_argument("--calib-tokens", type=options.positive_int, default=50_000, help=config_help(
        CALIBRATION, "tokens", "token budget of the calibration set") + " (default %(default)s)")
    p.add_argument("--seq-len", type=options.positive_int, default=256, help=config_help(
        CALIBRATION, "seq_len", "calibration sequence length") + " (default %(default)s)")
    options.add_batch_size(p)
    p.add_argument("--field", help=config_help(CALIBRATION, "field", "jsonl/dataset field holding the text"))
    options.add_placement(p)
    p.add_argument("--k", type=options.ints, default=DEFAULT_KS, help=config_help(
        GRID, "ks", "subspace dimensions (a k not below a side's d is skipped there)")
        + f" (default {','.join(map(str, DEFAULT_KS))})")
    p.add_argument("--null-seeds", type=options.count, default=0, help=config_help(
        GRID, "null_seeds", "random subspaces per delta for a seeded null beside the exact one; 0: the exact null alone")
        + " (default %(default)s)")
    p.add_argument("--null", choices=("auto", "exact", "sketch", "seeds"), default="auto", help=config_help(
        GRID, "null", "the closed-form null's sum of sigma^4 per delta: exact, sketch, auto or seeds")
        + " (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help=config_help(
        GRID, "seed", "seed of the random subspaces (the null uses seed+1 .. seed+null_seeds)") + " (default %(default)s)")
    p.add_argument("--centred", action="store_true", help=config_help(
        GRID, "centred", "activation subspace from the centred covariance"))
    p.add_argument("--fold-final-norm", action="store_true", help=config_help(
        GRID, "prediction_gain", "prediction subspace of W_U diag(gamma_final)"))
    options.add_roles(p)
    p.add_argument("--layers", type=options.ints, help=config_help(
        GRID, "layers", "comma-separated layers (default: all)"))
    p.add_argument("--cards", type=options.count, default=4, help=config_help(
        REQUEST, "cards", "direction cards per cell and kind (directions.jsonl; `rwedit explain OUT` prints them)")
        + " (default %(default)s; 0: none)")
    options.add_out(p, default="rwedit-probe")
    options.add_cache_dir(p)
    options.add_overwrite(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from rwedit.probes.grid import GridSettings
    from rwedit.probes.pipeline import CalibrationSettings, ProbeRequest, SvdSettings, run_probe
    from rwedit.runtime import using

    calib = None
    if args.calib:
        calib = CalibrationSettings(data=args.calib, tokens=args.calib_tokens, seq_len=args.seq_len,
                                    batch_size=args.batch_size, field=args.field, device=args.device,
                                    placement=options.placement(args))
    grid = GridSettings(ks=args.k, null_seeds=args.null_seeds, null=args.null, seed=args.seed,
                        centred=args.centred, prediction_gain=args.fold_final_norm,
                        roles=options.roles_arg(args.roles), layers=args.layers)
    svd = None if args.no_svd else SvdSettings() if args.svd_r is None else SvdSettings(r=args.svd_r)
    request = ProbeRequest(args.base, tuple(args.post or ()), series=args.series, calibration=calib, grid=grid,
                           svd=svd, out=args.out, overwrite=args.overwrite,
                           allow_dtype_mismatch=args.allow_dtype_mismatch, cards=args.cards)
    with using(progress=not args.quiet, cache_dir=args.cache_dir):
        res = run_probe(request)
    if args.series:
        return options.show_probe(res, "members/, series.csv, series.png", "the series, member by member")
    if len(request.posts) > 1:
        return options.show_probe(res, "rsf.csv, compare.csv, compare.png, summary.md", "RSF per fine-tune")
    return options.show_probe(res, "rsf.csv, headline.csv, " + ("svd.csv, " if svd else "") +
                              ("directions.jsonl, " if res.cards is not None else "") + "summary.md/.html and plots",
                              "RSF headline (mean over layers; 1 = isotropic)")
