"""Conditions as PEFT LoRA adapters: ``lora_A = vᵀ``, ``lora_B = α b`` (r = 1, lora_alpha = 1, no dropout).

A fused matrix takes one LoRA over the whole matrix, ``lora_B`` zero outside the edited role's rows (Conv1D:
``fan_in_fan_out=True``). All conditions load as named adapters on one model, switched with ``set_adapter``;
on a model placed by accelerate each adapter's weights live on its module's execution device.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.utils import load_peft_weights

from rwedit.architectures import Layout, model_layout
from rwedit.editor.edits import EditCondition, RankOneEdit
from rwedit.errors import AdapterMismatchError
from rwedit.models import execution_device

RESERVED = ("lora", ".")


def _module_edits(layout: Layout, edits: Sequence[RankOneEdit]) -> dict[str, list[RankOneEdit]]:
    by_module: dict[str, list[RankOneEdit]] = defaultdict(list)
    for e in edits:
        by_module[layout.view(e.layer, e.role).module].append(e)
    return dict(by_module)


def lora_config(layout: Layout, condition: EditCondition) -> LoraConfig:
    """A LoRA config targeting exactly the edited modules (rank = edits per module, scale 1)."""
    mods = _module_edits(layout, condition.edits)
    ranks = {m: len(es) for m, es in mods.items()}
    r = max(ranks.values())
    other = {m: k for m, k in ranks.items() if k != r}
    return LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, target_modules=sorted(mods),  # scaling = alpha / r = 1
                      fan_in_fan_out=layout.spec.conv1d, bias="none", init_lora_weights=False, rank_pattern=other,
                      alpha_pattern=dict(other))


def _check_name(name: str) -> None:
    low = name.lower()
    if not name or any(x in low for x in RESERVED):
        raise ValueError(f"adapter name {name!r} is not allowed: names must be non-empty and must not contain "
                         f"'lora' or '.' (PEFT's key renaming breaks on them)")


def _place_adapter(peft_model: PeftModel, name: str) -> None:
    """Give adapter ``name``'s LoRA weights storage on each module's execution device where PEFT left them on
    the meta device (following an offloaded base weight); the values are written next."""
    for module in peft_model.base_model.model.modules():
        for part in ("lora_A", "lora_B"):
            layers = getattr(module, part, None)
            if isinstance(layers, torch.nn.ModuleDict) and name in layers:
                if any(p.device.type == "meta" for p in layers[name].parameters()):
                    layers[name].to_empty(device=execution_device(module.get_base_layer()))


@torch.no_grad()
def _write_weights(peft_model: PeftModel, layout: Layout, condition: EditCondition) -> None:
    name = condition.name
    for module, edits in _module_edits(layout, condition.edits).items():
        lora_layer = peft_model.base_model.model.get_submodule(module)
        A = lora_layer.lora_A[name].weight  # (r, d_in)
        B = lora_layer.lora_B[name].weight  # (d_out_full, r)
        B.zero_()
        for j, e in enumerate(edits):
            view = layout.view(e.layer, e.role)
            A[j].copy_(e.v.to(A.dtype))
            col = torch.zeros(B.shape[0], dtype=torch.float64)
            if view.rows is None:
                col += e.alpha * e.b
            else:
                col.index_add_(0, view.rows, e.alpha * e.b)
            B[:, j].copy_(col.to(B.dtype))
        if lora_layer.scaling[name] != 1.0:
            raise RuntimeError(f"LoRA scaling of {module} is {lora_layer.scaling[name]}, expected 1")


def attach_conditions(model: torch.nn.Module | PeftModel, conditions: Sequence[EditCondition]) -> PeftModel:
    """Load every condition as a named adapter on one model; returns the PeftModel (active: the first)."""
    if not conditions:
        raise ValueError("no conditions to attach")
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate condition names: {sorted(n for n in set(names) if names.count(n) > 1)}")
    for n in names:
        _check_name(n)
    base = model.base_model.model if isinstance(model, PeftModel) else model
    layout = model_layout(base)
    for c in conditions:
        for e in c.edits:
            if e.role == "unembed":
                raise ValueError("edits of the unembedding are not supported as adapters (tied in many models)")
    peft_model = model if isinstance(model, PeftModel) else None
    for c in conditions:
        cfg = lora_config(layout, c)
        if peft_model is None:
            peft_model = get_peft_model(base, cfg, adapter_name=c.name)
        else:
            peft_model.add_adapter(c.name, cfg)
        _place_adapter(peft_model, c.name)
        _write_weights(peft_model, layout, c)
        got = sorted(n for n, m in peft_model.base_model.model.named_modules()
                     if hasattr(m, "lora_A") and c.name in m.lora_A)
        if got != sorted(cfg.target_modules):
            raise RuntimeError(f"adapter {c.name}: LoRA landed on {got}, expected {sorted(cfg.target_modules)}")
    peft_model.set_adapter(conditions[0].name)
    peft_model.eval()
    return peft_model


@contextlib.contextmanager
def adapter_scale(peft_model: PeftModel, name: str, factor: float):
    """Adapter ``name`` active with every ΔW it makes multiplied by ``factor`` (its LoRA scaling, which
    :func:`attach_conditions` sets to 1), set back to 1 on exit: a condition's dose changed without
    rewriting its weights (the KL search of the control experiment)."""
    from peft.tuners.lora import LoraLayer

    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer) and name in m.scaling]
    peft_model.set_adapter(name)
    try:
        for m in layers:
            m.set_scale(name, factor)
        yield
    finally:
        for m in layers:
            m.set_scale(name, 1.0)


def adapter_info(path: str | Path) -> dict:
    """An adapter folder's ``rwedit.json`` ({} for adapters rwedit did not make); a folder that is not an
    adapter, or a damaged config, is an :class:`AdapterMismatchError` naming it."""
    import json

    path = Path(path)
    if not (path / "adapter_config.json").exists():
        hint = " (it holds config.json: a model, not an adapter)" if (path / "config.json").exists() else ""
        raise AdapterMismatchError(f"{path} is not an adapter folder (no adapter_config.json){hint}")
    try:
        json.loads((path / "adapter_config.json").read_text())
        return json.loads((path / "rwedit.json").read_text()) if (path / "rwedit.json").exists() else {}
    except ValueError as e:
        raise AdapterMismatchError(f"{path}: adapter_config.json or rwedit.json is not valid JSON ({e}); "
                                   f"re-create the adapter") from None


def check_adapter_base(path: str | Path, fingerprint: str, force: bool = False, info: dict | None = None) -> None:
    """Refuse an adapter whose ``rwedit.json`` records another base's weight fingerprint than ``fingerprint``
    (``model_fingerprint`` of the plain model: same shape, other weights would pass silently) unless ``force``;
    ``info``: the folder's ``rwedit.json`` when already read."""
    info = adapter_info(path) if info is None else info
    recorded = info.get("base_fingerprint")
    if recorded is None or force:
        return
    if fingerprint != recorded:
        made_for = info.get("spec", {}).get("model", "?")
        raise AdapterMismatchError(
            f"{path} was made for the base {made_for!r} (weights fingerprint {recorded[:12]}…), but the model it "
            f"is applied to has other weights of the same shape: its edit directions would mean nothing there. "
            f"Give the base it was made for with --model, or pass --force to apply it anyway")


def _module_dims(module: torch.nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a linear module (Linear, or GPT-2's transposed Conv1D)."""
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return int(module.in_features), int(module.out_features)
    w = getattr(module, "weight", None)
    if w is not None and w.dim() == 2 and type(module).__name__ == "Conv1D":
        return int(w.shape[0]), int(w.shape[1])
    return None


def _check_fits(model: torch.nn.Module, path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """Every module the adapter edits exists in ``model`` with the adapter's input and output sizes."""
    for key, shape in sorted(shapes.items()):
        for part, side in (("lora_A", 1), ("lora_B", 0)):
            tag = f".{part}."
            if tag not in key:
                continue
            module_path = key.split(tag)[0].removeprefix("base_model.model.")
            try:
                module = model.get_submodule(module_path)
            except AttributeError:
                raise AdapterMismatchError(
                    f"{path} edits {module_path}, which this model ({type(model).__name__}) does not have: the adapter "
                    f"was made for another architecture. Give the base it was made for with --model") from None
            dims = _module_dims(module)
            want = None if dims is None else dims[0] if part == "lora_A" else dims[1]
            if dims is not None and shape[side] != want:
                raise AdapterMismatchError(
                    f"{path} edits {module_path} with {'input' if part == 'lora_A' else 'output'} size {shape[side]}, "
                    f"but this model's has {want}: the adapter was made for a model of another size. Give the "
                    f"base it was made for with --model")


def load_adapter_folder(model: torch.nn.Module, folder: str | Path, names: Sequence[str],
                        force: bool = False) -> PeftModel:
    """Load saved named adapters (``folder/<name>``) onto one model, refusing ones made for another base
    (:func:`check_adapter_base`, unless ``force``) and incomplete ones: PEFT does not fail on missing keys, and a
    tensor missing from an ``init_lora_weights=False`` adapter would silently be random."""
    import json

    from safetensors import safe_open

    from rwedit.probes.activations import model_fingerprint

    folder = Path(folder)
    if not names:
        raise AdapterMismatchError(f"{folder}: no adapter names to load")
    if isinstance(model, PeftModel) or any("lora_" in n for n, _ in model.named_parameters()):
        raise AdapterMismatchError("load_adapter_folder takes the plain base model (adapters already attached)")
    fingerprint = None if force else model_fingerprint(model)
    peft_model = None
    for n in names:
        path = folder / n
        info = adapter_info(path)
        targets = json.loads((path / "adapter_config.json").read_text()).get("target_modules") or []
        try:
            with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
                keys = set(f.keys())
                shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
        except Exception as e:  # noqa: BLE001 — missing or damaged weights file
            raise AdapterMismatchError(f"{path / 'adapter_model.safetensors'} cannot be read ({e}); re-create the "
                                       f"adapter") from None
        _check_fits(model, path, shapes)  # another architecture or size: said as such, before the fingerprint
        check_adapter_base(path, fingerprint, force, info)
        for t in targets:
            for part in ("lora_A", "lora_B"):
                if not any(k.endswith(f"{t}.{part}.weight") for k in keys):
                    raise AdapterMismatchError(f"adapter {n}: {path} has no {part} weight for {t}; re-create the "
                                               f"adapter")
        try:  # the adapter's modules first, placed where their base modules compute, then its weights
            cfg = LoraConfig.from_pretrained(str(path))
            cfg.inference_mode = True
            if peft_model is None:
                peft_model = get_peft_model(model, cfg, adapter_name=n)
            else:
                peft_model.add_adapter(n, cfg)
            _place_adapter(peft_model, n)
            res = set_peft_model_state_dict(peft_model, load_peft_weights(str(path)), adapter_name=n)
        except (RuntimeError, ValueError, KeyError, TypeError) as e:  # shapes or module names of another model
            raise AdapterMismatchError(f"adapter {n} ({path}) does not fit this model: "
                                       f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        missing = [k for k in getattr(res, "missing_keys", []) if "lora_" in k and f".{n}." in k]
        if missing:
            raise AdapterMismatchError(f"adapter {n}: weights missing after loading: {missing[:4]}")
    peft_model.eval()
    return peft_model
