"""Building the organism: the data splits, the tokenizer and model, CE pretraining, the graded-objective
runs with TRL, the resumable stage cache that ``build_organism`` drives, and its last stage: the built models
measured on held-out data (:mod:`.measure`'s metrics).

Training uses the ecosystem's trainers: ``transformers.Trainer`` for CE pretraining and TRL's
``DPOTrainer`` (``loss_type=["sigmoid", "sft"]``, ``loss_weights=[λ, 1 − λ]``) for every point of the
graded objective; λ = 1 is the aligned model, λ = 0 the SFT control (CE on the chosen responses, same
data, same steps).  Every stage is cached under a hash of the settings it depends on, so a second run
reuses it and an interrupted build restarts at the first unfinished stage.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from rwedit.apps.organism.config import WINDOW, OrganismConfig
from rwedit.apps.organism.measure import heldout_ce, preference_metrics, response_logps
from rwedit.apps.organism.progress import quiet_libraries, use_bar
from rwedit.architectures import LAYER_ROLES
from rwedit.bundled import HH_HELDOUT, HH_TRAIN
from rwedit.data import PreferencePair, read_pairs, read_texts
from rwedit.errors import OrganismError
from rwedit.outputs import atomic_folder, entry_problem, set_aside, write_checksums
from rwedit.runtime import cache_root

# --- data -------------------------------------------------------------------------------------


def training_pairs(cfg: OrganismConfig) -> list[PreferencePair]:
    """The fixed training split (hh-rlhf lines 0–1899), never the held-out lines."""
    return read_pairs(cfg.pairs_data, limit=cfg.align.pairs, indices=HH_TRAIN)


def heldout_pairs(cfg: OrganismConfig) -> list[PreferencePair]:
    """The held-out split (hh-rlhf lines 1900–2311) every evaluation reads."""
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


def heldout_texts(cfg: OrganismConfig, tokenizer) -> torch.Tensor:
    """The held-out WikiText-2 test sequences of the CE loss (``eval.texts`` rows of ``model.seq_len``)."""
    return pack_documents(tokenizer, read_texts(cfg.heldout_text), cfg.model.seq_len,
                          cfg.eval.texts * cfg.model.seq_len)


# --- building blocks --------------------------------------------------------------------------


def build_tokenizer(cfg: OrganismConfig, texts: Sequence[str]):
    """Byte-level BPE on the pretraining text; ``<pad>``/``<bos>``/``<eos>`` = 0/1/2, as in the model config."""
    from rwedit.data import train_bpe_tokenizer

    tok = train_bpe_tokenizer(texts, vocab_size=cfg.model.vocab_size)
    tok.model_max_length = WINDOW
    return tok


def model_config(cfg: OrganismConfig):
    """The ``LlamaConfig`` the organism's settings describe: what ``fresh_model`` builds, and what a recipe is
    checked against before anything is trained (:func:`planned_model`)."""
    from transformers import LlamaConfig

    m = cfg.model
    return LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.hidden, num_hidden_layers=m.layers,
                       num_attention_heads=m.heads, num_key_value_heads=m.heads, intermediate_size=m.intermediate,
                       max_position_embeddings=WINDOW, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                       tie_word_embeddings=False)


def fresh_model(cfg: OrganismConfig):
    """A randomly initialised Llama from the organism's config (seeded)."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(cfg.seed)
    return LlamaForCausalLM(model_config(cfg))


@dataclass(frozen=True)
class PlannedModel:
    """The organism's model as its settings say it will be, before any training: the ``source``, ``config`` and
    ``layout`` that a :class:`~rwedit.checkpoints.Checkpoint` offers, so that a recipe's fit (layers, roles,
    widths, window) is checked against it before the minutes of building it."""

    source: str
    config: Any
    layout: Any


def planned_model(cfg: OrganismConfig) -> PlannedModel:
    """The :class:`PlannedModel` of ``cfg`` (no weights, nothing trained)."""
    from rwedit.architectures import Layout

    config = model_config(cfg)
    m = cfg.model
    return PlannedModel(f"the organism (organism.model: {m.layers} layers, hidden {m.hidden})", config,
                        Layout.from_config(config))


# --- the stage cache ------------------------------------------------------------------------


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
    """Where organisms are cached: ``$RWEDIT_CACHE/organism`` (default ``~/.cache/rwedit/organism``)."""
    return cache_root() / "organism"


def _say(progress: bool, msg: str) -> None:
    if progress:
        print(f"[organism] {msg}", flush=True)


def _stage(folder: Path, build: Callable[[Path], dict], progress: bool, what: str) -> dict:
    """Run ``build`` into a temporary folder and move it into place when complete, its checksums written last
    (an interrupted stage leaves nothing that looks finished); an existing stage is reused when its files
    match them, else it is named, moved aside and built again."""
    if folder.exists():
        problem = entry_problem(folder)
        if problem is None:
            _say(progress, f"{what}: reusing {folder}")
            return json.loads((folder / "stage.json").read_text())
        aside = set_aside(folder, problem)
        print(f"[organism] {what}: the cached stage {folder} is not used: {problem}; moved to {aside}, building it "
              f"again", file=sys.stderr, flush=True)
    with atomic_folder(folder) as tmp:
        t0 = time.perf_counter()
        info = build(tmp)
        info["seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / "stage.json").write_text(json.dumps(info, indent=2))
        write_checksums(tmp)
    _say(progress, f"{what}: done in {info['seconds']} s")
    return info


def _training_args(kind, out: Path, cfg: OrganismConfig, steps: int, batch: int, lr: float, warmup: int,
                   weight_decay: float, **extra):
    """The trainers' shared arguments; their own bar and printed log dicts are off (:func:`.progress.use_bar`
    draws one bar instead)."""
    return kind(output_dir=str(out / "trainer"), max_steps=steps, per_device_train_batch_size=batch,
                learning_rate=lr, warmup_steps=warmup, lr_scheduler_type="cosine", weight_decay=weight_decay,
                logging_steps=max(1, steps // 10), save_strategy="no", report_to="none", use_cpu=True, seed=cfg.seed,
                data_seed=cfg.seed, dataloader_num_workers=0, disable_tqdm=True, **extra)


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


# --- the build ------------------------------------------------------------------------------


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
    with quiet_libraries():  # the stage lines and one bar per training run, not the libraries' chatter
        return _build(org, lambdas, progress)


def _build(org: Organism, lambdas: tuple[float, ...], progress: bool) -> Organism:
    cfg = org.config
    _stage(org.pretrained, lambda tmp: _pretrain(cfg, tmp, progress), progress, "CE pretraining")
    for lam in lambdas:
        _stage(org.lam_dir(lam), lambda tmp, lam=lam: _align(cfg, org.pretrained, lam, tmp, progress), progress,
               _stage_name(lam))
    have, rep = org.report(), org.root / "organism.json"
    stages = [org.pretrained] + [org.lam_dir(lam) for lam in lambdas]
    if all(f"lambda_{lam:g}" in have.get("models", {}) for lam in lambdas) and \
            all((p / "stage.json").stat().st_mtime_ns < rep.stat().st_mtime_ns for p in stages):
        _say(progress, f"held-out measurements: reusing {rep}")
        return org  # no stage was rebuilt since these were measured
    earlier = {lam for lam in _measured(have) if org.lam_dir(lam).exists() and entry_problem(org.lam_dir(lam)) is None}
    report = measure(org, sorted(set(lambdas) | earlier), progress)  # keep what was measured before
    (org.root / "organism.json").write_text(json.dumps(report, indent=2))
    return org


def measure(org: Organism, lambdas: Sequence[float], progress: bool = True) -> dict:
    """Held-out CE and preference metrics of the pretrained model and every built λ run (reference: the
    pretrained model), read back from the saved folders so the numbers describe what was saved."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = org.config
    tok = AutoTokenizer.from_pretrained(org.pretrained)
    pairs = heldout_pairs(cfg)
    held = heldout_texts(cfg, tok)
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


def _stage_name(lam: float) -> str:
    return f"graded objective λ={lam:g}" + {1.0: " (preference alignment)", 0.0: " (SFT control)"}.get(lam, "")


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
    held = heldout_texts(cfg, tok)
    ce0 = heldout_ce(model, held)
    _say(progress, f"pretraining a {n_params / 1e6:.2f} M-parameter Llama for {p.steps} steps × {p.batch_size} × "
                   f"{cfg.model.seq_len} tokens on {ids.numel()} tokens (held-out CE at init {ce0[0]:.2f})")
    data = [{"input_ids": r, "labels": r} for r in ids]
    snaps = _Snapshots(p.trajectory_every, LAYER_ROLES)
    args = _training_args(TrainingArguments, out, cfg, p.steps, p.batch_size, p.lr, p.warmup, p.weight_decay)
    trainer = use_bar(Trainer(model=model, args=args, train_dataset=data, callbacks=[snaps]), "CE pretraining",
                      progress)
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


def graded_config(cfg: OrganismConfig, lam: float, out: Path):
    """TRL's DPOConfig for ``λ·L_sigmoid-DPO + (1 − λ)·L_CE(chosen)``."""
    from trl import DPOConfig

    a = cfg.align
    return _training_args(DPOConfig, out, cfg, a.steps, a.batch_size, a.lr, max(1, a.steps // 20), 0.0,
                          beta=a.beta, loss_type=["sigmoid", "sft"], loss_weights=[float(lam), 1.0 - float(lam)],
                          precompute_ref_log_probs=True, max_length=a.max_length, activation_checkpointing=False,
                          bf16=False)  # TRL defaults to bf16 autocast: ~5x slower on a CPU, and less exact


def _align(cfg: OrganismConfig, pretrained: Path, lam: float, out: Path, progress: bool) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOTrainer

    from rwedit.probes.grid import GridSettings
    from rwedit.probes.trajectory import RSFTrajectoryCallback

    tok = AutoTokenizer.from_pretrained(pretrained)
    model = AutoModelForCausalLM.from_pretrained(pretrained, dtype=torch.float32)  # a fresh copy per run
    data, counts = preference_dataset(cfg, tok)
    callbacks = []
    if lam == 1.0 and cfg.align.trajectory_every:
        stats = _calibration_stats(model, tok, cfg)
        callbacks.append(RSFTrajectoryCallback(out / "trajectory.csv", stats,
                                               GridSettings(roles=LAYER_ROLES, ks=(1, 4, 16), null_seeds=4),
                                               every_n_steps=cfg.align.trajectory_every))
    args = graded_config(cfg, lam, out)
    trainer = use_bar(DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                                 callbacks=callbacks), _stage_name(lam), progress)
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
    return collect_activation_stats(model, ids, StatsSettings(roles=LAYER_ROLES, seq_len=cfg.model.seq_len),
                                    source=cfg.pretrain_text[0], progress=False)


__all__ = ["Organism", "PlannedModel", "build_organism", "build_tokenizer", "default_root", "fresh_model",
           "graded_config", "heldout_pairs", "heldout_texts", "left_truncate_prompt", "measure", "model_config",
           "pack_documents", "planned_model", "preference_dataset", "pretraining_texts", "training_pairs"]
