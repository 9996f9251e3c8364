"""The model organism (DESIGN §8): a small Llama pretrained with cross-entropy on real text, then
aligned with a DPO-style preference loss on real preference pairs, with an SFT control and the graded
objective ``λ·L_pref + (1 − λ)·L_CE(chosen)`` — the two training regimes the RW paper contrasts, built
offline and deterministically so that the quickstart and the tests have a real base/aligned pair.

Training uses the ecosystem's trainers: ``transformers.Trainer`` for CE pretraining and TRL's
``DPOTrainer`` (``loss_type=["sigmoid", "sft"]``, ``loss_weights=[λ, 1 − λ]``) for every point of the
graded objective; λ = 1 is the aligned model, λ = 0 the SFT control (CE on the chosen responses, same
data, same steps).  Every stage is cached under a hash of the settings it depends on, so a second run
reuses it and an interrupted build restarts at the first unfinished stage.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rwedit.bundled import HH_HELDOUT, HH_RLHF, HH_TRAIN, WIKITEXT_TEST, WIKITEXT_VALID
from rwedit.data import PreferencePair, read_pairs, read_texts
from rwedit.errors import OrganismError  # noqa: F401  (re-exported)

ORGANISM_VERSION = 2  # bump when a change here alters the weights a config produces (2: DPO in float32)


# --- settings -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSettings:
    """A Llama config small enough to pretrain on 2 CPU cores in minutes."""

    vocab_size: int = 4096  # byte-level BPE trained on the pretraining text
    hidden: int = 192
    layers: int = 4
    heads: int = 4
    intermediate: int = 512
    seq_len: int = 128


@dataclass(frozen=True)
class PretrainSettings:
    """Cross-entropy pretraining on WikiText-2 (validation split) plus the training pairs' prompts."""

    steps: int = 300
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 30
    weight_decay: float = 0.1
    tokens: int | None = None  # cap on the packed corpus (None: all of it)
    trajectory_every: int = 50  # snapshot interval for the within-run RSF trajectory (0: none)


@dataclass(frozen=True)
class AlignSettings:
    """Preference alignment (TRL DPO) and its controls on hh-rlhf training pairs (lines 0–1899)."""

    steps: int = 160
    batch_size: int = 8  # pairs per step
    lr: float = 3e-4
    beta: float = 0.1
    max_prompt_tokens: int = 64  # prompts are cut from the *left* (the last turns matter) before TRL sees them
    max_length: int = 128  # prompt + response tokens; TRL keeps the start of the response beyond this
    pairs: int | None = 1280  # training pairs used (None: all 1900); steps x batch_size = one pass
    lambdas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # the graded-objective grid
    trajectory_every: int = 40  # RSF trajectory interval of the aligned run (0: none)


@dataclass(frozen=True)
class EvalSettings:
    """Held-out measurements reported before/after each stage."""

    pairs: int = 412  # held-out hh-rlhf pairs (lines 1900–2311)
    texts: int = 64  # held-out WikiText-2 test sequences for the CE loss


@dataclass(frozen=True)
class OrganismConfig:
    seed: int = 0
    model: ModelSettings = field(default_factory=ModelSettings)
    pretrain: PretrainSettings = field(default_factory=PretrainSettings)
    align: AlignSettings = field(default_factory=AlignSettings)
    eval: EvalSettings = field(default_factory=EvalSettings)
    pretrain_text: tuple[str, ...] = (str(WIKITEXT_VALID),)  # plus the training pairs' prompts
    pairs_data: str = str(HH_RLHF)
    heldout_text: str = str(WIKITEXT_TEST)
    threads: int | None = None  # torch threads (None: torch's default); part of the cache key only via results

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "OrganismConfig":
        d = dict(d or {})
        check_keys(cls, d, "organism")
        sub = {"model": ModelSettings, "pretrain": PretrainSettings, "align": AlignSettings, "eval": EvalSettings}
        for key, kind in sub.items():
            if key in d:
                v = dict(d[key] or {})
                check_keys(kind, v, f"organism.{key}")
                if "lambdas" in v:
                    v["lambdas"] = tuple(float(x) for x in v["lambdas"])
                d[key] = kind(**v)
        if "pretrain_text" in d:
            pt = d["pretrain_text"]
            d["pretrain_text"] = tuple([pt] if isinstance(pt, str) else pt)
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def from_yaml(cls, path: str | Path) -> "OrganismConfig":
        import yaml

        path = Path(path)
        if not path.exists():
            raise OrganismError(f"organism recipe {path} not found")
        raw = yaml.safe_load(path.read_text()) or {}
        return cls.from_dict(raw.get("organism", raw))

    def validate(self) -> None:
        m, a = self.model, self.align
        if m.hidden % m.heads:
            raise OrganismError(f"model.hidden ({m.hidden}) must be a multiple of model.heads ({m.heads})")
        if a.max_prompt_tokens >= a.max_length:
            raise OrganismError(f"align.max_prompt_tokens ({a.max_prompt_tokens}) must be below align.max_length "
                                f"({a.max_length}): a prompt that fills the budget leaves nothing to score")
        bad = [x for x in a.lambdas if not 0.0 <= x <= 1.0]
        if bad:
            raise OrganismError(f"align.lambdas must lie in [0, 1]; got {bad}")
        for name, v in (("pretrain.steps", self.pretrain.steps), ("align.steps", a.steps),
                        ("eval.pairs", self.eval.pairs), ("eval.texts", self.eval.texts)):
            if v < 1 or (name.startswith("eval") and v < 2):
                raise OrganismError(f"{name} must be positive (>= 2 for eval: a standard error needs two items)")

    def key(self, *parts: str) -> str:
        """Hash of what a stage depends on: the settings named by ``parts`` (+ seed, model, data, version)."""
        d = asdict(self)
        base = {"version": ORGANISM_VERSION, "seed": self.seed, "model": d["model"],
                "pretrain_text": d["pretrain_text"], "pairs_data": d["pairs_data"]}
        base.update({p: d[p] for p in parts})
        return hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()[:16]


def check_keys(cls, d: dict, where: str) -> None:
    """Refuse unknown keys with the list of known ones (a typo must not silently fall back to a default)."""
    known = {f.name for f in fields(cls)}
    bad = set(d) - known
    if bad:
        raise OrganismError(f"unknown {where} keys {sorted(bad)}; known: {sorted(known)}")


def reduced(cfg: OrganismConfig = OrganismConfig()) -> OrganismConfig:
    """A seconds-scale organism for tests and smoke runs: tiny dims, few steps, same pipeline."""
    return replace(
        cfg,
        model=ModelSettings(vocab_size=512, hidden=32, layers=2, heads=2, intermediate=64, seq_len=64),
        pretrain=PretrainSettings(steps=60, batch_size=16, lr=3e-3, warmup=5, tokens=60_000, trajectory_every=20),
        align=AlignSettings(steps=40, batch_size=8, lr=2e-3, beta=0.1, max_prompt_tokens=40, max_length=64,
                            pairs=320, lambdas=(0.0, 1.0), trajectory_every=20),
        eval=EvalSettings(pairs=96, texts=16),
    )


# --- data -------------------------------------------------------------------------------------


def training_pairs(cfg: OrganismConfig) -> list[PreferencePair]:
    """The fixed training split (hh-rlhf lines 0–1899), never the held-out lines."""
    n = cfg.align.pairs
    return read_pairs(cfg.pairs_data, limit=n, indices=HH_TRAIN)


def heldout_pairs(cfg: OrganismConfig) -> list[PreferencePair]:
    return read_pairs(cfg.pairs_data, limit=cfg.eval.pairs, indices=HH_HELDOUT)


def pretraining_texts(cfg: OrganismConfig) -> list[str]:
    """WikiText-2 lines plus the *prompts* (not responses) of the training pairs, so that the dialogue
    format is familiar before alignment."""
    texts: list[str] = []
    for src in cfg.pretrain_text:
        texts += read_texts(src)
    texts += [p.prompt for p in training_pairs(replace(cfg, align=replace(cfg.align, pairs=None)))]
    return texts


def pack_documents(tokenizer, texts: Sequence[str], seq_len: int, limit: int | None = None) -> torch.Tensor:
    """``<bos> text <eos>`` documents concatenated and cut into rows of ``seq_len`` (no padding)."""
    stream: list[int] = []
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for t in texts:
        stream += [bos] + tokenizer(t, add_special_tokens=False)["input_ids"] + [eos]
        if limit and len(stream) >= limit:
            break
    n = (min(len(stream), limit or len(stream))) // seq_len
    if n == 0:
        raise OrganismError(f"the pretraining text gives {len(stream)} tokens: fewer than one sequence of {seq_len}")
    return torch.tensor(stream[: n * seq_len], dtype=torch.long).view(n, seq_len)


def left_truncate_prompt(tokenizer, prompt: str, max_tokens: int) -> tuple[str, bool]:
    """Keep the last ``max_tokens`` tokens of ``prompt`` (cut at a token boundary); returns (text, was_cut)."""
    enc = tokenizer(prompt, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return prompt, False
    start = enc["offset_mapping"][-max_tokens][0]
    return prompt[start:], True


# --- building blocks --------------------------------------------------------------------------


def build_tokenizer(cfg: OrganismConfig, texts: Sequence[str]):
    """Byte-level BPE on the pretraining text; ``<pad>``/``<bos>``/``<eos>`` = 0/1/2, as in the model config."""
    from rwedit.data import train_bpe_tokenizer

    tok = train_bpe_tokenizer(texts, vocab_size=cfg.model.vocab_size)
    tok.model_max_length = 2048  # = max_position_embeddings
    return tok


def fresh_model(cfg: OrganismConfig):
    """A randomly initialised Llama from the organism's config (seeded)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    m = cfg.model
    torch.manual_seed(cfg.seed)
    config = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.hidden, num_hidden_layers=m.layers,
                         num_attention_heads=m.heads, num_key_value_heads=m.heads, intermediate_size=m.intermediate,
                         max_position_embeddings=2048,  # RoPE: no learned positions; lm-eval reads its window here
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


@torch.no_grad()
def heldout_ce(model, ids: torch.Tensor, batch_size: int = 16) -> tuple[float, float]:
    """Mean next-token cross-entropy over held-out sequences and its standard error (per sequence)."""
    from rwedit.data import batches
    from rwedit.evals.direct import mean_se
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
    from rwedit.evals.direct import mean_se

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


# --- the build ------------------------------------------------------------------------------


@dataclass
class Organism:
    """Paths of a built organism (HF folders with tokenizer) and its measured report."""

    root: Path
    config: OrganismConfig

    @property
    def pretrained(self) -> Path:
        return self.root / "pretrained"

    @property
    def aligned(self) -> Path:
        return self.lam_dir(1.0)

    @property
    def sft(self) -> Path:
        return self.lam_dir(0.0)

    def lam_dir(self, lam: float) -> Path:
        return self.root / f"graded/lambda_{lam:.2f}"

    def report(self) -> dict:
        p = self.root / "organism.json"
        return json.loads(p.read_text()) if p.exists() else {}


def default_root() -> Path:
    return Path(os.environ.get("RWEDIT_CACHE", Path.home() / ".cache" / "rwedit")) / "organism"


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[organism] {msg}", flush=True)


def _stage(folder: Path, build: Callable[[Path], dict], progress: bool, what: str) -> dict:
    """Run ``build`` into a temporary folder and move it into place when complete (an interrupted stage
    leaves nothing that looks finished); an existing finished stage is reused."""
    done = folder / "stage.json"
    if done.exists():
        _say(progress, f"{what}: reusing {folder}")
        return json.loads(done.read_text())
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    t0 = time.perf_counter()
    info = build(tmp)
    info["seconds"] = round(time.perf_counter() - t0, 1)
    (tmp / "stage.json").write_text(json.dumps(info, indent=2))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    _say(progress, f"{what}: done in {info['seconds']} s")
    return info


def _training_args(kind, out: Path, cfg: OrganismConfig, steps: int, batch: int, lr: float, warmup: int,
                   weight_decay: float, progress: bool, **extra):
    return kind(output_dir=str(out / "trainer"), max_steps=steps, per_device_train_batch_size=batch,
                learning_rate=lr, warmup_steps=warmup, lr_scheduler_type="cosine", weight_decay=weight_decay,
                logging_steps=max(1, steps // 10), save_strategy="no", report_to=[], use_cpu=True, seed=cfg.seed,
                data_seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=not progress, **extra)


class _Snapshots:
    """TrainerCallback that keeps the role weights every N steps (tiny models: a few MB) so that the
    pretraining trajectory can be measured against the *final* model's subspaces afterwards."""

    def __new__(cls, every: int, roles: Sequence[str]):
        from transformers import TrainerCallback

        from rwedit.architectures import get_weight, model_layout

        class Cb(TrainerCallback):
            def __init__(self):
                self.snaps: dict[int, dict] = {}

            def grab(self, model, step):
                layout = model_layout(model)
                self.snaps[step] = {(v.layer, v.role): get_weight(model, v.layer, v.role).detach().float().cpu().clone()
                                    for v in layout.views(roles)}

            def on_train_begin(self, args, state, control, model=None, **kw):
                self.grab(model, 0)

            def on_step_end(self, args, state, control, model=None, **kw):
                if every and state.global_step % every == 0:
                    self.grab(model, state.global_step)

        return Cb()


TRAJECTORY_ROLES = ("q", "k", "v", "o", "up", "gate", "down")


def build_organism(cfg: OrganismConfig = OrganismConfig(), root: str | Path | None = None, progress: bool = True,
                   lambdas: Sequence[float] | None = (0.0, 1.0)) -> Organism:
    """Build (or reuse) tokenizer → pretrained → graded-objective runs for ``lambdas`` (default: the SFT
    control λ = 0 and the aligned model λ = 1; ``None``: the whole grid of ``cfg.align.lambdas``), then
    measure held-out loss and preference metrics into ``organism.json``."""
    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    root = Path(root) if root else default_root()
    org = Organism(root / cfg.key("pretrain", "align", "eval"), cfg)
    org.root.mkdir(parents=True, exist_ok=True)
    (org.root / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    lambdas = tuple(cfg.align.lambdas if lambdas is None else lambdas)

    _stage(org.pretrained, lambda tmp: _pretrain(cfg, tmp, progress), progress, "CE pretraining")
    for lam in lambdas:
        _stage(org.lam_dir(lam), lambda tmp, lam=lam: _align(cfg, org.pretrained, lam, tmp, progress), progress,
               f"graded objective λ={lam:g}" + {1.0: " (preference alignment)", 0.0: " (SFT control)"}.get(lam, ""))
    have, rep = org.report(), org.root / "organism.json"
    stages = [org.pretrained] + [org.lam_dir(lam) for lam in lambdas]
    if all(f"lambda_{lam:g}" in have.get("models", {}) for lam in lambdas) and \
            all((p / "stage.json").stat().st_mtime_ns < rep.stat().st_mtime_ns for p in stages):
        _say(progress, f"held-out measurements: reusing {rep}")
        return org  # no stage was rebuilt since these were measured
    earlier = {lam for lam in _measured(have) if (org.lam_dir(lam) / "stage.json").exists()}
    report = measure(org, sorted(set(lambdas) | earlier), progress)  # keep what was measured before
    (org.root / "organism.json").write_text(json.dumps(report, indent=2))
    return org


def _measured(report: dict) -> set[float]:
    return {float(d["lambda"]) for k, d in report.get("models", {}).items() if k.startswith("lambda_")}


def _pretrain(cfg: OrganismConfig, out: Path, progress: bool) -> dict:
    from transformers import Trainer, TrainingArguments

    p = cfg.pretrain
    texts = pretraining_texts(cfg)
    _say(progress, f"training a {cfg.model.vocab_size}-token byte-level BPE on {len(texts)} texts")
    tok = build_tokenizer(cfg, texts)
    ids = pack_documents(tok, texts, cfg.model.seq_len, p.tokens)
    model = fresh_model(cfg)
    n_params = sum(x.numel() for x in model.parameters())
    held = pack_documents(tok, read_texts(cfg.heldout_text), cfg.model.seq_len, cfg.eval.texts * cfg.model.seq_len)
    ce0 = heldout_ce(model, held)
    _say(progress, f"pretraining a {n_params / 1e6:.2f} M-parameter Llama for {p.steps} steps × {p.batch_size} × "
                   f"{cfg.model.seq_len} tokens on {ids.numel()} tokens (held-out CE at init {ce0[0]:.2f})")
    data = [{"input_ids": r, "labels": r} for r in ids]
    snaps = _Snapshots(p.trajectory_every, TRAJECTORY_ROLES)
    args = _training_args(TrainingArguments, out, cfg, p.steps, p.batch_size, p.lr, p.warmup, p.weight_decay,
                          progress)
    trainer = Trainer(model=model, args=args, train_dataset=data, callbacks=[snaps])
    t0 = time.perf_counter()
    trainer.train()
    secs = time.perf_counter() - t0
    model.eval()
    ce1 = heldout_ce(model, held)
    shutil.rmtree(out / "trainer", ignore_errors=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    torch.save(snaps.snaps, out / "trajectory_snapshots.pt")
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"stage": "pretrain", "params": n_params, "corpus_tokens": int(ids.numel()),
            "tokens_seen": p.steps * p.batch_size * cfg.model.seq_len, "train_seconds": round(secs, 1),
            "tokens_per_second": round(p.steps * p.batch_size * cfg.model.seq_len / secs),
            "heldout_ce_init": ce0, "heldout_ce": ce1, "train_loss": losses}


def preference_dataset(cfg: OrganismConfig, tok) -> tuple[Any, dict]:
    """The training pairs as a ``datasets.Dataset`` for TRL, prompts cut from the left; counts what was cut."""
    import datasets

    rows, cut = [], 0
    for p in training_pairs(cfg):
        prompt, was_cut = left_truncate_prompt(tok, p.prompt, cfg.align.max_prompt_tokens)
        cut += was_cut
        rows.append({"prompt": prompt, "chosen": p.chosen, "rejected": p.rejected})
    return datasets.Dataset.from_list(rows), {"pairs": len(rows), "prompts_cut_from_left": cut}


def graded_config(cfg: OrganismConfig, lam: float, out: Path, progress: bool):
    """TRL's DPOConfig for ``λ·L_sigmoid-DPO + (1 − λ)·L_CE(chosen)``."""
    from trl import DPOConfig

    a = cfg.align
    return _training_args(DPOConfig, out, cfg, a.steps, a.batch_size, a.lr, max(1, a.steps // 20), 0.0, progress,
                          beta=a.beta, loss_type=["sigmoid", "sft"], loss_weights=[float(lam), 1.0 - float(lam)],
                          precompute_ref_log_probs=True, max_length=a.max_length, gradient_checkpointing=False,
                          bf16=False)  # TRL defaults to bf16 autocast: ~5x slower on a CPU, and less exact


def _align(cfg: OrganismConfig, pretrained: Path, lam: float, out: Path, progress: bool) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from rwedit.probes.trajectory import RSFTrajectoryCallback

    tok = AutoTokenizer.from_pretrained(pretrained)
    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32)  # a fresh copy per run
    data, counts = preference_dataset(cfg, tok)
    callbacks = []
    if lam == 1.0 and cfg.align.trajectory_every:
        stats = _calibration_stats(model, tok, cfg)
        from rwedit.probes.grid import GridSettings

        callbacks.append(RSFTrajectoryCallback(out / "trajectory.csv", stats,
                                               GridSettings(roles=TRAJECTORY_ROLES, ks=(1, 4, 16), null_seeds=4),
                                               every_n_steps=cfg.align.trajectory_every))
    args = graded_config(cfg, lam, out, progress)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok, callbacks=callbacks)
    counts["pairs_after_trl"] = len(trainer.train_dataset)
    if counts["pairs_after_trl"] != counts["pairs"]:
        raise OrganismError(f"TRL dropped {counts['pairs'] - counts['pairs_after_trl']} of {counts['pairs']} pairs "
                            f"(prompt fills max_length={cfg.align.max_length}); lower align.max_prompt_tokens")
    t0 = time.perf_counter()
    trainer.train()
    secs = time.perf_counter() - t0
    model = trainer.model
    shutil.rmtree(out / "trainer", ignore_errors=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    hist = trainer.state.log_history
    return {"stage": "graded", "lambda": lam, **counts, "train_seconds": round(secs, 1),
            "train_loss": [h["loss"] for h in hist if "loss" in h]}


def _calibration_stats(model, tok, cfg: OrganismConfig, tokens: int = 16_384):
    """Second moments of the pretrained model's reader inputs on WikiText-2 validation (trajectory subspaces)."""
    from rwedit.probes.activations import StatsSettings, collect_activation_stats

    ids = pack_documents(tok, read_texts(cfg.pretrain_text[0]), cfg.model.seq_len, tokens)
    return collect_activation_stats(model, ids, StatsSettings(roles=TRAJECTORY_ROLES, seq_len=cfg.model.seq_len),
                                    source=cfg.pretrain_text[0], progress=False)


def measure(org: Organism, lambdas: Sequence[float], progress: bool = True) -> dict:
    """Held-out CE and preference metrics of the pretrained model and every built λ run (reference: the
    pretrained model), read back from the saved folders so the numbers describe what was saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = org.config
    tok = AutoTokenizer.from_pretrained(org.pretrained)
    pairs = heldout_pairs(cfg)
    held = pack_documents(tok, read_texts(cfg.heldout_text), cfg.model.seq_len, cfg.eval.texts * cfg.model.seq_len)
    max_len = cfg.align.max_length
    _say(progress, f"measuring held-out CE ({held.shape[0]} WikiText-2 test sequences) and preferences "
                   f"({len(pairs)} held-out hh-rlhf pairs)")

    def load(p):
        return AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32).eval()

    pre = load(org.pretrained)
    ref = response_logps(pre, tok, pairs, max_len)
    report = {"config": asdict(cfg), "root": str(org.root),
              "pretrain": json.loads((org.pretrained / "stage.json").read_text()),
              "models": {"pretrained": {"path": str(org.pretrained), "heldout_ce": heldout_ce(pre, held),
                                        **preference_metrics(ref, None)}}}
    del pre
    for lam in lambdas:
        m = load(org.lam_dir(lam))
        pol = response_logps(m, tok, pairs, max_len)
        report["models"][f"lambda_{lam:g}"] = {
            "path": str(org.lam_dir(lam)), "lambda": lam, "heldout_ce": heldout_ce(m, held),
            **preference_metrics(pol, ref), "stage": json.loads((org.lam_dir(lam) / "stage.json").read_text())}
    return report


def check_aligned(report: dict) -> None:
    """The aligned model must prefer held-out chosen responses measurably more than the pretrained one
    (paired margin shift with its 95% interval above 0); otherwise the organism is not aligned."""
    a = report["models"].get("lambda_1")
    if a is None:
        raise OrganismError("no aligned model (λ = 1) was built")
    lo = a["margin_shift"] - 1.96 * a["margin_shift_stderr"]
    if not lo > 0:
        raise OrganismError(
            f"the aligned organism is not aligned: held-out margin shift {a['margin_shift']:.3g} ± "
            f"{a['margin_shift_stderr']:.2g} (implicit-reward accuracy {a['implicit_reward_acc']:.3f}); "
            f"raise align.steps or align.lr")


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


def fmt_ci(mean: float, se: float) -> str:
    return f"{mean:.3g} [{mean - 1.96 * se:.3g}, {mean + 1.96 * se:.3g}]"


__all__ = ["OrganismConfig", "ModelSettings", "PretrainSettings", "AlignSettings", "EvalSettings", "Organism",
           "build_organism", "reduced", "measure", "check_aligned", "summary_lines"]
