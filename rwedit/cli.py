"""The ``rwedit`` command line: a thin layer over the Python API (one function per subcommand)."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from rwedit import __version__

DESCRIPTION = """\
rwedit: weight-space interventions on Hugging Face causal language models.

Measure where post-training changed a model's weights (read vs write pathway), apply closed-form
rank-1 edits with matched controls as PEFT adapters, and score their behavioural effect.
Every command reads local folders or Hub ids (org/name[@revision]); weights are streamed tensor by
tensor from safetensors, so a pair of large checkpoints never sits in memory at once.
"""

EPILOG = """\
examples:
  rwedit archs                                    supported architectures and their role modules
  rwedit deltas --base BASE --post POST --out deltas.csv
                                                  per-layer, per-role ||dW||_F of a checkpoint pair

Run `rwedit COMMAND --help` for the options of a command.
"""


def _cmd_archs(args: argparse.Namespace) -> int:
    from rwedit.architectures import ARCHITECTURES, FUSED_LAYOUTS  # noqa: F401

    for spec in ARCHITECTURES:
        print(f"{spec.name}  (model_type: {', '.join(spec.model_types)}; layers: {spec.layers}.N)")
        for role, slot in spec.roles.items():
            extra = [f"fused: {slot.fused}"] if slot.fused else []
            extra += [f"reads: {slot.norm}"] if slot.norm else []
            extra += ["Conv1D (stored transposed)"] if spec.conv1d else []
            print(f"  {role:<5} {slot.module}" + (f"   [{'; '.join(extra)}]" if extra else ""))
        print(f"  unembed {spec.unembed} (tied: {spec.embed}); final norm: {spec.final_norm}")
        if spec.notes:
            print(f"  note: {spec.notes}")
    return 0


def _cmd_deltas(args: argparse.Namespace) -> int:
    from rwedit.checkpoints import Checkpoint, CheckpointPair
    from rwedit.probes.norms import delta_norms, write_csv

    pair = CheckpointPair(
        Checkpoint.open(args.base, allow_pickle=args.allow_pickle),
        Checkpoint.open(args.post, allow_pickle=args.allow_pickle),
    )
    roles = args.roles.split(",") if args.roles else None
    rows = delta_norms(pair, roles=roles, progress=not args.quiet)
    if args.out:
        print(f"wrote {write_csv(rows, args.out)}")
    print(f"{'layer':>5} {'role':<8} {'shape':>13} {'||W_base||':>11} {'||dW||':>11} {'relative':>9}")
    for r in rows:
        layer = "-" if r.layer is None else r.layer
        print(f"{layer:>5} {r.role:<8} {f'{r.d_out}x{r.d_in}':>13} {r.base_norm:11.4g} {r.delta_norm:11.4g} {r.relative:9.3g}")
    return 0


def _pair_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base", required=True, help="base checkpoint: local folder or Hub id org/name[@revision]")
    p.add_argument("--post", required=True, help="post-trained checkpoint of the same architecture")
    p.add_argument("--allow-pickle", action="store_true",
                   help="accept *.bin pickle weights (they can execute code when loaded; off by default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rwedit", description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"rwedit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands: dict[str, Callable[[argparse.Namespace], int]] = {}

    p = sub.add_parser("archs", help="list supported architectures and the modules of each role")
    commands["archs"] = _cmd_archs

    p = sub.add_parser(
        "deltas",
        help="per-layer, per-role Frobenius norms of W_post - W_base (streamed)",
        description="Stream two checkpoints tensor by tensor and report ||W_base||, ||dW|| and "
        "||dW||/||W_base|| for every layer and role (q k v o up gate down unembed).",
    )
    _pair_args(p)
    p.add_argument("--roles", help="comma-separated subset of roles (default: all)")
    p.add_argument("--out", help="also write the table as CSV to this path")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    commands["deltas"] = _cmd_deltas

    parser.set_defaults(_commands=commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return args._commands[args.command](args)
    except (ValueError, FileNotFoundError, KeyboardInterrupt) as e:
        if args.debug:
            raise
        msg = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"rwedit {args.command}: error: {msg}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2


if __name__ == "__main__":
    sys.exit(main())
