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
  rwedit quickstart                               offline, end to end on the bundled model organism:
                                                  probes, edits vs controls, lm-eval scores, report
  rwedit organism                                 build/reuse the organism (pretrained, aligned, SFT)
  rwedit archs                                    supported architectures and their role modules
  rwedit deltas --base BASE --post POST --out deltas.csv
                                                  per-layer, per-role ||dW||_F of a checkpoint pair
  rwedit probe --base BASE --post POST --calib text.txt.gz --out probe/
                                                  RSF grid (read/write side vs activation/prediction
                                                  subspaces, random null), plots, summary.md
  rwedit svd --base BASE --post POST --out svd/   singular-value scaling and rotation consistency
  rwedit edit --spec recipes/edit-example.yaml --out edits/
                                                  rank-1 edit + matched controls as PEFT adapters
  rwedit apply edits/adapters/NAME --prompt "..."  base vs edited generation
  rwedit export edits/adapters/NAME --push-to-hub you/name
  rwedit eval --model BASE --adapters edits/adapters --tasks rwedit_hh_preference --limit 100
                                                  lm-eval + direct metrics, base and each adapter
  rwedit run recipes/control-experiment.yaml --out runs/ctl
                                                  the causal control experiment: probe, edits,
                                                  scores, report (--resume after an interruption)
  rwedit report runs/ctl                          rebuild report.md and plots from results.jsonl

Run `rwedit COMMAND --help` for the options of a command.
"""


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml

    from rwedit.evals.experiment import Recipe, run_experiment
    from rwedit.evals.svd_experiment import EXPERIMENT as SVD_EXPERIMENT, recipe_kind, run_svd_experiment

    path = Path(args.recipe)
    raw = yaml.safe_load(path.read_text()) if path.is_file() else None
    if isinstance(raw, dict) and "organism" in raw:  # recipes/quickstart.yaml or recipes/organism.yaml
        if "experiment" in raw:
            from rwedit.quickstart import QuickstartRecipe, run_quickstart

            report = run_quickstart(QuickstartRecipe.from_yaml(path), args.out or "runs/quickstart",
                                    model=args.model, post=args.post, progress=not args.quiet,
                                    cache_dir=args.cache_dir)
            print(f"wrote {report}")
            return 0
        args.graded, args.reduced, args.root = False, False, None
        return _cmd_organism(args)
    if recipe_kind(args.recipe) == SVD_EXPERIMENT:  # `experiment: svd-structure` (recipes/svd-structure.yaml)
        out = run_svd_experiment(args.recipe, args.out, resume=args.resume, progress=not args.quiet,
                                 overrides={"model": args.model, "post": args.post}, cache_dir=args.cache_dir)
        print(f"wrote {out}/report.md (results: {out}/results.jsonl)")
        return 0
    recipe = Recipe.from_yaml(args.recipe, overrides={"model": args.model, "post": args.post})
    out = run_experiment(recipe, args.out, resume=args.resume, progress=not args.quiet, cache_dir=args.cache_dir)
    print(f"wrote {out}/report.md (results: {out}/results.jsonl)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from rwedit.evals.report import write_report
    from rwedit.evals.svd_experiment import is_svd_run

    if is_svd_run(args.folder):  # a run of recipes/svd-structure.yaml: its own report (verdicts per claim)
        from rwedit.evals.svd_report import write_svd_report

        print(f"wrote {write_svd_report(args.folder)}")
        return 0
    print(f"wrote {write_report(args.folder, args.primary)}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from rwedit.checkpoints import Checkpoint
    from rwedit.evals.direct import DirectScorer
    from rwedit.evals.lmeval import BASE, EvalSettings, LMEvalScorer
    from rwedit.models import load_model_and_tokenizer

    settings = EvalSettings(tasks=tuple(t for t in args.tasks.split(",") if t), limit=args.limit,
                            batch_size=args.batch_size)
    model, tok = load_model_and_tokenizer(Checkpoint.open(args.model), device=args.device)
    names = []
    if args.adapters:
        from rwedit.editor.adapters import load_adapter_folder

        root = Path(args.adapters)
        names = sorted(p.name for p in root.iterdir() if (p / "adapter_config.json").exists())
        if not names:
            raise ValueError(f"{root} holds no adapter folders (none with adapter_config.json)")
        model = load_adapter_folder(model, root, names)
    lme = LMEvalScorer(model, tok, settings)
    direct = None if args.no_direct else DirectScorer(model, tok)
    sink = open(args.out, "w") if args.out else sys.stdout
    try:
        for name in [BASE] + names:
            row = {"condition": name, **(direct.score(name) if direct else {}), **lme.score(name)}
            sink.write(json.dumps(row) + "\n")
            sink.flush()
    finally:
        if args.out:
            sink.close()
    return 0


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


def _ints(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _roles(text: str | None) -> tuple[str, ...] | None:
    return tuple(x.strip() for x in text.split(",") if x.strip()) if text else None


def _cmd_probe(args: argparse.Namespace) -> int:
    from rwedit.probes.grid import GridSettings
    from rwedit.probes.pipeline import CalibrationSettings, run_rsf_probe

    calib = None
    if args.calib:
        calib = CalibrationSettings(args.calib, tokens=args.calib_tokens, seq_len=args.seq_len,
                                    batch_size=args.batch_size, field=args.field, device=args.device)
    settings = GridSettings(ks=args.k, null_seeds=args.null_seeds, seed=args.seed, centred=args.centred,
                            prediction_gain=args.fold_final_norm, roles=_roles(args.roles),
                            layers=args.layers)
    out = run_rsf_probe(args.base, args.post, args.out, calib, settings, allow_pickle=args.allow_pickle,
                        cache_dir=args.cache_dir, progress=not args.quiet)
    print(f"wrote {out}/rsf.csv, headline.csv, summary.md and plots")
    print((out / "summary.md").read_text().split("## Files")[0])
    return 0


def _cmd_svd(args: argparse.Namespace) -> int:
    from rwedit.probes.pipeline import run_svd_probe

    r = args.r if args.r == "full" else int(args.r)
    out = run_svd_probe(args.base, args.post, args.out, r=r, method=args.method, roles=_roles(args.roles),
                        allow_pickle=args.allow_pickle, progress=not args.quiet)
    print(f"wrote {out}/svd.csv, summary.md and plots")
    print((out / "summary.md").read_text().split("## Files")[0])
    return 0


def _cmd_edit(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from rwedit.editor.pipeline import load_conditions_folder, run_edit
    from rwedit.editor.spec import EditSpec

    spec = EditSpec.from_yaml(args.spec)
    if args.model:
        spec = replace(spec, model=args.model)
    out = run_edit(spec, args.out, overwrite=args.overwrite, cache_dir=args.cache_dir, device=args.device,
                   progress=not args.quiet)
    info = load_conditions_folder(out)
    print(f"wrote {len(info['conditions'])} adapters to {out}/adapters (edits.json summarises them)")
    print(f"{'adapter':<28} {'kind':<10} {'alpha':>6} {'layers':<10} {'role':<5} {'RSF_read@k4':>11}")
    for c in info["conditions"]:
        e = c["edits"][0]
        rsf = e.get("rsf_read_activation_k4")
        print(f"{c['name']:<28} {c['kind']:<10} {c['alpha']:>6g} {','.join(str(x['layer']) for x in c['edits']):<10} "
              f"{e['role']:<5} {'' if rsf is None else format(rsf, '11.3g'):>11}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import json

    from rwedit.editor.export import push_to_hub, refresh_card

    metrics = json.loads(open(args.metrics).read()) if args.metrics else None
    folder = refresh_card(args.adapter, metrics)
    print(f"model card and rwedit.json refreshed in {folder}")
    if args.push_to_hub:
        url = push_to_hub(folder, args.push_to_hub, private=not args.public)
        print(f"uploaded to {args.push_to_hub} ({'public' if args.public else 'private'}): {url}")
    return 0


def _cmd_apply(args: argparse.Namespace) -> int:
    from rwedit.editor.pipeline import compare_generation

    res = compare_generation(args.adapter, args.model, args.prompt, args.max_new_tokens)
    print(f"prompt: {res['prompt']}\n\n[base]   {res['base']}\n\n[edited] {res['edited']}")
    return 0


def _recipe_path(given: str | None, name: str) -> str:
    """The given recipe, else the one shipped with rwedit (``rwedit/recipes``: works from any directory)."""
    if given:
        return given
    from importlib.resources import files

    return str(files("rwedit.recipes") / name)


def _cmd_organism(args: argparse.Namespace) -> int:
    from rwedit.organism import OrganismConfig, build_organism, check_aligned, reduced, summary_lines

    cfg = OrganismConfig.from_yaml(_recipe_path(args.recipe, "organism.yaml"))
    if args.reduced:
        cfg = reduced(cfg)
    org = build_organism(cfg, args.root, progress=not args.quiet, lambdas=None if args.graded else (0.0, 1.0))
    report = org.report()
    print("\n".join(summary_lines(report)))
    print(f"\npretrained: {org.pretrained}\naligned:    {org.aligned}\nSFT:        {org.sft}")
    check_aligned(report)
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from rwedit.quickstart import QuickstartRecipe, run_quickstart

    recipe = QuickstartRecipe.from_yaml(_recipe_path(args.recipe, "quickstart.yaml"))
    if args.graded:
        from dataclasses import replace

        recipe = replace(recipe, graded=True)
    path = run_quickstart(recipe, args.out, model=args.model, post=args.post, sft=args.sft,
                          progress=not args.quiet, cache_dir=args.cache_dir, organism_root=args.organism_root,
                          use_reduced=args.reduced)
    text = path.read_text()
    print("\n" + text.split("## The organism")[0].split("## Models")[0])
    print(f"report: {path}")
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

    p = sub.add_parser(
        "probe",
        help="relative-subspace-fraction (RSF) grid of W_post - W_base, with plots and a summary",
        description="RSF of every layer x role delta on the read side (vs the principal subspace of the "
        "module's input activations, from --calib) and the write side (vs the prediction subspace of the "
        "unembedding), against random subspaces as the null. Writes rsf.csv (tidy, one row per layer x "
        "role x side x subspace x k), headline.csv, spectrum.csv, heatmaps, RSF-vs-k curves, summary.md "
        "and meta.json (every setting and the statistics' provenance).",
    )
    _pair_args(p)
    p.add_argument("--calib", help="calibration text for activation subspaces: .txt[.gz] (one text per line), "
                   ".jsonl[.gz] (field 'text' or 'chosen'), a datasets folder, or a dataset name")
    p.add_argument("--calib-tokens", type=int, default=50_000, help="token budget of the calibration set (default 50000)")
    p.add_argument("--seq-len", type=int, default=256, help="calibration sequence length (default 256)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--field", help="jsonl/dataset field holding the text")
    p.add_argument("--device", default="cpu", help="device for the calibration forward passes (cpu, cuda, auto)")
    p.add_argument("--k", type=_ints, default=(1, 4, 16, 64), help="subspace dimensions, e.g. 1,4,16,64 (clipped to d)")
    p.add_argument("--null-seeds", type=int, default=8, help="random subspaces per delta for the null (default 8)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--centred", action="store_true", help="activation subspace from the centred covariance")
    p.add_argument("--fold-final-norm", action="store_true", help="prediction subspace of W_U diag(gamma_final)")
    p.add_argument("--roles", help="comma-separated roles (default: all)")
    p.add_argument("--layers", type=_ints, help="comma-separated layers (default: all)")
    p.add_argument("--out", default="rwedit-probe", help="output folder (default ./rwedit-probe)")
    p.add_argument("--cache-dir", help="activation-statistics cache (default ~/.cache/rwedit/stats or $RWEDIT_CACHE)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    commands["probe"] = _cmd_probe

    p = sub.add_parser(
        "svd",
        help="SVD structure probe: singular-value scaling and singular-vector rotations (He & Cao)",
        description="Per matrix: least-squares singular-value scale and residual, orthogonality and "
        "consistency of the left/right rotations, reparameterisation error. Writes svd.csv, plots, summary.md.",
    )
    _pair_args(p)
    p.add_argument("--r", default="64", help="top-r singular triplets, or 'full' (default 64)")
    p.add_argument("--method", choices=("auto", "full", "lowrank"), default="auto",
                   help="full SVD, randomized svd_lowrank, or auto (full when min(d) <= 1024)")
    p.add_argument("--roles", help="comma-separated roles (default: all layer roles)")
    p.add_argument("--out", default="rwedit-svd", help="output folder (default ./rwedit-svd)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    commands["svd"] = _cmd_svd

    p = sub.add_parser(
        "edit",
        help="build a rank-1 edit and its matched controls as PEFT adapters from a YAML spec",
        description="Reads an edit spec (see recipes/edit-example.yaml), computes the read direction v "
        "(principal/lowvar eigenvector of the module's input second moment, random, or given) and the write "
        "direction b (closed form: observed delta or accumulated gradient), builds the matched controls "
        "(random v x N seeds, low-variance v, write-pathway edit) at the same ||dW||_F = |alpha|, and saves "
        "each as a PEFT adapter folder under OUT/adapters/NAME with rwedit.json and a model card.",
    )
    p.add_argument("--spec", required=True, help="edit spec YAML")
    p.add_argument("--model", help="override the spec's model (local folder or Hub id)")
    p.add_argument("--out", required=True, help="output folder (must not exist unless --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto (accelerate device_map)")
    p.add_argument("--cache-dir", help="activation-statistics cache (default ~/.cache/rwedit/stats or $RWEDIT_CACHE)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    commands["edit"] = _cmd_edit

    p = sub.add_parser(
        "export",
        help="refresh an adapter's model card (optionally with metrics) and push it to the Hub",
        description="ADAPTER is a folder written by `rwedit edit` (OUT/adapters/NAME). The model card and "
        "rwedit.json are rewritten, with --metrics (a JSON object of metric -> value or {value, stderr}) "
        "attached; --push-to-hub uploads the folder (private unless --public) using your Hugging Face login "
        "or HF_TOKEN; the token is never written anywhere. Offline, the upload fails and the folder is left intact.",
    )
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("--metrics", help="JSON file of behaviour/probe metrics to put on the card")
    p.add_argument("--push-to-hub", metavar="REPO", help="upload to this Hub repo (org/name)")
    p.add_argument("--public", action="store_true", help="make the Hub repo public (default: private)")
    commands["export"] = _cmd_export

    p = sub.add_parser("apply", help="greedy generation from the base model and from base + adapter, side by side")
    p.add_argument("adapter", help="adapter folder")
    p.add_argument("--model", help="base model (default: the one recorded in the adapter's rwedit.json)")
    p.add_argument("--prompt", required=True)
    p.add_argument("--max-new-tokens", type=int, default=40)
    commands["apply"] = _cmd_apply

    p = sub.add_parser(
        "run",
        help="run a recipe: probe the pair, build the edit and its controls, score every condition, report",
        description="Runs an experiment recipe (see recipes/control-experiment.yaml) into OUT: probe/ (RSF of the "
        "observed pair), edit/ (adapters of the edit and its matched controls, with model cards), results.jsonl "
        "(one row per condition: probe metrics next to behaviour metrics with stderr), report.md and plots. "
        "The store is append-only; after an interruption (even kill -9) rerun with --resume and nothing already "
        "stored is recomputed. A folder started by a different recipe is refused.",
    )
    p.add_argument("recipe", help="recipe YAML")
    p.add_argument("--out", help="output folder (default: the recipe's out:, else runs/NAME)")
    p.add_argument("--resume", action="store_true", help="continue the run stored in --out")
    p.add_argument("--model", help="override the recipe's base model (local folder or Hub id)")
    p.add_argument("--post", help="override the recipe's post-trained model")
    p.add_argument("--cache-dir", help="activation-statistics cache (default ~/.cache/rwedit/stats or $RWEDIT_CACHE)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    commands["run"] = _cmd_run

    p = sub.add_parser("report", help="rebuild report.md, headline.csv, verdicts.csv and plots of a run",
                       description="Reads DIR/results.jsonl and DIR/run.json only; nothing is recomputed.")
    p.add_argument("folder", help="experiment folder written by `rwedit run`")
    p.add_argument("--primary", help="behaviour metric of the verdicts (default: the recipe's primary:)")
    commands["report"] = _cmd_report

    p = sub.add_parser(
        "eval",
        help="score a base model and its adapters with lm-eval and the direct metrics",
        description="Loads the model once and scores the base and every adapter in --adapters (a folder of "
        "adapter folders, e.g. OUT/adapters of `rwedit edit`) by switching adapters in place. Bundled offline "
        "tasks: rwedit_hh_preference, rwedit_blimp, rwedit_wikitext; any registered lm-eval task works when its "
        "data can be downloaded. Writes one JSON line per condition to --out (default: stdout).",
    )
    p.add_argument("--model", required=True, help="base model (local folder or Hub id)")
    p.add_argument("--adapters", help="folder of adapter folders to score next to the base")
    p.add_argument("--tasks", default="rwedit_hh_preference,rwedit_blimp,rwedit_wikitext", help="comma list")
    p.add_argument("--limit", type=int, help="items per task (default: all)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-direct", action="store_true", help="skip the direct metrics")
    p.add_argument("--out", help="JSONL output file")
    p.add_argument("--device", default="cpu")
    commands["eval"] = _cmd_eval

    p = sub.add_parser(
        "organism",
        help="build (or reuse) the offline model organism: CE-pretrained Llama, DPO-aligned, SFT control",
        description="Trains a byte-level BPE tokenizer and a small Llama on the bundled WikiText-2 text (+ the "
        "training pairs' prompts) with transformers.Trainer, then aligns it with TRL's DPO on hh-rlhf training "
        "pairs (lines 0-1899) and trains the SFT control (CE on the chosen responses, same data and steps). "
        "--graded adds the graded objective lambda*L_pref + (1-lambda)*L_CE for every lambda of the recipe. "
        "Deterministic from the recipe's seed; every stage is cached by a hash of its settings under "
        "$RWEDIT_CACHE/organism (default ~/.cache/rwedit/organism) and reused. Prints held-out loss and "
        "preference metrics before/after; fails if the aligned model is not measurably aligned.",
    )
    p.add_argument("--recipe", help="organism recipe YAML (default: the shipped recipes/organism.yaml)")
    p.add_argument("--graded", action="store_true", help="also train every lambda of align.lambdas")
    p.add_argument("--reduced", action="store_true", help="a seconds-scale organism (tiny dims, few steps) for smoke tests")
    p.add_argument("--root", help="where organisms are cached (default $RWEDIT_CACHE/organism)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    commands["organism"] = _cmd_organism

    p = sub.add_parser(
        "quickstart",
        help="offline end to end: organism, RSF/SVD probes, trajectories, causal control experiment, report",
        description="Builds (or reuses) the model organism, probes (pretrained -> aligned) and (pretrained -> SFT) "
        "with the RSF grid and the SVD structure probe, measures the training-side RSF trajectories, runs the causal "
        "control experiment (principal read-pathway rank-1 edit vs random, low-variance and write-pathway controls "
        "at matched norm, alpha sweep) scored with the bundled lm-eval tasks and direct metrics, exports the edit "
        "adapter with its model card, and writes OUT/report.md whose first screen says what was found. "
        "The organism is built once (minutes on a CPU) and cached; later runs reuse it. "
        "--model/--post run the same on any pair. Rerunning into the same OUT resumes.",
    )
    p.add_argument("--recipe", help="quickstart recipe YAML (default: the shipped recipes/quickstart.yaml)")
    p.add_argument("--out", default="runs/quickstart", help="output folder (default runs/quickstart)")
    p.add_argument("--model", help="base checkpoint instead of the organism (local folder or Hub id)")
    p.add_argument("--post", help="its post-trained checkpoint (with --model)")
    p.add_argument("--sft", help="optional second post-trained checkpoint to probe (e.g. an SFT control)")
    p.add_argument("--graded", action="store_true", help="also train the graded-objective grid and plot RSF vs lambda")
    p.add_argument("--reduced", action="store_true", help="the seconds-scale organism (smoke test of the whole path)")
    p.add_argument("--organism-root", help="where organisms are cached (default $RWEDIT_CACHE/organism)")
    p.add_argument("--cache-dir", help="activation-statistics cache (default ~/.cache/rwedit/stats or $RWEDIT_CACHE)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    commands["quickstart"] = _cmd_quickstart

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
    except (ValueError, OSError, RuntimeError, KeyboardInterrupt) as e:
        if args.debug:
            raise
        msg = "interrupted" if isinstance(e, KeyboardInterrupt) else str(e)
        print(f"rwedit {args.command}: error: {msg}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2


if __name__ == "__main__":
    sys.exit(main())
