"""On a CUDA device rwedit's numbers equal the CPU's to float tolerance: activation statistics, the gradient
closed form's G v, adapters (logits of every condition) and the direct scores. Marked ``cuda`` and skipped
where torch sees no CUDA device (``python -m pytest -m cuda`` on a GPU machine runs only these)."""

from __future__ import annotations

import copy

import pytest
import torch

from rwedit.architectures import model_layout
from rwedit.data import pack_tokens, read_pairs
from rwedit.editor.adapters import attach_conditions
from rwedit.editor.closed_forms import Probe, gradient_products
from rwedit.editor.edits import EditCondition, RankOneEdit
from rwedit.probes.activations import StatsSettings, collect_activation_stats
from conftest import HH_RLHF
from tiny_models import tiny_model

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")]


@pytest.fixture(autouse=True)
def no_tf32():
    """Full float32 matmuls on the GPU (TF32 would round inputs to 10 mantissa bits)."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "phi3"])
def test_statistics_on_cuda_equal_cpu(model_type, wiki_tokenizer, wiki_texts):
    model = tiny_model(model_type, vocab_size=len(wiki_tokenizer))
    ids = pack_tokens(wiki_tokenizer, wiki_texts, 32, 32 * 8)
    settings = StatsSettings(roles=("q", "o", "up", "down"), batch_size=4)
    cpu = collect_activation_stats(model, ids, settings, progress=False)
    gpu = collect_activation_stats(copy.deepcopy(model).to("cuda"), ids, settings, progress=False)
    layout = model_layout(model)
    for layer in range(layout.n_layers):
        for role in settings.roles:
            a, b = cpu.second_moment(layer, role), gpu.second_moment(layer, role)
            assert b.device.type == "cpu" and b.dtype == torch.float64
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6 * float(a.abs().max()))


@pytest.mark.parametrize("model_type,role", [("llama", "q"), ("gpt2", "k"), ("phi3", "down")])
def test_gradient_products_on_cuda_equal_cpu(model_type, role, wiki_tokenizer):
    pairs = read_pairs(HH_RLHF, limit=6)
    model = tiny_model(model_type, vocab_size=len(wiki_tokenizer))
    view = model_layout(model).view(1, role)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(view.d_in, generator=g, dtype=torch.float64)
    probes = [Probe(1, role, v, "Gv")]
    (cpu,) = gradient_products(model, probes, "preference", pairs, tokenizer=wiki_tokenizer, batch_size=3, max_len=64)
    (gpu,) = gradient_products(copy.deepcopy(model).to("cuda"), probes, "preference", pairs, tokenizer=wiki_tokenizer,
                               batch_size=3, max_len=64)
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-4, atol=1e-6 * float(cpu.abs().max()))


def test_adapters_switch_on_cuda_with_the_cpu_logits(wiki_tokenizer):
    model = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    layout = model_layout(model)
    g = torch.Generator().manual_seed(1)
    conds = []
    for role in ("q", "down"):
        view = layout.view(1, role)
        u, w = torch.randn(view.d_out, generator=g, dtype=torch.float64), torch.randn(view.d_in, generator=g, dtype=torch.float64)
        conds.append(EditCondition(f"{role}_edit", "given", 3.0,
                                   [RankOneEdit(1, role, u / u.norm(), w / w.norm(), alpha=3.0)]))
    ids = torch.randint(3, model.config.vocab_size, (2, 16), generator=g)
    cpu_model = attach_conditions(copy.deepcopy(model), conds)
    gpu_model = attach_conditions(copy.deepcopy(model).to("cuda"), conds)
    with torch.no_grad():
        for c in conds:
            cpu_model.set_adapter(c.name)
            gpu_model.set_adapter(c.name)
            a, b = cpu_model(ids).logits, gpu_model(ids.to("cuda")).logits.cpu()
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)


def test_direct_scores_on_cuda_equal_cpu(wiki_tokenizer):
    from rwedit.evals.direct import DirectScorer, DirectSettings

    model = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    settings = DirectSettings(pairs=8, texts=4, seq_len=32, max_len=64, batch_size=4)
    cpu = DirectScorer(model, wiki_tokenizer, settings)
    gpu = DirectScorer(copy.deepcopy(model).to("cuda"), wiki_tokenizer, settings)
    torch.testing.assert_close(gpu.base_margin, cpu.base_margin, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gpu.base_ce, cpu.base_ce, rtol=1e-4, atol=1e-4)
