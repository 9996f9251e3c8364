"""From a spec to a folder of adapters (the edit and its matched controls) in one call."""

from __future__ import annotations

import json
import time
from pathlib import Path

from rwedit.lazy import no_grad, torch
import yaml

from rwedit import __version__
from rwedit.architectures import model_layout
from rwedit.checkpoints import Checkpoint, hub_origin
from rwedit.data import pack_tokens, read_texts
from rwedit.editor.edits import EditCondition, build_conditions, norms_match
from rwedit.editor.export import write_card_files
from rwedit.editor.spec import PROBE_KS, EditSpec
from rwedit.errors import AdapterMismatchError, ConfigError, SpecError
from rwedit.models import Placement, check_window, input_device, load_model_and_tokenizer
from rwedit.outputs import atomic_folder, check_output_folder, dumps
from rwedit.probes.activations import ActivationStats, StatsSettings, cached_activation_stats, model_fingerprint
from rwedit.probes.directions import (cached_explain, cards_html, cards_section, edit_directions, read_cards,
                                     unembedding)
from rwedit.probes.rsf import rank1_rsf
from rwedit.runtime import runtime, stage


def edit_stats(spec: EditSpec, model, tok) -> ActivationStats | None:
    """Activation statistics of the edited role's inputs (in the run-wide cache), when the spec has calibration
    data."""
    c = spec.calibration
    if c is None:
        return None
    check_window(model, c.seq_len, "calibration.seq_len")
    param = next(model.parameters())
    if c.device not in ("cpu", param.device.type, "auto") or c.dtype not in ("float32", str(param.dtype).split(".")[-1]):
        raise SpecError(f"calibration.device/dtype = {c.device}/{c.dtype}, but the edit's model is on "
                        f"{param.device.type} in {str(param.dtype).split('.')[-1]}: the statistics are collected on the "
                        f"model the edit is built on. Choose the device where the model is loaded, or drop "
                        f"calibration.device/dtype")
    ids = calibration_ids(spec, tok)
    settings = StatsSettings(roles=(spec.edit.role,), layers=tuple(spec.edit.layers), seq_len=c.seq_len,
                             batch_size=c.batch_size)
    rt = runtime()
    return cached_activation_stats(model, ids, settings, source=c.data, cache_dir=rt.cache_dir, progress=rt.progress)


def calibration_ids(spec: EditSpec, tok):
    """The spec's packed calibration tokens (n × seq_len): what its statistics and its cards pass over."""
    c = spec.calibration
    return pack_tokens(tok, read_texts(c.data, field=c.field), c.seq_len, c.tokens)


def edit_cards(spec: EditSpec, conditions: list[EditCondition], model, tok, stats: ActivationStats | None) -> list:
    """The direction cards of every distinct edit (the edit and each control once, whatever its α): its v by
    the calibration contexts that drive it, its b (and a residual-stream v) through the logit lens; ``index``
    numbers the edits on one set of layers in build order (0: the edit itself, per layer unit with
    ``per_layer``), ``label`` names each. Cached with the statistics."""
    units: dict[str, EditCondition] = {}
    for c in conditions:
        units.setdefault(c.name.rsplit("_", 1)[0], c)  # the condition's name without its α tag
    dirs, order = [], {}
    for label, c in units.items():
        where = tuple(e.layer for e in c.edits)
        order[where] = order.get(where, -1) + 1
        dirs += edit_directions(c.edits, label, order[where])
    load = (lambda: (model, tok, calibration_ids(spec, tok))) if spec.calibration is not None else None
    return cached_explain(stats, dirs, load, unembed=unembedding(model), tokenizer=tok,
                         progress=runtime().progress)


def edit_cards_section(folder: str | Path) -> tuple[list[str], str]:
    """A report's section on the cards of an edit folder's own edit (index 0, at each layer unit; every
    control's stay in its ``directions.jsonl``): Markdown lines and the cards' HTML (none without cards)."""
    rows = read_cards(Path(folder) / "directions.jsonl", index=0)
    return cards_section(rows, "What the edit's directions are", (
        "The edit's input direction v as the calibration texts that drive it most, both signs (token in brackets), "
        "with its share of the input's second moment; its output direction b (and v, where the role reads the "
        "residual stream) as the tokens it promotes and suppresses through the unembedding. Every control's cards: "
        f"`{Path(folder).name}/directions.jsonl`; `rwedit explain` prints them.")), cards_html(rows)


def attach_probe_metrics(conditions: list[EditCondition], stats: ActivationStats | None) -> None:
    """Read-side RSF of each rank-1 ΔW = b vᵀ against the activation subspace A_k of the role's inputs
    (:func:`~rwedit.probes.rsf.rank1_rsf` of v: ‖A_kᵀ v‖² / (k/d))."""
    if stats is None:
        return
    for c in conditions:
        for e in c.edits:
            if not stats.has(e.layer, e.role):
                continue
            sp = stats.spectrum(e.layer, e.role, centred=False, top=max(PROBE_KS))
            for k in PROBE_KS:
                if k <= min(sp.d, sp.n_top):
                    e.provenance[f"rsf_read_activation_k{k}"] = rank1_rsf(e.v, sp.top(k))


def edit_inputs(spec: EditSpec) -> list[str]:
    """What an edit reads (the model, its data files): never its output folder."""
    return [spec.model, *spec.input_paths()]


def run_edit(spec: EditSpec, out: str | Path, overwrite: bool = False, device: str = "cpu",
             placement: Placement | None = None) -> Path:
    """Build the edit and its controls, save each as a PEFT adapter folder under ``out/adapters`` (the model
    whole on ``device``, or placed across devices by ``placement``)."""
    t0 = time.perf_counter()
    out = check_output_folder(out, overwrite, inputs=edit_inputs(spec))  # fail before the heavy work
    ckpt = Checkpoint.open(spec.model)
    spec.check_fits(ckpt)
    model, tok = load_model_and_tokenizer(ckpt, device=device, placement=placement)
    build_and_save(spec, model, tok, out, overwrite=overwrite, t0=t0)
    return out


def build_and_save(spec: EditSpec, model, tok, out: str | Path, overwrite: bool = False, t0: float | None = None,
                   extra_metrics=None, derive=None, with_cards: bool = True):
    """Build the conditions on an already loaded model, attach them as named adapters and save the folder
    (adapters with model cards, ``edits.json``, ``spec.yaml``, and with ``with_cards`` the direction cards of
    each edit's v and b, ``directions.jsonl``) atomically; returns (peft_model, conditions).
    ``extra_metrics(conditions, model)`` may add more probe numbers to the edits' provenance first;
    ``derive(peft_model, conditions)`` may return more conditions built from the attached ones (the control
    experiment's KL-matched controls), attached and saved with them. Progress and the statistics cache: the
    run-wide settings (:mod:`rwedit.runtime`)."""
    t0 = time.perf_counter() if t0 is None else t0
    out = check_output_folder(out, overwrite, inputs=edit_inputs(spec))
    bare = model.base_model.model if hasattr(model, "peft_config") else model
    given_layers = list(spec.edit.layers)
    spec = spec.resolved(model_layout(bare).n_layers)  # relative layers (-1, 0.5, mid) -> this model's indices
    fingerprint = model_fingerprint(bare)
    with stage("edit: statistics"):
        stats = edit_stats(spec, model, tok)
    conditions = build_conditions(spec, model, tok, stats)
    if not norms_match(conditions):
        raise RuntimeError("controls do not share the edit's ||ΔW||_F")  # a bug, not an input: no RweditError
    attach_probe_metrics(conditions, stats)
    if extra_metrics is not None:
        extra_metrics(conditions, model)
    cards = edit_cards(spec, conditions, bare, tok, stats) if with_cards else []
    from rwedit.editor.adapters import attach_conditions  # imports peft: only where adapters are built

    peft_model = attach_conditions(model, conditions)
    extra = derive(peft_model, conditions) if derive is not None else []
    if extra:
        attach_conditions(peft_model, extra)
        conditions = conditions + extra
    base = base_reference(spec.model, bare)
    stats_meta = None
    if stats is not None:
        stats_meta = {k: stats.meta.get(k) for k in ("source", "tokens_sha256", "settings", "model_fingerprint")}
        stats_meta["n_tokens"] = stats.n_tokens
    with atomic_folder(out, overwrite=overwrite, inputs=edit_inputs(spec)) as tmp:
        save_adapters(peft_model, tmp / "adapters", base, {
            c.name: {"spec": spec.to_dict(), "condition": c.describe(), "activation_stats": stats_meta,
                     "base_fingerprint": fingerprint} for c in conditions})
        summary = {
            "rwedit_version": __version__,
            "spec": spec.to_dict(),
            "layers_given": given_layers,
            "activation_stats": stats_meta,
            "conditions": [c.describe() for c in conditions],
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / "edits.json").write_text(dumps(summary, indent=2))
        if cards:
            (tmp / "directions.jsonl").write_text("".join(dumps(c.row()) + "\n" for c in cards))
        (tmp / "spec.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(spec.to_dict())), sort_keys=False))
    return peft_model, conditions


def save_adapters(peft_model, folder: Path, base: dict, infos: dict[str, dict]) -> None:
    """Save the named adapters of ``infos`` (name -> its ``rwedit.json`` record) under ``folder`` in PEFT's
    layout, each naming its base (:func:`base_reference`: what PEFT and AutoPeftModelForCausalLM load it onto)
    and carrying its model card."""
    for name in infos:
        cfg = peft_model.peft_config[name]
        cfg.base_model_name_or_path, cfg.revision = base["name_or_path"], base["revision"]
    peft_model.save_pretrained(str(folder), selected_adapters=list(infos))
    (Path(folder) / "README.md").unlink(missing_ok=True)  # PEFT's boilerplate card; each adapter has its own
    for name, info in infos.items():
        write_card_files(Path(folder) / name, {**info, "base": base})


def base_reference(given: str, model) -> dict:
    """How an adapter names its base so that it travels: the Hub id and exact commit of a model loaded from the
    Hub cache, else the path as given (``rwedit.json`` adds the weights' fingerprint)."""
    origin = hub_origin(getattr(model.config, "_name_or_path", "") or "")
    if origin is not None:
        return {"name_or_path": origin[0], "revision": origin[1], "hub": True}
    return {"name_or_path": str(given), "revision": None, "hub": False}


def load_conditions_folder(out: str | Path) -> dict:
    """The ``edits.json`` summary of an edit folder."""
    return json.loads((Path(out) / "edits.json").read_text())


@no_grad
def compare_generation(adapter_dir: str | Path, model_src: str | None, prompt: str, max_new_tokens: int = 40,
                       force: bool = False, device: str = "cpu", placement: Placement | None = None) -> dict:
    """Greedy continuations of ``prompt`` by the base model and by base + adapter (one model load, whole on
    ``device`` or placed by ``placement``)."""
    from rwedit.editor.adapters import adapter_info, load_adapter_folder

    adapter_dir = Path(adapter_dir)
    info = adapter_info(adapter_dir)
    src = model_src or info.get("spec", {}).get("model")
    if not src:
        raise AdapterMismatchError(f"{adapter_dir} does not name its base model (no rwedit.json); give --model")
    if not prompt.strip():
        raise ConfigError("--prompt is empty: give the text to continue")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {max_new_tokens}: give at least 1")
    model, tok = load_model_and_tokenizer(Checkpoint.open(src), device=device, placement=placement)
    peft_model = load_adapter_folder(model, adapter_dir.parent, [adapter_dir.name], force=force)
    enc = tok(prompt, return_tensors="pt").to(input_device(model))
    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    n = enc["input_ids"].shape[1]
    with peft_model.disable_adapter():
        base = peft_model.generate(**enc, **kw)[0, n:]
    edited = peft_model.generate(**enc, **kw)[0, n:]
    return {"prompt": prompt, "base": tok.decode(base, skip_special_tokens=True),
            "edited": tok.decode(edited, skip_special_tokens=True)}
