"""Scoring through lm-eval's backends: the on-disk ``hf`` route (base folder + ``peft=`` the exported adapter)
gives the per-item log-likelihoods of in-process adapter switching; an adapter that changes nothing is caught
by one applied check on both routes; a backend that is not installed is named with what to install."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

from rwedit.editor.adapters import attach_conditions
from rwedit.editor.edits import EditCondition, RankOneEdit
from rwedit.errors import AdapterNotAppliedError, ConfigError
from rwedit.evals.lmeval import (PROBE_TEXT, PROBE_TOKENS, EvalSettings, LMEvalScorer, backends, check_applied,
                                 get_backend)
from tiny_models import save_pair

TASKS = ("rwedit_hh_preference", "rwedit_blimp")


def _unit(n, seed):
    x = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return x / x.norm()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, wiki_tokenizer):
    """A saved tiny Llama (the base folder) loaded as a PeftModel with two rank-1 adapters: ``edit1`` on q of
    layer 1 and ``zero``, the same edit with lora_B zeroed after attaching (an adapter that changes nothing)."""
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("backends")
    save_pair(root, wiki_tokenizer, seed=3, max_position_embeddings=1024, pad_token_id=0, bos_token_id=1,
              eos_token_id=2)
    model = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()
    d = model.config.hidden_size
    b, v = _unit(d, 1), _unit(d, 2)
    conds = [EditCondition(n, "given", 4.0, [RankOneEdit(1, "q", b, v, 4.0)]) for n in ("edit1", "zero")]
    peft_model = attach_conditions(model, conds)
    with torch.no_grad():
        peft_model.base_model.model.model.layers[1].self_attn.q_proj.lora_B["zero"].weight.zero_()
    return root, peft_model, (b, v)


def _logliks(out: dict) -> list[float]:
    """Every request's log-likelihood, task by task in document order (what the items' metrics come from)."""
    vals = []
    for task in TASKS:
        for s in sorted(out["samples"][task], key=lambda s: s["doc_id"]):
            vals += [float(r[0]) for r in s["filtered_resps"]]
    return vals


def test_on_disk_hf_route_gives_the_per_item_logliks_of_in_process_switching(setup, wiki_tokenizer, monkeypatch,
                                                                              tmp_path):
    root, peft_model, _ = setup
    s = dict(tasks=TASKS, limit=4, batch_size=4)
    inproc = LMEvalScorer(peft_model, wiki_tokenizer, EvalSettings(**s))
    disk = LMEvalScorer(peft_model, wiki_tokenizer, EvalSettings(**s, backend="hf"), pretrained=root / "base",
                        export_dir=tmp_path / "exported")

    def no_subprocess(*a, **k):  # pip list (torch's environment report) and git describe: simple_evaluate only
        raise AssertionError(f"scoring started a subprocess: {a[:1]}")

    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    got = {}
    for name in ("base", "edit1"):
        a, b = inproc.run(name, log_samples=True), disk.run(name, log_samples=True)
        la, lb = _logliks(a), _logliks(b)
        assert len(la) == len(lb) == 4 * 2 + 4 * 2
        got[name] = (la, lb)
        assert max(abs(x - y) for x, y in zip(la, lb)) < 1e-4, name
        assert a["results"] == b["results"], name  # acc, acc_norm and their stderr alike
    # the edit moves the log-likelihoods (so the equality above is not that of two base models)
    assert max(abs(x - y) for x, y in zip(got["base"][0], got["edit1"][0])) > 1e-2
    # the on-disk model is lm-eval's own hf model with the adapter exported into a PEFT folder
    lm = disk.lm
    assert type(lm).__name__ == "HFLM" and lm.peft == str(tmp_path / "exported" / "edit1")
    assert (tmp_path / "exported" / "edit1" / "adapter_config.json").exists()
    from peft import PeftModel

    assert isinstance(lm.model, PeftModel) and lm.model.peft_config["default"].r == 1
    row = disk.score("edit1")
    assert row["lmeval_backend"] == "hf" and inproc.score("base")["lmeval_backend"] == "inprocess"


def test_applied_check_catches_a_zero_adapter_on_both_routes(setup, wiki_tokenizer, tmp_path):
    root, peft_model, (b, v) = setup
    s = dict(tasks=("rwedit_blimp",), limit=2, batch_size=2)
    inproc = LMEvalScorer(peft_model, wiki_tokenizer, EvalSettings(**s))
    with pytest.raises(AdapterNotAppliedError, match="'zero'.*does not change"):
        inproc.score("zero")
    disk = LMEvalScorer(peft_model, wiki_tokenizer, EvalSettings(**s, backend="hf"), pretrained=root / "base",
                        export_dir=tmp_path)
    with pytest.raises(AdapterNotAppliedError, match="'zero'.*backend 'hf'.*does not change"):
        disk.score("zero")
    assert (tmp_path / "zero" / "adapter_model.safetensors").exists()  # it was exported and loaded, then refused
    assert "zero" not in inproc.applied and "zero" not in disk.applied
    # a real adapter passes, and the measured change is that of the edited matrix, computed by hand
    disk.score("edit1")
    inproc.score("edit1")
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()
    ids = torch.tensor([wiki_tokenizer(PROBE_TEXT)["input_ids"][:PROBE_TOKENS]])
    with torch.no_grad():
        before = torch.log_softmax(plain(input_ids=ids).logits[0].double(), -1)
        q = plain.model.layers[1].self_attn.q_proj.weight
        q += (4.0 * torch.outer(b, v)).to(q.dtype)
        after = torch.log_softmax(plain(input_ids=ids).logits[0].double(), -1)
    want = float((after - before).abs().max())
    assert want > 1e-2
    assert inproc.applied["edit1"] == pytest.approx(want, rel=1e-3)
    assert disk.applied["edit1"] == pytest.approx(want, rel=1e-3)
    # the check itself: equal outputs are refused, a change above the tolerance passes
    ref = torch.zeros(3, 5, dtype=torch.float64)
    with pytest.raises(AdapterNotAppliedError):
        check_applied("x", ref.clone(), ref, 1e-5)
    assert check_applied("x", ref + 1e-3, ref, 1e-5) == pytest.approx(1e-3)


def test_backends_are_registered_and_a_missing_one_says_what_to_install():
    assert [b.name for b in backends()][:3] == ["inprocess", "hf", "vllm"]
    assert get_backend("hf").adapter_arg == "peft" and get_backend("vllm").adapter_arg == "lora_local_path"
    with pytest.raises(ConfigError, match="neither an rwedit backend.*lm-eval model"):
        get_backend(EvalSettings(backend="nope").backend)
    assert get_backend("hf-auto").adapter_arg is None  # another lm-eval model: base only
    with pytest.raises(ConfigError, match="inprocess backend scores the loaded model"):
        EvalSettings(model_args={"dtype": "bfloat16"})
    from importlib.util import find_spec

    if find_spec("vllm") is None:
        with pytest.raises(ConfigError, match=r"'vllm' needs the `vllm` package.*pip install 'lm-eval\[vllm\]'"):
            EvalSettings(backend="vllm")


def test_a_weight_change_in_place_is_refused_by_a_disk_backend(setup, wiki_tokenizer, tmp_path):
    """A disk backend sees only the base folder and adapter folders: a condition that changes the loaded
    model's weights in place (the SVD-structure kind's) would silently be scored as the base."""
    from transformers import AutoModelForCausalLM

    root, _, _ = setup
    plain = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()
    scorer = LMEvalScorer(plain, wiki_tokenizer, EvalSettings(tasks=("rwedit_blimp",), limit=1, batch_size=1,
                                                              backend="hf"), pretrained=root / "base")
    assert scorer.score()["rwedit_blimp/acc_items"]  # the model as loaded: the base
    with torch.no_grad():
        plain.model.layers[0].mlp.down_proj.weight.mul_(1.5)
    with pytest.raises(ConfigError, match="changed the loaded model's weights in place"):
        scorer.score()


def test_a_recipe_scores_through_the_hf_backend_from_its_saved_adapter_folders(tmp_path, wiki_tokenizer):
    """``eval.backend: hf`` in a control recipe: every condition's lm-eval numbers come from lm-eval's hf model
    with ``peft=`` the condition's folder under OUT/edit/adapters, row by row equal to in-process switching of
    the same saved adapters, and each row records its backend."""
    from conftest import WIKITEXT
    from transformers import AutoModelForCausalLM

    from rwedit.editor.adapters import load_adapter_folder
    from rwedit.evals.core import run_recipe
    from rwedit.evals.store import ResultStore

    root = save_pair(tmp_path / "m", wiki_tokenizer, seed=3, max_position_embeddings=1024, pad_token_id=0,
                     bos_token_id=1, eos_token_id=2)
    eval_ = {"tasks": ["rwedit_blimp"], "limit": 3, "batch_size": 4}
    recipe = {"name": "hf-backend",
              "edit": {"model": str(root / "base"), "post": str(root / "post"),
                       "calibration": {"data": str(WIKITEXT), "tokens": 256, "seq_len": 64},
                       "edit": {"layers": [1], "role": "q", "v": "principal[0]", "b": "delta"},
                       "alpha": [2.0], "controls": {"random": 1, "lowvar": 0, "write": None}},
              "eval": {**eval_, "backend": "hf"}, "direct": None, "probe": {"enabled": False},
              "primary": "rwedit_blimp/acc"}
    out = run_recipe(recipe, tmp_path / "run").folder
    rows = ResultStore(out).rows()
    assert [r["condition"] for r in rows] == ["base", "principal0_a2", "random_s1_a2"]
    assert {r["lmeval_backend"] for r in rows} == {"hf"}
    model = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()
    names = [r["condition"] for r in rows[1:]]
    inproc = LMEvalScorer(load_adapter_folder(model, out / "edit" / "adapters", names), wiki_tokenizer,
                          EvalSettings(**{**eval_, "tasks": tuple(eval_["tasks"])}))
    import json

    for r in rows:
        raw = json.loads((out / "raw" / "lmeval" / f"{r['condition']}.json").read_text())
        mine = inproc.run(r["condition"], log_samples=True)
        disk_ll = [x[0] for s in raw["samples"]["rwedit_blimp"] for x in s["filtered_resps"]]
        here_ll = [x[0] for s in mine["samples"]["rwedit_blimp"] for x in s["filtered_resps"]]
        assert len(disk_ll) == 6 and max(abs(a - b) for a, b in zip(disk_ll, here_ll)) < 1e-4, r["condition"]
        assert raw["config"]["backend"] == "hf" and raw["config"]["model_args"]["peft"] == (None if r["condition"] == "base" else
                                                       str(out / "edit" / "adapters" / r["condition"]))


def test_lm_evals_task_index_is_built_only_for_a_task_that_is_not_bundled(monkeypatch):
    """The bundled tasks alone never index lm-eval's own registry (seconds per process); a stock task does;
    each of the two managers is built once per process, whatever the task list."""
    import rwedit.evals.lmeval as lmeval

    built = []
    monkeypatch.setattr(lmeval, "task_manager", lambda tasks=None: built.append(tasks) or object())
    lmeval._task_index.cache_clear()
    try:
        a = lmeval._cached_task_manager(("rwedit_blimp",))
        assert lmeval._cached_task_manager(("rwedit_hh_preference", "rwedit_blimp")) is a
        full = lmeval._cached_task_manager(("rwedit_blimp", "hellaswag"))
        assert full is not a and lmeval._cached_task_manager(("arc_easy",)) is full
        assert built == [tuple(lmeval.BUNDLED_TASKS), None]  # None: lm-eval's defaults indexed too
    finally:
        lmeval._task_index.cache_clear()


def test_a_switching_backend_is_built_once_and_its_probe_can_be_lm_evals_request_api(setup, wiki_tokenizer,
                                                                                      tmp_path, monkeypatch):
    """The vLLM route's two mechanics with lm-eval's hf model standing in: one model built, each condition's
    folder switched in (``Backend.switch``), and the applied check on log-likelihoods of requests when the
    lm-eval model has no HF model to call; those log-likelihoods equal a plain-torch computation."""
    from test_evals import _direct_loglik

    import rwedit.evals.lmeval as lmeval

    root, peft_model, _ = setup
    built = []

    def switch(lm, name, index, folder):  # what _vllm_switch does with a LoRARequest, done with PEFT
        from peft import PeftModel

        built.append((name, index))
        model = lm._model
        if folder is None:
            if isinstance(model, PeftModel):
                model.base_model.disable_adapter_layers()
            return
        if not isinstance(model, PeftModel):
            lm._model = model = PeftModel.from_pretrained(model, str(folder), adapter_name=name)
        elif name not in model.peft_config:
            model.load_adapter(str(folder), adapter_name=name)
        model.set_adapter(name)
        model.base_model.enable_adapter_layers()

    class RequestsOnly:  # an lm-eval model seen only through its request API (as vLLM's is)
        def __init__(self, lm):
            self.lm = lm

        def loglikelihood(self, reqs, disable_tqdm=False):
            return self.lm.loglikelihood(reqs, disable_tqdm=disable_tqdm)

    hf = lmeval.get_backend("hf")
    monkeypatch.setitem(lmeval._BACKENDS, "switchy", lmeval.Backend(
        "switchy", "test", model="hf", adapter_arg="peft", defaults=hf.defaults, takes_device=True, switch=switch))
    real_probe = lmeval.probe_outputs
    monkeypatch.setattr(lmeval, "probe_outputs", lambda lm, tok=None: real_probe(
        lm if tok is not None else RequestsOnly(lm), tok))
    s = dict(tasks=("rwedit_blimp",), limit=2, batch_size=2)
    sw = LMEvalScorer(peft_model, wiki_tokenizer, EvalSettings(**s, backend="switchy"), pretrained=root / "base",
                      export_dir=tmp_path)
    inproc = LMEvalScorer(peft_model, wiki_tokenizer, EvalSettings(**s))
    models = set()
    for name in ("edit1", "base", "edit1"):
        assert _logliks_of(sw.run(name, log_samples=True)) == pytest.approx(
            _logliks_of(inproc.run(name, log_samples=True)), abs=1e-5)
        models.add(id(sw.lm))
    assert len(models) == 1  # one lm-eval model for every condition
    with pytest.raises(AdapterNotAppliedError):
        sw.score("zero")
    assert [n for n, _ in built] == ["base", "edit1", "base", "edit1", "zero"] and dict(built)["zero"] == 3
    assert sw.applied["edit1"] > 1e-3
    # the request-API probe itself: log p(continuation | context) of the base, computed with plain torch
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(root / "base", dtype=torch.float32).eval()
    with peft_model.disable_adapter():
        got = real_probe(RequestsOnly(inproc.lm))
    want = [_direct_loglik(plain, wiki_tokenizer, c, x) for c, x in lmeval.PROBE_PAIRS]
    assert got.tolist() == pytest.approx(want, rel=1e-4, abs=1e-4)


def _logliks_of(out: dict) -> list[float]:
    return [float(r[0]) for s in sorted(out["samples"]["rwedit_blimp"], key=lambda s: s["doc_id"])
            for r in s["filtered_resps"]]
