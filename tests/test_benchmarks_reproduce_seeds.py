"""`benchmarks/reproduce_seeds.py`: the main comparisons over seeds, from the rows each seed's run finished."""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import archive  # noqa: E402
import reproduce_seeds  # noqa: E402


def scores(rows: int = 2000, users: int = 200, seed: int = 0):
    """Test rows (ids, labels) and a scorer: `score(strength, noise_seed)` is the label plus noise, weaker for
    smaller `strength`."""
    rng = np.random.default_rng(seed)
    ids = pd.DataFrame({"user_id": rng.integers(0, users, rows), "item_id": rng.integers(0, 500, rows),
                        "label": rng.integers(0, 2, rows)})  # fmt: skip

    def score(strength: float, noise_seed: int) -> pd.DataFrame:
        noise = np.random.default_rng(noise_seed).normal(size=rows)
        return ids.assign(score=strength * ids["label"] + noise)

    return ids, score


def test_seed_table_averages_each_sides_seeds_and_compares_rows_finished_in_every_seed():
    ids, score = scores()
    frames = {"mf": score(0.3, 1), "text@0": score(0.4, 2), "text@1": score(0.4, 3), "inject_mf@0": score(0.6, 4),
              "inject_mf@1": score(0.6, 5), "gate_mf@0": score(1.0, 6), "gate_mf@1": score(0.9, 7),
              "gate_lightgcn@0": score(0.8, 8)}  # fmt: skip
    out = reproduce_seeds.seed_table(frames, [0, 1])
    assert out["rows_in_every_seed"] == ["text", "inject_mf", "gate_mf"]  # gate_lightgcn lacks seed 1
    auc = {name: roc_auc_score(f["label"], f["score"]) for name, f in frames.items()}
    gap = out["paired"]["gate_mf - inject_mf"]
    expected = np.mean([auc["gate_mf@0"] - auc["inject_mf@0"], auc["gate_mf@1"] - auc["inject_mf@1"]])
    assert gap["auc_diff"] == pytest.approx(expected) and gap["auc_diff_ci"][0] > 0 and gap["auc_p"] < 0.01
    over_cf = out["paired"]["gate_mf - mf"]  # the CF model is one model in every seed
    assert over_cf["auc_diff"] == pytest.approx(np.mean([auc["gate_mf@0"], auc["gate_mf@1"]]) - auc["mf"])
    assert set(out["paired"]) == {"inject_mf - mf", "gate_mf - mf", "gate_mf - inject_mf", "gate_mf - text",
                                  "inject_mf - text"}  # fmt: skip
    lines = reproduce_seeds.render(out)
    row = next(line for line in lines if line.startswith("| gate_lightgcn |"))
    assert row.endswith("| not run |  |") and f"{auc['gate_lightgcn@0']:.4f} [" in row
    mean = next(line for line in lines if line.startswith("| gate_mf |")).split("|")[-2].strip()
    assert float(mean) == pytest.approx(np.mean([auc["gate_mf@0"], auc["gate_mf@1"]]), abs=1e-4)


def test_per_seed_differences_sit_beside_the_mean():
    _, score = scores()
    frames = {"inject_mf@0": score(0.6, 4), "inject_mf@1": score(0.6, 5), "gate_mf@0": score(0.6, 6),
              "gate_mf@1": score(1.2, 7)}  # fmt: skip
    out = reproduce_seeds.seed_table(frames, [0, 1])
    gap = out["paired"]["gate_mf - inject_mf"]
    auc = {name: roc_auc_score(f["label"], f["score"]) for name, f in frames.items()}
    each = [d["auc_diff"] for d in gap["per_seed"]]
    assert each == pytest.approx(
        [auc["gate_mf@0"] - auc["inject_mf@0"], auc["gate_mf@1"] - auc["inject_mf@1"]]
    )
    assert abs(each[0]) < 0.03 < each[1] and gap["per_seed"][1]["auc_p"] < 0.01  # a tie, then a clear gap
    row = next(line for line in reproduce_seeds.render(out) if line.startswith("| gate_mf - inject_mf |"))
    assert f"{each[0]:+.4f} (" in row and f"{each[1]:+.4f} (0.001)" in row
    # between seeds, a tie and a clear gap: a t-interval (1 df) that spans 0, unlike the users' one
    between = gap["between_seeds"]
    assert between["auc_diff_ci"][0] < 0 < gap["auc_diff_ci"][0] and between["auc_p"] > 0.05
    assert row.count("|") == 9 and f"{between['auc_p']:.3f} |" in row


def test_collect_refuses_llm_rows_whose_cf_model_has_no_scores(tmp_path, monkeypatch):
    """CF rows are not archived: without the budget's CF models the comparisons against them would vanish."""
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.json"
    config.write_text('{"seed": 0}')
    monkeypatch.setitem(reproduce_seeds.reproduce.BUDGETS, "full", (config, "reproduce_full"))
    monkeypatch.setattr(archive, "movielens_splits", lambda data_dir: {})
    restored = []
    monkeypatch.setattr(archive, "restore", lambda folder, out, splits: restored.append(folder.parent.name))
    ids, score = scores()
    for folder in ("reproduce_full/gate_mf/gate", "reproduce_full_seed1/gate_mf/gate"):
        (tmp_path / "outputs" / folder).mkdir(parents=True)
        score(1.0, 0).to_parquet(tmp_path / "outputs" / folder / "scores_test.parquet")
    with pytest.raises(FileNotFoundError, match=r"\['mf'\] have no test scores in outputs/reproduce_full/"):
        reproduce_seeds.collect("full", [0, 1], "data")
    assert restored == ["reproduce_full_rows", "reproduce_full_seed1_rows"]  # each seed's own archive
    (tmp_path / "outputs" / "reproduce_full" / "mf").mkdir()
    score(0.3, 1).to_parquet(tmp_path / "outputs" / "reproduce_full" / "mf" / "scores_test.parquet")
    assert set(reproduce_seeds.collect("full", [0, 1], "data")) == {"mf", "gate_mf@0", "gate_mf@1"}
    with pytest.raises(FileNotFoundError, match=r"no finished LLM rows of seeds \[5\]"):
        reproduce_seeds.collect("full", [5], "data")


def test_gate_and_inject_rows_are_also_compared_with_their_cf_rows_item_only_reference():
    _, score = scores()
    frames = {"mf": score(0.3, 1), "mf (item only)": score(0.8, 2), "inject_mf@0": score(0.6, 4),
              "inject_mf@1": score(0.6, 5), "gate_mf@0": score(1.0, 6), "gate_mf@1": score(0.9, 7)}  # fmt: skip
    out = reproduce_seeds.seed_table(frames, [0, 1])
    auc = {name: roc_auc_score(f["label"], f["score"]) for name, f in frames.items()}
    gap = out["paired"]["gate_mf - mf (item only)"]
    assert gap["auc_diff"] == pytest.approx(
        np.mean([auc["gate_mf@0"], auc["gate_mf@1"]]) - auc["mf (item only)"]
    )
    assert "inject_mf - mf (item only)" in out["paired"] and "gate_mf - inject_mf" in out["paired"]
    row = next(line for line in reproduce_seeds.render(out) if line.startswith("| mf (item only) |"))
    assert row.count(f"{auc['mf (item only)']:.4f}") == 3  # each seed's column and the mean: one model


def test_item_only_references_score_every_row_with_the_mean_training_user(tmp_path, monkeypatch):
    import datasets
    import torch

    from ccf_llm import MFConfig, MFModel

    monkeypatch.chdir(tmp_path)
    config = tmp_path / "config.json"
    config.write_text('{"seed": 0}')
    monkeypatch.setitem(reproduce_seeds.reproduce.BUDGETS, "full", (config, "reproduce_full"))
    model = MFModel(MFConfig(num_users=3, num_items=4, hidden_size=2))
    with torch.no_grad():
        model.user_embeddings.weight.copy_(torch.tensor([[0, 0], [1, 0], [3, 2], [0, 0.0]]))
        model.item_embeddings.weight.copy_(torch.tensor([[0, 0], [1, 1], [2, -1], [0, 5], [1, 0.0]]))
    model.save_pretrained(tmp_path / "outputs" / "reproduce_full" / "mf")

    def split(users, items):
        return datasets.Dataset.from_dict({"user_id": users, "item_id": items, "label": [n % 2 for n in range(len(users))],
                                           "history": [[1]] * len(users)})  # fmt: skip

    test = split([1, 3], [3, 4])
    monkeypatch.setattr(
        "ccf_llm.data.load_movielens_1m", lambda data_dir: {"train": split([1, 2], [1, 2]), "test": test}
    )
    frames = {"mf": test.to_pandas()[["user_id", "item_id", "label"]].assign(score=[5.0, 0.0])}
    found = reproduce_seeds.item_only_references("full", frames, "data")
    assert list(found) == ["mf (item only)"]
    np.testing.assert_allclose(
        found["mf (item only)"]["score"], [0 * 2 + 5 * 1, 1 * 2 + 0 * 1]
    )  # mean user (2, 1)
    assert (found["mf (item only)"]["user_id"] == [1, 3]).all()
