"""Offline scoring: click scores for a table of (user, history, candidate item) rows with a trained CCF-LLM.

    python examples/score.py --model OUT/gate --input candidates.parquet --output scores.parquet

`--model` is a folder written by `examples/run_ctr.py` (base model, `adapter/` and processor; the adapter is merged
in) or any `save_pretrained` folder of a `CCFLlamaForCTR` with its `CCFLlamaProcessor`. `--adapter` merges another
adapter instead, e.g. a training checkpoint (`--adapter OUT/gate/stage_2_fusion/checkpoint-600`). The input
(parquet or CSV) needs the columns `user_id`, `history` (a list of earlier positive item ids, oldest first) and
`item_id`; every column is copied to the output, plus `score` (p_yes / (p_yes + p_no)). Rows sharing a user and
history share one encoded prompt prefix (`ccf_llm.score_rows`). A progress bar shows rows scored.

Under `torchrun` (or `accelerate launch`) each process scores a share of the rows, every user's rows in one share
so the prefix cache still applies (`ccf_llm.score_rows_distributed`), and the first process writes one output file
in the input's order, with the scores one process gives:

    torchrun --nproc_per_node 2 examples/score.py --model OUT/gate --input candidates.parquet --output scores.parquet

`--device cuda` puts each process's model on its own GPU (`cuda:LOCAL_RANK`); the processes exchange scores over gloo.
"""

import argparse
import logging
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from ccf_llm import CCFLlamaProcessor, load_ctr_model, score_rows_distributed
from ccf_llm.precision import resolve_dtype

COLUMNS = ("user_id", "history", "item_id")


def _whole_numbers(values: pd.Series, path: Path, what: str, line_of) -> np.ndarray:
    """`values` as int64, or a SystemExit naming the file, line and value that is not a whole number."""
    numbers = pd.to_numeric(values, errors="coerce")
    bad = numbers.isna() | ~np.isfinite(numbers) | (numbers != np.round(numbers))
    if bad.any():
        first = bad.to_numpy().nonzero()[0][0]
        raise SystemExit(
            f"{path}, line {line_of(values.index[first])}: {what} '{values.iloc[first]}' is not a whole number"
        )
    return numbers.to_numpy().astype(np.int64)


def read_table(path: Path) -> pd.DataFrame:
    """
    The rows to score, every column kept. CSV histories are written "[1, 2, 3]" or "1 2 3" (parquet: a list
    column). Ids and history items must be whole numbers: anything else stops with the file and line.
    """
    if path.suffix == ".parquet":
        table = pd.read_parquet(path)
        line_of = lambda row: row + 1  # noqa: E731  (parquet "lines" are row numbers)
    elif path.suffix == ".csv":
        table = pd.read_csv(path, dtype={"history": str}, keep_default_na=False)
        line_of = lambda row: row + 2  # noqa: E731  (the header is line 1)
    else:
        raise SystemExit(f"{path}: expected a .parquet or .csv file")
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise SystemExit(f"{path} lacks the columns {missing} (has {table.columns.tolist()})")
    for column in ("user_id", "item_id"):
        table[column] = _whole_numbers(table[column], path, column, line_of)
    if path.suffix == ".csv":  # "[1, 2, 3]" / "1 2 3" -> lists, all rows at once
        items = table["history"].str.strip("[] ").str.replace(",", " ").str.split().explode()
        items = items[items.notna()]
        parsed = pd.Series(_whole_numbers(items, path, "history item", line_of), index=items.index)
        table["history"] = parsed.groupby(level=0).agg(list).reindex(table.index, fill_value=[]).tolist()
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="trained model folder (run_ctr.py OUT/<mode>)")
    parser.add_argument(
        "--input", required=True, type=Path, help="parquet/CSV with user_id, history, item_id"
    )
    parser.add_argument("--output", required=True, type=Path, help="parquet file to write")
    parser.add_argument(
        "--adapter",
        type=Path,
        default=None,
        help="merge this folder's adapter instead of MODEL/adapter, e.g. a checkpoint of the last stage "
        "(MODEL/stage_2_fusion/checkpoint-600)",
    )
    parser.add_argument("--batch_size", type=int, default=64, help="rows per LLM call")
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (bf16 where this machine runs it natively, else fp32), float32 or bfloat16",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--device", default="cpu", help="cpu, or a GPU type (cuda): each process then uses device LOCAL_RANK"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s"
    )  # says which dtype, and why
    if args.threads:
        torch.set_num_threads(args.threads)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(
            "gloo"
        )  # only scores cross between processes: CPU arrays, whatever the device
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    device = torch.device(args.device, int(os.environ.get("LOCAL_RANK", "0")))
    table = read_table(args.input)
    model = load_ctr_model(args.model, adapter=args.adapter, dtype=resolve_dtype(args.dtype)).to(device)
    processor = CCFLlamaProcessor.from_pretrained(args.model)
    start = time.perf_counter()
    table["score"] = score_rows_distributed(
        model, processor, table["user_id"].to_numpy(), table["history"].tolist(), table["item_id"].to_numpy(),
        batch_size=args.batch_size, progress=True,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if rank == 0:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        table.to_parquet(args.output, index=False)
        print(f"scored {len(table)} rows in {seconds:.1f} s ({len(table) / max(seconds, 1e-9):.1f} rows/s) with "
              f"{world_size} process(es), mean score {np.mean(table['score']):.4f} -> {args.output}")  # fmt: skip
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
