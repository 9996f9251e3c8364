"""The organism's held-out metrics: next-token CE on WikiText-2 test sequences, response log-probabilities
and preference metrics on held-out hh-rlhf pairs (lines 1900–2311, never trained on), the alignment check,
and the summary table. Functions of a model or a report only: :func:`.training.measure` applies them to the
built models (so the build imports this module, never the other way)."""

from __future__ import annotations

from typing import Sequence

import torch

from rwedit.data import PreferencePair
from rwedit.errors import OrganismError
from rwedit.stats import interval, mean_se


@torch.no_grad()
def heldout_ce(model, ids: torch.Tensor, batch_size: int = 16) -> tuple[float, float]:
    """Mean next-token cross-entropy over held-out sequences and its standard error (per sequence)."""
    from rwedit.data import batches
    from rwedit.scoring import token_ce

    model.eval()
    per = [token_ce(model, b[i:i + 1]) for b in batches(ids, batch_size) for i in range(b.shape[0])]
    return mean_se(torch.stack(per))


@torch.no_grad()
def response_logps(model, tokenizer, pairs: Sequence[PreferencePair], max_len: int,
                   batch_size: int = 16) -> dict[str, torch.Tensor]:
    """log p(chosen | prompt), log p(rejected | prompt) and response token counts per held-out pair."""
    from rwedit.scoring import encode_pairs, response_logprob

    model.eval()
    out: dict[str, list[torch.Tensor]] = {"chosen": [], "rejected": [], "n_chosen": [], "n_rejected": []}
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        prompts = [p.prompt for p in chunk]
        for side in ("chosen", "rejected"):
            enc = encode_pairs(tokenizer, prompts, [getattr(p, side) for p in chunk], max_len)
            out[side].append(response_logprob(model, enc).double().cpu())
            out[f"n_{side}"].append(enc.response_mask[:, 1:].sum(-1).double())
    return {k: torch.cat(v) for k, v in out.items()}


def preference_metrics(policy: dict[str, torch.Tensor], ref: dict[str, torch.Tensor] | None) -> dict[str, float]:
    """Raw and length-normalised preference accuracy, the margin, and — against a reference — the
    implicit-reward accuracy ``(Δ log π)(chosen) > (Δ log π)(rejected)`` and the paired margin shift."""
    margin = policy["chosen"] - policy["rejected"]
    norm = policy["chosen"] / policy["n_chosen"] - policy["rejected"] / policy["n_rejected"]
    out: dict[str, float] = {}
    items = [("pref_acc", (margin > 0).double()), ("pref_acc_norm", (norm > 0).double()), ("pref_margin", margin)]
    if ref is not None:
        ref_margin = ref["chosen"] - ref["rejected"]
        items += [("implicit_reward_acc", (margin - ref_margin > 0).double()), ("margin_shift", margin - ref_margin)]
    for name, x in items:
        out[name], out[f"{name}_stderr"] = mean_se(x)
    out["n_pairs"] = int(margin.numel())
    return out


def check_aligned(report: dict) -> None:
    """The aligned model must prefer held-out chosen responses measurably more than the pretrained one
    (paired margin shift with its 95% interval above 0); otherwise the organism is not aligned."""
    a = report.get("models", {}).get("lambda_1")
    if a is None:
        raise OrganismError("no aligned model (λ = 1) was built")
    shift = interval(a["margin_shift"], a["margin_shift_stderr"])
    if not shift.low > 0:
        raise OrganismError(
            f"the aligned organism is not aligned: held-out margin shift {shift.text()} (95% interval; "
            f"implicit-reward accuracy {a['implicit_reward_acc']:.3f}); raise align.steps or align.lr")


def summary_lines(report: dict) -> list[str]:
    """Markdown lines: held-out CE and preference metrics per model, with standard errors."""
    pt = report["pretrain"]
    lines = [f"Organism: Llama, {pt['params'] / 1e6:.2f} M parameters, {pt['tokens_seen'] / 1e6:.2f} M pretraining "
             f"tokens seen ({pt['tokens_per_second']} tokens/s); folders under `{report['root']}`.", "",
             "| model | held-out CE (WikiText-2 test) | pref acc | pref acc (length-norm.) | implicit-reward acc "
             "| margin shift vs pretrained (nats) |", "|---|---|---|---|---|---|"]
    lines.append(f"| random init | {pt['heldout_ce_init'][0]:.3f} ± {pt['heldout_ce_init'][1]:.2g} | | | | |")

    def pm(d, k):
        return f"{d[k]:.3f} ± {d[k + '_stderr']:.2g}" if k in d else ""

    for name, d in report["models"].items():
        label = {"pretrained": "pretrained (CE)", "lambda_1": "aligned (DPO, λ=1)",
                 "lambda_0": "SFT control (λ=0)"}.get(name, f"graded λ={d.get('lambda')}")
        ce = d["heldout_ce"]
        lines.append(f"| {label} | {ce[0]:.3f} ± {ce[1]:.2g} | {pm(d, 'pref_acc')} | {pm(d, 'pref_acc_norm')} | "
                     f"{pm(d, 'implicit_reward_acc')} | {pm(d, 'margin_shift')} |")
    lines.append("")
    lines.append(f"Held-out: {report['models']['pretrained']['n_pairs']} hh-rlhf pairs (lines 1900–2311, never "
                 "trained on); ± is one standard error over pairs (sequences for CE); the margin shift is paired.")
    return lines


def fmt_mean_ci(mean: float, se: float) -> str:
    """``mean [low, high]`` with the 95% normal interval of a single estimate."""
    return interval(mean, se).text()


__all__ = ["check_aligned", "fmt_mean_ci", "heldout_ce", "preference_metrics", "response_logps",
           "summary_lines"]
