"""The model organism: a small Llama pretrained with cross-entropy on real text, then aligned with a
DPO-style preference loss on real preference pairs, with an SFT control and the graded objective
``λ·L_pref + (1 − λ)·L_CE(chosen)``. These are the two training regimes whose weight changes the
read/write hypothesis contrasts (preference losses concentrate on what the model reads, CE writes into
the prediction subspace), built offline and deterministically so that the quickstart and the tests
have a real base/aligned pair.

- :mod:`.config`: the settings, their validation, the stage cache key and the ``reduced`` variant;
- :mod:`.training`: data splits, tokenizer, model, CE pretraining, TRL alignment, ``build_organism`` and its
  held-out ``measure`` of the built models;
- :mod:`.measure`: held-out CE and preference metrics, ``check_aligned``, ``summary_lines`` (imports no build);
- :mod:`.progress`: one bar per training run, the libraries' own bars and log lines off.
"""

from rwedit.apps.organism.config import (KIND, ORGANISM_VERSION, WINDOW, AlignSettings, HeldoutSettings, ModelSettings,
                                         OrganismConfig, PretrainSettings, reduced)
from rwedit.apps.organism.measure import (check_aligned, fmt_mean_ci, heldout_ce, preference_metrics, response_logps,
                                          summary_lines)
from rwedit.apps.organism.progress import quiet_libraries
from rwedit.apps.organism.training import (Organism, PlannedModel, build_organism, build_tokenizer, default_root,
                                           fresh_model, graded_config, heldout_pairs, heldout_texts,
                                           left_truncate_prompt, measure, model_config, pack_documents, planned_model,
                                           preference_dataset, pretraining_texts, training_pairs)
from rwedit.errors import OrganismError

__all__ = ["KIND", "ORGANISM_VERSION", "WINDOW", "AlignSettings", "HeldoutSettings", "ModelSettings", "Organism",
           "OrganismConfig", "OrganismError", "PlannedModel", "PretrainSettings", "build_organism", "build_tokenizer",
           "check_aligned", "default_root", "fmt_mean_ci", "fresh_model", "graded_config", "heldout_ce", "heldout_pairs",
           "heldout_texts", "left_truncate_prompt", "measure", "model_config", "pack_documents", "planned_model",
           "preference_dataset", "preference_metrics", "pretraining_texts", "quiet_libraries", "reduced",
           "response_logps", "summary_lines", "training_pairs"]
