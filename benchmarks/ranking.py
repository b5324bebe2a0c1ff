"""Prefix-cached candidate ranking against full prompts, and the throughput of scoring the ML-1M test set.

    python benchmarks/ranking.py [--data_dir ../shared/data/ml-1m] [--candidates 100] [--threads 2] [--dtype auto]

Model: SmolLM2-135M-Instruct as CCF-LLM in `gate` mode with the paper's template (§3.2), 10-item history, random
64-d CF tables and a random (not zero) GATE, so every title token is fused. Training does not change the cost.

* `ranking`: one ML-1M test user with a 10-item history and `--candidates` candidate items. `full` scores the full
  prompts (`model(**processor(...))`, batches of `--batch_size`); `cached` runs `CCFLlamaForCTR.score_candidates`
  (prefix once, suffixes in batches of `--batch_size`). Median of `--repeats` interleaved rounds, in bf16 where
  the CPU runs it natively (`ccf_llm.precision.device_precision`; elsewhere recorded as skipped, never run) and in
  fp32; `speedup` = full / cached (goal >= 4x; the top-level one is the `--dtype` one's, or fp32's when that is
  skipped). `max_abs_diff` is the largest score difference (goal <= 1e-5 in fp32).
* `test_set`: `ccf_llm.score_rows` over the ML-1M test split (all 7,331 rows, or the first `--test_rows`) in the
  chosen dtype (`--dtype`, default `auto`: bf16 where native, fp32 elsewhere), rows per second for each strategy
  (`prefix_cache`: rows sharing a prefix grouped, `score_candidates`; `full`: whole prompts in batches of similar
  length; `auto`: per block, whichever runs fewer tokens; the tokens each runs and `auto`'s choices are recorded),
  then `auto` again with the decoder layers compiled (`compile_decoder_layers`, after one warm-up call whose seconds
  are recorded; since 2026-12-06 only its full-prompt blocks run compiled, `score_candidates` runs eagerly);
  `--template_from CONFIG` takes the prompt template of a run_ctr.py config (e.g. the reproduction's). `--rounds` interleaved rounds, every sample kept; `--history_size` items in the prompt (10: the
  paper's; 2: the reproduction's budget).

Writes this CPU kind's entry of `benchmarks/results/ranking.json` and `.md` (`report.save_results`: the other
kinds' figures stay), with the run's `provenance`.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from report import dtype_name, provenance, save_results

from ccf_llm import CCFLlamaForCTR, CCFLlamaProcessor, load_llm, score_rows, scoring_tokens
from ccf_llm.data import id_counts, item_titles, load_movielens_1m
from ccf_llm.precision import DTYPE_NAMES, device_precision, resolve_dtype
from ccf_llm.trainer_ccf_llama import compile_decoder_layers

TITLE = "Prefix-cached ranking vs full prompts (SmolLM2-135M, `gate`, paper template)"


def build(dtype, num_users, num_items, titles, attn_implementation=None, history_size=10, template=None):
    llm, tokenizer = load_llm(dtype=dtype, attn_implementation=attn_implementation)
    generator = torch.Generator().manual_seed(0)
    model = CCFLlamaForCTR.from_llm(
        llm, tokenizer, num_users, num_items,
        user_embeddings=torch.randn(num_users + 1, 64, generator=generator) * 0.1,
        item_embeddings=torch.randn(num_items + 1, 64, generator=generator) * 0.1,
        fusion_mode="gate", zero_init_gate=False,
    ).eval()  # fmt: skip
    processor = CCFLlamaProcessor(
        tokenizer, titles, config=model.config, history_size=history_size, template=template
    )
    return model, processor


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def render(out: dict) -> list[str]:
    """The markdown of one CPU kind's `out` (as written to ranking.json): the ranking table, then the test set."""
    settings, test_set = out["settings"], out["test_set"]
    lines = [
        f"1 user x {settings['candidates']} candidates, 10-item history, batches of {settings['batch_size']}, "
        f"median of {settings['repeats']} rounds:",
        "",
        "| dtype | full prompts | prefix-cached | speedup | max abs diff | prompt / prefix / suffix tokens |",
        "|---|---|---|---|---|---|",
    ]
    for dtype, r in out["ranking"].items():
        if "skipped" in r:
            lines.append(f"| {dtype} | skipped: {r['skipped']} | | | | |")
            continue
        lines.append(
            f"| {dtype} | {r['full_seconds']:.2f} s | {r['cached_seconds']:.2f} s | {r['speedup']:.2f}x | "
            f"{r['max_abs_diff']:.1e} | {r['prompt_tokens']} / {r['prefix_tokens']} / {r['mean_suffix_tokens']} |"
        )
    if "rows_per_s" not in test_set:  # entries written before the strategies existed
        return lines + [
            "",
            f"Whole ML-1M test set ({test_set['rows']} rows, {test_set['dtype']}, `score_rows`): "
            f"{test_set['cached_seconds']} s, **{test_set['cached_rows_per_s']} rows/s**; full prompts on the first "
            f"{test_set['full_prompt_rows']} rows: {test_set['full_prompt_rows_per_s']} rows/s.",
        ]
    lines += [
        "",
        f"ML-1M test set, first {test_set['rows']} rows ({test_set['dtype']}, `score_rows`, "
        f"{test_set['history_size']}-item history, batches of {settings['batch_size']}, {test_set['rows_per_prefix']} "
        f"rows per distinct prompt prefix; template: {test_set.get('template', 'paper')}), rows/s per round:",
        "",
        "| strategy | rows/s (each round) | median | vs prefix_cache | tokens run, padding included |",
        "|---|---|---|---|---|",
    ]
    base = statistics.median(test_set["rows_per_s"]["prefix_cache"])
    tokens = test_set.get("tokens", {})  # absent from entries written before it was counted
    for name, samples in test_set["rows_per_s"].items():
        median = statistics.median(samples)
        count = tokens.get(name.removesuffix(", compiled layers"))
        cell = f"{count:,}" if count else ""
        lines.append(
            f"| {name} | {', '.join(map(str, samples))} | {median:.1f} | {median / base:.2f}x | {cell} |"
        )
    if tokens:
        blocks = tokens["auto_blocks"]
        lines += [
            "",
            f"`auto` chose the prefix cache for {blocks['prefix_cache']} and full prompts for {blocks['full']} of its "
            f"blocks of rows (`ccf_llm.scoring_tokens`, counted from the tokenized prompts).",
        ]
    return lines + [
        "",
        f"Compiling took {test_set['compile_warmup_seconds']} s (one warm-up call of {settings['batch_size']} rows). "
        f"Largest score difference between strategies: {test_set['max_abs_diff']:.1e}.",
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--batch_size", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--full_rows", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--test_rows", type=int, default=None, help="score only the first rows")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the test-set strategies")
    parser.add_argument("--history_size", type=int, default=10, help="history items in the test-set prompts")
    parser.add_argument(
        "--template_from", type=Path, default=None,
        help="a run_ctr.py config whose `template` the test-set prompts use (default: the paper's)",
    )  # fmt: skip
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="the test set's dtype; auto: bf16 where native, else fp32",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    test_dtype, found = resolve_dtype(args.dtype), device_precision("cpu")
    splits = load_movielens_1m(args.data_dir)
    titles = item_titles(splits)
    test = splits["test"] if args.test_rows is None else splits["test"].select(range(args.test_rows))
    num_users, num_items = id_counts(splits)
    # the first test user with at least 10 history items; candidates: the test items, then other titled items
    lengths = np.array([len(h) for h in test["history"]])
    row = int(np.flatnonzero(lengths >= 10)[0])
    user, history = int(test[row]["user_id"]), list(test[row]["history"])
    rng = np.random.default_rng(0)
    candidates = rng.choice(np.array(sorted(titles)), size=args.candidates, replace=False)
    users = np.full(args.candidates, user)
    histories = [history] * args.candidates

    ranking = {}
    for dtype in (torch.bfloat16, torch.float32):
        if dtype == torch.bfloat16 and not found.native_bf16:  # bf16 runs orders of magnitude slower there
            ranking[dtype_name(dtype)] = {"skipped": f"no native bf16: {found.reason}"}
            continue
        model, processor = build(dtype, num_users, num_items, titles)
        features = processor.ranking_inputs([user], [history], [candidates])
        full_prompt = processor([user], [history], [int(candidates[0])])["input_ids"].shape[1]
        times = {"full": [], "cached": []}

        def run_full(model=model, processor=processor):
            return torch.from_numpy(
                score_rows(model, processor, users, histories, candidates, args.batch_size, strategy="full")
            )

        def run_cached(model=model, features=features):
            return model.score_candidates(**features, batch_size=args.batch_size).scores

        for _ in range(args.repeats):
            t_full, full = timed(run_full)
            t_cached, cached = timed(run_cached)
            times["full"].append(t_full)
            times["cached"].append(t_cached)
        full_s, cached_s = statistics.median(times["full"]), statistics.median(times["cached"])
        ranking[dtype_name(dtype)] = {
            "full_seconds": round(full_s, 3),
            "cached_seconds": round(cached_s, 3),
            "speedup": round(full_s / cached_s, 2),
            "max_abs_diff": float((full - cached.float()).abs().max()),
            "prompt_tokens": int(full_prompt),
            "prefix_tokens": int(features["prefix_attention_mask"].sum()),
            "mean_suffix_tokens": round(float(features["attention_mask"].sum(-1).float().mean()), 1),
        }
        print(dtype, ranking[dtype_name(dtype)], flush=True)

    # the test set, in the chosen dtype
    template = json.loads(args.template_from.read_text())["template"] if args.template_from else None
    model, processor = build(
        test_dtype, num_users, num_items, titles, history_size=args.history_size, template=template
    )
    users_t, items_t = np.array(test["user_id"]), np.array(test["item_id"])
    histories_t = test.data.column("history")

    def run(strategy):
        return score_rows(model, processor, users_t, histories_t, items_t, args.batch_size, strategy=strategy)

    rows_per_s, scores = {"prefix_cache": [], "full": [], "auto": []}, {}
    for _ in range(args.rounds):
        for strategy in rows_per_s:
            seconds, scores[strategy] = timed(lambda strategy=strategy: run(strategy))
            rows_per_s[strategy].append(round(len(items_t) / seconds, 1))
            print(strategy, rows_per_s[strategy][-1], "rows/s", flush=True)
    compile_decoder_layers(model)
    warmup, _ = timed(lambda: score_rows(model, processor, users_t[: args.batch_size],
                                         histories_t.slice(0, args.batch_size), items_t[: args.batch_size],
                                         args.batch_size))  # fmt: skip
    rows_per_s["auto, compiled layers"] = []
    for _ in range(args.rounds):
        seconds, scores["compiled"] = timed(lambda: run("auto"))
        rows_per_s["auto, compiled layers"].append(round(len(items_t) / seconds, 1))
        print("auto compiled", rows_per_s["auto, compiled layers"][-1], "rows/s", flush=True)
    tokens = scoring_tokens(processor, users_t, histories_t, items_t, args.batch_size)
    latest = [tuple(h[-args.history_size :]) for h in histories_t.to_pylist()]
    prefixes = len(set(zip(users_t.tolist(), latest, strict=True)))
    test_set = {
        "dtype": dtype_name(test_dtype),
        "rows": len(items_t),
        "history_size": args.history_size,
        "template": template or "paper",
        "rows_per_prefix": round(len(items_t) / prefixes, 2),
        "rows_per_s": rows_per_s,
        "tokens": tokens,
        "compile_warmup_seconds": round(warmup, 1),
        "max_abs_diff": float(max(np.abs(scores[k] - scores["prefix_cache"]).max() for k in scores)),
    }
    print(test_set, flush=True)
    measured = [name for name, r in ranking.items() if "skipped" not in r]
    headline = ranking.get(dtype_name(test_dtype), {})  # none, or skipped: fp32's
    out = {
        "provenance": provenance(", ".join(measured)),
        "settings": {
            "candidates": args.candidates,
            "history": len(history[-10:]),
            "batch_size": args.batch_size,
            "repeats": args.repeats,
            "mode": "gate",
            "template": "PAPER_TEMPLATE",
        },  # fmt: skip
        "speedup": headline.get("speedup", ranking["float32"]["speedup"]),
        "max_abs_diff": ranking["float32"]["max_abs_diff"],
        "ranking": ranking,
        "test_set": test_set,
    }
    print("\n".join(save_results("ranking", out, render, TITLE)))


if __name__ == "__main__":
    main()
