"""Rank-1 edits and their matched controls, built from one :class:`EditSpec`.

Every edit is ``ΔW = α · b vᵀ`` with ``‖b‖ = ‖v‖ = 1``, so ``‖ΔW‖_F = |α|``: an edit and its controls
share the layer(s), ``|α|`` and the ``b`` rule, and differ only in the kind of direction. Each edit records
its dose's yardsticks: ‖W‖_F of the edited matrix and, with ``post``, the observed update along the edited
direction(s) ‖ΔW_obs v‖ (the unit of ``alpha_rel_observed``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from rwedit.lazy import torch

from rwedit.architectures import get_weight, model_layout
from rwedit.checkpoints import Checkpoint, CheckpointPair
from rwedit.data import pack_tokens, read_pairs, read_texts
from rwedit.editor.closed_forms import Probe, delta_b, delta_v, gradient_products, unit
from rwedit.editor.spec import EditSpec, condition_name
from rwedit.errors import SpecError
from rwedit.probes.activations import ActivationStats
from rwedit.probes.subspaces import haar_basis, prediction_spectrum


@dataclass
class RankOneEdit:
    """``ΔW = alpha · b vᵀ`` on one role of one layer (b: d_out, v: d_in, both unit, float64)."""

    layer: int
    role: str
    b: torch.Tensor
    v: torch.Tensor
    alpha: float
    provenance: dict = field(default_factory=dict)

    @property
    def delta(self) -> torch.Tensor:
        return self.alpha * torch.outer(self.b, self.v)

    @property
    def norm(self) -> float:
        return abs(self.alpha)


@dataclass
class EditCondition:
    """One adapter's worth of edits: the main edit or one control, at one alpha (exported as one PEFT adapter;
    the runner scores it as an :class:`rwedit.evals.core.Condition`, a row of the experiment)."""

    name: str
    kind: str  # principal | lowvar | random | given | write
    alpha: float
    edits: list[RankOneEdit]
    seed: int | None = None
    index: int | None = None
    dose: float | None = None  # the dose as given (None: alpha), in dose_unit (DOSE_UNITS)
    dose_unit: str = "alpha"
    control: bool = False  # a control of the edit (not one of the edited directions)
    match: str = "norm"  # what the control shares with the edit: its ‖ΔW‖_F (norm) or its KL (kl)
    kl_match: dict | None = None  # the KL search of a KL-matched control (target, found, scale, steps)

    def __post_init__(self):
        self.dose = self.alpha if self.dose is None else self.dose

    def describe(self) -> dict:
        return {"name": self.name, "kind": self.kind, "alpha": self.alpha, "seed": self.seed, "index": self.index,
                "dose": self.dose, "dose_unit": self.dose_unit, "control": self.control, "match": self.match,
                "kl_match": self.kl_match,
                "edits": [{"layer": e.layer, "role": e.role, "norm": e.norm, **e.provenance} for e in self.edits]}

    def scaled(self, factor: float, name: str, **fields) -> "EditCondition":
        """This condition with every edit's α multiplied by ``factor`` (directions and provenance kept)."""
        edits = [RankOneEdit(e.layer, e.role, e.b, e.v, e.alpha * factor, dict(e.provenance)) for e in self.edits]
        return EditCondition(name, self.kind, self.alpha * factor, edits, self.seed, self.index, self.dose,
                         self.dose_unit, self.control, **fields)


def _direction_vectors(spec: EditSpec, stats: ActivationStats | None, d_in: dict[int, int]) -> list[dict]:
    """The read directions v of the edit and of its read-pathway controls, per layer."""
    e = spec.edit

    def eig(layer, which: str, i: int) -> tuple[torch.Tensor, float]:
        if stats is None:
            raise SpecError(f"v = {e.v} needs activation statistics (calibration data)")
        d = d_in[layer]
        if not 0 <= i < d:
            raise SpecError(f"{which}[{i}] out of range: the {e.role} input at layer {layer} has d = {d}")
        if which == "principal":
            sp = stats.spectrum(layer, e.role, e.centred, top=i + 1)
            return sp.top(i + 1)[:, i], float(sp.eigenvalues[i])
        sp = stats.spectrum(layer, e.role, e.centred, top=0, bottom=i + 1)
        return sp.bottom(i + 1)[:, i], float(sp.eigenvalues[sp.d - 1 - i])

    def given_v(layer):
        v = torch.tensor(e.v_given, dtype=torch.float64)
        if v.numel() != d_in[layer]:
            raise SpecError(f"edit.v_given has {v.numel()} numbers; the {e.role} input has d = {d_in[layer]}")
        v = unit(v, "edit.v_given")
        rule = "as given"
        if e.b == "given" and stats is not None and stats.has(layer, e.role):
            if float(stats.mean(layer, e.role) @ v) < 0:  # eigenvector-style sign ambiguity: fix it by a rule
                v = -v
            rule = "flipped so that the mean calibration activation projects positively on v"
        return v, rule

    def vectors(kind, index, seed):
        vs = {}
        for layer in e.layers:
            if kind in ("principal", "lowvar"):
                v, lam = eig(layer, kind, index)
                vs[layer] = (v, {"v_kind": kind, "v_index": index, "v_eigenvalue": lam})
            elif kind == "random":
                vs[layer] = (haar_basis(d_in[layer], 1, seed)[:, 0].clone(), {"v_kind": "random", "v_seed": seed})
            else:
                v, rule = given_v(layer)
                vs[layer] = (v, {"v_kind": "given", "v_sign_rule": rule})
        return vs

    # the edited direction(s), then the controls: random seeds spec.seed+1.. (a random main edit uses spec.seed)
    return [{"kind": kind, "index": index, "seed": seed, "v": vectors(kind, index, seed)}
            for kind, index, seed in spec.direction_kinds()]


def build_conditions(
    spec: EditSpec,
    model: torch.nn.Module,
    tokenizer=None,
    stats: ActivationStats | None = None,
    batch_size: int = 4,
) -> list[EditCondition]:
    """The edit and all its matched controls, one :class:`EditCondition` per direction kind and alpha."""
    layout = model_layout(model)
    spec = spec.resolved(layout.n_layers)
    e = spec.edit
    if e.role == "unembed" or not layout.has_role(e.role):
        raise SpecError(f"{layout.spec.name} has no {e.role!r} role to edit; roles: {', '.join(layout.roles()[:-1])}")
    for layer in e.layers:
        layout.view(layer, e.role)  # clear error for an out-of-range layer
    d_in = {l: layout.view(l, e.role).d_in for l in e.layers}
    directions = _direction_vectors(spec, stats, d_in)
    write_role = spec.controls.write
    if write_role is not None and not layout.has_role(write_role):
        raise SpecError(f"{layout.spec.name} has no {write_role!r} role for the write control")

    # --- b for every (direction, layer); the write control's input direction w for a fixed u ---
    u = None
    if write_role is not None:
        W_U = get_weight(model, None, "unembed").float()
        u = prediction_spectrum(W_U).top(1)[:, 0]  # top prediction direction (residual stream)
    bs: dict[tuple[int, int], torch.Tensor] = {}
    ws: dict[int, torch.Tensor] = {}
    rule = e.b
    roles = [e.role] + ([write_role] if write_role else [])
    observed = _observed_deltas(spec, [(l, r) for l in e.layers for r in roles]) if spec.post else {}
    if rule == "delta":
        for i, d in enumerate(directions):
            for l, (v, _) in d["v"].items():
                bs[(i, l)] = unit(delta_b(observed[(l, e.role)], v), f"ΔW_obs v at layer {l}")
        if write_role:
            for l in e.layers:
                ws[l] = unit(delta_v(observed[(l, write_role)], u), f"ΔW_obsᵀ u of {write_role} at layer {l}")
    elif rule == "gradient":
        probes, keys = [], []
        for i, d in enumerate(directions):
            for l, (v, _) in d["v"].items():
                probes.append(Probe(l, e.role, v, "Gv"))
                keys.append(("b", i, l))
        if write_role:
            for l in e.layers:
                probes.append(Probe(l, write_role, u, "GTu"))
                keys.append(("w", None, l))
        data = _objective_data(spec, tokenizer)
        prods = gradient_products(model, probes, e.objective, data, tokenizer=tokenizer, batch_size=batch_size,
                                  max_len=e.max_len)
        for (what, i, l), g in zip(keys, prods):
            if what == "b":
                bs[(i, l)] = unit(-g, f"−G v at layer {l}")
            else:
                ws[l] = unit(-g, f"−Gᵀ u of {write_role} at layer {l}")
    else:
        b = torch.tensor(e.b_given, dtype=torch.float64)
        for i, d in enumerate(directions):
            for l in d["v"]:
                d_out = layout.view(l, e.role).d_out
                if b.numel() != d_out:
                    raise SpecError(f"edit.b_given has {b.numel()} numbers; the {e.role} output has d = {d_out}")
                bs[(i, l)] = unit(b, "edit.b_given")

    b_prov = {"b_rule": rule}
    if rule == "gradient":
        b_prov.update(objective=e.objective, data=e.data, data_limit=e.data_limit, b_sign="descent on the loss (−G v)")
    elif rule == "delta":
        b_prov.update(post=spec.post)

    # the dose's yardsticks on each layer: ‖W‖_F of every edited matrix, and (with post) the observed update
    # along the edited direction(s), ‖ΔW_obs v‖ averaged over them: the unit of alpha_rel_observed
    ws_ = {(l, r): get_weight(model, l, r) for l in e.layers for r in roles}
    w_norm = {k: None if w.is_meta else float(torch.linalg.matrix_norm(w.double())) for k, w in ws_.items()}  # meta: offloaded
    n_main = len(e.directions())
    ref = {l: sum(float(torch.linalg.vector_norm(delta_b(observed[(l, e.role)], directions[i]["v"][l][0])))
                  for i in range(n_main)) / n_main for l in e.layers} if observed else {}
    if spec.alpha_rel_observed and any(ref[l] == 0 for l in e.layers):
        raise SpecError(f"alpha_rel_observed: the observed update along v is 0 on layer(s) "
                        f"{[l for l in e.layers if ref[l] == 0]} ({spec.post} does not change {e.role} there)")

    def yard(l, role, v=None):  # the dose's yardsticks of one edit (v: its input direction, for ‖ΔW_obs v‖)
        return {**({"w_norm": w_norm[(l, role)]} if w_norm[(l, role)] is not None else {}),
                **({"observed_ref": ref[l]} if observed else {}),
                **({"observed_along_v": float(torch.linalg.vector_norm(delta_b(observed[(l, role)], v)))}
                   if observed and v is not None else {})}

    conditions: list[EditCondition] = []
    for dose, dose_unit in spec.doses():
        for layers in e.units():
            layer = layers[0] if e.per_layer else None
            alpha = {l: dose * (ref[l] if dose_unit == "observed" else 1.0) for l in layers}
            rms = math.copysign(math.sqrt(sum(a * a for a in alpha.values()) / len(alpha)), dose)
            for i, d in enumerate(directions):
                edits = [RankOneEdit(l, e.role, bs[(i, l)], v, alpha[l], {**prov, **b_prov, **yard(l, e.role, v)})
                         for l, (v, prov) in d["v"].items() if l in layers]
                name = condition_name(d["kind"], dose, d["index"], d["seed"], layer=layer, unit=dose_unit)
                conditions.append(EditCondition(name, d["kind"], rms, edits, d["seed"], d["index"], dose, dose_unit,
                                            control=i >= n_main))
            if write_role:
                edits = [RankOneEdit(l, write_role, u.double(), ws[l], alpha[l],
                                     {"v_kind": "closed-form input direction", "b_kind": "top prediction direction",
                                      **b_prov, **yard(l, write_role, ws[l])}) for l in layers]
                name = condition_name("write", dose, role=write_role, layer=layer, unit=dose_unit)
                conditions.append(EditCondition(name, "write", rms, edits, dose=dose, dose_unit=dose_unit, control=True))
    return conditions


def _observed_deltas(spec: EditSpec, keys: Sequence[tuple[int, str]]) -> dict[tuple[int, str], torch.Tensor]:
    pair = CheckpointPair(Checkpoint.open(spec.model), spec.post)  # post: a checkpoint or a LoRA adapter folder
    roles = sorted({r for _, r in keys})
    layers = sorted({l for l, _ in keys})
    out = {}
    for rp in pair.iter_roles(roles=roles, layers=layers):
        if (rp.layer, rp.role) in keys:
            out[(rp.layer, rp.role)] = rp.delta
    return out


def _objective_data(spec: EditSpec, tokenizer):
    e = spec.edit
    if tokenizer is None:
        raise SpecError("b: gradient needs the model's tokenizer")
    if e.objective == "preference":
        return read_pairs(e.data, limit=e.data_limit)
    texts = read_texts(e.data)
    return pack_tokens(tokenizer, texts, seq_len=e.max_len, token_budget=e.data_limit * e.max_len)


def norms_match(conditions: Sequence[EditCondition], rtol: float = 1e-9) -> bool:
    """True when, at each dose, every edit on the same layer of every norm-matched condition has the same
    ‖ΔW‖_F (|α| for a dose given as α)."""
    groups: dict[tuple, set[float]] = {}
    for c in conditions:
        for e in c.edits if c.match == "norm" else ():
            groups.setdefault((c.dose_unit, c.dose, e.layer), set()).add(float(torch.linalg.matrix_norm(e.delta)))
    return all(max(v) - min(v) <= rtol * max(v) and (unit != "alpha" or math.isclose(max(v), abs(dose), rel_tol=rtol))
               for (unit, dose, _), v in groups.items())
