"""``python -m rwedit`` is ``python -m rwedit.cli``: the spine names the top layer's module to run, and imports
nothing from it."""

import runpy

runpy.run_module("rwedit.cli", run_name="__main__", alter_sys=True)
