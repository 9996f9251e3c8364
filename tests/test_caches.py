"""Caches that check themselves (#27.3): an entry of the activation-statistics cache or of the organism's stage
cache carries the checksums of its files, written last; a changed, truncated, missing or unreadable file is
named, the entry moved aside and recomputed; a write that fails for disk space names the path and the space
needed in readable units."""

from __future__ import annotations

import errno
import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import rwedit.probes.activations as act
from rwedit.data import pack_tokens
from rwedit.errors import CacheError, DiskFullError
from rwedit.outputs import CHECKSUMS, entry_problem, readable_bytes, write_checksums
from tiny_models import tiny_model


@pytest.fixture(scope="module")
def ids(wiki_texts, wiki_tokenizer):
    return pack_tokens(wiki_tokenizer, wiki_texts, seq_len=16, token_budget=16 * 6)


@pytest.fixture(scope="module")
def model(wiki_tokenizer):
    return tiny_model("llama", vocab_size=len(wiki_tokenizer))


SETTINGS = act.StatsSettings(roles=("q", "down"), batch_size=3)


def _cached(model, ids, cache):
    return act.cached_activation_stats(model, ids, SETTINGS, cache_dir=cache, progress=False)


def _noise_eigenvectors(entry):
    raw = load_file(entry / "spectra.safetensors")
    g = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(v.shape, generator=g, dtype=v.dtype) if k.endswith(".top") else v for k, v in raw.items()},
              entry / "spectra.safetensors")


def _truncate(entry):
    f = entry / "stats.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


@pytest.mark.parametrize("damage, words", [
    (_noise_eigenvectors, ("spectra.safetensors does not match its checksum",)),
    (_truncate, ("stats.safetensors has", "truncated or changed")),
    (lambda e: (e / "stats.json").unlink(), ("stats.json cannot be read",)),
    (lambda e: (e / CHECKSUMS).unlink(), ("has no checksums.json",)),
    (lambda e: (e / CHECKSUMS).write_text("{not json"), ("checksums.json cannot be read",)),
])
def test_a_damaged_statistics_entry_is_named_set_aside_and_recomputed(model, ids, tmp_path, capsys, damage, words):
    """Eigenvectors replaced by noise (a valid file) are not used: the entry is moved aside and the statistics
    recomputed equal the first ones, to the bit."""
    first = _cached(model, ids, tmp_path)
    entry = tmp_path / act.cache_key(model, ids, SETTINGS)
    assert (entry / CHECKSUMS).exists() and entry_problem(entry) is None
    damage(entry)
    with pytest.raises(CacheError) as e:  # read directly, the entry is refused with its path
        act.ActivationStats.load(entry)
    assert str(entry) in str(e.value) and all(w in str(e.value) for w in words)
    again = _cached(model, ids, tmp_path)
    err = capsys.readouterr().err
    assert str(entry) in err and "moved to" in err and all(w in err for w in words)
    aside = [p for p in tmp_path.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1 and again.meta["cache"]["hit"] is False and again.meta["cache"]["set_aside"] == str(aside[0])
    for layer in (0, 1):
        for role in ("q", "down"):
            assert torch.equal(again.spectrum(layer, role, top=4).eigenvectors[:, :4],
                               first.spectrum(layer, role, top=4).eigenvectors[:, :4])
    assert entry_problem(entry) is None and _cached(model, ids, tmp_path).meta["cache"]["hit"] is True


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   Exception("No space left on device (os error 28)")])  # as safetensors says it
def test_a_full_cache_disk_names_the_entry_and_the_space_needed(model, ids, tmp_path, monkeypatch, capsys, error):
    def full(path, *a, **k):
        raise error

    monkeypatch.setattr(act, "write_safetensors", full)
    stats = _cached(model, ids, tmp_path)  # the statistics in memory serve this run
    err = capsys.readouterr().err
    entry = tmp_path / act.cache_key(model, ids, SETTINGS)
    assert str(entry) in err and "not cached" in err and "--cache-dir" in err and "0.00 GiB" not in err
    assert re.search(r"writing it needs ~\d[\d.]* KiB, and \S+ \w?i?B is free there", err), err
    assert stats.n_tokens > 0 and not any(tmp_path.iterdir())  # no half-written entry left behind
    with pytest.raises(DiskFullError, match=r"no space left on its disk.*writing it needs ~.*KiB.*free there"):
        stats.save(tmp_path / "direct")


def test_an_organism_stage_is_verified_before_it_is_reused(tmp_path, capsys):
    from rwedit.apps.organism.training import _stage

    built = []

    def build(tmp):
        built.append(tmp)
        (tmp / "model.safetensors").write_bytes(b"w" * 5000)
        return {"stage": "pretrain"}

    folder = tmp_path / "pretrained"
    assert _stage(folder, build, False, "CE pretraining")["stage"] == "pretrain" and len(built) == 1
    assert json.loads((folder / CHECKSUMS).read_text())["files"]["model.safetensors"]["bytes"] == 5000
    _stage(folder, build, False, "CE pretraining")
    assert len(built) == 1  # reused
    (folder / "model.safetensors").write_bytes(b"w" * 4999 + b"x")  # same size, other bytes
    _stage(folder, build, False, "CE pretraining")
    err = capsys.readouterr().err
    assert len(built) == 2 and "model.safetensors does not match its checksum" in err and str(folder) in err
    assert len(list(tmp_path.glob("pretrained.damaged-*"))) == 1 and entry_problem(folder) is None

    def full(tmp):
        (tmp / "model.safetensors").write_bytes(b"w" * 3000)
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"graded: no space left on its disk .* needs more than 2\.93 KiB"):
        _stage(tmp_path / "graded", full, False, "graded")
    assert not (tmp_path / "graded").exists() and not list(tmp_path.glob(".graded*"))


def test_checksums_name_the_file_that_changed(tmp_path):
    (tmp_path / "e" / "sub").mkdir(parents=True)
    (tmp_path / "e" / "sub" / "a.bin").write_bytes(b"abc")
    write_checksums(tmp_path / "e")
    assert entry_problem(tmp_path / "e") is None
    (tmp_path / "e" / "sub" / "a.bin").unlink()
    assert "sub/a.bin cannot be read" in entry_problem(tmp_path / "e")


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1000, "0.977 KiB"), (3 * 1024 + 100, "3.1 KiB"),
                                     (int(1.5 * 2**20), "1.5 MiB"), (611 * 2**30, "611 GiB"), (5 * 2**40, "5 TiB"),
                                     (3 * 2**50, "3,072 TiB")])
def test_sizes_read_in_the_unit_that_fits(n, text):
    assert readable_bytes(n) == text
