"""The organism's settings: model size, CE pretraining, preference alignment and held-out measurement,
the cache key of each stage, validation, and the seconds-scale ``reduced`` variant.

``OrganismConfig.key`` hashes ``asdict(cfg)``: field names and values are part of every cached stage's
folder name, so renaming a field or changing a default rebuilds every organism (bump
``ORGANISM_VERSION`` when a change alters the weights a config produces instead).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

from rwedit.bundled import HH_RLHF, WIKITEXT_TEST, WIKITEXT_VALID
from rwedit.config import Config, option
from rwedit.errors import OrganismError

ORGANISM_VERSION = 2  # bump when a change here alters the weights a config produces (2: DPO in float32)

#: the organism's context window (max_position_embeddings; RoPE, no learned positions; lm-eval reads it)
WINDOW = 2048

#: the top-level ``experiment:`` value of an organism recipe (the kind ``rwedit run`` dispatches on)
KIND = "organism"


@dataclass(frozen=True)
class ModelSettings(Config):
    """A Llama config small enough to pretrain on 2 CPU cores in minutes."""

    vocab_size: int = option(4096, help="vocabulary of the byte-level BPE trained on the pretraining text")
    hidden: int = option(192, help="hidden size (a multiple of heads)")
    layers: int = option(4, help="decoder layers")
    heads: int = option(4, help="attention heads (as many key/value heads)")
    intermediate: int = option(512, help="MLP intermediate size")
    seq_len: int = option(128, help="pretraining sequence length (tokens)")


@dataclass(frozen=True)
class PretrainSettings(Config):
    """Cross-entropy pretraining on WikiText-2 (validation split) plus the training pairs' prompts."""

    steps: int = option(300, help="optimizer steps")
    batch_size: int = option(32, help="sequences per step")
    lr: float = option(2e-3, help="peak learning rate (cosine schedule after `warmup` steps)")
    warmup: int = option(30, help="linear warmup steps")
    weight_decay: float = option(0.1, help="AdamW weight decay")
    tokens: int | None = option(None, help="cap on the packed corpus in tokens (null: all of it)")
    trajectory_every: int = option(50, help="snapshot interval (steps) for the within-run RSF trajectory "
                                            "(0: none)")


@dataclass(frozen=True)
class AlignSettings(Config):
    """Preference alignment (TRL DPO) and its controls on hh-rlhf training pairs (lines 0–1899)."""

    steps: int = option(160, help="optimizer steps (the same for every λ)")
    batch_size: int = option(8, help="preference pairs per step")
    lr: float = option(3e-4, help="peak learning rate")
    beta: float = option(0.1, help="DPO temperature β")
    max_prompt_tokens: int = option(64, help="prompts are cut from the *left* (the last turns matter) to this "
                                             "many tokens before TRL sees them")
    max_length: int = option(128, help="prompt + response tokens; TRL keeps the start of the response beyond "
                                       "this")
    pairs: int | None = option(1280, help="training pairs used (null: all 1900); steps × batch_size = one pass")
    lambdas: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 1.0),
                                        help="the graded-objective grid λ·L_pref + (1 − λ)·L_CE (each in [0, 1])")
    trajectory_every: int = option(40, help="RSF trajectory interval (steps) of the aligned run (0: none)")


@dataclass(frozen=True)
class HeldoutSettings(Config):
    """Held-out measurements reported before/after each stage."""

    pairs: int = option(412, help="held-out hh-rlhf pairs (lines 1900–2311; at least 2)")
    texts: int = option(64, help="held-out WikiText-2 test sequences for the CE loss (at least 2)")


@dataclass(frozen=True)
class OrganismConfig(Config):
    """The whole organism: seed, model, the three stages' settings and the data they read."""

    _section = "organism"
    #: the kind an organism recipe names (``rwedit run`` dispatches on it); a class constant, not a setting
    experiment: ClassVar[str] = KIND

    seed: int = option(0, help="seed of the initialisation and of every trainer (same seed, same weights)")
    model: ModelSettings = option(factory=ModelSettings, help="the Llama's size")
    pretrain: PretrainSettings = option(factory=PretrainSettings, help="CE pretraining")
    align: AlignSettings = option(factory=AlignSettings, help="preference alignment and the graded objective")
    eval: HeldoutSettings = option(factory=HeldoutSettings, help="held-out measurements")
    pretrain_text: tuple[str, ...] = option((str(WIKITEXT_VALID),), path=True,
                                            help="pretraining text files (plus the training pairs' prompts)")
    pairs_data: str = option(str(HH_RLHF), path=True, help="hh-rlhf style preference pairs (JSONL)")
    heldout_text: str = option(str(WIKITEXT_TEST), path=True, help="held-out text for the CE loss")
    threads: int | None = option(None, help="torch threads (null: torch's default); not part of any cache key")

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, base_dir: str | Path | None = None,
                  where: str = "") -> "OrganismConfig":
        """The settings from a mapping; at the top level, an organism recipe's shape (``experiment: organism``
        beside an ``organism:`` section) is accepted too."""
        if isinstance(data, dict) and not where:
            data = _unwrap(data, "")
        return super().from_dict(data, base_dir=base_dir, where=where)

    def validate(self) -> None:
        m, a = self.model, self.align
        if m.hidden % m.heads:
            raise OrganismError(f"model.hidden ({m.hidden}) must be a multiple of model.heads ({m.heads})")
        if a.max_prompt_tokens >= a.max_length:
            raise OrganismError(f"align.max_prompt_tokens ({a.max_prompt_tokens}) must be below align.max_length "
                                f"({a.max_length}): a prompt that fills the budget leaves nothing to score")
        for name, v in (("model.seq_len", m.seq_len), ("align.max_length", a.max_length)):
            if v > WINDOW:
                raise OrganismError(f"{name} = {v} tokens is longer than the organism's context window of {WINDOW} "
                                    f"positions; set it to at most {WINDOW}")
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
        # data by content, not by path: the same organism from another clone or install reuses its cache
        base = {"version": ORGANISM_VERSION, "seed": self.seed, "model": d["model"],
                "pretrain_text": _content_id(d["pretrain_text"]), "pairs_data": _content_id(d["pairs_data"])}
        base.update({p: d[p] for p in parts})
        return hashlib.sha256(json.dumps(base, sort_keys=True).encode()).hexdigest()[:16]


def _content_id(source: Any) -> Any:
    """sha256 of a data file's bytes (a name that is not a local file stays as written; lists item by item)."""
    from rwedit.bundled import resolve

    if isinstance(source, (list, tuple)):
        return [_content_id(s) for s in source]
    path = Path(str(resolve(source)))
    if not path.is_file():
        return str(source)
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def _unwrap(raw: dict[str, Any], where: str, section: str = "organism") -> dict[str, Any]:
    """The settings mapping of an organism recipe: its ``section`` when present (beside nothing but
    ``experiment:``), else the mapping itself less ``experiment:``, which must name this kind."""
    raw = dict(raw)
    kind = raw.pop("experiment", KIND)
    if kind != KIND:
        raise OrganismError(f"{where}experiment: {kind!r} is not an organism recipe (expected "
                            f"`experiment: {KIND}`)")
    if section in raw:
        extra = sorted(set(raw) - {section})
        if extra:
            raise OrganismError(f"{where}{extra[0]}: unknown top-level key (an organism recipe has `experiment:` "
                                f"and `{section}:`)")
        raw = raw[section]
        if not isinstance(raw, dict):
            raise OrganismError(f"{where}{section}: must be a mapping of settings")
    return dict(raw)


def reduced(cfg: OrganismConfig | None = None) -> OrganismConfig:
    """A seconds-scale organism for tests and smoke runs: tiny dims, few steps, same pipeline (seed and data
    paths are kept from ``cfg``)."""
    cfg = OrganismConfig() if cfg is None else cfg
    return replace(
        cfg,
        model=ModelSettings(vocab_size=512, hidden=32, layers=2, heads=2, intermediate=64, seq_len=64),
        pretrain=PretrainSettings(steps=60, batch_size=16, lr=3e-3, warmup=5, tokens=60_000, trajectory_every=20),
        align=AlignSettings(steps=40, batch_size=8, lr=2e-3, beta=0.1, max_prompt_tokens=40, max_length=64,
                            pairs=320, lambdas=(0.0, 1.0), trajectory_every=20),
        eval=HeldoutSettings(pairs=96, texts=16),
    )


__all__ = ["KIND", "ORGANISM_VERSION", "WINDOW", "AlignSettings", "HeldoutSettings", "ModelSettings",
           "OrganismConfig", "PretrainSettings", "reduced"]
