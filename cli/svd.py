"""SVD structure probe: singular-value scaling and singular-vector rotations (He & Cao).

Per matrix: least-squares singular-value scale and residual, orthogonality and consistency of the left/right
rotations, reparameterisation error. Writes svd.csv, plots, summary.md.
"""

from __future__ import annotations

import argparse

from rwedit.cli import options
from rwedit.cli.options import config_help

SVD = "rwedit.probes.pipeline:SvdSettings"


def rank_arg(text: str) -> int | str:
    """``--r``: a positive integer or ``full``."""
    if text == "full":
        return text
    try:
        return options.positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    from rwedit.probes.svd import DEFAULT_R

    options.add_pair(p)
    p.add_argument("--r", default=DEFAULT_R, type=rank_arg, help=config_help(SVD, "r", ""))
    p.add_argument("--method", choices=("auto", "full", "lowrank"), default="auto", help=config_help(SVD, "method", ""))
    options.add_roles(p)
    options.add_out(p, default="rwedit-svd")
    options.add_overwrite(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from rwedit.probes.pipeline import ProbeRequest, SvdSettings, run_probe

    request = ProbeRequest(args.base, (args.post,), grid=None,
                           svd=SvdSettings(r=args.r, method=args.method, roles=options.roles_arg(args.roles)),
                           out=args.out, overwrite=args.overwrite, allow_dtype_mismatch=args.allow_dtype_mismatch)
    res = run_probe(request)
    return options.show_probe(res, "svd.csv, summary.md and plots", "Per role (mean and sd over layers)")
