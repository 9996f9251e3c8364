"""The RSF grid: one row per layer × role × side × subspace × k of each weight delta (a checkpoint pair, streamed,
or deltas held in memory), next to the random-subspace null of the same delta, side and k. Subspaces: activation
(read side of a layer role: its own inputs' principal subspace), prediction (every side in the residual stream:
read side of q k v up gate unembed, write side of o down), random (every side; the null from other seeds)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from rwedit.lazy import torch
from tqdm.auto import tqdm

from rwedit.architectures import GROUP_ROLE, INPUT_GROUP, READ_ROLES, Layout, RoleView
from rwedit.checkpoints import Checkpoint, CheckpointPair, TensorReader, fingerprint
from rwedit.config import Config, option
from rwedit.errors import ConfigError
from rwedit.probes.activations import ActivationStats
from rwedit.probes.rsf import NullSpread, RSFResult, random_null_samples, rsf_nested, sketch_probe
from rwedit.runtime import runtime
from rwedit.probes.subspaces import Spectrum, haar_basis, prediction_spectrum
from rwedit.stream import explain_non_finite, stream_pair

DEFAULT_KS = (1, 4, 16, 64)
SUBSPACES = ("activation", "prediction", "random")
COLUMNS = ("layer", "role", "pathway", "side", "subspace", "k", "d", "fraction", "rsf", "null_mean", "null_sd",
           "null_z", "null_exact_sd", "null_exact_z", "delta_norm", "reason")
#: written after COLUMNS only when some row's closed-form null is sketched (a grid of exact nulls keeps its columns)
NULL_COLUMNS = ("null_method", "null_rel_error")
NULLS = ("auto", "exact", "sketch", "seeds")
#: `null: auto` keeps the exact Gram of a matrix whose d_out·d_in·min(d) multiply-adds are at most this many (a few
#: ms on one core) or at most the sketch's 2·d_out·d_in·m
AUTO_EXACT_MACS = 1 << 27


@dataclass(frozen=True)
class GridSettings(Config):
    """Every open choice of the RSF grid; recorded next to the results (the ``grid:`` section of a probe
    request, the grid options of ``rwedit probe``)."""

    ks: tuple[int, ...] = option(DEFAULT_KS, help="subspace dimensions (a k not below a side's d is skipped there)")
    sides: tuple[str, ...] = option(("read", "write"), help="sides of each delta: read, write, both (two-sided)")
    subspaces: tuple[str, ...] = option(SUBSPACES, help="subspaces: activation, prediction, random")
    null_seeds: int = option(0, help="random subspaces per delta for a seeded null beside the exact one; 0: the "
                             "exact null alone (mean 1, sd in closed form; at 1.1B as costly as 8 seeds)")
    seed: int = option(0, help="seed of the random subspaces (the null uses seed+1 .. seed+null_seeds)")
    centred: bool = option(False, help="activation subspace from the centred covariance instead of E[a aᵀ]")
    prediction_gain: bool = option(False, help="prediction subspace of W_U·diag(γ_final) instead of W_U")
    roles: tuple[str, ...] | None = option(None, help="roles to probe (default: all)")
    layers: tuple[int, ...] | None = option(None, help="layers to probe (default: all)")
    null: str = option("auto", help="the closed-form null's Σσ⁴ per delta (null_exact_sd): exact (one Gram matrix, "
                       "d_out·d_in·min(d) multiply-adds), sketch (from the same pass, 2·d_out·d_in·null_sketch, its 95 % "
                       "error bound in null_rel_error), auto (exact where the Gram is cheap: small matrices, a GPU; "
                       "else the sketch), seeds (none: the seeded null alone)")
    null_sketch: int = option(64, help="Gaussian probe columns m of the sketched null: relative standard error of "
                              "Σσ⁴ at most √(2/m)")
    precision: str = option("float32", help="precision of the projections ΔW·B and the sketch (each block's "
                            "energies are summed in float64); float32 changes RSF by ~1e-7 relative")

    @property
    def dtype(self) -> torch.dtype:
        return torch.float64 if self.precision == "float64" else torch.float32

    def __post_init__(self):
        if self.precision not in ("float32", "float64"):
            raise ConfigError(f"precision must be float32 or float64, not {self.precision!r}")
        bad = [s for s in self.sides if s not in ("read", "write", "both")]
        if bad:
            raise ConfigError(f"sides must be among read, write, both; not {bad}")
        bad = [s for s in self.subspaces if s not in SUBSPACES]
        if bad:
            raise ConfigError(f"unknown subspace {bad}; choose from {SUBSPACES}")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"ks must be positive integers, got {self.ks}")
        if self.null_seeds == 1 or self.null_seeds < 0:
            raise ConfigError(f"null_seeds = {self.null_seeds}: give >= 2 random subspaces (a standard deviation "
                              f"needs two), or 0 for the exact null alone")
        if self.null not in NULLS:
            raise ConfigError(f"null must be one of {', '.join(NULLS)}, not {self.null!r}")
        if self.null_sketch < 8:
            raise ConfigError(f"null_sketch = {self.null_sketch}: give at least 8 probe columns (its error bound "
                              f"is finite from about 16)")
        if self.null_seeds == 0 and self.null == "seeds":
            raise ConfigError("null_seeds = 0 and null: seeds leave no null at all; give null_seeds >= 2 or "
                              "a closed-form null (auto, exact, sketch)")
        if self.null_seeds == 0 and "both" in self.sides:
            raise ConfigError("null_seeds = 0 (the exact null) has no closed form for the two-sided RSF "
                              "(sides: both); give null_seeds >= 2")


def pathway(role: str) -> str:
    return "read" if role in READ_ROLES or role == "unembed" else "write"


def residual_side(role: str, side: str) -> bool:
    """Whether this side of the role lives in the residual stream (readers' input, writers' output)."""
    return (side == "read") == (pathway(role) == "read")


@dataclass
class GridContext:
    """What the grid needs besides the deltas: activation stats and the prediction spectrum; and what it makes
    of them and of the settings alone (each matrix side's stacked bases), made once and reused by every post
    and every matrix of the same shape."""

    stats: ActivationStats | None = None
    prediction: Spectrum | None = None
    shared: dict = field(default_factory=dict, repr=False, compare=False)
    recent: dict = field(default_factory=dict, repr=False, compare=False)

    def once(self, key, make, keep: bool = True):
        """``make()`` the first time ``key`` (naming all it depends on) is asked for, the same object after; with
        ``keep`` False only until another such key is asked for (what one matrix alone uses, asked for by each
        post's sinks in turn, is not held for the whole grid)."""
        store = self.shared if keep else self.recent
        if key not in store:
            if not keep:
                store.clear()
            store[key] = make()
        return store[key]

    def activation_spectrum(self, layer: int, role: str, centred: bool, top: int) -> Spectrum | None:
        """The input spectrum of this reader with at least `top` leading eigenvectors (stats memoise it)."""
        if self.stats is None or role not in INPUT_GROUP or not self.stats.has(layer, role):
            return None
        return self.stats.spectrum(layer, role, centred, top=top)


def read_unembedding(base: Checkpoint, gain: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The base checkpoint's ``W_U`` (vocab × hidden, as stored) and, with ``gain``, its final norm's gain
    (refused when the final norm has no weight), read from the files without loading a model."""
    layout = base.layout
    with TensorReader(base) as r:
        W_U = r.read(layout.view(None, "unembed").param, dtype=None)
        g = None
        if gain:
            name = f"{layout.spec.final_norm}.weight"
            if name not in base.keys() and not any(n in base.keys() for n in layout.checkpoint_names(name)):
                raise ConfigError(f"{base.source}: the final norm {layout.spec.final_norm} has no weight to fold "
                                 f"into the prediction subspace; drop prediction_gain")
            g = layout.final_norm_gain(r.read(name, torch.float32))
    return W_U, g


_PREDICTION: dict = {}


def prediction_from_pair(pair: CheckpointPair | Checkpoint, gain: bool = False, top: int | None = None) -> Spectrum:
    """Spectrum of the base checkpoint's unembedding (optionally the final norm gain folded in), of a pair or a
    checkpoint, with at least its ``top`` leading eigenvectors (None: all of them; fewer cost less to solve).
    The last one is kept, by the files' content fingerprint: a probe asks for it twice (the grid, the direction
    cards), and at 1.1B it costs seconds; a later call that needs more eigenvectors solves again. Treat the result
    as read-only."""
    base = pair.base if isinstance(pair, CheckpointPair) else pair
    key = (str(base.path), fingerprint(base.files), gain)
    have = _PREDICTION.get(key)
    if have is None or (have.n_top < min(top, have.d) if top is not None else not have.complete):
        _PREDICTION.clear()
        _PREDICTION[key] = prediction_spectrum(*read_unembedding(base, gain), keep=top)
    return _PREDICTION[key]


def _ks_for(ks: Sequence[int], d: int) -> list[int]:
    """The subspace dimensions that mean something for a side of dimension d: k < d (a k ≥ d subspace is
    the whole space, RSF = 1 by construction and its null has no spread)."""
    return sorted({k for k in ks if k < d})


def check_ks(settings: GridSettings, layout: Layout, roles: Sequence[str]) -> dict[int, int]:
    """Before any work: ``{k: matrix sides it is skipped for}`` for each k that is not below some side's
    dimension; a k not below *any* probed side's dimension is a :class:`ConfigError`."""
    dims = []
    for view in layout.views(roles, settings.layers):
        for side in settings.sides:
            dims.append(min(view.d_in, view.d_out) if side == "both" else view.d_in if side == "read" else view.d_out)
    skipped = {k: sum(k >= d for d in dims) for k in settings.ks}
    useless = [k for k, n in skipped.items() if dims and n == len(dims)]
    if useless:
        raise ConfigError(f"k = {', '.join(map(str, useless))}: not below the dimension of any probed matrix side "
                          f"(largest d = {max(dims)}); a k ≥ d subspace is the whole space (RSF = 1 by "
                          f"construction). Give subspace dimensions below {max(dims)}")
    return {k: n for k, n in skipped.items() if n}


@dataclass
class _SidePlan:
    """One side of one matrix: its subspace dimensions, the named bases and the null seeds' bases, stacked
    into one ``d × (n_bases·kmax)`` matrix so that a single product projects ΔW onto all of them.

    ``parts`` are the bases in float64 (views of the stored spectra allowed); ``wide`` their columns in the
    settings' dtype with the sketched null's probe Ω after them, made in one piece (the float64 stack, a cast and
    a second copy with Ω were each a fresh d-row matrix a matrix side: 0.3 s of the 1.1B grid's main thread)."""

    side: str
    d: int
    ks: list[int]
    names: list[str]
    n_seeds: int
    parts: list[torch.Tensor]
    wide: torch.Tensor
    probe: tuple[int, int] | None  # (m, seed) of the Ω in wide's last m columns
    _widened: dict = field(default_factory=dict, repr=False, compare=False)  # cast with another probe

    @property
    def cast(self) -> torch.Tensor:
        """The stacked bases in the settings' dtype (a view of ``wide``)."""
        return self.wide[:, :self.wide.shape[1] - (self.probe[0] if self.probe else 0)]

    @functools.cached_property
    def stacked(self) -> torch.Tensor:
        """The stacked bases in float64 (for factored posts, which project exactly): made on first use."""
        return torch.cat(self.parts, dim=1)

    def widened(self, m: int, seed: int) -> torch.Tensor:
        """``cast`` with the sketched null's probe Ω (``m`` columns) appended: the one basis a block is multiplied
        by on this side."""
        if self.probe == (m, seed):
            return self.wide
        if (m, seed) not in self._widened:
            self._widened[m, seed] = torch.cat([self.cast, sketch_probe(self.d, m, seed, self.cast.dtype)], dim=1)
        return self._widened[m, seed]

    def rows(self, layer, role, energies: torch.Tensor, total: float, spread: NullSpread | None) -> list[dict]:
        """The grid rows of this side from the per-column energies ‖ΔW b_j‖² and ‖ΔW‖²_F."""
        kmax = self.ks[-1]
        cums = torch.cumsum(energies.reshape(len(self.names) + self.n_seeds, kmax), dim=1).cpu()
        named, null_cums = cums[:len(self.names)].tolist(), cums[len(self.names):]  # floats: a row is cheap
        norm = math.sqrt(total)
        out = []
        for j, name in enumerate(self.names):
            for k in self.ks:
                base = k / self.d
                if total == 0.0:
                    res = RSFResult(self.side, math.nan, math.nan, k, self.d, base, 0.0, "zero delta")
                    vals = torch.full((self.n_seeds,), math.nan, dtype=torch.float64)
                else:
                    frac = named[j][k - 1] / total
                    res = RSFResult(self.side, frac, frac / base, k, self.d, base, norm, None)
                    vals = null_cums[:, k - 1] / total / base if self.n_seeds else null_cums[:, 0]
                out.append(_row(layer, role, self.side, name, k, self.d, res, vals, spread))
        return out


def _one_sided(shape: tuple[int, int], layer: int | None, role: str, settings: GridSettings
               ) -> Iterator[tuple[str, int, list[int], bool, bool]]:
    """The one-sided sides (read, write) the settings ask for that have a k below their dimension, as (side, d,
    ks, whether it asks for the activation subspace, whether for the prediction subspace): what the grid builds
    (:func:`_side_plans`) and what the plan prices (:func:`grid_macs`) both follow."""
    d_out, d_in = shape
    for side in settings.sides:
        d = d_in if side == "read" else d_out
        ks = _ks_for(settings.ks, d)
        if side == "both" or not ks:
            continue
        yield (side, d, ks, "activation" in settings.subspaces and side == "read" and layer is not None,
               "prediction" in settings.subspaces and residual_side(role, side))


def _side_plans(shape: tuple[int, int], layer: int | None, role: str, ctx: GridContext,
                settings: GridSettings) -> list[_SidePlan]:
    """The one-sided sides' plans (:func:`_one_sided`), each made once per grid context (:meth:`GridContext.once`)."""
    plans = []
    for side, d, ks, wants_act, wants_pred in _one_sided(shape, layer, role, settings):
        act = None
        if wants_act:
            spec = ctx.activation_spectrum(layer, role, settings.centred, ks[-1])
            # keyed by the role that stands for its input group: q, k and v read one input and share one plan
            act = (layer, GROUP_ROLE[INPUT_GROUP[role]]) if spec is not None and spec.d == d else None
        pred = wants_pred and ctx.prediction is not None
        plans.append(ctx.once(("plan", settings, side, d, act, pred),
                              lambda: _side_plan(side, d, ks, act, pred, ctx, settings), keep=act is None))
    return plans


def _side_plan(side: str, d: int, ks: list[int], act: tuple[int, str] | None, pred: bool, ctx: GridContext,
               settings: GridSettings) -> _SidePlan:
    """One side's bases: the activation subspace of ``act`` (layer, role), the prediction subspace, random."""
    kmax = ks[-1]
    bases: dict[str, torch.Tensor] = {}
    if act is not None:
        bases["activation"] = ctx.activation_spectrum(*act, settings.centred, kmax).top(kmax, copy=False)
    if pred:
        bases["prediction"] = ctx.prediction.top(kmax, copy=False)
    if "random" in settings.subspaces:
        bases["random"] = haar_basis(d, kmax, settings.seed)
    parts = list(bases.values()) + [haar_basis(d, kmax, settings.seed + 1 + i) for i in range(settings.null_seeds)]
    probe = (settings.null_sketch, settings.seed) if settings.null in ("auto", "sketch") else None
    cols = [b.shape[1] for b in parts] + ([probe[0]] if probe else [])
    wide = torch.empty(d, sum(cols), dtype=settings.dtype)
    for block, src in zip(wide.split(cols, dim=1), parts + ([sketch_probe(d, *probe, settings.dtype)] if probe else [])):
        block.copy_(src)  # cast in the copy
    return _SidePlan(side, d, ks, list(bases), settings.null_seeds, parts, wide, probe)


def null_method(settings: GridSettings, shape: tuple[int, int], gpu: bool = False) -> str:
    """How the closed-form null of one d_out × d_in matrix is computed: the setting, or for ``auto`` the exact Gram
    where it is cheap (:data:`AUTO_EXACT_MACS`, no dearer than the sketch, or on a GPU) and the sketch elsewhere."""
    if settings.null != "auto":
        return settings.null
    macs = shape[0] * shape[1] * min(shape)
    return "exact" if gpu or macs <= max(AUTO_EXACT_MACS, 2 * shape[0] * shape[1] * settings.null_sketch) else "sketch"


def grid_macs(layout: Layout, settings: GridSettings, activations: bool = True, gpu: bool = False
              ) -> tuple[float, float]:
    """Multiply-adds of the streamed grid beyond reading the pair, as it will do them: per matrix, one product
    with each one-sided side's stacked bases (:func:`_one_sided`: activation where ``activations``, prediction on
    the residual side, random, the seeded nulls; max k columns each) and its closed-form null (:func:`null_method`:
    the sketch's two products of ``null_sketch`` columns, or the exact Gram of the smaller side), in
    ``settings.precision``; once, the prediction subspace's Gram matrix of the unembedding (float32 products of
    stored half-precision rows). Returns (float32, float64) multiply-adds, for `rwedit plan`."""
    products = sketch64 = 0.0
    for v in layout.views(settings.roles, settings.layers):
        m, n = v.d_out, v.d_in
        for _, _, ks, wants_act, wants_pred in _one_sided(v.shape, v.layer, v.role, settings):
            bases = (wants_act and activations) + wants_pred + ("random" in settings.subspaces) + settings.null_seeds
            products += m * n * ks[-1] * bases
        method = null_method(settings, (m, n), gpu)
        if method == "sketch":  # X·Ω and Xᵀ·(XΩ), then the float64 YᵀY of its spread on the side Ω lives on
            products += 2 * m * n * settings.null_sketch
            sketch64 += (m if v.transposed else n) * settings.null_sketch ** 2
        elif method == "exact":
            products += m * n * min(m, n)
    f32, f64 = (products, sketch64) if settings.precision == "float32" else (0.0, products + sketch64)
    dims = layout.dims
    return f32 + (dims.vocab * dims.hidden ** 2 if "prediction" in settings.subspaces else 0), f64


def columns(rows: Iterable[dict]) -> list[str]:
    """The columns of ``rsf.csv`` for these rows: :data:`COLUMNS`, and :data:`NULL_COLUMNS` when a null is sketched
    (only a sketched row carries them, so writers of :data:`COLUMNS` alone see the rows of before)."""
    return list(COLUMNS) + (list(NULL_COLUMNS) if any("null_method" in r for r in rows) else [])


def null_methods(rows: Iterable[dict], settings: GridSettings) -> dict[str, int]:
    """Matrices per closed-form null method (for meta.json), e.g. ``{"exact": 150, "sketch": 5}``."""
    other = "seeds" if settings.null == "seeds" else "exact"
    seen = {(r.get("post"), r["layer"], r["role"]): r.get("null_method", other) for r in rows if r["side"] != "both"}
    return {m: sum(v == m for v in seen.values()) for m in ("exact", "sketch", "seeds") if m in seen.values()}


def _in_settings_order(rows: list[dict], settings: GridSettings) -> list[dict]:
    """Rows ordered by side as the settings list them (the one- and two-sided rows are made apart)."""
    order = {s: i for i, s in enumerate(settings.sides)}
    return sorted(rows, key=lambda r: order[r["side"]])  # stable: each side keeps its subspace × k order


class _StreamedRows:
    """The block sinks of one matrix for the grid (projections, with the sketched null's probe in their products;
    the exact null's Gram; the dense matrix when the two-sided rows need it) and the rows made from them once the
    matrix is complete."""

    reads_base = False  # none of its sinks does: the stream forms ΔW without the base block

    def __init__(self, view: RoleView, ctx: GridContext, settings: GridSettings, ckpts=()):
        from rwedit.probes.blocks import Dense, Gram, Projections

        self.view, self.ctx, self.settings, self.ckpts = view, ctx, settings, ckpts
        self.plans = _side_plans(view.shape, view.layer, view.role, ctx, settings)
        axis, self.method = 1 if view.transposed else 0, null_method(settings, view.shape)
        cast = {p.side: p.cast for p in self.plans}
        probe, side = None, ("read" if axis == 0 else "write")  # the sketch rides on the side blocks sum over
        if self.method == "sketch":
            d, m = (view.d_in if axis == 0 else view.d_out), settings.null_sketch
            probe = sketch_probe(d, m, settings.seed)
            cast.update({f"{p.side}+probe": p.widened(m, settings.seed) for p in self.plans if p.side == side})
        by_side = {p.side: (lambda p=p: p.stacked) for p in self.plans}  # float64: made if a factored block comes
        self.proj = Projections(view.shape, by_side.get("read"), by_side.get("write"), settings.dtype, cast,
                                probe=probe, probe_side=side)
        self.gram = Gram(view.shape, axis, settings.dtype) if self.method == "exact" else None
        self.dense = Dense(view.shape, settings.dtype) if "both" in settings.sides else None

    def add(self, axis, index, delta, base) -> None:
        self.proj.add(axis, index, delta)
        if self.gram is not None:
            self.gram.add(axis, index, delta)
        if self.dense is not None:
            self.dense.add(axis, index, delta)

    def rows(self) -> list[dict]:
        total = self.proj.total
        if not math.isfinite(total):
            explain_non_finite(self.ckpts, self.view)  # names the tensor with NaN/Inf; else an overflow:
            raise ConfigError(f"layer {self.view.layer} role {self.view.role!r}: the delta has non-finite entries; "
                              f"check the checkpoints or the dtype the delta was formed in")
        spread = (None if self.method == "seeds" else self.proj.spread() if self.method == "sketch"
                  else self.gram.spread())  # NaN for a zero delta
        out: list[dict] = []
        for plan in self.plans:
            out += plan.rows(self.view.layer, self.view.role, self.proj.energies(plan.side), total, spread)
        if self.dense is not None:
            out += _two_sided_rows(self.dense.matrix, self.view.layer, self.view.role, self.ctx, self.settings)
        return _in_settings_order(out, self.settings)


def _row(layer, role, side, subspace, k, d, res, vals, spread: NullSpread | None = None) -> dict:
    """One grid row: the RSF, its null (mean, sd, z: from the seeds, or the exact null when there are none)
    and its exact null (mean 1, sd in closed form from Σσ⁴, exact or sketched: ``spread``; None: not computed)."""
    exact_sd = spread.sd(d, k) if spread is not None else math.nan
    exact_z = (res.rsf - 1.0) / exact_sd if exact_sd > 0 and not math.isnan(res.rsf) else math.nan
    if len(vals):
        mean = float(vals.mean())
        sd = float(vals.std(correction=1))
        z = (res.rsf - mean) / sd if sd > 1e-9 and not math.isnan(res.rsf) else math.nan
    else:  # null_seeds = 0: the exact null stands in the null columns
        mean, sd, z = (math.nan if math.isnan(res.rsf) else 1.0), exact_sd, exact_z
    return {"layer": layer, "role": role, "pathway": pathway(role), "side": side, "subspace": subspace, "k": k,
            "d": d, "fraction": res.fraction, "rsf": res.rsf, "null_mean": mean, "null_sd": sd, "null_z": z,
            "null_exact_sd": exact_sd, "null_exact_z": exact_z, "delta_norm": res.delta_norm, "reason": res.reason or "",
            **({"null_method": "sketch", "null_rel_error": spread.rel_error(d)}
               if spread is not None and spread.method == "sketch" else {})}


def _two_sided_rows(delta, layer, role, ctx: GridContext, settings: GridSettings) -> list[dict]:
    """The two-sided RSF for writers: prediction subspace on the output side plus the activation
    subspace of the module's inputs on the input side (rows only where both exist)."""
    if pathway(role) != "write" or ctx.prediction is None or layer is None:
        return []
    d_out, d_in = delta.shape
    ks = _ks_for(settings.ks, min(d_out, d_in))
    if not ks:
        return []
    spec = ctx.activation_spectrum(layer, role, settings.centred, ks[-1])
    if spec is None or spec.d != d_in:
        return []
    bases = (ctx.prediction.top(ks[-1]).to(delta.device), spec.top(ks[-1]).to(delta.device))
    seeds = [settings.seed + 1 + i for i in range(settings.null_seeds)]
    return [_row(layer, role, "both", "prediction+activation", k, f"{d_out}+{d_in}", res,
                 random_null_samples(delta, "both", k, seeds))
            for k, res in zip(ks, rsf_nested(delta, bases, "both", ks))]


def rsf_grid_deltas(deltas: Mapping[tuple[int | None, str], torch.Tensor], layout: Layout, ctx: GridContext,
                    settings: GridSettings = GridSettings()) -> Iterator[dict]:
    """Rows for deltas held in memory, ``(layer, role) -> ΔW`` (a training run's W_t − W_0): each delta is one
    block fed to the sinks of the streamed grid."""
    for (layer, role), delta in deltas.items():
        view = layout.view(layer, role)
        sink = _StreamedRows(view, ctx, settings)
        sink.add(1 if view.transposed else 0, slice(None), delta.to(settings.dtype), None)
        yield from sink.rows()


def rsf_grid_pair(pair: CheckpointPair, stats: ActivationStats | None = None,
                  settings: GridSettings = GridSettings()) -> Iterator[dict]:
    """Stream the pair once and yield the grid rows; memory stays O(largest tensor)."""
    for row in rsf_grid_posts(pair.base, {"post": pair.post}, stats, settings):
        del row["post"]
        yield row


def rsf_grid_posts(base: Checkpoint, posts: Mapping[str, object], stats: ActivationStats | None = None,
                   settings: GridSettings = GridSettings()) -> Iterator[dict]:
    """The grid of several fine-tunes of one base (checkpoints or LoRA adapters, by name), each row with its
    ``post``: what depends on the base alone (prediction spectrum, each block's read and conversion, each side's
    stacked bases) done once for all of them, each post's rows those of its single pass to the bit; memory a few
    row blocks per post."""
    layout = base.layout
    roles = settings.roles or layout.roles()
    check_ks(settings, layout, roles)
    ctx = GridContext(stats, prediction_from_pair(base, settings.prediction_gain, max(settings.ks))
                      if "prediction" in settings.subspaces else None)
    views = layout.views(roles, settings.layers)
    names = list(posts)
    # the projections' ‖ΔW‖² shows a NaN/Inf weight: no separate finiteness pass over every block
    for view, sinks in tqdm(stream_pair(base, list(posts.values()), views,
                                        lambda v: [_StreamedRows(v, ctx, settings, (base, p)) for p in posts.values()],
                                        dtype=settings.dtype, check_finite=False),
                            total=len(views), desc="RSF grid", disable=not runtime().progress):
        for name, sink in zip(names, sinks):
            for row in sink.rows():
                yield {"post": name, **row}


def rsf_grid_frame(pair: CheckpointPair, stats: ActivationStats | None = None, settings: GridSettings = GridSettings()):
    """The RSF grid of a pair as a ``pandas.DataFrame`` (one row per layer × role × side × subspace × k, the
    columns of ``rsf.csv``), for notebooks; streams like :func:`rsf_grid_pair`."""
    import pandas as pd

    rows = list(rsf_grid_pair(pair, stats, settings))
    return pd.DataFrame(rows, columns=columns(rows))
