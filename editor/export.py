"""Adapter folders a user can load with ``PeftModel.from_pretrained``: weights, config, a machine-
readable ``rwedit.json`` and a model card, written to a temporary folder and renamed into place."""

from __future__ import annotations

import json
import re
from pathlib import Path

from rwedit import __version__
from rwedit.errors import ExportError
from rwedit.outputs import dumps, write_text

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def check_repo_id(repo_id: str) -> str:
    """A Hub repository id ``org/name`` (checked before anything is written or uploaded)."""
    if not _HUB_ID.match(repo_id) or ".." in repo_id or repo_id.endswith((".", "-")):
        raise ExportError(f"{repo_id!r} is not a Hub repository id; give it as org/name (e.g. you/my-edit)")
    return repo_id


def base_model_id(info: dict) -> str | None:
    """The base model's Hub id for the card's metadata, as the edit recorded it (``base``) for a Hub model."""
    base = info.get("base") or {}
    return base["name_or_path"] if base.get("hub") else None


#: the public datasets behind rwedit's metrics (for the card's model-index): name -> (type, name, config, split)
_DATASETS = (
    (("pref_", "rwedit_hh_preference"), ("Anthropic/hh-rlhf", "hh-rlhf held-out pairs 1900-2311", "harmless-base", "test")),
    (("blimp",), ("nyu-mll/blimp", "BLiMP (8 paradigms)", None, "train")),
    (("wikitext", "ce_", "kl_", "ppl_"), ("Salesforce/wikitext", "WikiText-2 test", "wikitext-2-raw-v1", "test")),
)


def _eval_results(metrics: dict) -> list:
    """The card's measured numbers of a known dataset as model-index entries (4 significant digits, the stderr in
    ``metric_args``)."""
    from huggingface_hub import EvalResult

    out = []
    for name, v in metrics.items():
        value, se = (v.get("value"), v.get("stderr")) if isinstance(v, dict) else (v, metrics.get(f"{name}_stderr"))
        if name.endswith("_stderr") or not isinstance(value, (int, float)) or isinstance(value, bool):
            continue
        if not isinstance(se, (int, float)) or isinstance(se, bool):
            se = None
        ds = next((d for keys, d in _DATASETS if any(k in name for k in keys)), None)
        if ds is None:
            continue
        out.append(EvalResult(task_type="text-generation", dataset_type=ds[0], dataset_name=ds[1], dataset_config=ds[2],
                              dataset_split=ds[3], metric_type=name, metric_name=name,
                              metric_value=float(f"{value:.4g}"),
                              metric_args=None if se is None else {"stderr": float(f"{se:.2g}")}))
    return out


def model_card(info: dict, repo_id: str | None = None):
    """The adapter's model card (a ``huggingface_hub.ModelCard``): metadata (base model, adapter relation,
    library, tags, the measured metrics as a model-index) and what was edited, how, and what it did;
    ``repo_id`` (when pushed) is named in the usage snippet. An adapter that is not a rank-1 edit (a part of
    an observed update, :mod:`rwedit.evals.decompose`) describes itself in ``info["card"]``: its ``tags`` and
    the markdown ``lines`` that replace the rank-1 edit's description."""
    from huggingface_hub import ModelCard, ModelCardData

    spec, cond = info["spec"], info["condition"]
    base = info.get("base") or {"name_or_path": spec["model"], "revision": None}
    bid = base_model_id(info)
    metrics = info.get("metrics") or {}
    name = repo_id or f"rwedit-{cond['name']}"
    own = info.get("card") or {}
    data = ModelCardData(base_model=bid, library_name="peft", pipeline_tag="text-generation",
                         tags=["rwedit", *own.get("tags", ["rank-1-edit"]), "lora", "interpretability"],
                         model_name=name, eval_results=_eval_results(metrics) or None)
    if bid:
        data.base_model_relation = "adapter"
    lines = list(own["lines"]) if own else _edit_lines(info, base)
    lines += _card_end(info, base, metrics, repo_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _edit_lines(info: dict, base: dict) -> list[str]:
    """A rank-1 edit's description: the edit, its condition and one table row per edited matrix."""
    spec, cond = info["spec"], info["condition"]
    e = spec["edit"]
    rev = f" (revision `{base['revision']}`)" if base.get("revision") else ""
    lines = [
        f"# rwedit rank-1 edit: `{cond['name']}`",
        "",
        f"A closed-form rank-1 weight edit ΔW = α·b vᵀ (‖b‖ = ‖v‖ = 1, so ‖ΔW‖_F = |α| = "
        f"{', '.join(sorted({format(e['norm'], '.4g') for e in cond['edits']}))}) "
        f"of base model `{base['name_or_path']}`{rev}, stored as a PEFT LoRA adapter (r = 1, lora_alpha = 1, "
        f"lora_A = vᵀ, lora_B = α b). Made with rwedit {info['rwedit_version']}.",
        "",
        f"- **condition**: `{cond['kind']}`" + (f" (seed {cond['seed']})" if cond.get("seed") is not None else "")
        + (f" (index {cond['index']})" if cond.get("index") is not None else ""),
        f"- **experiment's main edit**: role `{e['role']}`, layers {list(e['layers'])}, v = `{e['v']}`, b rule = "
        f"`{e['b']}`" + (f" (objective `{e['objective']}` on `{e['data']}`)" if e["b"] == "gradient" else "")
        + (f" (observed post-trained checkpoint `{spec['post']}`)" if e["b"] == "delta" else ""),
        "",
        "| layer | role | ‖ΔW‖_F | v | v eigenvalue | v seed | b rule |",
        "|---|---|---|---|---|---|---|",
    ]
    for ed in cond["edits"]:
        lam = ed.get("v_eigenvalue")
        lines.append(f"| {ed['layer']} | {ed['role']} | {ed['norm']:.4g} | {ed.get('v_kind', '')}"
                     f"{'[' + str(ed['v_index']) + ']' if ed.get('v_index') is not None else ''} | "
                     f"{'' if lam is None else format(lam, '.4g')} | {ed.get('v_seed', '')} | {ed.get('b_rule', '')} |")
    return lines


def _card_end(info: dict, base: dict, metrics: dict, repo_id: str | None) -> list[str]:
    """The card's shared second half: provenance of the statistics, the measured effects, how to load it."""
    lines, stats = [], info.get("activation_stats")
    if stats:
        lines += ["", f"Activation directions come from E[a aᵀ] of the edited module's inputs over "
                      f"{stats.get('n_tokens', '?')} tokens of `{stats.get('source', '?')}` "
                      f"(token ids sha256 `{str(stats.get('tokens_sha256', ''))[:12]}…`)."]
    if metrics:
        lines += ["", "## Measured effects", "", "| metric | value | stderr |", "|---|---|---|"]
        for k, v in metrics.items():
            if isinstance(v, dict):
                lines.append(f"| {k} | {v.get('value', '')} | {v.get('stderr', '')} |")
            else:
                lines.append(f"| {k} | {v} | |")
    else:
        lines += ["", "No behaviour scores were attached when this card was written "
                      "(`rwedit export DIR --metrics results.json` adds them)."]
    where = repr(repo_id) if repo_id else "'PATH_OR_REPO_OF_THIS_ADAPTER'"
    load_rev = f", revision={base['revision']!r}" if base.get("revision") else ""
    lines += ["", "## Use", "", "```python", "from peft import AutoPeftModelForCausalLM",
              f"model = AutoPeftModelForCausalLM.from_pretrained({where})"
              f"  # loads {base['name_or_path']}{' @ ' + base['revision'][:12] if base.get('revision') else ''} too",
              "```", "", "or, with the base loaded yourself:", "", "```python", "from peft import PeftModel",
              "from transformers import AutoModelForCausalLM",
              f"base = AutoModelForCausalLM.from_pretrained({base['name_or_path']!r}{load_rev})",
              f"model = PeftModel.from_pretrained(base, {where})", "```", "",
              "`rwedit.json` holds the full specification, every direction's provenance and the seeds."]
    return lines


def write_card_files(folder: Path, info: dict, repo_id: str | None = None) -> None:
    """``rwedit.json`` and the model card ``README.md``; both are built first and each file is replaced
    atomically, so a failure leaves the folder as it was."""
    info = {"rwedit_version": __version__, **info}
    text, card = dumps(info, indent=2), str(model_card(info, repo_id))
    write_text(folder / "rwedit.json", text)
    write_text(folder / "README.md", card)


def check_metrics(metrics, where: str) -> dict:
    """Metrics for a card: a mapping of name → value (numbers finite) or → {value, stderr} of finite numbers."""
    import math

    def ok(x):
        return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)

    if not isinstance(metrics, dict):
        raise ExportError(f"{where}: expected a JSON object of metric -> value or {{value, stderr}}, got a "
                          f"{type(metrics).__name__}; nothing was changed")
    for k, v in metrics.items():
        if isinstance(v, dict):
            vals = [v.get("value"), *([v["stderr"]] if v.get("stderr") is not None else [])]
            if "value" not in v or not all(ok(x) for x in vals):
                raise ExportError(f"{where}: metric {k!r} = {v!r}: give {{\"value\": number, \"stderr\": number}} "
                                  f"with finite numbers; nothing was changed")
        elif isinstance(v, float) and not ok(v):
            raise ExportError(f"{where}: metric {k!r} = {v!r} is not a finite number; nothing was changed")
    return metrics


#: row fields that describe a condition rather than measure it (kept out of a card's metrics)
_ROW_FIELDS = {"alpha", "seed", "index", "seconds", "n_pairs", "n_texts"}


def metrics_from_results(path: str | Path, condition: str) -> dict:
    """A card's metrics (each with its ``_stderr`` when there is one) from the row of ``condition`` in
    ``results.jsonl`` (``path``: the file or its folder, as ``rwedit eval``/``run`` write it)."""
    path = Path(path)
    file = path / "results.jsonl" if path.is_dir() else path
    if not file.exists():
        raise ExportError(f"{path}: no results.jsonl (give the --out folder of `rwedit eval` or `rwedit run`, or a "
                          f"JSON object of metric -> value); nothing was changed")
    rows = []
    for i, line in enumerate(file.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise ExportError(f"{file}, line {i}: not valid JSON; nothing was changed") from None
    row = next((r for r in rows if isinstance(r, dict) and r.get("condition") == condition), None)
    if row is None:
        raise ExportError(f"{file} has no row for {condition!r} (its conditions: "
                          f"{', '.join(str(r.get('condition')) for r in rows if isinstance(r, dict))}); nothing was changed")
    num = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
           and k not in _ROW_FIELDS}
    return {k: ({"value": v, "stderr": num[f"{k}_stderr"]} if f"{k}_stderr" in num else v)
            for k, v in num.items() if not k.endswith("_stderr")}


def save_adapter(peft_model, name: str, folder: str | Path) -> Path:
    """Save one named adapter of a loaded PeftModel as a PEFT adapter folder (what ``PeftModel.from_pretrained``
    and lm-eval's ``peft=`` read); returns it: ``folder/name`` (PEFT's layout), or ``folder`` for ``default``."""
    folder = Path(folder)
    peft_model.save_pretrained(str(folder), selected_adapters=[name])
    return folder if name == "default" else folder / name


def refresh_card(folder: str | Path, metrics: dict | None = None, repo_id: str | None = None) -> Path:
    """Re-write an exported adapter's card, optionally with behaviour/probe metrics attached and the Hub
    repo it is pushed to named in its usage snippet."""
    folder = Path(folder)
    meta_path = folder / "rwedit.json"
    if not meta_path.exists():
        raise ExportError(f"{folder} is not an rwedit adapter folder (no rwedit.json)")
    try:
        info = json.loads(meta_path.read_text())
    except ValueError as e:
        raise ExportError(f"{meta_path} is not valid JSON ({e}); re-create the adapter with `rwedit edit`") from None
    if metrics is not None:
        info["metrics"] = check_metrics(metrics, "metrics")
    write_card_files(folder, info, repo_id)
    return folder


def push_to_hub(folder: str | Path, repo_id: str, private: bool = True) -> str:
    """Upload an adapter folder with huggingface_hub (token from the usual login or HF_TOKEN)."""
    folder = Path(folder)
    if not (folder / "adapter_config.json").exists():
        raise ExportError(f"{folder} holds no adapter_config.json: export an adapter folder first")
    return push_folder(folder, repo_id, private=private, repo_type="model")


def push_folder(folder: str | Path, repo_id: str, private: bool = True, repo_type: str = "model") -> str:
    """Upload a complete local folder as a Hub repository of ``repo_type`` (model or dataset); on any failure
    nothing is half-pushed from rwedit's side and the message says how to retry."""
    from huggingface_hub import HfApi

    folder = Path(folder)
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type=repo_type)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type=repo_type,
                                 commit_message=f"rwedit {repo_type} export")
    except Exception as e:
        raise ExportError(
            f"could not upload {folder} to the Hub {repo_type} repo {repo_id!r}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Nothing was uploaded; the local folder {folder} is complete. "
            f"Check your network and `hf auth login` (or HF_TOKEN), then run the export again, or upload it "
            f"yourself: hf upload {repo_id} {folder} --repo-type {repo_type}"
        ) from None
    return str(getattr(info, "commit_url", info))
