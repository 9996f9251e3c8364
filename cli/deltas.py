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
    from rwedit.checkpoints import Checkpoint, CheckpointPair
    from rwedit.probes.norms import delta_norms, write_csv

    from rwedit.outputs import atomic_folder, check_output_folder

    if args.out:
        check_output_folder(args.out, args.overwrite)  # refused before the pass, not after it
    pair = CheckpointPair(Checkpoint.open(args.base), args.post,
                          allow_dtype_mismatch=args.allow_dtype_mismatch)
    roles = options.roles_arg(args.roles)
    rows = delta_norms(pair, roles=list(roles) if roles else None, progress=not args.quiet)
    if args.out:
        with atomic_folder(args.out, overwrite=args.overwrite) as tmp:
            write_csv(rows, tmp / "deltas.csv")
        print(f"wrote {args.out}/deltas.csv")
    floor = pair.dtype_mismatch is not None
    if floor:
        print(f"base and post are stored as {pair.dtype_mismatch[0]} and {pair.dtype_mismatch[1]}: `floor` is the "
              f"||dW|| a bare conversion of the base would show; a delta near it is rounding noise")
    print(f"{'layer':>5} {'role':<8} {'shape':>13} {'||W_base||':>11} {'||dW||':>11} {'relative':>9}"
          + (f" {'floor':>11}" if floor else ""))
    for r in rows:
        layer = "-" if r.layer is None else r.layer
        print(f"{layer:>5} {r.role:<8} {f'{r.d_out}x{r.d_in}':>13} {r.base_norm:11.4g} {r.delta_norm:11.4g} "
              f"{r.relative:9.3g}" + (f" {r.rounding_floor:11.4g}" if floor else ""))
    return 0
