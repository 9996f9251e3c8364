"""Loading a model and its tokenizer from a resolved checkpoint folder (no second Hub lookup)."""

from __future__ import annotations

import torch

from rwedit.checkpoints import Checkpoint


def load_model_and_tokenizer(ckpt: Checkpoint, device: str = "cpu", dtype: str = "float32"):
    """``(model.eval(), tokenizer)``; ``device="auto"`` spreads the model with accelerate's device_map."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(ckpt.path)
    except Exception as e:
        raise ValueError(f"{ckpt.source}: no usable tokenizer in {ckpt.path} ({type(e).__name__}); "
                         f"save one with tokenizer.save_pretrained(folder)") from None
    kwargs = {"device_map": "auto"} if device == "auto" else {}
    model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=getattr(torch, dtype), **kwargs)
    if device != "auto":
        model.to(device)
    return model.eval(), tok
