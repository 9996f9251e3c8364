"""The offline quickstart (``rwedit quickstart``): organism → probes → causal control experiment → one report.

- :mod:`.recipe`: ``QuickstartRecipe`` (``recipes/quickstart.yaml``) and its probe settings;
- :mod:`.run`: ``run_quickstart`` (every stage, resumable) and the training-side trajectories and plots;
- :mod:`.report`: the per-claim findings and ``report.md``;
- :mod:`.specificity`: each RW claim against its controls (the other regime, W_base, a random gradient);
- :mod:`.replicate`: the claims of several seeded organisms, per seed and pooled (``findings.csv``).
"""

from rwedit.apps.quickstart.recipe import KIND, ProbeSettings, QuickstartRecipe, reduced
from rwedit.apps.quickstart.replicate import findings_frame, pooled_table, write_findings
from rwedit.apps.quickstart.report import (CLAIM_K, READ_ROLES_CLAIM, WRITE_ROLES_CLAIM, Finding, claim_findings,
                                           claim_series, contrast_lines, findings, findings_table, spectrum_lines,
                                           write_quickstart_report)
from rwedit.apps.quickstart.specificity import compare, rsf_controls, spectrum_rsf
from rwedit.apps.quickstart.run import (QuickstartResult, plot_graded, plot_trajectories, run_quickstart,
                                        training_side)

__all__ = ["CLAIM_K", "KIND", "READ_ROLES_CLAIM", "WRITE_ROLES_CLAIM", "Finding", "ProbeSettings", "QuickstartRecipe",
           "QuickstartResult", "claim_findings", "claim_series", "compare", "contrast_lines", "findings",
           "findings_frame", "findings_table", "plot_graded", "plot_trajectories", "pooled_table", "reduced",
           "rsf_controls", "run_quickstart", "spectrum_lines", "spectrum_rsf", "training_side", "write_findings",
           "write_quickstart_report"]
