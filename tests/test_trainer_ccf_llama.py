"""CCFTrainer: stage freezing, the two-stage schedule, metrics, resuming, NaN handling, and run_ctr.py end to end."""

import dataclasses
import json
import runpy
import shutil
import sys

import datasets
import numpy as np
import pytest
import torch
from peft import load_peft_weights
from transformers import AutoModel, AutoTokenizer, TrainerCallback

from ccf_llm import CCFDataCollator, CCFLlamaForCTR, CCFLlamaProcessor
from ccf_llm.trainer_ccf_llama import (
    CCFTrainer,
    CCFTrainingArguments,
    CCFTwoStageTrainer,
    DivergenceGuard,
    add_lora,
    apply_stage,
    compile_decoder_layers,
    schedule_stages,
)

from .conftest import tiny_llm, tiny_tokenizer

TEMPLATE = "likes {history} user {user} item {target} A:"
TITLES = {1: "red apple", 2: "green pear", 3: "blue plum", 4: "black fig"}


def tiny_setup(mode="gate", seed=0):
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer("likes user item A: red apple green pear blue plum black fig Yes No".split())
    llm = tiny_llm(
        tokenizer, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    cf = (
        {} if mode == "text" else {"user_embeddings": torch.randn(7, 8), "item_embeddings": torch.randn(5, 8)}
    )
    model = CCFLlamaForCTR.from_llm(
        llm, tokenizer, 6, 4, yes_token="Yes", no_token="No", fusion_mode=mode, **cf
    )
    rng = np.random.default_rng(seed)
    n = 48
    rows = datasets.Dataset.from_dict(
        {
            "user_id": rng.integers(1, 7, n),
            "item_id": rng.integers(1, 5, n),
            "label": rng.integers(0, 2, n),
            "history": [list(rng.integers(1, 5, rng.integers(0, 4))) for _ in range(n)],
        }  # fmt: skip
    )
    processor = CCFLlamaProcessor(
        tokenizer,
        TITLES,
        fusion_mode=mode,
        template=TEMPLATE if mode != "text" else "likes {history} item {target} A:",
    )
    return model, tokenizer, processor.process_dataset(rows)


def args_for(tmp_path, stage, **kw):
    defaults = dict(output_dir=str(tmp_path / stage), stage=stage, per_device_train_batch_size=8, learning_rate=5e-3,
                    num_train_epochs=1, report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no",
                    disable_tqdm=True, seed=0, lora_r=4, lora_alpha=8)  # fmt: skip
    return CCFTrainingArguments(**{**defaults, **kw})


def snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model):
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def test_two_stage_schedule_trains_lora_then_fusion_only(tmp_path):
    model, tokenizer, data = tiny_setup("gate")
    peft_model = add_lora(model, args_for(tmp_path, "lora"))
    collator = CCFDataCollator(tokenizer.pad_token_id)
    before = snapshot(peft_model)
    CCFTrainer(
        model=peft_model, args=args_for(tmp_path, "lora"), train_dataset=data, data_collator=collator
    ).train()
    stage1 = changed(before, peft_model)
    assert stage1 and all("lora_" in n for n in stage1)
    before = snapshot(peft_model)
    trainer = CCFTrainer(
        model=peft_model, args=args_for(tmp_path, "fusion"), train_dataset=data, data_collator=collator
    )
    trainer.train()
    stage2 = changed(before, peft_model)
    assert any(".gate.modules_to_save." in n for n in stage2) and any(
        ".alignment.modules_to_save." in n for n in stage2
    )
    assert all(".modules_to_save." in n for n in stage2)  # LoRA, the LLM and the CF tables stay fixed
    metrics = trainer.evaluate(data)
    assert 0.0 <= metrics["eval_auc"] <= 1.0 and 0.0 <= metrics["eval_uauc"] <= 1.0
    assert peft_model.get_base_model().config.bpr_weight == 2.0


@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
def test_compiled_layers_train_like_eager_ones_and_keep_parameter_names(tmp_path):
    trained = {}
    # compiled with SDPA, and with eager attention (the fast setup on CPU: the compiler fuses it)
    for compile_layers, attention in ((False, "sdpa"), (True, "sdpa"), (True, "eager")):
        model, tokenizer, data = tiny_setup("gate")
        model.llm.set_attn_implementation(attention)
        # no dropout (compiled code draws other random numbers); SGD, whose update is the gradient itself
        args = args_for(tmp_path, "lora", compile_layers=compile_layers, max_steps=2, lora_dropout=0.0,
                        optim="sgd", learning_rate=0.5)  # fmt: skip
        peft_model = add_lora(model, args)
        CCFTrainer(
            model=peft_model,
            args=args,
            train_dataset=data,
            data_collator=CCFDataCollator(tokenizer.pad_token_id),
        ).train()
        trained[compile_layers, attention] = snapshot(peft_model)
    reference = trained[False, "sdpa"]
    lora = [n for n in reference if "lora_" in n]
    assert any(reference[n].abs().sum() > 0 for n in lora if "lora_B" in n)  # B starts at 0: it trained
    for compiled in (trained[True, "sdpa"], trained[True, "eager"]):
        assert compiled.keys() == reference.keys()  # PEFT adapter names do not change
        for name in lora:
            torch.testing.assert_close(compiled[name], reference[name], rtol=1e-4, atol=1e-6)
    assert all(
        layer._compiled_call_impl is not None for layer in peft_model.get_base_model().llm.model.layers
    )
    assert compile_decoder_layers(peft_model) == 0  # already compiled: a second stage compiles nothing


def test_apply_stage_and_argument_errors(tmp_path):
    model, _, _ = tiny_setup("text")
    peft_model = add_lora(model, args_for(tmp_path, "lora"))
    assert apply_stage(peft_model, "lora") > 0
    with pytest.raises(ValueError, match="stage 'fusion' has nothing to train"):
        apply_stage(peft_model, "fusion")
    with pytest.raises(ValueError, match="stage must be one of"):
        args_for(tmp_path, "stage3")
    assert args_for(tmp_path, "fusion", fusion_learning_rate=0.5).learning_rate == 0.5
    assert args_for(tmp_path, "lora", fusion_learning_rate=0.5).learning_rate == 5e-3
    gate_model, _, _ = tiny_setup("gate")
    peft_gate = add_lora(gate_model, args_for(tmp_path, "lora", train_cf_encoder=True))
    apply_stage(peft_gate, "end_to_end", train_cf_encoder=True)
    trainable = {n for n, p in peft_gate.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and any(
        ".cf_encoder.modules_to_save." in n for n in trainable
    )


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    model, tokenizer, data = tiny_setup("gate")
    peft_model = add_lora(model, args_for(tmp_path, "lora"))
    with torch.no_grad():
        peft_model.get_base_model().llm.model.norm.weight.fill_(float("nan"))
    trainer = CCFTrainer(model=peft_model, args=args_for(tmp_path, "lora"), train_dataset=data,
                         data_collator=CCFDataCollator(tokenizer.pad_token_id))  # fmt: skip
    with pytest.raises(FloatingPointError, match="non-finite loss .* at step 0: training stopped"):
        trainer.train()


class StopAt(TrainerCallback):
    """Simulates an interruption: training ends after `step` (its checkpoint was just saved)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_save = True
            control.should_training_stop = True


@pytest.mark.parametrize("stage", ["lora", "fusion"])
def test_resume_matches_an_uninterrupted_run(tmp_path, stage):
    """Same seed, 4 steps straight vs 2 steps, interruption, resume from checkpoint-2: bit-identical weights."""

    def train(output, resume=None, stop=None):
        model, tokenizer, data = tiny_setup("gate")
        args = args_for(
            tmp_path,
            stage,
            output_dir=str(tmp_path / output),
            max_steps=4,
            save_strategy="steps",
            save_steps=2,
        )
        peft_model = add_lora(model, args)
        trainer = CCFTrainer(model=peft_model, args=args, train_dataset=data, data_collator=CCFDataCollator(tokenizer.pad_token_id),
                             callbacks=[StopAt(stop)] if stop else None)  # fmt: skip
        trainer.train(resume_from_checkpoint=resume)
        return snapshot(peft_model)

    full = train("full")
    partial = train("interrupted", stop=2)
    assert any(not torch.equal(full[n], partial[n]) for n in full)  # the interruption did cut training short
    resumed = train("interrupted", resume=str(tmp_path / "interrupted" / "checkpoint-2"))
    assert all(torch.equal(full[n], resumed[n]) for n in full)


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


def test_run_ctr_end_to_end_on_the_demo_log(tmp_path, monkeypatch):
    """run_ctr.py with a JSON config plus overrides: CF pretraining, text and gate modes, results, card, reload."""
    llm = _tiny_llm_folder(tmp_path)
    config = {
        "dataset": "demo", "fusion_modes": ["text", "gate"], "cf_backbone": "mf", "cf_hidden_size": 8,
        "cf_epochs": 3, "cf_batch_size": 512, "history_size": 3, "train_rows_per_stage": 32, "eval_rows": 48,
        "output_dir": str(tmp_path / "out"), "per_device_train_batch_size": 8, "per_device_eval_batch_size": 16,
        "learning_rate": 0.001, "num_train_epochs": 1, "save_strategy": "no", "report_to": "none", "use_cpu": True,
        "disable_tqdm": True, "yes_token": "Yes", "no_token": "No", "standardize_cf": True,
        "dtype": "float32",  # the scores below are compared at fp32 tolerances on every kind of CPU
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    monkeypatch.setattr(
        sys, "argv", ["run_ctr.py", str(tmp_path / "config.json"), "--llm", str(llm), "--seed", "3"]
    )
    runpy.run_path("examples/run_ctr.py", run_name="__main__")
    out = tmp_path / "out"
    summary = json.loads((out / "all_results.json").read_text())
    assert summary["fusion_mode"] == "gate" and summary["schedule"] == "lora+fusion"
    assert set(summary["by_mode"]) == {"text", "gate"} and summary["by_mode"]["text"]["schedule"] == "lora"
    for key in ("test_auc", "test_uauc", "eval_auc", "eval_uauc", "cf_test_auc"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["test_rows"] == 48 and summary["train_rows_per_stage"] == 32
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
    # the saved folder reloads into a model that reproduces the run's test scores
    from peft import PeftModel

    model = PeftModel.from_pretrained(
        AutoModel.from_pretrained(out / "gate"), out / "gate", subfolder="adapter"
    ).eval()
    processor = CCFLlamaProcessor.from_pretrained(out / "gate")
    tokenizer = AutoTokenizer.from_pretrained(out / "gate")
    (scales,) = model.get_base_model().config.cf_input_scales  # --standardize_cf: one MF source, [user, item]
    assert len(scales) == 2 and min(scales) > 0 and scales != [1.0, 1.0]
    (shifts,) = model.get_base_model().config.cf_input_shifts  # and centers them
    assert [len(v) for v in shifts] == model.get_base_model().config.cf_embedding_dims * 2
    assert (
        processor.fusion_mode == "gate"
        and len(tokenizer) == model.get_base_model().config.text_config.vocab_size
    )
    batch = processor([1, 2], [[1, 2], []], [3, 4])
    with torch.no_grad():
        scores = model(**batch).scores
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    # pipeline("ctr-scoring") on the folder merges the adapter: it ranks like the PEFT model
    from transformers import pipeline

    ranked = pipeline("ctr-scoring", model=str(out / "gate"))(
        {"user_id": 1, "history": [1, 2], "candidates": [3, 4]}
    )
    with torch.no_grad():
        peft_scores = model(**processor([1, 1], [[1, 2], [1, 2]], [3, 4])).scores.numpy()
    assert ranked["item_ids"] == [[3, 4][i] for i in np.argsort(-peft_scores, kind="stable")]
    np.testing.assert_allclose(
        sorted(ranked["scores"], reverse=True), sorted(peft_scores, reverse=True), atol=1e-5
    )

    # examples/analyze.py on the two trained modes: t-SNE figure, embedding statistics and the case study
    analysis = tmp_path / "analysis"
    argv = ["analyze.py", "--gate_model", str(out / "gate"), "--text_model", str(out / "text"), "--cf_model",
            str(out / "cf_mf"), "--dataset", "demo", "--items", "40", "--output_dir", str(analysis)]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path("examples/analyze.py", run_name="__main__")
    assert (analysis / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = json.loads((analysis / "analysis.json").read_text())
    assert stats["items"] == 40 and stats["fusion_mode"] == "gate"
    assert (
        -1 <= stats["cosine_fused_aligned_cf"] <= 1 and stats["cf_part_norm_ratio"] > 0
    )  # stage 2 trained the gate
    case = (analysis / "case_study.md").read_text()
    n = stats["case_study"]["candidates"]
    assert n > 1 and case.count("\n| ") == n + 1  # header + one line per candidate


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
    assert results["test_rows"] == 32 and 0 <= results["test_auc"] <= 1


def two_stage_args(tmp_path, **kw):
    defaults = dict(output_dir=str(tmp_path / "run"), per_device_train_batch_size=8, per_device_eval_batch_size=16,
                    learning_rate=5e-3, num_train_epochs=1, report_to="none", use_cpu=True, save_strategy="no",
                    logging_steps=1, disable_tqdm=True, seed=0, lora_r=4, lora_alpha=8)  # fmt: skip
    return CCFTrainingArguments(**{**defaults, **kw})


def test_two_stage_trainer_runs_the_schedule_and_saves_each_stage(tmp_path):
    model, tokenizer, data = tiny_setup("gate")
    trainer = CCFTwoStageTrainer(model, two_stage_args(tmp_path), train_dataset=data,
                                 data_collator=CCFDataCollator(tokenizer.pad_token_id))  # fmt: skip
    assert trainer.stages == ("lora", "fusion") and hasattr(trainer.model, "peft_config")
    before = snapshot(trainer.model)
    log = trainer.train()
    assert [r["stage"] for r in log] == ["lora", "fusion"] and [r["steps"] for r in log] == [6, 6]
    moved = changed(before, trainer.model)
    assert any("lora_" in n for n in moved) and any(".modules_to_save." in n for n in moved)
    for record in log:
        assert (tmp_path / "run" / f"stage_{log.index(record) + 1}_{record['stage']}" / "final").is_dir()
    text, tokenizer, data = tiny_setup("text")
    assert CCFTwoStageTrainer(text, two_stage_args(tmp_path / "t"), train_dataset=data).stages == ("lora",)
    assert schedule_stages("end_to_end", uses_cf=False) == ("end_to_end",)
    with pytest.raises(ValueError, match="schedule must be one of"):
        two_stage_args(tmp_path, schedule="three_stage")


def test_a_shared_stage_is_loaded_not_trained(tmp_path):
    model, tokenizer, data = tiny_setup("gate")
    collator = CCFDataCollator(tokenizer.pad_token_id)
    first = CCFTwoStageTrainer(model, two_stage_args(tmp_path, schedule="stage1_only"), train_dataset=data,
                               data_collator=collator)  # fmt: skip
    first.train()
    shared = tmp_path / "run" / "stage_1_lora" / "final"
    other, _, _ = tiny_setup("gate", seed=1)  # different random LoRA/ALG init
    second = CCFTwoStageTrainer(other, two_stage_args(tmp_path, output_dir=str(tmp_path / "second")),
                                train_dataset=data, data_collator=collator, shared_stages={"lora": shared})  # fmt: skip
    lora_after_stage_1 = {n: p.detach().clone() for n, p in first.model.named_parameters() if "lora_" in n}
    log = second.train()
    assert log[0] == {"stage": "lora", "output_dir": str(tmp_path / "second" / "stage_1_lora"),
                      "rolled_back": False, "shared_from": str(shared)}  # fmt: skip
    assert log[1]["steps"] == 6 and not (tmp_path / "second" / "stage_1_lora").exists()
    now = dict(second.model.named_parameters())
    assert all(torch.equal(now[n], p) for n, p in lora_after_stage_1.items())  # stage 2 froze the shared LoRA
    with pytest.raises(ValueError, match="not stages of this schedule"):
        CCFTwoStageTrainer(
            other, two_stage_args(tmp_path, schedule="stage1_only"), data, shared_stages={"fusion": shared}
        )


def test_a_stage_that_diverges_is_stopped_and_rolled_back(tmp_path, monkeypatch):
    """
    Validation is scripted (the tiny model's loss barely moves): stage 2 starts from a validation loss of 1.0, so its
    real training loss (~4) reads as diverged and the guard stops it after 4 logs; it ends with a lower validation
    AUC than it started with, so its start weights (stage 1's result) come back.
    """
    scripted = iter([{"eval_auc": 0.60, "eval_loss": 4.0}, {"eval_auc": 0.70, "eval_loss": 1.0},
                     {"eval_auc": 0.55, "eval_loss": 5.0}])  # fmt: skip
    monkeypatch.setattr(CCFTrainer, "evaluate", lambda self, *a, **k: next(scripted))
    model, tokenizer, data = tiny_setup("gate")
    args = two_stage_args(tmp_path, num_train_epochs=3, divergence_tolerance=0.25)
    trainer = CCFTwoStageTrainer(model, args, train_dataset=data, eval_dataset=data,
                                 data_collator=CCFDataCollator(tokenizer.pad_token_id))  # fmt: skip
    stage_1, stage_2 = trainer.train()
    assert stage_1["diverged_at_step"] is None and stage_1["steps"] == 18 and not stage_1["rolled_back"]
    assert stage_1["start_eval_auc"] == 0.60 and stage_1["end_eval_auc"] == 0.70
    assert stage_2["diverged_at_step"] == 4 and stage_2["steps"] == 4  # stopped by the guard
    assert stage_2["rolled_back"] and (stage_2["start_eval_auc"], stage_2["end_eval_auc"]) == (0.70, 0.55)
    after_stage_1 = load_peft_weights(str(tmp_path / "run" / "stage_1_lora" / "final"))
    kept = load_peft_weights(str(tmp_path / "run" / "stage_2_fusion" / "final"))
    assert kept.keys() == after_stage_1.keys() and all(torch.equal(after_stage_1[k], kept[k]) for k in kept)
    # ALG and GATE are in the comparison: the fusion stage's 4 steps were undone
    assert any(".alignment." in k for k in kept) and any(".gate." in k for k in kept)


def test_divergence_guard_stops_a_rising_loss_only():
    from transformers import TrainerControl, TrainerState

    for losses, reference, stops in (([2.8, 2.7, 2.6, 2.5, 2.5, 2.4, 2.4, 2.3], None, False),
                                     ([2.8, 2.8, 2.9, 3.0, 3.4, 3.6, 3.7, 3.7], None, True),
                                     ([3.0, 3.1, 3.0, 3.1], 2.4, True), ([2.5, 2.6, 2.4, 2.5], 2.4, False)):  # fmt: skip
        guard, state, control = DivergenceGuard(0.25, reference), TrainerState(), TrainerControl()
        for step, loss in enumerate(losses, 1):
            state.global_step = step
            guard.on_log(None, state, control, logs={"loss": loss})
        assert control.should_training_stop == stops and (guard.diverged_at is not None) == stops


def test_early_stopping_keeps_the_best_auc_checkpoint(tmp_path):
    model, tokenizer, data = tiny_setup("gate")
    args = two_stage_args(tmp_path, schedule="stage1_only", num_train_epochs=4, eval_strategy="steps", eval_steps=2,
                          early_stopping_patience=1, divergence_tolerance=None)  # fmt: skip
    trainer = CCFTwoStageTrainer(model, args, train_dataset=data, eval_dataset=data,
                                 data_collator=CCFDataCollator(tokenizer.pad_token_id))  # fmt: skip
    (record,) = trainer.train()
    assert record["best_checkpoint"].endswith(f"checkpoint-{record['best_auc_step']}")
    assert record["end_eval_auc"] == pytest.approx(record["best_eval_auc"]) or record["rolled_back"]
    assert record["best_uauc_step"] % 2 == 0 and record["steps"] <= 24
    with pytest.raises(ValueError, match="early_stopping_patience needs an eval_dataset"):
        CCFTwoStageTrainer(model, args, train_dataset=data)
    # with patience 0 every evaluation that is not better stops the stage, but not within its minimum epochs
    for min_epochs, at_least in ((0.0, 2), (2.0, 12)):
        model, tokenizer, data = tiny_setup("gate")
        strict = dataclasses.replace(args, output_dir=str(tmp_path / f"min{min_epochs}"), early_stopping_patience=0,
                                     early_stopping_min_epochs=min_epochs)  # fmt: skip
        (record,) = CCFTwoStageTrainer(model, strict, train_dataset=data, eval_dataset=data,
                                       data_collator=CCFDataCollator(tokenizer.pad_token_id)).train()  # fmt: skip
        assert record["steps"] >= at_least and (min_epochs or record["steps"] < 24)


@pytest.mark.parametrize("config", ["demo.json", "reproduce_ml1m.json", "reproduce_ml1m_full.json"])
def test_example_configs_parse_into_run_ctr_arguments(config, monkeypatch):
    """Every key of a shipped config is an argument run_ctr.py knows (HfArgumentParser refuses unknown ones)."""
    from pathlib import Path

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
