"""Time to build the ML-1M CoLLM split from the raw files plus the tokenized hybrid prompts of all 51,623 rows.

    python benchmarks/data_pipeline.py --data_dir PATH/TO/ml-1m [--fusion_mode gate]

Goal: under 30 s on the 2-core development machine. Writes this CPU kind's entry of
`benchmarks/results/data_pipeline.json` and `.md` (`report.save_results`: the other kinds' figures stay), with the
run's `provenance` (dtype "n/a": no model runs).
The tokenizer is SmolLM2-135M-Instruct's (found like every backbone: see `ccf_llm.pretrained_llm`).
"""

import argparse
import os
import time

import numpy as np
from report import provenance, save_results
from transformers import AutoTokenizer

from ccf_llm import DEFAULT_LLM, CCFLlamaProcessor, resolve_llm
from ccf_llm.data import item_titles, load_movielens_1m

TITLE = "Data pipeline: ML-1M raw files → CoLLM split → tokenized hybrid prompts"


def render(out: dict) -> list[str]:
    """The markdown of one CPU kind's `out` (as written to data_pipeline.json): goal and table."""
    return [
        f"Fusion mode `{out['fusion_mode']}`; goal: total under 30 s.",
        "",
        "| rows | split (s) | title tokenization (s) | prompts (s) | total (s) | tokens mean / max |",
        "|---|---|---|---|---|---|",
        f"| {out['rows']:,} | {out['split_seconds']} | {out['tokenize_titles_seconds']} | {out['prompts_seconds']} | "
        f"{out['total_seconds']} | {out['prompt_tokens_mean']} / {out['prompt_tokens_max']} |",
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data_dir", default=os.environ.get("CCF_LLM_DATA"), required="CCF_LLM_DATA" not in os.environ
    )
    parser.add_argument("--fusion_mode", default="gate")
    parser.add_argument("--llm", default=DEFAULT_LLM)
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(resolve_llm(args.llm))
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|user_cf|>", "<|item_cf|>"]})

    start = time.perf_counter()
    splits = load_movielens_1m(args.data_dir)
    split_s = time.perf_counter() - start
    processor = CCFLlamaProcessor(tokenizer, item_titles(splits), fusion_mode=args.fusion_mode)
    titles_s = time.perf_counter() - start - split_s
    translated = {name: processor.process_dataset(ds) for name, ds in splits.items()}
    total_s = time.perf_counter() - start
    lengths = np.concatenate(
        [np.fromiter(map(len, ds["input_ids"]), dtype=np.int64) for ds in translated.values()]
    )
    out = {
        "provenance": provenance("n/a"),
        "rows": int(len(lengths)),
        "split_seconds": round(split_s, 2),
        "tokenize_titles_seconds": round(titles_s, 2),
        "prompts_seconds": round(total_s - split_s - titles_s, 2),
        "total_seconds": round(total_s, 2),
        "prompt_tokens_mean": round(float(lengths.mean()), 1),
        "prompt_tokens_max": int(lengths.max()),
        "fusion_mode": args.fusion_mode,
    }
    print("\n".join(save_results("data_pipeline", out, render, TITLE)))


if __name__ == "__main__":
    main()
