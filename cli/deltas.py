"""Per-layer, per-role Frobenius norms of W_post - W_base (streamed).

Stream two checkpoints tensor by tensor and report ||W_base||, ||dW|| and ||dW||/||W_base|| for every layer
and role (q k v o up gate down unembed).
"""

from __future__ import annotations

import argparse

from rwedit.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    options.add_pair(p)
    options.add_roles(p)
    options.add_out(p, what="output folder: also write the table as OUT/deltas.csv")
    options.add_overwrite(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    import pandas as pd

    from rwedit.probes.pipeline import NormsSettings, ProbeRequest, run_probe

    request = ProbeRequest(args.base, (args.post,), grid=None, svd=None,
                           norms=NormsSettings(roles=options.roles_arg(args.roles)), out=args.out,
                           overwrite=args.overwrite, allow_dtype_mismatch=args.allow_dtype_mismatch)
    res = run_probe(request)
    if args.out:
        print(f"wrote {args.out}/deltas.csv")
    mm = res.meta["dtype_mismatch"]
    if mm:
        print(f"base and post are stored as {mm['base']} and {mm['post']}: `floor` is the ||dW|| a bare conversion "
              f"of the base would show; a delta near it is rounding noise")
    print(f"{'layer':>5} {'role':<8} {'shape':>13} {'||W_base||':>11} {'||dW||':>11} {'relative':>9}"
          + (f" {'floor':>11}" if mm else ""))
    for r in res.norms.itertuples():
        layer = "-" if pd.isna(r.layer) else r.layer
        print(f"{layer:>5} {r.role:<8} {f'{r.d_out}x{r.d_in}':>13} {r.base_norm:11.4g} {r.delta_norm:11.4g} "
              f"{r.relative:9.3g}" + (f" {r.rounding_floor:11.4g}" if mm else ""))
    return 0
