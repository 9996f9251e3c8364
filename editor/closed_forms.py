"""Closed-form write directions ``b`` for a read direction ``v`` (and the transposed forms for
write-pathway controls): the observed delta restricted to ``v``, or the accumulated gradient of an
objective restricted to ``v``, computed with hooks without ever materialising ``G``."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from rwedit.lazy import torch
from tqdm.auto import tqdm

from rwedit.architectures import model_layout
from rwedit.data import PreferencePair, batches
from rwedit.errors import DataError, NonFiniteError
from rwedit.runtime import runtime
from rwedit.scoring import encode_pairs, response_logprob, token_ce


def delta_b(delta: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``b ∝ ΔW_obs v`` (unnormalised; d_out)."""
    return delta.double() @ v.double()


def delta_v(delta: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``w ∝ ΔW_obsᵀ u``: the input direction that pairs with a fixed output direction ``u``."""
    return delta.double().T @ u.double()


@dataclass(frozen=True)
class Probe:
    """One product to accumulate: ``G v`` (``side="Gv"``) or ``Gᵀ u`` (``side="GTu"``) for a role."""

    layer: int
    role: str
    vector: torch.Tensor
    side: str = "Gv"


def _objective_batches(model, tokenizer, objective: str, data, batch_size: int, max_len: int):
    """Yield scalar losses whose gradient is G (summing over batches sums G)."""
    if objective == "preference":
        pairs: Sequence[PreferencePair] = data
        if not pairs:
            raise DataError("the preference objective needs at least one pair")
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i:i + batch_size]
            prompts = [p.prompt for p in chunk]
            ch = response_logprob(model, encode_pairs(tokenizer, prompts, [p.chosen for p in chunk], max_len))
            rj = response_logprob(model, encode_pairs(tokenizer, prompts, [p.rejected for p in chunk], max_len))
            # loss = −mean margin over the whole set, so −G points to a larger margin
            yield -(ch - rj).sum() / len(pairs)
    elif objective == "ce":
        ids: torch.Tensor = data
        if ids.numel() == 0:
            raise DataError("the ce objective needs at least one sequence")
        n = ids.shape[0]
        for chunk in batches(ids, batch_size):
            yield token_ce(model, chunk) * chunk.shape[0] / n
    else:
        raise DataError(f"unknown objective {objective!r}; use 'preference' or 'ce'")


def gradient_products(model: torch.nn.Module, probes: Sequence[Probe], objective: str, data, tokenizer=None,
                      batch_size: int = 4, max_len: int = 256) -> list[torch.Tensor]:
    """``G v`` or ``Gᵀ u`` for each probe, ``G = ∂L/∂W = Σ_t δ_t a_tᵀ`` of the role's ``W``, from a forward hook
    (``a_t·v`` or ``a_t``) and a gradient hook (``δ_t``): nothing d_out × d_in is formed; products on the
    module's device, sums in float64 on the CPU (a placed model gives the ``G v`` of the model held whole)."""
    layout = model_layout(model)
    out = [None] * len(probes)
    acc = [torch.zeros(layout.view(p.layer, p.role).d_out if p.side == "Gv" else layout.view(p.layer, p.role).d_in,
                       dtype=torch.float64) for p in probes]
    handles = []

    def make_hook(i: int, p: Probe):
        view = layout.view(p.layer, p.role)
        rows = view.rows

        def fwd(module, args, output):
            y = output[0] if isinstance(output, tuple) else output
            if not y.requires_grad:
                return
            # the hook sees the input where the previous module left it; δ_t arrives on the output's device
            a = args[0].detach().to(y.device)
            vec = p.vector.to(device=y.device, dtype=torch.float32)
            if p.side == "Gv":
                coef = a.float() @ vec  # (B, T): a_t · v

                def grad_hook(g):
                    g = g.float() if rows is None else g.float().index_select(-1, rows.to(g.device))
                    acc[i].add_(torch.einsum("bto,bt->o", g, coef).double().cpu())
            else:
                def grad_hook(g):
                    g = g.float() if rows is None else g.float().index_select(-1, rows.to(g.device))
                    coef = g @ vec  # (B, T): δ_t · u
                    acc[i].add_(torch.einsum("bti,bt->i", a.float(), coef).double().cpu())
            y.register_hook(grad_hook)
        return fwd

    for i, p in enumerate(probes):
        handles.append(model.get_submodule(layout.view(p.layer, p.role).module).register_forward_hook(make_hook(i, p)))
    emb = model.get_input_embeddings().register_forward_hook(lambda m, a, o: o.requires_grad_(True))
    req = [q.requires_grad for q in model.parameters()]
    was_training = model.training
    try:
        for q in model.parameters():
            q.requires_grad_(False)  # gradients of activations only; no weight .grad buffers
        model.eval()
        with torch.enable_grad():
            n_batches = -(-len(data) // batch_size)
            for loss in tqdm(_objective_batches(model, tokenizer, objective, data, batch_size, max_len),
                             total=n_batches, desc=f"gradient ({objective})", disable=not runtime().progress, leave=False):
                loss.backward()
    finally:
        for h in handles:
            h.remove()
        emb.remove()
        for q, r in zip(model.parameters(), req):
            q.requires_grad_(r)
        model.train(was_training)
    for i in range(len(probes)):
        out[i] = acc[i]
    return out


def unit(x: torch.Tensor, what: str) -> torch.Tensor:
    n = float(torch.linalg.vector_norm(x))
    if not math.isfinite(n):
        bad = int((~torch.isfinite(x)).sum())
        raise NonFiniteError(f"{what} has {bad} non-finite (NaN/Inf) entries: the model's loss or activations "
                             f"overflowed on the objective data. Check the data (empty or extreme items) and the "
                             f"model's weights; nothing was written")
    if n == 0:
        raise DataError(f"{what} is zero: the closed form gives no direction (is the delta/gradient zero "
                        f"along this v?)")
    return (x / n).double()
