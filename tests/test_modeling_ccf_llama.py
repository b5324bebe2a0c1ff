"""Tests of CCFLlamaConfig / CCFLlamaForCTR on tiny configs built in code (LLaVA ModelTester style)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModel, LlamaConfig

from ccf_llm import FUSION_MODES, CCFLlamaConfig, CCFLlamaForCTR, CCFLlamaModel, ccf_ctr_loss

from .conftest import tiny_llm, tiny_tokenizer

USER, ITEM, YES, NO = 58, 59, 3, 4


class CCFLlamaModelTester:
    """Tiny config and a left-padded batch of two hybrid prompts (user placeholder + two item titles each)."""

    def __init__(self, fusion_mode="gate", cf_embedding_dims=(8, 4), **config_kwargs):
        self.fusion_mode = fusion_mode
        self.text_config = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=60,
            tie_word_embeddings=True,
        )
        self.config = CCFLlamaConfig(
            text_config=self.text_config,
            num_users=5,
            num_items=7,
            cf_embedding_dims=list(cf_embedding_dims),
            fusion_mode=fusion_mode,
            user_token_id=USER,
            item_token_id=ITEM,
            yes_token_id=YES,
            no_token_id=NO,
            **config_kwargs,
        )

    def prompt(self, user_id, items):
        """`items`: list of (item_id, title token ids). Returns (input_ids, item_ids) as lists."""
        segments = [([10, 11], 0), ([USER] if self.fusion_mode != "text" else [12], 0), ([13], 0)]
        for item_id, title in items:
            if self.fusion_mode == "inject":
                segments += [(title, 0), ([ITEM], item_id), ([14], 0)]
            elif self.fusion_mode == "text":
                segments += [(title, 0), ([14], 0)]
            else:
                segments += [(title, item_id), ([14], 0)]
        segments.append(([15, 16], 0))
        ids = [t for tokens, _ in segments for t in tokens]
        item_ids = [i for tokens, i in segments for _ in tokens]
        return ids, item_ids

    def batch(self, padding_side="left"):
        rows = [self.prompt(1, [(2, [20, 21]), (5, [22, 23, 24])]), self.prompt(4, [(7, [25])])]
        width = max(len(ids) for ids, _ in rows)
        input_ids, item_ids, mask = [], [], []
        for ids, items in rows:
            pad = [0] * (width - len(ids))
            ones = [1] * len(ids)
            if padding_side == "left":
                input_ids.append(pad + ids), item_ids.append(pad + items), mask.append(pad + ones)
            else:
                input_ids.append(ids + pad), item_ids.append(items + pad), mask.append(ones + pad)
        batch = {
            "input_ids": torch.tensor(input_ids),
            "attention_mask": torch.tensor(mask),
            "labels": torch.tensor([1, 0]),
        }
        if self.fusion_mode != "text":
            batch["user_ids"] = torch.tensor([1, 4])
            batch["token_item_ids"] = torch.tensor(item_ids)
        return batch

    def model(self, seed=0):
        torch.manual_seed(seed)
        return CCFLlamaForCTR(self.config).eval()


def _mlp(mlp, x):
    """Hand computation of CCFMLP: W2 · gelu(W1 x + b1) + b2."""
    h = x @ mlp.fc1.weight.T + mlp.fc1.bias
    return F.gelu(h) @ mlp.fc2.weight.T + mlp.fc2.bias


@pytest.mark.parametrize("mode", ["gate", "token_gate", "add"])
def test_fusion_matches_hand_computation_of_eq_2_to_4_and_7(mode):
    tester = CCFLlamaModelTester(mode, zero_init_gate=False)
    model = tester.model()
    batch = tester.batch()
    with torch.no_grad():
        embeds = model.embed_hybrid_prompt(
            batch["input_ids"], batch["user_ids"], batch["token_item_ids"], batch["attention_mask"]
        )
        table = model.get_input_embeddings().weight
        enc, alg = model.cf_encoder, model.alignment.projections
        # user placeholder of row 0 -> sum_s ALG_s(x_u^{CF_s})   (Eq. 2)
        pos_user = (batch["input_ids"][0] == USER).nonzero().item()
        expected_user = sum(_mlp(alg[s], enc.user_encoders[s].weight[1]) for s in range(2))
        torch.testing.assert_close(embeds[0, pos_user], expected_user)
        # every title token of item 5 in row 0 -> x_SM[t] + sum_s alpha_s * ALG_s(x_i^{CF_s})   (Eq. 3, 4, 7)
        for pos in (batch["token_item_ids"][0] == 5).nonzero().flatten().tolist():
            x_sm = table[batch["input_ids"][0, pos]]
            expected = x_sm.clone()
            for s in range(2):
                x_cf = _mlp(alg[s], enc.item_embeddings[s].weight[5])
                if mode == "add":
                    alpha = torch.ones(())
                else:
                    alpha = _mlp(model.gate.cf_gates[s], x_cf) + _mlp(model.gate.semantic_gates[s], x_sm)
                    assert alpha.shape == ((1,) if mode == "token_gate" else (32,))
                expected = expected + alpha * x_cf
            torch.testing.assert_close(embeds[0, pos], expected)
        # natural-language tokens and padding are the LLM's plain embeddings
        plain = batch["token_item_ids"].eq(0) & batch["input_ids"].ne(USER)
        torch.testing.assert_close(embeds[plain], table[batch["input_ids"][plain]])


def test_inject_mode_replaces_item_placeholders_and_keeps_titles_as_text():
    tester = CCFLlamaModelTester("inject")
    model = tester.model()
    batch = tester.batch()
    with torch.no_grad():
        embeds = model.embed_hybrid_prompt(
            batch["input_ids"], batch["user_ids"], batch["token_item_ids"], batch["attention_mask"]
        )
        row = batch["input_ids"][1]
        pos = (row == ITEM).nonzero().item()
        expected = sum(
            _mlp(model.alignment.projections[s], model.cf_encoder.item_embeddings[s].weight[7])
            for s in range(2)
        )
        torch.testing.assert_close(embeds[1, pos], expected)
        title = (row == 25).nonzero().item()
        torch.testing.assert_close(embeds[1, title], model.get_input_embeddings().weight[25])


def test_zero_initialized_gate_starts_from_pure_text():
    """Default init: GATE output layers are zero, so α = 0 and title tokens equal their text embeddings."""
    tester = CCFLlamaModelTester("gate")
    model = tester.model()
    assert all(float(m.fc2.weight.detach().abs().sum()) == 0 for m in model.gate.cf_gates)
    batch = tester.batch()
    with torch.no_grad():
        embeds = model.embed_hybrid_prompt(
            batch["input_ids"], batch["user_ids"], batch["token_item_ids"], batch["attention_mask"]
        )
    titles = batch["token_item_ids"] > 0
    torch.testing.assert_close(
        embeds[titles], model.get_input_embeddings().weight[batch["input_ids"][titles]]
    )
    assert float(model.alignment.projections[0].fc2.weight.detach().abs().sum()) > 0


def test_scores_come_from_the_last_position_of_the_full_vocabulary_softmax():
    tester = CCFLlamaModelTester("text")
    model = tester.model()
    batch = tester.batch()
    with torch.no_grad():
        out = model(**batch)
        hidden = model.language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        full = model.lm_head(hidden.last_hidden_state[:, -1])  # the plain causal LM's last-position logits
    log_probs = full.log_softmax(-1)
    torch.testing.assert_close(out.p_yes, log_probs[:, YES].exp(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.p_no, log_probs[:, NO].exp(), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.logits, full[:, [YES, NO]], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.scores, out.p_yes / (out.p_yes + out.p_no))
    assert out.logits.shape == (2, 2) and out.scores.shape == (2,)


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_forward_backward_every_mode(mode):
    tester = CCFLlamaModelTester(mode)
    model = tester.model().train()
    out = model(**tester.batch())
    assert out.loss.ndim == 0 and torch.isfinite(out.loss)
    assert ((out.scores > 0) & (out.scores < 1)).all()
    out.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert grads["model.language_model.layers.0.self_attn.q_proj.weight"].abs().sum() > 0
    if mode == "text":
        assert not hasattr(model, "cf_encoder") and not hasattr(model, "alignment")
        return
    assert grads["model.alignment.projections.1.fc1.weight"].abs().sum() > 0
    # the CF encoder (Θ_E) is frozen by default
    assert not any(n.startswith("model.cf_encoder") for n in grads)
    if mode in ("gate", "token_gate"):
        assert grads["model.gate.cf_gates.0.fc2.weight"].abs().sum() > 0
        assert grads["model.gate.semantic_gates.1.fc2.weight"].abs().sum() > 0


def test_cf_embeddings_trainable_on_request():
    # zero_init_gate=False: with α = 0 at init (the default) item tables get their first gradient one step later
    tester = CCFLlamaModelTester("gate", zero_init_gate=False)
    model = tester.model().train()
    assert not any(p.requires_grad for p in model.cf_encoder.parameters())  # Θ_E is built frozen
    model.cf_encoder.requires_grad_(True)  # what CCFTrainingArguments(train_cf_encoder=True) does to its copy
    model(**tester.batch()).loss.backward()
    grad = model.cf_encoder.item_embeddings[0].weight.grad
    assert grad is not None and grad[5].abs().sum() > 0 and grad[3].abs().sum() == 0


def test_a_frozen_sequential_cf_encoder_keeps_dropout_off_while_the_model_trains():
    from ccf_llm import SASRecConfig, SASRecModel

    torch.manual_seed(0)
    sasrec = SASRecModel(SASRecConfig(num_users=5, num_items=9, hidden_size=8, max_history=3, dropout=0.5))
    tokenizer = tiny_tokenizer("A user likes Yes No #Answer: item".split())
    llm = tiny_llm(tokenizer, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    model = CCFLlamaForCTR.from_llm(llm, tokenizer, 5, 9, cf_models=[sasrec], yes_token="Yes", no_token="No")
    history = torch.tensor([[2, 3, 4], [0, 6, 7]])
    model.eval()
    with torch.no_grad():
        clean = model.cf_encoder(None, "user", history)[0]
    model.train()  # Θ_E frozen (the default): the LLM trains, ENC stays as pretrained
    assert model.training and model.alignment.training and not model.cf_encoder.user_encoders[0].training
    with torch.no_grad():
        torch.testing.assert_close(model.cf_encoder(None, "user", history)[0], clean, rtol=0, atol=0)
    model.cf_encoder.requires_grad_(True)  # Θ_E tuned (train_cf_encoder): dropout as in SASRec's own training
    model.train()
    assert model.cf_encoder.user_encoders[0].training
    with torch.no_grad():
        assert not torch.equal(model.cf_encoder(None, "user", history)[0], clean)


@pytest.mark.parametrize(("mode", "attention"), [("gate", "sdpa"), ("inject", "sdpa"), ("gate", "eager")])
def test_padding_invariance(mode, attention):
    """Left (or right) padding never changes a prompt's score: each row scored alone gives the same values, with
    either attention implementation (eager builds its own padding mask), and both give the same scores."""
    tester = CCFLlamaModelTester(mode, zero_init_gate=False)
    model = tester.model()
    left, right = tester.batch("left"), tester.batch("right")
    assert model.language_model.config._attn_implementation == "sdpa"  # transformers' default
    with torch.no_grad():
        sdpa = model(**left).scores
        model.language_model.set_attn_implementation(attention)
        assert model.language_model.config._attn_implementation == attention
        batched = model(**left).scores
        torch.testing.assert_close(batched, sdpa, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(model(**right).scores, batched, atol=1e-6, rtol=1e-5)
        for row in range(2):
            keep = left["attention_mask"][row].bool()
            alone = {k: (v[row][keep] if v.ndim == 2 else v[row : row + 1]) for k, v in left.items()}
            alone = {
                k: (v.unsqueeze(0) if k != "user_ids" and k != "labels" else v) for k, v in alone.items()
            }
            torch.testing.assert_close(model(**alone).scores, batched[row : row + 1], atol=1e-6, rtol=1e-5)


def test_save_and_automodel_round_trip_is_bit_identical(tmp_path):
    tester = CCFLlamaModelTester("gate", zero_init_gate=False)
    model = tester.model()
    model.save_pretrained(tmp_path)
    files = sorted(os.listdir(tmp_path))
    assert "model.safetensors" in files and "modeling_ccf_llama.py" in files
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model_type"] == "ccf_llama" and config["auto_map"]["AutoModel"].endswith("CCFLlamaForCTR")
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is CCFLlamaForCTR
    reference = model.state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, reference[name]), name
    batch = tester.batch()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).scores, model(**batch).scores)


def test_checkpoint_loads_with_trust_remote_code_without_the_package(tmp_path):
    tester = CCFLlamaModelTester("token_gate", zero_init_gate=False)
    model = tester.model()
    model.save_pretrained(tmp_path / "ckpt")
    batch = tester.batch()
    torch.save(batch, tmp_path / "batch.pt")
    with torch.no_grad():
        expected = model(**batch).scores
    script = textwrap.dedent(
        f"""
        import sys, torch
        sys.modules["ccf_llm"] = None  # the package must not be importable
        from transformers import AutoModel
        model = AutoModel.from_pretrained({str(tmp_path / "ckpt")!r}, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        batch = torch.load({str(tmp_path / "batch.pt")!r}, weights_only=True)
        with torch.no_grad():
            torch.save(model(**batch).scores, {str(tmp_path / "scores.pt")!r})
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert torch.equal(torch.load(tmp_path / "scores.pt", weights_only=True), expected)


def test_peft_lora_with_modules_to_save_round_trip(tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    tester = CCFLlamaModelTester("gate")
    base = tester.model()
    base.save_pretrained(tmp_path / "base")
    base = AutoModel.from_pretrained(tmp_path / "base")
    peft_model = get_peft_model(
        base,
        LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], modules_to_save=["alignment", "gate"]
        ),
    )
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n for n in trainable) and any("gate.modules_to_save" in n for n in trainable)
    assert not any(".language_model." in n and "lora_" not in n for n in trainable)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    batch = tester.batch()
    for _ in range(3):
        optimizer.zero_grad()
        peft_model(**batch).loss.backward()
        optimizer.step()
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(**batch).scores
    peft_model.save_pretrained(tmp_path / "adapter")
    reloaded = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tmp_path / "base"), tmp_path / "adapter"
    ).eval()
    with torch.no_grad():
        got = reloaded(**batch).scores
        plain = AutoModel.from_pretrained(tmp_path / "base").eval()(**batch).scores
    assert torch.equal(got, expected)
    assert not torch.allclose(plain, expected)  # training changed the model, so the adapter carries it


def test_from_llm_adds_placeholders_resizes_and_reads_answer_ids():
    tokenizer = tiny_tokenizer("A user likes Yes No #Answer: item".split())
    llm = tiny_llm(
        tokenizer, hidden_size=32, num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True
    )
    user_tables, item_tables = (
        [torch.randn(4, 8), torch.randn(4, 6)],
        [torch.randn(10, 8), torch.randn(10, 6)],
    )
    model = CCFLlamaForCTR.from_llm(
        llm, tokenizer, 3, 9, user_tables, item_tables, yes_token="Yes", no_token="No"
    )
    cfg = model.config
    assert len(tokenizer) == 11 and model.get_input_embeddings().num_embeddings == 11
    assert tokenizer.convert_ids_to_tokens([cfg.user_token_id, cfg.item_token_id]) == [
        "<|user_cf|>",
        "<|item_cf|>",
    ]
    assert (cfg.yes_token_id, cfg.no_token_id) == tuple(tokenizer.convert_tokens_to_ids(["Yes", "No"]))
    assert cfg.cf_embedding_dims == [8, 6] and cfg.text_config.vocab_size == 11
    assert torch.equal(model.cf_encoder.item_embeddings[1].weight, item_tables[1])
    assert torch.equal(
        model.language_model.layers[0].mlp.up_proj.weight, llm.model.layers[0].mlp.up_proj.weight
    )
    assert model.lm_head.weight.data_ptr() == model.language_model.embed_tokens.weight.data_ptr()


def test_standardize_cf_gives_alg_the_same_inputs_whatever_the_cf_table_scale_and_offset(tmp_path):
    users, items = [torch.randn(4, 8), torch.randn(4, 6)], [torch.randn(10, 8), torch.randn(10, 6)]
    ids = torch.arange(1, 10)
    aligned = []
    # e.g. a CF backbone trained with a larger weight decay, or one whose vectors share a common offset (LightGCN)
    for factor, offset in ((1.0, 0.0), (0.01, 0.0), (0.01, 3.0)):
        torch.manual_seed(0)  # the same LLM and ALG initialization every time
        tokenizer = tiny_tokenizer("A user likes Yes No #Answer: item".split())
        llm = tiny_llm(tokenizer, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
        model = CCFLlamaForCTR.from_llm(
            llm, tokenizer, 3, 9, [u * factor + offset for u in users], [i * factor + offset for i in items],
            yes_token="Yes", no_token="No", standardize_cf=True,
        )  # fmt: skip
        shifts, scales = model.config.cf_input_shifts, model.config.cf_input_scales
        for (user_shift, item_shift), (user_scale, item_scale), u, i in zip(
            shifts, scales, users, items, strict=True
        ):
            for shift, scale, table in ((user_shift, user_scale, u), (item_shift, item_scale, i)):
                rows = table[1:] * factor + offset
                torch.testing.assert_close(torch.tensor(shift), rows.mean(0))
                assert scale == pytest.approx((rows - rows.mean(0)).pow(2).mean().sqrt().item(), rel=1e-5)
        with torch.no_grad():
            inputs = model.cf_encoder(ids, "item") + model.cf_encoder(ids[:3], "user")
            for x in inputs:  # centered, unit scale
                torch.testing.assert_close(x.mean(0), torch.zeros(x.shape[1]), atol=1e-4, rtol=0)
                assert x.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
            aligned.append(model.alignment(model.cf_encoder(ids, "item")))
    for other in aligned[1:]:
        for a, b in zip(aligned[0], other, strict=True):
            torch.testing.assert_close(a, b)
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path)
    assert reloaded.config.cf_input_shifts == model.config.cf_input_shifts
    assert reloaded.config.cf_input_scales == model.config.cf_input_scales
    torch.testing.assert_close(reloaded.cf_encoder(ids, "item")[1], model.cf_encoder(ids, "item")[1])
    model.fit_cf_standardization()  # refitting standardizes the raw tables again, not the standardized outputs
    assert model.config.cf_input_shifts == reloaded.config.cf_input_shifts
    with pytest.raises(ValueError, match="standardize_cf=True needs CF tables"):
        CCFLlamaForCTR.from_llm(llm, tokenizer, 3, 9, yes_token="Yes", no_token="No", standardize_cf=True)
    with pytest.raises(ValueError, match="cf_input_shifts must hold one"):
        CCFLlamaConfig(cf_embedding_dims=[8, 6], cf_input_shifts=[[None, [0.0] * 6], [None, None]])
    with pytest.raises(ValueError, match="cf_input_scales must hold one positive"):
        CCFLlamaConfig(cf_embedding_dims=[8, 6], cf_input_scales=[[1.0, 0.0], [1.0, 1.0]])


def test_standardize_cf_centers_a_sequential_sources_user_vectors_over_the_given_histories():
    from ccf_llm import CCFLlamaProcessor, SASRecConfig, SASRecModel

    torch.manual_seed(0)
    sasrec = SASRecModel(SASRecConfig(num_users=5, num_items=9, hidden_size=8, max_history=3))
    with (
        torch.no_grad()
    ):  # SASRec's final LayerNorm bias: one offset shared by every user vector (as on ML-1M)
        sasrec.encoder.final_norm.bias.fill_(5.0)
    tokenizer = tiny_tokenizer("A user likes Yes No #Answer: item".split())
    llm = tiny_llm(tokenizer, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    model = CCFLlamaForCTR.from_llm(llm, tokenizer, 5, 9, cf_models=[sasrec], yes_token="Yes", no_token="No")
    with pytest.raises(ValueError, match="standardizing them needs cf_history"):
        model.fit_cf_standardization()
    with pytest.raises(ValueError, match="standardizing them needs cf_history"):
        CCFLlamaForCTR.from_llm(
            tiny_llm(tokenizer), tokenizer, 5, 9, cf_models=[sasrec], yes_token="Yes", no_token="No",
            standardize_cf=True,
        )  # fmt: skip
    processor = CCFLlamaProcessor(tokenizer, {i: f"item {i}" for i in range(1, 10)}, cf_history_size=3)
    histories = [[1, 2, 3, 4], [5], [6, 7], [8, 9, 1, 2, 3], [2, 4, 6]]
    cf_history = processor.cf_history(histories)
    assert cf_history.tolist() == [
        [2, 3, 4],
        [0, 0, 5],
        [0, 6, 7],
        [1, 2, 3],
        [2, 4, 6],
    ]  # latest 3, left-padded
    model.eval()
    with torch.no_grad():
        raw = model.cf_encoder(None, "user", cf_history)[0]
    model.cf_encoder.requires_grad_(True)  # Θ_E tuned: the encoder trains with dropout ...
    model.train()
    model.fit_cf_standardization(cf_history)  # ... but the statistics are taken without it
    assert model.cf_encoder.user_encoders[0].training
    model.cf_encoder.requires_grad_(False)
    model.eval()
    with torch.no_grad():
        standardized = model.cf_encoder(None, "user", cf_history)[0]
    assert raw.mean(0).abs().min() > 4  # the offset dominates the raw vectors
    torch.testing.assert_close(standardized.mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    assert standardized.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)
    torch.testing.assert_close(standardized, (raw - raw.mean(0)) / (raw - raw.mean(0)).pow(2).mean().sqrt())
    with pytest.raises(ValueError, match="cf_history_size=0"):
        CCFLlamaProcessor(tokenizer, {1: "item"}).cf_history(histories)


def test_a_standardized_sequential_source_maps_rows_without_history_to_the_mean_user():
    """Statistics over rows with a history; an empty history (one distant SASRec vector) enters ALG as 0."""
    from ccf_llm import SASRecConfig, SASRecModel

    torch.manual_seed(0)
    sasrec = SASRecModel(SASRecConfig(num_users=5, num_items=9, hidden_size=8, max_history=3))
    tokenizer = tiny_tokenizer("A user likes Yes No #Answer: item".split())
    llm = tiny_llm(tokenizer, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    model = CCFLlamaForCTR.from_llm(
        llm, tokenizer, 5, 9, cf_models=[sasrec], yes_token="Yes", no_token="No"
    ).eval()
    with_history = torch.tensor([[2, 3, 4], [0, 0, 5], [0, 6, 7], [1, 2, 3]])
    empty = torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        raw = model.cf_encoder(None, "user", with_history)[0]
        raw_empty = model.cf_encoder(None, "user", empty)[0]
    model.fit_cf_standardization(torch.cat([with_history, empty, empty]))  # empty rows do not count ...
    mean = raw.mean(0)
    torch.testing.assert_close(torch.tensor(model.config.cf_input_shifts[0][0]), mean)
    assert model.config.cf_input_scales[0][0] == pytest.approx(
        (raw - mean).pow(2).mean().sqrt().item(), rel=1e-5
    )
    with torch.no_grad():
        standardized = model.cf_encoder(None, "user", torch.cat([with_history, empty]))[0]
    torch.testing.assert_close(standardized[:4], (raw - mean) / model.config.cf_input_scales[0][0])
    assert not torch.allclose(raw_empty, mean, atol=1e-3)  # SASRec's own vector for it is elsewhere ...
    assert standardized[4].abs().max().item() == 0  # ... the standardized model reads the mean user
    with pytest.raises(ValueError, match="no row of cf_history has an item"):
        model.fit_cf_standardization(torch.cat([empty, empty]))


def test_enc_alg_and_gate_stay_fp32_beside_a_bf16_llm(tmp_path):
    """Θ_E, Θ_A, Θ_G keep fp32 through from_llm, save and from_pretrained(dtype=bf16); the LLM (gate_proj too) not."""
    from ccf_llm import SASRecConfig, SASRecModel

    torch.manual_seed(0)
    sasrec = SASRecModel(SASRecConfig(num_users=5, num_items=9, hidden_size=8, max_history=3))
    tokenizer = tiny_tokenizer("A user likes Yes No #Answer: item".split())
    llm = tiny_llm(tokenizer, hidden_size=32, num_attention_heads=4, num_key_value_heads=2).to(torch.bfloat16)
    model = CCFLlamaForCTR.from_llm(llm, tokenizer, 5, 9, cf_models=[sasrec], yes_token="Yes", no_token="No")
    history = torch.tensor([[2, 3, 4], [0, 6, 7]])
    for loaded in (model, None):
        if loaded is None:
            model.save_pretrained(tmp_path)
            loaded = AutoModel.from_pretrained(tmp_path, dtype=torch.bfloat16)
        assert loaded.dtype == torch.bfloat16 and loaded.lm_head.weight.dtype == torch.bfloat16
        assert loaded.language_model.layers[0].mlp.gate_proj.weight.dtype == torch.bfloat16
        fusion = [loaded.cf_encoder, loaded.model.alignment, loaded.model.gate]
        assert {p.dtype for module in fusion for p in module.parameters()} == {torch.float32}
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):  # as under Trainer(bf16=True)
            vectors = loaded.eval().cf_encoder(None, "user", history)[0]
        with torch.no_grad():
            expected = sasrec.eval().encode_history(history)
        torch.testing.assert_close(vectors, expected)  # SASRec's fp32 vectors (bf16 would be ~1e-2 off)
        close = torch.stack([vectors[0], vectors[0] * (1 + 1e-4)])  # differ below bf16's resolution
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            aligned = loaded.model.alignment([close])[0]
        assert aligned.dtype == torch.float32 and (aligned[0] != aligned[1]).any()  # ALG computed in fp32


# ------------------------------------------------------------------------------------------------ bad input
def _error(model, batch, match):
    with pytest.raises(ValueError, match=match):
        model(**batch)


def test_bad_cf_inputs_raise_clear_errors():
    tester = CCFLlamaModelTester("gate")
    model = tester.model()
    good = tester.batch()
    _error(model, {**good, "user_ids": torch.tensor([1, 6])}, r"user ids out of range 1\.\.5: \[6\]")
    _error(model, {**good, "user_ids": torch.tensor([0, 1])}, r"user ids out of range")
    two_users = good["input_ids"].clone()
    two_users[0, -1] = USER
    _error(model, {**good, "input_ids": two_users}, r"exactly one user placeholder.*rows \[0\] have \[2\]")
    _error(model, {k: v for k, v in good.items() if k != "user_ids"}, "no user_ids were given")
    bad_items = good["token_item_ids"].clone()
    bad_items[0, -1] = 8
    _error(model, {**good, "token_item_ids": bad_items}, r"item ids out of range 1\.\.7.*\[8\]")
    _error(model, {**good, "token_item_ids": good["token_item_ids"][:, 1:]}, "must be aligned with input_ids")
    on_pad = good["token_item_ids"].clone()
    on_pad[1, 0] = 3
    _error(model, {**good, "token_item_ids": on_pad}, "padding positions")
    stray = good["input_ids"].clone()
    stray[0, 0] = ITEM
    _error(model, {**good, "input_ids": stray}, "only 'inject' mode uses them")


def test_inject_placeholder_without_item_id_raises():
    tester = CCFLlamaModelTester("inject")
    model = tester.model()
    good = tester.batch()
    missing = good["token_item_ids"].clone()
    missing[0][missing[0] == 5] = 0
    _error(
        model,
        {**good, "token_item_ids": missing},
        r"3 placeholders but 2 positions with item ids, 1 placeholders without an id",
    )
    _error(model, {k: v for k, v in good.items() if k != "token_item_ids"}, "no token_item_ids were given")


def test_text_mode_rejects_cf_inputs():
    tester = CCFLlamaModelTester("text")
    model = tester.model()
    good = tester.batch()
    _error(model, {**good, "user_ids": torch.tensor([1, 2])}, "uses no collaborative inputs")
    with_placeholder = good["input_ids"].clone()
    with_placeholder[0, 3] = USER
    _error(model, {**good, "input_ids": with_placeholder}, "contains user placeholder tokens")


def test_construction_errors():
    from transformers import T5Config

    with pytest.raises(ValueError, match="model_type 't5' cannot be built as a causal LM"):
        CCFLlamaForCTR(CCFLlamaConfig(text_config=T5Config(d_model=16, num_layers=1, vocab_size=20)))
    tester = CCFLlamaModelTester("gate")
    model = tester.model()
    with pytest.raises(
        ValueError, match=r"item embeddings of CF source 0 have shape \(7, 8\), expected \(8, 8\)"
    ):
        model.set_cf_embeddings(
            [torch.zeros(6, 8), torch.zeros(6, 4)], [torch.zeros(7, 8), torch.zeros(8, 4)]
        )


def test_tokenizer_without_answer_tokens_raises():
    tokenizer = tiny_tokenizer("A user likes item".split())
    llm = tiny_llm(tokenizer, hidden_size=32, num_attention_heads=4)
    with pytest.raises(ValueError, match=r"no single token for the answer 'Yes'"):
        CCFLlamaForCTR.from_llm(llm, tokenizer, 3, 9, yes_token="Yes", no_token="No")
    with pytest.raises(ValueError, match=r"no single token for the answer ' Yes no'"):
        CCFLlamaForCTR.from_llm(llm, tiny_tokenizer(["Yes", "no"]), 3, 9, yes_token=" Yes no")


@pytest.mark.parametrize("mode", ["gate", "token_gate"])
def test_gate_init_alpha_starts_the_fusion_at_a_constant(mode):
    """α = gate_init_alpha at init: 0 gives pure text titles, 1 exactly the `add` ablation's fused titles."""
    batch = CCFLlamaModelTester(mode).batch()
    inputs = {k: batch[k] for k in ("input_ids", "user_ids", "token_item_ids", "attention_mask")}
    add = CCFLlamaModelTester("add").model()
    plain = add.get_input_embeddings()(batch["input_ids"])
    titles = batch["token_item_ids"] > 0
    for alpha in (0.0, 1.0, 0.5):
        torch.manual_seed(0)
        model = CCFLlamaForCTR(CCFLlamaModelTester(mode, gate_init_alpha=alpha).config).eval()
        model.load_state_dict(add.state_dict(), strict=False)  # the same LLM, CF tables and ALG
        with torch.no_grad():
            fused, added = model.embed_hybrid_prompt(**inputs), add.embed_hybrid_prompt(**inputs)
        expected = plain + alpha * (added - plain)  # add mode: x_SM + ALG(x^CF) on title tokens
        torch.testing.assert_close(fused[titles], expected[titles], rtol=0, atol=1e-6)
        torch.testing.assert_close(fused[~titles], added[~titles], rtol=0, atol=0)  # user slot and text alike
    assert not torch.equal(added[titles], plain[titles])  # the CF part is not nothing


def test_lora_and_fusion_weights_train_in_fp32_beside_a_bf16_llm():
    """add_lora keeps every trainable weight fp32 (bf16 AdamW updates round away); one step changes ALG/GATE."""
    from ccf_llm.trainer_ccf_llama import CCFTrainingArguments, add_lora, apply_stage

    model = CCFLlamaModelTester("gate", zero_init_gate=False).model().to(torch.bfloat16)
    peft_model = add_lora(model, CCFTrainingArguments(output_dir="unused", use_cpu=True, report_to="none"))
    apply_stage(peft_model, "end_to_end")
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and {p.dtype for p in trainable.values()} == {torch.float32}
    assert peft_model.get_base_model().language_model.embed_tokens.weight.dtype == torch.bfloat16
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-4)
    out = peft_model(**CCFLlamaModelTester("gate").batch())
    assert out.loss.dtype == torch.float32 and torch.isfinite(out.loss)
    out.loss.backward()
    optimizer.step()
    changed = {n for n, p in trainable.items() if not torch.equal(p, before[n])}
    assert any(".alignment." in n for n in changed) and any(".gate." in n for n in changed)


def test_non_finite_cf_tables_and_labels_outside_0_1_are_refused():
    model = CCFLlamaModelTester("gate").model()
    users, items = torch.randn(6, 8), torch.randn(8, 8)
    for table, name in ((users, "user"), (items, "item")):
        for value in (float("nan"), float("inf")):
            broken = table.clone()
            broken[3, 2] = value
            given = (broken, items) if name == "user" else (users, broken)
            with pytest.raises(
                ValueError,
                match=rf"{name} embeddings of CF source 0 hold NaN or inf in 1 rows \(first: \[3\]\)",
            ):
                model.set_cf_embeddings([given[0], torch.randn(6, 4)], [given[1], torch.randn(8, 4)])
    batch = CCFLlamaModelTester("gate").batch()
    for labels in ([1, 2], [0, -1], [0.5, 1.0]):
        with pytest.raises(ValueError, match="labels must be 0 or 1"):
            model(**{**batch, "labels": torch.tensor(labels)})
    assert torch.isfinite(model(**batch).loss)  # 0/1 labels pass


# --------------------------------------------------------------------------------------- the LLaVA-style split
LEGACY = Path(__file__).parent / "fixtures" / "legacy_ccf_llama_d500b08"


def _legacy_batch():
    expected = json.loads((LEGACY / "expected.json").read_text())
    batch = {k: torch.tensor(v) for k, v in expected["batch"].items()}
    batch["token_item_ids"] = batch.pop("item_ids")
    return batch, expected


def test_a_checkpoint_and_adapter_saved_before_the_split_load_and_score_as_before(tmp_path):
    """The fixture was written by the single-class model of commit d500b08 (tests/fixtures/README.md)."""
    from peft import PeftModel
    from safetensors.torch import load_file

    batch, expected = _legacy_batch()
    model = AutoModel.from_pretrained(LEGACY / "base").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch).scores, torch.tensor(expected["base_scores"]), rtol=0, atol=1e-6
        )
        adapted = PeftModel.from_pretrained(model, LEGACY / "adapter").eval()
        torch.testing.assert_close(
            adapted(**batch).scores, torch.tensor(expected["adapter_scores"]), rtol=0, atol=1e-6
        )
    assert (
        expected["adapter_scores"] != expected["base_scores"]
    )  # the adapter (LoRA + ALG/GATE) moves the scores
    # saving keeps the old key layout, so older code still reads new checkpoints
    AutoModel.from_pretrained(LEGACY / "base").save_pretrained(tmp_path)
    assert set(load_file(tmp_path / "model.safetensors")) == set(
        load_file(LEGACY / "base" / "model.safetensors")
    )


def test_the_base_model_returns_hidden_states_and_the_ctr_model_reads_the_last_one():
    tester = CCFLlamaModelTester("gate", zero_init_gate=False)
    model = tester.model()
    batch = tester.batch()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        hidden = model.model(**inputs).last_hidden_state
        out = model(**batch)
    assert isinstance(model.model, CCFLlamaModel) and hidden.shape == (2, batch["input_ids"].shape[1], 32)
    torch.testing.assert_close(
        out.scores, model.answer(hidden[:, -1]).scores
    )  # left padding: the answer is last
    torch.testing.assert_close(out.p_yes, out.log_p_yes.exp())
    torch.testing.assert_close(
        out.loss, ccf_ctr_loss(out.log_p_yes, out.log_p_no, batch["labels"], bpr_weight=2.0)
    )


def test_the_former_item_ids_keyword_still_works_with_a_warning():
    tester = CCFLlamaModelTester("inject")
    model = tester.model()
    batch = tester.batch()
    old = {("item_ids" if k == "token_item_ids" else k): v for k, v in batch.items()}
    with torch.no_grad(), pytest.warns(FutureWarning, match="item_ids= is deprecated: pass token_item_ids="):
        scores = model(**old).scores
    with torch.no_grad():
        torch.testing.assert_close(scores, model(**batch).scores, rtol=0, atol=0)
    with pytest.raises(ValueError, match="pass token_item_ids= only"):
        model(**batch, item_ids=batch["token_item_ids"])


def test_gathering_item_rows_for_their_tokens_has_a_deterministic_backward():
    """The GATE gathers one row per distinct item for its N title tokens (`_rows`). With `x[index]` the backward
    accumulated repeated rows in a thread-dependent order on CPU, so stage 2 trained a different model every run."""
    from ccf_llm.modeling_ccf_llama import _rows

    threads = torch.get_num_threads()
    # the order only varies with several threads (x[index]: 8 distinct gradients of 8)
    torch.set_num_threads(2)
    try:
        torch.manual_seed(0)
        x = torch.randn(200, 64, requires_grad=True)
        index, upstream = torch.randint(0, 200, (20_000,)), torch.randn(20_000, 64)
        grads = set()
        for _ in range(6):
            x.grad = None
            (_rows(x, index) * upstream).sum().backward()
            grads.add(x.grad.numpy().tobytes())
        assert len(grads) == 1
        torch.testing.assert_close(_rows(x, index), x[index], rtol=0, atol=0)  # the same rows, exactly
    finally:
        torch.set_num_threads(threads)
