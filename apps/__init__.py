"""Applications built on the stages (probes, editor, evals): the model organism and the offline quickstart.

They sit above the spine and the stages and import them; nothing imports them but the CLI. Importing this
package registers their experiment kinds (``organism`` and ``quickstart``) with
:func:`rwedit.evals.core.register_experiment`, so that ``rwedit run RECIPE`` dispatches on a recipe's
top-level ``experiment:`` key.
"""

from rwedit.apps import kinds as _kinds  # noqa: F401  (registers the experiment kinds)
