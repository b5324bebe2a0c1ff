"""examples/run_ctr.py (and examples/analyze.py on its output) end to end on the synthetic demo log, with a tiny LLM."""

import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModel

from ccf_llm import CCFLlamaProcessor, score_rows
from ccf_llm.trainer_ccf_llama import CCFTrainingArguments

from .conftest import tiny_llm, tiny_tokenizer


def _tiny_llm_folder(tmp_path):
    """A tiny Llama + word-level tokenizer covering the demo titles and the paper's template."""
    from ccf_llm.processing_ccf_llama import PAPER_TEMPLATE, TEXT_TEMPLATE
    from ccf_llm.synthetic import GENRE_WORDS

    words = set(
        (PAPER_TEMPLATE + " " + TEXT_TEMPLATE).replace("{", " ").replace("}", " ").replace('"', ' " ').split()
    )
    words |= (
        {w for ws in GENRE_WORDS.values() for w in ws}
        | {str(i) for i in range(1, 60)}
        | {"Yes", "No", "none", ","}
    )
    tokenizer = tiny_tokenizer(sorted(words))
    torch.manual_seed(0)
    llm = tiny_llm(
        tokenizer,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    folder = tmp_path / "tiny-llm"
    llm.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """One run_ctr.py run (JSON config plus overrides): CF pretraining, text and gate modes; the tests read its folder."""
    tmp_path = tmp_path_factory.mktemp("run_ctr")
    llm = _tiny_llm_folder(tmp_path)
    config = {
        "dataset": "demo", "fusion_modes": ["text", "gate"], "cf_backbone": "mf", "cf_hidden_size": 8,
        "cf_epochs": 3, "cf_batch_size": 512, "history_size": 3, "train_rows_per_stage": 32, "eval_rows": 48,
        "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
        "learning_rate": 0.001, "num_train_epochs": 1, "save_strategy": "no", "report_to": "none", "use_cpu": True,
        "disable_tqdm": True, "yes_token": "Yes", "no_token": "No", "standardize_cf": True, "cold_rule": "item",
        "dtype": "float32",  # the scores below are compared at fp32 tolerances on every kind of CPU
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setattr(
            sys, "argv", ["run_ctr.py", str(tmp_path / "config.json"), "--llm", str(llm), "--seed", "3"]
        )
        runpy.run_path("examples/run_ctr.py", run_name="__main__")
    out = tmp_path / "out"
    return out, json.loads((out / "all_results.json").read_text())


def test_run_ctr_reports_every_mode_with_the_auc_of_its_saved_scores(demo_run):
    out, summary = demo_run
    assert summary["fusion_mode"] == "gate" and summary["schedule"] == "lora+fusion"
    assert set(summary["by_mode"]) == {"text", "gate"} and summary["by_mode"]["text"]["schedule"] == "lora"
    assert summary["test_rows"] == 48 and summary["train_rows_per_stage"] == 32
    record = json.loads((out / "run_ctr.json").read_text())  # a rerun into the folder is compared with it
    assert record["config"] == json.loads((out.parent / "config.json").read_text())
    assert record["argv"][1:] == ["--llm", str(out.parent / "tiny-llm"), "--seed", "3"]
    for mode, results in summary["by_mode"].items():
        scores = pd.read_parquet(out / mode / "scores_test.parquet")
        assert len(scores) == 48
        assert results["test_auc"] == pytest.approx(roc_auc_score(scores["label"], scores["score"]), abs=1e-9)
    cf = json.loads((out / "cf_mf" / "all_results.json").read_text())
    assert summary["cf_test_auc"] == cf["test_auc"]
    assert (cf["learning_rate"], cf["weight_decay"]) == (
        1e-3,
        1e-4,
    )  # CoLLM's MF settings, kept with the results


def test_run_ctr_reports_warm_and_cold_test_auc_on_the_rows_the_llm_scored(demo_run):
    from ccf_llm.data import seeded_indices, warm_cold_masks
    from ccf_llm.synthetic import make_demo_log

    out, summary = demo_run
    splits = make_demo_log()
    cf = pd.read_parquet(out / "cf_mf" / "scores_test.parquet")
    assert len(cf) == len(splits["test"]) > 48  # the CF model scored the whole split, the LLM modes 48 rows
    cf = cf.iloc[seeded_indices(len(cf), 48, 3 + 1)].reset_index(drop=True)
    assert summary["cf_test_auc_llm_rows"] == pytest.approx(roc_auc_score(cf["label"], cf["score"]), abs=1e-9)
    frames = {"cf": cf} | {
        mode: pd.read_parquet(out / mode / "scores_test.parquet") for mode in ("text", "gate")
    }
    for name, frame in frames.items():
        assert (frame[["user_id", "item_id"]].to_numpy() == cf[["user_id", "item_id"]].to_numpy()).all()
        warm, cold = warm_cold_masks(frame["user_id"], frame["item_id"], splits["train"], cold="item")
        # the demo's cold items (absent from train) appear in test; every demo user has train rows
        assert cold.sum() > 0 and not (warm & cold).any()
        assert set(frame["item_id"][cold]).isdisjoint(splits["train"]["item_id"])
        results = {k.removeprefix("cf_"): v for k, v in summary.items() if k.startswith("cf_")}
        results = results if name == "cf" else summary["by_mode"][name]
        for subset, mask in (("warm", warm), ("cold", cold)):
            expected = roc_auc_score(frame["label"][mask], frame["score"][mask])
            assert results[f"test_auc_{subset}"] == pytest.approx(expected, abs=1e-9), (name, subset)
    assert summary["warm_cold_rows"] == {"warm": int(warm.sum()), "cold": int(cold.sum())}


def test_run_ctr_adapters_name_the_saved_base_folder_and_the_card_the_results(demo_run):
    out, summary = demo_run
    # the adapters name the saved base folder: it resolves offline and PEFT never looks a Hub id up while saving
    for adapter in (out / "gate" / "adapter", out / "gate" / "stage_2_fusion" / "final"):
        assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
            out / "gate"
        )
    card = (out / "gate" / "README.md").read_text()
    assert (
        "fusion mode **`gate`**" in card
        and f"{summary['test_auc']:.4f}" in card
        and "library_name: peft" in card
    )


def test_run_ctr_folder_reloads_into_the_model_that_gave_its_test_scores(demo_run):
    from peft import PeftModel

    from ccf_llm.data import seeded_subsample
    from ccf_llm.synthetic import make_demo_log

    out, _ = demo_run
    model = PeftModel.from_pretrained(
        AutoModel.from_pretrained(out / "gate"), out / "gate", subfolder="adapter"
    ).eval()
    base_config = model.get_base_model().config
    (scales,), (shifts,) = (
        base_config.cf_input_scales,
        base_config.cf_input_shifts,
    )  # --standardize_cf: one MF source
    assert (
        min(scales) > 0
        and scales != [1.0, 1.0]
        and [len(v) for v in shifts] == base_config.cf_embedding_dims * 2
    )
    processor = CCFLlamaProcessor.from_pretrained(out / "gate")  # checked against the folder's config.json
    assert processor.fusion_mode == "gate"
    test = seeded_subsample(
        make_demo_log()["test"], 48, 3 + 1
    ).flatten_indices()  # run_ctr's test rows (seed 3)
    with torch.no_grad():
        scores = score_rows(model, processor, test["user_id"], test.data.column("history"), test["item_id"])
    saved = pd.read_parquet(out / "gate" / "scores_test.parquet")
    assert saved["item_id"].tolist() == test["item_id"]
    np.testing.assert_allclose(scores, saved["score"], atol=1e-5)  # the run scored with LoRA merged


def test_ctr_scoring_pipeline_on_the_folder_ranks_like_the_peft_model(demo_run):
    from peft import PeftModel
    from transformers import pipeline

    out, _ = demo_run
    model = PeftModel.from_pretrained(
        AutoModel.from_pretrained(out / "gate"), out / "gate", subfolder="adapter"
    ).eval()
    processor = CCFLlamaProcessor.from_pretrained(out / "gate")
    ranked = pipeline("ctr-scoring", model=str(out / "gate"))(
        {"user_id": 1, "history": [1, 2], "candidates": [3, 4]}
    )
    with torch.no_grad():
        peft_scores = model(**processor([1, 1], [[1, 2], [1, 2]], [3, 4])).scores.numpy()
    assert ranked["item_ids"] == [[3, 4][i] for i in np.argsort(-peft_scores, kind="stable")]
    np.testing.assert_allclose(
        sorted(ranked["scores"], reverse=True), sorted(peft_scores, reverse=True), atol=1e-5
    )


def test_analyze_draws_the_embeddings_and_the_case_study(demo_run, tmp_path, monkeypatch):
    """examples/analyze.py on the two trained modes: t-SNE figure, embedding statistics and the case study."""
    out, _ = demo_run
    analysis = tmp_path / "analysis"
    argv = ["analyze.py", "--gate_model", str(out / "gate"), "--text_model", str(out / "text"), "--cf_model",
            str(out / "cf_mf"), "--dataset", "demo", "--items", "40", "--output_dir", str(analysis)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path("examples/analyze.py", run_name="__main__")
    assert (analysis / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((analysis / "analysis.json").read_text())
    assert stats["items"] == 40 and stats["fusion_mode"] == "gate"
    assert stats["cf_part_norm_ratio"] > 0  # stage 2 trained the gate: titles carry a CF part
    case = (analysis / "case_study.md").read_text()
    n = stats["case_study"]["candidates"]
    assert n > 1 and case.count("\n| ") == n + 1  # header + one line per candidate
    monkeypatch.setattr(sys, "argv", [*argv[:2], str(out / "text"), *argv[3:]])
    with pytest.raises(SystemExit, match="fuses no CF into title tokens"):
        runpy.run_path("examples/analyze.py", run_name="__main__")


def test_run_ctr_resumes_between_stages(tmp_path, monkeypatch):
    """A run whose stage 2 was lost resumes from stage 1's saved adapter and ends with the same weights."""
    import shutil

    from peft import load_peft_weights

    llm = _tiny_llm_folder(tmp_path)
    base = ["--dataset", "demo", "--fusion_modes", "gate", "--cf_backbone", "mf", "--cf_hidden_size", "8",
            "--cf_epochs", "2", "--history_size", "2", "--train_rows_per_stage", "24", "--eval_rows", "16",
            "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
            "--save_strategy", "no", "--llm", str(llm), "--seed", "1", "--dtype", "float32"]  # fmt: skip
    for name in ("straight", "interrupted"):
        monkeypatch.setattr(sys, "argv", ["run_ctr.py", *base, "--output_dir", str(tmp_path / name)])
        runpy.run_path("examples/run_ctr.py", run_name="__main__")
    shutil.rmtree(tmp_path / "interrupted" / "gate" / "stage_2_fusion")  # stage 2 never finished
    (tmp_path / "interrupted" / "gate" / "adapter" / "adapter_model.safetensors").unlink()
    monkeypatch.setattr(sys, "argv", ["run_ctr.py", *base, "--output_dir", str(tmp_path / "interrupted"),
                                      "--resume_from_checkpoint", "true", "--score_test", "false"])  # fmt: skip
    runpy.run_path("examples/run_ctr.py", run_name="__main__")
    straight = load_peft_weights(str(tmp_path / "straight" / "gate" / "adapter"))
    resumed = load_peft_weights(str(tmp_path / "interrupted" / "gate" / "adapter"))
    assert straight.keys() == resumed.keys() and all(torch.equal(straight[k], resumed[k]) for k in straight)
    results = json.loads((tmp_path / "interrupted" / "all_results.json").read_text())
    assert "stage_1_lora_seconds" not in results and "stage_2_fusion_seconds" in results
    # --score_test false (choosing settings on validation): the same validation scores, the test set unread
    straight_results = json.loads((tmp_path / "straight" / "all_results.json").read_text())
    assert results["eval_auc"] == straight_results["eval_auc"] and 0 < results["eval_auc"] < 1
    assert (
        not any(key.startswith("test_") and key != "test_rows" for key in results)
        and results["test_rows"] == 0
    )
    card = (tmp_path / "interrupted" / "gate" / "README.md").read_text()
    assert "| validation |" in card and "| test |" not in card


def test_push_to_hub_and_reload_gives_identical_scores(tmp_path):
    """run_ctr.py --push_to_hub against a fake Hub on 127.0.0.1; the downloaded model scores like the local one.
    A subprocess, because huggingface_hub reads HF_ENDPOINT when it is imported."""
    import os
    import subprocess
    import textwrap
    from pathlib import Path

    llm = _tiny_llm_folder(tmp_path)
    repo_root = Path(__file__).resolve().parents[1]
    args = ["--dataset", "demo", "--fusion_modes", "gate", "--cf_backbone", "mf", "--cf_hidden_size", "8",
            "--cf_epochs", "2", "--history_size", "2", "--train_rows_per_stage", "16", "--eval_rows", "16",
            "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
            "--save_strategy", "no", "--llm", str(llm), "--output_dir", str(tmp_path / "out"), "--dtype", "float32",
            "--push_to_hub", "true", "--hub_model_id", "tester/ccf-demo"]  # fmt: skip
    script = textwrap.dedent(
        f"""
        import json, os, runpy, sys
        sys.path.insert(0, {str(repo_root)!r})
        from tests.fake_hub import serve
        server, port = serve()
        os.environ.pop("HF_HUB_OFFLINE", None)
        os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{{port}}", HF_TOKEN="test-token")
        import torch
        sys.argv = ["run_ctr.py", *{args!r}]
        runpy.run_path({str(repo_root / "examples" / "run_ctr.py")!r}, run_name="__main__")
        from huggingface_hub import HfApi
        from peft import PeftModel
        from transformers import AutoModel
        import ccf_llm
        files = HfApi().list_repo_files("tester/ccf-demo")
        hub = PeftModel.from_pretrained(AutoModel.from_pretrained("tester/ccf-demo"), "tester/ccf-demo", subfolder="adapter").eval()
        out = {str(tmp_path / "out" / "gate")!r}
        local = PeftModel.from_pretrained(AutoModel.from_pretrained(out), out, subfolder="adapter").eval()
        processor = ccf_llm.CCFLlamaProcessor.from_pretrained("tester/ccf-demo")
        batch = processor([1, 2, 3], [[1, 2], [], [4]], [3, 4, 5])
        with torch.no_grad():
            same = torch.equal(hub(**batch).scores, local(**batch).scores)
        print("RESULT", json.dumps({{"files": files, "same": same}}))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=repo_root, env=os.environ.copy()
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["same"] is True
    assert {"README.md", "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "model.safetensors",
            "config.json", "processor_config.json", "tokenizer.json"} <= set(result["files"])  # fmt: skip
    assert not any(f.startswith("stage_") for f in result["files"])


def test_push_to_hub_without_a_token_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(sys, "argv", ["run_ctr.py", "--dataset", "demo", "--output_dir", str(tmp_path / "o"),
                                      "--push_to_hub", "true", "--use_cpu", "true"])  # fmt: skip
    with pytest.raises(ValueError, match="--push_to_hub needs a Hugging Face token"):
        runpy.run_path("examples/run_ctr.py", run_name="__main__")
    assert not (tmp_path / "o").exists()


def test_resume_from_checkpoint_takes_true_or_false_and_a_path_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["run_ctr.py"])
    resume_flag = runpy.run_path("examples/run_ctr.py")["resume_flag"]
    assert [resume_flag(v) for v in (None, "false", "False", "0", "true", "1")] == [False] * 4 + [True] * 2
    monkeypatch.setattr(sys, "argv", ["run_ctr.py", "--dataset", "demo", "--output_dir", str(tmp_path / "o"),
                                      "--resume_from_checkpoint", "o/checkpoint-20", "--use_cpu", "true"])  # fmt: skip
    with pytest.raises(ValueError, match="takes true or false here .* got 'o/checkpoint-20'"):
        runpy.run_path("examples/run_ctr.py", run_name="__main__")
    assert not (tmp_path / "o").exists()


def test_run_ctr_under_torchrun_with_two_cpu_workers(tmp_path, monkeypatch):
    """DDP on CPU (gloo): a single-process run pretrains the CF backbone, then torchrun reuses it with 2 workers."""
    import os
    import subprocess
    from pathlib import Path

    llm = _tiny_llm_folder(tmp_path)
    args = ["--dataset", "demo", "--fusion_modes", "gate", "--cf_backbone", "mf", "--cf_hidden_size", "8",
            "--cf_epochs", "2", "--history_size", "2", "--train_rows_per_stage", "32", "--eval_rows", "32",
            "--per_device_train_batch_size", "8", "--report_to", "none", "--use_cpu", "true", "--disable_tqdm", "true",
            "--save_strategy", "no", "--llm", str(llm), "--seed", "1", "--dtype", "float32", "--ddp_find_unused_parameters", "false",
            "--output_dir", str(tmp_path / "out")]  # fmt: skip
    monkeypatch.setattr(sys, "argv", ["run_ctr.py", *args])
    runpy.run_path("examples/run_ctr.py", run_name="__main__")
    (tmp_path / "out" / "all_results.json").unlink()
    repo_root = Path(__file__).resolve().parents[1]
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29517",
    ]
    done = subprocess.run([*torchrun, "examples/run_ctr.py", *args], capture_output=True, text=True, cwd=repo_root,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 1 of 2 (distributed)" in done.stderr and "process 0 of 2 (distributed)" in done.stderr
    results = json.loads((tmp_path / "out" / "all_results.json").read_text())
    # the two workers' scores, gathered, are the saved model's scores of run_ctr's test rows (seed 1) in one process
    from peft import PeftModel

    from ccf_llm.data import seeded_subsample
    from ccf_llm.synthetic import make_demo_log

    model = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tmp_path / "out" / "gate"), tmp_path / "out" / "gate", subfolder="adapter"
    ).eval()
    processor = CCFLlamaProcessor.from_pretrained(tmp_path / "out" / "gate")
    test = seeded_subsample(make_demo_log()["test"], 32, 1 + 1).flatten_indices()
    with torch.no_grad():
        scores = score_rows(model, processor, test["user_id"], test.data.column("history"), test["item_id"])
    saved = pd.read_parquet(tmp_path / "out" / "gate" / "scores_test.parquet")
    assert saved["item_id"].tolist() == test["item_id"] and results["test_rows"] == 32
    np.testing.assert_allclose(saved["score"], scores, atol=1e-5)
    assert results["test_auc"] == pytest.approx(roc_auc_score(saved["label"], saved["score"]))


_CONFIGS = Path(__file__).resolve().parents[1] / "examples" / "configs"
RUN_CTR_CONFIGS = sorted(str(p.relative_to(_CONFIGS)) for p in _CONFIGS.rglob("*.json"))


def test_every_shipped_json_config_is_a_run_ctr_config():
    assert {"demo.json", "reproduce_ml1m_full.json", "gpu/ml1m_7b_gate.json"} <= set(RUN_CTR_CONFIGS)


@pytest.mark.parametrize("config", RUN_CTR_CONFIGS)
def test_example_configs_parse_into_run_ctr_arguments(config, monkeypatch):
    """Every key of a shipped config is an argument run_ctr.py knows (HfArgumentParser refuses unknown ones)."""
    from transformers import HfArgumentParser

    monkeypatch.setattr(sys, "argv", ["run_ctr.py"])
    script = runpy.run_path("examples/run_ctr.py")  # defines the argument dataclasses, runs nothing
    values = json.loads((Path("examples/configs") / config).read_text())
    argv = [item for key, value in values.items()
            for item in (f"--{key}", *map(str, value if isinstance(value, list) else [value]))]  # fmt: skip
    parser = HfArgumentParser((script["ModelArguments"], script["DataArguments"], CCFTrainingArguments))
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=argv + ["--output_dir", "unused"])
    assert model_args.dtype == "auto"  # no config fixes a dtype: bf16 would crawl on AVX2 CPUs
    assert args.per_device_train_batch_size == values["per_device_train_batch_size"]
