"""`benchmarks/cf_references.py`: the item-only references and table spectra behind the README's reading of the CF
rows, on tiny CF models built in code."""

import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch

from ccf_llm import MFConfig, MFModel, SASRecConfig, SASRecModel
from ccf_llm.data import CTRRows

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cf_references  # noqa: E402


def split(users, items, histories=None) -> CTRRows:
    n = len(users)
    return CTRRows(
        datasets.Dataset.from_dict(
            {
                "user_id": users,
                "item_id": items,
                "label": [i % 2 for i in range(n)],
                "history": histories or [[1]] * n,
            }  # fmt: skip
        ),
        max_history=2,
    )


def test_references_of_a_table_model_give_new_users_the_mean_training_user():
    model = MFModel(MFConfig(num_users=4, num_items=3, hidden_size=2))
    with torch.no_grad():
        model.user_embeddings.weight.copy_(torch.tensor([[0, 0], [1, 0], [3, 2], [9, 9], [0, 0.0]]))
        model.item_embeddings.weight.copy_(torch.tensor([[0, 0], [1, 1], [2, -1], [0, 5.0]]))
    train = split(
        [1, 2, 1], [1, 2, 3]
    )  # users 1 and 2 trained; 3 is new (its vector is not the mean), 4 is cold
    test = split([1, 3, 4, 4], [1, 2, 3, 1])
    found = cf_references.reference_scores(model, test, train)
    mean = np.array([2.0, 1.0])  # of users 1 and 2, each once, however many rows they have
    items = np.array([[1, 1], [2, -1], [0, 5], [1, 1.0]])
    np.testing.assert_allclose(found["own"], [1, 9, 0, 0])
    np.testing.assert_allclose(found["new users -> mean user"], [1, items[1] @ mean, items[2] @ mean, 3])
    np.testing.assert_allclose(found["item only"], items @ mean)


def test_sasrec_has_no_fallback_and_its_item_only_reference_uses_the_mean_user_over_rows_with_a_history():
    torch.manual_seed(0)
    model = SASRecModel(SASRecConfig(num_users=3, num_items=4, hidden_size=8, max_history=2)).eval()
    train = split([1, 2, 3], [1, 2, 3], [[1, 2], [], [3]])
    test = split([1, 2], [4, 1], [[2], [1, 3]])
    found = cf_references.reference_scores(model, test, train)
    assert set(found) == {"own", "item only"}
    with torch.no_grad():
        mean = model.encode_history(train.tensors["history"][[0, 2]]).mean(
            0
        )  # the row without history left out
        items = model.item_embeddings.weight[[4, 1]]
        logits = model(**{k: v for k, v in test.tensors.items() if k != "labels"}).logits
    np.testing.assert_allclose(found["item only"], (items @ mean).numpy(), rtol=1e-5)
    np.testing.assert_allclose(found["own"], logits.numpy(), rtol=1e-5)


def test_spectrum_counts_the_directions_a_table_uses():
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(6, generator=generator)
    rank_one = torch.randn(20, 1, generator=generator) * direction
    rank_one = torch.cat([rank_one, torch.zeros(3, 6)])  # cold rows are left out
    found = cf_references.spectrum(rank_one)
    assert found["rows"] == 20 and found["dims"] == 6
    assert found["first_share"] == pytest.approx(1.0) and found["effective_rank"] == pytest.approx(
        1.0, abs=1e-6
    )
    spread = cf_references.spectrum(torch.linalg.qr(torch.randn(6, 6, generator=generator)).Q * 10 + 1)
    assert spread["first_share_centered"] < 0.5 and spread["effective_rank"] > 4


def test_scores_over_other_rows_or_another_order_are_refused():
    import pandas as pd

    test = pd.DataFrame({"user_id": [1, 1, 2], "item_id": [3, 4, 3]})
    cf_references.check_test_order(test.assign(score=0.5), test, "mf")  # the same rows: accepted
    for other in (test.iloc[::-1], test.iloc[:2]):  # reordered, or fewer rows
        with pytest.raises(
            ValueError, match="mf's test scores are not over the test split's rows in its order"
        ):
            cf_references.check_test_order(other, test, "mf")
