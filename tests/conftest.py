"""Shared test setup: tests never reach the Hub, and tiny model helpers are importable."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

import pytest  # noqa: E402

WIKITEXT = SHARED_DATA / "wikitext-2" / "valid.txt.gz"
HH_RLHF = SHARED_DATA / "hh-rlhf" / "harmless-base-test.jsonl.gz"


@pytest.fixture(scope="session")
def wiki_texts():
    """Real calibration text: the first 2,000 non-empty lines of WikiText-2 validation."""
    from rwedit.data import read_texts

    return read_texts(WIKITEXT, limit=2000)


@pytest.fixture(scope="session")
def wiki_tokenizer(wiki_texts):
    """A byte-level BPE tokenizer (vocab 512) trained offline on the calibration text."""
    from rwedit.data import train_bpe_tokenizer

    return train_bpe_tokenizer(wiki_texts[:1000], vocab_size=512)
