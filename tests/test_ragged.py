"""ccf_llm.ragged: ragged arrays as (flat values, offsets), converted, cut, taken and padded without row loops."""

import numpy as np
import pyarrow as pa
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
