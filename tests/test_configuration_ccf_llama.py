"""CCFLlamaConfig and the table of fusion modes: the table says what exists, and the model and processor agree."""

import pytest
import torch
from transformers import LlamaConfig

from ccf_llm import FUSION_MODE_TABLE, FUSION_MODES, CCFLlamaConfig, CCFLlamaForCTR, CCFLlamaProcessor

from .conftest import tiny_tokenizer


def tiny_config(mode, **kwargs):
    text = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                       num_key_value_heads=1, vocab_size=40)  # fmt: skip
    return CCFLlamaConfig(text_config=text, num_users=3, num_items=4, cf_embedding_dims=[4, 2], fusion_mode=mode,
                          user_token_id=38, item_token_id=39, yes_token_id=3, no_token_id=4, **kwargs)  # fmt: skip


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_the_model_has_exactly_the_parameters_its_row_of_the_table_names(mode):
    row = FUSION_MODE_TABLE[mode]
    model = CCFLlamaForCTR(tiny_config(mode))
    modules = {name.split(".")[1] for name, _ in model.named_parameters() if name.startswith("model.")}
    gate_mlps = {n for n, _ in model.named_parameters() if n.startswith("model.gate.")}
    assert modules == {"language_model"} | ({"cf_encoder", "alignment"} if row.uses_cf else set()) | (
        {"gate"} if gate_mlps else set()
    )
    assert hasattr(model, "gate") == row.has_gate == row.marks_titles
    if row.has_gate:
        widths = {mlp.fc2.out_features for mlp in (*model.gate.cf_gates, *model.gate.semantic_gates)}
        assert widths == ({row.alpha_size(16)} if row.gate_width else set())
    assert model.config.fusion is row and model.config.uses_cf == row.uses_cf


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_the_processor_marks_what_the_table_says(mode):
    tokenizer = tiny_tokenizer('likes user item A: " , none red apple'.split())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user_cf|>", "<|item_cf|>"]})
    row = FUSION_MODE_TABLE[mode]
    template = (
        "likes {history} user {user} item {target} A:" if row.uses_cf else "likes {history} item {target} A:"
    )
    out = CCFLlamaProcessor(tokenizer, {1: "red apple"}, fusion_mode=mode, template=template)([1], [[1]], [1])
    assert ("token_item_ids" in out) == ("user_ids" in out) == row.uses_cf
    if not row.uses_cf:
        return
    marked = out["input_ids"][out["token_item_ids"] > 0]
    placeholder = tokenizer.convert_tokens_to_ids("<|item_cf|>")
    assert (marked == placeholder).all() if row.item_placeholder else not (marked == placeholder).any()
    assert len(marked) == (4 if row.marks_titles else 2)  # two titles of two tokens, or one placeholder each


def test_unknown_modes_and_bad_fields_are_refused():
    with pytest.raises(ValueError, match="fusion_mode must be one of"):
        CCFLlamaConfig(fusion_mode="concat")
    with pytest.raises(ValueError, match="cf_source_names has 1 names for 2 CF sources"):
        CCFLlamaConfig(cf_embedding_dims=[8, 8], cf_source_names=["mf"])


def test_training_settings_of_older_configs_are_dropped():
    config = tiny_config("gate", bpr_weight=3.0, train_cf_embeddings=True)
    assert not hasattr(config, "bpr_weight") and not hasattr(config, "train_cf_embeddings")
    assert "bpr_weight" not in config.to_dict() and "train_cf_embeddings" not in config.to_dict()
    model = CCFLlamaForCTR(config)
    assert not any(p.requires_grad for p in model.cf_encoder.parameters())


def test_the_lm_head_is_tied_exactly_when_the_llm_ties_it():
    for tie in (True, False):
        config = tiny_config("text")
        config.text_config.tie_word_embeddings = tie
        model = CCFLlamaForCTR(config)
        assert (model.lm_head.weight is model.get_input_embeddings().weight) == tie
        assert config.tie_word_embeddings == tie and torch.is_tensor(model.lm_head.weight)
