"""Adapters equal hand-edited weights for every architecture; merge and save/reload agree."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import PeftModel

from rwedit.architectures import add_delta, model_layout
from rwedit.editor.adapters import attach_conditions
from rwedit.editor.edits import EditCondition, RankOneEdit
from tiny_models import TINY_CONFIGS, tiny_model


def _unit(n, g):
    x = torch.randn(n, generator=g, dtype=torch.float64)
    return x / x.norm()


def _conditions(model, g):
    layout = model_layout(model)
    conds = []
    for role in [r for r in layout.roles() if r != "unembed"]:
        view = layout.view(1, role)
        e = RankOneEdit(1, role, _unit(view.d_out, g), _unit(view.d_in, g), alpha=3.0)
        conds.append(EditCondition(f"{role}_edit", "given", 3.0, [e]))
    # two roles of one (possibly fused) attention matrix plus another layer, in one adapter
    two = [RankOneEdit(1, r, _unit(layout.view(1, r).d_out, g), _unit(layout.view(1, r).d_in, g), -2.0)
           for r in ("q", "k")] + [RankOneEdit(0, "down", _unit(layout.view(0, "down").d_out, g),
                                               _unit(layout.view(0, "down").d_in, g), 1.5)]
    conds.append(EditCondition("multi", "given", -2.0, two))
    return conds


def _by_hand(model, cond):
    m = copy.deepcopy(model)
    for e in cond.edits:
        add_delta(m, e.layer, e.role, e.delta.float())
    return m


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_adapter_logits_equal_hand_edited_weights(model_type, tmp_path):
    model = tiny_model(model_type)
    ids = torch.randint(3, 101, (2, 9))
    g = torch.Generator().manual_seed(0)
    conds = _conditions(model, g)
    refs = {}
    with torch.no_grad():
        base_logits = model(ids).logits
        for c in conds:
            refs[c.name] = _by_hand(model, c)(ids).logits
    peft_model = attach_conditions(model, conds)
    with torch.no_grad():
        for c in conds:
            peft_model.set_adapter(c.name)
            got = peft_model(ids).logits
            torch.testing.assert_close(got, refs[c.name], atol=2e-5, rtol=2e-5)
            assert (got - base_logits).abs().max() > 1e-3
        with peft_model.disable_adapter():
            torch.testing.assert_close(peft_model(ids).logits, base_logits, atol=0, rtol=0)
    # save and reload one adapter on a fresh base: logits reproduced exactly
    c = conds[-1]
    peft_model.set_adapter(c.name)
    with torch.no_grad():
        before = peft_model(ids).logits
    peft_model.save_pretrained(tmp_path, selected_adapters=[c.name])
    fresh = PeftModel.from_pretrained(tiny_model(model_type), tmp_path / c.name, adapter_name=c.name).eval()
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, before, atol=0, rtol=0)
        merged = fresh.merge_and_unload()
        torch.testing.assert_close(merged(ids).logits, refs[c.name], atol=2e-5, rtol=2e-5)


def test_bad_adapter_names_are_refused():
    model = tiny_model("llama")
    layout = model_layout(model)
    v = layout.view(0, "q")
    e = RankOneEdit(0, "q", torch.ones(v.d_out, dtype=torch.float64) / v.d_out ** 0.5,
                    torch.ones(v.d_in, dtype=torch.float64) / v.d_in ** 0.5, 1.0)
    for bad in ("my_lora", "a.b", ""):
        with pytest.raises(ValueError, match="not allowed"):
            attach_conditions(copy.deepcopy(model), [EditCondition(bad, "given", 1.0, [e])])
    with pytest.raises(ValueError, match="duplicate"):
        attach_conditions(copy.deepcopy(model), [EditCondition("x", "given", 1.0, [e])] * 2)
