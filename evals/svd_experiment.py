"""He & Cao's SVD-structure experiment: is post-training carried by the singular *vectors*
(a rotation) rather than the singular *values*?  One recipe (``recipes/svd-structure.yaml``), one model load.

Conditions, each a set of per-matrix replacements on the chosen roles x layers of the post-trained model
(constructions and their exact properties: :mod:`rwedit.editor.svd_edits`):

- ``post``                      the post-trained model, unchanged (the reference of every shift);
- ``sv_replacement``            W' = U'(sΣ)V'ᵀ: post vectors, base singular values scaled by s;
- ``reparam``                   U Q Σ' (V Q)ᵀ: base vectors with one shared rotation Q, post values;
- ``swap``                      the left rotation replaced by the right one;
- ``disrupt_left_random_s<k>``  the left rotation replaced by a seeded Haar-random orthogonal matrix;
- ``disrupt_right_random_s<k>`` the same on the right side;
- ``null_<kind>_s<k>``          opt-in (``conditions.null_seeds``), for each kept construction (sv_replacement,
                                reparam, swap): W_post + a seeded Gaussian ΔW with ‖ΔW‖_F = ‖W_<kind> − W_post‖_F per
                                matrix: the same-norm random update its "keeps the score" is judged against;
- ``base``                      the base checkpoint, every parameter (scored last).

Registered as the ``svd-structure`` kind of :mod:`rwedit.evals.core`: the post model is loaded once, the
scorers are built on it (so direct metrics are paired shifts *against post*), and each condition is a
weight-write intervention (replacements written in place, restored bit for bit from a CPU snapshot); the
base row is a checkpoint intervention, scored last, streaming the base checkpoint's tensors over the
loaded model one at a time: never two models in memory.

Each row of ``OUT/results.jsonl`` holds the condition, the SVD-probe metrics of its matrix set against the
base (``scale``, ``scale_residual``, ``orth_U``, ``orth_V``, ``consistency``, ``reparam_error``: means over
matrices; ``rel_change_vs_post`` = mean ‖W_cond − W_post‖_F / ‖W_post‖_F) next to the behaviour metrics
(direct metrics renamed ``*_vs_post``: their reference is the post model; lm-eval metrics as flat
``task/metric``), each with its ``_stderr``.  ``OUT/matrices/<condition>.csv`` has the per-matrix numbers.
The ``post`` row also holds the SVD probe's null (``probe.null_seeds`` same-norm random updates of each base matrix
per kind, :func:`rwedit.probes.svd.svd_structure`): ``null`` = per kind and statistic the draws of the mean over
matrices, ``null_seeds`` the seeds; ``OUT/matrices/post_null.csv`` the per-matrix draws.
Resume and the refusal of a changed recipe are the core's (one store for every kind).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from rwedit.architectures import LAYER_ROLES
from rwedit.checkpoints import Checkpoint, CheckpointPair, TensorReader
from rwedit.config import Config, option
from rwedit.editor.interventions import CheckpointLoad, Unchanged, WeightSnapshot, WeightWrite
from rwedit.editor.svd_edits import CONDITION_KINDS, NULL_PREFIX, RANDOM_KINDS, condition_matrix, decompose, matrix_seed
from rwedit.errors import SpecError
from rwedit.evals.core import (Condition, ExperimentKind, ExperimentRecipe, Prepared, check_metric,
                               register_experiment)
from rwedit.evals.direct import DIRECT_METRICS, ITEMS
from rwedit.models import DTYPES

EXPERIMENT = "svd-structure"
#: the direct metrics' keys, renamed because their reference is the post model, not a base
DIRECT_RENAME = {"pref_margin_shift": "pref_margin_shift_vs_post", "pref_acc_shift": "pref_acc_shift_vs_post",
                 "ce_shift": "ce_shift_vs_post", "ppl_change": "ppl_change_vs_post",
                 "kl_base_edited": "kl_post_condition"}
PROBE_KEYS = ("scale", "scale_residual", "orth_U", "orth_V", "consistency", "reparam_error", "truncation_floor")
DEFAULT_KINDS = ("sv_replacement", "reparam", "swap", "disrupt_left_random", "disrupt_right_random")


@dataclass(frozen=True)
class MatrixSelection(Config):
    """Which matrices every condition replaces (``all``/null: every layer role the model has / all layers)."""

    roles: tuple[str, ...] | None = option(None, help="layer roles (q k v o up gate down) or all")
    layers: tuple[int, ...] | None = option(None, help="layer indices or all")

    @classmethod
    def from_dict(cls, data, *, base_dir=None, where=""):
        d = {k: (None if v == "all" else v) for k, v in (data or {}).items()}
        return super().from_dict(d, base_dir=base_dir, where=where)


@dataclass(frozen=True)
class ConditionSettings(Config):
    kinds: tuple[str, ...] = option(DEFAULT_KINDS, help="constructions to score (post and base always are)")
    seeds: tuple[int, ...] = option((1, 2, 3), help="one condition per seed for each random disruption")
    rank: int | str = option("full", help="top-r triplets replaced (full: all of them)")
    fit_r: int = option(64, help="top singular values the scale s of sv_replacement is fitted on")
    method: str = option("auto", help="SVD of the constructions: full, lowrank, auto (full up to d = 1024)")
    null_seeds: tuple[int, ...] = option((), help="a same-norm random control per seed for each kept construction "
                                         "(sv_replacement, reparam, swap; its keeps-the-score verdict is judged "
                                         "against it): one more scored condition each; at least 2 seeds, or none")


@dataclass(frozen=True)
class SVDProbeSettings(Config):
    """The structure metrics stored with each row (the SVD probe of W_base vs W_cond, per matrix)."""

    r: int | str = option(64, help="top-r singular triplets (as `rwedit svd`), clipped to the matrix size")
    method: str = option("auto", help="full, lowrank or auto")
    null_seeds: int = option(8, help="same-norm random updates of the base per matrix and null kind (gaussian, "
                             "rotation) the post pair's structure is judged against: one more top-r SVD each; "
                             "0: none (no HC structure verdicts)")

    def __post_init__(self):
        if self.null_seeds == 1 or self.null_seeds < 0:
            raise SpecError(f"probe.null_seeds = {self.null_seeds}: give 0 (no null) or at least 2 (a spread)")


@dataclass(frozen=True)
class VerdictSettings(Config):
    metrics: tuple[str, ...] = option(("rwedit_hh_preference/acc", "rwedit_blimp/acc", "pref_margin", "ce"),
                                      help="one verdict per claim and metric")
    keep_margin: float = option(0.5, help="'keeps the score': loses at most this fraction of post-training's "
                                "change (95% CI)")

    def __post_init__(self):
        if not 0 < self.keep_margin < 1:
            raise SpecError(f"verdicts.keep_margin = {self.keep_margin}: give a fraction in (0, 1)")


@dataclass(frozen=True)
class SVDRecipe(ExperimentRecipe):
    experiment: str = option(EXPERIMENT, help="the experiment kind: `rwedit run` dispatches on it")
    name: str = option(EXPERIMENT, help="names the default output folder runs/NAME")
    matrices: MatrixSelection = option(factory=MatrixSelection, help="which matrices every condition replaces")
    conditions: ConditionSettings = option(factory=ConditionSettings, help="the constructions scored")
    probe: SVDProbeSettings = option(factory=SVDProbeSettings, help="SVD-probe metrics stored with each row")
    verdicts: VerdictSettings = option(factory=VerdictSettings, help="the plain-language answers of the report")
    dtype: str = option("float32", help="the model's dtype while scoring (SVD maths is always float64)")

    def __post_init__(self):
        self.check_kind(EXPERIMENT, "model", "post")
        bad = [k for k in self.conditions.kinds if k not in CONDITION_KINDS or k == "post"]
        if bad:
            raise SpecError(f"conditions.kinds: unknown {bad}; choose from {', '.join(CONDITION_KINDS[1:])} "
                            f"(post and base are always scored)")
        if len(self.conditions.null_seeds) == 1:
            raise SpecError("conditions.null_seeds has one seed: give at least 2 (the null's spread), or none")
        if any(k in RANDOM_KINDS for k in self.conditions.kinds) and not self.conditions.seeds:
            raise SpecError("conditions.seeds is empty: the random disruptions need at least one seed")
        if self.eval is None and self.direct is None:
            raise SpecError("nothing to score: give eval: and/or direct:")
        if self.dtype not in DTYPES:
            raise SpecError(f"dtype: {self.dtype!r}; use one of {', '.join(DTYPES)}")
        if self.verdicts.metrics != VerdictSettings().metrics:  # the defaults: those not scored are skipped
            for m in self.verdicts.metrics:
                check_metric(m, self, "verdicts.metrics", DIRECT_METRICS + tuple(DIRECT_RENAME.values()))

    def condition_list(self) -> list[tuple[str, str, int | None]]:
        """``(name, kind, seed)`` in scoring order: post first, base last."""
        out: list[tuple[str, str, int | None]] = [("post", "post", None)]
        for kind in self.conditions.kinds:
            if kind in RANDOM_KINDS:
                out += [(f"{kind}_s{s}", kind, int(s)) for s in self.conditions.seeds]
            else:
                out.append((kind, kind, None))
                out += [(f"{NULL_PREFIX}{kind}_s{s}", NULL_PREFIX + kind, int(s)) for s in self.conditions.null_seeds]
        out.append(("base", "base", None))
        return out

    @cached_property
    def pair(self) -> CheckpointPair:
        """The base and post checkpoints, opened and checked against each other once per recipe object."""
        return CheckpointPair(Checkpoint.open(self.model), Checkpoint.open(self.post))

    def check_sources(self) -> dict:
        targets(self, self.pair.layout)  # a missing model, a mismatched pair or a bad selection fails here
        return self.pair.sources()


# ----------------------------------------------------------------------------- conditions


def targets(recipe: SVDRecipe, layout) -> list[tuple[int, str]]:
    """The (layer, role) matrices of the recipe's selection, checked against the model."""
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


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """‖a − b‖_F / ‖b‖_F in float64."""
    return float(torch.linalg.matrix_norm(a.double() - b.double()) / torch.linalg.matrix_norm(b.double()))


def _probe_metrics(W_base: torch.Tensor, W_post: torch.Tensor, W_cond: torch.Tensor, probe: SVDProbeSettings,
                   null_key: str | None = None) -> tuple[dict[str, float], tuple[dict, ...]]:
    """The structure metrics of (W_base, W_cond) and, with ``null_key``, the null's rows (``probe.null_seeds``)."""
    from rwedit.probes.svd import clip_rank, svd_structure

    seeds = range(probe.null_seeds) if null_key is not None else ()
    s = svd_structure(W_base, W_cond, r=clip_rank(probe.r, W_base.shape), method=probe.method, null_seeds=seeds,
                      null_key=null_key or "")
    out = {k: getattr(s, k) for k in PROBE_KEYS}
    out["rel_change_vs_post"] = _rel(W_cond, W_post)
    out["rel_change_vs_base"] = _rel(W_cond, W_base)
    return out, s.null


def summarise_matrices(per: list[dict]) -> dict[str, float | None]:
    """Means over matrices (NaN-free ones) and the spread of the scale across them."""
    import statistics

    out: dict[str, float | None] = {}
    for k in PROBE_KEYS + ("rel_change_vs_post", "rel_change_vs_base"):
        vals = [p[k] for p in per if p.get(k) is not None and math.isfinite(p[k])]
        out[k] = sum(vals) / len(vals) if vals else None
    sc = [p["scale"] for p in per if p.get("scale") is not None and math.isfinite(p["scale"])]
    out["scale_sd"] = statistics.stdev(sc) if len(sc) > 1 else None
    out["n_matrices"] = len(per)
    return out


class SVDCondition:
    """One SVD-structure condition on a loaded post model: its intervention and the per-matrix metrics it
    records while applied (``per``; the row gets their means)."""

    def __init__(self, recipe: SVDRecipe, kind: str, seed: int | None, base: TensorReader, snapshot: WeightSnapshot,
                 with_probe: bool = True):
        self.recipe, self.kind, self.seed, self.base, self.snap = recipe, kind, seed, base, snapshot
        self.probe = recipe.probe if with_probe else None
        self.per: list[dict] = []
        self.null: list[dict] = []  # the post pair's null rows, per matrix and draw
        self._view = snapshot.views
        if kind == "post":
            self.intervention = Unchanged()
        elif kind == "base":
            self.intervention = CheckpointLoad(base.ckpt)
        else:
            self.intervention = WeightWrite(snapshot, self._build, kind)

    def w_base(self, layer: int, role: str, like: torch.Tensor) -> torch.Tensor:
        return self.base.matrix(self._view[(layer, role)]).to(like.device)

    def _build(self, layer: int, role: str, W_post: torch.Tensor) -> torch.Tensor:
        device = self.snap.model.get_parameter(self._view[(layer, role)].param).device
        W_post = W_post.to(device=device, dtype=torch.float32)
        W_base = self.w_base(layer, role, W_post)
        s = self.recipe.conditions
        dec = decompose(W_base, W_post, s.rank, s.method)
        seed = None if self.seed is None else matrix_seed(self.seed, layer, role, self.kind)
        kind = self.kind.removeprefix(NULL_PREFIX)
        W_cond = condition_matrix(kind, W_base, W_post, rank=s.rank, fit_r=s.fit_r, seed=seed, dec=dec)
        if kind != self.kind:  # the construction's same-norm random control
            from rwedit.probes.svd import NULL_UPDATES

            norm = float(torch.linalg.vector_norm(W_cond.double() - W_post.double()))
            W_cond = NULL_UPDATES["gaussian"](W_post, None, None, None, norm, torch.Generator().manual_seed(seed))
        if self.probe is not None:
            self.per.append({"layer": layer, "role": role, **_probe_metrics(W_base, W_post, W_cond, self.probe)[0]})
        return W_cond

    def measure(self) -> dict[str, Any]:
        """Row fields: means over the matrices (the per-matrix list is kept in ``per`` for the CSV)."""
        if self.kind == "post" and self.probe is not None:
            self.per, self.null = [], []
            for layer, role in self.snap.targets:
                W_post = self.snap.original(layer, role).to(torch.float32)
                W_base = self.w_base(layer, role, W_post)
                metrics, null = _probe_metrics(W_base, W_post, W_post, self.probe, f"{layer}.{role}")
                self.per.append({"layer": layer, "role": role, **metrics})
                self.null += [{"layer": layer, "role": role, **x} for x in null]
            if self.null:
                from rwedit.probes.svd import null_draws

                return {**summarise_matrices(self.per), "null": null_draws(self.null),
                        "null_seeds": list(range(self.probe.null_seeds))}
        elif self.kind == "base":
            # W_cond = W_base: the structure metrics are their identity values; only the distance to post is measured
            self.per = [{"layer": layer, "role": role, "scale": 1.0, "scale_residual": 0.0, "orth_U": 0.0,
                         "orth_V": 0.0, "consistency": 0.0, "reparam_error": 0.0, "truncation_floor": None,
                         "rel_change_vs_post": _rel(self.w_base(layer, role, torch.empty(0)),
                                                    self.snap.original(layer, role)),
                         "rel_change_vs_base": 0.0} for layer, role in self.snap.targets]
        return summarise_matrices(self.per)

    def write_matrices(self, out: Path, name: str) -> None:
        import pandas as pd

        (out / "matrices").mkdir(exist_ok=True)
        pd.DataFrame(self.per).to_csv(out / "matrices" / f"{name}.csv", index=False)
        if self.null:
            pd.DataFrame(self.null).to_csv(out / "matrices" / f"{name}_null.csv", index=False)
        self.per, self.null = [], []


class _RenamedDirect:
    """The direct scorer with its shift keys renamed ``*_vs_post`` (:data:`DIRECT_RENAME`)."""

    def __init__(self, scorer):
        self.scorer = scorer

    def score(self) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for k, v in self.scorer.score().items():
            suffix = next((s for s in ("_stderr", ITEMS) if k.endswith(s)), "")
            stem = k[: len(k) - len(suffix)]
            row[DIRECT_RENAME.get(stem, stem) + suffix] = v
        return row


def _prepare(recipe: SVDRecipe, out: Path) -> Prepared:
    from rwedit.evals.direct import DirectScorer
    from rwedit.evals.lmeval import LMEvalScorer
    from rwedit.models import load_model_and_tokenizer

    pair = recipe.pair
    model, tok = load_model_and_tokenizer(pair.post, device=recipe.device, dtype=recipe.dtype,
                                          placement=recipe.placement)
    snap = WeightSnapshot(model, targets(recipe, pair.layout))
    base = TensorReader(pair.base)

    def scorers():  # the reference values come from the model as loaded: the post model
        out = [_RenamedDirect(DirectScorer(model, tok, recipe.direct))] if recipe.direct else []
        return out + ([LMEvalScorer(model, tok, recipe.eval)] if recipe.eval else [])

    conditions = []
    for name, kind, seed in recipe.condition_list():
        c = SVDCondition(recipe, kind, seed, base, snap)
        conditions.append(Condition(name, c.intervention, {"kind": kind, "seed": seed}, c.measure,
                                    lambda row, c=c, name=name: c.write_matrices(out, name)))
    return Prepared(model, conditions, scorers)


def _report(folder):
    from rwedit.evals.svd_report import write_svd_report

    return write_svd_report(folder)


def _plan(recipe: SVDRecipe, ctx):
    """Its conditions (post first, base last); no stage before scoring: the SVDs run as each condition is
    written."""
    from rwedit.evals.planning import KindPlan

    return KindPlan(conditions=[name for name, _, _ in recipe.condition_list() if name != "base"])


KIND = register_experiment(ExperimentKind(
    EXPERIMENT, SVDRecipe, help="He & Cao: is post-training a rotation of singular vectors? Weight-write "
    "conditions on the post model, scored next to the base checkpoint", prepare=_prepare, report=_report,
    plan=_plan))
