"""Tests of the split builders on synthetic logs the tests write (MovieLens never enters the repository), plus the
exact CoLLM ML-1M reproduction where ../shared/data exists."""

import gzip
import json
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from ccf_llm.data import (
    item_titles,
    load_amazon_book,
    load_interactions,
    load_movielens_1m,
    warm_cold_subsets,
)

from .conftest import SHARED, require_shared


def ts(year, month, day=15, second=0):
    return int(datetime(year, month, day, tzinfo=UTC).timestamp()) + second


def write_ml1m(folder, ratings, movies):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ratings.dat").write_bytes(
        "\n".join("::".join(map(str, r)) for r in ratings).encode("latin-1") + b"\n"
    )
    (folder / "movies.dat").write_bytes(
        "\n".join(f"{m}::{t}::Drama" for m, t in movies).encode("latin-1") + b"\n"
    )
    return folder


MOVIES = [
    (10, "Amélie (2001)"),
    (20, "Heat (1995)"),
    (30, "Casino (1995)"),
    (40, "Up (2009)"),
    (50, "Old (1990)"),
]
RATINGS = [
    # user, movie, rating, time
    (7, 20, 5, ts(2001, 7)),  # train, positive
    (7, 10, 2, ts(2001, 8)),  # train, negative
    (7, 30, 4, ts(2002, 5)),  # validation, positive
    (7, 40, 5, ts(2002, 10)),  # test
    (3, 30, 4, ts(2001, 6, 1)),  # train: tie at one second with the next two rows
    (3, 10, 5, ts(2001, 6, 1)),
    (3, 20, 1, ts(2001, 6, 1)),
    (3, 40, 3, ts(2000, 5)),  # before the window: dropped
    (3, 50, 5, ts(2003, 2)),  # the partial last month: dropped
    (5, 99, 5, ts(2001, 9)),  # movie without a title: dropped by the inner join
]


def test_movielens_recipe_on_a_synthetic_log(tmp_path):
    splits = load_movielens_1m(write_ml1m(tmp_path / "ml", RATINGS, MOVIES))
    assert {k: len(v) for k, v in splits.items()} == {"train": 5, "validation": 1, "test": 1}
    train = splits["train"].to_pandas()
    # users in ascending raw id (3 → 1, 7 → 2); items by first appearance in the (user, time)-sorted frame;
    # the one-second tie of user 3 keeps movie first-appearance order in ratings.dat: 20, 10, 30
    assert train["raw_user_id"].tolist() == [3, 3, 3, 7, 7] and train["user_id"].tolist() == [1, 1, 1, 2, 2]
    assert train["raw_item_id"].tolist() == [20, 10, 30, 20, 10]
    assert train["item_id"].tolist() == [1, 2, 3, 1, 2]
    assert train["label"].tolist() == [0, 1, 1, 1, 0]
    assert [list(h) for h in train["history"]] == [[], [], [2], [], [1]]
    valid, test = splits["validation"][0], splits["test"][0]
    assert (valid["raw_item_id"], valid["history"]) == (
        30,
        [1],
    )  # earlier positives across splits, negatives never
    assert (test["raw_item_id"], test["history"], test["label"]) == (40, [1, 3], 1)
    assert item_titles(splits) == {1: "Heat (1995)", 2: "Amélie (2001)", 3: "Casino (1995)", 4: "Up (2009)"}


def test_warm_and_cold_subsets(tmp_path):
    rows = [(u, m, 5, ts(2001, 7, 1, u * 10 + i)) for u in (1, 2) for i, m in enumerate((10, 20, 30, 40))]
    rows += [
        (1, 10, 4, ts(2002, 10)),
        (1, 50, 4, ts(2002, 11)),
        (9, 50, 4, ts(2002, 12)),
        (9, 10, 4, ts(2002, 12, 2)),
    ]
    rows += [(2, 10, 4, ts(2001, 8)), (2, 10, 4, ts(2001, 9))]
    splits = load_movielens_1m(write_ml1m(tmp_path / "ml", rows, MOVIES))
    subsets = warm_cold_subsets(splits["test"], splits["train"])
    # warm: user 1 (4 train rows) on movie 10 (4 train rows); cold: new user 9 on new movie 50
    assert subsets["warm"]["raw_item_id"] == [10] and subsets["warm"]["raw_user_id"] == [1]
    assert subsets["cold"]["raw_user_id"] == [9] and subsets["cold"]["raw_item_id"] == [50]


def test_malformed_lines_name_file_and_line(tmp_path):
    folder = write_ml1m(tmp_path / "ml", RATINGS, MOVIES)
    lines = (folder / "ratings.dat").read_text().splitlines()
    (folder / "ratings.dat").write_text("\n".join(lines[:2] + ["7::20::5"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"ratings\.dat, line 3: expected 4 fields separated by '::', got 3"):
        load_movielens_1m(folder)
    (folder / "ratings.dat").write_text("\n".join(lines[:4] + ["7::20::five::978300760"]) + "\n")
    with pytest.raises(
        ValueError, match=r"ratings\.dat, line 5: column 'rating' must be a number, got 'five'"
    ):
        load_movielens_1m(folder)
    with pytest.raises(FileNotFoundError, match="has no ratings.dat"):
        load_movielens_1m(tmp_path)


def test_no_folder_offline_fails_fast_asking_for_it(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="offline.*pass data_dir="):
        load_movielens_1m()


def _write_amazon(folder, reviews, meta):
    folder.mkdir()
    with gzip.open(folder / "Books_5.json.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in reviews)
    with gzip.open(folder / "meta_Books.json.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(m) + "\n" for m in meta)
    return folder


def test_amazon_book_recipe_on_a_small_file(tmp_path):
    rng = np.random.default_rng(0)
    users, books = [f"U{i}" for i in range(4)], [f"B{i}" for i in range(3)]
    reviews = []
    for u in users:
        for b in books:
            for month in range(1, 13):  # 12 ratings a (user, book) in 2017: every user and book has > 20
                day = datetime(2017, month, 1 + int(rng.integers(0, 27)), tzinfo=UTC)
                reviews.append({"asin": b, "reviewerID": u, "overall": float(rng.integers(1, 6)),
                                "unixReviewTime": int(day.timestamp())})  # fmt: skip
    reviews.append(
        {"asin": "B0", "reviewerID": "U0", "overall": 5.0, "unixReviewTime": ts(2016, 6)}
    )  # other year
    reviews += [
        {"asin": "B9", "reviewerID": "U0", "overall": 5.0, "unixReviewTime": ts(2017, 5)}
    ]  # rare item
    meta = [{"asin": b, "title": f"Old {b}"} for b in books] + [
        {"asin": b, "title": f"Book {b}"} for b in books
    ]
    meta.append({"asin": "B9", "title": "Rare"})
    splits = load_amazon_book(_write_amazon(tmp_path / "amazon", reviews, meta))
    december = [r for r in reviews if datetime.fromtimestamp(r["unixReviewTime"], UTC).month == 12
                and r["asin"] != "B9" and r["unixReviewTime"] > ts(2017, 1, 1)]  # fmt: skip
    assert len(splits["validation"]) == len(splits["test"]) == len(december) // 2
    assert len(splits["train"]) == 4 * 3 * 11
    assert set(item_titles(splits).values()) == {"Book B0", "Book B1", "Book B2"}  # last metadata row wins
    labels = {(r["reviewerID"], r["asin"], r["unixReviewTime"]): int(r["overall"] == 5) for r in reviews}
    got = splits["test"].to_pandas()
    assert [
        labels[k] for k in zip(got.raw_user_id, got.raw_item_id, got.timestamp, strict=True)
    ] == got.label.tolist()
    assert max(splits["validation"]["timestamp"]) <= min(splits["test"]["timestamp"])


def test_amazon_book_bad_json_names_line(tmp_path):
    folder = _write_amazon(
        tmp_path / "amazon", [{"asin": "B", "reviewerID": "U", "overall": 5.0, "unixReviewTime": 1}], []
    )
    with gzip.open(folder / "meta_Books.json.gz", "wt") as f:
        f.write('{"asin": "B", "title": "x"}\n{"asin": \n')
    with pytest.raises(ValueError, match=r"meta_Books\.json\.gz, line 2: not a JSON object"):
        load_amazon_book(folder)


def test_generic_loader_csv_and_parquet(tmp_path):
    log = pd.DataFrame(
        {
            "who": ["a", "a", "b", "b", "a"],
            "what": ["x", "y", "x", "z", "z"],
            "stars": [5, 1, 4, 5, 2],
            "when": [100, 200, 150, 300, 400],
        }  # fmt: skip
    )
    titles = pd.DataFrame({"what": ["x", "y", "z"], "name": ["Ex", "Why", "Zed"]})
    log.to_csv(tmp_path / "log.csv", index=False)
    titles.to_parquet(tmp_path / "items.parquet")
    kw = dict(user_col="who", item_col="what", rating_col="stars", time_col="when", title_col="name")
    splits = load_interactions(
        tmp_path / "log.csv", tmp_path / "items.parquet", valid_start=250, test_start=350, threshold=3, **kw
    )
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [3, 1, 1]
    assert (
        splits["test"][0]["history"] == [1] and splits["test"][0]["label"] == 0
    )  # user a: x positive, y negative
    assert splits["validation"][0]["title"] == "Zed"
    (tmp_path / "bad.csv").write_bytes(b"who,what,stars,when\na,x,5,100\nb,\xff\xfe,4,150\n")
    with pytest.raises(ValueError, match=r"bad\.csv, line 3: bytes that are not valid utf-8"):
        load_interactions(
            tmp_path / "bad.csv", tmp_path / "items.parquet", valid_start=250, test_start=350, **kw
        )
    log.assign(what=["x", "y", "x", "q", "z"]).to_csv(tmp_path / "log2.csv", index=False)
    with pytest.raises(ValueError, match=r"no title for items \['q'\]"):
        load_interactions(
            tmp_path / "log2.csv", tmp_path / "items.parquet", valid_start=250, test_start=350, **kw
        )
    with pytest.raises(ValueError, match="train split is empty"):
        load_interactions(
            tmp_path / "log.csv", tmp_path / "items.parquet", valid_start=0, test_start=350, **kw
        )


def test_collm_movielens_split_reproduced_exactly():
    """Same rows, ids, labels, timestamps, titles and histories as CoLLM's released split (CI: never skipped)."""
    raw = require_shared(SHARED / "data" / "ml-1m")
    reference = require_shared(SHARED / "data" / "collm-ml-1m")
    splits = load_movielens_1m(raw)
    assert {k: len(v) for k, v in splits.items()} == {"train": 33_891, "validation": 10_401, "test": 7_331}
    for ours, name in ((splits["train"], "train"), (splits["validation"], "valid"), (splits["test"], "test")):
        ref = pd.read_parquet(reference / f"{name}.parquet")
        got = ours.to_pandas()
        for a, b in (
            ("user_id", "uid"),
            ("item_id", "iid"),
            ("label", "label"),
            ("timestamp", "timestamp"),
            ("title", "title"),
        ):
            assert (got[a].to_numpy() == ref[b].to_numpy()).all(), (name, a)
        assert all(ref_his[0] == 0 for ref_his in ref["his"])
        assert [list(h) for h in got["history"]] == [list(h[1:]) for h in ref["his"]], name
    everything = pd.concat([splits[s].to_pandas() for s in splits])
    assert everything["user_id"].max() == 838 and everything["item_id"].max() == 3255
    subsets = warm_cold_subsets(splits["test"], splits["train"])
    assert (len(subsets["warm"]), len(subsets["cold"])) == (3522, 26)


def test_collm_movielens_prompts_for_every_row():
    """All 51,623 rows translate with SmolLM2's tokenizer: one user slot, <= 700 tokens, last 10 positives shown."""
    from transformers import AutoTokenizer

    from ccf_llm import CCFLlamaProcessor

    from .conftest import SMOLLM2_DIR

    raw = require_shared(SHARED / "data" / "ml-1m")
    tokenizer = AutoTokenizer.from_pretrained(require_shared(SMOLLM2_DIR))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user_cf|>", "<|item_cf|>"]})
    splits = load_movielens_1m(raw)
    processor = CCFLlamaProcessor(tokenizer, item_titles(splits))
    test = processor.process_dataset(splits["test"])
    user_token = tokenizer.convert_tokens_to_ids("<|user_cf|>")
    ids = test["input_ids"]
    assert len(ids) == 7_331 and max(map(len, ids)) <= 700
    assert all(row.count(user_token) == 1 for row in ids)
    row = test[int(np.argmax([len(h) for h in test["history"]]))]
    marked = list(dict.fromkeys(i for i in row["item_ids"] if i))  # items in prompt order
    assert marked == row["history"][-10:] + [row["item_id"]] or marked[-1] == row["item_id"]
    assert all(len(processor.process_dataset(splits[s])) == len(splits[s]) for s in ("train", "validation"))
