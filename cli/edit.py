"""Build a rank-1 edit and its matched controls as PEFT adapters from a YAML spec.

Reads an edit spec (see recipes/edit-example.yaml), computes the read direction v (principal/lowvar
eigenvector of the module's input second moment, random, or given) and the write direction b (closed form:
observed delta or accumulated gradient), builds the matched controls (random v x N seeds, low-variance v,
write-pathway edit) at the same ||dW||_F = |alpha|, and saves each as a PEFT adapter folder under
OUT/adapters/NAME with rwedit.json and a model card.
"""

from __future__ import annotations

import argparse

from rwedit.cli import options


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="edit spec YAML, or a shipped one by name (edit-example)")
    options.add_model(p, when_omitted="the spec's model")
    options.add_out(p, required=True, what="output folder (must not exist unless --overwrite)")
    options.add_overwrite(p)
    options.add_allow_pickle(p)
    options.add_placement(p)
    options.add_set(p)
    options.add_cache_dir(p)
    options.add_quiet(p)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rwedit.editor.pipeline import load_conditions_folder, run_edit
    from rwedit.editor.spec import EditSpec

    from rwedit.recipes import find

    spec = EditSpec.from_yaml(find(args.spec), sets=args.sets)
    if args.model:
        spec = replace(spec, model=args.model)
    out = run_edit(spec, args.out, overwrite=args.overwrite, device=args.device, placement=options.placement(args))
    info = load_conditions_folder(out)
    print(f"wrote {len(info['conditions'])} adapters to {out}/adapters (edits.json summarises them)")
    print(f"{'adapter':<28} {'kind':<10} {'alpha':>6} {'layers':<10} {'role':<5} {'RSF_read@k4':>11}")
    for c in info["conditions"]:
        e = c["edits"][0]
        rsf = e.get("rsf_read_activation_k4")
        print(f"{c['name']:<28} {c['kind']:<10} {c['alpha']:>6g} {','.join(str(x['layer']) for x in c['edits']):<10} "
              f"{e['role']:<5} {'' if rsf is None else format(rsf, '11.3g'):>11}")
    return 0
