"""Direct behaviour metrics computed next to lm-eval, each with a standard error (DESIGN §7).

- preference margin ``log p(chosen) − log p(rejected)`` of held-out pairs, its accuracy, and both
  shifted against the base model *per pair* (paired differences: a much smaller stderr);
- KL(base ‖ edited) of next-token distributions on held-out text, mean over sequences;
- cross-entropy / perplexity and their change against the base, paired per sequence.
The base model's reference values are computed once, with the adapters disabled."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rwedit.bundled import HH_HELDOUT, HH_RLHF, WIKITEXT_TEST
from rwedit.data import DataError, batches, pack_tokens, read_pairs, read_texts
from rwedit.evals.lmeval import select
from rwedit.scoring import encode_pairs, response_logprob


@dataclass(frozen=True)
class DirectSettings:
    """Held-out data of the direct metrics (recorded with every result)."""

    pairs: int = 64  # held-out preference pairs
    pairs_data: str = str(HH_RLHF)
    pairs_heldout: tuple[int, int] | None = (HH_HELDOUT.start, HH_HELDOUT.stop)  # line range; None: all lines
    texts: int = 16  # held-out sequences for KL and perplexity
    text_data: str = str(WIKITEXT_TEST)
    seq_len: int = 128
    max_len: int = 256  # prompt + response tokens per preference item
    batch_size: int = 8

    def __post_init__(self):
        if self.pairs < 2 or self.texts < 2:
            raise ValueError("direct.pairs and direct.texts must be >= 2 (a standard error needs two items)")


def mean_se(x: torch.Tensor) -> tuple[float, float]:
    """Mean and its standard error (sd with ddof=1 over sqrt(n))."""
    x = x.double()
    return float(x.mean()), float(x.std(correction=1) / math.sqrt(x.numel()))


class DirectScorer:
    """Holds the encoded held-out data and the base model's reference values."""

    def __init__(self, model, tokenizer, settings: DirectSettings = DirectSettings()):
        self.model, self.tok, self.s = model, tokenizer, settings
        rng = range(*settings.pairs_heldout) if settings.pairs_heldout else None
        pairs = read_pairs(settings.pairs_data, limit=settings.pairs, indices=rng)
        if len(pairs) < 2:
            raise DataError(f"{settings.pairs_data}: only {len(pairs)} held-out pairs; need at least 2")
        self.pairs = pairs
        self.ids = pack_tokens(tokenizer, read_texts(settings.text_data), settings.seq_len,
                               settings.texts * settings.seq_len)
        with select(model, None):
            self.base_margin = self._margins()
            self.base_logp, self.base_ce = self._text_pass(None)

    def _margins(self) -> torch.Tensor:
        out = []
        for i in range(0, len(self.pairs), self.s.batch_size):
            chunk = self.pairs[i: i + self.s.batch_size]
            prompts = [p.prompt for p in chunk]
            ch = response_logprob(self.model, encode_pairs(self.tok, prompts, [p.chosen for p in chunk], self.s.max_len))
            rj = response_logprob(self.model, encode_pairs(self.tok, prompts, [p.rejected for p in chunk], self.s.max_len))
            out.append((ch - rj).double().cpu())
        return torch.cat(out)

    def _text_pass(self, base_logp: list[torch.Tensor] | None):
        """Per-sequence mean CE, and either the log-probs (base pass) or the per-sequence KL(base ‖ this)."""
        dev = next(self.model.parameters()).device
        ces, extra = [], []
        for j, b in enumerate(batches(self.ids, self.s.batch_size)):
            b = b.to(dev)
            logp = torch.log_softmax(self.model(input_ids=b, use_cache=False).logits[:, :-1].float(), dim=-1)
            ces.append(-logp.gather(-1, b[:, 1:, None]).squeeze(-1).mean(-1).double().cpu())
            if base_logp is None:
                extra.append(logp.cpu())
            else:
                ref = base_logp[j].to(dev)
                kl = (ref.exp() * (ref - logp)).sum(-1).mean(-1)  # KL(base ‖ edited), mean over positions
                extra.append(kl.double().cpu())
        return (extra if base_logp is None else torch.cat(extra)), torch.cat(ces)

    @torch.no_grad()
    def score(self, adapter: str | None = None) -> dict[str, float]:
        """All direct metrics of one condition (the base when ``adapter`` is None or "base")."""
        with select(self.model, adapter):
            margin = self._margins()
            kl, ce = self._text_pass(self.base_logp)
        acc = (margin > 0).double()
        base_acc = (self.base_margin > 0).double()
        out = {}
        for name, x in (("pref_margin", margin), ("pref_acc", acc), ("pref_margin_shift", margin - self.base_margin),
                        ("pref_acc_shift", acc - base_acc), ("kl_base_edited", kl), ("ce", ce),
                        ("ce_shift", ce - self.base_ce)):
            m, se = mean_se(x)
            out[name], out[f"{name}_stderr"] = m, se
        ppl_b, ppl = math.exp(float(self.base_ce.mean())), math.exp(out["ce"])
        out["ppl"], out["ppl_stderr"] = ppl, ppl * out["ce_stderr"]  # delta method
        out["ppl_change"] = ppl - ppl_b
        out["ppl_change_stderr"] = ppl * out["ce_shift_stderr"]  # paired, delta method
        out["n_pairs"], out["n_texts"] = len(self.pairs), int(self.ids.shape[0])
        return out
