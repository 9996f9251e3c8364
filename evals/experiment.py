"""The causal control experiment: does a rank-1 edit along a principal read direction change behaviour more
than matched controls (random, low-variance and write-pathway edits of the same norm, or — ``effect.match``
— of the same output effect, KL(base ‖ edited))? One recipe, one model load, every condition scored.

A recipe names the base (and post-trained) checkpoint, the calibration data, the probe settings, the
edit with its matched controls and α sweep, and the behaviour tasks. Registered as the ``control`` kind
of :mod:`rwedit.evals.core`, whose runner
  1. probes the observed pair (RSF grid, if ``post`` is given) into ``OUT/probe``;
  2. builds the edit and its controls as named adapters into ``OUT/edit`` (reused on --resume); with
     ``effect.match: kl|both`` each control also gets a copy whose α is searched so that its KL on held-out
     text equals the edit's (:func:`kl_matched`);
  3. scores the base and each condition (direct metrics + lm-eval) into ``OUT/results.jsonl``,
     one row per condition with its probe metrics next to its behaviour metrics;
  4. writes the report (``OUT/report.md`` + plots) and refreshes the exported adapters' cards.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from rwedit.architectures import READ_ROLES, get_weight
from rwedit.checkpoints import Checkpoint
from rwedit.config import Config, option
from rwedit.editor.interventions import BASE, Adapter, Unchanged
from rwedit.editor.spec import KL_SUFFIX, PROBE_KS, EditSpec
from rwedit.errors import ConfigError, DataError, ExperimentError, SpecError
from rwedit.evals.core import (Condition, ExperimentKind, ExperimentRecipe, Prepared, check_metric,
                               register_experiment)
from rwedit.evals.direct import ITEMS, DirectScorer, EffectSettings
from rwedit.evals.store import ResultStore
from rwedit.probes.rsf import rank1_rsf
from rwedit.probes.subspaces import prediction_spectrum
from rwedit.runtime import runtime

EXPERIMENT = "control"


@dataclass(frozen=True)
class ProbeSection(Config):
    """RSF grid of the observed pair (post − base) run before the edits; skipped without ``post``."""

    enabled: bool = option(True, help="probe the observed pair (post − base) before the edits")
    ks: tuple[int, ...] = option((1, 4, 16, 64), help="subspace dimensions of the RSF grid")
    null_seeds: int = option(0, help="random subspaces per delta for a seeded null beside the exact one; 0: the "
                             "exact null alone (mean 1, sd in closed form; as costly as 8 seeds, and exact)")

    def __post_init__(self):
        from rwedit.probes.grid import GridSettings

        GridSettings(ks=self.ks, null_seeds=self.null_seeds)  # refused when the recipe is read


@dataclass(frozen=True)
class Recipe(ExperimentRecipe):
    """The control experiment's recipe: the common experiment settings plus the edit spec and its probe.
    ``model``/``post`` may stand at the top (like every recipe) or inside ``edit:`` (as in an edit spec);
    the top level (and ``--model``/``--post``) wins."""

    experiment: str = option(EXPERIMENT, help="the experiment kind: `rwedit run` dispatches on it")
    edit: EditSpec | None = option(None, help="the edit spec, exactly as for `rwedit edit`")
    probe: ProbeSection = option(factory=ProbeSection, help="RSF grid of post − base before the edits")
    export: tuple[str, ...] = option((), help="conditions whose adapter cards get the measured numbers")
    primary: str = option("pref_margin_shift", help="the behaviour metric the verdicts are about")
    effect: EffectSettings = option(factory=EffectSettings, help="controls matched in KL beside (or instead of) "
                                    "‖ΔW‖; the broken-model and noise-floor flags of the report")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, base_dir: str | Path | None = None,
                  where: str = "") -> "Recipe":
        d = dict(data or {})
        if isinstance(d.get("edit"), dict):
            edit = dict(d["edit"])
            for key in ("model", "post"):
                if d.get(key) is not None:
                    edit[key] = d[key]
                elif edit.get(key) is not None:
                    d[key] = edit[key]
            d["edit"] = edit
        return super().from_dict(d, base_dir=base_dir, where=where)

    def __post_init__(self):
        self.check_kind(EXPERIMENT)
        if self.edit is None:
            raise SpecError("a recipe needs an `edit:` section (the edit spec: model, post, calibration, edit, "
                            "alpha, controls)")
        check_metric(self.primary, self, "primary")
        if self.effect.match != "norm" and self.direct is None:
            raise ConfigError(f"effect.match: {self.effect.match} searches each control's α on direct.text_data; "
                              f"it needs the direct: section (or set effect.match: norm)")
        self._check_export(self.edit)  # found now, not after every condition has been scored

    def _check_export(self, spec: EditSpec) -> None:
        """Every ``export:`` entry names a condition of ``spec`` (when its names are known without a model)."""
        names = spec.condition_names(self.effect.match)
        if names is None:
            return
        known = [BASE] + names
        unknown = [n for n in self.export if n not in known]
        if unknown:
            near = difflib.get_close_matches(unknown[0], known, n=1)
            raise SpecError(f"export: no condition named {unknown[0]!r}{f' (did you mean {near[0]!r}?)' if near else ''}; "
                            f"this recipe's conditions: {', '.join(known)}")

    @cached_property
    def base_checkpoint(self) -> Checkpoint:
        """The base checkpoint, opened once per recipe object (checked first, then loaded)."""
        return Checkpoint.open(self.edit.model)

    def check_fits(self, base) -> None:
        """The edit (layers, roles, widths, windows), the export names and the scorers' sequence lengths against
        a base model: a :class:`Checkpoint`, or anything with its ``source``, ``config`` and ``layout`` (a model
        that is yet to be built is checked before the work of building it)."""
        from rwedit.models import check_window

        self.edit.check_fits(base)
        self._check_export(self.edit.resolved(base.layout.n_layers))
        if self.direct is not None:
            check_window(base.config, self.direct.seq_len, "direct.seq_len")
            check_window(base.config, self.direct.max_len, "direct.max_len")

    @property
    def post_source(self) -> str | None:
        return self.edit.post

    def inputs(self) -> list[str]:
        return [str(x) for x in (self.edit.model, self.edit.post) if x] + self.input_paths()

    def check_sources(self) -> dict:
        """Open the checkpoints and check the edit against them before anything is written: a missing
        model, a layer or role the model lacks, a mismatched pair; returns what the run records of them."""
        from rwedit.checkpoints import CheckpointPair, open_post, source_info
        from rwedit.probes.grid import GridSettings, check_ks

        self.check_fits(self.base_checkpoint)
        sources = {"base": source_info(self.base_checkpoint)}
        if self.edit.post is not None:  # a checkpoint, or a LoRA adapter folder over the base
            post = open_post(self.edit.post, self.base_checkpoint)
            sources["post"] = source_info(post)
            if self.edit.edit.b == "delta" or self.probe.enabled:
                pair = CheckpointPair(self.base_checkpoint, post)  # validated once, for b: delta and the probe
                if self.probe.enabled:
                    check_ks(GridSettings(ks=self.probe.ks), pair.layout, pair.layout.roles())
        return sources


def _edit_probe_metrics(c: dict) -> dict:
    """Probe metrics of a condition's ΔW: norm, read-side RSF against the activation subspace (from the
    edit folder) and RSF against the prediction subspace on the residual side of each edit."""
    edits = c["edits"]
    out: dict[str, Any] = {"delta_norm": sum(e["norm"] ** 2 for e in edits) ** 0.5,
                           "layers": [e["layer"] for e in edits], "role": edits[0]["role"],
                           "pathway": "read" if edits[0]["role"] in READ_ROLES else "write"}
    # the dose in yardsticks of the edited matrices (Frobenius over the stack of edited layers): ‖W‖_F, and the
    # observed update along the edited direction(s) ‖ΔW_obs v‖ (with post)
    for name, key in (("alpha_rel_w", "w_norm"), ("alpha_rel_observed", "observed_ref")):
        ref = math.sqrt(sum(e[key] ** 2 for e in edits)) if all(e.get(key) for e in edits) else None
        out[name] = out["delta_norm"] / ref if ref else None
    for name in (f"rsf_{what}_k{k}" for what in ("read_activation", "residual_prediction") for k in PROBE_KS):
        vals = [e[name] for e in edits if e.get(name) is not None]
        out[name] = sum(vals) / len(vals) if vals else None
    return out


def _prediction_metrics(conditions, model) -> None:
    """RSF of each rank-1 edit's residual-stream side (v for readers, b for writers) against the prediction
    subspace, written into the edits' provenance."""
    from peft import PeftModel

    base = model.base_model.model if isinstance(model, PeftModel) else model
    pred = prediction_spectrum(get_weight(base, None, "unembed").float().cpu())
    for cond in conditions:
        for e in cond.edits:
            x = e.v if e.role in READ_ROLES else e.b
            if x.numel() != pred.d:
                continue
            for k in PROBE_KS:
                if k <= pred.d:
                    e.provenance[f"rsf_residual_prediction_k{k}"] = rank1_rsf(x, pred.top(k))


def _prepare(recipe: Recipe, out: Path) -> Prepared:
    """Probe the observed pair, build (or reload) the edit and its controls as named adapters on one loaded
    model, and list the base and every adapter as conditions."""
    from rwedit.editor.adapters import load_adapter_folder
    from rwedit.editor.pipeline import build_and_save
    from rwedit.evals.lmeval import LMEvalScorer
    from rwedit.models import load_model_and_tokenizer
    from rwedit.runtime import stage

    spec = recipe.edit
    if recipe.probe.enabled and spec.post and not (out / "probe" / "meta.json").exists():
        from rwedit.probes.grid import GridSettings
        from rwedit.probes.pipeline import ProbeRequest, run_probe

        calib = None if spec.calibration is None else replace(spec.calibration, device=recipe.device,
                                                               placement=recipe.placement)
        run_probe(ProbeRequest(spec.model, spec.post, calibration=calib, svd=None, out=out / "probe",
                               grid=GridSettings(ks=recipe.probe.ks, null_seeds=recipe.probe.null_seeds)))

    with stage("load model"):
        model, tok = load_model_and_tokenizer(recipe.base_checkpoint, device=recipe.device,
                                              placement=recipe.placement)
    edit_dir = out / "edit"
    with stage("edit"):
        if (edit_dir / "edits.json").exists():
            conditions = json.loads((edit_dir / "edits.json").read_text())["conditions"]
            peft_model = load_adapter_folder(model, edit_dir / "adapters", [c["name"] for c in conditions])
        else:
            derive = None if recipe.effect.match == "norm" else (
                lambda pm, conds: kl_matched(pm, conds, _search_text(recipe, pm, tok), recipe.effect))
            peft_model, conds = build_and_save(spec, model, tok, edit_dir, extra_metrics=_prediction_metrics,
                                               derive=derive)
            conditions = [c.describe() for c in conds]
    peft_model.eval()

    def scorers():
        out = [_Flagged(DirectScorer(peft_model, tok, recipe.direct), recipe.effect.broken_ce)
               ] if recipe.direct else []
        # backends that load from disk get the base's folder and each condition's saved adapter folder
        disk = dict(pretrained=recipe.base_checkpoint.path, adapter_dirs={
            c["name"]: edit_dir / "adapters" / c["name"] for c in conditions})
        return out + ([LMEvalScorer(peft_model, tok, recipe.eval, **disk)] if recipe.eval else [])

    rows = [Condition(BASE, Unchanged(), dict(kind=BASE, alpha=0.0, seed=None, index=None, delta_norm=0.0,
                                              pathway=None))]
    scored = [c for c in conditions if not (recipe.effect.match == "kl" and c.get("control") and
                                            c.get("match", "norm") == "norm")]
    rows += [Condition(c["name"], Adapter(c["name"]), dict(
        kind=c["kind"], alpha=c["alpha"], seed=c["seed"], index=c["index"], dose=c.get("dose", c["alpha"]),
        dose_unit=c.get("dose_unit", "alpha"), match=c.get("match", "norm"), **_edit_probe_metrics(c),
        **{f"kl_match_{k}": v for k, v in (c.get("kl_match") or {}).items()})) for c in scored]
    return Prepared(peft_model, rows, scorers)


@dataclass
class _Flagged:
    """The direct scorer's metrics plus ``broken_model``: the held-out CE rose by more than ``tol`` nats/token."""

    scorer: Any
    tol: float
    name = DirectScorer.name

    def score(self) -> dict[str, Any]:
        out = self.scorer.score()
        return {**out, "broken_model": bool(out["ce_shift"] > self.tol)}


def _search_text(recipe: Recipe, model, tok):
    """The KL search's held-out sequences: the ``effect.texts`` sequences after the scored ones in
    ``direct.text_data``, with the base model's log-probs on them."""
    from rwedit.data import pack_tokens, read_texts
    from rwedit.evals.direct import HeldoutText

    d, n = recipe.direct, recipe.effect.texts
    ids = pack_tokens(tok, read_texts(d.text_data), d.seq_len, (d.texts + n) * d.seq_len)[d.texts:]
    if len(ids) < n:
        raise DataError(f"{d.text_data}: {len(ids)} sequences of {d.seq_len} tokens after the {d.texts} scored ones; "
                        f"effect.texts asks for {n} (lower it, or direct.texts)")
    return HeldoutText(model, ids, d.rows(model, d.seq_len))


def kl_matched(peft_model, conditions, text, settings: EffectSettings) -> list:
    """A KL-matched copy of every control (``NAME_kl``): its α scaled so that its mean KL(base ‖ edited) on
    ``text`` (a :class:`~rwedit.evals.direct.HeldoutText`) equals the target, the mean KL of the edited
    direction(s) of the same dose and layer(s). The scale is bracketed by doubling (or halving) from the
    norm-matched α, then bisected on log α until |KL / target − 1| <= ``settings.tol`` (``max_steps`` KL
    evaluations at most); the search is recorded in the condition's ``kl_match``."""
    from tqdm.auto import tqdm

    from rwedit.editor.adapters import adapter_scale

    def kl(name, factor=1.0):
        with adapter_scale(peft_model, name, factor):
            return float(text.kl_ce()[0].mean())

    def key(c):
        return c.dose_unit, c.dose, tuple(e.layer for e in c.edits)

    targets: dict[tuple, list[float]] = {}
    for c in conditions:
        if not c.control:
            targets.setdefault(key(c), []).append(kl(c.name))
    out = []
    controls = [c for c in conditions if c.control]
    for c in tqdm(controls, desc="KL-matched controls", disable=not runtime().progress):
        target = sum(targets[key(c)]) / len(targets[key(c)])
        tried = {1.0: kl(c.name)}

        def at(f):
            tried[f] = tried[f] if f in tried else kl(c.name, f)
            return tried[f]

        def off(f):  # relative distance of the KL at scale f from the target
            return abs(tried[f] / target - 1)

        if target > 0:  # an edit with no effect on the text leaves nothing to match (marked not converged)
            lo = hi = 1.0  # bracket: KL(lo) <= target <= KL(hi)
            step = 2.0 if tried[1.0] < target else 0.5
            while len(tried) < settings.max_steps and (at(hi) < target if step > 1 else at(lo) > target):
                lo, hi = (hi, hi * step) if step > 1 else (lo * step, lo)
            while (len(tried) < settings.max_steps and min(map(off, tried)) > settings.tol
                   and at(lo) <= target <= at(hi)):
                mid = math.sqrt(lo * hi)
                lo, hi = (mid, hi) if at(mid) < target else (lo, mid)
        best = min(tried, key=off) if target > 0 else 1.0
        out.append(c.scaled(best, c.name + KL_SUFFIX, match="kl", kl_match=dict(
            target=target, found=tried[best], alpha=c.alpha * best, scale=best, steps=len(tried), tol=settings.tol,
            texts=int(text.ids.shape[0]), converged=target > 0 and off(best) <= settings.tol)))
    return out


def _plan(recipe: Recipe, ctx):
    """The control experiment's own stages (a :class:`~rwedit.evals.planning.KindPlan`): the observed pair's
    statistics and streamed RSF grid, the edit's statistics and gradient, the adapters it writes."""
    from rwedit.evals.planning import ADAPTER_FILES_BYTES, PROBE_ROW_BYTES, DataRef, KindPlan, grid_stage, stats_stage

    layout = ctx.base.layout
    spec = recipe.edit.resolved(layout.n_layers)
    plan = KindPlan(conditions=spec.condition_names(recipe.effect.match), checked=["the edit's layers, roles and windows; export: names"])
    if spec.calibration is not None:
        plan.data.append(DataRef("edit.calibration.data", spec.calibration.data, "texts", spec.calibration.field))
    if spec.edit.b == "gradient" and spec.edit.data:
        plan.data.append(DataRef("edit.edit.data", spec.edit.data,
                                 "pairs" if spec.edit.objective == "preference" else "texts"))
    tokens = spec.calibration.tokens if spec.calibration is not None else 0
    if ctx.post is not None and recipe.probe.enabled:
        if spec.calibration is not None:
            plan.stages.append(stats_stage(ctx, "probe: statistics", f"E[a a^T] of every read input at "
                                           f"{layout.n_layers} layers, float64 (cached)", tokens))
            plan.stages[-1].read_bytes += ctx.base.nbytes()  # the model loaded for them
            plan.cache_bytes += plan.stages[-1].cache_bytes
        from rwedit.probes.grid import GridSettings

        plan.stages.append(grid_stage(ctx, GridSettings(ks=recipe.probe.ks, null_seeds=recipe.probe.null_seeds),
                                      activations=spec.calibration is not None))
        plan.output_bytes += len(layout.views()) * 2 * 3 * len(recipe.probe.ks) * PROBE_ROW_BYTES
    if spec.calibration is not None:
        roles = [spec.edit.role] + ([spec.controls.write] if spec.controls.write else [])
        plan.stages.append(stats_stage(ctx, "edit: statistics", f"E[a a^T] of the {' and '.join(roles)} input at "
                                       f"{len(spec.edit.layers)} layer(s), float64 (cached)", tokens,
                                       spec.edit.layers, roles))
        plan.cache_bytes += plan.stages[-1].cache_bytes
    if spec.edit.b == "gradient":  # the model and its gradient
        plan.stages.append(ctx.model_stage("edit: gradient", f"-G v over {spec.edit.data_limit} items (one backward "
                                           f"each)", ctx.model_bytes, 3 * spec.edit.data_limit * spec.edit.max_len))
    if recipe.effect.match != "norm":  # each control's α searched: at most max_steps passes over the search text
        n_controls = len([n for n in plan.conditions or [] if n.endswith(KL_SUFFIX)])
        eff, d = recipe.effect, recipe.direct
        plan.stages.append(ctx.model_stage("edit: KL search", f"<= {eff.max_steps} forward passes of {eff.texts} held-out "
                                           f"sequences per KL-matched control", 0,
                                           n_controls * eff.max_steps * eff.texts * d.seq_len))
    view = layout.view(spec.edit.layers[0], spec.edit.role)
    plan.output_bytes += len(plan.conditions or []) * len(spec.edit.layers) * ((view.d_in + view.d_out) * 4
                                                                         + ADAPTER_FILES_BYTES)
    return plan


def _refresh_exports(recipe: Recipe, out: Path) -> None:
    """Put each exported condition's behaviour and probe numbers into its adapter card."""
    from rwedit.editor.export import refresh_card

    rows = {r["condition"]: r for r in ResultStore(out).rows()}
    for name in recipe.export:
        if name not in rows:
            raise ExperimentError(f"export: no condition named {name!r}; conditions: {sorted(rows)}")
        refresh_card(out / "edit" / "adapters" / name, {k: v for k, v in rows[name].items()
                                                        if v is not None and not k.endswith(ITEMS)})


def _report(folder, primary: str | None = None):
    from rwedit.evals.report import write_control_report

    return write_control_report(folder, primary)


KIND = register_experiment(ExperimentKind(
    EXPERIMENT, Recipe, help="a rank-1 edit vs its matched controls (random, low-variance, write-pathway), "
    "scored as adapters on one loaded model", prepare=_prepare, report=_report, finish=_refresh_exports, plan=_plan))
