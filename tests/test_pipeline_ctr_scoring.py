"""Serving: prefix-cached candidate scoring, the `ctr-scoring` pipeline, offline row scoring and examples/score.py."""

import json
import runpy
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from transformers import AutoModel, pipeline

from ccf_llm import (
    FUSION_MODES,
    CCFLlamaForCTR,
    CCFLlamaProcessor,
    SASRecConfig,
    SASRecModel,
    score_rows,
    scoring_tokens,
)

from .conftest import tiny_llm, tiny_tokenizer

TITLES = {
    1: "red apple",
    2: "green pear pie",
    3: "blue plum",
    4: "black fig",
    5: "old big brown fig tree",
    6: "kiwi",
}
WORDS = "likes user item A: red apple green pear pie blue plum black fig old big brown tree kiwi Yes No none".split()
TEMPLATES = {
    "prefix": "likes {history} user {user} item {target} A:",
    "user_after_target": "likes {history} item {target} user {user} A:",
}


def build(mode, template="prefix", sasrec=False, seed=0, max_length=700):
    """A tiny fp32 model and processor; with `sasrec`, a second CF source that encodes users from their history."""
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer(WORDS + ['"', ', "'])
    llm = tiny_llm(
        tokenizer, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2
    )
    cf = {}
    if mode != "text":
        cf["cf_models"] = [_mf_like(8)] + ([SASRecModel(SASRecConfig(num_users=6, num_items=6, hidden_size=8, max_history=3))] if sasrec else [])  # fmt: skip
    model = CCFLlamaForCTR.from_llm(
        llm, tokenizer, 6, 6, yes_token="Yes", no_token="No", fusion_mode=mode, zero_init_gate=False, **cf
    ).eval()
    text = TEMPLATES[template] if mode != "text" else "likes {history} item {target} A:"
    processor = CCFLlamaProcessor(
        tokenizer, TITLES, fusion_mode=mode, template=text, history_size=3, max_length=max_length,
        cf_history_size=model.config.max_cf_history,
    )  # fmt: skip
    return model, processor


def _mf_like(dim):
    from ccf_llm import MFConfig, MFModel

    return MFModel(MFConfig(num_users=6, num_items=6, hidden_size=dim))


def full_prompt_scores(model, processor, users, histories, items):
    batch = processor(users, histories, items)
    with torch.no_grad():
        return model(**batch).scores


@pytest.mark.parametrize("mode", FUSION_MODES)
def test_prefix_cached_scores_equal_full_prompts_in_every_mode(mode):
    model, processor = build(mode, sasrec=mode != "text")
    histories = [[1, 2, 3, 4], [], [6]]
    candidates = [[1, 2, 3, 4, 5, 6, 2], [3], [5, 1]]
    features = processor.ranking_inputs([1, 2, 5], histories, candidates)
    assert features["prefix_input_ids"].shape[0] == 3
    assert features["prefix_index"].tolist() == [0] * 7 + [1] + [2, 2]
    cached = model.score_candidates(**features, batch_size=3)  # 4 chunks, one spanning two users
    rows = np.repeat(np.arange(3), [7, 1, 2])
    full = full_prompt_scores(
        model, processor, np.array([1, 2, 5])[rows], [histories[r] for r in rows], sum(candidates, [])
    )
    assert cached.scores.shape == (10,)
    torch.testing.assert_close(cached.scores, full, atol=1e-5, rtol=0)
    assert full.std() > 1e-3  # the candidates really get different scores


def test_prefix_cached_scoring_runs_compiled_layers_eagerly():
    """Compiled decoder layers (as training leaves them) would recompile for every layer's cache entry."""
    from torch._dynamo.utils import counters

    from ccf_llm.trainer_ccf_llama import compile_decoder_layers

    model, processor = build("gate")
    features = processor.ranking_inputs([1, 2], [[1, 2], [6]], [[3, 4], [5]])
    eager = model.score_candidates(**features, batch_size=2).scores
    assert compile_decoder_layers(model) == 2
    graphs = counters["stats"]["unique_graphs"]
    torch.testing.assert_close(model.score_candidates(**features, batch_size=2).scores, eager, atol=0, rtol=0)
    assert counters["stats"]["unique_graphs"] == graphs  # nothing compiled


def test_user_feature_after_the_target_rides_in_the_suffix():
    model, processor = build("gate", template="user_after_target", sasrec=True)
    features = processor.ranking_inputs([3], [[1, 2]], [[4, 5, 6]])
    assert (features["input_ids"] == model.config.user_token_id).sum() == 3  # one per suffix
    cached = model.score_candidates(**features)
    full = full_prompt_scores(model, processor, [3, 3, 3], [[1, 2]] * 3, [4, 5, 6])
    torch.testing.assert_close(cached.scores, full, atol=1e-5, rtol=0)


def test_candidates_whose_prompts_drop_different_history_get_their_own_prefix():
    model, processor = build("gate", max_length=23)
    # the long title of item 5 leaves room for one history item fewer than the one-word title of item 6
    assert processor([1], [[1, 2, 3]], [6])["input_ids"].shape[1] == 23  # all 3 history items
    assert processor([1], [[1, 2, 3]], [5])["input_ids"].shape[1] == 22  # "red apple" dropped
    features = processor.ranking_inputs([1], [[1, 2, 3]], [[6, 5, 6]])
    assert features["prefix_index"].tolist() == [1, 0, 1]  # prefixes sorted by length: the shorter one first
    assert features["prefix_attention_mask"].sum(-1).tolist() == [14, 19]  # 23 - 4 and 22 - 8 suffix tokens
    full = full_prompt_scores(model, processor, [1] * 3, [[1, 2, 3]] * 3, [6, 5, 6])
    torch.testing.assert_close(model.score_candidates(**features).scores, full, atol=1e-5, rtol=0)


def test_pipeline_ranks_candidates_and_handles_bad_input(tmp_path):
    model, processor = build("gate")
    scorer = pipeline("ctr-scoring", model=model, processor=processor)
    out = scorer({"user_id": 2, "history": [1, 3], "candidates": [6, 4, 5, 2]}, candidate_batch_size=2)
    full = full_prompt_scores(model, processor, [2] * 4, [[1, 3]] * 4, [6, 4, 5, 2]).numpy()
    order = np.argsort(-full, kind="stable")
    assert out["item_ids"] == np.array([6, 4, 5, 2])[order].tolist()
    np.testing.assert_allclose(out["scores"], full[order], atol=1e-5)
    assert out["titles"][0] == TITLES[out["item_ids"][0]]
    top = scorer([{"user_id": 2, "history": [1, 3], "candidates": [6, 4, 5, 2]}] * 2, top_k=1)
    assert [t["item_ids"] for t in top] == [out["item_ids"][:1]] * 2
    assert scorer({"user_id": 2, "history": [1], "candidates": []}) == {
        "item_ids": [],
        "scores": [],
        "titles": [],
    }
    with pytest.raises(ValueError, match=r"unknown item ids .* target .*\[9\]"):
        scorer({"user_id": 2, "history": [1], "candidates": [1, 9]})
    with pytest.raises(ValueError, match="lacks \\['user_id'\\]"):
        scorer({"history": [1], "candidates": [1]})
    with pytest.raises(ValueError, match="unknown item ids .* history"):
        scorer({"user_id": 2, "history": [0], "candidates": [1]})

    # a saved folder with processor (and adapter, see test_trainer) loads by path
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    reloaded = pipeline("ctr-scoring", model=str(tmp_path), dtype=torch.float32)
    again = reloaded({"user_id": 2, "history": [1, 3], "candidates": [6, 4, 5, 2]})
    assert again["item_ids"] == out["item_ids"]
    np.testing.assert_allclose(again["scores"], out["scores"], atol=1e-6)


def test_score_candidates_errors():
    model, processor = build("gate")
    features = processor.ranking_inputs([1, 2], [[1], [2]], [[3], [4]])
    with pytest.raises(ValueError, match="pass prefix_index"):
        model.score_candidates(**{k: v for k, v in features.items() if k != "prefix_index"})
    bad = dict(features, prefix_index=torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="prefix_index must have shape"):
        model.score_candidates(**bad)
    left = dict(features, attention_mask=torch.flip(features["attention_mask"], [1]))
    left["attention_mask"][:, 0] = 0
    with pytest.raises(ValueError, match="right-padded"):
        model.score_candidates(**left)
    with pytest.raises(ValueError, match=r"histories of rows \[1\] hold item ids < 1"):
        score_rows(model, processor, [1, 2], [[1], [0, 2]], [3, 4])


def test_score_rows_matches_full_prompts_in_row_order_and_score_script(tmp_path, monkeypatch):
    model, processor = build("inject", sasrec=True)
    rng = np.random.default_rng(0)
    n = 100
    users = rng.integers(1, 4, n)
    histories = [list(rng.integers(1, 7, rng.integers(0, 3))) for _ in range(n)]
    items = rng.integers(1, 7, n)
    full = full_prompt_scores(model, processor, users, histories, items).numpy()
    calls = []  # the prefix masks of the score_candidates calls
    score_candidates = model.score_candidates
    monkeypatch.setattr(
        model,
        "score_candidates",
        lambda **kw: calls.append(kw["prefix_attention_mask"]) or score_candidates(**kw),
    )
    for strategy in ("prefix_cache", "full", "auto"):
        calls.clear()
        scores = score_rows(model, processor, users, histories, items, batch_size=7, strategy=strategy)
        np.testing.assert_allclose(scores, full, atol=1e-5, err_msg=strategy)
        if strategy != "auto":  # auto's choice is checked below
            assert bool(calls) == (strategy == "prefix_cache")
        assert all(mask[:, 0].any() for mask in calls)  # no prefix column is padding in every row of a call
    # batches of 1 row; blocks of 64 rows tokenized at once: two blocks
    np.testing.assert_allclose(
        score_rows(model, processor, users, histories, items, batch_size=1), full, atol=1e-5
    )
    # auto: one prefix shared by 30 candidates runs the cache; 30 prompts with 30 different prefixes do not
    ranking = np.arange(30) % 6 + 1
    for rows_users, rows_histories, uses_cache in (
        ([2] * 30, [[1, 3, 5]] * 30, True),
        (np.arange(30) % 3 + 1, [[1 + i % 6, 1 + i // 6 % 6, 1 + i // 36] for i in range(30)], False),
    ):
        calls.clear()
        scores = score_rows(model, processor, rows_users, rows_histories, ranking, batch_size=8)
        np.testing.assert_allclose(
            scores,
            full_prompt_scores(model, processor, rows_users, rows_histories, ranking).numpy(),
            atol=1e-5,
        )
        assert bool(calls) == uses_cache
        # the counts auto chose by, checked against the prompts: full prompts in sorted batches of 8, padded to
        # the longest; with one shared prefix the cache runs it once, then the suffixes (prompt - prefix)
        counted = scoring_tokens(processor, rows_users, rows_histories, ranking, batch_size=8)
        lengths = np.sort(processor(rows_users, rows_histories, ranking)["attention_mask"].sum(1).numpy())
        assert counted["full"] == sum(len(b) * b.max() for b in np.split(lengths, range(8, 30, 8)))
        assert counted["auto"] == min(counted["full"], counted["prefix_cache"])
        assert json.loads(json.dumps(counted)) == counted  # plain ints: benchmarks write them to JSON
        assert counted["auto_blocks"] == {"prefix_cache": int(uses_cache), "full": int(not uses_cache)}
        if uses_cache:
            prefix = (
                processor.ranking_inputs([2], [[1, 3, 5]], [ranking])["prefix_attention_mask"].sum().item()
            )
            # the cache's calls keep the candidates' row order, not sorted: padded to each batch's longest suffix
            by_row = processor(rows_users, rows_histories, ranking)["attention_mask"].sum(1).numpy() - prefix
            assert counted["prefix_cache"] == prefix + sum(
                len(b) * b.max() for b in np.split(by_row, range(8, 30, 8))
            )
            assert counted["prefix_cache"] < counted["full"]
    with pytest.raises(ValueError, match="strategy must be one of"):
        score_rows(model, processor, users, histories, items, strategy="fast")
    monkeypatch.undo()

    model.save_pretrained(tmp_path / "model")
    processor.save_pretrained(tmp_path / "model")
    table = pd.DataFrame(
        {"user_id": users, "history": histories, "item_id": items, "label": rng.integers(0, 2, n)}
    )
    table.to_parquet(tmp_path / "candidates.parquet")
    argv = ["score.py", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "candidates.parquet"),
            "--output", str(tmp_path / "scores.parquet"), "--batch_size", "5", "--dtype", "float32"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    runpy.run_path("examples/score.py", run_name="__main__")
    out = pd.read_parquet(tmp_path / "scores.parquet")
    assert out.columns.tolist() == ["user_id", "history", "item_id", "label", "score"]
    np.testing.assert_allclose(out["score"].to_numpy(), full, atol=1e-5)

    table.drop(columns="history").to_parquet(tmp_path / "bad.parquet")
    monkeypatch.setattr(sys, "argv", argv[:3] + ["--input", str(tmp_path / "bad.parquet")] + argv[5:])
    with pytest.raises(SystemExit, match="lacks the columns \\['history'\\]"):
        runpy.run_path("examples/score.py", run_name="__main__")


@pytest.mark.parametrize(
    "amx, dtype, expected",
    [
        (False, None, torch.float32),  # AVX2, auto: the bf16 checkpoint is cast to fp32
        (False, torch.bfloat16, torch.bfloat16),  # an explicit dtype wins
        (True, None, torch.bfloat16),  # AMX: bf16 is native, kept
    ],
)
def test_pipeline_casts_a_bf16_model_to_fp32_only_where_bf16_is_not_native(
    tmp_path, monkeypatch, amx, dtype, expected
):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: amx)
    model, processor = build("gate")
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    scorer = pipeline("ctr-scoring", model=str(tmp_path), **({} if dtype is None else {"dtype": dtype}))
    assert scorer.model.dtype == expected
    out = scorer({"user_id": 2, "history": [1, 3], "candidates": [6, 4]})
    assert sorted(out["item_ids"]) == [4, 6] and all(0 < s < 1 for s in out["scores"])


def _folder_with_adapter(folder, base_name=None, seed=0, adapter="adapter", adapter_seed=None):
    """A run_ctr-style folder: base model + processor at the root (`build("gate", seed=seed)`), a non-zero LoRA
    adapter in `folder/adapter` (or another subfolder: `adapter`), initialized from `adapter_seed` when given."""
    from peft import LoraConfig, get_peft_model

    model, processor = build("gate", seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    model.name_or_path = str(base_name or folder)
    if adapter_seed is not None:
        torch.manual_seed(adapter_seed)
    peft = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft.save_pretrained(folder / adapter)
    return processor


def test_pipeline_never_merges_an_adapter_twice_or_one_that_is_not_the_models(tmp_path, monkeypatch):
    from ccf_llm import load_ctr_model

    processor = _folder_with_adapter(tmp_path / "run")
    merged = load_ctr_model(tmp_path / "run", dtype=torch.float32)
    q_proj = merged.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    scorer = pipeline("ctr-scoring", model=merged, processor=processor)  # already merged: nothing more
    assert torch.equal(scorer.model.language_model.layers[0].self_attn.q_proj.weight, q_proj)
    by_path = pipeline("ctr-scoring", model=str(tmp_path / "run"), dtype=torch.float32)
    query = {"user_id": 2, "history": [1, 3], "candidates": [6, 4, 5]}
    np.testing.assert_allclose(scorer(query)["scores"], by_path(query)["scores"], atol=1e-6)
    plain = AutoModel.from_pretrained(tmp_path / "run", dtype=torch.float32)
    assert not torch.equal(
        plain.language_model.layers[0].self_attn.q_proj.weight, q_proj
    )  # the adapter did change it

    # an in-memory model (no folder of its own) next to somebody's adapter/ in the working directory
    fresh, _ = build("gate")
    fresh.name_or_path = ""
    before = fresh.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    monkeypatch.chdir(tmp_path / "run")
    scorer = pipeline("ctr-scoring", model=fresh, processor=processor)
    assert torch.equal(scorer.model.language_model.layers[0].self_attn.q_proj.weight, before)

    # an adapter trained on another local base model (other weights)
    _folder_with_adapter(tmp_path / "other", base_name=tmp_path / "run", seed=1)
    with pytest.raises(ValueError, match="does not belong to this model"):
        load_ctr_model(tmp_path / "other")


def test_load_ctr_model_merges_a_chosen_checkpoint_and_accepts_a_copied_run_folder(tmp_path):
    """`adapter=` merges e.g. the UAUC-selected checkpoint instead of adapter/; a copied run folder, whose adapters
    still name the original as their base, loads (same weights byte for byte) and scores the same."""
    import shutil

    from ccf_llm import load_ctr_model
    from ccf_llm.pipeline_ctr_scoring import _merge_saved_adapter

    processor = _folder_with_adapter(tmp_path / "run")
    # a second, different adapter of the same base, saved where the trainer keeps a stage's checkpoints
    _folder_with_adapter(tmp_path / "run", adapter="stage_2_fusion/checkpoint-600", adapter_seed=7)
    query = {"user_id": 2, "history": [1, 3], "candidates": [6, 4, 5]}

    def scores(model):
        return pipeline("ctr-scoring", model=model, processor=processor)(query)["scores"]

    default = load_ctr_model(tmp_path / "run", dtype=torch.float32)
    chosen = load_ctr_model(
        tmp_path / "run", adapter=tmp_path / "run" / "stage_2_fusion" / "checkpoint-600", dtype=torch.float32
    )
    from peft import PeftModel

    by_hand = PeftModel.from_pretrained(
        AutoModel.from_pretrained(tmp_path / "run", dtype=torch.float32),
        str(tmp_path / "run" / "stage_2_fusion" / "checkpoint-600"),
    ).merge_and_unload()
    assert np.abs(np.subtract(scores(default), scores(chosen))).max() > 1e-4  # another adapter, other scores
    for name, weight in by_hand.state_dict().items():  # the checkpoint's LoRA, merged as PEFT merges it
        torch.testing.assert_close(chosen.state_dict()[name], weight, msg=name)

    shutil.copytree(tmp_path / "run", tmp_path / "moved")  # adapter_config.json still names run/ as the base
    np.testing.assert_allclose(
        scores(load_ctr_model(tmp_path / "moved", dtype=torch.float32)), scores(default), atol=1e-6
    )

    with pytest.raises(
        ValueError, match="already carries an adapter"
    ):  # never a second adapter on a merged model
        _merge_saved_adapter(default, adapter=tmp_path / "run" / "stage_2_fusion" / "checkpoint-600")
    with pytest.raises(FileNotFoundError, match="holds no adapter"):
        load_ctr_model(tmp_path / "run", adapter=tmp_path / "run" / "stage_2_fusion")
    with pytest.raises(ValueError, match="merge_adapter=False"):
        load_ctr_model(tmp_path / "run", adapter=tmp_path / "run" / "adapter", merge_adapter=False)

    # a checkpoint whose file lacks weights its config asks for: refused (PEFT alone would warn and merge the rest)
    from safetensors.torch import load_file, save_file

    partial = tmp_path / "run" / "stage_2_fusion" / "checkpoint-600" / "adapter_model.safetensors"
    weights = load_file(partial)
    save_file({k: v for k, v in weights.items() if ".layers.0." not in k}, partial)
    assert len(load_file(partial)) < len(weights)
    with pytest.raises(ValueError, match="lacks .* adapter weights"):
        load_ctr_model(tmp_path / "run", adapter=partial.parent, dtype=torch.float32)


def test_score_script_reads_csv_histories_and_refuses_values_that_are_not_ids(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("score_script", "examples/score.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    path = tmp_path / "rows.csv"
    path.write_text('user_id,history,item_id,note\n1,"[1, 2, 3]",4,a\n2,,5,b\n3,7 8,6,c\n4,[],2.0,d\n')
    table = script.read_table(path)
    assert table["history"].tolist() == [[1, 2, 3], [], [7, 8], []]
    assert table["item_id"].tolist() == [4, 5, 6, 2] and table["item_id"].dtype == np.int64
    assert table["note"].tolist() == ["a", "b", "c", "d"]  # other columns ride along
    for body, message in (
        ('1,"[1, 2.5]",4,a\n', r"rows.csv, line 2: history item '2.5' is not a whole number"),
        ("1,3,4,a\n2,x 1,5,b\n", r"rows.csv, line 3: history item 'x' is not a whole number"),
        ("1.5,3,4,a\n", r"rows.csv, line 2: user_id '1.5' is not a whole number"),
        ("1,3,,a\n", r"rows.csv, line 2: item_id '' is not a whole number"),
    ):
        path.write_text("user_id,history,item_id,note\n" + body)
        with pytest.raises(SystemExit, match=message):
            script.read_table(path)
