"""`benchmarks/sasrec_user_vectors.py`: the statistics behind the README's account of the SASRec rows, on a tiny SASRec
built in code."""

import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from ccf_llm import SASRecConfig, SASRecModel
from ccf_llm.data import CTRRows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import sasrec_user_vectors  # noqa: E402


def rows(n: int, seed: int) -> CTRRows:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, 6, size=n)  # some rows without history, some longer than max_history
    split = datasets.Dataset.from_dict(
        {
            "user_id": rng.integers(1, 6, size=n).tolist(),
            "item_id": rng.integers(1, 10, size=n).tolist(),
            "label": rng.integers(0, 2, size=n).tolist(),
            "history": [rng.integers(1, 10, size=k).tolist() for k in lengths],
        }
    )
    return CTRRows(split, max_history=3)


def test_mean_pairwise_cosine_is_the_mean_over_distinct_pairs():
    vectors = torch.randn(7, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(vectors, dim=-1)
    brute = [float(unit[i] @ unit[j]) for i in range(7) for j in range(7) if i != j]
    assert sasrec_user_vectors.mean_pairwise_cosine(vectors) == pytest.approx(np.mean(brute), abs=1e-9)
    assert sasrec_user_vectors.mean_pairwise_cosine(vectors[:1].repeat(5, 1)) == pytest.approx(1.0)


def test_statistics_of_a_tiny_sasrec():
    torch.manual_seed(0)
    model = SASRecModel(SASRecConfig(num_users=5, num_items=9, hidden_size=8, max_history=3, dropout=0.5))
    train, test = rows(60, seed=1), rows(40, seed=2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    found = sasrec_user_vectors.user_vector_statistics(model, train, test, score_rows=10)
    for name, weight in model.state_dict().items():  # the bf16 and train-mode checks ran on copies
        assert torch.equal(weight, before[name]), name

    history = train.tensors["history"]
    assert found["rows_with_history"] == int((history != 0).any(-1).sum()) < 60
    assert found["full_history"]["rows"] + found["short_history"]["rows"] == found["rows_with_history"]
    model.eval()
    with torch.no_grad():
        logits = model(**{k: v for k, v in test.tensors.items() if k != "labels"}).logits
    assert found["test_auc_own_user_vector"] == pytest.approx(roc_auc_score(test.tensors["labels"], logits))
    assert 0 < found["dropout_noise_rms"]  # dropout 0.5, train mode: the vectors move
    assert 0.5 < found["bf16_encoder_cosine_to_fp32"] <= 1.0 + 1e-6  # a random model's users differ widely
    assert found["users"]["spread"] > 0.01 and found["users"]["mean_cosine"] < 0.99
    # rows without history give one distant vector: counting them changes the scale
    assert found["standardization"]["scale_with_rows_without_history"] != pytest.approx(
        found["standardization"]["scale"]
    )
    assert (
        not model.training and next(model.parameters()).dtype == torch.float32
    )  # left as found (eval, fp32)
    lines = sasrec_user_vectors.render({"cf_checkpoint": "tiny", "statistics": found})
    assert any(line.startswith("| full history (3 items) |") for line in lines)


def test_parameter_groups_report_what_is_left_of_each_kind_of_weight():
    torch.manual_seed(0)
    model = SASRecModel(SASRecConfig(num_users=5, num_items=9, hidden_size=8, max_history=3, num_blocks=2))
    found = sasrec_user_vectors.parameter_groups(model)
    counts = {k: v["tensors"] for k, v in found.items()}
    # per block: attention in/out + 2 feed-forward matrices; in/out + 2 feed-forward biases + 2 norm biases; 2 gains
    assert counts == {
        "encoder weight matrices (attention, feed-forward)": 8,
        "encoder biases": 13,  # 12 in the blocks + the final norm's
        "LayerNorm gains": 5,
        "position embeddings": 1,
        "item table": 1,
    }
    assert sum(counts.values()) == len(list(model.parameters()))
    with pytest.raises(ValueError, match="'encoder.blocks.0.gate.weight' is not one of SASRecModel's"):
        sasrec_user_vectors.parameter_group("encoder.blocks.0.gate.weight")
    assert found["item table"]["largest_rms"] == pytest.approx(1.0, abs=0.3)  # N(0, 1) rows (padding row 0)
    assert found["LayerNorm gains"]["largest_rms"] == pytest.approx(1.0)
    assert found["encoder weight matrices (attention, feed-forward)"]["largest_rms"] > 0.05
    with torch.no_grad():  # what L2 weight decay 1e-2 did to CoLLM's SASRec: every matrix at 0
        for name, weight in model.named_parameters():
            if sasrec_user_vectors.parameter_group(name).startswith("encoder weight matrices"):
                weight.zero_()
    found = sasrec_user_vectors.user_vector_statistics(
        model, rows(60, seed=1), rows(40, seed=2), score_rows=10
    )
    assert found["parameters"]["encoder weight matrices (attention, feed-forward)"]["largest_rms"] == 0.0
    assert found["parameters"]["LayerNorm gains"]["largest_rms"] == pytest.approx(1.0)  # the rest as it was
    lines = sasrec_user_vectors.render({"cf_checkpoint": "tiny", "statistics": found})
    assert "| encoder weight matrices (attention, feed-forward) | 8 | 0.00e+00 |" in lines


def test_several_checkpoints_are_compared_with_the_settings_they_were_trained_with(tmp_path):
    torch.manual_seed(0)
    found = {}
    for name, zero in (("recipe", True), ("light_decay", False)):
        model = SASRecModel(SASRecConfig(num_users=5, num_items=9, hidden_size=8, max_history=3))
        if zero:
            with torch.no_grad():
                for parameter, weight in model.named_parameters():
                    if sasrec_user_vectors.parameter_group(parameter).startswith("encoder weight matrices"):
                        weight.zero_()
        found[name] = sasrec_user_vectors.user_vector_statistics(model, rows(60, seed=1), rows(40, seed=2))
    (tmp_path / "recipe").mkdir()
    (tmp_path / "recipe" / "all_results.json").write_text(
        '{"weight_decay": 0.01, "learning_rate": 0.01, "eval_auc": 0.68889, "test_auc": 0.7}'
    )
    record = sasrec_user_vectors.training_record(tmp_path / "recipe")
    assert record["weight_decay"] == 0.01 and record["best_epoch"] is None  # not recorded: None, not dropped
    assert sasrec_user_vectors.training_record(tmp_path / "light_decay") is None
    entry = {
        "checkpoints": [
            {"cf_checkpoint": "recipe", "training": record, "statistics": found["recipe"]},
            {"cf_checkpoint": "light_decay", "training": None, "statistics": found["light_decay"]},
        ]
    }
    lines = sasrec_user_vectors.render(entry)
    recipe = next(line for line in lines if line.startswith("| `recipe` |"))
    assert recipe.startswith("| `recipe` | 0.01 | 0.01 | 0.6889 |") and recipe.endswith("| 0.00e+00 |")
    assert next(line for line in lines if line.startswith("| `light_decay` |")).startswith(
        "| `light_decay` | ? | ? | ? |"
    )
    assert "### `recipe`" in lines and "### `light_decay`" in lines
    # an entry written before several checkpoints were measured renders as before
    single = sasrec_user_vectors.render({"cf_checkpoint": "recipe", "statistics": found["recipe"]})
    assert single[0].startswith("SASRec `recipe`, fp32") and not any(
        line.startswith("###") for line in single
    )
