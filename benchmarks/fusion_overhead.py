"""Forward+backward time of the fused CCF-LLM against the plain LLM on the same 8 x 256-token batch.

    python benchmarks/fusion_overhead.py [--batch 8] [--length 256] [--repeats 9] [--threads 2]

Three models on identical token ids, every parameter trainable, in fp32 and, where the CPU runs it natively
(`ccf_llm.precision.device_precision`), bf16; elsewhere bf16 is recorded as skipped, never run. Each round runs
one step of each model (rotating the order). This shared machine's speed swings by ±30 % within seconds, so
whole-step ratios (of the fastest rounds, `best`, or medians of per-round ratios) move by 5-10 % from run to run,
more than the overhead measured. `from_parts` measures it directly: the step of `gate` is the step of `text`
except for its embedding stage (ALG + GATE, Eq. 2-4), timed alone forward and backward 5 x `--repeats` times; its
fastest extra time over `text`'s embedding lookup, added to the baseline's fastest step, over that step:

* `llm`: the plain `LlamaForCausalLM` with `logits_to_keep=1` and cross-entropy on the last position;
* `text`: `CCFLlamaForCTR` in `text` mode (no CF: same LLM, Yes/No head and Eq. 5 loss);
* `gate`: `CCFLlamaForCTR` in `gate` mode: one user placeholder and ~35% of the tokens in item titles fused (Eq. 4).

Writes this CPU kind's entry of `benchmarks/results/fusion_overhead.json` and `.md` (`report.save_results`: the
other kinds' figures stay), with the run's `provenance`.
"""

import argparse
import statistics
import time

import torch
from report import dtype_name, provenance, save_results

from ccf_llm import DEFAULT_LLM, CCFLlamaForCTR, load_llm
from ccf_llm.precision import device_precision

TITLE = "Fusion overhead: forward+backward, fused CCF-LLM vs plain LLM"


def synthetic_batch(model, batch, length, num_users, num_items, generator):
    """Random prompt tokens; per row one user placeholder and 10 titles of 9 tokens (35% of 256) marked."""
    cfg = model.config
    input_ids = torch.randint(100, 40000, (batch, length), generator=generator)
    token_item_ids = torch.zeros_like(input_ids)
    starts = 20 + torch.arange(10) * 20
    for (
        start
    ) in starts.tolist():  # 10 title spans per row, same layout in every row (setup, not a forward pass)
        token_item_ids[:, start : start + 9] = torch.randint(
            1, num_items + 1, (batch, 1), generator=generator
        )
    input_ids[:, 5] = cfg.user_token_id
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "user_ids": torch.randint(1, num_users + 1, (batch,), generator=generator),
        "token_item_ids": token_item_ids,
        "labels": torch.randint(0, 2, (batch,), generator=generator).float(),
    }


def make_steps(llm, text, gate, batch, text_batch) -> dict:
    """One training step (zero grads, forward, backward) of each compared model, and of the embedding stage alone
    (`embed_hybrid_prompt` forward, backward of a fixed upstream gradient) of `text` and `gate`."""

    def step_llm():
        llm.zero_grad(set_to_none=True)
        logits = llm(input_ids=text_batch["input_ids"], logits_to_keep=1).logits[:, -1].float()
        torch.nn.functional.cross_entropy(logits, text_batch["labels"].long()).backward()

    def step_model(model, inputs):
        def step():
            model.zero_grad(set_to_none=True)
            model(**inputs).loss.backward()

        return step

    def step_embedding(model, inputs):
        keys = ("input_ids", "user_ids", "token_item_ids", "attention_mask")
        upstream = torch.randn(*inputs["input_ids"].shape, model.config.text_config.hidden_size,
                               generator=torch.Generator().manual_seed(0)).to(model.dtype)  # fmt: skip

        def step():
            model.zero_grad(set_to_none=True)
            model.embed_hybrid_prompt(**{k: inputs[k] for k in keys if k in inputs}).backward(upstream)

        return step

    return {
        "llm": step_llm,
        "text": step_model(text, text_batch),
        "gate": step_model(gate, batch),
        "text_embedding": step_embedding(text, text_batch),
        "gate_embedding": step_embedding(gate, batch),
    }


def compared_steps(llm_name, dtype, batch_size, length, num_users, num_items) -> dict:
    """The plain LLM, CCF `text` and CCF `gate` (random 128-d CF tables, random GATE) and their steps (`make_steps`)."""
    llm, tokenizer = load_llm(llm_name, dtype=dtype)
    torch.manual_seed(0)
    cf = {
        "user_embeddings": torch.randn(num_users + 1, 128),
        "item_embeddings": torch.randn(num_items + 1, 128),
    }
    gate = CCFLlamaForCTR.from_llm(
        llm, tokenizer, num_users, num_items, fusion_mode="gate", zero_init_gate=False, **cf
    ).to(dtype)
    text = CCFLlamaForCTR.from_llm(llm, tokenizer, num_users, num_items, fusion_mode="text").to(dtype)
    batch = synthetic_batch(gate, batch_size, length, num_users, num_items, torch.Generator().manual_seed(0))
    text_batch = {k: v for k, v in batch.items() if k not in ("user_ids", "token_item_ids")}
    text_batch["input_ids"] = text_batch["input_ids"].clamp(max=40000)  # no placeholder in text mode
    text_batch["input_ids"][:, 5] = 42
    return make_steps(llm, text, gate, batch, text_batch)


def time_interleaved(steps: dict, repeats: int) -> dict:
    """Time each step `repeats` times, rotating the order every round so drift hits all models alike."""
    for step in steps.values():
        step()  # warm-up
    names = list(steps)
    times = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    return times


def measure(steps: dict, repeats: int) -> dict:
    """Times of `make_steps`' steps (whole steps: `repeats` rounds; embedding stages: 5 x `repeats`, they are short)
    and `gate`'s step time over `llm`'s and over `text`'s, three ways: `from_parts` (the baseline's fastest round plus
    the extra time of `gate`'s embedding stage over `text`'s, fastest rounds, over the baseline's fastest round),
    `best` (ratio of fastest rounds) and `median_per_round` (median of per-round ratios)."""
    whole = ("llm", "text", "gate")
    times = time_interleaved({k: steps[k] for k in whole}, repeats)
    times |= time_interleaved({k: v for k, v in steps.items() if k not in whole}, 5 * repeats)
    extra = min(times["gate_embedding"]) - min(times["text_embedding"])
    ratios = {
        f"gate_vs_{base}": {
            "from_parts": round(1 + extra / min(times[base]), 4),
            "best": round(min(times["gate"]) / min(times[base]), 4),
            "median_per_round": round(
                statistics.median(g / b for g, b in zip(times["gate"], times[base], strict=True)), 4
            ),
        }
        for base in ("llm", "text")
    }
    return {"times": times, **ratios}


def render(out: dict) -> list[str]:
    """The markdown of one CPU kind's `out` (as written to fusion_overhead.json): settings, then one row per dtype."""
    lines = [
        f"Batch {out['batch']} x {out['length']} tokens, SmolLM2-135M-Instruct, all parameters trainable, "
        f"{out['repeats']} interleaved rounds; times are medians. Ratios: from the parts (the baseline's fastest step "
        "plus the fastest extra time of `gate`'s embedding stage over `text`'s; the rest of the step is the same LLM "
        "on the same tokens), then the ratio of whole steps' fastest rounds and the median of per-round ratios.",
        "",
        "| dtype | plain LLM (s) | CCF `text` (s) | CCF `gate` (s) | embedding stage, text / gate (ms) | "
        "gate / LLM: parts, best, median | gate / text: parts, best, median |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in out["results"].items():
        if "skipped" in row:
            lines.append(f"| {name} | skipped: {row['skipped']} | | | | | |")
            continue
        lines.append(
            f"| {name} | {row['llm_s']:.3f} | {row['text_s']:.3f} | {row['gate_s']:.3f} | "
            f"{1e3 * min(row['text_embedding_all_s']):.1f} / {1e3 * min(row['gate_embedding_all_s']):.1f} | "
            + " | ".join(
                ", ".join(
                    f"{row[f'gate_vs_{base}'][k]:.3f}" for k in ("from_parts", "best", "median_per_round")
                )
                for base in ("llm", "text")
            )
            + " |"
        )
    return lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--llm", default=DEFAULT_LLM)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    num_users, num_items = 838, 3255
    found = device_precision("cpu")
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        name = dtype_name(dtype)
        if dtype == torch.bfloat16 and not found.native_bf16:  # bf16 runs orders of magnitude slower there
            results[name] = {"skipped": f"no native bf16: {found.reason}"}
            continue
        steps = compared_steps(args.llm, dtype, args.batch, args.length, num_users, num_items)
        measured = measure(steps, args.repeats)
        row = {}
        for label, values in measured.pop("times").items():
            row[f"{label}_s"] = round(statistics.median(values), 4)
            row[f"{label}_all_s"] = [round(t, 4) for t in values]
            print(f"{name:9s} {label:14s} median {statistics.median(values):.4f}s", flush=True)
        row |= measured
        results[name] = row
        del steps
    measured_dtypes = ", ".join(name for name, row in results.items() if "skipped" not in row)
    out = {
        "provenance": provenance(measured_dtypes),
        "batch": args.batch,
        "length": args.length,
        "repeats": args.repeats,
        "results": results,
    }
    lines = save_results("fusion_overhead", out, render, TITLE)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
