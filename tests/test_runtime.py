"""The run stages' measured costs and the memory handed back between them."""

from __future__ import annotations

import platform

import pytest
import torch

from rwedit import runtime as rt


def test_stages_measure_wall_tokens_and_peak_memory_and_nest(wiki_tokenizer):
    from tiny_models import tiny_model

    model = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    with rt.recording(interval_s=0.002) as costs:
        rt.count_tokens(model)
        with rt.stage("outer"):
            with rt.stage("inner"):
                model(input_ids=torch.zeros(3, 7, dtype=torch.long))
                held = torch.ones(64 << 20)  # 256 MiB, held while the sampler runs
                held.add_(1)
                import time

                time.sleep(0.05)
                del held
            with rt.stage("inner"):
                model(input_ids=torch.zeros(2, 5, dtype=torch.long), logits_to_keep=2)
    assert costs["inner"].calls == 2 and costs["outer"].calls == 1
    assert costs["inner"].tokens == 3 * 7 + 2 * 5 == costs["outer"].tokens
    assert costs["inner"].logits == 3 * 7 + 2 * 2 == costs["outer"].logits  # the second pass kept 2 positions
    assert costs["outer"].wall_s >= costs["inner"].wall_s >= 0.05
    assert costs["inner"].peak_rss_mib >= 256  # the held tensor was sampled


def test_every_stage_hands_freed_memory_back_in_and_outside_a_recording(monkeypatch):
    calls = []
    monkeypatch.setattr(rt, "release_memory", lambda: calls.append(1))
    with rt.stage("alone"):
        pass
    with rt.recording():
        with rt.stage("a"):
            with rt.stage("b"):
                pass
    with pytest.raises(ValueError):
        with rt.stage("failing"):
            raise ValueError
    assert len(calls) == 4


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's arenas keep freed memory; others differ")
def test_memory_freed_into_glibc_arenas_is_handed_back():
    """In a fresh process (the allocator's state is the test's), glibc told not to trim on free (in a long run,
    blocks between live ones keep it from trimming): the freed blocks stay resident until :func:`release_memory`."""
    import json
    import subprocess
    import sys

    script = """
import ctypes, json, torch
from rwedit.runtime import _rss_kib, release_memory
libc = ctypes.CDLL("libc.so.6")
libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD at its 32 MiB ceiling, where a long run's frees raise it
libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: no trimming on free
blocks = [torch.ones(1 << 20) for _ in range(200)]  # 800 MiB of 4 MiB blocks from the heap
held = _rss_kib() / 1024
blocks.clear()
freed = _rss_kib() / 1024
release_memory()
print(json.dumps([held, freed, _rss_kib() / 1024]))
"""
    held, freed, released = json.loads(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                                      check=True).stdout)
    assert freed > held - 100  # freed, but still resident: the trap
    assert released < freed - 700, (held, freed, released)
