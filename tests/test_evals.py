"""Behaviour scoring: lm-eval through adapters vs a direct computation with a hand-edited model;
direct metrics vs plain torch; the bundled tasks load offline whatever the working directory."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

import pytest
import torch

from rwedit.architectures import add_delta
from rwedit.editor.adapters import attach_conditions
from rwedit.editor.edits import EditCondition, RankOneEdit
from rwedit.evals.direct import DirectScorer, DirectSettings
from rwedit.evals.lmeval import EvalSettings, LMEvalScorer, flatten_results, item_values
from rwedit.evals.bundled_tasks import BUNDLED_TASKS, blimp_items, wikitext_articles
from tiny_models import tiny_model

ALPHA = 4.0


def _unit(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g, dtype=torch.float64)
    return x / x.norm()


@pytest.fixture(scope="module")
def edited(wiki_tokenizer):
    """A tiny Llama with one rank-1 adapter on q of layer 1, and a copy edited by hand through the registry."""
    base = tiny_model("llama", vocab_size=len(wiki_tokenizer), max_position_embeddings=1024,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    d = base.config.hidden_size
    b, v = _unit(d, 1), _unit(d, 2)
    by_hand = copy.deepcopy(base)
    add_delta(by_hand, 1, "q", ALPHA * torch.outer(b, v))
    plain = copy.deepcopy(base)
    peft_model = attach_conditions(base, [EditCondition("edit1", "given", ALPHA, [RankOneEdit(1, "q", b, v, ALPHA)])])
    return peft_model, by_hand, plain


def _direct_loglik(model, tok, context: str, continuation: str) -> float:
    """log p(continuation | context) with lm-eval's tokenisation rules, computed with plain torch."""
    if context == "":
        cont = tok(continuation, add_special_tokens=False)["input_ids"]
        ctx = [tok.bos_token_id]
    else:
        n_sp = len(context) - len(context.rstrip())
        if n_sp:
            continuation, context = context[-n_sp:] + continuation, context[:-n_sp]
        whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
        ctx = tok(context, add_special_tokens=False)["input_ids"]
        cont = whole[len(ctx):]
    ids = torch.tensor([ctx + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    targets = ids[0, 1:]
    lp = logp.gather(-1, targets[:, None])[:, 0]
    return float(lp[-len(cont):].sum())


def test_lmeval_per_item_logliks_equal_a_direct_computation(edited, wiki_tokenizer):
    peft_model, by_hand, plain = edited
    scorer = LMEvalScorer(peft_model, wiki_tokenizer, EvalSettings(tasks=("rwedit_hh_preference", "rwedit_blimp"),
                                                                    limit=3, batch_size=4))
    for adapter, reference in (("edit1", by_hand), ("base", plain), ("edit1", by_hand)):
        out = scorer.run(adapter, log_samples=True)
        n = 0
        for task in ("rwedit_hh_preference", "rwedit_blimp"):
            for s in out["samples"][task]:
                for (context, continuation), resp in zip(s["arguments"], s["filtered_resps"]):
                    want = _direct_loglik(reference, wiki_tokenizer, context, continuation)
                    assert resp[0] == pytest.approx(want, rel=1e-4, abs=1e-3), (adapter, task)
                    n += 1
        assert n == 12
        flat = flatten_results(out["results"])
        assert 0.0 <= flat["rwedit_blimp/acc"] <= 1.0 and flat["rwedit_blimp/acc_stderr"] is not None
        # per-item values in document order: each is 1 when the correct choice has the highest loglik
        items = item_values(out["samples"])
        for task in ("rwedit_hh_preference", "rwedit_blimp"):
            vals = items[f"{task}/acc_items"]
            samples = sorted(out["samples"][task], key=lambda s: s["doc_id"])
            want = [float(max(range(len(s["filtered_resps"])), key=lambda i: s["filtered_resps"][i][0]) == s["target"])
                    for s in samples]
            assert vals == want and sum(vals) / len(vals) == pytest.approx(flat[f"{task}/acc"])


def test_lmeval_batches_fit_the_logits_budget_and_score_the_same(edited, wiki_tokenizer):
    peft_model, by_hand, _ = edited
    tasks = ("rwedit_hh_preference", "rwedit_wikitext")
    budget = EvalSettings(tasks=tasks, limit=3, batch_size=4, logits_mb=1)
    scorer = LMEvalScorer(peft_model, wiki_tokenizer, budget)
    calls, call = [], scorer.lm._model_call
    scorer.lm._model_call = lambda inps, **kw: calls.append(tuple(inps.shape)) or call(inps, **kw)
    out = scorer.run("edit1", log_samples=True)
    per_token = 2 * 4 * peft_model.config.vocab_size
    assert calls and all(b == 1 or b * n * per_token <= 2**20 for b, n in calls), calls
    assert any(b == 1 and n * per_token > 2**19 for b, n in calls), calls  # the budget did split batches
    for s in out["samples"]["rwedit_hh_preference"]:
        for (context, continuation), resp in zip(s["arguments"], s["filtered_resps"]):
            assert resp[0] == pytest.approx(_direct_loglik(by_hand, wiki_tokenizer, context, continuation),
                                            rel=1e-4, abs=1e-3)
    free = LMEvalScorer(peft_model, wiki_tokenizer, replace(budget, logits_mb=None)).score("edit1")
    ours = flatten_results(out["results"])
    assert ours and ours.keys() <= free.keys()
    for key, value in ours.items():
        assert value == free[key] if value is None else value == pytest.approx(free[key], rel=1e-6), key


def test_direct_metrics_against_plain_torch(edited, wiki_tokenizer):
    peft_model, by_hand, plain = edited
    s = DirectSettings(pairs=4, texts=3, seq_len=32, max_len=200, batch_size=2)
    scorer = DirectScorer(peft_model, wiki_tokenizer, s)
    base, ed = scorer.score("base"), scorer.score("edit1")
    assert base["kl_base_edited"] == pytest.approx(0.0, abs=1e-9) and base["pref_margin_shift"] == 0.0
    # KL(base ‖ edited) per sequence, from the two plain models
    with torch.no_grad():
        lp_b = torch.log_softmax(plain(input_ids=scorer.ids).logits[:, :-1].double(), -1)
        lp_e = torch.log_softmax(by_hand(input_ids=scorer.ids).logits[:, :-1].double(), -1)
    kl = torch.nn.functional.kl_div(lp_e, lp_b, log_target=True, reduction="none").sum(-1).mean(-1)
    assert ed["kl_base_edited"] == pytest.approx(float(kl.mean()), rel=1e-4)
    assert ed["kl_base_edited_stderr"] == pytest.approx(float(kl.std(correction=1)) / math.sqrt(3), rel=1e-3)
    ce_e = -lp_e.gather(-1, scorer.ids[:, 1:, None]).squeeze(-1).mean(-1)
    assert ed["ppl"] == pytest.approx(math.exp(float(ce_e.mean())), rel=1e-4)
    # preference margins per pair, from the hand-edited model: [bos] + prompt + response tokens
    def loglik(prompt, response):
        pi = [wiki_tokenizer.bos_token_id] + wiki_tokenizer(prompt, add_special_tokens=False)["input_ids"]
        ri = wiki_tokenizer(response, add_special_tokens=False)["input_ids"]
        if len(pi) + len(ri) > s.max_len:  # the documented rule: response up to half, the prompt's end
            ri = ri[: s.max_len // 2]
            pi = pi[-(s.max_len - len(ri)):]
        ids = torch.tensor([pi + ri])
        with torch.no_grad():
            lp = torch.log_softmax(by_hand(input_ids=ids).logits[0, :-1].double(), -1)
        return float(lp.gather(-1, ids[0, 1:, None])[-len(ri):].sum())

    margins = torch.tensor([loglik(p.prompt, p.chosen) - loglik(p.prompt, p.rejected) for p in scorer.pairs])
    assert ed["pref_margin"] == pytest.approx(float(margins.mean()), rel=1e-4, abs=1e-3)
    assert ed["pref_acc"] == pytest.approx(float((margins > 0).double().mean()))
    assert ed["pref_margin_stderr"] == pytest.approx(float(margins.std(correction=1)) / 2, rel=1e-3)
    assert ed["pref_margin_shift"] == pytest.approx(ed["pref_margin"] - base["pref_margin"], abs=1e-6)


def test_lmeval_forwards_compute_the_logits_of_continuations_only(edited, wiki_tokenizer):
    """Each forward computes the logits from its batch's first continuation on (fewer positions than its input
    for preference items, whose prompts are long), and every log-likelihood still equals plain torch's."""
    peft_model, by_hand, _ = edited
    scorer = LMEvalScorer(peft_model, wiki_tokenizer, EvalSettings(tasks=("rwedit_hh_preference",), limit=3,
                                                                    batch_size=2))
    shapes, call = [], type(scorer.lm)._model_call
    scorer.lm._model_call = lambda inps, *a, **kw: (lambda out: shapes.append((inps.shape[1], out.shape[1])) or out)(
        call(scorer.lm, inps, *a, **kw))
    out = scorer.run("edit1", log_samples=True)
    assert shapes and all(kept <= n for n, kept in shapes) and sum(k for _, k in shapes) < sum(n for n, _ in shapes) / 2
    for s in out["samples"]["rwedit_hh_preference"]:
        for (context, continuation), resp in zip(s["arguments"], s["filtered_resps"]):
            assert resp[0] == pytest.approx(_direct_loglik(by_hand, wiki_tokenizer, context, continuation),
                                            rel=1e-4, abs=1e-3)


def test_response_logprobs_compute_the_logits_from_the_first_response_on(edited, wiki_tokenizer):
    """A batch's pass computes logits from its earliest response token's predecessor on (prompts are long), and
    each row's sum equals plain torch's over the whole sequence."""
    from rwedit.data import read_pairs
    from rwedit.evals.direct import DirectSettings
    from rwedit.scoring import encode_pairs, response_logprob

    peft_model, by_hand, _ = edited
    pairs = read_pairs(DirectSettings().pairs_data, limit=4)
    enc = encode_pairs(wiki_tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs], max_len=200)
    seen = []
    head = peft_model.get_output_embeddings()
    hook = head.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1]))
    try:
        with peft_model.disable_adapter(), torch.no_grad():
            got = response_logprob(peft_model, enc, rows=2)
    finally:
        hook.remove()
    assert len(seen) == 2 and all(k < enc.input_ids.shape[1] for k in seen), seen
    _, _, plain = edited
    with torch.no_grad():
        lp = torch.log_softmax(plain(input_ids=enc.input_ids, attention_mask=enc.attention_mask).logits.double(), -1)
    want = (lp[:, :-1].gather(-1, enc.input_ids[:, 1:, None]).squeeze(-1) * enc.response_mask[:, 1:]).sum(-1)
    assert got.double() == pytest.approx(want, rel=1e-5, abs=1e-3)


def test_direct_passes_fit_the_logits_budget_and_score_the_same(edited, wiki_tokenizer):
    """A budget of 1 MiB splits the direct metrics' batches into smaller passes, each within it (or one row), and
    every metric equals the whole-batch run's up to float rounding."""
    peft_model, _, _ = edited
    s = DirectSettings(pairs=6, texts=4, seq_len=64, max_len=200, batch_size=4, logits_mb=1)
    calls = []
    hook = peft_model.get_base_model().register_forward_pre_hook(
        lambda m, a, kw: calls.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        split = DirectScorer(peft_model, wiki_tokenizer, s).score("edit1")
    finally:
        hook.remove()
    per_token = 2 * 4 * peft_model.config.vocab_size
    assert calls and all(b == 1 or b * n * per_token <= 2**20 for b, n in calls), calls
    assert any(b < 4 for b, _ in calls) and any(b > 1 for b, _ in calls), calls  # split, yet not all to one row
    whole = DirectScorer(peft_model, wiki_tokenizer, replace(s, logits_mb=None)).score("edit1")
    assert split.keys() == whole.keys()
    for key, value in whole.items():  # float32 sums of log-probs of some hundreds: ~3e-5 of rounding apart
        assert split[key] == pytest.approx(value, rel=1e-5, abs=1e-4), key


def test_bundled_task_data_is_real_and_unknown_tasks_are_named():
    from rwedit.evals.bundled_tasks import check_tasks, hh_preference_items, task_path

    for name in BUNDLED_TASKS:
        text = (task_path() / f"{name}.yaml").read_text()
        assert "custom_dataset: !function rwedit_task_utils." in text and "__DATA_DIR__" not in text
    arts = wikitext_articles()
    assert len(arts) == 62 and arts[0].startswith("= Robert")
    items = blimp_items()
    assert len(items) == 8000 and len({i["UID"] for i in items[:8]}) == 8  # interleaved paradigms
    assert len(hh_preference_items()) == 412
    with pytest.raises(ValueError, match="unknown lm-eval task"):
        check_tasks(["rwedit_nope"], type("TM", (), {"all_tasks": ["rwedit_blimp"]})())


def test_task_manager_skips_lm_evals_registry_only_when_every_task_is_bundled():
    from rwedit.evals.bundled_tasks import task_manager

    only = task_manager(tasks=["rwedit_blimp", "rwedit_hh_preference"])
    assert set(BUNDLED_TASKS) <= set(only.all_tasks) and "hellaswag" not in only.all_tasks
    mixed = task_manager(tasks=["rwedit_blimp", "hellaswag"])
    assert {"hellaswag", "rwedit_blimp"} <= set(mixed.all_tasks)


def test_plain_lm_eval_cli_scores_the_bundled_tasks_like_rwedit(tmp_path, monkeypatch, wiki_tokenizer, capsys):
    """`lm_eval run --include_path $(rwedit tasks --path)` from another folder, through lm-eval's own CLI
    entry point, on a tiny model saved to disk: every bundled task loads its data and scores each document
    exactly as rwedit's in-process scorer does."""
    import json

    from lm_eval.__main__ import cli_evaluate

    from rwedit.cli import main

    model = tiny_model("llama", vocab_size=len(wiki_tokenizer), max_position_embeddings=4096,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    model.save_pretrained(tmp_path / "m")
    wiki_tokenizer.save_pretrained(tmp_path / "m")
    assert main(["tasks", "--path"]) == 0
    include = capsys.readouterr().out.strip()
    work = tmp_path / "elsewhere"
    work.mkdir()
    monkeypatch.chdir(work)
    tasks = list(BUNDLED_TASKS)
    monkeypatch.setattr("sys.argv", ["lm_eval", "run", "--model", "hf", "--model_args",
                                     f"pretrained={tmp_path / 'm'},dtype=float32", "--include_path", include,
                                     "--tasks", ",".join(tasks), "--limit", "3", "--batch_size", "2",
                                     "--device", "cpu", "--output_path", str(work / "out"), "--log_samples"])
    cli_evaluate()
    result_file = next((work / "out").rglob("results_*.json"))
    results = json.loads(result_file.read_text())["results"]
    samples = {t: [json.loads(line) for f in (work / "out").rglob(f"samples_{t}_*.jsonl")
                   for line in f.read_text().splitlines()] for t in tasks}
    ours = LMEvalScorer(model, wiki_tokenizer, EvalSettings(tasks=tuple(tasks), limit=3, batch_size=2)).score()
    theirs = {**flatten_results(results), **item_values(samples)}
    for key in ("rwedit_blimp/acc_items", "rwedit_blimp/acc_norm_items", "rwedit_hh_preference/acc_items",
                "rwedit_hh_preference/acc_norm_items", "rwedit_hh_preference/acc", "rwedit_blimp/acc"):
        assert theirs[key] == ours[key], key
    assert theirs["rwedit_wikitext/word_perplexity"] == pytest.approx(ours["rwedit_wikitext/word_perplexity"],
                                                                      rel=1e-5)
    lls = [s["filtered_resps"] for s in sorted(samples["rwedit_hh_preference"], key=lambda s: s["doc_id"])]
    assert [float(float(c[0]) >= float(r[0])) for c, r in lls] == ours["rwedit_hh_preference/acc_items"]  # chosen wins


# ----------------------------------------------------------------------------- the control experiment's report


def _control_rows():
    """A base row, one principal edit and three random controls at α = 2 (direct + lm-eval metrics)."""
    def row(name, kind, shift, acc, seed=None):
        return {"condition": name, "kind": kind, "alpha": 0.0 if kind == "base" else 2.0, "seed": seed,
                "delta_norm": 0.0 if kind == "base" else 2.0, "pref_margin_shift": shift,
                "pref_margin_shift_stderr": 0.1, "t/acc": acc, "t/acc_stderr": 0.02}
    return [row("base", "base", 0.0, 0.6), row("principal", "principal", 0.8, 0.7)] + \
           [row(f"random_s{i}", "random", s, 0.6 + s / 10, seed=i) for i, s in ((1, 0.1), (2, -0.2), (3, 0.15))]


def test_control_report_numbers_and_headline_lines_from_the_store(tmp_path):
    import pandas as pd

    from rwedit.evals.report import headline_lines, write_control_report
    from rwedit.evals.store import ResultStore

    store = ResultStore(tmp_path / "r")
    store.begin({"name": "hand", "primary": "pref_margin_shift"}, resume=False)
    for r in _control_rows():
        store.append(r)
    md = write_control_report(tmp_path / "r").read_text()
    t2 = 0.95 / (2 * 0.975 * 0.025) ** 0.5  # t quantile at 2 dof in closed form
    z = 1.959963984540054
    head = pd.read_csv(tmp_path / "r" / "headline.csv")
    m = "pref_margin_shift"
    shifts = torch.tensor([0.1, -0.2, 0.15], dtype=torch.float64)
    mu, se = float(shifts.mean()), float(shifts.std()) / math.sqrt(3)
    rnd = head[(head["metric"] == m) & (head["kind"] == "random")].iloc[0]
    assert (rnd["shift"], rnd["ci_low"], rnd["ci_high"]) == (pytest.approx(mu), pytest.approx(mu - t2 * se),
                                                             pytest.approx(mu + t2 * se))
    assert rnd["per_norm_ci_high"] == pytest.approx((mu + t2 * se) / 2) and rnd["interval"] == "t over 3 members"
    pri = head[(head["metric"] == m) & (head["kind"] == "principal")].iloc[0]
    assert (pri["ci_low"], pri["interval"]) == (pytest.approx(0.8 - z * 0.1), "±1.96 stderr")
    acc = head[(head["metric"] == "t/acc") & (head["kind"] == "principal")].iloc[0]
    assert acc["shift"] == pytest.approx(0.1) and acc["ci_high"] == pytest.approx(0.1 + z * 0.02 * math.sqrt(2))
    # verdict: |shift| of the principal edit − mean |shift| of the random controls, unpaired, t on 2 dof
    ab = shifts.abs()
    eff, se_d = 0.8 - float(ab.mean()), math.hypot(0.1, float(ab.std()) / math.sqrt(3))
    v = pd.read_csv(tmp_path / "r" / "verdicts.csv").iloc[0]
    assert (v["effect"], v["ci_low"], v["ci_high"]) == (pytest.approx(eff), pytest.approx(eff - t2 * se_d),
                                                        pytest.approx(eff + t2 * se_d))
    assert v["answer"] == ("yes" if eff - t2 * se_d > 0 else "inconclusive")
    # the headline section of report.md is exactly headline_lines, computed from the store
    lines = headline_lines(tmp_path / "r")
    assert lines[0] == f"## Headline: {m} by direction kind" and len(lines) == 2 + 2 + 2
    assert "\n".join(lines) + "\n\n## Every condition" in md
    assert f"| random | 2 | 3 | 2 | {mu:.3g} | [{mu - t2 * se:.3g}, {mu + t2 * se:.3g}] |" in md
    assert headline_lines(tmp_path / "r", "t/acc")[0] == "## Headline: t/acc by direction kind"
    assert "\n| principal | 2 | – | – | – | 0.8 ± 0.1 | 0.7 ± 0.02 |\n" in md  # every condition: value ± stderr


def _effect_rows():
    """Planted rows at α = 2 (0.5 ‖W‖_F) and α = 8 (2 ‖W‖_F): a principal edit that moves the margin only at
    α = 8, two random controls, a low-variance control whose KL is exactly 0 on every held-out text (an edit
    that does nothing), and a write control whose held-out CE rises by 0.5 nats/token (a broken model)."""
    import numpy as np

    rng = np.random.default_rng(0)

    def row(name, kind, alpha, margin, kl, ce=0.01, seed=None):
        margin, kl = np.asarray(margin, float), np.asarray(kl, float)
        return {"condition": name, "kind": kind, "alpha": alpha, "seed": seed, "index": None, "delta_norm": abs(alpha),
                "layers": [1], "dose": alpha, "dose_unit": "alpha", "match": "norm", "alpha_rel_w": alpha / 4,
                "alpha_rel_observed": alpha / 0.5, "pref_margin_shift": float(margin.mean()),
                "pref_margin_shift_stderr": float(margin.std(ddof=1) / 6 ** 0.5),
                "pref_margin_shift_items": margin.tolist(), "kl_base_edited": float(kl.mean()),
                "kl_base_edited_stderr": float(kl.std(ddof=1) / 2), "kl_base_edited_items": kl.tolist(),
                "ce_shift": ce, "ce_shift_stderr": 0.01}
    rows = [{"condition": "base", "kind": "base", "alpha": 0.0, "delta_norm": 0.0, "pref_margin_shift": 0.0,
             "pref_margin_shift_stderr": 0.0, "kl_base_edited": 0.0, "kl_base_edited_stderr": 0.0, "ce_shift": 0.0}]
    for a, up in ((2.0, 0.0), (8.0, 1.0)):
        tag = f"a{a:g}"
        rows.append(row(f"principal0_{tag}", "principal", a, up + 0.1 * rng.standard_normal(6), [0.04, 0.05, 0.06, 0.05]))
        rows += [row(f"random_s{s}_{tag}", "random", a, 0.1 * rng.standard_normal(6), [0.01, 0.012, 0.011, 0.009], seed=s)
                 for s in (1, 2)]
        rows.append(row(f"lowvar0_{tag}", "lowvar", a, [0.0] * 6, [0.0] * 4))
        rows.append(row(f"write_o_{tag}", "write", a, 0.1 * rng.standard_normal(6), [0.2, 0.3, 0.25, 0.2], ce=0.5))
    return rows


def test_report_flags_broken_models_null_controls_doses_above_the_weight_and_gives_effects_per_kl(tmp_path):
    import numpy as np
    import pandas as pd

    from rwedit.evals.report import write_control_report
    from rwedit.evals.store import ResultStore

    store = ResultStore(tmp_path / "r")
    config = {"name": "flags", "primary": "pref_margin_shift", "edit": {"edit": {"b": "delta"}},
              "effect": {"broken_ce": 0.1, "kl_floor": 1e-4}}
    store.begin(config, resume=False)
    rows = _effect_rows()
    for r in rows:
        store.append(r)
    md = write_control_report(tmp_path / "r").read_text()
    eff = pd.read_csv(tmp_path / "r" / "effects.csv").set_index("condition")
    assert set(eff.index[eff["null_edit"]]) == {"lowvar0_a2", "lowvar0_a8"}  # KL exactly 0: does nothing
    assert set(eff.index[eff["broken"]]) == {"write_o_a2", "write_o_a8"}  # CE + 0.5 > 0.1
    ver = pd.read_csv(tmp_path / "r" / "verdicts.csv")
    get = lambda c, a: ver[(ver["control"] == c) & (ver["alpha"] == a)].iloc[0]  # noqa: E731
    r8, r2 = get("random", 8.0), get("random", 2.0)
    assert r8["answer"] == "yes" and r2["answer"] != "yes"
    assert r8["dose_note"] == "holds only above ‖W‖_F" and r8["alpha_rel_w"] == 2.0 and r8["alpha_rel_observed"] == 16
    # per unit KL, paired and signed: mean_i p_i / KL_p − mean_j mean_i c_ji / KL_j, recomputed from the rows
    by = {r["condition"]: r for r in rows}
    P = np.array(by["principal0_a8"]["pref_margin_shift_items"]) / by["principal0_a8"]["kl_base_edited"]
    C = [np.array(by[n]["pref_margin_shift_items"]) / by[n]["kl_base_edited"] for n in ("random_s1_a8", "random_s2_a8")]
    assert r8["effect_per_kl"] == pytest.approx(P.mean() - np.mean([c.mean() for c in C]))
    assert r8["per_kl_ci_low"] <= r8["effect_per_kl"] <= r8["per_kl_ci_high"]
    lv, wr = get("lowvar", 8.0), get("write", 8.0)
    assert lv["control_null"] == 1 and pd.isna(lv["effect_per_kl"])  # no per-KL effect against a null edit
    assert wr["broken_model"] and "write_o_a8 (CE +0.5)" in wr["broken_conditions"] and not r8["broken_model"]
    findings = md[md.index("## Findings"):md.index("### Details")]
    assert "against a null edit: lowvar does nothing measurable" in findings
    assert "broken model: write_o_a8 (CE +0.5)" in findings and "holds only above ‖W‖_F" in findings
    assert "α = 8 = 2 ‖W‖_F = 16 × ‖ΔW_obs v‖" in findings
    assert "**Does nothing measurable**" in md and "`lowvar0_a8` (KL 0)" in md
    assert "**Broken model**" in md and "`write_o_a8` (+0.5)" in md
