"""Direct behaviour metrics next to lm-eval, each a mean over held-out items with its standard error
(:func:`rwedit.stats.mean_se`): the preference margin ``log p(chosen) − log p(rejected)`` and its accuracy, both
also shifted against the base *per pair* (paired: a much smaller stderr); KL(base ‖ edited) of next-token
distributions on held-out text; cross-entropy and its change against the base, per sequence. The base's
reference values are computed once, adapters disabled."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from rwedit.lazy import no_grad, torch
from tqdm.auto import tqdm

from rwedit.bundled import HH_HELDOUT, HH_RLHF, WIKITEXT_TEST
from rwedit.config import Config, option
from rwedit.data import batches, pack_tokens, read_pairs, read_texts
from rwedit.editor.interventions import Unchanged, with_adapter
from rwedit.errors import ConfigError, DataError
from rwedit.models import input_device
from rwedit.runtime import runtime
from rwedit.scoring import encode_pairs, log_softmax_row, response_logprob
from rwedit.stats import mean_se


#: suffix of the per-item values stored beside a metric (``pref_margin_shift_items``: one number per pair,
#: in item order, the same items for every condition: any two conditions can be compared item by item)
ITEMS = "_items"
#: the metrics whose per-item values are stored (paired shifts against the reference model)
ITEM_METRICS = ("pref_margin_shift", "ce_shift", "kl_base_edited")

#: every metric DirectScorer.score returns (each with a ``_stderr``)
DIRECT_METRICS = ("pref_margin", "pref_acc", "pref_margin_shift", "pref_acc_shift", "kl_base_edited", "ce",
                  "ce_shift", "ppl", "ppl_change")


@dataclass(frozen=True)
class DirectSettings(Config):
    """Held-out data of the direct metrics (recorded with every result)."""

    pairs: int | Literal["all"] = option("all", help="held-out preference pairs: margin log p(chosen) − log p(rejected) "
                                         "(all, the default: every pair of the held-out range — the paired "
                                         "verdicts' power; a number takes the first n)")
    pairs_data: str = option(str(HH_RLHF), path=True, help="preference pairs (.jsonl[.gz], hh-rlhf format)")
    pairs_heldout: tuple[int, int] | None = option((HH_HELDOUT.start, HH_HELDOUT.stop),
                                                   help="line range of the held-out pairs (null: all lines)")
    texts: int = option(16, help="held-out text sequences for KL(reference ‖ condition) and cross-entropy")
    text_data: str = option(str(WIKITEXT_TEST), path=True, help="held-out text (.txt[.gz], one text per line)")
    seq_len: int = option(128, help="tokens per held-out text sequence")
    max_len: int = option(256, help="prompt + response tokens per preference item")
    batch_size: int = option(8, help="batch size of the direct metrics")
    logits_mb: int | None = option(1024, help="the most memory one forward pass's logits may take (MiB): a batch of "
                                   "long items runs in smaller passes to fit, the metrics the same up to float "
                                   "rounding (null: whole batches)")

    def __post_init__(self):
        if (self.pairs != "all" and self.pairs < 2) or self.texts < 2:
            raise ConfigError("direct.pairs and direct.texts must be >= 2 (a standard error needs two items)")
        if self.logits_mb is not None and self.logits_mb < 1:
            raise ConfigError(f"direct.logits_mb = {self.logits_mb}: give a positive number of MiB or null")

    def rows(self, model, tokens: int) -> int:
        """Rows of ``tokens`` a forward pass takes within :attr:`logits_mb` (the rule lm-eval's batches follow)."""
        from rwedit.evals.planning import logits_batch

        budget = None if self.logits_mb is None else self.logits_mb * 2**20
        return logits_batch(tokens, self.batch_size, int(model.config.vocab_size), budget)


class HeldoutText:
    """Held-out token sequences and the reference model's next-token log-probs on them (taken with adapters
    disabled): the per-sequence KL(reference ‖ model as it is) and cross-entropy, for the direct metrics and
    the control experiment's KL search."""

    def __init__(self, model, ids: torch.Tensor, batch_size: int = 8):
        """``batch_size``: sequences a forward pass (:meth:`DirectSettings.rows` keeps their logits in budget)."""
        self.model, self.ids, self.batch_size = model, ids, batch_size
        with Unchanged().applied(model):
            self.ref_logp, self.ref_ce = self._pass(None)

    @no_grad
    def _pass(self, ref_logp: list[torch.Tensor] | None):
        """Per-sequence mean CE, and either the log-probs (reference pass: one tensor per sequence) or the
        per-sequence KL(ref ‖ this); the log-softmax and the KL's terms are taken one sequence at a time."""
        dev = input_device(self.model)
        ces, extra = [], []
        for b in batches(self.ids, self.batch_size):
            b = b.to(dev)
            for row, ids in zip(self.model(input_ids=b, use_cache=False).logits[:, :-1], b[:, 1:]):
                logp = log_softmax_row(row)
                ces.append(-logp.gather(-1, ids[:, None]).squeeze(-1).mean(-1).double().cpu())
                if ref_logp is None:
                    extra.append(logp.cpu())
                else:
                    ref = ref_logp[len(extra)].to(dev)
                    extra.append((ref.exp() * (ref - logp)).sum(-1).mean(-1).double().cpu())  # KL(reference ‖ this)
        return (extra if ref_logp is None else torch.stack(extra)), torch.stack(ces)

    def kl_ce(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-sequence KL(reference ‖ model as it is) and cross-entropy."""
        return self._pass(self.ref_logp)


class DirectScorer:
    """Holds the encoded held-out data and the base model's reference values."""

    name = "direct"

    def __init__(self, model, tokenizer, settings: DirectSettings = DirectSettings()):
        from rwedit.models import check_window

        self.model, self.tok, self.s = model, tokenizer, settings
        check_window(model, settings.seq_len, "direct.seq_len")
        check_window(model, settings.max_len, "direct.max_len")
        rng = range(*settings.pairs_heldout) if settings.pairs_heldout else None
        pairs = read_pairs(settings.pairs_data, limit=None if settings.pairs == "all" else settings.pairs, indices=rng)
        if len(pairs) < 2:
            raise DataError(f"{settings.pairs_data}: only {len(pairs)} held-out pairs; need at least 2")
        self.pairs = pairs
        self.text = HeldoutText(model, pack_tokens(tokenizer, read_texts(settings.text_data), settings.seq_len,
                                                   settings.texts * settings.seq_len),
                                 settings.rows(model, settings.seq_len))
        self.ids, self.base_ce = self.text.ids, self.text.ref_ce
        with Unchanged().applied(model):
            self.base_margin = self._margins()

    def _margins(self) -> torch.Tensor:
        out = []
        # nested under the runner's condition bar: drawn on a terminal only (None), where it redraws in place; in
        # a log or pipe every redraw of a nested bar is a new line
        for i in tqdm(range(0, len(self.pairs), self.s.batch_size), desc="direct: pairs", leave=False,
                      disable=None if runtime().progress else True):
            chunk = self.pairs[i: i + self.s.batch_size]
            prompts = [p.prompt for p in chunk]
            ch, rj = (self._logprob(encode_pairs(self.tok, prompts, [getattr(p, side) for p in chunk], self.s.max_len))
                      for side in ("chosen", "rejected"))
            out.append((ch - rj).double().cpu())
        return torch.cat(out)

    def _logprob(self, enc) -> torch.Tensor:
        return response_logprob(self.model, enc, self.s.rows(self.model, enc.input_ids.shape[1]))

    @no_grad
    def score(self, adapter: str | None = None) -> dict[str, float]:
        """All direct metrics of the model as it is (``adapter``: that adapter made active first; ``"base"``:
        adapters disabled), paired against the reference values taken when the scorer was built."""
        with with_adapter(self.model, adapter):
            margin = self._margins()
            kl, ce = self.text.kl_ce()
        acc = (margin > 0).double()
        base_acc = (self.base_margin > 0).double()
        out = {}
        for name, x in (("pref_margin", margin), ("pref_acc", acc), ("pref_margin_shift", margin - self.base_margin),
                        ("pref_acc_shift", acc - base_acc), ("kl_base_edited", kl), ("ce", ce),
                        ("ce_shift", ce - self.base_ce)):
            m, se = mean_se(x)
            out[name], out[f"{name}_stderr"] = m, se
            if name in ITEM_METRICS:
                out[name + ITEMS] = [float(v) for v in x]
        ppl_b, ppl = math.exp(float(self.base_ce.mean())), math.exp(out["ce"])
        out["ppl"], out["ppl_stderr"] = ppl, ppl * out["ce_stderr"]  # delta method
        out["ppl_change"] = ppl - ppl_b
        out["ppl_change_stderr"] = ppl * out["ce_shift_stderr"]  # paired, delta method
        out["n_pairs"], out["n_texts"] = len(self.pairs), int(self.ids.shape[0])
        return out


@dataclass(frozen=True)
class EffectSettings(Config):
    """Controls matched in output effect, and what the report says of each condition's effect."""

    match: Literal["norm", "kl", "both"] = option("norm", help=(
        "what the controls share with the edit: norm (the same ‖ΔW‖_F), kl (each control's α searched so that "
        "its KL(base ‖ edited) on held-out text equals the edit's; conditions NAME_kl), or both"))
    texts: int = option(8, help="held-out sequences the KL search runs on: the ones after direct.texts in "
                        "direct.text_data (so the scored KL checks the match on other text)")
    tol: float = option(0.02, help="the KL search stops at |KL / KL_edit − 1| <= tol on its sequences")
    max_steps: int = option(40, help="KL evaluations per control at most (bracketing by doubling, then "
                            "bisection on log α); a control that does not reach the target is marked")
    broken_ce: float = option(0.1, help="a condition whose held-out CE rises by more (nats/token) is flagged "
                              "broken_model in its row and in every verdict that rests on it")
    kl_floor: float = option(1e-4, help="the noise floor of KL(base ‖ edited) (nats/token; 1e-4 moves next-token "
                             "distributions by < 0.7% in total variation): a condition whose 95% KL interval over "
                             "the held-out items lies below it does nothing measurable")

    def __post_init__(self):
        if self.texts < 1 or self.max_steps < 4 or not 0 < self.tol < 1 or self.broken_ce <= 0 or self.kl_floor < 0:
            raise ConfigError(f"effect: texts >= 1, max_steps >= 4, 0 < tol < 1, broken_ce > 0 and kl_floor >= 0 "
                              f"(got texts {self.texts}, max_steps {self.max_steps}, tol {self.tol}, broken_ce "
                              f"{self.broken_ce}, kl_floor {self.kl_floor})")
