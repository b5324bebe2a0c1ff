"""More than one process on CPU (gloo): FSDP2 training with run_ctr.py and offline scoring shared out by user.

Each multi-process test launches 2 workers on a tiny model and checks them against one process."""

import json
import os
import runpy
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from ccf_llm import CCFLlamaProcessor, load_ctr_model, score_rows, score_rows_distributed, shard_rows_by_user
from ccf_llm.data import seeded_subsample
from ccf_llm.synthetic import make_demo_log

from .test_examples_run_ctr import _tiny_llm_folder
from .test_pipeline_ctr_scoring import build

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "examples" / "configs"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(launcher: list[str], script: str, args: list[str]) -> subprocess.CompletedProcess:
    """Run `script` under a launcher with this checkout's package first on the path and one thread per worker."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    done = subprocess.run([sys.executable, "-m", *launcher, script, *args], capture_output=True, text=True, cwd=REPO,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_cpu_fsdp_config_is_the_gpu_config_on_two_processes():
    gpu = yaml.safe_load((CONFIGS / "accelerate_fsdp.yaml").read_text())
    cpu = yaml.safe_load((CONFIGS / "accelerate_fsdp_cpu.yaml").read_text())
    assert cpu.pop("num_processes") == 2 and gpu.pop("num_processes") == 4
    assert cpu == gpu and cpu["fsdp_config"]["fsdp_version"] == 2


def test_run_ctr_under_fsdp_matches_one_process_and_its_saved_model_scores_the_same(tmp_path, monkeypatch):
    """
    Two-stage training under `accelerate launch` with the FSDP2 config on 2 CPU processes (batch 4 each) against one
    process with batch 8 (and, as the GPU recipe, gradient checkpointing on): the same global batches, so the logged losses and gradient norms of every step agree up
    to fp32 summation order (seen: |Δloss| <= 1e-6, relative Δ grad norm <= 5e-7; allowed 1e-4 and 1e-4). LoRA
    dropout is 0 (dropout masks differ between processes) and the learning rate is large (1e-2), so the losses move
    by ~0.3 within a stage: a missing gradient reduction or a wrongly gathered weight shows as > 1e-3.
    """
    llm = _tiny_llm_folder(tmp_path)
    common = ["--dataset", "demo", "--fusion_modes", "gate", "--cf_backbone", "mf", "--cf_hidden_size", "8",
              "--cf_epochs", "2", "--history_size", "2", "--train_rows_per_stage", "32", "--eval_rows", "32",
              "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true", "--save_strategy", "no",
              "--llm", str(llm), "--seed", "1", "--dtype", "float32", "--logging_steps", "1", "--lora_dropout", "0",
              "--learning_rate", "1e-2", "--num_train_epochs", "2"]  # fmt: skip
    single, sharded = tmp_path / "single", tmp_path / "fsdp"
    monkeypatch.setattr(
        sys,
        "argv",
        ["run_ctr.py", *common, "--per_device_train_batch_size", "8", "--output_dir", str(single)],
    )
    runpy.run_path(str(REPO / "examples" / "run_ctr.py"), run_name="__main__")
    accelerate = ["accelerate.commands.launch", "--config_file", str(CONFIGS / "accelerate_fsdp_cpu.yaml"),
                  "--main_process_port", str(_free_port())]  # fmt: skip
    done = _launch(accelerate, "examples/run_ctr.py", [*common, "--per_device_train_batch_size", "4", "--gradient_checkpointing", "true",
                   "--cf_checkpoints", str(single / "cf_mf"), "--output_dir", str(sharded)])  # fmt: skip
    assert "FSDP2 on CPU: 2 processes" in done.stderr  # not a silent fall-back to DDP

    for stage in ("stage_1_lora", "stage_2_fusion"):
        one, two = (
            json.loads((run / "gate" / stage / "stage_log.json").read_text()) for run in (single, sharded)
        )
        assert one["trainable_parameters"] == two["trainable_parameters"]
        loss_1, loss_2 = (np.array([r["loss"] for r in run["train_log"]]) for run in (one, two))
        norm_1, norm_2 = (np.array([r["grad_norm"] for r in run["train_log"]]) for run in (one, two))
        assert len(loss_1) == len(loss_2) == 8 and np.ptp(loss_1) > 0.05
        np.testing.assert_allclose(loss_2, loss_1, rtol=0, atol=1e-4)
        np.testing.assert_allclose(norm_2, norm_1, rtol=1e-4)

    # the adapter gathered from the shards: whole tensors, LoRA and ALG/GATE only (the CF tables stayed frozen)
    from peft import load_peft_weights

    adapter = load_peft_weights(str(sharded / "gate" / "adapter"))
    assert any("lora_B" in k for k in adapter) and all("lora_" in k or {"alignment", "gate"} & set(k.split("."))
                                                       for k in adapter)  # fmt: skip
    assert adapter.keys() == load_peft_weights(str(single / "gate" / "adapter")).keys()
    # the saved folder, loaded in this one process, scores the validation rows as the sharded in-memory model did
    in_memory = pd.read_parquet(sharded / "gate" / "scores_validation.parquet")
    rows = seeded_subsample(make_demo_log()["validation"], 32, 1)
    assert (
        in_memory["user_id"].tolist() == rows["user_id"] and in_memory["item_id"].tolist() == rows["item_id"]
    )
    model = load_ctr_model(sharded / "gate", dtype=torch.float32)
    processor = CCFLlamaProcessor.from_pretrained(sharded / "gate")
    reloaded = score_rows(model, processor, rows["user_id"], rows["history"], rows["item_id"])
    np.testing.assert_allclose(reloaded, in_memory["score"].to_numpy(), rtol=0, atol=1e-5)
    one_process = pd.read_parquet(single / "gate" / "scores_validation.parquet")["score"].to_numpy()
    np.testing.assert_allclose(in_memory["score"].to_numpy(), one_process, rtol=0, atol=1e-5)
    assert np.ptp(one_process) > 1e-3  # the scores differ between rows: the comparison means something


def test_shard_rows_by_user_keeps_users_whole_and_balances_rows():
    rng = np.random.default_rng(0)
    users = rng.integers(1, 40, 1000)
    for shares in (1, 2, 3, 7):
        parts = shard_rows_by_user(users, shares)
        assert len(parts) == shares and np.array_equal(np.sort(np.concatenate(parts)), np.arange(1000))
        owners = [set(users[p].tolist()) for p in parts]
        assert sum(map(len, owners)) == len(set(users.tolist()))  # no user in two shares
        biggest_user = np.bincount(users).max()
        assert all(abs(len(p) - 1000 / shares) <= biggest_user for p in parts)
        assert all(np.all(np.diff(p) > 0) for p in parts)  # input order within a share
    assert [p.tolist() for p in shard_rows_by_user([5, 1, 5], 4)] == [[1], [0, 2], [], []]
    with pytest.raises(ValueError, match="num_shards must be >= 1"):
        shard_rows_by_user([1], 0)


def _table(n=60, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"user_id": rng.integers(1, 6, n), "history": [list(rng.integers(1, 7, rng.integers(0, 4))) for _ in range(n)],
                         "item_id": rng.integers(1, 7, n), "label": rng.integers(0, 2, n)})  # fmt: skip


def test_score_rows_distributed_without_a_process_group_is_score_rows():
    model, processor = build("gate", sasrec=True)
    table = _table()
    args = (table["user_id"], table["history"].tolist(), table["item_id"])
    np.testing.assert_array_equal(score_rows_distributed(model, processor, *args, batch_size=7),
                                  score_rows(model, processor, *args, batch_size=7))  # fmt: skip
    with pytest.raises(ValueError, match="got 60 user ids, 59 histories and 60 item ids"):
        score_rows_distributed(
            model, processor, table["user_id"], table["history"].tolist()[:-1], table["item_id"]
        )


def test_score_script_under_torchrun_writes_one_file_in_input_order_with_one_process_scores(tmp_path):
    model, processor = build("inject", sasrec=True)
    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    table = _table()
    table.to_parquet(tmp_path / "rows.parquet")
    expected = score_rows(model, processor, table["user_id"], table["history"].tolist(), table["item_id"])
    torchrun = ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    done = _launch(torchrun, "examples/score.py", ["--model", str(tmp_path / "model"), "--input",
                   str(tmp_path / "rows.parquet"), "--output", str(tmp_path / "scores.parquet"), "--batch_size", "5",
                   "--dtype", "float32"])  # fmt: skip
    assert "scored 60 rows" in done.stdout and "with 2 process(es)" in done.stdout
    out = pd.read_parquet(tmp_path / "scores.parquet")
    pd.testing.assert_frame_equal(out.drop(columns="score"), table)
    np.testing.assert_allclose(out["score"].to_numpy(), expected, rtol=0, atol=1e-5)
    assert np.ptp(expected) > 1e-3
