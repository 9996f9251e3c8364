"""The quickstart recipe (``recipes/quickstart.yaml``): the organism, the probes of each observed pair,
whether to train the graded-objective grid, and the causal control experiment to run on the pair."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rwedit.apps.organism.config import KIND as ORGANISM_KIND, OrganismConfig
from rwedit.config import Config, option, resolve_path
from rwedit.errors import ConfigError

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
    control_experiment: dict = option(
        factory=dict, help="the causal control experiment: a control-experiment recipe without edit.model/post "
                           "(filled in with the organism's pretrained/aligned folders)")
    base_dir: str | None = option(None, help="the recipe's folder (set when read from a file): relative paths in "
                                             "`control_experiment` resolve from it")

    def __post_init__(self) -> None:
        if self.experiment != KIND:
            raise ConfigError(f"experiment: {self.experiment!r} is not a quickstart recipe "
                              f"(expected `experiment: {KIND}`)")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, *, base_dir: str | Path | None = None,
                  where: str = "") -> "QuickstartRecipe":
        """The recipe from a mapping; besides the base's checks, ``organism:`` may name an organism recipe
        file, and ``control_experiment:`` must have an ``edit:`` section (its ``name`` defaults to ours)."""
        if isinstance(data, cls) or not isinstance(data, dict):
            return super().from_dict(data, base_dir=base_dir, where=where)
        d = dict(data)
        if isinstance(d.get("experiment"), dict) and "control_experiment" not in d:
            # recipes written before `experiment:` named the kind held the control experiment there
            d["control_experiment"] = d.pop("experiment")
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
        if base_dir is not None:
            d.setdefault("base_dir", str(base_dir))
        recipe = super().from_dict(d, base_dir=base_dir, where=where)
        recipe.control_recipe("<model>", "<post>")  # every key, type and name checked now, not after training
        return recipe

    def control_recipe(self, model: str, post: str):
        """The control experiment's recipe for this base/post pair (its probe off: the quickstart probes the
        pair itself)."""
        from rwedit.evals.experiment import Recipe

        exp = dict(self.control_experiment)
        exp["edit"] = {**exp["edit"], "model": model, "post": post}
        exp["probe"] = {**(exp.get("probe") or {}), "enabled": False}
        return Recipe.from_dict(exp, base_dir=self.base_dir, where="control_experiment")


__all__ = ["KIND", "ProbeSettings", "QuickstartRecipe"]
