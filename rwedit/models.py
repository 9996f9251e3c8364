"""Loading a model and its tokenizer from a resolved checkpoint folder (no second Hub lookup)."""

from __future__ import annotations

import torch

from rwedit.checkpoints import Checkpoint
from rwedit.errors import CheckpointError, ConfigError, DeviceError

DTYPES = ("float32", "bfloat16", "float16", "float64")


def check_device(device: str) -> str:
    """``device`` if the installed torch can run on it (``auto`` always can: accelerate places the model);
    otherwise a :class:`DeviceError` saying what this torch offers."""
    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise DeviceError(f"device {device!r} is not a device name; use cpu, cuda, cuda:N, mps or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r}: this torch ({torch.__version__}) has no usable CUDA "
                              f"(CPU-only build or no GPU visible); run on cpu, or install a CUDA build of torch")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise DeviceError(f"device {device!r}: MPS is not available here; run on cpu")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise DeviceError(f"device {device!r}: rwedit runs on cpu, cuda or mps (or auto)")
    return device


def context_window(model_or_config) -> int | None:
    """The number of positions a model was built for (None when its config does not say)."""
    config = getattr(model_or_config, "config", model_or_config)
    for name in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_window(model_or_config, length: int, setting: str) -> None:
    """Refuse a sequence length past the model's context window (positions it never saw, or an index
    error for learned position embeddings), naming the setting to change."""
    window = context_window(model_or_config)
    if window is not None and length > window:
        raise ConfigError(f"{setting} = {length} tokens is longer than the model's context window of {window} "
                          f"positions; set {setting} to at most {window}")


def load_model_and_tokenizer(ckpt: Checkpoint, device: str = "cpu", dtype: str = "float32"):
    """``(model.eval(), tokenizer)``; ``device="auto"`` spreads the model with accelerate's device_map."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    check_device(device)
    if dtype not in DTYPES:
        raise DeviceError(f"dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    try:
        tok = AutoTokenizer.from_pretrained(ckpt.path)
    except Exception as e:
        raise CheckpointError(f"{ckpt.source}: no usable tokenizer in {ckpt.path} ({type(e).__name__}); "
                         f"save one with tokenizer.save_pretrained(folder)") from None
    kwargs = {"device_map": "auto"} if device == "auto" else {}
    model = AutoModelForCausalLM.from_pretrained(ckpt.path, dtype=getattr(torch, dtype), **kwargs)
    if device != "auto":
        model.to(device)
    check_finite_weights(model, ckpt.source)
    return model.eval(), tok


def check_finite_weights(model: torch.nn.Module, source: str) -> None:
    """Refuse a model with a NaN/Inf weight (it would be scored, and e.g. an argmax-based task could report
    perfect accuracy), naming the first such parameter."""
    from rwedit.checkpoints import check_finite

    for name, p in model.named_parameters():
        check_finite(p.detach(), f"{source}: parameter {name!r}")
