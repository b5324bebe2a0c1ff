# Copyright 2026 The ccf-llm authors. Licensed under the Apache License, Version 2.0.
"""Offline scoring over the processes of a `torch.distributed` run (`torchrun`, `accelerate launch`).

* `shard_rows_by_user`: split a table's rows into one share per process, every user's rows in one share (so rows
  sharing a prompt prefix, which always share a user, stay together for `score_rows`' prefix cache), the shares
  balanced by row count up to one user's rows.
* `score_rows_distributed`: each process scores its share with `score_rows`, the shares' scores are all-gathered,
  and every process returns the whole table's scores in row order, the same as `score_rows` in one process.

The model is whole in every process (data parallel inference); an FSDP-sharded model must instead score the same
rows in every process, in step, as `examples/run_ctr.py` does after FSDP training.
"""

import numpy as np
import pyarrow as pa
import torch
import torch.distributed as dist

from .pipeline_ctr_scoring import score_rows
from .ragged import as_int_array


def shard_rows_by_user(user_ids, num_shards: int) -> list[np.ndarray]:
    """
    Row indices of each of `num_shards` shares of the rows, in ascending order within a share.

    Users are ordered by id and cut into `num_shards` contiguous runs at the user boundaries nearest above
    `k · rows / num_shards`, so no user is split and each share holds about `rows / num_shards` rows (a share may be
    empty when there are fewer users than shares). Every process computes the same shares from the same `user_ids`.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    users = np.asarray(user_ids).reshape(-1)
    order = np.argsort(users, kind="stable")
    by_user = users[order]
    user_starts = np.flatnonzero(np.r_[True, by_user[1:] != by_user[:-1]]) if len(users) else np.zeros(0, int)
    targets = np.arange(1, num_shards) * len(users) / num_shards
    nearest = np.searchsorted(user_starts, targets, side="left")
    cuts = np.append(user_starts, len(users))[nearest]
    return [np.sort(share) for share in np.split(order, cuts)]


def score_rows_distributed(
    model, processor, user_ids, histories, item_ids, batch_size: int = 64, progress: bool = False
) -> np.ndarray:
    """
    `score_rows` with the rows shared out by user over the processes of the default process group; every process
    gets all scores, in row order. Without an initialized group (or with one process) it is `score_rows`.

    Arguments as `score_rows`; `histories` is a list of lists or an arrow list array. The progress bar (with
    `progress`) counts the first process's share.
    """
    users, items = as_int_array(user_ids), as_int_array(item_ids)
    if isinstance(histories, pa.ChunkedArray):
        histories = histories.combine_chunks()
    elif not isinstance(histories, pa.Array):
        histories = pa.array(histories, type=pa.large_list(pa.int64()))
    if not len(users) == len(items) == len(histories):
        raise ValueError(
            f"got {len(users)} user ids, {len(histories)} histories and {len(items)} item ids: one of each per row"
        )
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return score_rows(model, processor, users, histories, items, batch_size, progress)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    shares = shard_rows_by_user(users, world_size)
    mine = shares[rank]
    local = (
        score_rows(
            model,
            processor,
            users[mine],
            histories.take(pa.array(mine)),
            items[mine],
            batch_size,
            progress and rank == 0,
        )  # fmt: skip
        if len(mine)
        else np.zeros(0, dtype=np.float32)
    )
    # every process knows every share's length: gather fixed-width float tensors (no pickled objects), on the
    # model's device for NCCL and other accelerator backends
    device = None if dist.get_backend() == "gloo" else next(model.parameters()).device
    padded = torch.zeros(max(map(len, shares)), dtype=torch.float32, device=device)
    padded[: len(local)] = torch.from_numpy(local)
    gathered = [torch.empty_like(padded) for _ in range(world_size)]
    dist.all_gather(gathered, padded)
    scores = np.empty(len(users), dtype=np.float32)
    for share, part in zip(shares, gathered, strict=True):
        scores[share] = part[: len(share)].cpu().numpy()
    return scores


__all__ = ["score_rows_distributed", "shard_rows_by_user"]
