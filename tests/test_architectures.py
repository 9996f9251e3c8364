"""Role views checked against each model's own computation (the independent check of the layouts)."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from transformers import AttentionInterface
from transformers.activations import ACT2FN
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from rwedit.architectures import (
    ARCHITECTURES,
    FUSED_LAYOUTS,
    Layout,
    RoleSlot,
    UnsupportedArchitectureError,
    add_delta,
    arch_spec,
    get_weight,
    model_layout,
    register_architecture,
    register_fused_layout,
    set_weight,
    supported_model_types,
    unregister_architecture,
)
from tiny_models import TINY_CONFIGS, tiny_model

MODEL_TYPES = sorted(TINY_CONFIGS)

_CAPTURED: list[dict] = []


def _capture_attention(module, query, key, value, attention_mask, **kwargs):
    """Attention function that records the q/k/v the model computed, then runs SDPA."""
    _CAPTURED.append({"layer": module.layer_idx, "q": query.detach(), "k": key.detach(), "v": value.detach()})
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("rwedit_capture", _capture_attention)


def test_every_registered_architecture_has_a_tiny_config():
    assert sorted(supported_model_types()) == MODEL_TYPES
    assert len({s.name for s in ARCHITECTURES}) == len(ARCHITECTURES)


def test_unknown_architecture_lists_supported_and_how_to_add():
    with pytest.raises(UnsupportedArchitectureError) as e:
        arch_spec("mamba")
    msg = str(e.value)
    assert "'mamba'" in msg and "gpt_neox" in msg and "llama" in msg and "register_architecture" in msg
    with pytest.raises(UnsupportedArchitectureError, match=r"'lama' is not in rwedit's registry \(did you mean"):
        arch_spec("lama")


def _act(config):
    name = next(getattr(config, a) for a in ("hidden_activation", "hidden_act", "activation_function")
                if getattr(config, a, None))
    return ACT2FN[name]


def _heads_to_flat(t: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, head_dim) -> (batch*seq, heads*head_dim)."""
    b, h, s, hd = t.shape
    return t.transpose(1, 2).reshape(b * s, h * hd)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_role_views_reproduce_the_models_own_computation(model_type):
    model = tiny_model(model_type, attn_implementation="rwedit_capture")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.zero_()  # so each module output is exactly W x
    layout = model_layout(model)
    spec = layout.spec
    if model_type == "olmo2":  # q_norm/k_norm follow the projections; drop them to see raw W_q x
        for layer in model.model.layers:
            layer.self_attn.q_norm = torch.nn.Identity()
            layer.self_attn.k_norm = torch.nn.Identity()

    inputs, outputs = {}, {}
    hooks = []

    def grab_in(key):
        return lambda mod, args: inputs.__setitem__(key, args[0].detach().reshape(-1, args[0].shape[-1]))

    def grab_out(key):
        return lambda mod, args, out: outputs.__setitem__(
            key, (out[0] if isinstance(out, tuple) else out).detach().reshape(-1, (out[0] if isinstance(out, tuple) else out).shape[-1]))

    for layer in range(layout.n_layers):
        for role in layout.roles():
            if role == "unembed":
                continue
            v = layout.view(layer, role)
            hooks.append(model.get_submodule(v.module).register_forward_pre_hook(grab_in((layer, role))))
            hooks.append(model.get_submodule(v.module).register_forward_hook(grab_out((layer, role))))
            if v.norm is not None:
                hooks.append(model.get_submodule(v.norm).register_forward_hook(grab_out((layer, "norm", role))))
        hooks.append(model.get_submodule(f"{spec.layers}.{layer}").register_forward_pre_hook(
            lambda mod, args, kw=None, _l=layer: inputs.__setitem__((_l, "resid"), args[0].detach().reshape(-1, args[0].shape[-1]))))
    un = layout.view(None, "unembed")
    hooks.append(model.lm_head.register_forward_pre_hook(grab_in("unembed")))
    hooks.append(model.get_submodule(spec.final_norm).register_forward_hook(grab_out("final_norm")))

    _CAPTURED.clear()
    ids = torch.randint(3, 101, (5, 1))  # one position: rotary embeddings are the identity at position 0
    with torch.no_grad():
        logits = model(input_ids=ids).logits.reshape(-1, model.config.vocab_size)
    for h in hooks:
        h.remove()
    assert len(_CAPTURED) == layout.n_layers
    tol = dict(atol=1e-4, rtol=1e-4)
    act = _act(model.config)
    for cap in _CAPTURED:
        layer = cap["layer"]
        x = inputs[(layer, "q")]
        # readers read the norm named in the registry (or the raw residual stream when it names none)
        # (olmo2's MLP reads the mid-block residual, which no hook here sees, so only q is checked there)
        for role in ("q", "up"):
            v = layout.view(layer, role)
            if v.norm or role == "q":
                expected_input = outputs[(layer, "norm", role)] if v.norm else inputs[(layer, "resid")]
                torch.testing.assert_close(inputs[(layer, role)], expected_input, **tol)
        for role in ("q", "k", "v"):
            W = get_weight(model, layer, role)
            assert W.shape == layout.view(layer, role).shape
            torch.testing.assert_close(x @ W.T, _heads_to_flat(cap[role]), **tol)
        # o and down: W x equals the module's output on its captured input
        for role in ("o", "down"):
            W = get_weight(model, layer, role)
            torch.testing.assert_close(inputs[(layer, role)] @ W.T, outputs[(layer, role)], **tol)
        # up/gate: the input of down is act(W_gate x) * (W_up x), or act(W_up x) without a gate
        xm = inputs[(layer, "up")]
        hidden = xm @ get_weight(model, layer, "up").T
        if layout.has_role("gate"):
            hidden = act(xm @ get_weight(model, layer, "gate").T) * hidden
        else:
            hidden = act(hidden)
        torch.testing.assert_close(hidden, inputs[(layer, "down")], **tol)
    # unembedding: logits = W_U final_norm(h), tied models read the input embedding
    torch.testing.assert_close(inputs["unembed"], outputs["final_norm"], **tol)
    W_U = get_weight(model, None, "unembed")
    assert W_U.shape == (model.config.vocab_size, layout.dims.hidden)
    torch.testing.assert_close(inputs["unembed"] @ W_U.T, logits, **tol)
    assert un.param == (f"{spec.embed}.weight" if layout.dims.tied else f"{spec.unembed}.weight")


def _hand_edit(model, model_type: str, layer: int, role: str, dW: torch.Tensor) -> None:
    """Edit the stored weight by hand, with each layout written out independently of the registry."""
    cfg = model.config
    with torch.no_grad():
        if model_type == "gpt2":
            blk = model.transformer.h[layer]
            d = cfg.n_embd
            if role in ("q", "k", "v"):
                i = "qkv".index(role)
                blk.attn.c_attn.weight[:, i * d:(i + 1) * d] += dW.T
            else:
                mod = {"o": blk.attn.c_proj, "up": blk.mlp.c_fc, "down": blk.mlp.c_proj}[role]
                mod.weight += dW.T
        elif model_type == "gpt_neox":
            blk = model.gpt_neox.layers[layer]
            if role in ("q", "k", "v"):
                H = cfg.num_attention_heads
                hd = cfg.hidden_size // H
                w = blk.attention.query_key_value.weight.view(H, 3, hd, cfg.hidden_size)
                w[:, "qkv".index(role)] += dW.view(H, hd, cfg.hidden_size)
            else:
                mod = {"o": blk.attention.dense, "up": blk.mlp.dense_h_to_4h, "down": blk.mlp.dense_4h_to_h}[role]
                mod.weight += dW
        elif model_type == "phi3":
            blk = model.model.layers[layer]
            hd = cfg.hidden_size // cfg.num_attention_heads
            nq, nkv = cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd
            I = cfg.intermediate_size
            w_qkv, w_gu = blk.self_attn.qkv_proj.weight, blk.mlp.gate_up_proj.weight
            if role == "q":
                w_qkv[:nq] += dW
            elif role == "k":
                w_qkv[nq:nq + nkv] += dW
            elif role == "v":
                w_qkv[nq + nkv:] += dW
            elif role == "gate":
                w_gu[:I] += dW
            elif role == "up":
                w_gu[I:] += dW
            else:
                {"o": blk.self_attn.o_proj, "down": blk.mlp.down_proj}[role].weight += dW
        else:
            blk = model.model.layers[layer]
            mod = {"q": blk.self_attn.q_proj, "k": blk.self_attn.k_proj, "v": blk.self_attn.v_proj,
                   "o": blk.self_attn.o_proj, "gate": blk.mlp.gate_proj, "up": blk.mlp.up_proj,
                   "down": blk.mlp.down_proj}[role]
            mod.weight += dW


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_writing_a_delta_through_a_view_equals_a_hand_edit(model_type):
    model = tiny_model(model_type)
    layout = model_layout(model)
    ids = torch.randint(3, 101, (2, 7))
    g = torch.Generator().manual_seed(1)
    for role in layout.roles():
        if role == "unembed":
            continue
        shape = layout.view(1, role).shape
        dW = torch.randn(shape, generator=g) * 0.5
        by_view, by_hand = copy.deepcopy(model), copy.deepcopy(model)
        add_delta(by_view, 1, role, dW)
        _hand_edit(by_hand, model_type, 1, role, dW)
        with torch.no_grad():
            a, b, base = by_view(ids).logits, by_hand(ids).logits, model(ids).logits
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert (a - base).abs().max() > 1e-3, f"{role}: the edit did not change the output"
        # the view now reads back W + dW, and no other role of the fused matrix moved
        torch.testing.assert_close(get_weight(by_view, 1, role), get_weight(model, 1, role) + dW)
        for other in layout.roles():
            if other not in ("unembed", role):
                torch.testing.assert_close(get_weight(by_view, 1, other), get_weight(model, 1, other))


def test_bad_roles_and_layers_are_refused_clearly():
    model = tiny_model("gpt2")
    layout = model_layout(model)
    with pytest.raises(ValueError, match="no 'gate' role"):
        layout.view(0, "gate")
    with pytest.raises(ValueError, match="unknown role 'attn'"):
        layout.view(0, "attn")
    with pytest.raises(ValueError, match=r"layers 0\.\.1"):
        layout.view(5, "q")
    with pytest.raises(ValueError, match="tied"):
        add_delta(model, None, "unembed", torch.zeros(101, 32))
    with pytest.raises(ValueError, match="expected"):
        add_delta(model, 0, "q", torch.zeros(3, 3))


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi3"])  # plain, Conv1D + fused QKV, fused QKV + gate_up
def test_set_weight_overwrites_exactly_one_role_through_every_layout(model_type):
    model = tiny_model(model_type)
    layout = model_layout(model)
    ids = torch.randint(3, 101, (2, 7))
    g = torch.Generator().manual_seed(2)
    for role in (r for r in layout.roles() if r != "unembed"):
        W_new = torch.randn(layout.view(1, role).shape, generator=g)
        by_set, by_hand = copy.deepcopy(model), copy.deepcopy(model)
        set_weight(by_set, 1, role, W_new)
        _hand_edit(by_hand, model_type, 1, role, W_new - get_weight(model, 1, role))  # independent layout
        with torch.no_grad():
            torch.testing.assert_close(by_set(ids).logits, by_hand(ids).logits, atol=1e-5, rtol=1e-5)
        assert torch.equal(get_weight(by_set, 1, role), W_new)
        for other in layout.roles():
            if other not in ("unembed", role):
                assert torch.equal(get_weight(by_set, 1, other), get_weight(model, 1, other)), (role, other)
    with pytest.raises(ValueError, match=r"W for layer 0 role 'q' has shape \(3, 3\), expected"):
        set_weight(model, 0, "q", torch.zeros(3, 3))
    if model_type == "gpt2":  # tied embeddings: overwriting the unembedding would change both
        with pytest.raises(ValueError, match="tied to the input embedding: overwriting it would change both"):
            set_weight(model, None, "unembed", torch.zeros(101, 32))


# ----------------------------------------------------------------------------- registration


@pytest.fixture
def my_llama():
    """The llama entry registered again under model_type "my_llama"; unregistered afterwards."""
    spec = dataclasses.replace(arch_spec("llama"), name="my_llama", model_types=("my_llama",))
    before = list(ARCHITECTURES)
    register_architecture(spec)
    yield spec
    unregister_architecture("my_llama")
    assert list(ARCHITECTURES) == before and "my_llama" not in supported_model_types()


def test_a_registered_architecture_is_used_for_its_model_type(my_llama):
    assert ARCHITECTURES[-1] is my_llama and "my_llama" in supported_model_types()
    reference = tiny_model("llama")
    model = copy.deepcopy(reference)
    model.config.model_type = "my_llama"
    layout = model_layout(model)
    assert isinstance(layout, Layout) and layout.spec is my_llama
    assert layout.roles() == model_layout(reference).roles()
    g = torch.Generator().manual_seed(3)
    for role in layout.roles():
        torch.testing.assert_close(get_weight(model, 0, role), get_weight(reference, 0, role), rtol=0, atol=0)
        W = torch.randn(layout.view(0, role).shape, generator=g)
        set_weight(model, 0, role, W)
        assert torch.equal(get_weight(model, 0, role), W)
        assert torch.equal(model.get_parameter(layout.view(0, role).param), W)  # plain storage: W itself
        add_delta(model, 0, role, torch.ones_like(W))
        torch.testing.assert_close(get_weight(model, 0, role), W + 1)


def test_duplicate_and_invalid_registrations_are_refused(my_llama):
    n = len(ARCHITECTURES)
    with pytest.raises(ValueError, match=r"model_type 'my_llama' is already registered, by architecture 'my_llama'"):
        register_architecture(dataclasses.replace(my_llama, name="other"))
    with pytest.raises(ValueError, match=r"model_type 'llama' is already registered, by architecture 'llama'.*replace=True"):
        register_architecture(dataclasses.replace(my_llama, name="other", model_types=("llama",)))
    with pytest.raises(ValueError, match="name 'my_llama' is already registered"):
        register_architecture(dataclasses.replace(my_llama, model_types=("brand_new",)))
    bad_fused = dict(my_llama.roles, q=RoleSlot("self_attn.q_proj", fused="qkv_sideways"))
    with pytest.raises(ValueError, match="unknown fused layout 'qkv_sideways'.*register_fused_layout"):
        register_architecture(dataclasses.replace(my_llama, name="bad", model_types=("bad",), roles=bad_fused))
    bad_role = dict(my_llama.roles, attn=RoleSlot("self_attn"))
    with pytest.raises(ValueError, match="unknown role 'attn'"):
        register_architecture(dataclasses.replace(my_llama, name="bad", model_types=("bad",), roles=bad_role))
    with pytest.raises(ValueError, match="non-empty tuple"):
        register_architecture(dataclasses.replace(my_llama, name="bad", model_types=()))
    assert len(ARCHITECTURES) == n and "bad" not in supported_model_types()
    # replace=True swaps the entry in place
    newer = dataclasses.replace(my_llama, notes="newer")
    register_architecture(newer, replace=True)
    assert len(ARCHITECTURES) == n and arch_spec("my_llama") is newer and my_llama not in list(ARCHITECTURES)


def test_fused_layouts_are_registered_once():
    with pytest.raises(ValueError, match="'qkv_contiguous' is already registered"):
        register_fused_layout("qkv_contiguous", FUSED_LAYOUTS["qkv_per_head"])
    with pytest.raises(ValueError, match="expected a function"):
        register_fused_layout("not_a_function", "rows")
    assert "not_a_function" not in FUSED_LAYOUTS
    with pytest.raises(KeyError, match=r"layout 'qkv_contigous' is not in rwedit's registry \(did you mean 'qkv_cont"):
        FUSED_LAYOUTS["qkv_contigous"]
