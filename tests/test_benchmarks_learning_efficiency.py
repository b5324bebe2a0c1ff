"""`benchmarks/learning_efficiency.py`: several seeds scored on the same validation rows, and their report."""

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformers import TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import learning_efficiency  # noqa: E402
from report import RESULTS, save_results  # noqa: E402

GATE, INJECT = "gate_fusion_lr1e-3_warmup", "inject"


def _arm(name: str, scores: np.ndarray, seed: int, eval_seed: int = 0) -> dict:
    spec = learning_efficiency.ARMS[name]
    history = [{"step": 0, "stage": "lora", "auc": 0.5, "loss": 4.2}, {"step": 50, "stage": "lora", "loss": 3.0},
               {"step": 100, "stage": "lora", "loss": 2.8}, {"step": 100, "stage": "lora", "auc": 0.6, "loss": 2.0},
               {"step": 200, "stage": "fusion", "loss": 2.5}, {"step": 200, "stage": "fusion", "auc": 0.7}]  # fmt: skip
    return {"arm": name, "spec": spec, "seed": seed, "eval_seed": eval_seed, "eval_rows": 300, "seconds": 60.0,
            "history": history, "scores": scores.tolist(), "scores_order": "rows"}  # fmt: skip


def _rows(rng, n=300):
    users = np.repeat(np.arange(30), n // 30)
    labels = rng.integers(0, 2, n)
    return labels, users


def test_two_seeds_get_their_own_rows_and_a_mean_compared_on_the_same_users():
    rng = np.random.default_rng(0)
    labels, users = _rows(rng)
    found = {
        seed: {
            GATE: _arm(GATE, labels * strength + rng.normal(size=labels.size), seed),
            INJECT: _arm(INJECT, labels * 0.5 + rng.normal(size=labels.size), seed),
        }
        for seed, strength in ((0, 1.0), (1, 0.8))
    }
    cf = labels * 0.3 + rng.normal(size=labels.size)
    out = learning_efficiency.summarize(found, labels, users, "CF alone (mf)", cf)
    auc = {(n, s): roc_auc_score(labels, found[s][n]["scores"]) for s in found for n in (GATE, INJECT)}
    assert out["reference"] == GATE and out["seeds"] == [0, 1]
    inject = out["arms"][INJECT]
    for seed in (0, 1):
        run = inject["seeds"][str(seed)]
        assert run["auc"] == pytest.approx(auc[INJECT, seed])
        assert run["vs_reference"]["auc_diff"] == pytest.approx(auc[INJECT, seed] - auc[GATE, seed])
        assert run["vs_cf"] is None  # only gate arms are compared with the CF model
        # the evaluations' validation losses (stored as "loss" by arms before 2026-12-06) are not training losses
        assert run["stage_1"] == {"auc": 0.6, "loss": pytest.approx(2.9)}
    pooled = inject["mean"]["vs_reference"]
    assert pooled["auc_diff"] == pytest.approx(np.mean([auc[INJECT, s] - auc[GATE, s] for s in (0, 1)]))
    assert pooled["auc_diff_ci"][0] < pooled["auc_diff"] < pooled["auc_diff_ci"][1]
    gate_mean = out["arms"][GATE]["mean"]
    assert gate_mean["auc"] == pytest.approx(np.mean([auc[GATE, 0], auc[GATE, 1]]))
    assert gate_mean["vs_cf"]["auc_diff"] == pytest.approx(gate_mean["auc"] - roc_auc_score(labels, cf))
    assert gate_mean["vs_reference"] is None
    # every gate arm is compared with inject too (here the reference's mirror image)
    assert gate_mean["vs_inject"]["auc_diff"] == pytest.approx(-pooled["auc_diff"])
    assert out["arms"][GATE]["seeds"]["1"]["vs_inject"]["auc_diff"] == pytest.approx(
        auc[GATE, 1] - auc[INJECT, 1]
    )
    assert inject["mean"]["vs_inject"] is None

    entry = {"constant_loss": 2.76, "eval_rows": 300, "figure": "learning_efficiency_avx2.png", **out}
    lines = learning_efficiency.render(entry)
    assert "2 seeds (0, 1)" in lines[0] and "[learning_efficiency_avx2.png]" in lines[0]
    table = [line for line in lines if line.startswith("|")]
    assert {line.count("|") for line in table} == {table[0].count("|")}  # every row has the header's cells
    labels_in_table = [line.split(" | ")[0] for line in table[3:]]
    assert labels_in_table == [f"| `{GATE}` seed 0", f"| `{GATE}` seed 1", f"| `{GATE}` mean of 2 seeds",
                               f"| `{INJECT}` seed 0", f"| `{INJECT}` seed 1", f"| `{INJECT}` mean of 2 seeds"]  # fmt: skip
    assert f"{pooled['auc_diff']:+.3f}" in table[-1]
    assert "AUC diff vs `inject`" in table[0]
    # a mean row's difference: the users' interval, then the seeds' t-interval (1 df for 2 seeds)
    seeds_only = gate_mean["vs_inject"]["between_seeds"]
    assert seeds_only["auc_diffs"] == pytest.approx([auc[GATE, s] - auc[INJECT, s] for s in (0, 1)])
    assert table[5].split(" | ")[-2] == f"{gate_mean['vs_inject']['auc_diff']:+.3f} [{gate_mean['vs_inject']['auc_diff_ci'][0]:+.3f}, {gate_mean['vs_inject']['auc_diff_ci'][1]:+.3f}], p={gate_mean['vs_inject']['auc_p']:.3f}; seeds [{seeds_only['auc_diff_ci'][0]:+.3f}, {seeds_only['auc_diff_ci'][1]:+.3f}], p={seeds_only['auc_p']:.3f}"  # fmt: skip
    assert "Student-t interval" in lines[0] and "(df = 1:" in lines[0]
    assert "seeds [" not in table[3]  # a seed's own row has no spread between seeds


def test_inject_as_the_reference_is_compared_once_with_each_gate_arm():
    """With no `gate` arm in every seed the reference is `inject`, and `gate` vs `inject` is that pair too."""
    rng = np.random.default_rng(1)
    labels, users = _rows(rng)
    found = {
        seed: {INJECT: _arm(INJECT, labels * 0.5 + rng.normal(size=labels.size), seed)} for seed in (0, 1)
    }
    found[0]["gate_alpha1"] = _arm("gate_alpha1", labels + rng.normal(size=labels.size), 0)
    out = learning_efficiency.summarize(
        found, labels, users, "CF alone (mf)", labels * 0.3 + rng.normal(size=300)
    )
    assert out["reference"] == INJECT
    run = out["arms"]["gate_alpha1"]["seeds"]["0"]
    expected = roc_auc_score(labels, found[0]["gate_alpha1"]["scores"]) - roc_auc_score(
        labels, found[0][INJECT]["scores"]
    )
    assert run["vs_inject"] == run["vs_reference"] and run["vs_inject"]["auc_diff"] == pytest.approx(expected)
    assert "mean" not in out["arms"]["gate_alpha1"] and out["arms"][INJECT]["mean"]["vs_reference"] is None


def test_an_arm_scored_on_other_validation_rows_is_refused_by_file(tmp_path):
    args = argparse.Namespace(
        output_dir=str(tmp_path), seeds=[0, 1], eval_seed=0, eval_rows=300, cf_checkpoint="cf"
    )
    for seed in (0, 1):
        (tmp_path / f"seed{seed}").mkdir()
    scores = np.zeros(300)
    old_seed0 = _arm(GATE, scores, 0)
    del (
        old_seed0["eval_seed"],
        old_seed0["eval_rows"],
    )  # written before --eval_seed, with --seed 0: the same rows
    (tmp_path / "seed0" / f"{GATE}.json").write_text(json.dumps(old_seed0))
    old = _arm(GATE, scores, 1)
    del old["eval_seed"]  # written before --eval_seed: its rows were drawn with its own seed, 1
    (tmp_path / "seed1" / f"{GATE}.json").write_text(json.dumps(old))
    with pytest.raises(
        ValueError,
        match=r"seed1/gate_fusion_lr1e-3_warmup\.json was scored on 300 validation rows drawn with seed 1",
    ):
        learning_efficiency.load_arms(args, "ccf_mf")
    args.seeds = [0]
    assert list(learning_efficiency.load_arms(args, "ccf_mf")) == [0]
    lightgcn = {
        **_arm(GATE, scores, 0),
        "cf_model_type": "ccf_lightgcn",
        "cf_checkpoint": "outputs/cf_lightgcn",
    }
    (tmp_path / "seed0" / f"{GATE}.json").write_text(json.dumps(lightgcn))
    with pytest.raises(
        ValueError, match=r"fused a ccf_lightgcn model \(outputs/cf_lightgcn\), not the ccf_mf"
    ):
        learning_efficiency.load_arms(args, "ccf_mf")
    assert list(learning_efficiency.load_arms(args, "ccf_lightgcn")) == [0]
    args.eval_rows = 1000  # the old file holds 300 scores
    with pytest.raises(
        ValueError, match="was scored on 300 validation rows drawn with seed 0, not on the 1000"
    ):
        learning_efficiency.load_arms(args, "ccf_mf")


@pytest.mark.parametrize("max_steps", [100, 70])
def test_the_final_step_is_not_evaluated_twice_but_earlier_steps_are(tmp_path, max_steps):
    """Added after the Trainer's default flow, the callback vetoes its evaluation at the last step only."""
    args = TrainingArguments(output_dir=str(tmp_path), eval_strategy="steps", eval_steps=50, report_to="none")
    handler = CallbackHandler([DefaultFlowCallback], None, None, None, None)
    handler.add_callback(learning_efficiency.SkipFinalEvaluation())
    state = TrainerState(max_steps=max_steps, eval_steps=50, logging_steps=10)
    evaluated = []
    for step in range(1, max_steps + 1):
        state.global_step = step
        if handler.on_step_end(args, state, TrainerControl()).should_evaluate:
            evaluated.append(step)
    assert evaluated == [50]
    without = CallbackHandler([DefaultFlowCallback], None, None, None, None)
    assert without.on_step_end(args, state, TrainerControl()).should_evaluate  # the default evaluates the end


def test_committed_entries_render_unchanged(tmp_path):
    """Entries written before --seeds (one seed's figures per arm) still render as committed."""
    stored = json.loads((RESULTS / "learning_efficiency.json").read_text())
    for entry in stored["by_cpu_kind"].values():
        save_results(
            "learning_efficiency", entry, learning_efficiency.render, learning_efficiency.TITLE, tmp_path
        )
    assert (tmp_path / "learning_efficiency.md").read_text() == (
        RESULTS / "learning_efficiency.md"
    ).read_text()


@pytest.mark.parametrize("backbone", ["lightgcn", "sasrec"])
def test_the_report_is_written_under_its_results_name_with_its_cf_model(tmp_path, monkeypatch, backbone):
    """
    A LightGCN or SASRec run (`--results_name learning_efficiency_<cf>`) gets its own files, not the MF runs' ones,
    and its `CF alone` row scores the rows the way the CF model does: SASRec from each row's latest history items.
    """
    import datasets
    import report

    from ccf_llm import LightGCNConfig, LightGCNModel, SASRecConfig, SASRecModel

    monkeypatch.setattr(report, "RESULTS", tmp_path)
    rng = np.random.default_rng(1)
    labels, users = _rows(rng)
    users, items = users + 1, rng.integers(1, 6, labels.size)  # ids start at 1
    # 0 to 4 items each: some rows have no history
    histories = [rng.integers(1, 6, n).tolist() for n in rng.integers(0, 5, labels.size)]
    name = f"learning_efficiency_{backbone}"
    args = argparse.Namespace(output_dir=str(tmp_path / "runs"), seeds=[0], eval_seed=0, eval_rows=300, dtype="float32",
                              cf_checkpoint=f"outputs/cfb/cf_{backbone}", results_name=name)  # fmt: skip
    (tmp_path / "runs" / "seed0").mkdir(parents=True)
    (tmp_path / "runs" / "seed0" / f"{GATE}.json").write_text(
        json.dumps(_arm(GATE, labels + rng.normal(size=300), 0))
    )
    torch.manual_seed(0)
    if backbone == "lightgcn":
        cf_model = LightGCNModel(LightGCNConfig(num_users=30, num_items=5, hidden_size=2))
        cf_model.set_graph(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 5]))
        expected = cf_model(torch.tensor(users), torch.tensor(items)).logits
    else:
        cf_model = SASRecModel(SASRecConfig(num_users=30, num_items=5, hidden_size=4, max_history=3)).eval()
        latest = torch.tensor([([0] * 3 + h)[-3:] for h in histories])  # left-padded latest 3 items
        expected = (cf_model.encode_history(latest) * cf_model.item_embeddings(torch.tensor(items))).sum(-1)
    rows = datasets.Dataset.from_dict(
        {"user_id": users.tolist(), "item_id": items.tolist(), "label": labels.tolist(), "history": histories}
    )
    learning_efficiency.report(args, 2.76, rows, cf_model)
    kind = report.provenance(torch.float32)["cpu_kind"].lower()
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == [
        f"{name}.json", f"{name}.md", f"{name}_{kind}.png"
    ]  # fmt: skip
    text = (tmp_path / f"{name}.md").read_text()
    assert f"| CF alone (cf_{backbone}) |" in text and f"`{GATE}` |" in text
    saved = json.loads((tmp_path / f"{name}.json").read_text())["by_cpu_kind"][kind.upper()]
    assert saved["cf"]["auc"] == pytest.approx(roc_auc_score(labels, expected.detach().numpy()), abs=1e-6)
