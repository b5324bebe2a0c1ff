"""CCF-LLM on the real default backbone (SmolLM2-135M-Instruct from the GGUF build in ../shared/models).

Skipped only where that folder is missing; where it exists these tests run (and so fail, never skip, under CI).
"""

import time

import pytest
import torch

from ccf_llm import DEFAULT_LLM, FUSION_MODES, CCFLlamaForCTR, CCFLlamaProcessor, load_llm, resolve_llm

from .conftest import SMOLLM2_DIR, require_shared


@pytest.fixture(scope="module")
def smollm2(monkeypatch_module):
    require_shared(SMOLLM2_DIR)
    monkeypatch_module.setenv("CCF_LLM_GGUF", str(SMOLLM2_DIR))
    start = time.perf_counter()
    llm, tokenizer = load_llm(DEFAULT_LLM, dtype="float32")
    first = time.perf_counter() - start
    start = time.perf_counter()
    folder = resolve_llm(DEFAULT_LLM)
    again = time.perf_counter() - start
    return llm, tokenizer, folder, first, again


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def test_real_backbone_is_found_converted_and_cached(smollm2):
    llm, tokenizer, folder, first, again = smollm2
    assert type(llm).__name__ == "LlamaForCausalLM" and llm.config.hidden_size == 576
    assert sum(p.numel() for p in llm.parameters()) == 134_515_008
    assert tokenizer.encode(" Yes", add_special_tokens=False) == [9230]
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    assert again < 1.0, f"resolving the cached conversion took {again:.2f}s"
    print(f"first load (GGUF dequantize + cache) {first:.1f}s, cached resolve {again * 1000:.0f}ms")


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_real_backbone_forward_backward_every_mode(smollm2, mode):
    llm, tokenizer, *_ = smollm2
    torch.manual_seed(0)
    users, items = torch.randn(4, 16), torch.randn(6, 16)
    cf = {} if mode == "text" else {"user_embeddings": users, "item_embeddings": items}
    model = CCFLlamaForCTR.from_llm(llm, tokenizer, 3, 5, fusion_mode=mode, zero_init_gate=False, **cf)
    titles = {
        1: "Toy Story (1995)",
        2: "Heat (1995)",
        3: "Casino (1995)",
        4: "Jumanji (1995)",
        5: "Sabrina (1995)",
    }
    processor = CCFLlamaProcessor(tokenizer, titles, fusion_mode=mode)
    batch = processor([1, 2], [[1, 2], [4]], [3, 5], labels=[1.0, 0.0])
    mask = batch["attention_mask"]
    model.train()
    out = model(**batch)
    out.loss.backward()
    assert torch.isfinite(out.loss) and ((out.scores > 0) & (out.scores < 1)).all()
    # the instruct model puts real mass on the two answers after "#Answer:"
    assert (out.p_yes + out.p_no).min() > 1e-3
    assert model.language_model.layers[-1].self_attn.v_proj.weight.grad.abs().sum() > 0
    if mode != "text":
        assert model.alignment.projections[0].fc1.weight.grad.abs().sum() > 0
    if mode in ("gate", "token_gate"):
        assert model.gate.semantic_gates[0].fc1.weight.grad.abs().sum() > 0
    # fused and plain-text prompts differ exactly where the CF signal enters
    if mode in ("gate", "inject"):
        with torch.no_grad():
            embeds = model.embed_hybrid_prompt(
                batch["input_ids"], batch["user_ids"], batch["token_item_ids"], mask
            )
            plain = model.get_input_embeddings()(batch["input_ids"])
        changed = (embeds != plain).any(-1)
        expected = (batch["token_item_ids"] > 0) | (batch["input_ids"] == model.config.user_token_id)
        assert torch.equal(changed, expected)
