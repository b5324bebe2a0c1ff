# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""A synthetic interaction log for the offline demo: the "beer and diapers" case of §1 of the paper.

Every item has a genre, which its title reveals ("Galaxy Rocket" is space opera), and a hidden taste cluster,
which nothing in its title reveals (beer and diapers share one). Every user prefers one genre and one cluster, and
clicks with probability sigmoid(base + genre_weight · [genre matches] + cluster_weight · [cluster matches]).
So a text-only model can learn the genre half from titles, a CF model learns both halves for items it has seen,
and only the fused model can use both, including the genre of cold items that appear after the train period.
"""

import numpy as np
import pandas as pd

from .data import build_splits

GENRE_WORDS = {
    "space": ["Galaxy", "Rocket", "Orbit", "Comet", "Nebula", "Planet", "Star", "Moon"],
    "romance": ["Love", "Heart", "Kiss", "Wedding", "Romance", "Valentine", "Darling", "Sweetheart"],
    "crime": ["Murder", "Heist", "Detective", "Gangster", "Killer", "Robbery", "Crime", "Mafia"],
    "comedy": ["Laugh", "Joke", "Comedy", "Prank", "Funny", "Silly", "Clown", "Giggle"],
}


def make_demo_log(
    num_users: int = 200,
    num_items: int = 48,
    rows_per_user: int = 60,
    num_genres: int = 2,
    num_clusters: int = 2,
    genre_weight: float = 3.0,
    cluster_weight: float = 2.5,
    base: float = -2.5,
    cold_item_fraction: float = 0.15,
    seed: int = 0,
):
    """
    The demo log as CTR splits (`train` / `validation` / `test` by time: 70% / 10% / 20% of each user's rows)
    with the usual columns (see `ccf_llm.data`). Items in the last `cold_item_fraction` of the catalogue only
    appear in validation and test rows. With the defaults (2 genres, 2 clusters) a click has probability 0.08
    (neither matches), 0.50 (cluster only), 0.62 (genre only) or 0.95 (both), and about 73% of a user's liked
    items share the user's genre: a few history titles reveal it.
    """
    rng = np.random.default_rng(seed)
    if not 1 <= num_genres <= len(GENRE_WORDS):
        raise ValueError(f"num_genres must be between 1 and {len(GENRE_WORDS)}, got {num_genres}")
    genres = list(GENRE_WORDS)[:num_genres]
    item_genre = rng.integers(0, len(genres), num_items)
    item_cluster = rng.integers(0, num_clusters, num_items)
    first, second = rng.integers(0, 8, num_items), rng.integers(0, 8, num_items)
    words = np.array([GENRE_WORDS[g] for g in genres])  # (genres, 8)
    titles = (
        pd.Series(words[item_genre, first]) + " " + pd.Series(words[item_genre, (first + 1 + second % 7) % 8])
    )
    numbered = titles + " " + pd.Series(np.arange(num_items) + 1).astype(str)  # "Galaxy Rocket 7": a sequel
    titles = titles.where(~titles.duplicated(keep=False), numbered)
    user_genre = rng.integers(0, len(genres), num_users)
    user_cluster = rng.integers(0, num_clusters, num_users)

    users = np.repeat(np.arange(num_users), rows_per_user)
    step = np.tile(np.arange(rows_per_user), num_users)
    fraction = step / rows_per_user
    n_cold = int(round(num_items * cold_item_fraction))
    warm_items = rng.integers(0, num_items - n_cold, len(users))
    any_items = rng.integers(0, num_items, len(users))
    items = np.where(fraction < 0.7, warm_items, any_items)  # cold items only after the train period
    logit = (base + genre_weight * (item_genre[items] == user_genre[users])
             + cluster_weight * (item_cluster[items] == user_cluster[users]))  # fmt: skip
    labels = (rng.random(len(users)) < 1 / (1 + np.exp(-logit))).astype(np.int64)
    split = np.select([fraction < 0.7, fraction < 0.8], ["train", "validation"], default="test")
    frame = pd.DataFrame(
        {
            "raw_user_id": users + 1,
            "raw_item_id": items + 1,
            "label": labels,
            "timestamp": 1_600_000_000 + step * 86_400 + users,
            "title": titles.to_numpy()[items],
            "split": split,
        }
    )
    return build_splits(frame)


__all__ = ["GENRE_WORDS", "make_demo_log"]
