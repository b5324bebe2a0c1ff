"""ccf_llm.ragged: ragged arrays as (flat values, offsets), converted, cut, taken and padded without row loops."""

import numpy as np
import pyarrow as pa
import pytest
import torch

from ccf_llm.ragged import (
    as_int_array,
    latest_items,
    offsets_of,
    pad_ragged,
    slice_indices,
    take_rows,
    to_arrow,
    to_ragged,
)

ROWS = [[3, 1, 4], [], [1, 5], [9, 2, 6, 5]]


def test_lists_and_arrow_arrays_give_the_same_flat_values_and_offsets():
    flat, offsets = to_ragged(ROWS)
    assert flat.tolist() == [3, 1, 4, 1, 5, 9, 2, 6, 5] and offsets.tolist() == [0, 3, 3, 5, 9]
    sliced = pa.array([[7]] + ROWS, type=pa.list_(pa.int64())).slice(1)  # a non-zero first offset
    for arrow in (sliced, pa.chunked_array([sliced]), to_arrow(flat, offsets)):
        arrow_flat, arrow_offsets = to_ragged(arrow)
        assert arrow_flat.tolist() == flat.tolist() and arrow_offsets.tolist() == offsets.tolist()
    assert offsets_of(np.array([2, 0, 1])).tolist() == [0, 2, 2, 3]


def test_ids_that_a_cast_would_change_raise_naming_their_rows():
    """A fraction would be truncated to another item, a null would become an empty history or INT64_MIN."""
    assert to_ragged([[1.0, 2.0], []])[0].tolist() == [1, 2]  # whole floats are ids
    assert as_int_array(pa.array([4.0, 5.0])).tolist() == [4, 5]
    assert as_int_array(np.array([1, "a"], dtype=object)[:1]).tolist() == [1]  # e.g. a mixed frame's column
    fixed = pa.array([[7, 7], [1, 2], [3, 4]], type=pa.list_(pa.int64(), 2)).slice(1)  # Sequence(length=2)
    assert [a.tolist() for a in to_ragged(fixed)] == [[1, 2, 3, 4], [0, 2, 4]]
    for bad, match in [
        ([[3], [1, 1.7]], r"rows \[1\] hold \[1.7\]"),
        (pa.array([[1, 2], None, [3]]), r"rows \[1\] are missing \(null\)"),
        (pa.array([[1], [2, None]]), r"rows \[1\] hold \[nan\]"),
        ([["a"]], r"rows \[0\] hold \['a'\]"),
        ([[1, 2, 3], [4, None]], r"rows \[1\] hold \[None\]"),
        ([[5], [2**63]], r"rows \[1\] hold \[9.22"),  # beyond int64 (numpy holds it as a float), not wrapped
    ]:
        with pytest.raises(ValueError, match=match):
            to_ragged(bad)
    for bad, match in [
        ([1.9, 2], r"rows \[0\] hold \[1.9\]"),
        (pa.array([1, None]), r"rows \[1\] hold \[nan\]"),
        (np.array([True, False]), r"rows \[0, 1\]"),
        ([3, 1e19], r"rows \[1\] hold \[1e\+19\]"),
    ]:
        with pytest.raises(ValueError, match=match):
            as_int_array(bad)


def test_latest_items_keeps_the_last_k_left_padded():
    assert latest_items(*to_ragged(ROWS), 3).tolist() == [[3, 1, 4], [0, 0, 0], [0, 1, 5], [2, 6, 5]]


def test_take_rows_and_slices_follow_the_order_asked_for():
    flat, offsets = take_rows(*to_ragged(ROWS), np.array([3, 0, 3, 1]))
    assert np.split(flat, offsets[1:-1])[0].tolist() == [9, 2, 6, 5] and offsets.tolist() == [0, 4, 7, 11, 11]
    assert slice_indices(np.array([5, 0]), np.array([2, 3])).tolist() == [5, 6, 0, 1, 2]


def test_padding_on_either_side_with_its_mask():
    left, mask = pad_ragged(*to_ragged(ROWS[:3]), "left", -1)
    assert left.tolist() == [[3, 1, 4], [-1, -1, -1], [-1, 1, 5]] and mask.tolist() == [
        [1, 1, 1],
        [0, 0, 0],
        [0, 1, 1],
    ]
    right, _ = pad_ragged(*to_ragged(ROWS[:3]), "right", 0)
    assert right.tolist() == [[3, 1, 4], [0, 0, 0], [1, 5, 0]]
    assert (
        as_int_array(torch.tensor([[1], [2]])).tolist() == [1, 2]
        and as_int_array(pa.array([4, 5])).dtype == np.int64
    )
