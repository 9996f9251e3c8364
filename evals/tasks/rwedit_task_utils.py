"""Data loaders and per-document results of rwedit's bundled lm-eval tasks.

lm-eval imports this file by its path beside the task YAMLs (``!function rwedit_task_utils.NAME``), so the
tasks work with plain ``lm_eval --include_path $(rwedit tasks --path)`` as well as inside rwedit. Each loader
is a ``custom_dataset``: lm-eval calls it with the task's metadata and expects ``{split: Dataset}``."""

import re


def _test_split(rows):
    import datasets

    return {"test": datasets.Dataset.from_list(rows)}


def hh_preference(**metadata):
    """Held-out hh-rlhf pairs 1900-2311 (never used to build edits or to train the organism)."""
    from rwedit.evals.bundled_tasks import hh_preference_items

    return _test_split(hh_preference_items())


def blimp(**metadata):
    """BLiMP minimal pairs of 8 paradigms, interleaved round-robin (a --limit samples each paradigm)."""
    from rwedit.evals.bundled_tasks import blimp_items

    return _test_split(blimp_items())


def wikitext(**metadata):
    """The 62 WikiText-2 test articles, split at their top-level headings."""
    from rwedit.evals.bundled_tasks import wikitext_articles

    return _test_split([{"page": t} for t in wikitext_articles()])


def process_results(doc, results):
    """Weighted perplexities of one rolling-log-likelihood document, as lm-eval's own wikitext task reports them."""
    (loglikelihood,) = results
    text = doc["page"]
    words = len(re.split(r"\s+", text.strip()))
    n_bytes = len(text.encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
