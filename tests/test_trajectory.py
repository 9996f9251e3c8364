"""Trajectory callback: rows at each save equal the pair probe on the saved checkpoint."""

from __future__ import annotations

import pandas as pd
import torch
from transformers import Trainer, TrainingArguments

from rwedit.checkpoints import CheckpointPair
from rwedit.data import pack_tokens
from rwedit.probes.activations import StatsSettings, collect_activation_stats
from rwedit.probes.grid import GridSettings, rsf_grid_pair
from rwedit.probes.trajectory import RSFTrajectoryCallback
from tiny_models import tiny_model


def test_rows_for_every_save_equal_the_pair_probe(tmp_path, wiki_texts, wiki_tokenizer):
    ids = pack_tokens(wiki_tokenizer, wiki_texts, seq_len=32, token_budget=32 * 24)
    model = tiny_model("llama", vocab_size=len(wiki_tokenizer))
    model.save_pretrained(tmp_path / "step0")
    stats = collect_activation_stats(model, ids[:8], StatsSettings(roles=("q", "down")), progress=False)
    settings = GridSettings(ks=(1, 4), roles=("q", "down"), null_seeds=3)
    cb = RSFTrajectoryCallback(tmp_path / "traj.csv", stats, settings)
    train = [{"input_ids": r, "labels": r} for r in ids]
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=4, save_steps=2, save_strategy="steps",
                             per_device_train_batch_size=4, learning_rate=5e-3, use_cpu=True, report_to=[],
                             logging_strategy="no", seed=0, save_only_model=True)
    Trainer(model=model, args=args, train_dataset=train, callbacks=[cb]).train()
    traj = pd.read_csv(tmp_path / "traj.csv")
    assert sorted(traj["step"].unique()) == [2, 4]
    for step in (2, 4):
        want = pd.DataFrame(rsf_grid_pair(CheckpointPair(tmp_path / "step0", tmp_path / "run" / f"checkpoint-{step}"),
                                          stats, settings))
        got = traj[traj.step == step].drop(columns="step").reset_index(drop=True)
        assert len(got) == len(want) > 0
        for col in ("layer", "role", "side", "subspace", "k"):
            assert (got[col].astype(str) == want[col].astype(str)).all()
        for col in ("fraction", "rsf", "null_mean", "null_sd", "delta_norm"):
            torch.testing.assert_close(torch.tensor(got[col].values), torch.tensor(want[col].values),
                                       rtol=1e-5, atol=1e-9)
        assert (got["delta_norm"] > 0).all()
