"""Edit specifications: what to edit, which directions, which closed form, which matched controls.

The YAML form mirrors the dataclasses one to one::

    model: path/or/hub-id
    post: path/or/hub-id              # needed by b: delta
    calibration: {data: wikitext.txt.gz, tokens: 50000, seq_len: 256}
    edit: {layers: [2], role: q, v: "principal[0]", b: gradient, objective: preference,
           data: pairs.jsonl, data_limit: 256}
    alpha: [0.5, 1.0, 2.0]            # signed; ||ΔW||_F = |alpha| for every edit and control
    alpha_rel_observed: [1, 4]        # doses relative to the observed update along v (needs post)
    controls: {random: 5, lowvar: 1, write: o}
    seed: 0
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from rwedit.architectures import READ_ROLES, ROLES, WRITE_ROLES
from rwedit.config import Config, option
from rwedit.errors import SpecError
from rwedit.data import CalibrationSettings

#: the units a dose is given in: α itself (‖ΔW‖_F), or a multiple of the observed update along v (‖ΔW_obs v‖)
DOSE_UNITS = {"alpha": "a", "observed": "r"}
#: subspace dimensions of the RSF of each edit direction recorded in its provenance
PROBE_KS = (1, 4, 16)
#: the name suffix of a control whose α was searched to match the edit's KL(base ‖ edited) (the control experiment)
KL_SUFFIX = "_kl"


def alpha_tag(alpha: float, unit: str = "alpha") -> str:
    """An adapter-name-safe spelling of a dose (PEFT names may not contain dots): ``a2`` for α = 2, ``r4`` for
    4 × the observed update along v."""
    s = f"{alpha:g}".replace("-", "m").replace(".", "p")
    return f"{DOSE_UNITS[unit]}{s}"


def condition_name(kind: str, alpha: float, index: int | None = None, seed: int | None = None,
                   role: str | None = None, layer: int | None = None, unit: str = "alpha") -> str:
    """The adapter/condition name of one edit condition, e.g. ``principal0_a1``, ``random_s3_a1``,
    ``write_o_a1`` (a write control names its role), ``principal0_r4`` (a dose relative to the observed
    update); ``L3_principal0_a1`` when each layer is its own replicate unit (``edit.per_layer``)."""
    prefix = "" if layer is None else f"L{layer}_"
    if kind == "write":
        return f"{prefix}write_{role}_{alpha_tag(alpha, unit)}"
    tag = kind + (str(index) if index is not None else "") + (f"_s{seed}" if seed is not None else "")
    return f"{prefix}{tag}_{alpha_tag(alpha, unit)}"


_NAMED_LAYERS = {"first": 0.0, "mid": 0.5, "middle": 0.5, "last": 1.0}


def resolve_layer(x: int | float | str, n_layers: int | None) -> int:
    """One layer of a spec as an index into a model of ``n_layers`` layers: an index, a negative index from
    the end, a fraction of the depth f in [0, 1] (round(f·(n − 1)), halves up: 0.5 is the middle layer) or a
    name (first, mid, last). With ``n_layers`` None only the form is checked (returns −1)."""
    what = f"edit.layers entry {x!r}"
    if isinstance(x, str):
        if x.strip().lower() not in _NAMED_LAYERS:
            raise SpecError(f"{what}: use an index, a fraction of the depth (0.5) or one of "
                            f"{', '.join(_NAMED_LAYERS)}")
        x = _NAMED_LAYERS[x.strip().lower()]
    if isinstance(x, float):
        if not 0.0 <= x <= 1.0:
            raise SpecError(f"{what}: a fraction of the depth lies in [0, 1] (0.5 = the middle layer); for an "
                            f"index write an integer")
        return -1 if n_layers is None else int(math.floor(x * (n_layers - 1) + 0.5))
    if n_layers is None:
        return -1
    index = x + n_layers if x < 0 else x
    if not 0 <= index < n_layers:
        raise SpecError(f"{what}: the model has layers 0..{n_layers - 1} (or -{n_layers}..-1 from the end)")
    return index


_DIRECTION = re.compile(r"^(principal|lowvar)(?:\[(\d+)(?:\.\.(\d+))?\])?$|^(random|given)$")


@dataclass(frozen=True)
class EditTarget(Config):
    """Where the edit goes and how its two directions are chosen."""

    layers: tuple[int | float | str, ...] = option(aliases=("layer",), help=(
        "layers the edit is applied to: an index (3), from the end (-1 = the last), a fraction of the depth "
        "(0.5 = the middle layer, 1.0 = the last) or mid / first / last; resolved for each model"))
    role: str = option(help="the edited matrix: q k v up gate (read pathway) or o down (write pathway)")
    v: str = option("principal[0]", help="input direction: principal[i] | lowvar[i] | random | given; "
                    "principal[0..3] asks for four replicate directions, each with the same controls")
    b: str = option("gradient", help="output direction: delta (ΔW_obs v) | gradient (−G v) | given")
    objective: str = option("preference", help="for b: gradient — preference | ce")
    data: str | None = option(None, path=True, help="pairs (preference) or text (ce) for b: gradient")
    data_limit: int = option(256, help="items of `data` the gradient is accumulated over")
    max_len: int = option(256, help="tokens per item for b: gradient")
    v_given: tuple[float, ...] | None = option(None, help="the input direction for v: given (d_in numbers)")
    b_given: tuple[float, ...] | None = option(None, help="the output direction for b: given (d_out numbers)")
    centred: bool = option(False, help="principal/lowvar from the centred covariance")
    per_layer: bool = option(False, help="each layer is its own replicate unit with its own conditions and "
                             "controls (else one edit spans every listed layer)")

    def directions(self) -> list[tuple[str, int]]:
        """The (kind, index) of each edited direction: one, or several for a range such as principal[0..3]."""
        m = _DIRECTION.match(self.v)
        if not m:
            raise SpecError(f"edit.v = {self.v!r}: use principal[i], principal[i..j] (replicates), lowvar[i], "
                            f"random or given")
        if m.group(4):
            return [(m.group(4), 0)]
        lo = int(m.group(2) or 0)
        hi = lo if m.group(3) is None else int(m.group(3))
        if hi < lo:
            raise SpecError(f"edit.v = {self.v!r}: the range {lo}..{hi} is empty; write it low..high")
        return [(m.group(1), i) for i in range(lo, hi + 1)]

    @property
    def absolute(self) -> bool:
        """Whether every layer is a plain index >= 0 (nothing to resolve against a model)."""
        return all(isinstance(x, int) and x >= 0 for x in self.layers)

    def units(self) -> list[tuple[int, ...]]:
        """The layer groups of the conditions: each layer alone (``per_layer``) or all together."""
        return [(layer,) for layer in self.layers] if self.per_layer else [tuple(self.layers)]


@dataclass(frozen=True)
class Controls(Config):
    """Matched controls generated from the same spec (same layers, |alpha| and b rule)."""

    random: int = option(5, help="number of random-v seeds (the null)")
    lowvar: int = option(1, help="number of lowest-variance directions (lowvar[0..n-1])")
    write: str | None = option("o", help="write-pathway role of the write control (o or down), or null")


@dataclass(frozen=True)
class EditSpec(Config):
    """A rank-1 edit and its matched controls (``rwedit edit --spec``; the ``edit:`` section of a recipe)."""

    model: str = option(help="base checkpoint: local folder or Hub id (org/name[@revision])")
    edit: EditTarget = option(help="where the edit goes and how v and b are chosen")
    alpha: tuple[float, ...] = option((1.0,), help="signed doses; ||ΔW||_F = |alpha| for every edit and control "
                                      "([] when alpha_rel_observed gives the doses)")
    alpha_rel_observed: tuple[float, ...] = option((), help=(
        "signed doses relative to the observed update along the edited direction: on each layer α = r·‖ΔW_obs v‖ "
        "(mean over the edited directions; r = 1 with b: delta is exactly what post-training wrote along v), "
        "the same α for every control of that layer; needs post"))
    post: str | None = option(None, help="the observed post-trained checkpoint (needed by b: delta)")
    calibration: CalibrationSettings | None = option(None, help="calibration data for the activation subspace")
    controls: Controls = option(factory=Controls, help="the matched controls")
    seed: int = option(0, help="seed of the random directions (controls use seed+1, seed+2, ...)")
    name: str = option("edit", help="the spec's name")

    def __post_init__(self):
        e = self.edit
        if e.role not in ROLES or e.role == "unembed":
            raise SpecError(f"edit.role = {e.role!r}: choose one of {', '.join(r for r in ROLES if r != 'unembed')} "
                            f"(the unembedding is not edited: it is tied in many models)")
        kind = e.directions()[0][0]
        if not e.layers:
            raise SpecError("edit.layers is empty: give at least one layer index")
        for key, doses in (("alpha", self.alpha), ("alpha_rel_observed", self.alpha_rel_observed)):
            if any(not math.isfinite(a) for a in doses):
                raise SpecError(f"{key} = {list(doses)}: every {key} must be a finite number")
            if any(a == 0 for a in doses):
                raise SpecError(f"{key} = {list(doses)}: every {key} must be non-zero (||ΔW||_F = |alpha|)")
            if len(set(doses)) != len(doses):
                raise SpecError(f"{key} = {list(doses)}: each dose once (a repeated dose would name two "
                                f"conditions alike)")
        if not self.alpha and not self.alpha_rel_observed:
            raise SpecError("alpha = []: give at least one dose (alpha, or alpha_rel_observed with post)")
        if self.alpha_rel_observed and not self.post:
            raise SpecError("alpha_rel_observed needs `post:` (the observed post-trained checkpoint whose update "
                            "along v sets the dose)")
        if e.b not in ("delta", "gradient", "given"):
            raise SpecError(f"edit.b = {e.b!r}: use delta, gradient or given")
        if e.b == "delta" and not self.post:
            raise SpecError("edit.b = delta needs `post:` (the observed post-trained checkpoint)")
        if e.b == "gradient" and not e.data:
            raise SpecError("edit.b = gradient needs edit.data (preference pairs or target text)")
        if e.b == "gradient" and e.objective not in ("preference", "ce"):
            raise SpecError(f"edit.objective = {e.objective!r}: use preference or ce")
        if e.b == "given" and not e.b_given:
            raise SpecError("edit.b = given needs edit.b_given (the output direction as a list of numbers)")
        if kind == "given" and not e.v_given:
            raise SpecError("edit.v = given needs edit.v_given (the input direction as a list of numbers)")
        if kind in ("principal", "lowvar") or self.controls.lowvar:
            if self.calibration is None:
                raise SpecError(f"v = {e.v} (and lowvar controls) need `calibration:` data for the activation "
                                f"subspace; add calibration: {{data: FILE}} or set controls.lowvar: 0")
        if self.controls.write is not None and self.controls.write not in WRITE_ROLES:
            raise SpecError(f"controls.write = {self.controls.write!r}: use one of {WRITE_ROLES} or null")
        if self.controls.write is not None and e.role not in READ_ROLES:
            raise SpecError(f"controls.write compares a read-pathway edit with a write-pathway one, but edit.role "
                            f"= {e.role!r} is already a writer; set controls.write: null")
        if self.controls.write is not None and e.b == "given":
            raise SpecError("controls.write needs a closed-form b rule (delta or gradient), not b: given")
        if self.controls.random < 0 or self.controls.lowvar < 0:
            raise SpecError("controls.random and controls.lowvar must be >= 0")
        for x in e.layers:
            resolve_layer(x, None)  # the form is checked now; the range when the model is known
        if len(set(e.layers)) != len(e.layers):
            raise SpecError(f"edit.layers = {list(e.layers)}: give each layer once")

    def resolved(self, n_layers: int) -> "EditSpec":
        """This spec with its layers resolved to indices for a model of ``n_layers`` layers (relative layers —
        −1, 0.5, mid — name different indices in different models; two that land on one index are refused)."""
        e = self.edit
        if e.absolute and all(x < n_layers for x in e.layers):
            return self
        layers = tuple(resolve_layer(x, n_layers) for x in e.layers)
        if len(set(layers)) != len(layers):
            raise SpecError(f"edit.layers = {list(e.layers)} resolve to {list(layers)} in a {n_layers}-layer model: "
                            f"two name the same layer")
        return replace(self, edit=replace(e, layers=layers))

    def check_fits(self, base) -> None:
        """Before any model is loaded: the edit's layers and roles exist in the base checkpoint, its directions
        fit the role's size and its sequence lengths the window (``b: delta``: the caller checks the pair)."""
        layout = base.layout
        try:
            e = self.resolved(layout.n_layers).edit
        except SpecError as err:
            raise SpecError(f"{base.source}: {err}") from None
        for role in (e.role, self.controls.write):
            if role is not None and not layout.has_role(role):
                raise SpecError(f"{base.source}: {layout.spec.name} has no {role!r} role; its roles: "
                                f"{', '.join(r for r in layout.roles() if r != 'unembed')}")
        view = layout.view(e.layers[0], e.role)
        for name, given, d in (("v_given", e.v_given, view.d_in), ("b_given", e.b_given, view.d_out)):
            if given is not None and len(given) != d:
                raise SpecError(f"edit.{name} has {len(given)} numbers; the {e.role} {'input' if name == 'v_given' else 'output'} "
                                f"of {base.source} has d = {d}")
        from rwedit.models import check_window

        if self.calibration is not None:
            check_window(base.config, self.calibration.seq_len, "calibration.seq_len")
        if e.b == "gradient":
            check_window(base.config, e.max_len, "edit.max_len")
        kind, index = e.directions()[-1]
        for what, n_dirs in (("edit.v = " + e.v, index + 1 if kind in ("principal", "lowvar") else 0),
                             (f"controls.lowvar = {self.controls.lowvar}", self.controls.lowvar)):
            if n_dirs > view.d_in:
                raise SpecError(f"{what} needs {n_dirs} eigendirections of the {e.role} input, which has only "
                                f"d = {view.d_in}")

    def doses(self) -> list[tuple[float, str]]:
        """(dose, unit) of every dose in build order: each α, then each multiple of the observed update."""
        return [(a, "alpha") for a in self.alpha] + [(r, "observed") for r in self.alpha_rel_observed]

    def condition_names(self, match: str = "norm") -> list[str] | None:
        """The names of every condition this spec builds, in build order, known before any model is loaded
        (a recipe's references to them are checked against this list); None when they depend on the model
        (per-layer units named by relative layers: resolve the spec first). ``match``: which controls the
        control experiment scores — norm-matched (``norm``), KL-matched (``kl``, named ``…_kl``) or both."""
        if self.edit.per_layer and not self.edit.absolute:
            return None
        names, kl = [], []
        n_main = len(self.edit.directions())
        for dose, unit in self.doses():
            for layers in self.edit.units():
                layer = layers[0] if self.edit.per_layer else None
                conds = [condition_name(k, dose, i, s, layer=layer, unit=unit) for k, i, s in self.direction_kinds()]
                if self.controls.write is not None:
                    conds.append(condition_name("write", dose, role=self.controls.write, layer=layer, unit=unit))
                names += conds if match != "kl" else conds[:n_main]
                kl += [n + KL_SUFFIX for n in conds[n_main:]]
        return names + (kl if match != "norm" else [])

    def direction_kinds(self) -> list[tuple[str, int | None, int | None]]:
        """(kind, index, seed) of the edited direction(s), then of the read-pathway controls, in build order."""
        main = [(kind, index if kind in ("principal", "lowvar") else None, self.seed if kind == "random" else None)
                for kind, index in self.edit.directions()]
        return main + [("random", None, self.seed + 1 + j) for j in range(self.controls.random)] + \
            [("lowvar", j, None) for j in range(self.controls.lowvar)]
