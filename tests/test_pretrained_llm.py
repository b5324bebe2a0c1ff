"""ccf_llm.pretrained_llm: resolving and loading the backbone LLM (local folders, the converted-model cache)."""

import json
import warnings

import pytest
import torch

from ccf_llm import DEFAULT_LLM, CCFLlamaForCTR, load_llm

from .conftest import tiny_llm, tiny_tokenizer
from .test_precision import CPU_KINDS, fake_cpu


def test_load_llm_reads_a_local_folder_with_the_attention_asked_for(tmp_path):
    tokenizer = tiny_tokenizer("A user likes Yes No".split())
    llm = tiny_llm(tokenizer, hidden_size=32, num_attention_heads=4, num_key_value_heads=2)
    llm.save_pretrained(tmp_path), tokenizer.save_pretrained(tmp_path)
    loaded = {
        attention: load_llm(str(tmp_path), dtype="float32", attn_implementation=attention)
        for attention in (None, "eager")
    }
    assert loaded[None][0].config._attn_implementation == "sdpa"  # transformers' default
    assert loaded["eager"][0].config._attn_implementation == "eager"
    assert torch.equal(loaded["eager"][0].model.norm.weight, llm.model.norm.weight)
    assert loaded["eager"][1].convert_tokens_to_ids("likes") == tokenizer.convert_tokens_to_ids("likes")
    # from_llm keeps the attention implementation the LLM was loaded with
    models = {
        attention: CCFLlamaForCTR.from_llm(
            loaded_llm, loaded_tokenizer, 3, 4, yes_token="Yes", no_token="No", fusion_mode="text"
        ).eval()
        for attention, (loaded_llm, loaded_tokenizer) in loaded.items()
    }
    assert models[None].language_model.config._attn_implementation == "sdpa"
    assert models["eager"].language_model.config._attn_implementation == "eager"
    ids = loaded["eager"][1](["A user likes", "user likes Yes"], padding=True, return_tensors="pt")
    with torch.no_grad():
        scores = {attention: model(**ids).scores for attention, model in models.items()}
    torch.testing.assert_close(scores["eager"], scores[None], atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("kind", ["AVX2", "AMX"])
def test_load_llm_loads_in_the_auto_dtype_and_names_its_local_folder(kind, tmp_path, monkeypatch):
    """
    load_llm's default dtype is auto. A Hub id resolved from the converted-model cache names the cache folder, so
    the adapter's base resolves offline and PEFT never looks the id up on the Hub (which printed network errors).
    """
    from peft import LoraConfig, get_peft_model

    features, expected = CPU_KINDS[kind]
    fake_cpu(monkeypatch, *features)
    monkeypatch.setenv("CCF_LLM_CACHE", str(tmp_path / "cache"))
    cached = tmp_path / "cache" / DEFAULT_LLM.replace("/", "--")
    tokenizer = tiny_tokenizer("A user likes Yes No".split())
    tiny_llm(tokenizer).save_pretrained(cached)
    tokenizer.save_pretrained(cached)
    llm, _ = load_llm(DEFAULT_LLM)
    assert llm.dtype == expected
    assert llm.name_or_path == str(cached)
    peft_model = get_peft_model(llm, LoraConfig(r=2, target_modules=["q_proj"]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model.save_pretrained(tmp_path / "adapter")
    assert [
        str(w.message) for w in caught if "config file" in str(w.message) or "remote" in str(w.message)
    ] == []
    adapter_config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(cached)
