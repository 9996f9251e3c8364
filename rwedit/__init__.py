"""rwedit: read/write-pathway probes and rank-1 weight edits for Hugging Face causal LMs."""

__version__ = "0.1.0"
