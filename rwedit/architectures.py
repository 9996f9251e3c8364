"""Architecture registry: one data entry per model family, mapping roles to modules and layouts.

Every linear map is ``W`` of shape ``d_out x d_in`` (``y = W x``) whatever the module stores (Conv1D's
transpose, fused Q/K/V or gate/up); :class:`RoleView` hides the layout and every weight read or write of a
role goes through it. Adding an architecture = :func:`register_architecture` of one :class:`ArchSpec` (plus
:func:`register_fused_layout` for a new fused row layout), from user code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from rwedit.lazy import no_grad, torch

from rwedit.errors import AlreadyRegisteredError, ConfigError, UnsupportedArchitectureError
from rwedit.registry import Registry

ROLES: tuple[str, ...] = ("q", "k", "v", "o", "up", "gate", "down", "unembed")
LAYER_ROLES: tuple[str, ...] = ("q", "k", "v", "o", "up", "gate", "down")
#: Roles that read the residual stream (their input side is the residual stream).
READ_ROLES: tuple[str, ...] = ("q", "k", "v", "up", "gate")
#: Roles that write into the residual stream (their output side is the residual stream).
WRITE_ROLES: tuple[str, ...] = ("o", "down")
#: Input group of each layer role: roles that read the same input tensor share a group (q/k/v read the
#: attention input, gate/up the MLP input), so activation statistics are collected once per group.
INPUT_GROUP: dict[str, str] = {"q": "attn_in", "k": "attn_in", "v": "attn_in", "up": "mlp_in", "gate": "mlp_in",
                               "o": "o_in", "down": "down_in"}
#: one role that reads each input group (the first in :data:`LAYER_ROLES` order), to address a group
#: through the role-keyed API
GROUP_ROLE: dict[str, str] = {g: r for r, g in reversed(list(INPUT_GROUP.items()))}


@dataclass(frozen=True)
class RoleSlot:
    """Where one role lives inside a layer: its module path, the :data:`FUSED_LAYOUTS` entry of a fused matrix,
    and the norm whose output it reads (None: the raw residual stream or the attention output)."""

    module: str
    fused: str | None = None
    norm: str | None = None


@dataclass(frozen=True)
class ArchSpec:
    """Registry entry for one architecture family (all names are module paths of the HF model)."""

    name: str
    model_types: tuple[str, ...]
    layers: str  # e.g. "model.layers"
    roles: Mapping[str, RoleSlot]
    embed: str
    unembed: str
    final_norm: str
    conv1d: bool = False  # GPT-2 style Conv1D (weight stored d_in x d_out)
    #: the norms scale by (norm_offset + weight): 1.0 for Gemma's RMSNorm, 0.0 elsewhere
    norm_offset: float = 0.0
    #: old on-disk names for module paths (checkpoints written by older transformers versions)
    aliases: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""

    @property
    def base_prefix(self) -> str:
        """First path component of the base model (checkpoints sometimes omit it)."""
        return self.layers.split(".", 1)[0]


# --- fused layouts ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Dims:
    """Sizes read from a model config that the layouts need."""

    n_layers: int
    hidden: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Any) -> "Dims":
        hidden = int(_cfg(config, "hidden_size", "n_embd"))
        n_heads = int(_cfg(config, "num_attention_heads", "n_head"))
        n_kv = getattr(config, "num_key_value_heads", None) or n_heads
        head_dim = getattr(config, "head_dim", None) or hidden // n_heads
        inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
        tied = bool(getattr(config, "tie_word_embeddings", False))
        return cls(int(_cfg(config, "num_hidden_layers", "n_layer")), hidden, n_heads, int(n_kv), int(head_dim),
                   int(inter), int(config.vocab_size), tied)


def _cfg(config: Any, *names: str) -> Any:
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    raise ConfigError(f"model config has none of {names}; cannot size the architecture")


def _contiguous(sizes: list[tuple[str, int]]) -> dict[str, torch.Tensor]:
    out, start = {}, 0
    for role, n in sizes:
        out[role] = torch.arange(start, start + n)
        start += n
    return out


def _qkv_contiguous(d: Dims) -> dict[str, torch.Tensor]:
    """Q rows, then K rows, then V rows (GPT-2 ``c_attn``, Phi-3 ``qkv_proj``; GQA-aware)."""
    kv = d.n_kv_heads * d.head_dim
    return _contiguous([("q", d.n_heads * d.head_dim), ("k", kv), ("v", kv)])


def _qkv_per_head(d: Dims) -> dict[str, torch.Tensor]:
    """GPT-NeoX ``query_key_value``: rows grouped per head as [q_h | k_h | v_h]."""
    hd = d.head_dim
    head = torch.arange(d.n_heads)[:, None] * (3 * hd)
    within = torch.arange(hd)[None, :]
    return {role: (head + p * hd + within).reshape(-1) for p, role in enumerate(("q", "k", "v"))}


def _gate_up_contiguous(d: Dims) -> dict[str, torch.Tensor]:
    """Phi-3 ``gate_up_proj``: gate rows first, then up rows."""
    return _contiguous([("gate", d.intermediate), ("up", d.intermediate)])


FusedLayout = Callable[[Dims], Mapping[str, "torch.Tensor"]]

#: name -> function(Dims) -> {role: row indices of that role in the fused d_out x d_in matrix}
FUSED_LAYOUTS: Registry[FusedLayout] = Registry("fused layout", hint="Add one with register_fused_layout.")


def register_fused_layout(name: str, fn: FusedLayout, *, replace: bool = False) -> None:
    """Make ``fn`` available as ``RoleSlot(fused=name)``.  ``fn(dims)`` returns, for each role stored in
    the fused matrix, the indices of its rows in the (untransposed) ``d_out x d_in`` matrix; together they
    must cover every row once.  A name already registered is refused unless ``replace=True``."""
    if not callable(fn):
        raise ConfigError(f"fused layout {name!r}: expected a function of Dims, got {type(fn).__name__}")
    FUSED_LAYOUTS.register(name, fn, replace=replace)


register_fused_layout("qkv_contiguous", _qkv_contiguous)
register_fused_layout("qkv_per_head", _qkv_per_head)
register_fused_layout("gate_up_contiguous", _gate_up_contiguous)


# --- the registry ----------------------------------------------------------------------------


def _fused(module: str, layout: str, norm: str, roles: str = "qkv") -> dict[str, RoleSlot]:
    """The slots of roles stored fused in one module (one letter a role: "qkv"; ("gate", "up") by name)."""
    return {r: RoleSlot(module, fused=layout, norm=norm) for r in roles}


def _llama_like(name: str, model_types: tuple[str, ...], attn_norm: str | None = "input_layernorm",
                mlp_norm: str | None = "post_attention_layernorm", norm_offset: float = 0.0,
                notes: str = "") -> ArchSpec:
    return ArchSpec(
        name=name, model_types=model_types, layers="model.layers",
        roles={
            "q": RoleSlot("self_attn.q_proj", norm=attn_norm),
            "k": RoleSlot("self_attn.k_proj", norm=attn_norm),
            "v": RoleSlot("self_attn.v_proj", norm=attn_norm),
            "o": RoleSlot("self_attn.o_proj"),
            "gate": RoleSlot("mlp.gate_proj", norm=mlp_norm),
            "up": RoleSlot("mlp.up_proj", norm=mlp_norm),
            "down": RoleSlot("mlp.down_proj"),
        },
        embed="model.embed_tokens", unembed="lm_head", final_norm="model.norm", norm_offset=norm_offset, notes=notes)


_BUILTIN: tuple[ArchSpec, ...] = (
    ArchSpec(
        name="gpt2", model_types=("gpt2",), layers="transformer.h",
        roles={
            **_fused("attn.c_attn", "qkv_contiguous", "ln_1"),
            "o": RoleSlot("attn.c_proj"),
            "up": RoleSlot("mlp.c_fc", norm="ln_2"),
            "down": RoleSlot("mlp.c_proj"),
        },
        embed="transformer.wte", unembed="lm_head", final_norm="transformer.ln_f", conv1d=True,
        notes="Conv1D stores W transposed; Q/K/V fused contiguously in c_attn; no gate.",
    ),
    ArchSpec(
        name="gpt_neox", model_types=("gpt_neox",), layers="gpt_neox.layers",
        roles={
            **_fused("attention.query_key_value", "qkv_per_head", "input_layernorm"),
            "o": RoleSlot("attention.dense"),
            "up": RoleSlot("mlp.dense_h_to_4h", norm="post_attention_layernorm"),
            "down": RoleSlot("mlp.dense_4h_to_h"),
        },
        embed="gpt_neox.embed_in", unembed="lm_head", final_norm="gpt_neox.final_layer_norm",
        aliases={"lm_head": "embed_out"},
        notes="Pythia. Q/K/V interleaved per head; checkpoints name the unembedding embed_out.",
    ),
    _llama_like("llama", ("llama",)),
    _llama_like("mistral", ("mistral",)),
    _llama_like("qwen2", ("qwen2",), notes="q/k/v carry biases (ignored by weight deltas)."),
    _llama_like("olmo", ("olmo",), notes="Norms are parameter-free LayerNorms."),
    _llama_like("olmo2", ("olmo2",), attn_norm=None, mlp_norm=None,
                notes="Post-norm blocks: q/k/v and gate/up read the raw residual stream; q_norm/k_norm follow q/k."),
    ArchSpec(
        name="phi3", model_types=("phi3",), layers="model.layers",
        roles={
            **_fused("self_attn.qkv_proj", "qkv_contiguous", "input_layernorm"),
            "o": RoleSlot("self_attn.o_proj"),
            **_fused("mlp.gate_up_proj", "gate_up_contiguous", "post_attention_layernorm", ("gate", "up")),
            "down": RoleSlot("mlp.down_proj"),
        },
        embed="model.embed_tokens", unembed="lm_head", final_norm="model.norm",
        notes="qkv_proj fused contiguously (GQA-aware); gate_up_proj = [gate; up].",
    ),
    _llama_like("gemma", ("gemma",), norm_offset=1.0, notes="RMSNorm scales by (1 + weight); embeddings tied."),
    _llama_like("gemma2", ("gemma2",), mlp_norm="pre_feedforward_layernorm", norm_offset=1.0,
                notes="Sandwich norms; RMSNorm scales by (1 + weight)."),
)

#: registered entries by name, in registration order (built-ins first); change only through register_architecture
_ARCHS: Registry[ArchSpec] = Registry("architecture")


ADD_ARCH_HINT = (
    "To add one, call rwedit.architectures.register_architecture(ArchSpec(...)) from your own code, naming "
    "the config model_type(s), the layer list, the module of each role (q, k, v, o, up, gate, down), the "
    "norm each reader reads, the embedding, unembedding and final norm, and any fused layout "
    "(register_fused_layout for a new one); then check it on a tiny config as tests/tiny_models.py and "
    "tests/test_architectures.py do, against the model's own computation."
)


#: model_type -> its entry (kept by register_architecture)
_BY_MODEL_TYPE: Registry[ArchSpec] = Registry("architecture", error=UnsupportedArchitectureError, hint=ADD_ARCH_HINT)


class _Registered(Sequence):
    """Read-only live view of the registered :class:`ArchSpec` entries (it follows later registrations)."""

    def __getitem__(self, i):
        return tuple(_ARCHS.values())[i]

    def __len__(self) -> int:
        return len(_ARCHS)

    def __iter__(self) -> Iterator[ArchSpec]:
        return iter(tuple(_ARCHS.values()))

    def __repr__(self) -> str:
        return f"ARCHITECTURES({', '.join(_ARCHS)})"


#: every registered architecture (built-in and user-registered), in registration order
ARCHITECTURES: Sequence[ArchSpec] = _Registered()


def _validate_spec(spec: ArchSpec) -> None:
    if not isinstance(spec, ArchSpec):
        raise ValueError(f"register_architecture takes an ArchSpec, got {type(spec).__name__}")
    if not isinstance(spec.model_types, tuple) or not spec.model_types or not all(
            isinstance(mt, str) and mt for mt in spec.model_types):
        raise ValueError(f"architecture {spec.name!r}: model_types must be a non-empty tuple of strings "
                         f"(the config.model_type values it covers), got {spec.model_types!r}")
    for role, slot in spec.roles.items():
        if role not in LAYER_ROLES:
            raise ValueError(f"architecture {spec.name!r}: unknown role {role!r}; layer roles are "
                             f"{', '.join(LAYER_ROLES)} (the unembedding is given by embed/unembed)")
        if not isinstance(slot, RoleSlot):
            raise ValueError(f"architecture {spec.name!r}: role {role!r} must map to a RoleSlot, "
                             f"got {type(slot).__name__}")
        if slot.fused is not None and slot.fused not in FUSED_LAYOUTS:
            raise ValueError(f"architecture {spec.name!r}: role {role!r} names the unknown fused layout "
                             f"{slot.fused!r}; known layouts: {', '.join(sorted(FUSED_LAYOUTS))} "
                             "(add one with register_fused_layout)")


def register_architecture(spec: ArchSpec, *, replace: bool = False) -> None:
    """Add ``spec`` (validated first), so that models whose ``config.model_type`` is one of its model types get its
    layout everywhere; a name or model type already registered is refused unless ``replace=True``, which removes
    every entry sharing one (the new entry comes last)."""
    _validate_spec(spec)
    clashes = [s for s in _ARCHS.values() if s.name == spec.name or set(s.model_types) & set(spec.model_types)]
    if clashes and not replace:
        old = clashes[0]
        shared = [mt for mt in spec.model_types if mt in old.model_types]
        what = f"model_type {shared[0]!r}" if shared else f"name {spec.name!r}"
        raise AlreadyRegisteredError(f"{what} is already registered, by architecture {old.name!r} (model_types "
                                     f"{', '.join(old.model_types)}); pass replace=True to replace that entry")
    for old in clashes:
        unregister_architecture(old.name)
    _ARCHS.register(spec.name, spec)
    for mt in spec.model_types:
        _BY_MODEL_TYPE.register(mt, spec)


def unregister_architecture(name: str) -> ArchSpec:
    """Remove the registered entry called ``name`` and return it (to undo a registration)."""
    spec = _ARCHS.unregister(name)
    for mt in spec.model_types:
        del _BY_MODEL_TYPE[mt]
    return spec


for _spec in _BUILTIN:
    register_architecture(_spec)
del _spec


def supported_model_types() -> list[str]:
    return sorted(_BY_MODEL_TYPE)


def arch_spec(model_type: str) -> ArchSpec:
    """Registry entry for ``model_type``; an unknown one fails with the closest and the supported types."""
    return _BY_MODEL_TYPE[model_type]


# --- role views ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoleView:
    """One role of one layer as a ``d_out x d_in`` matrix inside its stored tensor ``param`` (a state-dict name);
    ``rows`` selects the role's rows of the (for Conv1D transposed) fused matrix, None: all of them."""

    layer: int | None
    role: str
    module: str
    param: str
    transposed: bool
    rows: torch.Tensor | None
    shape: tuple[int, int]  # (d_out, d_in) of the role
    stored_shape: tuple[int, ...]
    norm: str | None = None

    @property
    def d_out(self) -> int:
        return self.shape[0]

    @property
    def d_in(self) -> int:
        return self.shape[1]

    def _full(self, stored: torch.Tensor) -> torch.Tensor:
        return stored.t() if self.transposed else stored

    def check_stored(self, stored: torch.Tensor | tuple[int, ...], where: str = "") -> None:
        shape = tuple(getattr(stored, "shape", stored))  # a tensor or its header's shape (no torch needed)
        if shape != self.stored_shape:
            raise ConfigError(f"{where}{self.param}: stored shape {shape} does not match the {self.stored_shape} "
                              f"that the model config implies for role {self.role!r}")

    def extract(self, stored: torch.Tensor) -> torch.Tensor:
        """Return the role's ``W`` (d_out x d_in) from the stored tensor (a copy when sliced)."""
        full = self._full(stored)
        return full if self.rows is None else full.index_select(0, self.rows.to(full.device))

    def block(self, stored_rows: torch.Tensor, r0: int) -> tuple[int, slice | torch.Tensor, torch.Tensor] | None:
        """The part of the role inside rows ``r0 ..`` of its stored tensor (``stored_rows``), as ``(axis, index,
        X)``: axis 0 means ``X = W[index, :]`` (rows of W), axis 1 ``X = W[:, index]`` (a transposed layout's
        stored rows are columns of W). ``None`` when the block holds none of the role (another fused slice).
        ``index`` is a slice where the role's rows are contiguous in the block, else an index tensor."""
        r1 = r0 + stored_rows.shape[0]
        if self.transposed:  # W = stored.T[rows]: stored rows r0..r1 are W's columns r0..r1
            X = stored_rows.t() if self.rows is None else stored_rows.t().index_select(0, self.rows.to(stored_rows.device))
            return 1, slice(r0, r1), X
        if self.rows is None:
            return 0, slice(r0, r1), stored_rows
        rows = self.rows
        inside = ((rows >= r0) & (rows < r1)).nonzero().flatten()
        if inside.numel() == 0:
            return None
        j0, j1 = int(inside[0]), int(inside[-1]) + 1
        if j1 - j0 == inside.numel():  # W's rows j0..j1 (a fused slice, or the part of one in this block)
            picked = rows[j0:j1]
            s0 = int(picked[0]) - r0
            if int(picked[-1]) - int(picked[0]) == j1 - j0 - 1:
                return 0, slice(j0, j1), stored_rows[s0:s0 + j1 - j0]
            return 0, slice(j0, j1), stored_rows.index_select(0, (picked - r0).to(stored_rows.device))
        return 0, inside, stored_rows.index_select(0, (rows[inside] - r0).to(stored_rows.device))

    def _target(self, stored: torch.Tensor, W: torch.Tensor, what: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The full d_out x d_in view of ``stored`` and ``W`` (checked to be the role's shape) on its device
        and dtype: the common part of every write."""
        if tuple(W.shape) != self.shape:
            raise ConfigError(f"{what} for layer {self.layer} role {self.role!r} has shape {tuple(W.shape)}, "
                             f"expected {self.shape}")
        full = self._full(stored)
        return full, W.to(device=full.device, dtype=full.dtype)

    def add_(self, stored: torch.Tensor, delta: torch.Tensor) -> None:
        """Add ``delta`` (d_out x d_in) into the stored tensor in place, through any fused layout."""
        full, delta = self._target(stored, delta, "delta")
        if self.rows is None:
            full.add_(delta)
        else:
            full.index_add_(0, self.rows.to(full.device), delta)

    def set_(self, stored: torch.Tensor, W: torch.Tensor) -> None:
        """Overwrite the role's block of the stored tensor with ``W`` (d_out x d_in) in place, through any
        fused layout; the rows of a fused matrix that belong to other roles are untouched."""
        full, W = self._target(stored, W, "W")
        if self.rows is None:
            full.copy_(W)
        else:
            full.index_copy_(0, self.rows.to(full.device), W)


@dataclass(frozen=True)
class Layout:
    """An :class:`ArchSpec` bound to one model config: names and shapes of every role view."""

    spec: ArchSpec
    dims: Dims

    @classmethod
    def from_config(cls, config: Any) -> "Layout":
        return cls(arch_spec(config.model_type), Dims.from_config(config))

    @property
    def n_layers(self) -> int:
        return self.dims.n_layers

    def roles(self) -> tuple[str, ...]:
        """Roles this architecture has, in canonical order (``gate`` only where it exists)."""
        return tuple(r for r in ROLES if r == "unembed" or r in self.spec.roles)

    def has_role(self, role: str) -> bool:
        return role == "unembed" or role in self.spec.roles

    def view(self, layer: int | None, role: str) -> RoleView:
        """The view of ``role`` at ``layer`` (``layer`` is ignored for ``unembed``)."""
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        d = self.dims
        if role == "unembed":
            module = self.spec.embed if d.tied else self.spec.unembed
            return RoleView(None, role, module, f"{module}.weight", False, None, (d.vocab, d.hidden),
                            (d.vocab, d.hidden), norm=self.spec.final_norm)
        if role not in self.spec.roles:
            raise ConfigError(f"{self.spec.name} has no {role!r} role; its roles are {', '.join(self.roles())}")
        if layer is None or not (0 <= int(layer) < d.n_layers):
            raise ConfigError(f"layer {layer!r} out of range: the model has layers 0..{d.n_layers - 1}")
        slot = self.spec.roles[role]
        module = f"{self.spec.layers}.{int(layer)}.{slot.module}"
        shapes = self._role_shapes()
        if slot.fused is None:
            rows, shape = None, shapes[role]
            full_out = shape[0]
        else:
            parts = FUSED_LAYOUTS[slot.fused](d)
            if role not in parts:
                raise ConfigError(f"{self.spec.name}: fused layout {slot.fused!r} has no rows for role {role!r} "
                                 f"(it lays out {', '.join(parts)})")
            rows = parts[role]
            full_out = sum(len(r) for r in parts.values())
            shape = (len(rows), shapes[role][1])
        d_in = shape[1]
        stored = (d_in, full_out) if self.spec.conv1d else (full_out, d_in)
        norm = f"{self.spec.layers}.{int(layer)}.{slot.norm}" if slot.norm else None
        return RoleView(int(layer), role, module, f"{module}.weight", self.spec.conv1d, rows, shape, stored, norm)

    def _role_shapes(self) -> dict[str, tuple[int, int]]:
        d = self.dims
        q_out, kv_out = d.n_heads * d.head_dim, d.n_kv_heads * d.head_dim
        return {"q": (q_out, d.hidden), "k": (kv_out, d.hidden), "v": (kv_out, d.hidden), "o": (d.hidden, q_out),
                "up": (d.intermediate, d.hidden), "gate": (d.intermediate, d.hidden),
                "down": (d.hidden, d.intermediate)}

    def views(self, roles: Iterable[str] | None = None, layers: Iterable[int] | None = None) -> list[RoleView]:
        """All views for the given roles and layers, layer-major, ``unembed`` last."""
        roles = tuple(self.roles() if roles is None else roles)
        for r in roles:
            if not self.has_role(r):
                self.view(0, r)  # raises the clear error
        layers = tuple(range(self.n_layers) if layers is None else layers)
        out = [self.view(layer, r) for layer in layers for r in roles if r != "unembed"]
        if "unembed" in roles:
            out.append(self.view(None, "unembed"))
        return out

    def final_norm_gain(self, weight: torch.Tensor | None) -> torch.Tensor | None:
        """The per-channel gain γ the final norm applies, from its stored weight (None if parameter-free)."""
        return None if weight is None else weight.float() + self.spec.norm_offset

    def checkpoint_names(self, param: str) -> list[str]:
        """Names under which ``param`` may be stored on disk (current, without base prefix, aliased)."""
        names = [param]
        for new, old in self.spec.aliases.items():
            if param == new or param.startswith(new + "."):
                names.append(old + param[len(new):])
        prefix = self.spec.base_prefix + "."
        names += [n[len(prefix):] for n in list(names) if n.startswith(prefix)]
        return names


# --- in-memory model helpers -----------------------------------------------------------------


def model_layout(model: torch.nn.Module) -> Layout:
    return Layout.from_config(model.config)


def _stored(model: torch.nn.Module, layer: int | None, role: str,
            write: str | None = None) -> tuple[RoleView, torch.nn.Parameter]:
    """The view of a role in a loaded model and the parameter that stores it, its shape checked; with ``write``
    (the caller's verb) a tied unembedding is refused: writing it would change the input embedding too."""
    layout = model_layout(model)
    view = layout.view(layer, role)
    if write is not None and role == "unembed" and layout.dims.tied:
        raise ConfigError(f"the unembedding is tied to the input embedding: {write} it would change both. Untie the "
                          "weights first (model.config.tie_word_embeddings = False and clone lm_head.weight).")
    param = model.get_parameter(view.param)
    view.check_stored(param)
    return view, param


def get_weight(model: torch.nn.Module, layer: int | None, role: str) -> torch.Tensor:
    """``W`` (d_out x d_in) of a role in a loaded model, as a detached copy."""
    view, param = _stored(model, layer, role)
    return view.extract(param.detach()).clone()


@no_grad
def add_delta(model: torch.nn.Module, layer: int | None, role: str, delta: torch.Tensor) -> None:
    """Add ``delta`` (d_out x d_in) to a role's weight in place, through fused/transposed storage (a tied
    unembedding is refused: untie first)."""
    view, param = _stored(model, layer, role, write="editing")
    view.add_(param.data, delta)


@no_grad
def set_weight(model: torch.nn.Module, layer: int | None, role: str, W: torch.Tensor) -> None:
    """Overwrite a role's ``W`` (d_out x d_in) in place, through fused/transposed storage (other roles' rows of a
    fused matrix untouched; a tied unembedding refused)."""
    view, param = _stored(model, layer, role, write="overwriting")
    view.set_(param.data, W)
