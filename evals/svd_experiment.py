"""He & Cao's SVD-structure experiment (DESIGN §4, §7): is post-training carried by the singular *vectors*
(a rotation) rather than the singular *values*?  One recipe (``recipes/svd-structure.yaml``), one model load.

Conditions, each a set of per-matrix replacements on the chosen roles x layers of the post-trained model
(constructions and their exact properties: :mod:`rwedit.editor.svd_edits`):

- ``post``                      the post-trained model, unchanged (the reference of every shift);
- ``sv_replacement``            W' = U'(sΣ)V'ᵀ: post vectors, base singular values scaled by s;
- ``reparam``                   U Q Σ' (V Q)ᵀ: base vectors with one shared rotation Q, post values;
- ``swap``                      the left rotation replaced by the right one;
- ``disrupt_left_random_s<k>``  the left rotation replaced by a seeded Haar-random orthogonal matrix;
- ``disrupt_right_random_s<k>`` the same on the right side;
- ``base``                      the base checkpoint, every parameter (scored last).

The runner loads the post model once, builds the scorers on it (so direct metrics are paired shifts
*against post*), and for each condition writes the replacement weights in place, scores, and restores
the original tensors bit for bit from a CPU snapshot.  The base row is scored last by streaming the base
checkpoint's tensors over the loaded model, one tensor at a time: never two models in memory.

Each row of ``OUT/results.jsonl`` holds the condition, the SVD-probe metrics of its matrix set against the
base (``scale``, ``scale_residual``, ``orth_U``, ``orth_V``, ``consistency``, ``reparam_error``: means over
matrices; ``rel_change_vs_post`` = mean ‖W_cond − W_post‖_F / ‖W_post‖_F) next to the behaviour metrics
(direct metrics renamed ``*_vs_post``: their reference is the post model; lm-eval metrics as flat
``task/metric``), each with its ``_stderr``.  ``OUT/matrices/<condition>.csv`` has the per-matrix numbers.
Resume and the refusal of a changed recipe work as in :mod:`rwedit.evals.experiment` (same store).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from rwedit.architectures import LAYER_ROLES
from rwedit.checkpoints import Checkpoint, CheckpointPair, TensorReader
from rwedit.editor.spec import SpecError
from rwedit.editor.svd_edits import (
    CONDITION_KINDS,
    RANDOM_KINDS,
    WeightSnapshot,
    condition_matrix,
    decompose,
    matrix_seed,
    set_weight,
)
from rwedit.evals.direct import DirectScorer, DirectSettings
from rwedit.evals.lmeval import EvalSettings, LMEvalScorer
from rwedit.evals.store import ExperimentError, ResultStore

EXPERIMENT = "svd-structure"
#: the direct metrics' keys, renamed because their reference is the post model, not a base
DIRECT_RENAME = {"pref_margin_shift": "pref_margin_shift_vs_post", "pref_acc_shift": "pref_acc_shift_vs_post",
                 "ce_shift": "ce_shift_vs_post", "ppl_change": "ppl_change_vs_post",
                 "kl_base_edited": "kl_post_condition"}
PROBE_KEYS = ("scale", "scale_residual", "orth_U", "orth_V", "consistency", "reparam_error", "truncation_floor")
DEFAULT_KINDS = ("sv_replacement", "reparam", "swap", "disrupt_left_random", "disrupt_right_random")


@dataclass(frozen=True)
class MatrixSelection:
    """Which matrices every condition replaces (None: all layer roles the architecture has / all layers)."""

    roles: tuple[str, ...] | None = None
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ConditionSettings:
    kinds: tuple[str, ...] = DEFAULT_KINDS
    seeds: tuple[int, ...] = (1, 2, 3)  # one condition per seed for each random kind
    rank: int | str = "full"  # top-r triplets replaced ("full": all of them)
    fit_r: int = 64  # top singular values the scale s of sv_replacement is fitted on
    method: str = "auto"  # SVD of the constructions: full, lowrank, auto (full when rank is full or min(d) <= 1024)


@dataclass(frozen=True)
class SVDProbeSettings:
    """The structure metrics stored with each row (probes/svd.py: svd_structure of W_base vs W_cond)."""

    r: int | str = 64
    method: str = "auto"


@dataclass(frozen=True)
class VerdictSettings:
    metrics: tuple[str, ...] = ("rwedit_hh_preference/acc", "rwedit_blimp/acc", "pref_margin", "ce")
    keep_margin: float = 0.5  # "keeps": loses at most this fraction of post-training's change (95% CI)

    def __post_init__(self):
        if not 0 < self.keep_margin < 1:
            raise ValueError(f"verdicts.keep_margin = {self.keep_margin}: give a fraction in (0, 1)")


@dataclass(frozen=True)
class SVDRecipe:
    model: str  # the base checkpoint (local folder or Hub id)
    post: str  # the post-trained checkpoint
    experiment: str = EXPERIMENT
    name: str = EXPERIMENT
    matrices: MatrixSelection = field(default_factory=MatrixSelection)
    conditions: ConditionSettings = field(default_factory=ConditionSettings)
    probe: SVDProbeSettings = field(default_factory=SVDProbeSettings)
    eval: EvalSettings | None = field(default_factory=EvalSettings)
    direct: DirectSettings | None = field(default_factory=DirectSettings)
    verdicts: VerdictSettings = field(default_factory=VerdictSettings)
    device: str = "cpu"
    dtype: str = "float32"
    out: str | None = None

    def __post_init__(self):
        if self.experiment != EXPERIMENT:
            raise SpecError(f"experiment: {self.experiment!r} is not {EXPERIMENT!r}")
        bad = [k for k in self.conditions.kinds if k not in CONDITION_KINDS or k == "post"]
        if bad:
            raise SpecError(f"conditions.kinds: unknown {bad}; choose from {', '.join(CONDITION_KINDS[1:])} "
                            f"(post and base are always scored)")
        if any(k in RANDOM_KINDS for k in self.conditions.kinds) and not self.conditions.seeds:
            raise SpecError("conditions.seeds is empty: the random disruptions need at least one seed")
        if self.eval is None and self.direct is None:
            raise SpecError("nothing to score: give eval: and/or direct:")

    # -------------------------------------------------------------- parsing

    @classmethod
    def from_dict(cls, d: dict[str, Any], base_dir: str | Path | None = None) -> "SVDRecipe":
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise SpecError(f"unknown recipe keys {sorted(bad)}; known: {sorted(known)}")
        for key in ("model", "post"):
            if not d.get(key):
                raise SpecError(f"the recipe needs `{key}:` (or --{'model' if key == 'model' else 'post'} on the "
                                f"command line)")
        d = dict(d)
        try:
            m = dict(d.get("matrices") or {})
            for k in ("roles", "layers"):
                if m.get(k) in ("all", None):
                    m[k] = None
                else:
                    m[k] = tuple(m[k]) if isinstance(m[k], (list, tuple)) else (m[k],)
            d["matrices"] = MatrixSelection(**m)
            c = dict(d.get("conditions") or {})
            for k in ("kinds", "seeds"):
                if k in c:
                    c[k] = tuple(c[k] or ())
            d["conditions"] = ConditionSettings(**c)
            d["probe"] = SVDProbeSettings(**dict(d.get("probe") or {}))
            if "eval" in d and d["eval"] is None:
                d["eval"] = None
            else:
                ev = dict(d.get("eval") or {})
                if "tasks" in ev:
                    ev["tasks"] = tuple(ev["tasks"])
                d["eval"] = EvalSettings(**ev)
            if "direct" in d and d["direct"] is None:
                d["direct"] = None
            else:
                dr = dict(d.get("direct") or {})
                if dr.get("pairs_heldout") is not None:
                    dr["pairs_heldout"] = tuple(dr["pairs_heldout"])
                for k in ("pairs_data", "text_data"):
                    if k in dr and base_dir is not None:
                        dr[k] = _resolve(dr[k], base_dir)
                d["direct"] = DirectSettings(**dr)
            v = dict(d.get("verdicts") or {})
            if "metrics" in v:
                v["metrics"] = tuple(v["metrics"])
            d["verdicts"] = VerdictSettings(**v)
            return cls(**d)
        except TypeError as e:
            raise SpecError(str(e)) from None

    @classmethod
    def from_yaml(cls, path: str | Path, overrides: dict[str, Any] | None = None) -> "SVDRecipe":
        path = Path(path)
        if not path.exists():
            raise SpecError(f"recipe {path} not found")
        raw = yaml.safe_load(path.read_text())
        if not isinstance(raw, dict):
            raise SpecError(f"{path}: expected a YAML mapping at the top level")
        for key, val in (overrides or {}).items():  # {"model": ..., "post": ...} from the command line
            if val is not None:
                raw[key] = val
        try:
            return cls.from_dict(raw, base_dir=path.parent)
        except SpecError as e:
            raise SpecError(f"{path}: {e}") from None

    def config(self) -> dict:
        """What the results depend on (hashed by the store); ``out`` is not part of it."""
        d = asdict(self)
        d.pop("out")
        return d

    def condition_list(self) -> list[tuple[str, str, int | None]]:
        """``(name, kind, seed)`` in scoring order: post first, base last."""
        out: list[tuple[str, str, int | None]] = [("post", "post", None)]
        for kind in self.conditions.kinds:
            if kind in RANDOM_KINDS:
                out += [(f"{kind}_s{s}", kind, int(s)) for s in self.conditions.seeds]
            else:
                out.append((kind, kind, None))
        out.append(("base", "base", None))
        return out


def _resolve(p: str, base_dir: str | Path) -> str:
    """Data paths are relative to the recipe file (unless absolute, bundled:, or not existing there)."""
    p = str(p)
    if p.startswith("bundled:") or Path(p).is_absolute():
        return p
    cand = Path(base_dir) / p
    return str(cand) if cand.exists() else p


def recipe_kind(recipe: str | Path | dict | Any) -> str:
    """The kind of experiment a recipe describes: its top-level ``experiment:`` key (``"svd-structure"``
    for this one); recipes without it are ``"control"`` (:mod:`rwedit.evals.experiment`). A missing or
    unreadable file is ``"control"`` too, so that the caller's usual error message reports it."""
    if isinstance(recipe, SVDRecipe):
        return EXPERIMENT
    raw = recipe
    if isinstance(recipe, (str, Path)):
        try:
            raw = yaml.safe_load(Path(recipe).read_text())
        except (OSError, yaml.YAMLError):
            return "control"
    if isinstance(raw, dict):
        return str(raw.get("experiment") or "control")
    return "control"


def is_svd_run(folder: str | Path) -> bool:
    """Whether ``folder`` holds a run of this experiment (its ``run.json`` says so)."""
    import json

    meta = Path(folder) / "run.json"
    if not meta.exists():
        return False
    try:
        return json.loads(meta.read_text()).get("config", {}).get("experiment") == EXPERIMENT
    except (OSError, ValueError):
        return False


# ----------------------------------------------------------------------------- applying conditions


def _targets(recipe: SVDRecipe, layout) -> list[tuple[int, str]]:
    sel = recipe.matrices
    have = tuple(r for r in layout.roles() if r != "unembed")
    roles = have if sel.roles is None else sel.roles
    for r in roles:
        if r not in LAYER_ROLES:
            raise SpecError(f"matrices.roles: {r!r} is not a layer matrix role ({', '.join(LAYER_ROLES)})")
        if r not in have:
            raise SpecError(f"matrices.roles: this {layout.spec.name} model has no {r!r}; it has {', '.join(have)}")
    layers = range(layout.n_layers) if sel.layers is None else sel.layers
    for layer in layers:
        if not 0 <= int(layer) < layout.n_layers:
            raise SpecError(f"matrices.layers: {layer} is out of range 0..{layout.n_layers - 1}")
    return [(int(layer), r) for layer in layers for r in roles]


class _BaseReader:
    """The base checkpoint's role matrices, one stored tensor at a time (a fused tensor is read once)."""

    def __init__(self, ckpt: Checkpoint):
        self.ckpt, self.reader, self._last = ckpt, TensorReader(ckpt), None

    def matrix(self, layer: int, role: str) -> torch.Tensor:
        view = self.ckpt.layout.view(layer, role)
        if self._last is None or self._last[0] != view.param:
            self._last = None
            self._last = (view.param, self.reader.read(view.param, torch.float32))
        return view.extract(self._last[1])


def _probe_metrics(W_base: torch.Tensor, W_post: torch.Tensor, W_cond: torch.Tensor,
                   probe: SVDProbeSettings) -> dict[str, float]:
    from rwedit.probes.svd import clip_rank, svd_structure

    s = svd_structure(W_base, W_cond, r=clip_rank(probe.r, W_base.shape), method=probe.method)
    wp = W_post.double()
    out = {k: getattr(s, k) for k in PROBE_KEYS}
    out["rel_change_vs_post"] = float(torch.linalg.matrix_norm(W_cond.double() - wp) / torch.linalg.matrix_norm(wp))
    out["rel_change_vs_base"] = float(torch.linalg.matrix_norm(W_cond.double() - W_base.double())
                                      / torch.linalg.matrix_norm(W_base.double()))
    return out


def _summarise_matrices(per: list[dict]) -> dict[str, float | None]:
    """Means over matrices (NaN-free ones) and the spread of the scale across them."""
    out: dict[str, float | None] = {}
    for k in PROBE_KEYS + ("rel_change_vs_post", "rel_change_vs_base"):
        vals = [p[k] for p in per if p.get(k) is not None and math.isfinite(p[k])]
        out[k] = sum(vals) / len(vals) if vals else None
    sc = [p["scale"] for p in per if p.get("scale") is not None and math.isfinite(p["scale"])]
    mu = out["scale"]
    out["scale_sd"] = math.sqrt(sum((x - mu) ** 2 for x in sc) / (len(sc) - 1)) if len(sc) > 1 else None
    out["n_matrices"] = len(per)
    return out


def apply_condition(model, snap: WeightSnapshot, base: _BaseReader, targets: list[tuple[int, str]], kind: str,
                    seed: int | None, settings: ConditionSettings, probe: SVDProbeSettings | None = None,
                    progress: bool = False) -> list[dict]:
    """Write condition ``kind`` into every target matrix of ``model`` (whose originals are in ``snap``);
    returns the per-matrix probe metrics (empty without ``probe``). ``snap.restore()`` undoes it exactly."""
    if kind not in CONDITION_KINDS:
        raise ValueError(f"unknown condition kind {kind!r}")
    per = []
    for layer, role in tqdm(targets, desc=f"  {kind}", leave=False, disable=not progress):
        W_post = snap.original(layer, role)
        dev = model.get_parameter(snap.views[(layer, role)].param).device
        W_post = W_post.to(device=dev, dtype=torch.float32)
        W_base = base.matrix(layer, role).to(dev)
        if kind == "post":  # unchanged: nothing is written
            if probe is not None:
                per.append({"layer": layer, "role": role, **_probe_metrics(W_base, W_post, W_post, probe)})
            continue
        dec = decompose(W_base, W_post, settings.rank, settings.method)
        W_cond = condition_matrix(kind, W_base, W_post, rank=settings.rank, fit_r=settings.fit_r,
                                  seed=None if seed is None else matrix_seed(seed, layer, role, kind), dec=dec)
        del dec
        set_weight(model, layer, role, W_cond)
        if probe is not None:
            per.append({"layer": layer, "role": role, **_probe_metrics(W_base, W_post, W_cond, probe)})
    return per


def load_base_weights(model, ckpt: Checkpoint, progress: bool = False) -> None:
    """Overwrite every parameter of ``model`` in place with the tensor of the same name in ``ckpt``
    (streamed, one tensor at a time, converted to the parameter's dtype). Tied parameters appear once."""
    with TensorReader(ckpt) as reader, torch.no_grad():
        for name, p in tqdm(list(model.named_parameters()), desc="  base weights", leave=False,
                            disable=not progress):
            t = reader.read(name, dtype=p.dtype)
            if tuple(t.shape) != tuple(p.shape):
                raise ExperimentError(f"{ckpt.source}: {name} has shape {tuple(t.shape)}, the model {tuple(p.shape)}")
            p.data.copy_(t)


def _base_metrics(model, base: _BaseReader, targets) -> list[dict]:
    """Per-matrix metrics of the base row: W_cond = W_base, so the structure metrics are their identity
    values (s = 1, rotations = I); only the distance to post is measured."""
    from rwedit.architectures import get_weight

    per = []
    for layer, role in targets:
        wp = get_weight(model, layer, role).double().cpu()
        wb = base.matrix(layer, role).double()
        per.append({"layer": layer, "role": role, "scale": 1.0, "scale_residual": 0.0, "orth_U": 0.0, "orth_V": 0.0,
                    "consistency": 0.0, "reparam_error": 0.0, "truncation_floor": None,
                    "rel_change_vs_post": float(torch.linalg.matrix_norm(wb - wp) / torch.linalg.matrix_norm(wp)),
                    "rel_change_vs_base": 0.0})
    return per


def _score(direct: DirectScorer | None, lme: LMEvalScorer | None) -> dict[str, Any]:
    """Behaviour metrics of the model as it is now (no adapters: ``score(None)``); the direct metrics'
    shift keys are renamed ``*_vs_post`` (:data:`DIRECT_RENAME`)."""
    row: dict[str, Any] = {}
    if direct is not None:
        for k, v in direct.score(None).items():
            stem, se = (k[: -len("_stderr")], "_stderr") if k.endswith("_stderr") else (k, "")
            row[DIRECT_RENAME.get(stem, stem) + se] = v
    if lme is not None:
        row.update(lme.score(None))
    return row


def _write_matrices(out: Path, name: str, per: list[dict]) -> None:
    import pandas as pd

    (out / "matrices").mkdir(exist_ok=True)
    pd.DataFrame(per).to_csv(out / "matrices" / f"{name}.csv", index=False)


# ----------------------------------------------------------------------------- the runner


def run_svd_experiment(recipe: SVDRecipe | str | Path | dict, out: str | Path | None = None, resume: bool = False,
                       progress: bool = True, overrides: dict[str, Any] | None = None,
                       cache_dir: str | Path | None = None, stop_after: int | None = None) -> Path:
    """Run (or resume) the SVD-structure experiment into ``out``; returns the folder.

    ``recipe``: an :class:`SVDRecipe`, a YAML path or a dict; ``overrides`` (e.g. ``{"model": ..., "post": ...}``
    from the command line; None values are ignored) replace top-level keys.  ``cache_dir`` is accepted for
    the CLI's sake and unused (this experiment has no activation statistics).  ``stop_after`` ends the run
    after that many newly scored conditions (for tests of interrupted runs)."""
    from rwedit.evals.svd_report import write_svd_report
    from rwedit.models import load_model_and_tokenizer

    ov = {k: v for k, v in (overrides or {}).items() if v is not None}
    if isinstance(recipe, SVDRecipe):
        recipe = replace(recipe, **ov) if ov else recipe
    elif isinstance(recipe, dict):
        recipe = SVDRecipe.from_dict({**recipe, **ov})
    else:
        recipe = SVDRecipe.from_yaml(recipe, ov)
    out = Path(out or recipe.out or Path("runs") / recipe.name)
    # fail on a missing model or a mismatched pair before writing anything
    pair = CheckpointPair(Checkpoint.open(recipe.model), Checkpoint.open(recipe.post))
    targets = _targets(recipe, pair.layout)
    store = ResultStore(out)
    store.begin(recipe.config(), resume)

    todo = recipe.condition_list()
    done = store.done()
    missing = [c for c in todo if c[0] not in done]
    if missing:
        model, tok = load_model_and_tokenizer(pair.post, device=recipe.device, dtype=recipe.dtype)
        # the scorers' reference values come from the model as loaded: the post model
        direct = DirectScorer(model, tok, recipe.direct) if recipe.direct else None
        lme = LMEvalScorer(model, tok, recipe.eval) if recipe.eval else None
        base = _BaseReader(pair.base)
        snap = WeightSnapshot(model, targets)
        for i, (name, kind, seed) in enumerate(tqdm(missing, desc="conditions", disable=not progress)):
            if stop_after is not None and i >= stop_after:
                break
            t = time.perf_counter()
            row: dict[str, Any] = {"condition": name, "kind": kind, "seed": seed}
            if kind == "base":  # always last: it overwrites every parameter, and nothing is scored after it
                per = _base_metrics(model, base, targets)
                load_base_weights(model, pair.base, progress)
                row.update(_summarise_matrices(per))
                row.update(_score(direct, lme))
            else:
                with snap:  # the targets' post tensors are restored bit for bit on exit
                    per = apply_condition(model, snap, base, targets, kind, seed, recipe.conditions, recipe.probe,
                                          progress)
                    row.update(_summarise_matrices(per))
                    row.update(_score(direct, lme))
            _write_matrices(out, name, per)
            row["seconds"] = round(time.perf_counter() - t, 2)
            store.append(row)
    if len(store.done()) < len(todo):
        return out  # stopped early: resume later
    write_svd_report(out)
    return out
