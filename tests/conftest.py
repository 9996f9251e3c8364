"""Shared test setup: tests never reach the Hub, and tiny model helpers are importable."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).parent))

import pytest  # noqa: E402

from rwedit.bundled import HH_RLHF, WIKITEXT_VALID as WIKITEXT  # noqa: E402,F401  the data the package ships


@pytest.fixture(scope="session", autouse=True)
def quiet_session(tmp_path_factory):
    """The module- and session-scoped fixtures run without progress bars, with a statistics cache of the
    session's own (set up before any test's :func:`quiet_runtime`) and an rwedit cache folder of its own
    (``$RWEDIT_CACHE``: the rates ``rwedit plan`` measures are not written to the user's)."""
    from rwedit.runtime import using

    os.environ["RWEDIT_CACHE"] = str(tmp_path_factory.mktemp("rwedit-cache"))
    with using(progress=False, cache_dir=str(tmp_path_factory.mktemp("stats-session"))):
        yield


@pytest.fixture(autouse=True)
def quiet_runtime(tmp_path_factory):
    """Every test runs without progress bars and caches activation statistics in a folder of its own (the
    run-wide settings of rwedit.runtime; a command line sets its own)."""
    from rwedit.runtime import using

    with using(progress=False, cache_dir=str(tmp_path_factory.mktemp("stats"))):
        yield


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


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    """Two runs' rows: the same conditions in the same order (no duplicates), every field equal (floats to
    1e-6), ``seconds`` aside."""
    assert [r["condition"] for r in got] == [r["condition"] for r in want]
    for a, b in zip(got, want):
        a, b = ({k: v for k, v in r.items() if k != "seconds"} for r in (a, b))
        assert a.keys() == b.keys(), a["condition"]
        for k in a:
            if isinstance(a[k], float) or isinstance(b[k], float):
                assert a[k] == pytest.approx(b[k], rel=1e-6, abs=1e-9), (a["condition"], k)
            else:
                assert a[k] == b[k], (a["condition"], k)
