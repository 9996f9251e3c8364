"""The YAML recipes the CLI runs as they are (installed as ``rwedit.recipes`` so that ``rwedit quickstart``
finds its defaults from any directory)."""
