"""The demo log: titles reveal genres, clusters stay hidden, cold items come after the train period."""

import numpy as np
import pytest

from ccf_llm.data import item_titles
from ccf_llm.synthetic import GENRE_WORDS, make_demo_log


def test_demo_log_structure():
    splits = make_demo_log(num_users=60, rows_per_user=40, seed=1)
    assert [len(splits[s]) for s in ("train", "validation", "test")] == [60 * 28, 60 * 4, 60 * 8]
    titles = item_titles(splits)
    assert len(set(titles.values())) == len(titles)  # distinct titles
    vocab = {g: set(words) for g, words in GENRE_WORDS.items()}
    for title in titles.values():  # every title's words come from one genre: the genre is visible
        words = {w for w in title.split() if not w.isdigit()}
        assert sum(words <= v for v in vocab.values()) == 1, title
    train_items = set(splits["train"]["raw_item_id"])
    later_items = set(splits["validation"]["raw_item_id"]) | set(splits["test"]["raw_item_id"])
    assert later_items - train_items  # cold items exist, and only after the train period
    assert max(train_items) <= 48 - round(48 * 0.15)


def test_clicks_follow_the_user_genre():
    splits = make_demo_log(seed=2)
    frame = splits["train"].to_pandas()
    genre = {
        title: next(g for g, words in GENRE_WORDS.items() if title.split()[0] in words)
        for title in frame["title"]
    }
    frame["genre"] = frame["title"].map(genre)
    # each user's favourite genre (from their clicks) predicts their clicks on held-out rows well above chance
    favourite = (
        frame[frame["label"] == 1].groupby("user_id")["genre"].agg(lambda g: g.value_counts().index[0])
    )
    test = splits["test"].to_pandas()
    test["genre"] = test["title"].map(lambda t: next(g for g, w in GENRE_WORDS.items() if t.split()[0] in w))
    match = (test["genre"] == test["user_id"].map(favourite)).to_numpy()
    rates = test["label"].to_numpy()
    assert rates[match].mean() - rates[~match].mean() > 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_genres must be between 1 and 4"):
        make_demo_log(num_genres=5)
    assert np.isclose(np.mean(make_demo_log(seed=3)["train"]["label"]), 0.54, atol=0.05)
