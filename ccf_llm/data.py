# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Interaction logs → the paper's CTR splits, as `datasets.DatasetDict`s.

Every loader returns splits `train` / `validation` / `test` whose rows carry `user_id`, `item_id` (remapped to
1..N, 0 = padding), `label`, `timestamp`, `history` (the user's earlier positive item ids, oldest first, across all
splits, no padding entry), `title`, and the raw ids `raw_user_id` / `raw_item_id`. Rows keep CoLLM's order: the
concatenated frame sorted stably by (user, timestamp).

* `load_movielens_1m(data_dir)`: CoLLM's ML-1M split (the one the paper uses), reproduced exactly.
* `load_amazon_book(data_dir)`: CoLLM's Amazon-Book recipe on `Books_5.json.gz` + `meta_Books.json.gz`.
* `load_interactions(...)`: any CSV/parquet log with user, item, rating, timestamp plus an item-title table, with
  your own time boundaries and rating threshold.
* `item_titles(splits)`: the item table (id → title); `warm_cold_subsets(split, train)`, `warm_cold_masks`:
  CoLLM's warm/cold rows.

Nothing is silently changed on the way in: a value that is not what its column means (a fractional id or time, a
non-finite rating, an empty id or title, a line cut at a character that is not a line end) raises a ValueError
naming the file and the line, a bad argument raises naming the argument and its value, and every row a recipe leaves
out (e.g. a rating of a movie that movies.dat lacks, as CoLLM's inner join does) is counted in the log (logger
`ccf_llm.data`) with the reason.

No file is ever read with pickle. MovieLens may not be redistributed: these functions read it from where you keep
it (or download it from GroupLens into the Hugging Face cache), and nothing of it ships with this package.
"""

import gzip
import hashlib
import io
import json
import logging
import math
import numbers
import zipfile
from pathlib import Path

import datasets
import numpy as np
import pandas as pd
import torch

from .ragged import latest_items, to_ragged

ML1M_URL = "https://files.grouplens.org/datasets/movielens/ml-1m.zip"
ML1M_MD5 = "c4d9eecfca2ab87c1945afe126590906"
SPLITS = ("train", "validation", "test")
logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ reading files
def _where(path, line) -> str:
    """`path, line N` (or just `path` where the line is unknown) for messages about a row of a file."""
    return f"{path}, line {line}" if line is not None else str(path)


def _decode(path: Path, raw: bytes, encoding: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        prefix = raw[: err.start]
        line = prefix.count(b"\n") + prefix.count(b"\r") - prefix.count(b"\r\n") + 1
        raise ValueError(f"{path}, line {line}: bytes that are not valid {encoding} ({err.reason})") from err


def _split_lines(text: str) -> list[str]:
    """
    `text` cut at its real line ends only (`\\n`, `\\r\\n`, `\\r`, as Python's and pandas' readers do), without the
    empty piece after a final line end. Not `str.splitlines`, which also cuts at characters a latin-1 title may
    hold (0x85 NEL, 0x0b, 0x0c, 0x1c-0x1e).
    """
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_delimited(path, columns: dict, sep: str = "::", encoding: str = "latin-1") -> pd.DataFrame:
    """
    Read a `sep`-separated text file without a header (the MovieLens `.dat` layout) into the typed `columns`
    (`name → "int" | "float" | "str" | "text"`, see `_typed`). Lines end at `\\n`, `\\r\\n` or `\\r` only. A line with the
    wrong number of fields or a value that is not what its column holds raises a ValueError naming the file and
    the line.
    """
    path = Path(path)
    lines = _split_lines(_decode(path, path.read_bytes(), encoding))
    fields = pd.Series(lines, dtype=object).str.split(sep, n=len(columns) - 1, regex=False)
    counts = fields.str.len().to_numpy()
    bad = np.flatnonzero(counts != len(columns))
    if len(bad):
        raise ValueError(
            f"{path}, line {bad[0] + 1}: expected {len(columns)} fields separated by {sep!r}, "
            f"got {counts[bad[0]]}: {lines[bad[0]][:80]!r}"
        )
    frame = pd.DataFrame(fields.tolist(), columns=list(columns), dtype=object)
    return _typed(frame, columns, path, lambda row: row + 1)


def _typed(frame: pd.DataFrame, columns: dict, path: Path, line_of) -> pd.DataFrame:
    """
    Check and convert `frame`'s `columns` in place (`"int"`: whole numbers; `"float"`: finite numbers; `"str"`:
    present and not blank; `"text"`: any text). The first value that is not raises a ValueError naming `path` and
    `line_of(position)`.
    """
    for name, kind in columns.items():
        column = frame[name]
        if kind == "text":
            frame[name] = column.astype(str)
        elif kind == "str":
            text = column.astype(str)
            bad = np.flatnonzero(column.isna().to_numpy() | (text.str.strip() == "").to_numpy(dtype=bool))
            if len(bad):
                raise ValueError(f"{_where(path, line_of(bad[0]))}: column {name!r} is empty")
            frame[name] = text
        else:
            frame[name] = _numbers(column, name, kind == "int", path, line_of)
    return frame


def _numbers(column: pd.Series, name: str, whole: bool, path: Path, line_of) -> pd.Series:
    """
    A column as int64 (`whole`) or float64, refusing what would be silently changed: text, booleans, dates,
    non-finite values, and fractions or numbers beyond 2**53 where whole numbers are meant.
    """
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype) or not (
        pd.api.types.is_numeric_dtype(dtype) or pd.api.types.is_object_dtype(dtype)
        or pd.api.types.is_string_dtype(dtype)
    ):  # fmt: skip
        raise ValueError(
            f"{path}: column {name!r} holds {dtype} values, not numbers"
            + (" (unix seconds)" if pd.api.types.is_datetime64_any_dtype(dtype) else "")
        )
    numeric = pd.api.types.is_numeric_dtype(dtype)
    values = pd.to_numeric(column if numeric else column.astype(str), errors="coerce")
    kind = values.dtype.kind
    array = values.to_numpy()
    problem = np.zeros(len(array), dtype=np.int8)  # 0 fine, 1 not a number, 2 not finite, 3 not whole
    if kind == "f":
        problem[~np.isfinite(array)] = 2
        problem[np.isnan(array)] = 1
        if whole:
            fraction = np.isfinite(array) & ((array != np.floor(array)) | (np.abs(array) > 2.0**53))
            problem[fraction] = 3
    elif kind == "u":
        problem[(array > np.iinfo(np.int64).max) & whole] = 3
    elif kind != "i":
        problem[:] = 1
    bad = np.flatnonzero(problem)
    if len(bad):
        what = {1: "a number", 2: "a finite number", 3: "a whole number (int64)"}[problem[bad[0]]]
        value = column.iloc[bad[0]]
        value = value.item() if isinstance(value, np.generic) else value
        raise ValueError(f"{_where(path, line_of(bad[0]))}: column {name!r} must be {what}, got {value!r}")
    return values.astype(np.int64 if whole else np.float64)


def read_table(path, columns: dict) -> pd.DataFrame:
    """
    Read a CSV (UTF-8, header row) or parquet file, keeping the typed `columns` (`name → "int" | "float" | "str"`):
    "int" columns hold whole numbers, "float" columns finite numbers, "str" columns text that is not empty. A value
    that is not raises a ValueError naming the file and the line (the row number for parquet).
    """
    return _read_table(path, columns)[0]


def _read_table(path, columns: dict):
    """`read_table`, plus the function mapping a row position to its line number (for messages)."""
    path = Path(path)
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)

        def line_of(row):  # parquet "lines" are row numbers
            return row + 1
    else:
        text = _decode(path, path.read_bytes(), "utf-8")
        try:
            frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
        except pd.errors.ParserError as err:
            raise ValueError(f"{path}: malformed CSV: {err}") from err

        def line_of(row):  # only on the error path: pandas skips blank lines, the count does not
            lines = pd.Series(_split_lines(text), dtype=object)
            filled = np.flatnonzero(lines.str.strip(" \t").str.len().to_numpy() > 0)  # [0] is the header
            return int(filled[row + 1]) + 1 if row + 1 < len(filled) else None

    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing} (has {list(frame.columns)})")
    return _typed(frame[list(columns)].copy(), columns, path, line_of), line_of


def _dropped(
    path, what: str, count: int, total: int, why: str, example: str = "", level=logging.INFO
) -> None:
    """Log rows a recipe leaves out: how many, of how many, and why."""
    if count:
        logger.log(level, "%s: %s of %s %s %s%s", path, f"{count:,}", f"{total:,}", what, why, example)


# ---------------------------------------------------------------------------------------------- shared pipeline
def _histories(users: np.ndarray, items: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """
    For rows grouped by user (each user's rows one contiguous run, in time order; the user ids themselves in any
    order), each row's earlier positive items of the same user, oldest first, as (flat values, offsets) —
    vectorized: a row's history is a prefix of its user's run of positives.
    """
    n = len(users)
    positive = labels > 0
    pos_items = items[positive]
    new_run = np.r_[True, users[1:] != users[:-1]] if n else np.zeros(0, dtype=bool)
    run_start = np.flatnonzero(new_run)
    if len(run_start) != len(np.unique(users)):
        raise ValueError("_histories needs each user's rows in one contiguous run")
    cum_pos = np.cumsum(positive) - positive  # positives strictly before each row (global)
    # a run's positives start in pos_items where the positives before its first row end
    first_pos = cum_pos[run_start][np.cumsum(new_run) - 1]
    before = cum_pos - first_pos  # positives of the same user before each row
    offsets = np.r_[0, np.cumsum(before)].astype(np.int64)
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], before)
    values = pos_items[np.repeat(first_pos, before) + within] if offsets[-1] else np.zeros(0, dtype=np.int64)
    return values, offsets


def build_splits(frame: pd.DataFrame, remap_in_sorted_order: bool = True) -> datasets.DatasetDict:
    """
    The common tail of every recipe. `frame` holds `raw_user_id`, `raw_item_id`, `label` (0/1), `timestamp`
    (whole unix seconds), `title` and `split` (one of `SPLITS`), in the order ties should keep. Rows are sorted
    stably by (user, timestamp); ids are remapped by first appearance (in that sorted order, or in the given order
    when `remap_in_sorted_order=False`, as CoLLM's Amazon-Book notebook does); histories hold earlier positives.
    A frame that breaks these rules raises a ValueError naming the column and the offending values.
    """
    missing = [
        c for c in ("raw_user_id", "raw_item_id", "label", "timestamp", "title", "split") if c not in frame
    ]
    if missing:
        raise ValueError(f"build_splits: the frame lacks columns {missing}")
    bad = ~frame["split"].isin(SPLITS)
    if bad.any():
        raise ValueError(f"unknown split names {sorted(frame.loc[bad, 'split'].astype(str).unique())[:5]}")
    for column in ("raw_user_id", "raw_item_id", "title"):
        if frame[column].isna().any():
            raise ValueError(f"build_splits: {column} is missing in {int(frame[column].isna().sum())} rows")
    bad = ~frame["label"].isin([0, 1])
    if bad.any():
        raise ValueError(
            f"build_splits: labels must be 0 or 1, got {frame.loc[bad, 'label'].unique()[:5].tolist()}"
        )
    stamps = pd.to_numeric(frame["timestamp"], errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(stamps) | (stamps != np.floor(stamps))
    if bad.any():
        raise ValueError(
            f"build_splits: timestamps must be whole unix seconds, got {frame['timestamp'][bad].head().tolist()}"
        )
    if not (frame["split"] == "train").any():
        raise ValueError("the train split is empty: check the time boundaries")
    given = frame.reset_index(drop=True)
    ordered = given.sort_values(["raw_user_id", "timestamp"], kind="stable").reset_index(drop=True)
    source = ordered if remap_in_sorted_order else given
    user_codes = pd.factorize(source["raw_user_id"])[1]
    item_codes = pd.factorize(source["raw_item_id"])[1]
    user_ids = pd.Index(user_codes).get_indexer(ordered["raw_user_id"]) + 1
    item_ids = pd.Index(item_codes).get_indexer(ordered["raw_item_id"]) + 1
    values, offsets = _histories(user_ids, item_ids, ordered["label"].to_numpy())
    import pyarrow as pa

    history = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int64)), pa.array(values.astype(np.int64)))
    table = pa.table(
        {
            "user_id": user_ids.astype(np.int64),
            "item_id": item_ids.astype(np.int64),
            "label": ordered["label"].to_numpy().astype(np.int64),
            "timestamp": ordered["timestamp"].to_numpy().astype(np.int64),
            "history": history,
            "title": ordered["title"].astype(str).to_numpy(),
            "raw_user_id": ordered["raw_user_id"].to_numpy(),
            "raw_item_id": ordered["raw_item_id"].to_numpy(),
        }
    )
    split = ordered["split"].to_numpy()
    return datasets.DatasetDict(
        {name: datasets.Dataset(table.filter(pa.array(split == name))) for name in SPLITS}
    )


def item_titles(splits: datasets.DatasetDict) -> dict[int, str]:
    """The item table of a split dict: item id → title (every item appears as a target somewhere)."""
    frames = [splits[s].select_columns(["item_id", "title"]).to_pandas() for s in splits]
    table = pd.concat(frames).drop_duplicates("item_id").sort_values("item_id")
    return dict(zip(table["item_id"].tolist(), table["title"].tolist(), strict=True))


def id_counts(splits: datasets.DatasetDict) -> tuple[int, int]:
    """`(num_users, num_items)` of a split dict: the largest user and item id over every split (ids start at 1; row
    0 of the CF tables pads), what the CF tables and `CCFLlamaForCTR.from_llm` are sized by."""
    num_users, num_items = (max(max(splits[s][column]) for s in splits) for column in ("user_id", "item_id"))
    return num_users, num_items


COLD_RULES = {
    "user_and_item": "neither the user nor the item is in train",
    "item": "the item is absent from train",
    "user": "the user is absent from train",
}
"""`warm_cold_masks`' cold rules, each with what it means."""


def warm_cold_masks(users, items, train: datasets.Dataset, min_rows: int = 3, cold: str = "user_and_item"):
    """
    `(warm, cold)` boolean masks over rows given by their `users` and `items` ids. Warm (CoLLM): the user and the
    item each have more than `min_rows` train rows. Cold: `cold="user_and_item"` (CoLLM), neither the user nor the
    item appears in train; `cold="item"`, the item does not appear in train, whoever the user (a log whose users
    all have train rows, like the demo's, has no CoLLM-cold rows); `cold="user"`, the user does not appear in train,
    whatever the item (on CoLLM's ML-1M split 3,111 of the 7,331 test rows: users that arrive after the training
    period, whom a user-table CF model scores all alike).
    """
    if cold not in COLD_RULES:
        raise ValueError(f"cold must be one of {tuple(COLD_RULES)}, got {cold!r}")
    train_frame = train.select_columns(["user_id", "item_id"]).to_pandas()
    user_rows = pd.Series(np.asarray(users)).map(train_frame["user_id"].value_counts()).fillna(0).to_numpy()
    item_rows = pd.Series(np.asarray(items)).map(train_frame["item_id"].value_counts()).fillna(0).to_numpy()
    warm = (user_rows > min_rows) & (item_rows > min_rows)
    new_user, new_item = user_rows == 0, item_rows == 0
    return warm, {"user_and_item": new_user & new_item, "item": new_item, "user": new_user}[cold]


def warm_cold_subsets(
    split: datasets.Dataset, train: datasets.Dataset, min_rows: int = 3, cold: str = "user_and_item"
) -> datasets.DatasetDict:
    """The rows of a validation/test split in `warm_cold_masks`' warm and cold subsets."""
    warm, is_cold = warm_cold_masks(split["user_id"], split["item_id"], train, min_rows, cold)
    return datasets.DatasetDict(
        {"warm": split.select(np.flatnonzero(warm)), "cold": split.select(np.flatnonzero(is_cold))}
    )


# ------------------------------------------------------------------------------------------------- MovieLens-1M
def _download_ml1m(cache_dir=None) -> Path:
    """Download ml-1m.zip from GroupLens into the HF cache once, check its MD5, extract; fail fast offline."""
    if datasets.config.HF_HUB_OFFLINE:
        raise FileNotFoundError(
            "MovieLens-1M is not cached and this machine is offline (HF_HUB_OFFLINE): pass data_dir= the folder "
            "holding ratings.dat and movies.dat (from https://grouplens.org/datasets/movielens/1m/)"
        )
    root = Path(cache_dir or datasets.config.HF_DATASETS_CACHE) / "ccf_llm" / "ml-1m"
    folder = root / "ml-1m"
    if (folder / "ratings.dat").is_file() and (folder / "movies.dat").is_file():
        return folder
    import urllib.request

    root.mkdir(parents=True, exist_ok=True)
    archive = root / "ml-1m.zip"
    try:
        with urllib.request.urlopen(ML1M_URL, timeout=30) as response:
            payload = response.read()
    except OSError as err:
        raise FileNotFoundError(
            f"could not download {ML1M_URL} ({err}); pass data_dir= the folder holding ratings.dat and movies.dat"
        ) from err
    digest = hashlib.md5(payload).hexdigest()
    if digest != ML1M_MD5:
        raise ValueError(f"{ML1M_URL}: MD5 {digest} does not match the published {ML1M_MD5}")
    archive.write_bytes(payload)
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(root)
    return folder


def load_movielens_1m(data_dir=None, cache_dir=None) -> datasets.DatasetDict:
    """
    CoLLM's MovieLens-1M split, the one the CCF-LLM paper uses (Table 1: 33,891 / 10,401 / 7,331 rows).

    Recipe (`../shared/data/README.md` in the development setup): join ratings and movies; month index
    `(year - 2000) * 12 + month - 4` of the UTC date; train = months 14..23, validation 24..28, test 29..33; label =
    rating >= 4; no filtering. Ties in (user, timestamp) keep the order of CoLLM's older pandas merge: rows grouped
    by movie in order of each movie's first appearance in ratings.dat, file order within a movie.

    Args:
        data_dir: a folder with `ratings.dat` and `movies.dat` (latin-1). Without it, ml-1m.zip is downloaded from
            GroupLens into the HF datasets cache (MD5-checked); offline this fails at once asking for the folder.
    """
    folder = Path(data_dir) if data_dir is not None else _download_ml1m(cache_dir)
    for name in ("ratings.dat", "movies.dat"):
        if not (folder / name).is_file():
            raise FileNotFoundError(
                f"{folder} has no {name}: pass the ml-1m folder (ratings.dat, movies.dat)"
            )
    ratings = read_delimited(
        folder / "ratings.dat",
        {"raw_user_id": "int", "raw_item_id": "int", "rating": "float", "timestamp": "int"},
    )
    movies = read_delimited(folder / "movies.dat", {"raw_item_id": "int", "title": "str", "genres": "text"})
    twice = np.flatnonzero(movies["raw_item_id"].duplicated().to_numpy())
    if len(twice):
        raise ValueError(
            f"{folder / 'movies.dat'}, line {twice[0] + 1}: movie {movies['raw_item_id'].iloc[twice[0]]} is listed "
            "twice (the join would repeat its ratings)"
        )
    ratings["line"] = np.arange(len(ratings))
    ratings["movie_rank"] = pd.factorize(ratings["raw_item_id"])[0]
    untitled = np.flatnonzero(~ratings["raw_item_id"].isin(movies["raw_item_id"]).to_numpy())
    if len(untitled):  # CoLLM's inner join drops them
        first = f" (first: line {untitled[0] + 1}, movie {ratings['raw_item_id'].iloc[untitled[0]]})"
        why = "are of movies that movies.dat lacks and are left out (CoLLM's inner join)"
        _dropped(folder / "ratings.dat", "ratings", len(untitled), len(ratings), why, first, logging.WARNING)
    frame = ratings.merge(movies[["raw_item_id", "title"]], on="raw_item_id", how="inner")
    frame = frame.sort_values(["movie_rank", "line"], kind="stable")
    dates = pd.to_datetime(frame["timestamp"], unit="s", utc=True)
    month = (dates.dt.year - 2000) * 12 + dates.dt.month - 4
    frame["split"] = np.select(
        [month.between(14, 23), month.between(24, 28), month.between(29, 33)], list(SPLITS), default=""
    )
    outside = frame["split"] == ""
    _dropped(folder / "ratings.dat", "ratings (of known movies)", int(outside.sum()), len(frame),
             "fall outside CoLLM's window (2001-06 .. 2003-01) and are left out")  # fmt: skip
    frame = frame[~outside]
    frame["label"] = (frame["rating"] > 3).astype(np.int64)
    return build_splits(frame)


# -------------------------------------------------------------------------------------------------- Amazon-Book
def _read_json_lines(path: Path, fields: list[str]) -> pd.DataFrame:
    """
    Read a (gzipped) JSON-lines file with pandas' parser; a bad line raises naming the file and the line, so does a
    file where no object has one of `fields`. The index is the object's number (blank lines are skipped): map it to
    a line with `_json_line`.
    """
    try:
        frame = pd.read_json(path, lines=True, compression="infer", dtype=False)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{_where(path, _first_bad_json_line(path))}: not a JSON object ({err})") from err
    absent = [field for field in fields if field not in frame.columns]
    if absent and len(frame):
        raise ValueError(f"{path}: no object has the fields {absent}")
    for field in absent:
        frame[field] = pd.Series(dtype=object)
    return frame[fields].reset_index(drop=True)


def _first_bad_json_line(path: Path) -> int | None:
    """Only on the error path: the number of the first line that does not parse as a JSON object."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                if line.strip() and not isinstance(json.loads(line.decode("utf-8")), dict):
                    return number
            except (ValueError, UnicodeDecodeError):
                return number
    return None


def _json_line(path: Path, row) -> int | None:
    """Only on the error path: the line number of object number `row` (0-based; blank lines skipped)."""
    if row is None:
        return None
    opener = gzip.open if path.suffix == ".gz" else open
    seen = -1
    with opener(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            seen += bool(line.strip())
            if seen == row:
                return number
    return None


def load_amazon_book(
    data_dir, reviews: str = "Books_5.json.gz", meta: str = "meta_Books.json.gz", min_count: int = 20
) -> datasets.DatasetDict:
    """
    CoLLM's Amazon-Book split (Amazon Review Data 2018). Ratings (asin, reviewerID, overall, unixReviewTime) from the
    5-core file are right-joined to the de-duplicated metadata (last asin kept) and rows without a rating dropped;
    calendar year 2017 only; users and items with more than `min_count` ratings in 2017 (counted once, on the
    unfiltered year); label = rating 5; ids remapped in that frame's order before splitting; train = Jan–Nov;
    December sorted by time and cut in half by row count: validation = first half, test = second half.

    Reviews that lack one of the four fields are left out (CoLLM's `dropna`); they and every other row the recipe
    leaves out are counted in the log (logger `ccf_llm.data`). A field that is there but not what it means (an id
    that is empty, a rating that is not a finite number, a time that is not whole seconds) raises naming the file
    and the line, and so does a kept item without a title.
    """
    folder = Path(data_dir)
    reviews_path, meta_path = folder / reviews, folder / meta
    fields = ["asin", "reviewerID", "overall", "unixReviewTime"]
    ratings = _read_json_lines(reviews_path, fields)
    incomplete = ratings.isna().any(axis=1).to_numpy()
    if incomplete.any():
        first = int(np.flatnonzero(incomplete)[0])
        _dropped(reviews_path, "reviews", int(incomplete.sum()), len(ratings),
                 f"lack one of {fields} and are left out (CoLLM's dropna)",
                 f" (first: line {_json_line(reviews_path, first)})", logging.WARNING)  # fmt: skip
        ratings = ratings[~incomplete]
    rows = ratings.index.to_numpy()  # object numbers, for line numbers in messages
    ratings = _typed(
        ratings.reset_index(drop=True),
        {"asin": "str", "reviewerID": "str", "overall": "float", "unixReviewTime": "int"},
        reviews_path,
        lambda position: _json_line(reviews_path, rows[position]),
    )
    ratings["review_row"] = rows
    meta_frame = _read_json_lines(meta_path, ["asin", "title"])
    meta_frame = _typed(
        meta_frame, {"asin": "str"}, meta_path, lambda position: _json_line(meta_path, position)
    )
    meta_frame["meta_row"] = np.arange(len(meta_frame))
    repeated = meta_frame["asin"].duplicated(keep="last")
    _dropped(meta_path, "metadata rows", int(repeated.sum()), len(meta_frame),
             "repeat an asin listed again later and are left out (the last one is kept, as CoLLM does)")  # fmt: skip
    meta_frame = meta_frame[~repeated]
    frame = meta_frame.merge(ratings, on="asin", how="right")
    dates = pd.to_datetime(frame["unixReviewTime"], unit="s", utc=True)
    in_year = (dates.dt.year == 2017).to_numpy()
    _dropped(reviews_path, "ratings", int((~in_year).sum()), len(frame), "are not from 2017 and are left out")
    frame, dates = frame[in_year], dates[in_year]
    users, items = frame["reviewerID"].value_counts(), frame["asin"].value_counts()
    keep = (frame["reviewerID"].map(users).gt(min_count) & frame["asin"].map(items).gt(min_count)).to_numpy()
    _dropped(reviews_path, "ratings of 2017", int((~keep).sum()), len(frame),
             f"are of users or items with at most {min_count} ratings in 2017 and are left out")  # fmt: skip
    frame, dates = frame[keep], dates[keep]
    title = frame["title"]
    untitled = np.flatnonzero((title.isna() | (title.astype(str).str.strip() == "")).to_numpy(dtype=bool))
    if len(untitled):
        row = frame.iloc[untitled[0]]
        if pd.isna(row["meta_row"]):
            where = (
                f"{_where(reviews_path, _json_line(reviews_path, int(row['review_row'])))}: {meta_path} has"
            )
            raise ValueError(f"{where} no entry for item {row['asin']!r}, which is kept")
        raise ValueError(
            f"{_where(meta_path, _json_line(meta_path, int(row['meta_row'])))}: no title for item {row['asin']!r}, "
            f"which is kept ({frame['asin'].iloc[untitled].nunique()} kept items have none)"
        )
    frame = frame.rename(
        columns={"reviewerID": "raw_user_id", "asin": "raw_item_id", "unixReviewTime": "timestamp"}
    ).assign(label=(frame["overall"] > 4).astype(np.int64), title=title.astype(str))
    december = frame[(dates.dt.month == 12).to_numpy()].sort_values("timestamp", kind="quicksort")
    half = len(december) // 2
    split = pd.Series("train", index=frame.index)
    split[december.index[:half]] = "validation"
    split[december.index[half:]] = "test"
    frame["split"] = split
    return build_splits(frame, remap_in_sorted_order=False)


# ------------------------------------------------------------------------------------------------ generic loader
_EPOCH = pd.Timestamp(0, tz="UTC")
_SECOND = pd.Timedelta(seconds=1)


def _boundary(name: str, value) -> int | None:
    """
    A time boundary as the first whole unix second at or after it: `value` is unix seconds (an int, a float or a
    string holding a number, e.g. "978307200" from the command line) or anything `pd.Timestamp` reads (a date
    string, `datetime`, `np.datetime64`, naive = UTC, tz-aware converted to UTC). Anything else raises naming `name`.
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be unix seconds or a date, got {value!r}")
    if isinstance(value, str):  # a number in a string is unix seconds
        for parse in (int, float):
            try:
                value = parse(value.strip())
                break
            except ValueError:
                continue
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number of unix seconds or a date, got {value!r}")
        return math.ceil(value)
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError) as err:
        raise ValueError(
            f"{name}: {value!r} is neither unix seconds nor a date pd.Timestamp reads ({err})"
        ) from err
    if pd.isna(stamp):
        raise ValueError(f"{name} must be unix seconds or a date, got {value!r}")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return -((_EPOCH - stamp) // _SECOND)  # ceil: a boundary inside a second starts at the next one


def _utc(seconds: int) -> str:
    """Unix seconds as an ISO UTC date for messages."""
    return pd.Timestamp(seconds, unit="s", tz="UTC").isoformat()


def load_interactions(
    interactions,
    items,
    *,
    valid_start,
    test_start,
    test_end=None,
    train_start=None,
    threshold: float = 3.0,
    user_col: str = "user",
    item_col: str = "item",
    rating_col: str = "rating",
    time_col: str = "timestamp",
    title_col: str = "title",
) -> datasets.DatasetDict:
    """
    Your own interaction log (CSV with a header, or parquet: user, item, rating, unix timestamp) and item table
    (item, title) → splits by time: train = [train_start, valid_start), validation = [valid_start, test_start),
    test = [test_start, test_end). Boundaries are unix seconds (int, float, or a string holding a number, as a
    command line passes it) or anything else `pd.Timestamp` reads (naive = UTC, tz-aware converted). label =
    rating > `threshold`.

    Data problems raise a ValueError naming the file and the line: an empty user, item or title, a rating that is
    not a finite number, a timestamp that is not whole seconds, an item listed twice, or an item of the log that the
    item table lacks. Interactions outside the boundaries are left out and counted in the log (logger
    `ccf_llm.data`); an empty train split raises with the log's time range.
    """
    bounds = {
        "train_start": _boundary("train_start", train_start),
        "valid_start": _boundary("valid_start", valid_start),
        "test_start": _boundary("test_start", test_start),
        "test_end": _boundary("test_end", test_end),
    }
    for name in ("valid_start", "test_start"):
        if bounds[name] is None:
            raise ValueError(f"{name} is required (unix seconds or a date)")
    given = [(name, value) for name, value in bounds.items() if value is not None]
    for (name_a, a), (name_b, b) in zip(given, given[1:]):
        if a > b:
            raise ValueError(
                f"time boundaries must not decrease: {name_a}={a} ({_utc(a)}) is after {name_b}={b} ({_utc(b)})"
            )
    real = isinstance(threshold, numbers.Real) and not isinstance(threshold, (bool, np.bool_))
    if not real or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}")
    log, log_line = _read_table(
        interactions, {user_col: "str", item_col: "str", rating_col: "float", time_col: "int"}
    )
    table, items_line = _read_table(items, {item_col: "str", title_col: "str"})
    duplicated = np.flatnonzero(table[item_col].duplicated().to_numpy())
    if len(duplicated):
        raise ValueError(
            f"{_where(items, items_line(duplicated[0]))}: item {table[item_col].iloc[duplicated[0]]!r} is "
            f"listed twice ({len(duplicated)} repeats)"
        )
    unknown = np.flatnonzero(~log[item_col].isin(table[item_col]).to_numpy())
    if len(unknown):
        names = log[item_col].iloc[unknown].unique()
        raise ValueError(
            f"{_where(interactions, log_line(unknown[0]))}: no title for items {names[:5].tolist()} "
            f"({items} has no row for them; {len(names)} items in all)"
        )
    frame = log.merge(table, on=item_col, how="left")
    edges = [bounds["train_start"], bounds["valid_start"], bounds["test_start"], bounds["test_end"]]
    edges[0] = np.iinfo(np.int64).min if edges[0] is None else edges[0]
    edges[3] = np.iinfo(np.int64).max if edges[3] is None else edges[3]
    stamp = frame[time_col].to_numpy()
    frame["split"] = np.select(
        [(stamp >= edges[i]) & (stamp < edges[i + 1]) for i in range(3)], list(SPLITS), default=""
    )
    outside = (frame["split"] == "").to_numpy()
    _dropped(interactions, "interactions", int(outside.sum()), len(frame),
             "fall outside [train_start, test_end) and are left out")  # fmt: skip
    counts = frame["split"].value_counts()
    if not counts.get("train", 0):
        span = f"{_utc(stamp.min())} .. {_utc(stamp.max())}" if len(stamp) else "no rows"
        raise ValueError(
            f"the train split is empty: no interaction of {interactions} lies in [train_start, valid_start) = "
            f"[{_utc(edges[0]) if bounds['train_start'] is not None else '-inf'}, {_utc(edges[1])}); "
            f"its timestamps span {span}"
        )
    for name in ("validation", "test"):
        if not counts.get(name, 0):
            logger.warning("%s: the %s split is empty: check the time boundaries", interactions, name)
    frame = frame[~outside].rename(
        columns={user_col: "raw_user_id", item_col: "raw_item_id", time_col: "timestamp", title_col: "title"}
    )
    frame["label"] = (frame[rating_col] > threshold).astype(np.int64)
    return build_splits(frame)


class CTRRows(torch.utils.data.Dataset):
    """
    A split as tensors for the CF backbones: `user_ids`, `item_ids`, `labels` and `history`, the latest
    `max_history` positives of each row left-padded with 0 (SASRec's input; none when `max_history=0`).
    `__getitems__` returns a whole batch by tensor indexing, so pair it with an identity collator: no per-row
    Python work in the 500-epoch CF trainings.
    """

    def __init__(self, split: datasets.Dataset, max_history: int = 0):
        table = split.with_format("arrow")[:]
        self.tensors = {
            "user_ids": torch.from_numpy(table.column("user_id").to_numpy().astype(np.int64)),
            "item_ids": torch.from_numpy(table.column("item_id").to_numpy().astype(np.int64)),
            "labels": torch.from_numpy(table.column("label").to_numpy().astype(np.float32)),
        }
        if max_history:
            self.tensors["history"] = torch.from_numpy(
                latest_items(*to_ragged(table.column("history")), max_history)
            )

    def __len__(self) -> int:
        return len(self.tensors["labels"])

    def __getitem__(self, index):
        return {k: v[index] for k, v in self.tensors.items()}

    def __getitems__(self, indices):
        index = torch.as_tensor(indices)
        return {k: v[index] for k, v in self.tensors.items()}


def identity_collator(batch):
    """Collator for datasets whose `__getitems__` already returns a batch (`CTRRows`)."""
    return batch


def seeded_subsample(split: datasets.Dataset, rows: int | None, seed: int) -> datasets.Dataset:
    """`rows` rows of `split` drawn without replacement with `seed`, kept in their order; all of it when `rows` is
    None or at least its length. The same seed gives the same rows in every run and mode."""
    if rows is None or rows >= len(split):
        return split
    return split.select(seeded_indices(len(split), rows, seed))


def seeded_indices(length: int, rows: int | None, seed: int) -> np.ndarray:
    """The sorted row indices `seeded_subsample` keeps of a split of `length` rows."""
    if rows is None or rows >= length:
        return np.arange(length)
    return np.sort(np.random.default_rng(seed).choice(length, rows, replace=False))


__all__ = [
    "COLD_RULES",
    "SPLITS",
    "CTRRows",
    "id_counts",
    "identity_collator",
    "build_splits",
    "item_titles",
    "load_amazon_book",
    "load_interactions",
    "load_movielens_1m",
    "read_delimited",
    "read_table",
    "seeded_indices",
    "seeded_subsample",
    "warm_cold_masks",
    "warm_cold_subsets",
]
