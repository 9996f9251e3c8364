"""Applications built on the stages: the model organism and the offline quickstart (only the CLI imports them).
Importing this package registers their experiment kinds, so ``rwedit run RECIPE`` dispatches on ``experiment:``.
"""

from rwedit.apps import kinds as _kinds  # noqa: F401  (registers the experiment kinds)
