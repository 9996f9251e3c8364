"""Tiny configs, one per registered architecture, built offline (as transformers' own tests do)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, CONFIG_MAPPING

VOCAB = 101

#: model_type -> config kwargs. Sizes are small but keep every layout feature alive: GQA (kv heads <
#: heads), head_dim != hidden / heads (gemma), partial rotary (neox), fused Q/K/V and gate/up.
TINY_CONFIGS: dict[str, dict] = {
    "gpt2": dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, n_inner=48),
    "gpt_neox": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                     rotary_pct=0.5, max_position_embeddings=64, attention_bias=True),
    "llama": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, max_position_embeddings=64),
    "mistral": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                    intermediate_size=48, max_position_embeddings=64, sliding_window=None),
    "qwen2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, max_position_embeddings=64),
    "olmo": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 intermediate_size=48, max_position_embeddings=64),
    "olmo2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=48, max_position_embeddings=64),
    "phi3": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=48, max_position_embeddings=64, original_max_position_embeddings=64,
                 pad_token_id=0),
    "gemma": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, intermediate_size=48, max_position_embeddings=64),
    "gemma2": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   head_dim=16, intermediate_size=48, max_position_embeddings=64,
                   final_logit_softcapping=None, attn_logit_softcapping=None, sliding_window=16),
}


def tiny_config(model_type: str, **overrides):
    kwargs = dict(vocab_size=VOCAB, bos_token_id=1, eos_token_id=2)
    kwargs.update(TINY_CONFIGS[model_type])
    kwargs.update(overrides)
    return CONFIG_MAPPING[model_type](**kwargs)


def tiny_model(model_type: str, seed: int = 0, attn_implementation: str = "eager", **overrides):
    """A randomly initialised tiny causal LM of ``model_type`` in float32, eval mode.

    Weights are re-drawn with a larger spread than the HF init so that edits and deltas are far from
    float noise, and biases get random values so that layouts of bias vectors are exercised too.
    """
    torch.manual_seed(seed)
    config = tiny_config(model_type, **overrides)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "ln_" in name:
                continue
            p.normal_(0.0, 0.3 if p.dim() > 1 else 0.1)
    return model.eval()


def tiny_pair(tokenizer=None, noise: float = 0.05, seed: int = 3, model_type: str = "llama", **overrides):
    """A tiny base model and a "post-trained" copy of it: every parameter plus ``noise`` · N(0, 1) drawn
    from a generator seeded with ``seed``. With a tokenizer the vocabulary is the tokenizer's."""
    if tokenizer is not None:
        overrides.setdefault("vocab_size", len(tokenizer))
    base, post = tiny_model(model_type, **overrides), tiny_model(model_type, **overrides)
    post.load_state_dict(base.state_dict())
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in post.parameters():
            p.add_(noise * torch.randn(p.shape, generator=g))
    return base, post


def save_pair(root, tokenizer, noise: float = 0.05, seed: int = 3, model_type: str = "llama", *, models=None,
              **overrides) -> Path:
    """Save a base/post pair (``tiny_pair(tokenizer, noise, seed, model_type, **overrides)``, or the given
    ``models=(base, post)``) as ``root/base`` and ``root/post``, each with ``tokenizer``; returns ``root``."""
    root = Path(root)
    base, post = models if models is not None else tiny_pair(tokenizer, noise, seed, model_type, **overrides)
    for name, m in (("base", base), ("post", post)):
        m.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root
