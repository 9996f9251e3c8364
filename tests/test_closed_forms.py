"""The hook-accumulated G v / Gᵀ u equal autograd's weight gradient times v / u."""

from __future__ import annotations

import pytest
import torch

from rwedit.architectures import model_layout
from rwedit.data import pack_tokens, read_pairs
from rwedit.editor.closed_forms import Probe, _objective_batches, delta_b, gradient_products
from conftest import HH_RLHF
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def pairs():
    return read_pairs(HH_RLHF, limit=6)


def _autograd_G(model, layer, role, objective, data, tok):
    layout = model_layout(model)
    view = layout.view(layer, role)
    param = model.get_parameter(view.param)
    model.zero_grad()
    for loss in _objective_batches(model, tok, objective, data, batch_size=4, max_len=64):
        loss.backward()
    return view.extract(param.grad).double()


@pytest.mark.parametrize("model_type,role", [("llama", "q"), ("gpt2", "k"), ("gpt_neox", "v"), ("phi3", "gate"),
                                             ("gpt2", "down"), ("llama", "o")])
@pytest.mark.parametrize("objective", ["preference", "ce"])
def test_hooked_products_equal_autograd(model_type, role, objective, pairs, wiki_tokenizer, wiki_texts):
    model = tiny_model(model_type, vocab_size=len(wiki_tokenizer))
    data = pairs if objective == "preference" else pack_tokens(wiki_tokenizer, wiki_texts, 32, 32 * 6)
    view = model_layout(model).view(1, role)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(view.d_in, generator=g, dtype=torch.float64)
    u = torch.randn(view.d_out, generator=g, dtype=torch.float64)
    Gv, GTu = gradient_products(model, [Probe(1, role, v, "Gv"), Probe(1, role, u, "GTu")], objective, data,
                                tokenizer=wiki_tokenizer, batch_size=4, max_len=64)
    G = _autograd_G(model, 1, role, objective, data, wiki_tokenizer)
    assert G.abs().max() > 0
    torch.testing.assert_close(Gv, G @ v, rtol=1e-4, atol=1e-6 * float(G.abs().max()))
    torch.testing.assert_close(GTu, G.T @ u, rtol=1e-4, atol=1e-6 * float(G.abs().max()))


def test_delta_rule_is_the_restriction_of_the_delta():
    dW = torch.randn(5, 7, dtype=torch.float64)
    v = torch.zeros(7, dtype=torch.float64)
    v[2] = 1
    torch.testing.assert_close(delta_b(dW, v), dW[:, 2])
