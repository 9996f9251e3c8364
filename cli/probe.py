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

    def flag(name, config, field, **kw):  # the option's help is the configuration field's
        shown = kw.get("default") is not None and not isinstance(kw.get("default"), bool)
        p.add_argument(name, help=config_help(config, field, "") + (" (default %(default)s)" if shown else ""), **kw)

    options.add_pair(p, many=True)
    p.add_argument("--series", help="a checkpoint series against the base instead of --post: a comma list of "
                   "folders or Hub ids with @revision, a YAML list, or a folder of checkpoint folders (checkpoint-N); "
                   "one member at a time into OUT/members/, resumable, with series.csv and series.png by step")
    flag("--svd-r", SVD, "r", type=rank_arg)
    p.add_argument("--no-svd", action="store_true", help="skip the SVD structure probe (the RSF grid alone)")
    flag("--calib", CALIBRATION, "data")
    flag("--calib-tokens", CALIBRATION, "tokens", type=options.positive_int, default=50_000)
    flag("--seq-len", CALIBRATION, "seq_len", type=options.positive_int, default=256)
    options.add_batch_size(p)
    flag("--field", CALIBRATION, "field")
    options.add_placement(p)
    flag("--k", GRID, "ks", type=options.ints, default=",".join(map(str, DEFAULT_KS)))
    flag("--null-seeds", GRID, "null_seeds", type=options.count, default=0)
    flag("--null", GRID, "null", choices=("auto", "exact", "sketch", "seeds"), default="auto")
    flag("--seed", GRID, "seed", type=int, default=0)
    flag("--centred", GRID, "centred", action="store_true")
    flag("--fold-final-norm", GRID, "prediction_gain", action="store_true")
    options.add_roles(p)
    flag("--layers", GRID, "layers", type=options.ints)
    flag("--cards", REQUEST, "cards", type=options.count, default=4)
    options.add_out(p, default="rwedit-probe")
    options.add_cache_dir(p)
    options.add_overwrite(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from rwedit.probes.grid import GridSettings
    from rwedit.probes.pipeline import CalibrationSettings, ProbeRequest, SvdSettings, run_probe

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
    res = run_probe(request)
    if args.series:
        return options.show_probe(res, "members/, series.csv, series.png", "the series, member by member")
    if len(request.posts) > 1:
        return options.show_probe(res, "rsf.csv, compare.csv, compare.png, summary.md", "RSF per fine-tune")
    return options.show_probe(res, "rsf.csv, headline.csv, " + ("svd.csv, " if svd else "") +
                              ("directions.jsonl, " if res.cards is not None else "") + "summary.md/.html and plots",
                              "RSF headline (mean over layers; 1 = isotropic)")
