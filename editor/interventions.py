"""Interventions: what a condition does to a loaded model, applied and undone around scoring.

``with intervention.applied(model):`` puts the model in the condition's state and restores it on exit (also
after an exception), so one loaded model serves every condition. Kinds (:func:`register_intervention`):
``unchanged`` (adapters disabled), ``adapter`` (one PEFT adapter active), ``weights`` (matrices written through
the role views, restored bit for bit from a CPU snapshot) and ``checkpoint`` (every parameter streamed from
another checkpoint; not undone, so it comes last: ``final``).
"""

from __future__ import annotations

import contextlib
from typing import Callable, ClassVar, Iterable, Iterator

from rwedit.lazy import torch
from tqdm.auto import tqdm

from rwedit.architectures import LAYER_ROLES, RoleView, model_layout, set_weight
from rwedit.checkpoints import Checkpoint, TensorReader
from rwedit.errors import ConfigError, ExperimentError
from rwedit.registry import Registry
from rwedit.runtime import runtime

BASE = "base"
_INTERVENTIONS: Registry[type["Intervention"]] = Registry("intervention kind")


def register_intervention(name: str, *, replace: bool = False):
    """Class decorator: make an intervention kind available under ``name``."""

    def deco(cls):
        cls.kind = name
        return _INTERVENTIONS.register(name, cls, replace=replace)
    return deco


def intervention_kinds() -> dict[str, type["Intervention"]]:
    return dict(_INTERVENTIONS)


class Intervention:
    """Base: a change to a loaded model that :meth:`applied` makes and undoes."""

    kind: ClassVar[str] = ""
    #: True when the change cannot be undone: the runner applies it after every other condition
    final: ClassVar[bool] = False

    def applied(self, model: torch.nn.Module) -> contextlib.AbstractContextManager:
        raise NotImplementedError


@register_intervention("unchanged")
class Unchanged(Intervention):
    """The model as loaded; on a PeftModel every adapter is disabled."""

    @contextlib.contextmanager
    def applied(self, model):
        if hasattr(model, "disable_adapter"):
            with model.disable_adapter():
                yield
        else:
            yield


@register_intervention("adapter")
class Adapter(Intervention):
    """One named adapter of a PeftModel made active (``set_adapter``: a pointer switch, no weight copy)."""

    def __init__(self, name: str):
        self.name = name

    @contextlib.contextmanager
    def applied(self, model):
        loaded = sorted(getattr(model, "peft_config", {}))
        if self.name not in loaded:
            raise KeyError(f"no adapter named {self.name!r}; loaded: {loaded}")
        model.set_adapter(self.name)
        yield


def adapter_or_base(name: str | None) -> Intervention:
    """``Adapter(name)``, or :class:`Unchanged` for ``None`` / ``"base"``."""
    return Unchanged() if name in (None, BASE) else Adapter(name)


def with_adapter(model, name: str | None) -> contextlib.AbstractContextManager:
    """The scorers' optional ``adapter`` argument: ``None`` leaves the model as it is, a name (or ``"base"``)
    applies :func:`adapter_or_base` around the scoring."""
    return contextlib.nullcontext() if name is None else adapter_or_base(name).applied(model)


class WeightSnapshot:
    """Exact CPU copies of the stored tensors behind some (layer, role) matrices: ``restore()`` (also on leaving
    the context) copies them back bit for bit; ``original(layer, role)`` is the role's ``W`` as snapshotted."""

    def __init__(self, model: torch.nn.Module, targets: Iterable[tuple[int, str]]):
        self.model = model
        layout = model_layout(model)
        self.views: dict[tuple[int, str], RoleView] = {}
        self.saved: dict[str, torch.Tensor] = {}
        for layer, role in targets:
            if role not in LAYER_ROLES:
                raise ValueError(f"role {role!r}: weight writes act on layer matrices ({', '.join(LAYER_ROLES)})")
            view = layout.view(layer, role)
            self.views[(layer, role)] = view
            if view.param not in self.saved:
                param = model.get_parameter(view.param)
                if param.device.type == "meta":
                    raise ConfigError(f"{view.param} is offloaded by the device map (its weight is not held on a "
                                      f"device), so it cannot be rewritten in place: keep layer {layer} resident "
                                      f"(mapped to a GPU, or to cpu when nothing goes to a GPU), or drop the "
                                      f"device map")
                self.saved[view.param] = param.detach().to("cpu", copy=True)

    @property
    def targets(self) -> list[tuple[int, str]]:
        return list(self.views)

    def original(self, layer: int, role: str) -> torch.Tensor:
        view = self.views[(layer, role)]
        return view.extract(self.saved[view.param]).clone()

    def restore(self) -> None:
        with torch.no_grad():
            for name, t in self.saved.items():
                self.model.get_parameter(name).data.copy_(t)

    def __enter__(self) -> "WeightSnapshot":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


#: ``build(layer, role, W_original) -> W_new`` (d_out x d_in) for one target matrix
WeightBuilder = Callable[[int, str, "torch.Tensor"], "torch.Tensor"]


@register_intervention("weights")
class WeightWrite(Intervention):
    """Per-matrix replacements written through the registry's role views (fused/transposed storage
    handled there) and undone bit for bit from ``snapshot`` (shared by every condition of a run). On a
    PeftModel the snapshot is of its base model, and the written weights are scored with every adapter off."""

    def __init__(self, snapshot: WeightSnapshot, build: WeightBuilder, label: str = ""):
        self.snapshot, self.build, self.label = snapshot, build, label

    @contextlib.contextmanager
    def applied(self, model):
        try:
            for layer, role in tqdm(self.snapshot.targets, desc=f"  {self.label}", leave=False,
                                    disable=not runtime().progress):
                W = self.build(layer, role, self.snapshot.original(layer, role))
                if W is not None:
                    set_weight(self.snapshot.model, layer, role, W)
            with Unchanged().applied(model):
                yield
        finally:
            self.snapshot.restore()


@register_intervention("checkpoint")
class CheckpointLoad(Intervention):
    """Every parameter overwritten in place by ``ckpt``'s tensor of that name (streamed, one at a time, in the
    parameter's dtype). Not undone: the runner applies it last."""

    final = True

    def __init__(self, ckpt: Checkpoint):
        self.ckpt = ckpt

    @contextlib.contextmanager
    def applied(self, model) -> Iterator[None]:
        with TensorReader(self.ckpt) as reader, torch.no_grad():
            for name, p in tqdm(list(model.named_parameters()), desc="  checkpoint weights", leave=False,
                                disable=not runtime().progress):
                t = reader.read(name, dtype=p.dtype)
                if tuple(t.shape) != tuple(p.shape):
                    raise ExperimentError(f"{self.ckpt.source}: {name} has shape {tuple(t.shape)}, the model "
                                          f"{tuple(p.shape)}")
                p.data.copy_(t)
        yield


__all__ = ["BASE", "Adapter", "CheckpointLoad", "Intervention", "Unchanged", "WeightSnapshot", "WeightWrite",
           "adapter_or_base", "intervention_kinds", "register_intervention", "with_adapter"]
