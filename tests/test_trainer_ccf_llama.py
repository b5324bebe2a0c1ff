"""CCFTrainer and CCFTwoStageTrainer: stage freezing, the training objective, schedules, metrics, resuming, NaN
handling, shared stages, the divergence guard and early stopping (run_ctr.py: test_examples_run_ctr.py)."""

import dataclasses
import json
import shutil

import datasets
import numpy as np
import pytest
import torch
from peft import get_peft_model_state_dict, load_peft_weights
from sklearn.metrics import roc_auc_score
from transformers import TrainerCallback

from ccf_llm import CCFDataCollator, CCFLlamaForCTR, CCFLlamaProcessor, ccf_ctr_loss
from ccf_llm.metrics import uauc
from ccf_llm.trainer_ccf_llama import (
    _GATE_KEY,
    CCFTrainer,
    CCFTrainingArguments,
    CCFTwoStageTrainer,
    DivergenceGuard,
    _EarlyStopping,
    add_lora,
    apply_stage,
    compile_decoder_layers,
    load_adapter_weights,
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
    predictions = trainer.predict(data)
    assert metrics["eval_auc"] == pytest.approx(roc_auc_score(data["label"], predictions.predictions))
    assert metrics["eval_uauc"] == pytest.approx(
        uauc(predictions.predictions, np.array(data["label"]), np.array(data["user_id"]))
    )


@pytest.mark.parametrize("mode", ["gate", "text"])
def test_compute_loss_is_eq_5_with_the_bpr_weight_of_the_training_arguments(tmp_path, mode):
    model, tokenizer, data = tiny_setup(mode)
    peft_model = add_lora(model, args_for(tmp_path, "lora"))
    batch = CCFDataCollator(tokenizer.pad_token_id)([data[i] for i in range(8)])
    assert "user_ids" in batch  # every mode: the trainer groups rows by user for UAUC
    losses = {}
    for k in (0.0, 5.0):
        trainer = CCFTrainer(model=peft_model, args=args_for(tmp_path, "lora", bpr_weight=k))
        losses[k], outputs = trainer.compute_loss(peft_model, dict(batch), return_outputs=True)
        expected = ccf_ctr_loss(outputs.log_p_yes, outputs.log_p_no, batch["labels"], bpr_weight=k)
        torch.testing.assert_close(losses[k], expected)
    assert losses[5.0] > losses[0.0] + 0.1


def test_schedules_are_written_in_stage_names():
    assert schedule_stages("lora+fusion") == ("lora", "fusion") and schedule_stages("lora") == ("lora",)
    assert schedule_stages("fusion+lora") == ("fusion", "lora")  # any order of distinct stages
    for bad in ("lora+lora", "three_stage", "lora+"):
        with pytest.raises(ValueError, match="schedule must be distinct stages"):
            schedule_stages(bad)
    with pytest.warns(FutureWarning, match="schedule='stage1_only' is deprecated"):  # Table 4's former names
        args = CCFTrainingArguments(
            output_dir="unused", use_cpu=True, report_to="none", schedule="stage1_only"
        )
    assert args.schedule == "lora" and schedule_stages("two_stage") == ("lora", "fusion")


@pytest.mark.skipif(
    not any(shutil.which(cxx) for cxx in ("g++", "c++", "clang++")),
    reason="torch.compile's CPU backend needs a C++ compiler",
)
def test_compiled_layers_train_like_eager_ones_and_keep_parameter_names(tmp_path):
    trained = {}
    # compiled with SDPA, and with eager attention (the fast setup on CPU: the compiler fuses it)
    for compile_layers, attention in ((False, "sdpa"), (True, "sdpa"), (True, "eager")):
        model, tokenizer, data = tiny_setup("gate")
        model.language_model.set_attn_implementation(attention)
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
        layer._compiled_call_impl is not None for layer in peft_model.get_base_model().language_model.layers
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


def test_the_cf_encoder_trains_in_training_mode_only_in_the_stages_that_tune_it(tmp_path):
    """Under PEFT the tuned copy of Θ_E has dropout on in `fusion` only; the frozen original never."""
    gate_model, _, _ = tiny_setup("gate")
    peft_gate = add_lora(gate_model, args_for(tmp_path, "lora", train_cf_encoder=True))
    wrapper = peft_gate.get_base_model().model.cf_encoder
    for stage, tuned in (("lora", False), ("fusion", True), ("lora", False)):
        apply_stage(peft_gate, stage, train_cf_encoder=True)
        peft_gate.train()  # what the Trainer does every step
        assert wrapper.modules_to_save["default"].training is tuned
        assert not wrapper.original_module.training
        assert peft_gate.get_base_model().model.alignment.modules_to_save["default"].training
    # the PEFT copy would keep the old statistics
    with pytest.raises(ValueError, match="must run before add_lora"):
        peft_gate.get_base_model().fit_cf_standardization()


def test_non_finite_loss_stops_with_a_clear_error(tmp_path):
    model, tokenizer, data = tiny_setup("gate")
    peft_model = add_lora(model, args_for(tmp_path, "lora"))
    with torch.no_grad():
        peft_model.get_base_model().language_model.norm.weight.fill_(float("nan"))
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


def test_early_stopping_resumes_its_patience_counter_from_a_checkpoint(tmp_path):
    """Two evaluations without improvement before the interruption: the resumed stage stops at the next one."""
    from transformers import TrainerControl, TrainerState

    before = _EarlyStopping(patience=3)
    control, state = TrainerControl(), TrainerState(best_metric=0.7)
    args = CCFTrainingArguments(output_dir=str(tmp_path), metric_for_best_model="auc", report_to="none")
    for auc in (0.6, 0.65):  # transformers' own counting: two evaluations below the best
        before.on_evaluate(args, state, control, {"eval_auc": auc})
    assert before.early_stopping_patience_counter == 2
    (tmp_path / "checkpoint-6").mkdir()
    TrainerState(stateful_callbacks=[before]).save_to_json(
        str(tmp_path / "checkpoint-6" / "trainer_state.json")
    )
    resumed = _EarlyStopping(patience=3)
    resumed.resume_from(tmp_path / "checkpoint-6")
    assert resumed.early_stopping_patience_counter == 2
    resumed.on_evaluate(args, state, control, {"eval_auc": 0.69})
    assert control.should_training_stop  # a fresh counter would have let the stage run on


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
    with pytest.raises(ValueError, match="schedule must be distinct stages"):
        two_stage_args(tmp_path, schedule="three_stage")


def shared_stage_run(tmp_path, first_mode: str, second_mode: str):
    """A stage-1-only run in `first_mode`, then a two-stage run in `second_mode` (other seed) sharing its LoRA:
    `(second trainer, the shared folder, the first run's LoRA weights)`; the second is not trained yet."""
    model, tokenizer, data = tiny_setup(first_mode)
    collator = CCFDataCollator(tokenizer.pad_token_id)
    first = CCFTwoStageTrainer(model, two_stage_args(tmp_path, schedule="lora"), train_dataset=data,
                               data_collator=collator)  # fmt: skip
    first.train()
    shared = tmp_path / "run" / "stage_1_lora" / "final"
    lora = {n: p.detach().clone() for n, p in first.model.named_parameters() if "lora_" in n}
    other, _, other_data = tiny_setup(second_mode, seed=1)  # different random LoRA/ALG init
    second = CCFTwoStageTrainer(other, two_stage_args(tmp_path, output_dir=str(tmp_path / "second")),
                                train_dataset=other_data, data_collator=collator,
                                shared_stages={"lora": shared})  # fmt: skip
    return second, shared, lora


def test_a_shared_stage_is_loaded_not_trained(tmp_path):
    second, shared, lora_after_stage_1 = shared_stage_run(tmp_path, "gate", "gate")
    other, data = second.model, second.train_dataset
    log = second.train()
    assert log[0] == {"stage": "lora", "output_dir": str(tmp_path / "second" / "stage_1_lora"),
                      "rolled_back": False, "shared_from": str(shared)}  # fmt: skip
    assert log[1]["steps"] == 6 and not (tmp_path / "second" / "stage_1_lora").exists()
    now = dict(second.model.named_parameters())
    assert all(torch.equal(now[n], p) for n, p in lora_after_stage_1.items())  # stage 2 froze the shared LoRA
    with pytest.raises(ValueError, match="not stages of this schedule"):
        CCFTwoStageTrainer(
            other, two_stage_args(tmp_path, schedule="lora"), data, shared_stages={"fusion": shared}
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
    args = two_stage_args(tmp_path, schedule="lora", num_train_epochs=4, eval_strategy="steps", eval_steps=2,
                          early_stopping_patience=1, divergence_tolerance=None)  # fmt: skip
    trainer = CCFTwoStageTrainer(model, args, train_dataset=data, eval_dataset=data,
                                 data_collator=CCFDataCollator(tokenizer.pad_token_id))  # fmt: skip
    (record,) = trainer.train()
    assert record["best_checkpoint"].endswith(f"checkpoint-{record['best_auc_step']}")
    assert record["end_eval_auc"] == pytest.approx(record["best_eval_auc"]) or record["rolled_back"]
    assert record["steps"] <= 24
    # the stage's evaluations are kept beside it (learning curves): every eval_steps, the best among them
    logged = json.loads((tmp_path / "run" / "stage_1_lora" / "stage_log.json").read_text())["eval_log"]
    assert [r["step"] for r in logged if r["step"] % 2 == 0][:3] == [2, 4, 6]
    assert max(r["eval_auc"] for r in logged) == pytest.approx(record["best_eval_auc"])
    at_best_uauc = [r["eval_uauc"] for r in logged if r["step"] == record["best_uauc_step"]]
    assert at_best_uauc == [pytest.approx(max(r["eval_uauc"] for r in logged))]  # the UAUC-best evaluation
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


def test_a_stage_resumes_from_and_keeps_the_best_of_checkpoints_saved_before_the_model_split(tmp_path):
    """Checkpoints of a stage interrupted under the pre-split code (adapter keys `...llm.model...`) resume."""
    from peft import PeftModel
    from transformers import AutoModel

    from .test_modeling_ccf_llama import LEGACY, _legacy_batch

    batch, expected = _legacy_batch()
    model = PeftModel.from_pretrained(
        AutoModel.from_pretrained(LEGACY / "base"), LEGACY / "adapter", is_trainable=True
    )
    args = CCFTrainingArguments(output_dir=str(tmp_path), stage="fusion", report_to="none", use_cpu=True)
    trainer = CCFTrainer(model, args)
    trainer.state.best_model_checkpoint = str(LEGACY / "adapter")
    for load in (lambda: trainer._load_from_checkpoint(str(LEGACY / "adapter")), trainer._load_best_model):
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_" in name or "modules_to_save" in name:
                    parameter.zero_()
            assert model.eval()(**batch).scores.tolist() != pytest.approx(
                expected["adapter_scores"], abs=1e-6
            )
            load()
            torch.testing.assert_close(
                model(**batch).scores, torch.tensor(expected["adapter_scores"]), rtol=0, atol=1e-6
            )


def test_a_token_gate_run_shares_a_gate_runs_stage_1_lora_and_alg_and_keeps_its_own_gate(tmp_path):
    """Stage 1 trains LoRA only, so `token_gate` (one α per token) can start from `gate`'s stage 1 (one α per
    dimension): the LoRA and the ALG it was trained against are loaded, the GATE keeps the second run's initialization,
    of its own shape. (The tiny runs differ in seed, so the second run's own ALG differs from the shared one.)"""
    second, shared, lora = shared_stage_run(tmp_path, "gate", "token_gate")
    # cloned: a PEFT state dict shares its tensors' storage with the model
    own = {k: v.clone() for k, v in get_peft_model_state_dict(second.model).items()}
    saved = load_peft_weights(str(shared))
    # token_gate's GATE outputs one α per token, gate's one per dimension
    assert any(v.shape[0] == 1 for k, v in own.items() if ".gate." in k and "fc2" in k)
    assert any(v.shape[0] > 1 for k, v in saved.items() if ".gate." in k and "fc2" in k)
    alg = [k for k in saved if ".alignment." in k]
    assert len(alg) == 4 and not all(torch.equal(own[k], saved[k]) for k in alg)
    # the file holds every weight but the skipped GATE's: nothing is missing, so nothing may keep its value silently
    assert load_adapter_weights(second.model, shared, keep_missing_fusion=False, skip_gate=True)
    assert not _GATE_KEY.search("base_model.model.model.language_model.layers.0.mlp.gate_proj.lora_A.weight")
    start = {k: v.clone() for k, v in get_peft_model_state_dict(second.model).items()}
    # LoRA and ALG are the shared ones, the GATE keeps its own initialization
    assert all(torch.equal(start[k], saved[k]) for k in saved if ".gate." not in k)
    assert all(torch.equal(start[k], v) for k, v in own.items() if ".gate." in k)
    log = second.train()
    assert log[0]["shared_from"] == str(shared) and log[1]["stage"] == "fusion" and log[1]["steps"] == 6
    now = dict(second.model.named_parameters())
    assert lora and all(torch.equal(now[n], p) for n, p in lora.items())  # frozen in stage 2
    trained = get_peft_model_state_dict(second.model)
    assert any(not torch.equal(trained[k], v) for k, v in own.items() if ".gate." in k)  # stage 2 trained it


def test_an_inject_run_starts_from_a_text_runs_lora_with_its_fusion_weights_at_init(tmp_path):
    """CoLLM's inject rows start from the TALLRec (text) LoRA, whose adapter has no ALG weights to load."""
    second, shared, lora = shared_stage_run(tmp_path, "text", "inject")
    log = second.train()
    assert log[0]["shared_from"] == str(shared) and log[1]["stage"] == "fusion" and log[1]["steps"] == 6
    now = dict(second.model.named_parameters())
    assert lora and all(
        torch.equal(now[n], p) for n, p in lora.items()
    )  # the text run's LoRA, frozen in stage 2
    with pytest.raises(ValueError, match="lacks"):  # a resumed checkpoint must hold every weight
        load_adapter_weights(second.model, shared)


def test_a_pickled_adapter_is_refused_by_name_not_read_or_trained_over(tmp_path):
    """A finished stage saved as `adapter_model.bin` (PEFT's `safe_serialization=False`): loading it and resuming
    the run that wrote it both raise, naming the file, instead of reading a pickle or, finding no safetensors,
    training the finished stage again."""
    second, shared, _ = shared_stage_run(tmp_path, "gate", "gate")
    weights = load_peft_weights(str(shared))
    (shared / "adapter_model.safetensors").unlink()
    torch.save(weights, shared / "adapter_model.bin")
    with pytest.raises(ValueError, match=r"stage_1_lora/final/adapter_model\.bin is a pickle file"):
        load_adapter_weights(second.model, shared)
    model, tokenizer, data = tiny_setup("gate")
    resumed = CCFTwoStageTrainer(model, two_stage_args(tmp_path), train_dataset=data,
                                 data_collator=CCFDataCollator(tokenizer.pad_token_id))  # fmt: skip
    before = snapshot(resumed.model)
    with pytest.raises(ValueError, match="is a pickle file"):
        resumed.train(resume_from_checkpoint=True)
    assert all(torch.equal(before[n], p) for n, p in snapshot(resumed.model).items())  # nothing trained
