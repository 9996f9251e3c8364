"""Applications built on the stages: the model organism and the offline quickstart (only the CLI imports them).
Importing this package names their experiment kinds (imported when looked up), so ``rwedit run RECIPE`` dispatches
on ``experiment:``.
"""

from rwedit.evals.core import register_lazy_experiment

register_lazy_experiment("quickstart", "rwedit.apps.kinds:QUICKSTART")
register_lazy_experiment("organism", "rwedit.apps.kinds:ORGANISM")
