"""The decomposition experiment: which part of the update a fine-tune actually made carries its behaviour,
at the observed dose. One recipe (``recipes/decompose.yaml``), one model load (the base).

The observed update ΔW = W_post − W_base (``post``: a checkpoint or a LoRA adapter folder) on the chosen
(layer, role) cells is split, cell by cell on the cell's own side, into parts; each part is a condition:

- ``full``             all of ΔW (written in place);
- ``principal_k<k>``   read cells (q k v up gate): ΔW·V Vᵀ, V = A_k, the top-k eigenvectors of E[a aᵀ] of the
                       cell's input; write cells (o down): U Uᵀ·ΔW, U = P_k, the top-k right singular vectors of
                       the unembedding (an adapter: B = ΔW V, A = Vᵀ; or B = U, A = UᵀΔW);
- ``random_k<k>_s<s>`` the same with a Haar-random k-subspace (one per seed; an adapter);
- ``randnorm_k<k>_s<s>`` that random part rescaled, cell by cell, to the principal part's Frobenius norm;
- ``complement_k<k>``  ΔW minus the principal part (written in place): principal + complement = ΔW exactly;
- ``svd_r<r>``         the update's own top-r singular directions U_r Σ_r V_rᵀ per cell (an adapter).

Low-rank parts are PEFT LoRA adapters written by the editor (:mod:`rwedit.editor.adapters`, fused and
transposed layouts included) and saved with model cards under ``OUT/adapters``; high-rank parts are weight
writes (:class:`~rwedit.editor.interventions.WeightWrite`), restored bit for bit. With ``parts.units`` the
cells are grouped into replicate units (all cells at once, each side, each layer): a unit's parts change only
its own cells, named ``<unit>_<part>`` (``read_principal_k4``), and the verdicts are pooled over units.
Each row holds the part's share of its unit's ‖ΔW‖² next to the behaviour metrics; the retained fractions
and verdicts are the report's (:mod:`rwedit.evals.decompose_report`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

import torch

from rwedit.architectures import READ_ROLES, get_weight
from rwedit.checkpoints import CheckpointPair
from rwedit.config import Config, option
from rwedit.editor.edits import EditCondition, RankOneEdit
from rwedit.editor.interventions import BASE, Adapter, Unchanged, WeightSnapshot, WeightWrite
from rwedit.editor.svd_edits import matrix_seed
from rwedit.errors import SpecError
from rwedit.evals.core import Condition, ExperimentKind, ExperimentRecipe, Prepared, check_metric, register_experiment
from rwedit.evals.svd_experiment import MatrixSelection, targets
from rwedit.probes.pipeline import CalibrationSettings
from rwedit.probes.subspaces import haar_basis

EXPERIMENT = "decompose"
UNITS = ("all", "side", "layer")
Cell = tuple[int, str]
#: each part kind in words (the report's and the model cards' wording)
KINDS = {
    "full": "all of ΔW",
    "principal": "ΔW restricted to the principal subspace (read cells: ΔW·V Vᵀ with V = A_k, the top-k "
                 "eigenvectors of E[a aᵀ] of the cell's input; write cells: U Uᵀ·ΔW with U = P_k, the top-k right "
                 "singular vectors of the unembedding)",
    "random": "ΔW restricted to a Haar-random k-subspace on the cell's side",
    "randnorm": "the random part rescaled, cell by cell, to the Frobenius norm of the principal part",
    "complement": "ΔW minus its principal part (restricted to the complement of A_k or P_k)",
    "svd": "the update's own top-r singular directions (U_r Σ_r V_rᵀ of each cell's ΔW)",
}


@dataclass(frozen=True)
class PartSettings(Config):
    """Which parts of ΔW are scored (k and r are lists: each part kind gives a curve)."""

    ks: tuple[int, ...] = option((1, 4, 16), help="subspace dimensions k of the principal, random and complement "
                                 "parts (each below every chosen cell's side dimension)")
    random: int = option(3, help="random k-subspaces per k (seeds seed+1 ..): the null of the principal part")
    norm_matched: bool = option(True, help="also each random part rescaled to the principal part's Frobenius norm")
    complement: bool = option(True, help="also the complement of the principal part (ΔW minus it)")
    ranks: tuple[int, ...] = option((1, 2, 4, 8, 16), help="the update's own top-r singular directions per cell "
                                    "(r clipped to the cell's rank); the smallest r that keeps verdicts.keep is "
                                    "the exported adapter")
    units: str = option("side", help="replicate units the parts are applied to, verdicts pooled over them: all "
                        "(every cell at once), side (read cells vs A_k, write cells vs P_k), layer")
    seed: int = option(0, help="seed of the random subspaces")
    centred: bool = option(False, help="A_k from the centred covariance instead of E[a aᵀ]")

    def __post_init__(self):
        if self.units not in UNITS:
            raise SpecError(f"parts.units: {self.units!r}; use one of {', '.join(UNITS)}")
        bad = [x for x in (*self.ks, *self.ranks) if x < 1]
        if bad or not self.ks or self.random < 0:
            raise SpecError(f"parts: ks (at least one) and ranks must be positive integers and random >= 0 (got ks "
                            f"{list(self.ks)}, ranks {list(self.ranks)}, random {self.random})")


@dataclass(frozen=True)
class DecomposeVerdicts(Config):
    margin: float = option(0.1, help="'retains more' means by at least this share of the full update's shift: yes "
                           "when the 95% interval lies above it, no when below")
    keep: float = option(0.8, help="the exported top-r adapter: the smallest r whose retained fraction has its 95% "
                         "lower bound at or above this")

    def __post_init__(self):
        if not (0 <= self.margin < 1 and 0 < self.keep <= 1):
            raise SpecError(f"verdicts: margin {self.margin} must lie in [0, 1) and keep {self.keep} in (0, 1]")


@dataclass(frozen=True)
class DecomposeRecipe(ExperimentRecipe):
    experiment: str = option(EXPERIMENT, help="the experiment kind: `rwedit run` dispatches on it")
    name: str = option(EXPERIMENT, help="names the default output folder runs/NAME")
    calibration: CalibrationSettings | None = option(None, help="activation statistics of the read cells' inputs "
                                                     "(A_k); needed when a read-pathway cell is chosen")
    matrices: MatrixSelection = option(factory=MatrixSelection, help="the (layer, role) cells whose update is "
                                       "split (default: every layer matrix; cells where post = base are left out)")
    parts: PartSettings = option(factory=PartSettings, help="the parts scored")
    verdicts: DecomposeVerdicts = option(factory=DecomposeVerdicts, help="the plain-language answers of the report")
    primary: str = option("pref_margin_shift", help="the behaviour metric of the retained fractions and verdicts "
                          "(one with per-item values: a paired direct metric or an lm-eval TASK/METRIC)")

    def __post_init__(self):
        self.check_kind(EXPERIMENT, "model", "post")
        check_metric(self.primary, self, "primary", ("pref_margin_shift", "ce_shift", "kl_base_edited"))

    @cached_property
    def pair(self) -> CheckpointPair:
        """Base and post (a checkpoint or a LoRA adapter folder), opened and checked against each other once."""
        return CheckpointPair(self.base_checkpoint, self.post)

    def cells(self, layout) -> list[Cell]:
        """The chosen cells, checked against the model: the calibration a read cell needs, every k below every
        cell's side dimension."""
        cells = targets(self, layout)
        if self.calibration is None and any(r in READ_ROLES for _, r in cells):
            raise SpecError("the read-pathway cells (q k v up gate) are split by their activation subspace A_k: "
                            "give `calibration:` (data, tokens, seq_len), or choose write cells only (matrices.roles)")
        for layer, role in cells:
            view = layout.view(layer, role)
            d = view.d_in if role in READ_ROLES else view.d_out
            if max(self.parts.ks) >= d:
                raise SpecError(f"parts.ks: k = {max(self.parts.ks)} is not below the {side(role)} side of layer "
                                f"{layer} {role} (d = {d}): a principal part of every direction is all of ΔW")
        return cells

    def check_sources(self) -> dict:
        self.cells(self.pair.layout)  # a missing model, a mismatched pair or a bad selection fails here
        return self.pair.sources()


def side(role: str) -> str:
    return "read" if role in READ_ROLES else "write"


def unit_of(cell: Cell, units: str) -> str:
    """The replicate unit a cell belongs to ('' when every cell is one unit)."""
    return {"all": "", "side": side(cell[1]), "layer": f"L{cell[0]}"}[units]


def part_names(parts: PartSettings, unit: str) -> list[tuple[str, str, dict]]:
    """``(name, kind, fields)`` of one unit's parts in scoring order."""
    pre = f"{unit}_" if unit else ""
    seeds = [parts.seed + 1 + i for i in range(parts.random)]
    out = [(f"{pre}full", "full", {})]
    for k in parts.ks:
        out.append((f"{pre}principal_k{k}", "principal", {"k": k}))
        out += [(f"{pre}random_k{k}_s{s}", "random", {"k": k, "seed": s}) for s in seeds]
        out += [(f"{pre}randnorm_k{k}_s{s}", "randnorm", {"k": k, "seed": s}) for s in seeds if parts.norm_matched]
        out += [(f"{pre}complement_k{k}", "complement", {"k": k})] if parts.complement else []
    return out + [(f"{pre}svd_r{r}", "svd", {"r": r}) for r in parts.ranks]


# ----------------------------------------------------------------------------- the parts


def factors(delta: torch.Tensor, basis: torch.Tensor, side_: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` with ``B A`` the projection of ``delta`` on ``basis`` (orthonormal columns) on one side: read,
    ΔW·V Vᵀ (B = ΔW V, A = Vᵀ); write, U Uᵀ·ΔW (B = U, A = UᵀΔW)."""
    return (delta @ basis, basis.T) if side_ == "read" else (basis, basis.T @ delta)


def norm2(B: torch.Tensor, A: torch.Tensor) -> float:
    """‖B A‖²_F without forming B A: Σ (BᵀB ∘ A Aᵀ)."""
    return float(((B.T @ B) * (A @ A.T)).sum())


def rank_one(cell: Cell, B: torch.Tensor, A: torch.Tensor, provenance: dict) -> list[RankOneEdit]:
    """``B A`` as rank-1 edits α_j b_j v_jᵀ (unit b, v; a zero term keeps α = 0): an adapter of rank r."""
    out = []
    for j in range(B.shape[1]):
        nb, nv = float(B[:, j].norm()), float(A[j].norm())
        b = B[:, j] / nb if nb > 0 else torch.zeros_like(B[:, j])
        v = A[j] / nv if nv > 0 else torch.zeros_like(A[j])
        out.append(RankOneEdit(cell[0], cell[1], b, v, nb * nv, dict(provenance)))
    return out


@dataclass
class Part:
    """One condition's part of ΔW on the cells of its unit: rank-1 edits (an adapter) or, for a high-rank
    part, ``dense(cell)`` (written in place). ``norms2``: ‖part‖²_F per cell."""

    name: str
    kind: str
    unit: str
    fields: dict
    edits: list[RankOneEdit] = field(default_factory=list)
    dense: Callable[[Cell], torch.Tensor] | None = None
    norms2: dict[Cell, float] = field(default_factory=dict)


class Decomposition:
    """The update's cells with their subspaces, and every part of the recipe built from them (float64)."""

    def __init__(self, deltas: dict[Cell, torch.Tensor], read_basis: Callable[[Cell, int], torch.Tensor],
                 write_basis: Callable[[int], torch.Tensor], parts: PartSettings):
        self.deltas, self.parts = deltas, parts
        self.units: dict[str, list[Cell]] = {}
        for cell in sorted(deltas, key=lambda c: (side(c[1]) != "read", c[0])):  # read before write, layers in order
            self.units.setdefault(unit_of(cell, parts.units), []).append(cell)
        kmax = max(parts.ks)
        self.principal = {c: (read_basis(c, kmax) if side(c[1]) == "read" else write_basis(kmax)) for c in deltas}
        self.total2 = {c: float(d.square().sum()) for c, d in deltas.items()}

    def d(self, cell: Cell) -> torch.Tensor:
        return self.deltas[cell].double()

    def basis(self, cell: Cell, kind: str, k: int, seed: int | None) -> torch.Tensor:
        if kind == "principal":
            return self.principal[cell][:, :k]
        return haar_basis(self.principal[cell].shape[0], k, matrix_seed(seed, *cell, f"k{k}"))

    def projected(self, cell: Cell, kind: str, k: int, seed: int | None = None):
        return factors(self.d(cell), self.basis(cell, kind, k, seed), side(cell[1]))

    def build(self, name: str, kind: str, unit: str, fields: dict) -> Part:
        part = Part(name, kind, unit, fields)
        k, seed = fields.get("k"), fields.get("seed")
        for cell in self.units[unit]:
            prov = {"part": kind, "side": side(cell[1]), **fields}
            if kind == "full":
                part.norms2[cell] = self.total2[cell]
            elif kind == "complement":
                part.norms2[cell] = max(self.total2[cell] - norm2(*self.projected(cell, "principal", k)), 0.0)
            else:
                if kind == "svd":
                    from rwedit.probes.svd import top_svd

                    r = min(fields["r"], *self.deltas[cell].shape)
                    U, s, V = top_svd(self.d(cell), r, "auto")
                    B, A = U * s, V.T
                else:
                    B, A = self.projected(cell, "principal" if kind == "principal" else "random", k, seed)
                    if kind == "randnorm":
                        want, have = norm2(*self.projected(cell, "principal", k)), norm2(B, A)
                        B = B * ((want / have) ** 0.5 if have > 0 else 0.0)
                part.norms2[cell] = norm2(B, A)
                part.edits += rank_one(cell, B, A, prov)
        if kind in ("full", "complement"):
            part.dense = self.d if kind == "full" else (
                lambda cell: self.d(cell) - torch.matmul(*self.projected(cell, "principal", k)))
        return part

    def all_parts(self) -> list[Part]:
        return [self.build(n, kind, unit, f) for unit in self.units for n, kind, f in part_names(self.parts, unit)]


# ----------------------------------------------------------------------------- the kind


def _observed(recipe: DecomposeRecipe, cells: list[Cell]) -> dict[Cell, torch.Tensor]:
    """ΔW of every chosen cell where post ≠ base (float32: the stored weights' own precision)."""
    out = {}
    for rp in recipe.pair.iter_roles(roles=sorted({r for _, r in cells}), layers=sorted({l for l, _ in cells})):
        if (rp.layer, rp.role) in cells:
            d = rp.delta.float()
            if bool(d.any()):
                out[(rp.layer, rp.role)] = d
    if not out:
        raise SpecError(f"post equals base on every chosen cell ({len(cells)} matrices): there is no update to split")
    return out


def _card(recipe: DecomposeRecipe, part: Part, share: float, total2: dict[Cell, float]) -> dict:
    """A part adapter's model card (:func:`rwedit.editor.export.model_card` with ``card``)."""
    what = ", ".join(f"{k} = {v}" for k, v in part.fields.items())
    lines = [f"# rwedit decomposition part: `{part.name}`", "",
             f"A part of the observed update ΔW = W_post − W_base between base `{recipe.model}` and post "
             f"`{recipe.post}`: {KINDS[part.kind]}{f' ({what})' if what else ''}, on {len(part.norms2)} matrices"
             f"{f' (unit {part.unit})' if part.unit else ''}, stored exactly as a PEFT LoRA adapter (lora_B·lora_A = "
             f"the part; lora_alpha = r). It holds {share:.3g} of the unit's ‖ΔW‖²_F.", "",
             "| layer | role | side | ‖part‖_F | share of the matrix's ‖ΔW‖² |", "|---|---|---|---|---|"]
    lines += [f"| {l} | {r} | {side(r)} | {n ** 0.5:.4g} | {n / total2[(l, r)]:.3g} |" for (l, r), n in part.norms2.items()]
    return {"tags": ["weight-delta-decomposition"], "lines": lines}


def _prepare(recipe: DecomposeRecipe, out: Path) -> Prepared:
    from rwedit.data import pack_tokens, read_texts
    from rwedit.editor.adapters import attach_conditions
    from rwedit.editor.pipeline import base_reference, save_adapters
    from rwedit.evals.direct import DirectScorer
    from rwedit.evals.lmeval import LMEvalScorer
    from rwedit.models import load_model_and_tokenizer
    from rwedit.outputs import atomic_folder
    from rwedit.probes.activations import StatsSettings, cached_activation_stats, model_fingerprint
    from rwedit.probes.subspaces import prediction_spectrum
    from rwedit.runtime import runtime

    deltas = _observed(recipe, recipe.cells(recipe.pair.layout))
    model, tok = load_model_and_tokenizer(recipe.base_checkpoint, device=recipe.device, placement=recipe.placement)
    read = sorted({c for c in deltas if side(c[1]) == "read"})
    stats = stats_meta = None
    if read:
        c = recipe.calibration
        ids = pack_tokens(tok, read_texts(c.data, field=c.field), c.seq_len, c.tokens)
        settings = StatsSettings(roles=tuple(sorted({r for _, r in read})), layers=tuple(sorted({l for l, _ in read})),
                                 seq_len=c.seq_len, batch_size=c.batch_size)
        rt = runtime()
        stats = cached_activation_stats(model, ids, settings, source=str(c.data), cache_dir=rt.cache_dir,
                                        progress=rt.progress)
        stats_meta = {"n_tokens": stats.n_tokens, **{k: stats.meta.get(k) for k in ("source", "tokens_sha256")}}
    pred = None
    if len(read) < len(deltas):
        pred = prediction_spectrum(get_weight(model, None, "unembed").double())
    centred = recipe.parts.centred
    dec = Decomposition(deltas, lambda cell, k: stats.spectrum(*cell, centred, top=k).top(k), lambda k: pred.top(k),
                        recipe.parts)
    parts = dec.all_parts()
    fingerprint = model_fingerprint(model)
    low = [p for p in parts if p.dense is None]
    peft_model = attach_conditions(model, [EditCondition(p.name, p.kind, 1.0, p.edits) for p in low])
    bare = peft_model.base_model.model

    def info(p: Part) -> dict:
        total = sum(dec.total2[c] for c in dec.units[p.unit])
        return {"kind": p.kind, "unit": p.unit or "all", "k": p.fields.get("k"), "r": p.fields.get("r"),
                "seed": p.fields.get("seed"), "share": sum(p.norms2.values()) / total,
                "part_norm": sum(p.norms2.values()) ** 0.5, "delta_norm": total ** 0.5, "n_cells": len(p.norms2)}

    if not (out / "adapters").exists():  # built the same way on --resume: written once
        base = base_reference(recipe.model, bare)
        with atomic_folder(out / "adapters", inputs=recipe.inputs()) as tmp:
            save_adapters(peft_model, tmp, base, {p.name: {
                "spec": recipe.to_dict(), "condition": {"name": p.name, **info(p)},
                "activation_stats": stats_meta if any(side(r) == "read" for _, r in p.norms2) else None,
                "base_fingerprint": fingerprint, "card": _card(recipe, p, info(p)["share"], dec.total2)} for p in low})
    snapshot = WeightSnapshot(bare, list(deltas))

    def write(p: Part) -> WeightWrite:
        cells = set(dec.units[p.unit])
        return WeightWrite(snapshot, lambda layer, role, W: (W.double() + p.dense((layer, role))).to(W.dtype)
                           if (layer, role) in cells else None, p.name)

    def scorers():
        got = [DirectScorer(peft_model, tok, recipe.direct)] if recipe.direct else []
        return got + ([LMEvalScorer(peft_model, tok, recipe.eval)] if recipe.eval else [])

    rows = [Condition(BASE, Unchanged(), {"kind": BASE, "unit": None, "share": 0.0})]
    rows += [Condition(p.name, Adapter(p.name) if p.dense is None else write(p), info(p)) for p in parts]
    return Prepared(peft_model, rows, scorers)


def _plan(recipe: DecomposeRecipe, ctx):
    """Its conditions (every unit's parts, before cells where post = base are known and left out) and the
    activation statistics of the read cells."""
    from rwedit.evals.planning import ADAPTER_FILES_BYTES, DataRef, KindPlan, stats_stage

    layout = ctx.base.layout
    cells = recipe.cells(layout)
    units = list(dict.fromkeys(unit_of(c, recipe.parts.units) for c in cells))
    names = [n for u in units for n, _, _ in part_names(recipe.parts, u)]
    plan = KindPlan(conditions=names, checked=["the cells (matrices:), the calibration the read cells need, ks "
                                               "below every cell's side dimension"])
    read = [c for c in cells if side(c[1]) == "read"]
    if read:
        c = recipe.calibration
        plan.data.append(DataRef("calibration.data", c.data, "texts", c.field))
        plan.stages.append(stats_stage(ctx, "statistics", f"E[a a^T] of the inputs of {len(read)} read cells, "
                                       f"float64 (cached)", c.tokens, sorted({l for l, _ in read}),
                                       sorted({r for _, r in read})))
        plan.cache_bytes += plan.stages[-1].cache_bytes
    plan.output_bytes += len(names) * ADAPTER_FILES_BYTES
    return plan


def _report(folder, primary: str | None = None):
    from rwedit.evals.decompose_report import write_decompose_report

    return write_decompose_report(folder, primary)


def _finish(recipe: DecomposeRecipe, out: Path) -> None:
    """The exported adapters (each unit's smallest top-r part that keeps ``verdicts.keep``) get the measured
    numbers in their model cards."""
    from rwedit.editor.export import refresh_card
    from rwedit.evals.decompose_report import exported

    for name, metrics in exported(out).items():
        refresh_card(out / "adapters" / name, metrics)


KIND = register_experiment(ExperimentKind(
    EXPERIMENT, DecomposeRecipe, help="which part of the observed update (post − base) carries the behaviour: "
    "its principal, random, complement and top-r parts scored on one loaded model", prepare=_prepare,
    report=_report, finish=_finish, plan=_plan))
