"""Tests of the hybrid prompt translation (CCFLlamaProcessor) and the collator, on a word-level tokenizer."""

import datasets
import pytest
import torch

from ccf_llm import CCFDataCollator, CCFLlamaProcessor
from ccf_llm.processing_ccf_llama import PILOT_TEMPLATE

from .conftest import tiny_tokenizer

TEMPLATE = "Q: likes {history} . user {user} . item {target} ? A:"
TITLES = {1: "red apple", 2: "green pear pie", 3: "blue plum", 7: "<|user_cf|> trick"}
WORDS = 'Q: likes . user item ? A: red apple green pear pie blue plum trick none " , "'.split()


@pytest.fixture
def tokenizer():
    tok = tiny_tokenizer(WORDS + ['"', ', "'])
    tok.add_special_tokens({"additional_special_tokens": ["<|user_cf|>", "<|item_cf|>"]})
    return tok


def _words(tokenizer, ids, mask=None):
    ids = ids[mask.bool()] if mask is not None else ids
    return tokenizer.convert_ids_to_tokens(ids.tolist() if hasattr(ids, "tolist") else ids)


def test_gate_mode_marks_every_title_token_with_its_item(tokenizer):
    proc = CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE)
    out = proc([5, 6], [[1, 2], [3]], [3, 1], labels=[1, 0])
    mask = out["attention_mask"]
    assert mask[1, 0] == 0 and mask[:, -1].all()  # left padded: the answer cue is always last
    words = _words(tokenizer, out["input_ids"][0], mask[0])
    assert words == ["Q:", "likes", '"', "red", "apple", '"', ",", '"', "green", "pear", "pie", '"', ".", "user",
                     "<|user_cf|>", ".", "item", '"', "blue", "plum", '"', "?", "A:"]  # fmt: skip
    marks = out["token_item_ids"][0][mask[0].bool()].tolist()
    assert [m for m, w in zip(marks, words, strict=True) if m] == [1, 1, 2, 2, 2, 3, 3]
    assert [w for m, w in zip(marks, words, strict=True) if m] == [
        "red",
        "apple",
        "green",
        "pear",
        "pie",
        "blue",
        "plum",
    ]
    assert out["user_ids"].tolist() == [5, 6] and out["labels"].tolist() == [1, 0]


def test_inject_mode_adds_a_cf_token_after_each_title_and_text_mode_has_no_cf_fields(tokenizer):
    inject = CCFLlamaProcessor(tokenizer, TITLES, fusion_mode="inject", template=TEMPLATE)
    out = inject([5], [[1, 2]], [3])
    words = _words(tokenizer, out["input_ids"][0])
    marks = out["token_item_ids"][0].tolist()
    assert [(w, m) for w, m in zip(words, marks, strict=True) if m] == [
        ("<|item_cf|>", 1),
        ("<|item_cf|>", 2),
        ("<|item_cf|>", 3),
    ]
    assert words[words.index("apple") + 2] == "<|item_cf|>"
    text = CCFLlamaProcessor(
        tokenizer, TITLES, fusion_mode="text", template="Q: likes {history} . item {target} ? A:"
    )
    out = text([5], [[1]], [3])
    assert set(out) == {"input_ids", "attention_mask"}
    with pytest.raises(ValueError, match="cannot have a {user} slot"):
        CCFLlamaProcessor(tokenizer, TITLES, fusion_mode="text", template=TEMPLATE)


def test_history_keeps_the_last_k_oldest_first_and_renders_empty_history(tokenizer):
    proc = CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE, history_size=2)
    out = proc([1, 1], [[3, 1, 2], []], [1, 2], return_tensors=None)
    assert [m for m in out["token_item_ids"][0] if m] == [
        1,
        1,
        2,
        2,
        2,
        1,
        1,
    ]  # history [1, 2] (last 2), target 1
    assert tokenizer.convert_ids_to_tokens(out["input_ids"][1])[:3] == ["Q:", "likes", "none"]


def test_max_length_drops_oldest_history_items_whole(tokenizer):
    full = CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE)([1], [[1, 2, 3]], [1], return_tensors=None)
    n_full = len(full["input_ids"][0])  # 27 tokens; item 1 costs 5 (`"` red apple `"` `,`), item 2 costs 6
    for max_length, kept in [
        (n_full, [1, 2, 3]),
        (n_full - 1, [2, 3]),
        (n_full - 5, [2, 3]),
        (n_full - 6, [3]),
    ]:
        proc = CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE, max_length=max_length)
        out = proc([1], [[1, 2, 3]], [1], return_tensors=None)
        assert len(out["input_ids"][0]) <= max_length
        history_marks = out["token_item_ids"][0][
            : out["input_ids"][0].index(tokenizer.convert_tokens_to_ids("user"))
        ]
        assert list(dict.fromkeys(m for m in history_marks if m)) == kept
    with pytest.raises(ValueError, match="without any history, more than max_length=10; the user and target"):
        CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE, max_length=10)([1], [[1]], [1])
    # the tokens named are the shortest prompt's: the one with the empty history's rendering
    shortest = len(CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE)([1], [[]], [1])["input_ids"][0])
    with pytest.raises(ValueError, match=rf"rows \[0\] need \[{shortest}\] tokens"):
        CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE, max_length=shortest - 1)([1], [[1]], [1])


def test_titles_with_placeholder_strings_stay_text(tokenizer):
    proc = CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE)
    out = proc([4], [[7]], [1])
    user_id = tokenizer.convert_tokens_to_ids("<|user_cf|>")
    assert int((out["input_ids"] == user_id).sum()) == 1  # only the real [User_u] slot
    marked = out["input_ids"][out["token_item_ids"] == 7]
    # the word-level vocabulary reads the literal "<|user_cf|>" as an unknown word, never as the placeholder
    assert marked.tolist() == [tokenizer.unk_token_id, tokenizer.convert_tokens_to_ids("trick")]


def test_pilot_template_lists_similar_items_as_plain_text(tokenizer):
    template = PILOT_TEMPLATE.replace("#Question:", "Q:")
    tok = tiny_tokenizer(WORDS + ['"', ', "'] + template.replace("{", " ").replace("}", " ").split())
    proc = CCFLlamaProcessor(tok, TITLES, fusion_mode="text", template=template)
    out = proc(None, [[1]], [2], similar_item_ids=[[3]], return_tensors=None)
    words = tok.convert_ids_to_tokens(out["input_ids"][0])
    assert words[words.index("enjoy:") + 1 : words.index("enjoy:") + 5] == ['"', "blue", "plum", '"']
    with pytest.raises(ValueError, match="pass similar_item_ids"):
        proc(None, [[1]], [2])
    # the length budget counts the similar items exactly: a prompt that fits exactly keeps its whole history
    full = proc(None, [[1, 3]], [2], similar_item_ids=[[3, 1]], return_tensors=None)["input_ids"][0]
    tight = CCFLlamaProcessor(tok, TITLES, fusion_mode="text", template=template, max_length=len(full))
    assert tight(None, [[1, 3]], [2], similar_item_ids=[[3, 1]], return_tensors=None)["input_ids"][0] == full


def test_bad_input_errors_name_the_problem(tokenizer):
    proc = CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE)
    with pytest.raises(
        ValueError,
        match=r"unknown item ids \(no title in the item table\) in the history of rows \[1\]: \[9\]",
    ):
        proc([1, 2], [[1], [2, 9]], [1, 2])
    with pytest.raises(ValueError, match=r"in the target of rows \[0\]: \[4\]"):
        proc([1], [[1]], [4])
    with pytest.raises(ValueError, match="item 3 has ' '"):
        CCFLlamaProcessor(tokenizer, {1: "a", 3: " "}, template=TEMPLATE)
    with pytest.raises(ValueError, match="title of item 2 is not valid text"):
        CCFLlamaProcessor(tokenizer, {1: "a", 2: "caf\udce9"}, template=TEMPLATE)
    with pytest.raises(ValueError, match="no placeholder token '<|user_cf|>'"):
        CCFLlamaProcessor(tiny_tokenizer(WORDS), TITLES, template=TEMPLATE)
    with pytest.raises(ValueError, match="exactly one {target}"):
        CCFLlamaProcessor(tokenizer, TITLES, template="Q: {history} {user} A:")


def test_dataset_map_matches_direct_call_and_collator_pads_left(tokenizer):
    rows = {
        "user_id": [1, 2, 3],
        "item_id": [3, 1, 2],
        "label": [1, 0, 1],
        "history": [[1, 2], [], [3, 1, 2, 3]],
    }
    proc = CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE)
    mapped = proc.process_dataset(datasets.Dataset.from_dict(rows), batch_size=2)
    assert {"input_ids", "token_item_ids", "user_ids", "labels", "history"} <= set(mapped.column_names)
    direct = proc(rows["user_id"], rows["history"], rows["item_id"], labels=rows["label"])
    batch = CCFDataCollator(tokenizer.pad_token_id)([mapped[i] for i in range(3)])
    for key in ("input_ids", "attention_mask", "token_item_ids", "user_ids", "labels"):
        assert torch.equal(batch[key], direct[key]), key


def test_processor_save_and_load_round_trip(tokenizer, tmp_path):
    proc = CCFLlamaProcessor(tokenizer, TITLES, fusion_mode="inject", template=TEMPLATE, history_size=3)
    proc.save_pretrained(tmp_path)
    loaded = CCFLlamaProcessor.from_pretrained(tmp_path)
    assert loaded.fusion_mode == "inject" and loaded.history_size == 3 and loaded.item_titles[7] == TITLES[7]
    a, b = proc([1], [[1, 2]], [3]), loaded([1], [[1, 2]], [3])
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(
        a["token_item_ids"], b["token_item_ids"]
    )


def test_title_token_ids_are_the_cached_prompt_tokens(tokenizer):
    proc = CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE)
    ids, mask = proc.title_token_ids([2, 1])
    assert _words(tokenizer, ids[0], mask[0]) == ["green", "pear", "pie"]
    assert _words(tokenizer, ids[1], mask[1]) == ["red", "apple"] and mask[1].tolist() == [1, 1, 0]
    with pytest.raises(ValueError, match=r"unknown item ids .* item list .*\[9\]"):
        proc.title_token_ids([9])


def test_the_mode_comes_from_the_models_config_and_a_mismatch_fails_at_construction(tokenizer, tmp_path):
    from transformers import LlamaConfig

    from ccf_llm import CCFLlamaConfig

    user, item = tokenizer.convert_tokens_to_ids(["<|user_cf|>", "<|item_cf|>"])
    config = CCFLlamaConfig(text_config=LlamaConfig(vocab_size=len(tokenizer)), fusion_mode="inject",
                            user_token_id=user, item_token_id=item)  # fmt: skip
    proc = CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE, config=config)
    assert proc.fusion_mode == "inject" and proc.fusion.item_placeholder
    with pytest.raises(
        ValueError, match="fusion_mode='gate' but the model's config has fusion_mode='inject'"
    ):
        CCFLlamaProcessor(tokenizer, TITLES, fusion_mode="gate", template=TEMPLATE, config=config)
    with pytest.raises(ValueError, match="cf_history_size=3 but the model's sequential CF sources read 0"):
        CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE, cf_history_size=3, config=config)
    config.user_token_id = item
    with pytest.raises(
        ValueError, match=r"user placeholder '<\|user_cf\|>' has id \d+, but the model's config says"
    ):
        CCFLlamaProcessor(tokenizer, TITLES, template=TEMPLATE, config=config)
    # a processor saved beside a model's config.json is checked against it when loaded
    config.user_token_id = user
    config.save_pretrained(tmp_path)
    CCFLlamaProcessor(tokenizer, TITLES, fusion_mode="inject", template=TEMPLATE).save_pretrained(tmp_path)
    assert CCFLlamaProcessor.from_pretrained(tmp_path).fusion_mode == "inject"
    config.fusion_mode = "gate"
    config.save_pretrained(tmp_path)
    with pytest.raises(
        ValueError, match="fusion_mode='inject' but the model's config has fusion_mode='gate'"
    ):
        CCFLlamaProcessor.from_pretrained(tmp_path)
