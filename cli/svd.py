"""SVD structure probe: singular-value scaling and singular-vector rotations (He & Cao).

Per matrix: least-squares singular-value scale and residual, orthogonality and consistency of the left/right
rotations, reparameterisation error. Writes svd.csv, plots, summary.md.
"""

from __future__ import annotations

import argparse

from rwedit.cli import options


def rank_arg(text: str) -> int | str:
    """``--r``: a positive integer or ``full``."""
    if text == "full":
        return text
    try:
        return options.positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'full', got {text!r}") from None


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_pair(p)
    p.add_argument("--r", default=64, type=rank_arg, help="top-r singular triplets, or 'full' (default 64)")
    p.add_argument("--method", choices=("auto", "full", "lowrank"), default="auto",
                   help="full SVD, the certified randomized top-r SVD (refused where it cannot meet its error "
                        "bound), or auto (full when min(d) <= 1024, else randomized with the full SVD as fallback)")
    options.add_roles(p)
    options.add_out(p, default="rwedit-svd")
    options.add_overwrite(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from rwedit.probes.pipeline import run_svd_probe

    return options.show_probe(run_svd_probe(args.base, args.post, args.out, r=args.r, method=args.method,
                                            roles=options.roles_arg(args.roles), progress=not args.quiet,
                                            overwrite=args.overwrite,
                                            allow_dtype_mismatch=args.allow_dtype_mismatch),
                              "svd.csv, summary.md and plots", "Per role (mean and sd over layers)")
