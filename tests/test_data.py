"""Tests of the split builders on synthetic logs the tests write (MovieLens never enters the repository), plus the
exact CoLLM ML-1M reproduction where ../shared/data exists."""

import gzip
import json
import logging
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from ccf_llm.data import (
    build_splits,
    id_counts,
    item_titles,
    load_amazon_book,
    load_interactions,
    load_movielens_1m,
    warm_cold_masks,
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
    # cold="item": the new movie 50 is cold whoever watches it, the known user 1 included
    warm, cold = warm_cold_masks(
        splits["test"]["user_id"], splits["test"]["item_id"], splits["train"], cold="item"
    )
    test = splits["test"].to_pandas()
    assert sorted(test["raw_user_id"][cold]) == [1, 9] and set(test["raw_item_id"][cold]) == {50}
    assert test["raw_user_id"][warm].tolist() == [1] and test["raw_item_id"][warm].tolist() == [10]
    # cold="user": the new user 9 is cold whatever the movie, the known movie 10 included
    _, cold = warm_cold_masks(
        splits["test"]["user_id"], splits["test"]["item_id"], splits["train"], cold="user"
    )
    assert set(test["raw_user_id"][cold]) == {9} and sorted(test["raw_item_id"][cold]) == [10, 50]
    with pytest.raises(ValueError, match="cold must be one of"):
        warm_cold_masks([1], [10], splits["train"], cold="users")


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
    assert id_counts(splits) == (838, 3255)
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
    marks = np.array(row["token_item_ids"])
    # the first token of each title (titles are apart)
    starts = (marks != 0) & (marks != np.append(0, marks[:-1]))
    assert marks[starts].tolist() == row["history"][-10:] + [row["item_id"]]  # items in prompt order
    assert all(len(processor.process_dataset(splits[s])) == len(splits[s]) for s in ("train", "validation"))


# ----------------------------------------------------------------------------------- histories for any row order
def _day(month, day, second=0):
    return int(datetime(2017, month, day, tzinfo=UTC).timestamp()) + second


def _output_histories(splits):
    """(raw user, timestamp) → the history of that row in raw item ids, from all three splits."""
    rows = pd.concat([splits[s].to_pandas() for s in splits])
    raw_item = dict(zip(rows["item_id"], rows["raw_item_id"], strict=True))
    assert rows.groupby("item_id")["raw_item_id"].nunique().eq(1).all()  # one raw id per id and back
    assert rows.groupby("raw_user_id")["user_id"].nunique().eq(1).all()
    assert rows.groupby("user_id")["raw_user_id"].nunique().eq(1).all()
    keys = list(zip(rows["raw_user_id"], rows["timestamp"], strict=True))
    assert len(set(keys)) == len(keys)
    return {key: [raw_item[i] for i in history] for key, history in zip(keys, rows["history"], strict=True)}


def _earlier_positives(reviews, min_count):
    """Plain pandas: for each kept review, the books its reviewer rated 5 earlier, oldest first."""
    frame = pd.DataFrame(reviews)
    frame = frame[pd.to_datetime(frame["unixReviewTime"], unit="s", utc=True).dt.year == 2017]
    users, books = frame["reviewerID"].value_counts(), frame["asin"].value_counts()
    frame = frame[frame["reviewerID"].map(users).gt(min_count) & frame["asin"].map(books).gt(min_count)]
    positives = frame[frame["overall"] == 5]
    pairs = frame.merge(positives, on="reviewerID", suffixes=("", "_earlier"))
    pairs = pairs[pairs["unixReviewTime_earlier"] < pairs["unixReviewTime"]]
    pairs = pairs.sort_values(["reviewerID", "unixReviewTime", "unixReviewTime_earlier"])
    lists = pairs.groupby(["reviewerID", "unixReviewTime"])["asin_earlier"].agg(list)
    keys = list(zip(frame["reviewerID"], frame["unixReviewTime"], strict=True))
    return {key: lists.get(key, []) for key in keys}


def test_amazon_book_histories_when_file_order_is_not_sorted_order(tmp_path):
    """Reviewers appear in the file as C, A, B: their ids (1, 2, 3) do not ascend in the (user, time) order."""
    rows = [("C", "B1", 5, 1), ("A", "B2", 5, 1), ("B", "B3", 5, 1), ("C", "B2", 1, 2), ("A", "B1", 5, 2),
            ("B", "B1", 5, 2), ("C", "B3", 5, 3), ("A", "B3", 2, 3), ("B", "B2", 5, 3), ("C", "B4", 5, 4),
            ("A", "B4", 5, 4), ("B", "B4", 3, 4), ("C", "B5", 4, 5), ("A", "B5", 5, 5),
            ("B", "B5", 5, 5)]  # fmt: skip
    reviews = [
        {"reviewerID": u, "asin": b, "overall": float(r), "unixReviewTime": _day(3, d)} for u, b, r, d in rows
    ]
    meta = [{"asin": f"B{i}", "title": f"Book {i}"} for i in range(1, 6)]
    splits = load_amazon_book(_write_amazon(tmp_path / "amazon", reviews, meta), min_count=0)
    got = _output_histories(splits)
    assert {(u, t): h for (u, t), h in got.items() if u == "A"} == {
        ("A", _day(3, 1)): [],
        ("A", _day(3, 2)): ["B2"],
        ("A", _day(3, 3)): ["B2", "B1"],
        ("A", _day(3, 4)): ["B2", "B1"],
        ("A", _day(3, 5)): ["B2", "B1", "B4"],
    }
    assert got[("B", _day(3, 5))] == ["B3", "B1", "B2"] and got[("C", _day(3, 5))] == ["B1", "B3", "B4"]
    assert got == _earlier_positives(reviews, 0)
    assert splits["train"]["user_id"][:5] == [2] * 5  # A: numbered second (file order), sorted first


@pytest.mark.parametrize("seed", range(6))
def test_amazon_book_histories_on_random_shuffled_logs(tmp_path, seed):
    """Random 4-reviewer x 8-book logs in shuffled file order: every history is the reviewer's earlier 5s."""
    rng = np.random.default_rng(seed)
    n_users, n_books, per_user = 4 + seed % 3, 8, 30
    names = [f"R{k}" for k in rng.permutation(90)[:n_users] + 10]  # sorted order is not numbering order
    reviews = [
        {"reviewerID": name, "asin": f"B{rng.integers(n_books)}", "overall": float(rng.integers(1, 6)),
         "unixReviewTime": _day(1, 1, int(second))}
        for name in names
        for second in rng.choice(365 * 86_400, per_user, replace=False)  # distinct times within 2017
    ]  # fmt: skip
    reviews = [reviews[i] for i in rng.permutation(len(reviews))]
    meta = [{"asin": f"B{i}", "title": f"Book {i}"} for i in range(n_books)]
    splits = load_amazon_book(_write_amazon(tmp_path / "amazon", reviews, meta), min_count=3)
    expected = _earlier_positives(reviews, 3)
    got = _output_histories(splits)
    assert got == expected and sum(map(len, got.values())) > 100


@pytest.mark.parametrize("remap_in_sorted_order", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_build_splits_histories_against_pandas(seed, remap_in_sorted_order):
    """Random frames with time ties: a row's history = its user's positives before it in (time, given order)."""
    rng = np.random.default_rng(seed)
    n = 300
    frame = pd.DataFrame(
        {
            "raw_user_id": rng.choice([f"u{i}" for i in rng.permutation(12)], n),
            "raw_item_id": [f"i{k}" for k in rng.permutation(n)],  # one item a row: rows are identifiable
            "label": rng.integers(0, 2, n),
            "timestamp": rng.integers(0, 15, n),  # many ties
            "title": "t",
            "split": rng.choice(["train", "validation", "test"], n, p=[0.6, 0.2, 0.2]),
        }
    )
    splits = build_splits(frame, remap_in_sorted_order=remap_in_sorted_order)
    given = frame.assign(position=np.arange(n))
    pairs = given.merge(given[given["label"] == 1], on="raw_user_id", suffixes=("", "_earlier"))
    earlier = (pairs["timestamp_earlier"] < pairs["timestamp"]) | (
        (pairs["timestamp_earlier"] == pairs["timestamp"]) & (pairs["position_earlier"] < pairs["position"])
    )
    pairs = pairs[earlier].sort_values(["position", "timestamp_earlier", "position_earlier"])
    lists = pairs.groupby("raw_item_id")["raw_item_id_earlier"].agg(list)
    rows = pd.concat([splits[s].to_pandas() for s in splits])
    raw_item = dict(zip(rows["item_id"], rows["raw_item_id"], strict=True))
    got = {
        item: [raw_item[i] for i in h] for item, h in zip(rows["raw_item_id"], rows["history"], strict=True)
    }
    assert got == {item: lists.get(item, []) for item in frame["raw_item_id"]}


# ------------------------------------------------------------------------------ numeric fields: what they mean
@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("7::20.5::5::978300760", r"column 'raw_item_id' must be a whole number \(int64\), got '20.5'"),
        ("7.9::20::5::978300760", r"column 'raw_user_id' must be a whole number \(int64\), got '7.9'"),
        ("7::20::5::978300760.7", r"column 'timestamp' must be a whole number \(int64\), got '978300760.7'"),
        ("7::20::inf::978300760", r"column 'rating' must be a finite number, got 'inf'"),
        ("7::20::-Infinity::978300760", r"column 'rating' must be a finite number, got '-Infinity'"),
        ("7::20::nan::978300760", r"column 'rating' must be a number, got 'nan'"),
        ("7::20::5::99999999999999999999", r"column 'timestamp' must be a whole number \(int64\), got '9999"),
    ],
)
def test_movielens_numeric_fields_are_what_they_mean(tmp_path, line, message):
    folder = write_ml1m(tmp_path / "ml", RATINGS, MOVIES)
    lines = (folder / "ratings.dat").read_text(encoding="latin-1").splitlines()
    (folder / "ratings.dat").write_text("\n".join(lines[:3] + [line] + lines[3:]) + "\n", encoding="latin-1")
    with pytest.raises(ValueError, match=r"ratings\.dat, line 4: " + message):
        load_movielens_1m(folder)


def test_movielens_whole_numbers_written_as_floats_are_read_exactly(tmp_path):
    rows = [(u, m, r, f"{t}.0") for u, m, r, t in RATINGS]
    ours = load_movielens_1m(write_ml1m(tmp_path / "a", rows, MOVIES))
    reference = load_movielens_1m(write_ml1m(tmp_path / "b", RATINGS, MOVIES))
    for name in ("train", "validation", "test"):
        pd.testing.assert_frame_equal(ours[name].to_pandas(), reference[name].to_pandas())
    assert ours["test"]["timestamp"] == [ts(2002, 10)]


def test_generic_loader_numeric_and_text_fields(tmp_path):
    titles = pd.DataFrame({"item": ["x", "y"], "title": ["Ex", "Why"]})
    titles.to_csv(tmp_path / "items.csv", index=False)

    def load(log_text, items="items.csv"):
        (tmp_path / "log.csv").write_text(log_text)
        return load_interactions(tmp_path / "log.csv", tmp_path / items, valid_start=200, test_start=300)

    head = "user,item,rating,timestamp\na,x,5,100\n"
    with pytest.raises(
        ValueError, match=r"log\.csv, line 3: column 'timestamp' must be a whole number .*'150\.5'"
    ):
        load(head + "b,y,4,150.5\n")
    with pytest.raises(ValueError, match=r"log\.csv, line 3: column 'user' is empty"):
        load(head + ",y,4,150\n")
    with pytest.raises(
        ValueError, match=r"log\.csv, line 3: column 'rating' must be a finite number, got 'inf'"
    ):
        load(head + "b,y,inf,150\n")
    with pytest.raises(ValueError, match=r"log\.csv, line 3: column 'rating' must be a number, got ''"):
        load(head + "b,y\n")  # a short row
    with pytest.raises(ValueError, match=r"log\.csv, line 5: column 'rating' must be a number, got 'five'"):
        load(head + "\n \t\nb,y,five,150\n")  # blank lines are skipped, but counted
    (tmp_path / "items2.csv").write_text("item,title\nx,Ex\ny,   \n")
    with pytest.raises(ValueError, match=r"items2\.csv, line 3: column 'title' is empty"):
        load(head + "b,y,4,150\n", "items2.csv")
    (tmp_path / "items3.csv").write_text("item,title\nx,Ex\ny,Why\nx,Ex again\n")
    with pytest.raises(ValueError, match=r"items3\.csv, line 4: item 'x' is listed twice"):
        load(head, "items3.csv")
    log = pd.DataFrame(
        {"user": ["a", "b"], "item": ["x", "y"], "rating": [True, False], "timestamp": [100, 150]}
    )
    log.to_parquet(tmp_path / "log.parquet")
    with pytest.raises(ValueError, match=r"log\.parquet: column 'rating' holds bool values, not numbers"):
        load_interactions(tmp_path / "log.parquet", tmp_path / "items.csv", valid_start=200, test_start=300)
    log.assign(rating=[5.0, 4.0], timestamp=pd.to_datetime([100, 150], unit="s")).to_parquet(
        tmp_path / "t.parquet"
    )
    with pytest.raises(
        ValueError, match=r"column 'timestamp' holds datetime64\[.*\] values, not numbers \(unix"
    ):
        load_interactions(tmp_path / "t.parquet", tmp_path / "items.csv", valid_start=200, test_start=300)
    log.assign(rating=[5.0, None]).to_parquet(tmp_path / "n.parquet")
    with pytest.raises(ValueError, match=r"n\.parquet, line 2: column 'rating' must be a number, got nan"):
        load_interactions(tmp_path / "n.parquet", tmp_path / "items.csv", valid_start=200, test_start=300)


def test_amazon_book_fields_are_what_they_mean(tmp_path):
    good = [
        {"asin": "B0", "reviewerID": "U0", "overall": 5.0, "unixReviewTime": _day(3, d)} for d in range(1, 9)
    ]

    def load(name, bad, blank_lines=0):
        folder = _write_amazon(tmp_path / name, good[:3], [{"asin": "B0", "title": "Zero"}])
        with gzip.open(folder / "Books_5.json.gz", "at") as f:
            f.write("\n" * blank_lines + json.dumps(bad) + "\n")
        return load_amazon_book(folder, min_count=0)

    review = {"asin": "B0", "reviewerID": "U1", "overall": 4.0, "unixReviewTime": _day(3, 9)}
    with pytest.raises(
        ValueError, match=r"Books_5\.json\.gz, line 6: column 'unixReviewTime' must be a whole"
    ):
        load("a", {**review, "unixReviewTime": _day(3, 9) + 0.5}, blank_lines=2)
    with pytest.raises(
        ValueError, match=r"Books_5\.json\.gz, line 4: column 'overall' must be a finite number"
    ):
        load("b", {**review, "overall": "inf"})
    with pytest.raises(
        ValueError, match=r"Books_5\.json\.gz, line 4: column 'overall' must be a number, got True"
    ):
        load("c", {**review, "overall": True})
    with pytest.raises(ValueError, match=r"Books_5\.json\.gz, line 4: column 'reviewerID' is empty"):
        load("d", {**review, "reviewerID": " "})


# ------------------------------------------------------------------------------------- what the recipes drop
def test_movielens_drops_are_logged_with_counts(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ccf_llm.data")
    load_movielens_1m(write_ml1m(tmp_path / "ml", RATINGS, MOVIES))
    messages = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "ccf_llm.data"]
    assert (logging.WARNING, f"{tmp_path / 'ml' / 'ratings.dat'}: 1 of 10 ratings are of movies that movies.dat "
            "lacks and are left out (CoLLM's inner join) (first: line 10, movie 99)") in messages  # fmt: skip
    assert (logging.INFO, f"{tmp_path / 'ml' / 'ratings.dat'}: 2 of 9 ratings (of known movies) fall outside "
            "CoLLM's window (2001-06 .. 2003-01) and are left out") in messages  # fmt: skip


def test_movielens_movie_listed_twice_raises(tmp_path):
    with pytest.raises(ValueError, match=r"movies\.dat, line 6: movie 20 is listed twice"):
        load_movielens_1m(write_ml1m(tmp_path / "ml", RATINGS, MOVIES + [(20, "Heat again (1995)")]))


def test_amazon_book_drops_are_logged_with_counts(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ccf_llm.data")
    reviews = [{"asin": f"B{b}", "reviewerID": f"U{u}", "overall": 5.0, "unixReviewTime": _day(1 + b, 1 + u)}
               for u in range(3) for b in range(3)]  # fmt: skip
    reviews += [
        {
            "asin": "B0",
            "reviewerID": "U0",
            "overall": 5.0,
            "unixReviewTime": _day(1, 1) - 86_400 * 400,
        },  # 2015
        {"asin": "B0", "reviewerID": "U9", "overall": 5.0, "unixReviewTime": _day(5, 1)},  # a rare user
        {"asin": "B0", "reviewerID": None, "overall": 5.0, "unixReviewTime": _day(5, 2)},  # no reviewer
        {"asin": "B1", "reviewerID": "U1", "unixReviewTime": _day(5, 3)},  # no rating
        {"asin": "B9", "reviewerID": "U1", "overall": 4.0, "unixReviewTime": _day(5, 4)},  # rare, untitled
    ]
    meta = [{"asin": "B0", "title": "Old"}] + [{"asin": f"B{b}", "title": f"Book {b}"} for b in range(3)]
    meta.append({"asin": "B9"})  # no title: fine, the item is not kept
    folder = _write_amazon(tmp_path / "amazon", reviews, meta)
    splits = load_amazon_book(folder, min_count=2)
    assert sum(map(len, splits.values())) == 9
    messages = {r.getMessage() for r in caplog.records if r.name == "ccf_llm.data"}
    reviews_path, meta_path = folder / "Books_5.json.gz", folder / "meta_Books.json.gz"
    assert messages == {
        f"{reviews_path}: 2 of 14 reviews lack one of ['asin', 'reviewerID', 'overall', 'unixReviewTime'] and are "
        "left out (CoLLM's dropna) (first: line 12)",
        f"{meta_path}: 1 of 5 metadata rows repeat an asin listed again later and are left out (the last one is "
        "kept, as CoLLM does)",
        f"{reviews_path}: 1 of 12 ratings are not from 2017 and are left out",
        f"{reviews_path}: 2 of 11 ratings of 2017 are of users or items with at most 2 ratings in 2017 and are left "
        "out",
    }
    assert (
        item_titles(splits)[1] in {"Book 0", "Book 1", "Book 2"} and "Old" not in item_titles(splits).values()
    )


def test_amazon_book_kept_item_without_title_names_meta_line(tmp_path):
    reviews = [{"asin": "B0", "reviewerID": f"U{u}", "overall": 5.0, "unixReviewTime": _day(2, 1 + u)}
               for u in range(3)]  # fmt: skip
    folder = _write_amazon(
        tmp_path / "a", reviews, [{"asin": "B1", "title": "One"}, {"asin": "B0", "title": ""}]
    )
    with pytest.raises(
        ValueError, match=r"meta_Books\.json\.gz, line 2: no title for item 'B0', which is kept"
    ):
        load_amazon_book(folder, min_count=0)
    folder = _write_amazon(tmp_path / "b", reviews, [{"asin": "B1", "title": "One"}])
    with pytest.raises(
        ValueError, match=r"Books_5\.json\.gz, line 1: .*meta_Books\.json\.gz has no entry for item"
    ):
        load_amazon_book(folder, min_count=0)


def test_generic_loader_logs_rows_outside_the_boundaries(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ccf_llm.data")
    pd.DataFrame({"item": ["x"], "title": ["Ex"]}).to_csv(tmp_path / "items.csv", index=False)
    pd.DataFrame(
        {"user": ["a"] * 5, "item": ["x"] * 5, "rating": [5] * 5, "timestamp": [50, 100, 250, 350, 900]}
    ).to_csv(tmp_path / "log.csv", index=False)
    splits = load_interactions(tmp_path / "log.csv", tmp_path / "items.csv", valid_start=200, test_start=300,
                               train_start=100, test_end=400)  # fmt: skip
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [1, 1, 1]
    assert [r.getMessage() for r in caplog.records if r.name == "ccf_llm.data"] == [
        f"{tmp_path / 'log.csv'}: 2 of 5 interactions fall outside [train_start, test_end) and are left out"
    ]


# ------------------------------------------------------------------------------------------- latin-1 line ends
def test_latin1_titles_keep_bytes_python_treats_as_line_breaks(tmp_path):
    """0x85 (NEL), 0x0b, 0x0c, 0x1c-0x1e are characters of a latin-1 title, not line ends."""
    odd = [(10, "Caf\x85 Society (2016)"), (20, "Heat\x0b\x0c (1995)"), (30, "Casino\x1c\x1d\x1e (1995)")]
    movies = odd + MOVIES[3:]
    splits = load_movielens_1m(write_ml1m(tmp_path / "ml", RATINGS, movies))
    titles = set(item_titles(splits).values())
    assert {"Caf\x85 Society (2016)", "Heat\x0b\x0c (1995)", "Casino\x1c\x1d\x1e (1995)"} <= titles
    assert {k: len(v) for k, v in splits.items()} == {"train": 5, "validation": 1, "test": 1}
    crlf = tmp_path / "crlf"
    write_ml1m(crlf, RATINGS, movies)
    for name in ("ratings.dat", "movies.dat"):
        (crlf / name).write_bytes((crlf / name).read_bytes().replace(b"\n", b"\r\n"))
    assert item_titles(load_movielens_1m(crlf)) == item_titles(splits)


# ------------------------------------------------------------------------------- load_interactions: arguments
@pytest.fixture
def small_log(tmp_path):
    t0 = ts(2001, 1, 1)
    times = [t0, t0 + 100, t0 + 50, t0 + 200, t0 + 300]
    log = pd.DataFrame({"user": ["a", "a", "b", "b", "a"], "item": ["x", "y", "x", "z", "z"],
                        "rating": [5, 1, 4, 5, 2], "timestamp": times})  # fmt: skip
    log.to_csv(tmp_path / "log.csv", index=False)
    pd.DataFrame({"item": ["x", "y", "z"], "title": ["Ex", "Why", "Zed"]}).to_parquet(
        tmp_path / "items.parquet"
    )
    return lambda **kw: load_interactions(tmp_path / "log.csv", tmp_path / "items.parquet", **kw), t0


def _sizes(splits):
    return [len(splits[s]) for s in ("train", "validation", "test")]


def test_generic_loader_boundaries_in_every_promised_form(small_log):
    load, t0 = small_log
    assert _sizes(load(valid_start=t0 + 150, test_start=t0 + 250)) == [3, 1, 1]
    for valid, test in [
        (str(t0 + 150), str(t0 + 250)),  # as run_ctr.py --valid_start passes them
        (float(t0 + 150), float(t0 + 250)),
        (np.int64(t0 + 150), np.float64(t0 + 250)),
        (t0 + 149.5, f" {t0 + 249.25} "),  # a boundary inside a second starts at the next one
        ("2001-01-01 00:02:30", "2001-01-01T00:04:10Z"),
        (pd.Timestamp("2001-01-01 01:02:30", tz="Europe/Paris"), datetime(2001, 1, 1, 0, 4, 10, tzinfo=UTC)),
        (np.datetime64("2001-01-01T00:02:30"), pd.Timestamp("2000-12-31 19:04:10", tz="America/New_York")),
    ]:
        assert _sizes(load(valid_start=valid, test_start=test)) == [3, 1, 1], (valid, test)
    assert _sizes(load(valid_start=t0 + 100, test_start=t0 + 200)) == [2, 1, 2]
    assert _sizes(load(valid_start=t0 + 100.5, test_start=t0 + 200)) == [3, 0, 2]


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"valid_start": None, "test_start": 5}, "valid_start is required"),
        ({"valid_start": "soon", "test_start": 5}, "valid_start: 'soon' is neither unix seconds nor a date"),
        ({"valid_start": float("nan"), "test_start": 5}, "valid_start must be a finite number.*got nan"),
        ({"valid_start": 1, "test_start": "inf"}, "test_start must be a finite number.*got inf"),
        ({"valid_start": True, "test_start": 5}, "valid_start must be unix seconds or a date, got True"),
        (
            {"valid_start": 10, "test_start": 5},
            r"valid_start=10 \(1970-01-01T00:00:10\+00:00\) is after test_start=5",
        ),
        ({"valid_start": 1, "test_start": 5, "test_end": 4}, r"test_start=5 .* is after test_end=4"),
        ({"valid_start": 1, "test_start": 5, "threshold": float("nan")}, "threshold must be a finite number"),
    ],
)
def test_generic_loader_bad_arguments_name_argument_and_value(small_log, kw, message):
    load, _ = small_log
    with pytest.raises(ValueError, match=message):
        load(**kw)


def test_generic_loader_empty_train_split_names_the_range(small_log):
    load, t0 = small_log
    span = r"timestamps span 2001-01-01T00:00:00\+00:00 \.\. 2001-01-01T00:05:00\+00:00"
    with pytest.raises(
        ValueError, match=r"train split is empty: .*\[-inf, 2000-12-31T00:00:00\+00:00\); its " + span
    ):
        load(valid_start="2000-12-31", test_start=t0 + 250)


def test_build_splits_refuses_frames_that_break_its_rules():
    frame = pd.DataFrame({"raw_user_id": [1, 2], "raw_item_id": [1, 2], "label": [1, 0], "timestamp": [1, 2],
                          "title": ["a", "b"], "split": ["train", "test"]})  # fmt: skip
    assert len(build_splits(frame)["train"]) == 1
    with pytest.raises(ValueError, match=r"raw_user_id is missing in 1 rows"):
        build_splits(frame.assign(raw_user_id=[1, None]))
    with pytest.raises(ValueError, match=r"labels must be 0 or 1, got \[5\]"):
        build_splits(frame.assign(label=[1, 5]))
    with pytest.raises(ValueError, match=r"timestamps must be whole unix seconds, got \[1\.5\]"):
        build_splits(frame.assign(timestamp=[1.5, 2]))
    with pytest.raises(ValueError, match=r"lacks columns \['title'\]"):
        build_splits(frame.drop(columns="title"))
