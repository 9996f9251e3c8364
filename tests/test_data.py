"""Data sources: bundled files, the fixed preference split, hh-rlhf parsing, packing."""

from __future__ import annotations

import gzip
import json

import pytest

from rwedit.bundled import HH_HELDOUT, HH_RLHF, HH_TRAIN, resolve
from rwedit.data import pack_tokens, read_pairs, read_texts, split_hh
from rwedit.errors import DataError


def test_bundled_files_match_the_checksums_in_their_readme():
    """Every bundled file is listed in rwedit/bundled/README.md with its SHA-256, and matches it."""
    import hashlib
    import re

    from rwedit.bundled import ROOT

    table = dict(re.findall(r"^\| `([^`]+)` \| `([0-9a-f]{64})` \|$", (ROOT / "README.md").read_text(), re.M))
    shipped = {str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and p.parent != ROOT}
    assert shipped and set(table) == shipped, "files without a checksum row, or rows without a file"
    for rel, digest in table.items():
        assert hashlib.sha256((ROOT / rel).read_bytes()).hexdigest() == digest, rel
    with pytest.raises(FileNotFoundError, match="bundled files"):
        resolve("bundled:nope.txt")


def test_fixed_split_is_disjoint_and_complete():
    train, held = read_pairs(HH_RLHF, indices=HH_TRAIN), read_pairs(HH_RLHF, indices=HH_HELDOUT)
    assert len(train) == 1900 and len(held) == 412
    with gzip.open(HH_RLHF, "rt") as f:
        lines = [json.loads(l) for l in f]
    assert split_hh(lines[1900]["chosen"], lines[1900]["rejected"]) == held[0]


def test_hh_pairs_split_at_the_last_assistant_turn():
    p = split_hh("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: no.",
                 "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: joke?\n\nAssistant: sure!")
    assert p.prompt.endswith("joke?\n\nAssistant:") and p.chosen == " no." and p.rejected == " sure!"


def test_packing_keeps_the_budget_and_separates_texts(wiki_tokenizer):
    texts = read_texts("bundled:wikitext-2/valid.txt.gz", limit=300)
    ids = pack_tokens(wiki_tokenizer, texts, seq_len=50, token_budget=1000)
    assert ids.shape == (20, 50)
    assert (ids == wiki_tokenizer.eos_token_id).sum() > 0
    with pytest.raises(DataError, match="token_budget >= seq_len"):
        pack_tokens(wiki_tokenizer, texts, seq_len=50, token_budget=10)
