# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Ragged arrays as numpy `(flat values, offsets)` pairs: one row's values are `flat[offsets[r]:offsets[r + 1]]`.

Histories, prompts and candidate lists are ragged. These helpers convert, slice, pad and cut them for a whole batch
at once with index arithmetic, never a Python loop over rows; the data layer, the prompt layer, the scoring
pipeline and the examples share them. They depend on numpy and pyarrow only.
"""

import numbers
from itertools import chain

import numpy as np
import pyarrow as pa


def offsets_of(lengths: np.ndarray) -> np.ndarray:
    """The `(rows + 1,)` offsets of rows with these lengths: `[0, l0, l0 + l1, ...]`."""
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def to_ragged(values) -> tuple[np.ndarray, np.ndarray]:
    """
    (flat values, offsets) of a list of lists, a pyarrow ListArray or ChunkedArray, without a Python loop. The
    values are ids: a missing row or value, a fraction or a non-number raises an error naming the rows.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.FixedSizeListArray):  # e.g. a datasets `Sequence(..., length=k)` column
        values = values.cast(pa.large_list(values.type.value_type))
    if isinstance(values, (pa.ListArray, pa.LargeListArray)):
        offsets = values.offsets.to_numpy().astype(np.int64)
        if values.null_count:
            rows = np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[:5]
            raise ValueError(f"rows {rows.tolist()} are missing (null) where a list of ids was expected")
        flat = values.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
        offsets = offsets - offsets[0]
    else:
        lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
        flat, offsets = np.array(list(chain.from_iterable(values))), offsets_of(lengths)
    return _ids(flat, offsets), offsets


def as_int_array(values) -> np.ndarray:
    """
    A flat int64 array of ids from a sequence, numpy array, tensor or pyarrow (Chunked)Array; a missing value, a
    fraction or a non-number raises an error naming its rows.
    """
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = values.to_numpy(zero_copy_only=False)  # nulls become NaN (or None), refused below
    return _ids(np.asarray(values).reshape(-1))


def _ids(flat: np.ndarray, offsets: np.ndarray | None = None) -> np.ndarray:
    """`flat` as int64 ids, refusing what the cast would change: fractions, NaN, None, values beyond int64,
    booleans, strings. Errors name rows (through `offsets`, for ragged values) or positions."""
    if flat.dtype.kind == "O" and len(flat):
        flat = np.array(flat.tolist())  # Python objects (e.g. a mixed frame's column): their numeric dtype
    kind = flat.dtype.kind
    if kind == "i" or not len(flat):
        return flat.astype(np.int64, copy=False)
    if kind == "u":
        bad = flat > np.iinfo(np.int64).max
    elif kind == "f":
        bad = ~np.isfinite(flat) | (flat != np.trunc(flat)) | (np.abs(flat) >= 2.0**63)
    elif kind == "O":  # numbers beside None or other objects
        is_number = np.frompyfunc(lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool), 1, 1)
        bad = ~is_number(flat).astype(bool)
    else:  # booleans, strings, dates
        bad = np.ones(len(flat), dtype=bool)
    if not bad.any():
        return flat.astype(np.int64)
    where = np.flatnonzero(bad)
    rows = where if offsets is None else np.searchsorted(offsets, where, side="right") - 1
    raise ValueError(
        f"ids must be whole numbers: rows {np.unique(rows)[:5].tolist()} hold {flat[where[:5]].tolist()} "
        f"({flat.dtype})"
    )


def latest_items(flat: np.ndarray, offsets: np.ndarray, k: int) -> np.ndarray:
    """`(rows, k)`: each row's last `k` items of a ragged list (flat values, offsets), left-padded with 0."""
    lengths = np.minimum(np.diff(offsets), k)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    matrix = np.zeros((len(lengths), k), dtype=np.int64)
    matrix[rows, k - lengths[rows] + within] = flat[offsets[1:][rows] - lengths[rows] + within]
    return matrix


def slice_indices(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Flat indices of the slices `[start, start + length)`, concatenated."""
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(int(lengths.sum()))


def take_rows(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(flat values, offsets) of the rows `rows` of a ragged list (flat values, offsets), in that order."""
    lengths = np.diff(offsets)[rows]
    return flat[slice_indices(offsets[:-1][rows], lengths)], offsets_of(lengths)


def pad_ragged(
    values: np.ndarray, offsets: np.ndarray, side: str, pad_value: int
) -> tuple[np.ndarray, np.ndarray]:
    """A ragged list (flat values, offsets) as a padded `(rows, width)` matrix and its 0/1 mask."""
    lengths = np.diff(offsets)
    n_rows, width = len(lengths), int(lengths.max(initial=0))
    rows = np.repeat(np.arange(n_rows), lengths)
    cols = np.arange(len(values)) - offsets[rows]
    if side == "left":
        cols = cols + (width - lengths)[rows]
    matrix = np.full((n_rows, width), pad_value, dtype=np.int64)
    matrix[rows, cols] = values
    mask = np.zeros((n_rows, width), dtype=np.int64)
    mask[rows, cols] = 1
    return matrix, mask


def to_arrow(flat: np.ndarray, offsets: np.ndarray) -> pa.LargeListArray:
    """A ragged list (flat values, offsets) as a pyarrow LargeListArray (zero-copy where numpy allows)."""
    return pa.LargeListArray.from_arrays(offsets, flat)


__all__ = [
    "as_int_array",
    "latest_items",
    "offsets_of",
    "pad_ragged",
    "slice_indices",
    "take_rows",
    "to_arrow",
    "to_ragged",
]
