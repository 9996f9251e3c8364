"""Real data shipped with rwedit (see README.md here for licences and sources)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parent
PREFIX = "bundled:"

#: fixed, documented split of hh-rlhf harmless-base test pairs by line index
HH_TRAIN = range(0, 1900)
HH_HELDOUT = range(1900, 2312)

WIKITEXT_VALID = ROOT / "wikitext-2" / "valid.txt.gz"
WIKITEXT_TEST = ROOT / "wikitext-2" / "test.txt.gz"
HH_RLHF = ROOT / "hh-rlhf" / "harmless-base-test.jsonl.gz"
BLIMP = ROOT / "blimp"


def resolve(path: str | Path) -> Path | str:
    """``bundled:<rel>`` -> the installed file; anything else unchanged."""
    s = str(path)
    if not s.startswith(PREFIX):
        return path
    p = ROOT / s[len(PREFIX):]
    if not p.exists():
        have = sorted(str(q.relative_to(ROOT)) for q in ROOT.rglob("*.gz"))
        from rwedit.errors import DataNotFoundError

        raise DataNotFoundError(f"no bundled file {s!r}; bundled files: {', '.join(have)}")
    return p
