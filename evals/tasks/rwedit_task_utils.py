"""Per-document results of the rolling language-modelling task (weighted perplexities, as lm-eval's
own wikitext task reports them)."""

import re


def process_results(doc, results):
    (loglikelihood,) = results
    text = doc["page"]
    words = len(re.split(r"\s+", text.strip()))
    n_bytes = len(text.encode("utf-8"))
    return {
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, n_bytes),
        "bits_per_byte": (loglikelihood, n_bytes),
    }
