"""CF backbones (MF, LightGCN, SASRec): they learn planted structure, export/load round trips, UAUC, bad input."""

import datasets
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from transformers import AutoModel

from ccf_llm import CCFLlamaForCTR
from ccf_llm.data import CTRRows
from ccf_llm.modeling_collaborative import LightGCNModel, MFModel, SASRecModel, cf_backbone

from .conftest import tiny_llm, tiny_tokenizer


def planted_log(num_users=60, num_items=40, rows_per_user=30, seed=0):
    """Two user groups and two item groups: a user clicks items of its own group (90%), others rarely (10%).
    A row's history is the user's earlier positives, as in the real splits."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(1, num_users + 1), rows_per_user)
    items = rng.integers(1, num_items + 1, len(users))
    same = (users % 2) == (items % 2)
    labels = (rng.random(len(users)) < np.where(same, 0.9, 0.1)).astype(np.int64)
    histories, seen = [], {}
    for u, i, y in zip(users, items, labels, strict=True):  # test-data generation, not library code
        histories.append(list(seen.get(u, [])))
        if y:
            seen.setdefault(u, []).append(int(i))
    split = datasets.Dataset.from_dict(
        {
            "user_id": users,
            "item_id": items,
            "label": labels,
            "history": histories,
            "timestamp": np.arange(len(users)),
        }
    )
    return split, num_users, num_items


def train(model, rows, epochs, lr):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(rows), generator=generator).split(128):
            optimizer.zero_grad()
            model(**rows.__getitems__(batch)).loss.backward()
            optimizer.step()
    return model


@pytest.mark.parametrize(
    "name, hidden, epochs, lr",
    [("mf", 16, 15, 0.05), ("lightgcn", 16, 15, 0.05), ("sasrec", 16, 10, 0.01)],
)
def test_backbone_learns_planted_structure(name, hidden, epochs, lr):
    split, num_users, num_items = planted_log()
    config_class, model_class = cf_backbone(name)
    extra = {"max_history": 8, "dropout": 0.0} if name == "sasrec" else {}
    init_std = {"init_std": 0.1}
    torch.manual_seed(0)
    model = model_class(
        config_class(num_users=num_users, num_items=num_items, hidden_size=hidden, **extra, **init_std)
    )
    rows = CTRRows(split, max_history=8 if name == "sasrec" else 0)
    held_out = np.arange(len(rows)) % 5 == 0
    train_rows = CTRRows(
        split.select(np.flatnonzero(~held_out)),
        rows.tensors.get("history", torch.zeros(1)).shape[-1] if name == "sasrec" else 0,
    )
    if name == "lightgcn":
        t = train_rows.tensors
        model.set_graph(t["user_ids"][t["labels"] > 0], t["item_ids"][t["labels"] > 0])
    train(model.train(), train_rows, epochs, lr)
    model.eval()
    test = rows.__getitems__(torch.from_numpy(np.flatnonzero(held_out)))
    with torch.no_grad():
        logits = model(**{k: v for k, v in test.items() if k != "labels"}).logits
    auc = roc_auc_score(test["labels"].numpy(), logits.numpy())
    assert auc > 0.8, f"{name}: held-out AUC {auc:.3f}"


def test_sasrec_user_vector_comes_from_history_only():
    torch.manual_seed(0)
    model = SASRecModel(
        cf_backbone("sasrec")[0](num_users=5, num_items=9, hidden_size=8, max_history=4)
    ).eval()
    history = torch.tensor([[0, 0, 3, 4], [0, 0, 3, 4], [0, 1, 3, 4]])
    users = model.encode_history(history)
    assert torch.equal(users[0], users[1]) and not torch.allclose(users[0], users[2])
    # another width would give the same items other positions (and other vectors): refused
    for width in (3, 5):
        with pytest.raises(
            ValueError, match=f"history has {width} columns; SASRec reads exactly max_history=4"
        ):
            model.encode_history(torch.zeros(1, width, dtype=torch.long))
    with pytest.raises(ValueError, match="pass history="):
        model(torch.tensor([1]), torch.tensor([2]))


def test_ctr_rows_left_pad_the_latest_history():
    split = datasets.Dataset.from_dict(
        {
            "user_id": [1, 2, 3],
            "item_id": [4, 5, 6],
            "label": [1, 0, 1],
            "history": [[], [7], [1, 2, 3, 4, 5]],
        }
    )
    rows = CTRRows(split, max_history=3)
    assert rows.tensors["history"].tolist() == [[0, 0, 0], [0, 0, 7], [3, 4, 5]]
    batch = rows.__getitems__([2, 0])
    assert batch["item_ids"].tolist() == [6, 4] and batch["labels"].dtype == torch.float32


def test_cold_rows_are_zero_and_stay_zero_under_adam_with_l2():
    torch.manual_seed(0)
    model = MFModel(cf_backbone("mf")[0](num_users=4, num_items=5, hidden_size=8))
    assert model.zero_cold_rows(torch.tensor([1, 2]), torch.tensor([1, 2, 3])) == (2, 2)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1, weight_decay=1e-2)
    for _ in range(5):
        optimizer.zero_grad()
        model(torch.tensor([1, 2]), torch.tensor([1, 3]), labels=torch.tensor([1.0, 0.0])).loss.backward()
        optimizer.step()
    assert (
        model.user_embeddings.weight[3:].abs().sum() == 0
        and model.item_embeddings.weight[4:].abs().sum() == 0
    )
    assert model.user_embeddings.weight[1].abs().sum() > 0


@pytest.mark.parametrize("name", ["mf", "lightgcn", "sasrec"])
def test_save_load_round_trip(name, tmp_path):
    config_class, model_class = cf_backbone(name)
    torch.manual_seed(0)
    model = model_class(config_class(num_users=6, num_items=7, hidden_size=8)).eval()
    if name == "lightgcn":
        model.set_graph(torch.tensor([1, 2, 2, 5]), torch.tensor([3, 3, 4, 7]))
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path).eval()
    assert type(loaded) is model_class
    inputs = {
        "user_ids": torch.tensor([1, 2, 6]),
        "item_ids": torch.tensor([3, 4, 7]),
        "history": torch.tensor([[0] * 24 + [3]] * 3),
    }
    with torch.no_grad():
        assert torch.equal(loaded(**inputs).logits, model(**inputs).logits)


def test_exported_tables_load_into_the_ccf_model():
    torch.manual_seed(0)
    cf = LightGCNModel(cf_backbone("lightgcn")[0](num_users=3, num_items=4, hidden_size=8))
    cf.set_graph(torch.tensor([1, 2]), torch.tensor([3, 4]))
    users, items = cf.export_cf_embeddings()
    assert users.shape == (4, 8) and items.shape == (5, 8)
    assert not torch.equal(items[3], cf.item_embeddings.weight[3])  # propagated, not the raw layer-0 table
    tokenizer = tiny_tokenizer(["Yes", "No"])
    llm = tiny_llm(tokenizer)
    model = CCFLlamaForCTR.from_llm(llm, tokenizer, 3, 4, users, items, yes_token="Yes", no_token="No")
    assert torch.equal(model.cf_encoder.item_embeddings[0].weight, items)


def test_bad_input_errors():
    with pytest.raises(
        ValueError, match=r"unknown CF backbone 'bpr'; choose one of \['lightgcn', 'mf', 'sasrec'\]"
    ):
        cf_backbone("bpr")
    model = MFModel(cf_backbone("mf")[0](num_users=3, num_items=4, hidden_size=4))
    with pytest.raises(ValueError, match=r"item ids out of range 1\.\.4: \[5\]"):
        model(torch.tensor([1]), torch.tensor([5]))
    with pytest.raises(ValueError, match="num_users, num_items and hidden_size must be >= 1"):
        cf_backbone("mf")[0](num_users=0)
    tokenizer_vocab = ["Yes", "No"]
    tokenizer = tiny_tokenizer(tokenizer_vocab)
    llm = tiny_llm(tokenizer)
    users, items = model.export_cf_embeddings()  # 3 users, 4 items
    with pytest.raises(
        ValueError, match=r"item embeddings of CF source 0 have shape \(5, 4\), expected \(10, 4\)"
    ):
        CCFLlamaForCTR.from_llm(llm, tokenizer, 3, 9, users, items, yes_token="Yes", no_token="No")


def test_sasrec_and_lightgcn_sources_in_the_ccf_model(tmp_path):
    """Eq. 7 with a table source (LightGCN) and a sequential one (SASRec): the user slot gets
    ALG_0(LightGCN user) + ALG_1(SASRec(history)); the SASRec encoder travels with save/load."""
    from ccf_llm import CCFLlamaProcessor
    from ccf_llm.modeling_collaborative import SASRecEncoder

    torch.manual_seed(0)
    lightgcn = LightGCNModel(cf_backbone("lightgcn")[0](num_users=3, num_items=4, hidden_size=8))
    lightgcn.set_graph(torch.tensor([1, 2]), torch.tensor([3, 4]))
    sasrec = SASRecModel(
        cf_backbone("sasrec")[0](num_users=3, num_items=4, hidden_size=6, max_history=5)
    ).eval()
    words = "likes user item A: a b c d Yes No".split()
    tokenizer = tiny_tokenizer(words)
    llm = tiny_llm(tokenizer)
    model = CCFLlamaForCTR.from_llm(
        llm,
        tokenizer,
        3,
        4,
        cf_models=[lightgcn, sasrec],
        yes_token="Yes",
        no_token="No",
        zero_init_gate=False,
    ).eval()
    assert model.config.cf_embedding_dims == [8, 6] and model.config.max_cf_history == 5
    assert isinstance(model.cf_encoder.user_encoders[1], SASRecEncoder)
    processor = CCFLlamaProcessor(
        tokenizer, {1: "a", 2: "b", 3: "c", 4: "d"}, template="likes {history} user {user} item {target} A:",
        cf_history_size=model.config.max_cf_history,
    )  # fmt: skip
    batch = processor([2, 1], [[1, 2, 3], []], [4, 1])
    assert batch["cf_history"].tolist() == [[0, 0, 1, 2, 3], [0, 0, 0, 0, 0]]
    with torch.no_grad():
        embeds = model.embed_hybrid_prompt(batch["input_ids"], batch["user_ids"], batch["token_item_ids"],
                                           batch["attention_mask"], batch["cf_history"])  # fmt: skip
        lightgcn_users, _ = lightgcn.export_cf_embeddings()
        expected = model.alignment.projections[0](lightgcn_users[2]) + model.alignment.projections[1](
            sasrec.encode_history(batch["cf_history"][:1])[0]
        )
        slot = batch["input_ids"][0] == model.config.user_token_id
        torch.testing.assert_close(embeds[0, slot][0], expected)
        scores = model(**batch).scores
    with pytest.raises(ValueError, match="pass cf_history="):
        model(**{k: v for k, v in batch.items() if k != "cf_history"})
    model.save_pretrained(tmp_path)
    reloaded = AutoModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        got = reloaded(**batch).scores
    weights = model.state_dict()
    assert all(torch.equal(t, weights[k]) for k, t in reloaded.state_dict().items())  # bit-identical weights
    # scores within 1 ulp: loaded tensors sit at other addresses, and oneDNN's kernels may round differently there
    torch.testing.assert_close(got, scores, atol=1e-6, rtol=0)


def test_recommend_top_k_for_the_pilot_study_prompt():
    from ccf_llm import CCFLlamaProcessor
    from ccf_llm.processing_ccf_llama import PILOT_TEMPLATE

    model = MFModel(cf_backbone("mf")[0](num_users=2, num_items=4, hidden_size=2))
    with torch.no_grad():
        model.user_embeddings.weight[1:] = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        model.item_embeddings.weight[1:] = torch.tensor([[3.0, 0.0], [2.0, 1.0], [0.0, 3.0], [1.0, 2.0]])
    top = model.recommend([1, 2], [1, 2, 3, 4], k=2)
    assert top.tolist() == [[1, 2], [3, 4]]
    with pytest.raises(ValueError, match="k=5 is more than the 4 candidate items"):
        model.recommend([1], [1, 2, 3, 4], k=5)
    words = PILOT_TEMPLATE.replace("{", " ").replace("}", " ").split() + [
        "a",
        "b",
        "c",
        "d",
        '"',
        ",",
        "none",
    ]
    tokenizer = tiny_tokenizer(words)
    processor = CCFLlamaProcessor(
        tokenizer, {1: "a", 2: "b", 3: "c", 4: "d"}, fusion_mode="text", template=PILOT_TEMPLATE
    )
    out = processor(None, [[], []], [4, 1], similar_item_ids=top.tolist(), return_tensors=None)
    words = tokenizer.convert_ids_to_tokens(out["input_ids"][0])
    start = words.index("enjoy:") + 1
    assert words[start : start + 7] == [
        '"',
        "a",
        '"',
        ",",
        '"',
        "b",
        '"',
    ]  # MF's top 2 for user 1, best first
