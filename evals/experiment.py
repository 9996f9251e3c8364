"""The causal control experiment (DESIGN §5–§7): one recipe, one model load, every condition scored.

A recipe names the base (and post-trained) checkpoint, the calibration data, the probe settings, the
edit with its matched controls and α sweep, and the behaviour tasks.  The runner
  1. probes the observed pair (RSF grid, if ``post`` is given) into ``OUT/probe``;
  2. builds the edit and its controls as named adapters into ``OUT/edit`` (reused on --resume);
  3. scores the base and each condition (direct metrics + lm-eval) into ``OUT/results.jsonl``,
     one row per condition with its probe metrics next to its behaviour metrics;
  4. writes the report (``OUT/report.md`` + plots) and refreshes the exported adapters' cards.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from rwedit.architectures import get_weight
from rwedit.checkpoints import Checkpoint
from rwedit.editor.spec import EditSpec, SpecError
from rwedit.evals.direct import DirectScorer, DirectSettings
from rwedit.evals.lmeval import BASE, EvalSettings, LMEvalScorer
from rwedit.evals.store import ExperimentError, ResultStore
from rwedit.models import load_model_and_tokenizer
from rwedit.probes.subspaces import prediction_spectrum

PROBE_KS = (1, 4, 16)


@dataclass(frozen=True)
class ProbeSection:
    """RSF grid of the observed pair (post − base) run before the edits; skipped without ``post``."""

    enabled: bool = True
    ks: tuple[int, ...] = (1, 4, 16, 64)
    null_seeds: int = 8


@dataclass(frozen=True)
class Recipe:
    name: str
    edit: EditSpec
    eval: EvalSettings = field(default_factory=EvalSettings)
    direct: DirectSettings | None = field(default_factory=DirectSettings)
    probe: ProbeSection = field(default_factory=ProbeSection)
    export: tuple[str, ...] = ()  # condition names whose adapter cards get the behaviour numbers
    primary: str = "pref_margin_shift"  # the behaviour metric of the report's verdicts
    out: str | None = None
    device: str = "cpu"

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: str | Path | None = None) -> "Recipe":
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise SpecError(f"unknown recipe keys {sorted(bad)}; known: {sorted(known)}")
        if "edit" not in d:
            raise SpecError("a recipe needs an `edit:` section (the edit spec: model, post, calibration, edit, "
                            "alpha, controls)")
        d = dict(d)
        d.setdefault("name", "experiment")
        d["edit"] = EditSpec.from_dict(d["edit"], base_dir)
        ev = dict(d.get("eval") or {})
        if "tasks" in ev:
            ev["tasks"] = tuple(ev["tasks"])
        d["eval"] = EvalSettings(**ev)
        if d.get("direct", {}) is None:
            d["direct"] = None
        else:
            dr = dict(d.get("direct") or {})
            if "pairs_heldout" in dr and dr["pairs_heldout"] is not None:
                dr["pairs_heldout"] = tuple(dr["pairs_heldout"])
            d["direct"] = DirectSettings(**dr)
        pr = dict(d.get("probe") or {})
        if "ks" in pr:
            pr["ks"] = tuple(pr["ks"])
        d["probe"] = ProbeSection(**pr)
        ex = d.get("export") or ()
        d["export"] = tuple([ex] if isinstance(ex, str) else ex)
        return cls(**d)

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "Recipe":
        path = Path(path)
        if not path.exists():
            raise SpecError(f"recipe {path} not found")
        raw = yaml.safe_load(path.read_text())
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: expected a YAML mapping at the top level")
        for key, val in (overrides or {}).items():  # e.g. {"model": ..., "post": ...} from the command line
            if val is not None:
                raw.setdefault("edit", {})[key] = val
        try:
            return cls.from_dict(raw, base_dir=path.parent)
        except TypeError as e:
            raise SpecError(f"{path}: {e}") from None

    def config(self) -> dict:
        """What the results depend on (hashed to keep two recipes' rows apart); ``out`` is not part of it."""
        d = asdict(self)
        d.pop("out")
        return d


def _edit_probe_metrics(c: dict) -> dict:
    """Probe metrics of a condition's ΔW: norm, read-side RSF against the activation subspace (from the
    edit folder) and RSF against the prediction subspace on the residual side of each edit."""
    from rwedit.architectures import READ_ROLES

    edits = c["edits"]
    out: dict[str, Any] = {"delta_norm": sum(e["norm"] ** 2 for e in edits) ** 0.5,
                           "layers": [e["layer"] for e in edits], "role": edits[0]["role"],
                           "pathway": "read" if edits[0]["role"] in READ_ROLES else "write"}
    for name in (f"rsf_{what}_k{k}" for what in ("read_activation", "residual_prediction") for k in PROBE_KS):
        vals = [e[name] for e in edits if e.get(name) is not None]
        out[name] = sum(vals) / len(vals) if vals else None
    return out


def _prediction_metrics(conditions, model) -> None:
    """RSF of each rank-1 edit's residual-stream side (v for readers, b for writers) against the prediction
    subspace: ‖U_kᵀ x‖² / (k/d); written into the edits' provenance."""
    from peft import PeftModel

    from rwedit.architectures import READ_ROLES

    base = model.base_model.model if isinstance(model, PeftModel) else model
    pred = prediction_spectrum(get_weight(base, None, "unembed").float().cpu())
    for cond in conditions:
        for e in cond.edits:
            x = e.v if e.role in READ_ROLES else e.b
            if x.numel() != pred.d:
                continue
            for k in PROBE_KS:
                if k <= pred.d:
                    frac = float((pred.top(k).T @ x.double()).pow(2).sum())
                    e.provenance[f"rsf_residual_prediction_k{k}"] = frac / (k / pred.d)


def run_experiment(recipe: Recipe, out: str | Path | None = None, resume: bool = False, progress: bool = True,
                   cache_dir: str | Path | None = None, stop_after: int | None = None) -> Path:
    """Run (or resume) the experiment into ``out``; returns the folder.  ``stop_after`` ends the run after
    that many newly scored conditions (for tests of interrupted runs)."""
    from rwedit.editor.adapters import load_adapter_folder
    from rwedit.editor.pipeline import build_and_save
    from rwedit.evals.report import write_report

    out = Path(out or recipe.out or Path("runs") / recipe.name)
    spec = recipe.edit
    store = ResultStore(out)
    base_ckpt = Checkpoint.open(spec.model)  # fail on an unreachable/missing model before writing anything
    if spec.post:
        Checkpoint.open(spec.post)
    store.begin(recipe.config(), resume)
    t0 = time.perf_counter()

    # 1. the observed pair
    if recipe.probe.enabled and spec.post and not (out / "probe" / "meta.json").exists():
        from rwedit.probes.grid import GridSettings
        from rwedit.probes.pipeline import CalibrationSettings, run_rsf_probe

        c = spec.calibration
        calib = CalibrationSettings(data=c.data, tokens=c.tokens, seq_len=c.seq_len, batch_size=c.batch_size,
                                    field=c.field, device=recipe.device) if c else None
        run_rsf_probe(spec.model, spec.post, out / "probe", calib,
                      GridSettings(ks=recipe.probe.ks, null_seeds=recipe.probe.null_seeds),
                      cache_dir=cache_dir, progress=progress)

    # 2. the conditions, as named adapters on one loaded model
    model, tok = load_model_and_tokenizer(base_ckpt, device=recipe.device)
    edit_dir = out / "edit"
    if (edit_dir / "edits.json").exists():
        import json

        summary = json.loads((edit_dir / "edits.json").read_text())
        conditions = summary["conditions"]
        peft_model = load_adapter_folder(model, edit_dir / "adapters", [c["name"] for c in conditions])
    else:
        peft_model, conds = build_and_save(spec, model, tok, edit_dir, cache_dir=cache_dir, progress=progress,
                                           extra_metrics=_prediction_metrics)
        conditions = [c.describe() for c in conds]
    peft_model.eval()

    # 3. score what is not stored yet
    done = store.done()
    todo = [BASE] + [c["name"] for c in conditions]
    missing = [n for n in todo if n not in done]
    info = {c["name"]: c for c in conditions}
    if missing:
        direct = DirectScorer(peft_model, tok, recipe.direct) if recipe.direct else None
        lme = LMEvalScorer(peft_model, tok, recipe.eval) if recipe.eval.tasks else None
        for i, name in enumerate(tqdm(missing, desc="conditions", disable=not progress)):
            if stop_after is not None and i >= stop_after:
                break
            t = time.perf_counter()
            row: dict[str, Any] = {"condition": name}
            if name == BASE:
                row.update(kind=BASE, alpha=0.0, seed=None, index=None, delta_norm=0.0, pathway=None)
            else:
                c = info[name]
                row.update(kind=c["kind"], alpha=c["alpha"], seed=c["seed"], index=c["index"])
                row.update(_edit_probe_metrics(c))
            if direct is not None:
                row.update(direct.score(name))
            if lme is not None:
                row.update(lme.score(name))
            row["seconds"] = round(time.perf_counter() - t, 2)
            store.append(row)
    if len(store.done()) < len(todo):
        return out  # stopped early: resume later
    write_report(out)
    _refresh_exports(out, recipe)
    return out


def _refresh_exports(out: Path, recipe: Recipe) -> None:
    """Put each exported condition's behaviour and probe numbers into its adapter card."""
    from rwedit.editor.export import refresh_card

    rows = {r["condition"]: r for r in ResultStore(out).rows()}
    for name in recipe.export:
        if name not in rows:
            raise ExperimentError(f"export: no condition named {name!r}; conditions: {sorted(rows)}")
        refresh_card(out / "edit" / "adapters" / name, {k: v for k, v in rows[name].items() if v is not None})
