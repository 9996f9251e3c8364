"""Sequence log-probabilities of responses given prompts: the one primitive that edits (gradient
closed form), direct behaviour metrics and the organism's preference checks all share."""

from __future__ import annotations

from rwedit.errors import DataError
from rwedit.models import input_device
from dataclasses import dataclass
from typing import Sequence

from rwedit.lazy import LazyModule, torch

F = LazyModule("torch.nn.functional")


@dataclass(frozen=True)
class Encoded:
    """Right-padded ``input_ids``/``attention_mask`` with a mask of the response (scored) tokens."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor  # True where the *label* at position t+1 belongs to the response


def encode_pairs(tokenizer, prompts: Sequence[str], responses: Sequence[str], max_len: int = 256) -> Encoded:
    """Tokenise prompt and response separately and join them; over-long items keep the response
    (up to half the budget) and the *end* of the prompt, where a dialogue's last turns are."""
    if len(prompts) != len(responses):
        raise DataError(f"{len(prompts)} prompts but {len(responses)} responses")
    rows, masks = [], []
    bos = getattr(tokenizer, "bos_token_id", None)
    for p, r in zip(prompts, responses):
        pi = tokenizer(p, add_special_tokens=False)["input_ids"]
        ri = tokenizer(r, add_special_tokens=False)["input_ids"]
        if bos is not None:
            pi = [bos] + pi
        if not ri:
            raise DataError(f"empty response after tokenisation (prompt starts {p[:40]!r})")
        n_p, n_r = fitted_lengths(len(pi), len(ri), max_len)
        pi, ri = pi[len(pi) - n_p:], ri[:n_r]
        if not pi:  # something must precede the first scored token
            pi, ri = ri[:1], ri[1:] or ri
        rows.append(pi + ri)
        masks.append([False] * len(pi) + [True] * len(ri))
    width = max(len(r) for r in rows)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    att = torch.zeros((len(rows), width), dtype=torch.long)
    resp = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (r, m) in enumerate(zip(rows, masks)):
        ids[i, : len(r)] = torch.tensor(r)
        att[i, : len(r)] = 1
        resp[i, : len(r)] = torch.tensor(m)
    return Encoded(ids, att, resp)


def fitted_lengths(prompt: int, response: int, max_len: int) -> tuple[int, int]:
    """The prompt and response lengths :func:`encode_pairs` keeps of an item within ``max_len``: an over-long
    item's response up to half the budget, its prompt the rest."""
    if prompt + response > max_len:
        response = min(response, max(1, max_len // 2))
    return min(prompt, max_len - response), response


def first_scored(prompt_lengths: Sequence[int]) -> int:
    """The first position whose logits a batch of items with these prompt lengths reads: position t's logits score
    token t + 1, so the predecessor of its earliest response token."""
    return max(0, min(prompt_lengths) - 1)


def response_logprob(model, enc: Encoded, rows: int | None = None) -> torch.Tensor:
    """Sum of log p(response token | everything before it) per row (differentiable); ``rows``: at most that many
    rows a forward pass, so that one pass's logits fit a memory budget (:func:`~rwedit.evals.planning.logits_batch`).
    Each pass computes the logits of the positions from its rows' earliest response on (``logits_to_keep``, where
    the model takes it): a prompt's logits are never read."""
    from rwedit.models import keeps_logits

    device = input_device(model)  # a dispatched model's first parameter may be offloaded (meta)
    n, width = enc.input_ids.shape
    keeps, out = keeps_logits(model), []
    for i in range(0, n, rows or n):
        ids, att = enc.input_ids[i:i + (rows or n)].to(device), enc.attention_mask[i:i + (rows or n)].to(device)
        mask = enc.response_mask[i:i + (rows or n)]
        # a row's prompt length: the position of its first response token
        start = first_scored(mask.int().argmax(1).tolist()) if keeps and bool(mask.any(1).all()) else 0
        kw = {"logits_to_keep": width - start} if start else {}
        logits = model(input_ids=ids, attention_mask=att, use_cache=False, **kw).logits[:, :-1]
        logp = torch.stack([log_softmax_row(row).gather(-1, t[:, None]).squeeze(-1)
                            for row, t in zip(logits, ids[:, start + 1:])])
        del logits
        out.append((logp * mask[:, start + 1:].to(device)).sum(-1))
    return torch.cat(out)


def log_softmax_row(logits: torch.Tensor) -> torch.Tensor:
    """The float32 log-softmax of one sequence's logits (positions × vocabulary). Callers take it row by row:
    a whole batch's is another batch × positions × vocabulary floats (1.2 GB for 8 × 256 at a 152k vocabulary)."""
    return torch.log_softmax(logits.float(), dim=-1)


def token_ce(model, ids: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy over packed (unpadded) sequences (differentiable)."""
    device = input_device(model)  # a dispatched model's first parameter may be offloaded (meta)
    ids = ids.to(device)
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
