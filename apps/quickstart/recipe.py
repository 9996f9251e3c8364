"""The quickstart recipe (``recipes/quickstart.yaml``): the organism, the probes of each observed pair,
whether to train the graded-objective grid, the decomposition of the observed update and the causal control
experiment to run on the pair."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rwedit.apps.organism.config import KIND as ORGANISM_KIND, OrganismConfig, reduced as reduced_organism
from rwedit.config import Config, option, resolve_path
from rwedit.errors import ConfigError, RweditError

#: the top-level ``experiment:`` value of a quickstart recipe (the kind ``rwedit run`` dispatches on)
KIND = "quickstart"


@dataclass(frozen=True)
class ProbeSettings(Config):
    """RSF grid and SVD probe of each observed pair (pretrained → aligned, pretrained → SFT)."""

    data: str = option("bundled:wikitext-2/valid.txt.gz", path=True,
                       help="calibration text for the activation subspaces")
    tokens: int = option(32_768, help="calibration tokens")
    seq_len: int = option(128, help="calibration sequence length")
    ks: tuple[int, ...] = option((1, 4, 16, 64), help="subspace dimensions k of the RSF grid")
    null_seeds: int = option(0, help="random subspaces per delta for a seeded null beside the exact one; 0: the "
                             "exact null alone (mean 1, sd in closed form)")
    svd_r: int | str = option("full", help="rank of the SVD probe (`full` for small matrices)")
    svd_null_seeds: int = option(8, help="same-norm random updates per matrix and null kind that HC's verdicts "
                                 "are judged against (one more SVD each; 0: no null, no HC verdict)")

    def __post_init__(self):
        from rwedit.probes.grid import GridSettings

        GridSettings(ks=self.ks, null_seeds=self.null_seeds)  # refused now, not after the organism is built


@dataclass(frozen=True)
class QuickstartRecipe(Config):
    """Organism → probes → trajectories → causal control experiment → one report."""

    _section = "quickstart recipe"

    experiment: str = option(KIND, help=f"the recipe's kind (`{KIND}`): `rwedit run` dispatches on it")
    name: str = option("quickstart", help="run name (also the control experiment's name unless it sets one)")
    organism: OrganismConfig = option(factory=OrganismConfig,
                                      help="the organism: a path to an organism recipe (relative to this file) "
                                           "or an inline mapping with the same keys")
    probe: ProbeSettings = option(factory=ProbeSettings, help="RSF and SVD probes of each observed pair")
    graded: bool = option(False, help="also train every λ of organism.align.lambdas and plot RSF vs λ")
    seeds: int = option(1, help="independently seeded organisms (organism.seed, +1, …), each run and cached apart; "
                        "above 1 every claim is also pooled over them (OUT/seed_S/, OUT/findings.csv)")
    control_experiment: dict = option(
        factory=dict, help="the causal control experiment: a control-experiment recipe without edit.model/post "
                           "(filled in with the organism's pretrained/aligned folders)")
    decompose: dict = option(
        factory=dict, help="which part of the observed update (pretrained → aligned) carries the behaviour, at the "
                           "observed dose: a decompose recipe without model/post (filled in like the control "
                           "experiment's); {}: no decomposition stage")
    base_dir: str | None = option(None, help="the recipe's folder (set when read from a file): relative paths in "
                                             "`control_experiment` resolve from it")

    def __post_init__(self) -> None:
        if self.experiment != KIND:
            raise ConfigError(f"experiment: {self.experiment!r} is not a quickstart recipe "
                              f"(expected `experiment: {KIND}`)")
        if self.seeds < 1:
            raise ConfigError(f"seeds: {self.seeds} organisms; give at least 1")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, base_dir: str | Path | None = None,
                  where: str = "") -> "QuickstartRecipe":
        """The recipe from a mapping; besides the base's checks, ``organism:`` may name an organism recipe
        file, and ``control_experiment:`` must have an ``edit:`` section (its ``name`` defaults to ours)."""
        if isinstance(data, cls) or not isinstance(data, dict):
            return super().from_dict(data, base_dir=base_dir, where=where)
        d = dict(data)
        org = d.get("organism")
        if isinstance(org, (str, Path)):  # a path to an organism recipe, relative to this file
            d["organism"] = OrganismConfig.from_yaml(resolve_path(str(org), base_dir))
        elif isinstance(org, dict) and "organism" in org and set(org) <= {"organism", "experiment"}:
            if org.get("experiment", ORGANISM_KIND) != ORGANISM_KIND:
                raise ConfigError(f"{where + '.' if where else ''}organism.experiment: expected "
                                  f"`{ORGANISM_KIND}`, got {org['experiment']!r}")
            d["organism"] = org["organism"]  # an organism recipe pasted inline, with its `organism:` level
        exp = d.get("control_experiment")
        if not isinstance(exp, dict) or "edit" not in exp:
            raise ConfigError(f"{where + '.' if where else ''}control_experiment: needs an `edit:` section (the "
                              "edit spec without model/post; see recipes/control-experiment.yaml)")
        d["control_experiment"] = {"name": d.get("name", "quickstart"), **exp}
        dec = d.get("decompose")
        if dec:  # a mapping is checked below (anything else by the base, as any other key's type)
            d["decompose"] = {"experiment": "decompose", "name": f"{d.get('name', 'quickstart')}-decompose", **dec}
        if base_dir is not None:
            d.setdefault("base_dir", str(base_dir))
        recipe = super().from_dict(d, base_dir=base_dir, where=where)
        recipe.control_recipe("<model>", "<post>")  # every key, type and name checked now, not after training
        recipe.decompose_recipe("<model>", "<post>")
        return recipe

    def check_fits(self, base, post: str = "<post>") -> None:
        """Before any work: the probe and the control experiment fit ``base`` (a checkpoint, or the organism's
        ``PlannedModel`` before it is built): layers, roles, widths, window; an error names the recipe key."""
        from rwedit.models import check_window
        from rwedit.probes.grid import GridSettings, check_ks

        rec = self.control_recipe(str(base.source), post)
        _fits(base, "probe.seq_len", lambda: check_window(base.config, self.probe.seq_len, "probe.seq_len"))
        _fits(base, "probe.ks", lambda: check_ks(GridSettings(ks=self.probe.ks), base.layout, base.layout.roles()))
        _fits(base, "control_experiment.edit.", lambda: rec.edit.check_fits(base))  # keys relative to the spec
        _fits(base, "control_experiment.", lambda: rec.check_fits(base))  # export names, the scorers' windows
        dec = self.decompose_recipe(str(base.source), post)
        if dec is not None:
            _fits(base, "decompose.", lambda: _decompose_fits(dec, base))

    def control_recipe(self, model: str, post: str):
        """The control experiment's recipe for this base/post pair (its probe off: the quickstart probes the
        pair itself)."""
        from rwedit.evals.experiment import Recipe

        exp = dict(self.control_experiment)
        exp["edit"] = {**exp["edit"], "model": model, "post": post}
        exp["probe"] = {**(exp.get("probe") or {}), "enabled": False}
        return Recipe.from_dict(exp, base_dir=self.base_dir, where="control_experiment")

    def decompose_recipe(self, model: str, post: str):
        """The decomposition's recipe for this base/post pair (None when the recipe has no ``decompose:``)."""
        from rwedit.evals.decompose import DecomposeRecipe

        if not self.decompose:
            return None
        return DecomposeRecipe.from_dict({**self.decompose, "model": model, "post": post}, base_dir=self.base_dir,
                                         where="decompose")


def _decompose_fits(rec, base) -> None:
    """The decomposition's cells (roles, layers, ks below each side's width) and its windows against ``base``."""
    from rwedit.models import check_window

    rec.cells(base.layout)
    for key, section in (("calibration", rec.calibration), ("direct", rec.direct)):
        for name in ("seq_len", "max_len"):
            if section is not None and hasattr(section, name):
                check_window(base.config, getattr(section, name), f"{key}.{name}")


def _fits(base, key: str, check) -> None:
    """Run one fit ``check``; its error is re-raised naming the recipe key (``key``, or ``key`` + the key the
    message starts with when ``key`` ends in a dot), the model, and what to do."""
    try:
        check()
    except RweditError as e:
        msg = str(e).removeprefix(f"{base.source}: ")
        if key.endswith("."):
            key, msg = key + re.match(r"[\w.]*", msg).group(0).rstrip("."), key + msg
        elif not msg.startswith(key):
            msg = f"{key}: {msg}"
        raise type(e)(f"{msg} [the model: {base.source}]. Checked before any work, so nothing was trained or "
                      f"written: change {key} in the quickstart recipe (or run with --set {key}=...)") from None


#: what ``--reduced`` caps each data size at (the stages, layers, edit, controls and verdicts stay the recipe's)
REDUCED_TOKENS, REDUCED_SEQ_LEN, REDUCED_LIMIT, REDUCED_PAIRS, REDUCED_TEXTS = 4096, 64, 8, 48, 8


def _capped(section: dict, **caps) -> dict:
    """``section`` with each key at most its cap (a missing, null or ``all`` value: the cap)."""
    return {**section, **{k: c if section.get(k) in (None, "all") else min(section[k], c) for k, c in caps.items()}}


def _reduced_section(exp: dict) -> dict:
    """A control-experiment or decompose section with its data capped: calibration (under ``edit:`` or at the
    top), lm-eval items, held-out pairs and texts."""
    exp = dict(exp)
    calib = dict(tokens=REDUCED_TOKENS, seq_len=REDUCED_SEQ_LEN)
    if isinstance(exp.get("edit"), dict) and isinstance(exp["edit"].get("calibration"), dict):
        exp["edit"] = {**exp["edit"], "calibration": _capped(exp["edit"]["calibration"], **calib)}
    if isinstance(exp.get("calibration"), dict):
        exp["calibration"] = _capped(exp["calibration"], **calib)
    if isinstance(exp.get("eval"), dict):
        exp["eval"] = _capped(exp["eval"], limit=REDUCED_LIMIT)
    if isinstance(exp.get("direct"), dict):
        exp["direct"] = _capped(exp["direct"], pairs=REDUCED_PAIRS, texts=REDUCED_TEXTS, seq_len=REDUCED_SEQ_LEN)
    return exp


def reduced(recipe: QuickstartRecipe) -> QuickstartRecipe:
    """The seconds-scale quickstart of ``--reduced``: the reduced organism, and the probe's, the control
    experiment's and the decomposition's data capped (calibration tokens and sequence length, lm-eval items,
    held-out pairs and texts); the same stages, parts, edit, controls and verdicts as ``recipe``, so the same path
    runs end to end in a minute."""
    p = recipe.probe
    return replace(recipe, organism=reduced_organism(recipe.organism),
                   control_experiment=_reduced_section(recipe.control_experiment),
                   decompose=_reduced_section(recipe.decompose) if recipe.decompose else {},
                   probe=replace(p, tokens=min(p.tokens, REDUCED_TOKENS), seq_len=min(p.seq_len, REDUCED_SEQ_LEN)))


__all__ = ["KIND", "ProbeSettings", "QuickstartRecipe", "reduced"]
