"""List supported architectures and the modules of each role."""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from rwedit.architectures import ARCHITECTURES

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
