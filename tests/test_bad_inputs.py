"""Every class of bad input gets a clear message and loses nothing.

Each case feeds one bad input to one command (in process, as `rwedit ...` would) and asserts: exit status 2,
no traceback, a message that names the offending thing, no option suggested that the command lacks, and
the workspace (models, data, earlier outputs) byte-for-byte as it was, with no output folder left behind.
``docs/errors.md`` lists the classes and points here. The Python API raises the documented
:class:`~rwedit.errors.RweditError` subclass for the same inputs (``test_api_*``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from rwedit.cli import build_parser, main
from conftest import HH_RLHF
from tiny_models import save_pair, tiny_model

RWEDIT = [sys.executable, "-c", "import sys; from rwedit.cli import main; sys.exit(main())"]
MODEL_KW = dict(max_position_embeddings=1024, pad_token_id=0, bos_token_id=1, eos_token_id=2)


# ----------------------------------------------------------------------------- the workspace of bad inputs


@pytest.fixture(scope="module")
def ws(tmp_path_factory, wiki_tokenizer, wiki_texts):
    """Models, data files, specs and recipes: the good ones the bad ones are made from, and the bad ones."""
    from rwedit.data import train_bpe_tokenizer
    from rwedit.editor.pipeline import run_edit
    from rwedit.editor.spec import EditSpec

    root = tmp_path_factory.mktemp("bad-inputs")
    m = root / "m"
    save_pair(m, wiki_tokenizer, seed=3, **MODEL_KW)

    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(m / "base")
    # the base stored in bfloat16: a dtype conversion, not a post-training change
    base.to(torch.bfloat16).save_pretrained(m / "post_bf16")
    wiki_tokenizer.save_pretrained(m / "post_bf16")
    base = AutoModelForCausalLM.from_pretrained(m / "base")
    with torch.no_grad():  # one NaN in one weight
        base.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    base.save_pretrained(m / "post_nan")
    wiki_tokenizer.save_pretrained(m / "post_nan")
    # the post's weights with a tokenizer trained on other text (same vocabulary size, other tokens)
    shutil.copytree(m / "post", m / "post_tok")
    for f in (m / "post_tok").glob("tokenizer*"):
        f.unlink()
    other_tok = train_bpe_tokenizer(wiki_texts[1000:2000], vocab_size=len(wiki_tokenizer))
    assert len(other_tok) == len(wiki_tokenizer)
    other_tok.save_pretrained(m / "post_tok")
    other = tiny_model("llama", vocab_size=len(wiki_tokenizer), hidden_size=48, **MODEL_KW)
    other.save_pretrained(m / "other_shape")
    wiki_tokenizer.save_pretrained(m / "other_shape")
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(AutoModelForCausalLM.from_pretrained(m / "base"), lora).save_pretrained(m / "lora")
    for name, change in (("lora_r", {"r": 8}), ("lora_nan_alpha", {"lora_alpha": float("nan")}),
                         ("lora_targets", {"target_modules": ["v_proj"]})):  # configs that contradict the tensors
        shutil.copytree(m / "lora", m / name)
        cfg = json.loads((m / name / "adapter_config.json").read_text())
        (m / name / "adapter_config.json").write_text(json.dumps({**cfg, **change}))
    tiny_model("gpt2", vocab_size=len(wiki_tokenizer)).save_pretrained(m / "gpt2")
    wiki_tokenizer.save_pretrained(m / "gpt2")
    # damaged weight files
    st = (m / "base" / "model.safetensors").read_bytes()
    for name, data in (("empty_st", b""), ("trunc_st", st[: len(st) // 2]), ("garbage_st", os.urandom(4096))):
        shutil.copytree(m / "base", m / name)
        (m / name / "model.safetensors").write_bytes(data)
    # pickle-only weights
    (m / "pickle").mkdir()
    shutil.copy(m / "base" / "config.json", m / "pickle")
    torch.save(AutoModelForCausalLM.from_pretrained(m / "base").state_dict(), m / "pickle" / "pytorch_model.bin")
    # folders that are not models
    (m / "noconfig").mkdir()
    shutil.copy(m / "base" / "model.safetensors", m / "noconfig")
    shutil.copytree(m / "base", m / "badconfig")
    (m / "badconfig" / "config.json").write_text('{"model_type": "llama", ')
    shutil.copytree(m / "base", m / "bert")
    cfg = json.loads((m / "bert" / "config.json").read_text())
    (m / "bert" / "config.json").write_text(json.dumps({**cfg, "model_type": "bert", "architectures": ["BertModel"]}))

    # data files
    d = root / "data"
    d.mkdir()
    good = [{"text": t} for t in wiki_texts[:40]]
    (d / "calib_badline.jsonl").write_text("\n".join([json.dumps(good[0]), json.dumps(good[1]), '{"text": "cut',
                                                      json.dumps(good[2])]) + "\n")
    (d / "calib_nofield.jsonl").write_text("\n".join(json.dumps({"body": g["text"]}) for g in good) + "\n")
    (d / "empty.txt").write_text("\n\n")
    (d / "emptyds").mkdir()
    (d / "latin1.txt").write_bytes("caf\xe9 au lait\n".encode("latin-1") * 50)
    (d / "bad.txt.gz").write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(200))
    with gzip.open(HH_RLHF, "rt") as f:
        pairs = [json.loads(next(f)) for _ in range(8)]
    (d / "pairs_missing.jsonl").write_text("\n".join(json.dumps({"chosen": p["chosen"]}) for p in pairs) + "\n")
    (d / "pairs_badline.jsonl").write_text(json.dumps(pairs[0]) + "\n" + "{chosen: no quotes}\n")
    (d / "pairs_list.jsonl").write_text(json.dumps([pairs[0]["chosen"], pairs[0]["rejected"]]) + "\n")

    # an edit folder (cheap: random v, given b, no calibration)
    spec = _spec(m / "base")
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    run_edit(EditSpec.from_dict(spec), root / "e")
    (root / "existing").mkdir()
    (root / "existing" / "earlier.txt").write_text("an earlier run's file")
    (d / "metrics_bad.json").write_text('{"acc": 0.5,')
    (d / "metrics_nan.json").write_text('{"acc": NaN}')
    (d / "metrics_list.json").write_text("[0.5]")
    return root


def _spec(model, **edit):
    return {"model": str(model), "alpha": [1.0],
            "edit": {"layers": [1], "role": "q", "v": "random", "b": "given", "b_given": [0.5] * 32, **edit},
            "controls": {"random": 1, "lowvar": 0, "write": None}}


def _recipe(ws, **top):
    r = {"name": "bad", "edit": {**_spec(ws / "m" / "base"), "post": str(ws / "m" / "post")},
         "eval": {"tasks": ["rwedit_hh_preference"], "limit": 2, "batch_size": 2},
         "direct": {"pairs": 4, "texts": 2, "seq_len": 32, "max_len": 128}, "probe": {"ks": [1, 4], "null_seeds": 2},
         "export": []}
    r.update(top)
    return r


def _write(ws, name: str, text: str) -> str:
    path = ws / "y" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return str(path)


def _yaml(ws, name: str, obj) -> str:
    return _write(ws, name, yaml.safe_dump(obj, sort_keys=False))


# ----------------------------------------------------------------------------- the cases


@dataclass
class Case:
    id: str
    cls: str  # the class of bad input (docs/errors.md)
    argv: object  # list of args, or a function ws -> list
    names: tuple[str, ...]  # regexes the message must contain (the offending thing, what to do)
    out: str | None = None  # an output path (relative to ws) that must not exist afterwards


def _pair(post, *more):
    return lambda ws: ["--base", str(ws / "m" / "base"), "--post", str(ws / "m" / post), *more]


CASES = [
    # --- checkpoints
    Case("deltas-missing-folder", "missing or mistyped path", ["deltas", "--base", "./no/such/model", "--post", "x"],
         (r"no/such/model", "does not exist")),
    Case("deltas-mistyped-local-path", "missing or mistyped path", ["deltas", "--base", "m/bse", "--post", "m/post"],
         ("'m/bse' does not exist", "did you mean 'm/base'", "local folder")),
    Case("deltas-shape-mismatch", "mismatched checkpoints", lambda ws: ["deltas", *_pair("other_shape")(ws)],
         ("differ", "other_shape")),
    Case("deltas-arch-mismatch", "mismatched checkpoints", lambda ws: ["deltas", *_pair("gpt2")(ws)],
         ("architectures differ", "gpt2")),
    Case("deltas-dtype-mismatch", "mixed-precision pair", lambda ws: ["deltas", *_pair("post_bf16")(ws)],
         ("dtypes differ", "BF16", "--allow-dtype-mismatch")),
    Case("deltas-nan-weight", "NaN/Inf weights", lambda ws: ["deltas", *_pair("post_nan")(ws)],
         ("1 NaN", "q_proj", "post_nan")),
    Case("deltas-other-tokenizer", "different tokenizers", lambda ws: ["deltas", *_pair("post_tok")(ws)],
         ("tokenizers differ", "post_tok")),
    Case("deltas-empty-safetensors", "damaged weight file", lambda ws: ["deltas", *_pair("empty_st")(ws)],
         (r"empty_st/model\.safetensors is empty",)),
    Case("deltas-truncated-safetensors", "damaged weight file", lambda ws: ["deltas", *_pair("trunc_st")(ws)],
         (r"trunc_st/model\.safetensors", "download or copy it again")),
    Case("deltas-garbage-safetensors", "damaged weight file", lambda ws: ["deltas", *_pair("garbage_st")(ws)],
         (r"garbage_st/model\.safetensors is not a readable safetensors file",)),
    Case("deltas-pickle-refused", "pickle weights", lambda ws: ["deltas", *_pair("pickle")(ws)],
         ("pytorch_model.bin", "execute arbitrary code", "--allow-pickle")),
    Case("deltas-no-config", "not a model folder", lambda ws: ["deltas", *_pair("noconfig")(ws)],
         ("noconfig", "no config.json")),
    Case("deltas-bad-config", "not a model folder", lambda ws: ["deltas", *_pair("badconfig")(ws)],
         (r"badconfig/config\.json is not valid JSON",)),
    Case("deltas-unknown-arch", "unknown architecture", lambda ws: ["deltas", *_pair("bert")(ws)],
         ("bert",)),
    Case("deltas-adapter-as-model", "not a model folder",
         lambda ws: ["deltas", "--base", str(ws / "e" / "adapters" / "random_s0_a1"), "--post", str(ws / "m" / "post")],
         ("adapter_config.json", "not a model")),
    Case("deltas-unknown-role", "bad option value", lambda ws: ["deltas", *_pair("post", "--roles", "q,zz")(ws)],
         ("zz",)),
    # --- probe: data and options
    Case("probe-k-above-d", "k > d", lambda ws: ["probe", *_pair("post", "--k", "1000", "--out", str(ws / "o1"))(ws)],
         ("k = 1000", "largest d"), out="o1"),
    Case("probe-calib-bad-json-line", "malformed data line",
         lambda ws: ["probe", *_pair("post", "--calib", str(ws / "data/calib_badline.jsonl"), "--out", str(ws / "o2"))(ws)],
         ("calib_badline.jsonl", "line 3")),
    Case("probe-calib-no-field", "missing data field",
         lambda ws: ["probe", *_pair("post", "--calib", str(ws / "data/calib_nofield.jsonl"), "--out", str(ws / "o3"))(ws)],
         ("calib_nofield.jsonl", "line 1", "'text'", "body", "--field"), out="o3"),
    Case("probe-calib-empty-file", "empty dataset",
         lambda ws: ["probe", *_pair("post", "--calib", str(ws / "data/empty.txt"), "--out", str(ws / "o4"))(ws)],
         ("empty.txt", "no non-empty texts"), out="o4"),
    Case("probe-calib-empty-datasets-folder", "empty dataset",
         lambda ws: ["probe", *_pair("post", "--calib", str(ws / "data/emptyds"), "--out", str(ws / "o5"))(ws)],
         ("emptyds", "empty folder"), out="o5"),
    Case("probe-calib-not-utf8", "malformed data line",
         lambda ws: ["probe", *_pair("post", "--calib", str(ws / "data/latin1.txt"), "--out", str(ws / "o6"))(ws)],
         ("latin1.txt", "UTF-8"), out="o6"),
    Case("probe-calib-damaged-gzip", "damaged or malformed data file",
         lambda ws: ["probe", *_pair("post", "--calib", str(ws / "data/bad.txt.gz"), "--out", str(ws / "o7"))(ws)],
         ("bad.txt.gz", "damaged"), out="o7"),
    Case("probe-calib-bundled-typo", "missing or mistyped path",
         lambda ws: ["probe", *_pair("post", "--calib", "bundled:wikitext-2/vaild.txt.gz", "--out", str(ws / "o14"))(ws)],
         ("no bundled file", "vaild", "valid.txt.gz"), out="o14"),
    Case("probe-calib-mistyped-path", "missing or mistyped path",
         lambda ws: ["probe", *_pair("post", "--calib", "data/no-such-file.txt", "--out", str(ws / "o8"))(ws)],
         ("no-such-file.txt", "no such file"), out="o8"),
    Case("probe-device-cuda-on-cpu", "unusable device",
         lambda ws: ["probe", *_pair("post", "--device", "cuda", "--out", str(ws / "o9"))(ws)],
         ("cuda", "no usable CUDA", "run on cpu"), out="o9"),
    Case("probe-device-unknown", "unusable device",
         lambda ws: ["probe", *_pair("post", "--device", "banana", "--out", str(ws / "o10"))(ws)],
         ("banana",), out="o10"),
    Case("probe-out-exists", "existing output",
         lambda ws: ["probe", *_pair("post", "--out", str(ws / "existing"))(ws)],
         ("existing", "already exists", "--overwrite")),
    Case("probe-layer-out-of-range", "bad option value",
         lambda ws: ["probe", *_pair("post", "--layers", "9", "--out", str(ws / "o11"))(ws)],
         ("layer 9", "0..1"), out="o11"),
    Case("probe-k-not-integers", "bad option value",
         lambda ws: ["probe", *_pair("post", "--k", "1,four", "--out", str(ws / "o12"))(ws)],
         ("four",), out="o12"),
    # --- svd
    Case("svd-r-zero", "bad option value", lambda ws: ["svd", *_pair("post", "--r", "0", "--out", str(ws / "s1"))(ws)],
         ("--r", "'0'"), out="s1"),
    Case("svd-r-word", "bad option value", lambda ws: ["svd", *_pair("post", "--r", "many", "--out", str(ws / "s2"))(ws)],
         ("--r", "many"), out="s2"),
    Case("svd-out-exists", "existing output", lambda ws: ["svd", *_pair("post", "--out", str(ws / "existing"))(ws)],
         ("existing", "already exists", "--overwrite")),
    Case("svd-dtype-mismatch", "mixed-precision pair",
         lambda ws: ["svd", *_pair("post_bf16", "--out", str(ws / "s3"))(ws)],
         ("dtypes differ", "--allow-dtype-mismatch"), out="s3"),
    # --- edit: specs
    Case("edit-yaml-syntax", "YAML syntax", lambda ws: ["edit", "--spec", _write(ws, "syntax.yaml", "model: [a, b\nalpha: 1\n"),
                                                        "--out", str(ws / "x1")],
         ("syntax.yaml", "not valid YAML", "line"), out="x1"),
    Case("edit-yaml-tabs", "YAML syntax", lambda ws: ["edit", "--spec", _write(ws, "tabs.yaml", "model: m\nedit:\n\tlayers: [1]\n"),
                                                      "--out", str(ws / "x2")],
         ("tabs.yaml", "line 3", "tabs"), out="x2"),
    Case("edit-nested-unknown-key", "unknown key",
         lambda ws: ["edit", "--spec", _yaml(ws, "nested.yaml", {**_spec(ws / "m/base"), "edit": {
             **_spec(ws / "m/base")["edit"], "layer_s": [1]}}), "--out", str(ws / "x3")],
         ("edit.layer_s", "did you mean"), out="x3"),
    Case("edit-string-for-number", "wrong type",
         lambda ws: ["edit", "--spec", _yaml(ws, "alpha.yaml", {**_spec(ws / "m/base"), "alpha": "big"}),
                     "--out", str(ws / "x4")],
         ("alpha", "'big'"), out="x4"),
    Case("edit-float-for-int", "wrong type",
         lambda ws: ["edit", "--spec", _yaml(ws, "limit.yaml", {**_spec(ws / "m/base"), "edit": {
             **_spec(ws / "m/base")["edit"], "data_limit": 2.5}}), "--out", str(ws / "x5")],
         ("edit.data_limit", "an integer", "2.5"), out="x5"),
    Case("edit-list-for-mapping", "wrong type",
         lambda ws: ["edit", "--spec", _yaml(ws, "controls.yaml", {**_spec(ws / "m/base"), "controls": [1, 2]}),
                     "--out", str(ws / "x6")],
         ("controls", "mapping"), out="x6"),
    Case("edit-layer-out-of-range", "does not fit the model",
         lambda ws: ["edit", "--spec", _yaml(ws, "layers.yaml", _spec(ws / "m/base", layers=[7])),
                     "--out", str(ws / "x7")],
         ("edit.layers", "0..1"), out="x7"),
    Case("edit-role-not-in-model", "does not fit the model",
         lambda ws: ["edit", "--spec", _yaml(ws, "gate.yaml", {**_spec(ws / "m/gpt2", role="gate")}),
                     "--out", str(ws / "x8")],
         ("gate",), out="x8"),
    Case("edit-given-b-wrong-size", "does not fit the model",
         lambda ws: ["edit", "--spec", _yaml(ws, "bsize.yaml", _spec(ws / "m/base", b_given=[1.0] * 5)),
                     "--out", str(ws / "x9")],
         ("b_given", "5 numbers", "d = 32"), out="x9"),
    Case("edit-lowvar-beyond-d", "does not fit the model",
         lambda ws: ["edit", "--spec", _yaml(ws, "lowvar.yaml", {**_spec(ws / "m/base", v="principal[0]"), "calibration": {
             "data": "bundled:wikitext-2/valid.txt.gz", "seq_len": 64}, "controls": {"random": 1, "lowvar": 100,
                                                                                   "write": None}}),
                     "--out", str(ws / "x18")],
         ("controls.lowvar = 100", "only d = 32"), out="x18"),
    Case("edit-calibration-device-unused", "bad setting",
         lambda ws: ["edit", "--spec", _yaml(ws, "caldev.yaml", {**_spec(ws / "m/base", v="principal[0]"), "calibration": {
             "data": "bundled:wikitext-2/valid.txt.gz", "seq_len": 64, "tokens": 256, "dtype": "bfloat16"}}),
                     "--out", str(ws / "x19")],
         ("calibration.device/dtype", "bfloat16", "float32"), out="x19"),
    Case("edit-pairs-missing-fields", "missing data field",
         lambda ws: ["edit", "--spec", _yaml(ws, "pairs1.yaml", _spec(ws / "m/base", b="gradient", b_given=None,
                                                                      data=str(ws / "data/pairs_missing.jsonl"))),
                     "--out", str(ws / "x10")],
         ("pairs_missing.jsonl", "line 1", "rejected"), out="x10"),
    Case("edit-pairs-bad-line", "malformed data line",
         lambda ws: ["edit", "--spec", _yaml(ws, "pairs2.yaml", _spec(ws / "m/base", b="gradient", b_given=None,
                                                                      data=str(ws / "data/pairs_badline.jsonl"))),
                     "--out", str(ws / "x11")],
         ("pairs_badline.jsonl", "line 2", "not valid JSON"), out="x11"),
    Case("edit-pairs-not-objects", "malformed data line",
         lambda ws: ["edit", "--spec", _yaml(ws, "pairs3.yaml", _spec(ws / "m/base", b="gradient", b_given=None,
                                                                      data=str(ws / "data/pairs_list.jsonl"))),
                     "--out", str(ws / "x12")],
         ("pairs_list.jsonl", "line 1", "list"), out="x12"),
    Case("edit-spec-missing", "missing or mistyped path", lambda ws: ["edit", "--spec", str(ws / "nope.yaml"),
                                                                      "--out", str(ws / "x13")],
         ("nope.yaml", "file not found"), out="x13"),
    Case("edit-out-exists", "existing output", lambda ws: ["edit", "--spec", str(ws / "spec.yaml"), "--out",
                                                           str(ws / "existing")],
         ("existing", "already exists", "--overwrite")),
    Case("edit-nan-model", "NaN/Inf weights",
         lambda ws: ["edit", "--spec", _yaml(ws, "nanmodel.yaml", _spec(ws / "m/post_nan")), "--out", str(ws / "x14")],
         ("post_nan", "NaN", "q_proj"), out="x14"),
    Case("edit-alpha-zero", "bad setting",
         lambda ws: ["edit", "--spec", _yaml(ws, "alpha0.yaml", {**_spec(ws / "m/base"), "alpha": [1.0, 0.0]}),
                     "--out", str(ws / "x15")],
         ("alpha", "non-zero"), out="x15"),
    Case("edit-alpha-nan", "NaN/Inf values",
         lambda ws: ["edit", "--spec", _write(ws, "alphanan.yaml", yaml.safe_dump(_spec(ws / "m/base")).replace(
             "- 1.0", "- .nan")), "--out", str(ws / "x16")],
         ("alpha", "finite"), out="x16"),
    Case("edit-seq-len-past-window", "longer than the model's window",
         lambda ws: ["edit", "--spec", _yaml(ws, "window.yaml", {**_spec(ws / "m/base", v="principal[0]"), "calibration": {
             "data": "bundled:wikitext-2/valid.txt.gz", "seq_len": 4096}}), "--out", str(ws / "x17")],
         ("calibration.seq_len", "4096", "context window of 1024"), out="x17"),
    Case("probe-batch-size-zero", "bad option value",
         lambda ws: ["probe", *_pair("post", "--batch-size", "0", "--out", str(ws / "o13"))(ws)],
         ("--batch-size", "positive integer"), out="o13"),
    # --- export
    Case("export-metrics-bad-json", "damaged or malformed data file",
         lambda ws: ["export", str(ws / "e/adapters/random_s0_a1"), "--metrics", str(ws / "data/metrics_bad.json")],
         ("metrics_bad.json", "not valid JSON")),
    Case("export-metrics-nan", "NaN/Inf values",
         lambda ws: ["export", str(ws / "e/adapters/random_s0_a1"), "--metrics", str(ws / "data/metrics_nan.json")],
         ("acc", "not a finite number", "nothing was changed")),
    Case("export-metrics-list", "wrong type",
         lambda ws: ["export", str(ws / "e/adapters/random_s0_a1"), "--metrics", str(ws / "data/metrics_list.json")],
         ("JSON object", "list")),
    Case("export-bad-repo-id", "bad option value",
         lambda ws: ["export", str(ws / "e/adapters/random_s0_a1"), "--push-to-hub", "not a repo"],
         ("not a repo", "org/name")),
    Case("export-not-an-adapter", "not an adapter folder", lambda ws: ["export", str(ws / "m" / "base")],
         ("base", "no rwedit.json")),
    # --- apply
    Case("apply-other-base", "adapter on another model",
         lambda ws: ["apply", str(ws / "e/adapters/random_s0_a1"), "--model", str(ws / "m/post"), "--prompt", "Hi"],
         ("random_s0_a1", "other weights", "--force")),
    Case("apply-other-architecture", "adapter on another model",
         lambda ws: ["apply", str(ws / "e/adapters/random_s0_a1"), "--model", str(ws / "m/gpt2"), "--prompt", "Hi"],
         ("random_s0_a1", "another architecture")),
    Case("apply-other-size", "adapter on another model",
         lambda ws: ["apply", str(ws / "e/adapters/random_s0_a1"), "--model", str(ws / "m/other_shape"), "--prompt", "Hi"],
         ("random_s0_a1", "another size", "has 48")),
    Case("apply-not-an-adapter", "not an adapter folder",
         lambda ws: ["apply", str(ws / "m/base"), "--prompt", "Hi"], ("base", "not an adapter folder")),
    Case("apply-empty-prompt", "bad option value",
         lambda ws: ["apply", str(ws / "e/adapters/random_s0_a1"), "--prompt", " "], ("--prompt", "empty")),
    # --- eval
    Case("eval-adapters-missing", "missing or mistyped path",
         lambda ws: ["eval", "--model", str(ws / "m/base"), "--adapters", str(ws / "nowhere"), "--limit", "2"],
         ("nowhere", "no such folder")),
    Case("eval-adapters-none-inside", "not an adapter folder",
         lambda ws: ["eval", "--model", str(ws / "m/base"), "--adapters", str(ws / "e"), "--limit", "2"],
         ("holds no adapter folders",)),
    Case("eval-unknown-task", "unknown name",
         lambda ws: ["eval", "--model", str(ws / "m/base"), "--tasks", "rwedit_hh_preferense", "--limit", "2",
                     "--no-direct"],
         ("rwedit_hh_preferense",)),
    Case("eval-limit-zero", "bad option value",
         lambda ws: ["eval", "--model", str(ws / "m/base"), "--limit", "0"], ("limit", "positive")),
    Case("eval-adapters-other-base", "adapter on another model",
         lambda ws: ["eval", "--model", str(ws / "m/post"), "--adapters", str(ws / "e/adapters"), "--limit", "2"],
         ("other weights", "--force")),
    Case("eval-items-past-window", "longer than the model's window",
         lambda ws: ["eval", "--model", str(ws / "m/gpt2"), "--tasks", "rwedit_hh_preference", "--limit", "4",
                     "--no-direct"],
         ("window of 64", "rwedit_hh_preference")),
    Case("eval-out-exists", "existing output",
         lambda ws: ["eval", "--model", str(ws / "m/base"), "--limit", "2", "--out", str(ws / "existing")],
         ("existing", "already exists", "--overwrite")),
    # --- run: recipes
    Case("run-export-unknown-name", "name that refers to nothing",
         lambda ws: ["run", _yaml(ws, "r1.yaml", _recipe(ws, export=["random_s0_a2"])), "--out", str(ws / "r1")],
         ("export", "random_s0_a2", "did you mean"), out="r1"),
    Case("run-nested-unknown-key", "unknown key",
         lambda ws: ["run", _yaml(ws, "r2.yaml", _recipe(ws, probe={"kz": [1]})), "--out", str(ws / "r2")],
         ("probe.kz", "did you mean `ks`"), out="r2"),
    Case("run-k-above-d", "k > d",
         lambda ws: ["run", _yaml(ws, "r3.yaml", _recipe(ws, probe={"ks": [4096]})), "--out", str(ws / "r3")],
         ("k = 4096",), out="r3"),
    Case("run-unknown-kind", "unknown name",
         lambda ws: ["run", _yaml(ws, "r4.yaml", _recipe(ws, experiment="contrl")), "--out", str(ws / "r4")],
         ("contrl", "registered"), out="r4"),
    Case("run-device-cuda", "unusable device",
         lambda ws: ["run", _yaml(ws, "r5.yaml", _recipe(ws, device="cuda")), "--out", str(ws / "r5")],
         ("cuda",), out="r5"),
    Case("run-into-foreign-folder", "existing output",
         lambda ws: ["run", _yaml(ws, "r6.yaml", _recipe(ws)), "--out", str(ws / "existing")],
         ("existing", "not an rwedit experiment")),
    Case("run-wrong-type-nested", "wrong type",
         lambda ws: ["run", _yaml(ws, "r7.yaml", _recipe(ws, eval={"tasks": "rwedit_blimp", "limit": "ten"})),
                     "--out", str(ws / "r7")],
         ("eval.limit", "'ten'"), out="r7"),
    Case("run-primary-typo", "name that refers to nothing",
         lambda ws: ["run", _yaml(ws, "r8.yaml", _recipe(ws, primary="pref_margin_shfit")), "--out", str(ws / "r8")],
         ("primary", "pref_margin_shfit", "did you mean 'pref_margin_shift'"), out="r8"),
    Case("run-svd-dtype", "bad setting",
         lambda ws: ["run", _yaml(ws, "r9.yaml", {"experiment": "svd-structure", "model": str(ws / "m/base"),
                                                  "post": str(ws / "m/post"), "dtype": "float33"}),
                     "--out", str(ws / "r9")],
         ("dtype", "float33"), out="r9"),
    # --- plan: what the run would fail on late, refused before it starts
    Case("plan-unknown-backend", "a run that would fail late (plan checks it first)",
         lambda ws: ["plan", _yaml(ws, "p1.yaml", _recipe(ws)), "--set", "eval.backend=hfx"],
         ("eval.backend", "'hfx' is neither", "vllm")),
    Case("plan-model-args-typo", "a run that would fail late (plan checks it first)",
         lambda ws: ["plan", _yaml(ws, "p2.yaml", _recipe(ws, eval={"tasks": ["rwedit_blimp"], "limit": 2, "backend": "hf",
                                                                     "model_args": {"dtyp": "bfloat16"}}))],
         ("eval.model_args", "'dtyp'", "did you mean 'dtype'")),
    Case("plan-device-map-unknown-module", "a run that would fail late (plan checks it first)",
         lambda ws: ["plan", _yaml(ws, "p3.yaml", _recipe(ws)), "--device-map", '{"": "cpu", "model.layers.7": "cpu"}'],
         ("model.layers.7", "does not have", "did you mean 'model.layers.1'")),
    Case("plan-device-map-leaves-parameters", "a run that would fail late (plan checks it first)",
         lambda ws: ["plan", _yaml(ws, "p4.yaml", _recipe(ws)), "--device-map", '{"model.layers.0": "cpu"}'],
         ("gives no device to", "model.embed_tokens.weight")),
    Case("plan-offload-folder-is-a-file", "a placement that cannot work",
         lambda ws: ["plan", _yaml(ws, "p5.yaml", _recipe(ws)), "--device-map", "auto", "--offload-folder",
                     str(ws / "data" / "empty.txt")],
         ("offload_folder", "empty.txt", "is a file")),
    Case("plan-gflops-zero", "bad option value", lambda ws: ["plan", _yaml(ws, "p6.yaml", _recipe(ws)), "--gflops", "0"],
         ("--gflops", "finite number > 0")),
    Case("plan-setting-nan", "NaN/Inf values",
         lambda ws: ["plan", _yaml(ws, "p7.yaml", _recipe(ws)), "--set", "eval.applied_atol=.inf"],
         ("eval.applied_atol", "expected a finite number, got inf")),
    Case("quickstart-pair-and-base", "contradictory flags",
         lambda ws: ["quickstart", "--pair", "smollm2-135m-instruct", "--base", str(ws / "m/base"), "--out", str(ws / "q4")],
         ("--pair", "--base", "not both"), out="q4"),
    # --- adapter posts: the config against the tensors
    Case("deltas-lora-rank-contradicts-tensors", "adapter config against its tensors",
         lambda ws: ["deltas", *_pair("lora_r")(ws)], ("lora_r", "r = 8", "rank 4", "re-save")),
    Case("deltas-lora-alpha-nan", "adapter config against its tensors",
         lambda ws: ["deltas", *_pair("lora_nan_alpha")(ws)], ("lora_alpha = nan", "finite")),
    Case("deltas-lora-targets-elsewhere", "adapter config against its tensors",
         lambda ws: ["deltas", *_pair("lora_targets")(ws)], ("target_modules", "v_proj", "do not name")),
    # --- report
    Case("report-no-run", "not a run folder", lambda ws: ["report", str(ws / "existing")], ("existing", "no run.json")),
    Case("report-duplicate-rows", "duplicated result row",
         lambda ws: ["report", str(_store(ws, "dup", ['{"condition": "base", "x": 1}', '{"condition": "base", "x": 1}']))],
         ("'base'", "stored twice", "lines 1 and 2")),
    Case("report-damaged-row", "damaged store",
         lambda ws: ["report", str(_store(ws, "bad", ['{"condition": "base"}', '{"condition": ']))], ("line 2",)),
    Case("report-damaged-run-json", "damaged store",
         lambda ws: ["report", str(_store(ws, "meta", [], meta="{"))], ("run.json", "not valid JSON")),
    # --- organism and quickstart
    Case("organism-nested-unknown-key", "unknown key",
         lambda ws: ["organism", "--recipe", _yaml(ws, "org1.yaml", {"model": {"hidden_size": 64}}), "--reduced"],
         ("model.hidden_size", "did you mean `hidden`")),
    Case("organism-bad-setting", "bad setting",
         lambda ws: ["organism", "--recipe", _yaml(ws, "org2.yaml", {"model": {"hidden": 30, "heads": 4}})],
         ("model.hidden", "multiple of model.heads")),
    Case("quickstart-post-without-model", "bad option value",
         lambda ws: ["quickstart", "--post", str(ws / "m/post"), "--out", str(ws / "q2")],
         ("--post", "need --model"), out="q2"),
    Case("quickstart-control-section-typo", "unknown key",
         lambda ws: ["quickstart", "--recipe", _quickstart_recipe(ws), "--reduced", "--out", str(ws / "q3")],
         ("control_experiment.eval.batchsize", "did you mean `batch_size`"), out="q3"),
    Case("quickstart-missing-model", "missing or mistyped path",
         lambda ws: ["quickstart", "--model", "./no-such-base", "--post", "./no-such-post", "--out", str(ws / "q1")],
         ("no-such-base", "does not exist"), out="q1"),
]


def _quickstart_recipe(ws) -> str:
    """The shipped quickstart recipe with a typo in its control experiment's eval section."""
    from importlib.resources import files

    shipped = Path(str(files("rwedit.recipes") / "quickstart.yaml"))
    r = yaml.safe_load(shipped.read_text())
    if isinstance(r.get("organism"), str):
        r["organism"] = str(shipped.parent / r["organism"])
    r["control_experiment"]["eval"] = {**(r["control_experiment"].get("eval") or {}), "batchsize": 4}
    return _yaml(ws, "qs-typo.yaml", r)


def _store(ws, name: str, rows: list[str], meta: str | None = None) -> Path:
    """A results folder written by hand: run.json of a control run plus the given results lines."""
    folder = ws / "stores" / name
    if not folder.exists():
        folder.mkdir(parents=True)
        (folder / "run.json").write_text(meta if meta is not None else json.dumps(
            {"config_hash": "x", "config": {"experiment": "control"}}))
        (folder / "results.jsonl").write_text("".join(r + "\n" for r in rows))
    return folder


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (hidden ones too) with the sha256 of its bytes, and every folder."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _options(command: str) -> set[str]:
    parser = build_parser([command])
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices[command]._option_string_actions) | set(parser._option_string_actions)


def test_at_least_40_cases_across_every_command():
    commands = {c.argv[0] if isinstance(c.argv, list) else c.id.split("-")[0] for c in CASES}
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)
    assert commands >= {"deltas", "probe", "svd", "edit", "export", "apply", "eval", "run", "report", "organism",
                        "quickstart"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error_and_loses_nothing(case, ws, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RWEDIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(ws)  # relative paths in a case are relative to the workspace
    argv = case.argv(ws) if callable(case.argv) else list(case.argv)
    before = _snapshot(ws)
    try:
        status = main(argv)
    except SystemExit as e:  # argparse refuses a malformed option value itself
        status = e.code
    cap = capsys.readouterr()
    err = cap.err
    print(f"[case] {case.id} | {err.strip().splitlines()[-1] if err.strip() else ''}")  # shown with -s
    assert status == 2, (status, err[-2000:])
    assert "Traceback" not in err + cap.out
    for pattern in case.names:
        assert re.search(pattern, err), (pattern, err)
    offered = _options(argv[0])
    for flag in re.findall(r"(?<![\w-])--[a-z][a-z-]+", err):
        assert flag in offered, f"the message suggests {flag}, which `rwedit {argv[0]}` does not accept: {err}"
    after = _snapshot(ws)
    new = {k for k in after if k not in before and not k.startswith("y/") and not k.startswith("stores/")}
    assert not new, f"left behind: {sorted(new)[:5]}"
    changed = [k for k in before if after.get(k) != before[k]]
    assert not changed, f"changed: {changed[:5]}"
    if case.out:
        assert not (ws / case.out).exists()


def test_plan_refuses_sharding_variables_that_make_no_share(ws, monkeypatch, capsys):
    """A launcher's environment that gives no share (a count below 1, a rank outside it), or one --shard
    contradicts, stops `plan` and `run` before anything starts (it used to run the whole grid unsharded)."""
    monkeypatch.chdir(ws)
    recipe = _yaml(ws, "shard.yaml", _recipe(ws))
    before = _snapshot(ws)
    for env, extra, words in (({"WORLD_SIZE": "-2", "RANK": "0"}, [], "WORLD_SIZE=-2"),
                              ({"WORLD_SIZE": "1", "RANK": "1"}, [], "rank 1 of 1"),
                              ({"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_STEP": "0"},
                               [], "SLURM_ARRAY_TASK_STEP=0"),
                              ({"WORLD_SIZE": "2", "RANK": "1"}, ["--shard", "0/2"], "contradicts")):
        with monkeypatch.context() as mp:
            for k, v in env.items():
                mp.setenv(k, v)
            for command in ("plan", "run"):
                assert main([command, recipe, "--out", str(ws / "sharded"), *extra]) == 2
                err = capsys.readouterr().err
                assert words in err and "Traceback" not in err, err
    assert _snapshot(ws) == {**before, **{k: v for k, v in _snapshot(ws).items() if k.startswith("y/")}}


# ----------------------------------------------------------------------------- the Python API


def test_api_raises_the_documented_errors(ws):
    from rwedit.checkpoints import Checkpoint, CheckpointPair
    from rwedit.data import read_pairs, read_texts
    from rwedit.editor.spec import EditSpec
    from rwedit.errors import (AdapterMismatchError, CheckpointError, CheckpointMismatchError, ConfigError, DataError,
                               ExperimentError, NonFiniteWeightError, OutputExistsError, RweditError)
    from rwedit.evals.store import ResultStore
    from rwedit.probes.grid import GridSettings
    from rwedit.probes.pipeline import ProbeRequest, run_probe

    m = ws / "m"
    with pytest.raises(CheckpointError, match="is empty"):
        Checkpoint.open(m / "empty_st")
    with pytest.raises(CheckpointMismatchError, match="dtypes differ"):
        CheckpointPair(str(m / "base"), str(m / "post_bf16"))
    assert CheckpointPair(str(m / "base"), str(m / "post_bf16"), allow_dtype_mismatch=True).dtype_mismatch == ("F32", "BF16")
    with pytest.raises(NonFiniteWeightError):
        list(CheckpointPair(str(m / "base"), str(m / "post_nan")).iter_roles(["q"], [0]))
    with pytest.raises(DataError, match="line 3"):
        read_texts(ws / "data" / "calib_badline.jsonl")
    with pytest.raises(DataError, match="lacks"):
        read_pairs(ws / "data" / "pairs_missing.jsonl")
    with pytest.raises(ConfigError, match="edit.layer_s"):
        EditSpec.from_dict({**_spec(m / "base"), "edit": {**_spec(m / "base")["edit"], "layer_s": [1]}})
    with pytest.raises(ConfigError, match="k = 999"):
        run_probe(ProbeRequest(str(m / "base"), str(m / "post"), grid=GridSettings(ks=(999,)), svd=None,
                               out=ws / "api-out"))
    with pytest.raises(OutputExistsError):
        run_probe(ProbeRequest(str(m / "base"), str(m / "post"), svd=None, out=ws / "existing"))
    with pytest.raises(ExperimentError, match="stored twice"):
        ResultStore(_store(ws, "dup", [])).rows()
    from rwedit.editor.adapters import load_adapter_folder
    from transformers import AutoModelForCausalLM

    with pytest.raises(AdapterMismatchError, match="--force"):
        load_adapter_folder(AutoModelForCausalLM.from_pretrained(m / "post"), ws / "e" / "adapters", ["random_s0_a1"])
    for cls in (AdapterMismatchError, CheckpointError, ConfigError, DataError, ExperimentError, OutputExistsError):
        assert issubclass(cls, RweditError)
    assert not (ws / "api-out").exists()


def test_dtype_mismatch_allowed_reports_the_rounding_floor(ws, tmp_path):
    """With --allow-dtype-mismatch the bf16 copy of the base is probed, and its whole delta is rounding noise:
    ‖ΔW‖ equals the rounding floor (ratio 1), computed here independently by rounding the base."""
    from rwedit.checkpoints import Checkpoint, CheckpointPair
    from rwedit.probes.norms import delta_norms

    pair = CheckpointPair(Checkpoint.open(ws / "m" / "base"), Checkpoint.open(ws / "m" / "post_bf16"),
                          allow_dtype_mismatch=True)
    rows = delta_norms(pair, ["q"], [0])
    from safetensors.torch import load_file

    W = load_file(ws / "m" / "base" / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    floor = float((W - W.to(torch.bfloat16).float()).norm())
    assert rows[0].delta_norm == pytest.approx(floor, rel=1e-6) and rows[0].rounding_floor == pytest.approx(floor, rel=1e-6)
    assert main(["deltas", "--base", str(ws / "m/base"), "--post", str(ws / "m/post_bf16"), "--roles", "q",
                 "--allow-dtype-mismatch", "--quiet"]) == 0


# ----------------------------------------------------------------------------- stores and determinism


def test_unexpected_errors_say_bug_and_exit_1(monkeypatch, capsys):
    from dataclasses import replace as dc_replace

    from rwedit.cli import registry
    from rwedit.cli.registry import get_command

    def boom(args):
        return {}["missing"]

    monkeypatch.setitem(registry._COMMANDS, "archs", dc_replace(get_command("archs"), run=boom))
    assert main(["archs"]) == 1
    err = capsys.readouterr().err
    assert "unexpected KeyError" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(KeyError):
        main(["archs", "--debug"])


def test_two_concurrent_runs_on_one_folder_one_is_refused_rows_unique(ws, tmp_path):
    """While one writer holds a run's store, a `run --resume` from another process is refused, naming the
    holder; once the writer is gone the run finishes, and a second `--resume` adds no row (every condition
    once). The writer here is this test process holding the store's lock, as a running `rwedit run` does
    for its whole run, so the overlap is certain rather than a race."""
    from rwedit.evals.store import ResultStore

    recipe = _yaml(ws, "conc.yaml", _recipe(ws, probe={"enabled": False}, eval=None))
    out = tmp_path / "run"
    env = {**os.environ, "RWEDIT_CACHE": str(tmp_path / "cache")}
    cmd = [*RWEDIT, "run", recipe, "--out", str(out), "--resume", "--quiet"]
    with ResultStore(out).locked():
        second = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert second.returncode == 2, second.stderr[-2000:]
    assert "being written by another rwedit process" in second.stderr and f"pid {os.getpid()}" in second.stderr
    assert "Traceback" not in second.stderr and not (out / "results.jsonl").exists()
    for _ in range(2):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    names = [r["condition"] for r in ResultStore(out).rows()]
    assert len(names) == len(set(names)) == len(ResultStore(out).meta()["conditions"])


def test_unfinished_run_report_says_so_first(ws, tmp_path):
    from rwedit.evals.core import run_recipe, write_report

    recipe = yaml.safe_load(Path(_yaml(ws, "part.yaml", _recipe(ws, probe={"enabled": False}, eval=None))).read_text())
    out = tmp_path / "part"
    run_recipe(recipe, out, stop_after=2)
    report = write_report(out)
    first = report.read_text().splitlines()[0]
    assert first.startswith("> **Unfinished run: 1 condition(s) not scored yet**") and "random_s1_a1" in first
    assert "--resume" in first


def test_a_run_that_fails_before_its_first_row_leaves_no_folder(ws, tmp_path, monkeypatch):
    from rwedit.evals import experiment
    from rwedit.evals.core import run_recipe

    def broken(*a, **k):
        raise RuntimeError("scorer exploded")

    recipe = yaml.safe_load(Path(_yaml(ws, "fail.yaml", _recipe(ws, probe={"enabled": False}, eval=None))).read_text())
    monkeypatch.setattr(experiment, "_edit_probe_metrics", broken)
    with pytest.raises(RuntimeError, match="exploded"):
        run_recipe(recipe, tmp_path / "f")
    assert not (tmp_path / "f").exists()


def test_same_seed_twice_gives_byte_identical_adapters_and_rows(ws, tmp_path):
    from rwedit.editor.pipeline import run_edit
    from rwedit.editor.spec import EditSpec
    from rwedit.evals.core import run_recipe
    from rwedit.evals.store import ResultStore

    spec = EditSpec.from_dict(_spec(ws / "m" / "base"))
    a, b = run_edit(spec, tmp_path / "a"), run_edit(spec, tmp_path / "b")
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file() and p.name != "edits.json")
    assert files and all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    recipe = yaml.safe_load(Path(_yaml(ws, "det.yaml", _recipe(ws, probe={"enabled": False}, eval=None))).read_text())
    rows = []
    for name in ("r1", "r2"):
        run_recipe(recipe, tmp_path / name)
        rows.append([json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True)
                     for r in ResultStore(tmp_path / name).rows()])
    assert rows[0] == rows[1]
    for f in ("adapters/random_s0_a1/adapter_model.safetensors", "adapters/random_s1_a1/adapter_model.safetensors"):
        assert (tmp_path / "r1" / "edit" / f).read_bytes() == (tmp_path / "r2" / "edit" / f).read_bytes()


def test_outputs_get_the_umask_and_strict_json(ws, tmp_path):
    from rwedit.outputs import atomic_folder, dumps

    old = os.umask(0o022)
    try:
        with atomic_folder(tmp_path / "made") as tmp:
            (tmp / "x.json").write_text(dumps({"a": float("nan"), "b": [1.0, float("inf")]}))
    finally:
        os.umask(old)
    assert (tmp_path / "made").stat().st_mode & 0o777 == 0o755
    data = json.loads((tmp_path / "made" / "x.json").read_text())  # strict: no NaN literal
    assert data == {"a": None, "b": [1.0, None], "null_reasons": {"a": "not finite (nan)", "b[1]": "not finite (inf)"}}
    # files too: safetensors writes 0600, an adapter folder is shared like any other output
    from rwedit.editor.pipeline import run_edit
    from rwedit.editor.spec import EditSpec

    old = os.umask(0o022)
    try:
        out = run_edit(EditSpec.from_dict(_spec(ws / "m" / "base")), tmp_path / "perm")
    finally:
        os.umask(old)
    modes = {p.stat().st_mode & 0o777 for p in out.rglob("*")}
    assert modes <= {0o644, 0o755} and 0o644 in modes
    # a killed writer's temporary folder (a pid that no longer runs) is cleared by the next writer
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f".made2.partial-{dead.pid}-abc"
    stale.mkdir()
    with atomic_folder(tmp_path / "made2"):
        pass
    assert not stale.exists() and (tmp_path / "made2").is_dir()


def test_docs_errors_lists_every_class_case_and_test():
    """docs/errors.md stays true: every class and case here has its row, every test it names exists."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "errors.md").read_text()
    for case in CASES:
        assert case.cls.lower() in doc.lower(), case.cls
        assert case.id in doc, case.id
    for name in set(re.findall(r"`(test_\w+)`", doc)):
        assert name in globals(), name


def test_svd_of_identical_checkpoints_says_there_is_no_delta(ws, tmp_path, capsys):
    """Identical base and post read as a 'perfect rotation' unless the summary says the delta is zero."""
    assert main(["svd", "--base", str(ws / "m/base"), "--post", str(ws / "m/base"), "--r", "4", "--roles", "q",
                 "--out", str(tmp_path / "same"), "--quiet"]) == 0
    summary = (tmp_path / "same" / "summary.md").read_text()
    assert "2 of 2 matrices are identical in base and post" in summary

