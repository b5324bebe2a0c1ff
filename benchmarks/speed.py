"""Speed and memory of CCF-LLM on this machine: training throughput, MFU, fusion overhead, scoring, peak memory.

    python benchmarks/speed.py [--data_dir ../shared/data/ml-1m] [--threads 2] [--dtype auto]

SmolLM2-135M-Instruct in the chosen dtype (`--dtype`, default `auto`: bf16 where the CPU runs it natively, fp32
elsewhere, `ccf_llm.precision.resolve_dtype`), `gate` mode with random 64-d CF tables, the paper's template (§3.2)
with 10 history items on ML-1M rows. Writes this CPU kind's entry of `benchmarks/results/speed.json` and `.md`
(`report.save_results`: the other kinds' figures stay) with the run's `provenance` (CPU kind and capability, dtype),
`dtype` and:

* `peak_tflops`: the fastest matmul in the chosen dtype seen in the run: the best sample of a 3072² matmul
  (`PeakProbe`), sampled after every training step and after each ceiling round, or of the decoder layer's own
  matmul shapes (timed for `mfu_ceiling`), whichever is faster; `peak_tflops_samples` shows how much it moves on
  this shared machine. Every MFU below is against this peak;
* `train_tokens_per_s`, `mfu`: stage-1 LoRA training with `CCFTrainer` (batch `--batch`, group_by_length): the
  median over the steps after the `--warmup` ones (the first holds the compilation, shorter when torch's on-disk
  compile cache already holds the graphs of an earlier run; the compiled layers also recompile once for each new
  regime: layer 0's input not requiring grad, a batch without padding, a prompt over 256 tokens) of each step's real
  (unpadded) tokens per second. Three setups (`TRAINING_SETUPS`): `compiled` (`compile_layers=True`,
  `lora_dropout=0`, `attn_implementation="eager"`), `compiled_sdpa` (the same with SDPA) and `defaults`; the
  top-level figures are `compiled`'s, `training_setups` has all three with every step's seconds, tokens and peak
  sample. With the LLM frozen, a token costs a forward (2N) and the backward through the activations (2N),
  N = non-embedding parameters: `mfu` = tokens/s x 4N / peak; `mfu_6n` uses the usual 6N of full fine-tuning for
  comparison. Attention scores are not counted. `mfu_ceiling`: a decoder layer's own matmuls (forward x W and
  backward dy W^T of every linear layer, at the benchmark's tokens per step), best of `--repeats` rounds, over the
  peak: the MFU that zero time outside these matmuls would give. `step_profile` (per setup): the fastest of three
  more profiled forward + backward (compiled kernels profiled by name), split into the linear layers' matmuls,
  attention's own kernels (batched matmuls and softmax, or SDPA's) and the rest, with the linear matmuls' TFLOP/s
  inside training; `mfu_bound_at_training_matmul_speed`: the compiled setup's linear-matmul TFLOP/s over the peak,
  the MFU if everything but its linear matmuls took no time; `mfu_bound_matmuls_and_attention`: the MFU of its
  profiled step had it taken only the time of its matmul and attention kernels (norms, RoPE, SiLU, casts and Python
  free);
* `peak_rss_mb`: the process's peak resident memory after training the `compiled` setup (model load included),
  the first thing it does;
* `fusion_overhead`: fused (`gate`) forward+backward time / plain LLM on the same 8 x 256 tokens, from the parts
  (`fusion_overhead_whole_steps`: from whole steps; as `benchmarks/fusion_overhead.py`, in the chosen dtype only;
  goal <= 1.05);
* `score_prompts_per_s`: scoring the first `--score_rows` ML-1M test rows with `ccf_llm.score_rows` (prefix
  cache, batches of 64), and with full prompts (`full_prompt_score_prompts_per_s`).
"""

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fusion_overhead import compared_steps, measure  # noqa: E402
from ranking import build  # noqa: E402
from report import dtype_name, provenance, save_results  # noqa: E402

from ccf_llm import DEFAULT_LLM, CCFDataCollator, score_rows  # noqa: E402
from ccf_llm.data import id_counts, item_titles, load_movielens_1m  # noqa: E402
from ccf_llm.precision import DTYPE_NAMES, resolve_dtype  # noqa: E402
from ccf_llm.trainer_ccf_llama import CCFTrainer, CCFTrainingArguments, add_lora  # noqa: E402

# decoder layers compiled in place, without LoRA dropout (its random masks cost more than the LoRA matmuls on CPU),
# with eager attention, which the compiler turns into matmuls and a fused softmax (the fast setup, trained first
# so that the peak RSS is its own); the same with SDPA, whose CPU flash kernel (forward and backward) takes half of a
# compiled step; the library defaults. (`flex_attention`, which would skip the causal mask's empty half, has no CPU
# backward in torch 2.13.) `attn_implementation` goes to `load_llm`, the rest to `CCFTrainingArguments`.
TRAINING_SETUPS = {
    "compiled": {"lora_dropout": 0.0, "compile_layers": True, "attn_implementation": "eager"},
    "compiled_sdpa": {"lora_dropout": 0.0, "compile_layers": True},
    "defaults": {"lora_dropout": 0.05, "compile_layers": False},
}


def matmul_tflops(a: torch.Tensor, b: torch.Tensor, repeats: int = 3) -> float:
    """Best TFLOP/s of `a @ b` over `repeats` timed calls, after an untimed one."""
    a @ b
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] / best / 1e12


class PeakProbe:
    """The matmul peak in `dtype` (a 3072² matmul), sampled again at every call and kept in `samples`.

    This machine's matmul speed is not steady (a shared VM: the same matmul runs at about 0.8 or about 2 TFLOP/s from
    one minute to the next, while training throughput barely moves), so the peak is the best of many samples taken
    all through the run rather than one measurement."""

    def __init__(self, dtype: torch.dtype, n: int = 3072):
        self.a, self.b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        self.samples = []

    def __call__(self) -> float:
        self.samples.append(matmul_tflops(self.a, self.b))
        return self.samples[-1]


class StepTimer(TrainerCallback):
    """Each training step's seconds, then a `PeakProbe` sample (outside the timed step)."""

    def __init__(self, probe: PeakProbe):
        self.probe, self.times, self.peaks, self._start = probe, [], [], None

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.times.append(time.perf_counter() - self._start)
        self.peaks.append(self.probe())


def layer_matmul_tflops(model, tokens: int, dtype: torch.dtype) -> tuple[float, float]:
    """TFLOP/s in `dtype` of one decoder layer's own matmuls at `tokens` rows: forward x @ W and backward dy @ W^T of
    every linear layer, FLOP-weighted, and the fastest of these shapes. Divided by the peak, the first bounds the MFU
    that training could reach if everything but these matmuls took no time."""
    flops, seconds, fastest = 0, 0.0, 0.0
    for linear in (m for m in model.language_model.layers[0].modules() if isinstance(m, torch.nn.Linear)):
        out_features, in_features = linear.weight.shape
        weight = torch.randn(out_features, in_features, dtype=dtype)
        for x, w in ((torch.randn(tokens, in_features, dtype=dtype), weight.T),
                     (torch.randn(tokens, out_features, dtype=dtype), weight)):  # fmt: skip
            shape_flops, shape_tflops = 2 * x.shape[0] * w.shape[0] * w.shape[1], matmul_tflops(x, w, 5)
            flops, seconds = flops + shape_flops, seconds + shape_flops / (shape_tflops * 1e12)
            fastest = max(fastest, shape_tflops)
    return flops / seconds / 1e12, fastest


MATMULS = ("aten::mm", "aten::addmm")  # the profiler's names of the linear layers' matmuls


def matmul_flops(event) -> int:
    """
    FLOPs of a profiled `aten::mm` (inputs [M, K], [K, N]) or `aten::addmm` (bias, [M, K], [K, N]) event of
    `key_averages(group_by_input_shape=True)`: 2·M·K·N per call, from its recorded input shapes. torch.profiler's
    `with_flops=True` counts the same, but with it one profiled fp32 step of the `defaults` setup grew the process by
    9 GB (AVX2 machine with 24 GB: the run was killed for memory); with input shapes alone, 1-4 GB per step, so
    `profile_step` records them in one step per setup.
    """
    first, second = event.input_shapes[event.key == "aten::addmm" :][:2]
    return 2 * first[0] * first[1] * second[1] * event.count


def profile_step(trainer, repeats: int = 3) -> dict:
    """Where a forward + backward of `trainer` on its batch of median length goes, the fastest of `repeats` profiled
    ones (torch.profiler; compiled kernels show under their own names when
    `torch._inductor.config.cpp.enable_kernel_profile` is on): the shares of its time in the linear layers' matmuls
    (aten::mm / addmm), in attention's own kernels (its batched matmuls, softmax forward and backward, compiled or
    not, or SDPA's kernels) and elsewhere (norms, RoPE, SiLU, casts, Python), and the TFLOP/s that the linear layers'
    matmuls reach inside training (their FLOPs counted once from input shapes, `matmul_flops`: a step with input
    shapes recorded is not timed, recording them costs time and memory)."""
    # the batch of median length (group_by_length puts the longest first), run once first, with input shapes, which
    # also takes any recompilation its shape causes in the compiled layers out of the timed steps
    batches = sorted(trainer.get_train_dataloader(), key=lambda b: int(b["attention_mask"].sum()))
    batch = trainer._prepare_inputs(batches[len(batches) // 2])
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True
    ) as counted:
        trainer.compute_loss(trainer.model, batch).backward()
    flops = sum(matmul_flops(e) for e in counted.key_averages(group_by_input_shape=True) if e.key in MATMULS)
    del counted
    profiles = []
    for _ in range(repeats):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            trainer.compute_loss(trainer.model, batch).backward()
        events = profiler.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        matmuls = [e for e in events if e.key in MATMULS]
        matmul = sum(e.self_cpu_time_total for e in matmuls)
        attention = sum(
            e.self_cpu_time_total
            for e in events
            if e.key == "aten::bmm"
            or ("softmax" in e.key and "log_softmax" not in e.key)
            or "scaled_dot_product" in e.key
        )
        profiles.append({
            "seconds": round(total / 1e6, 3),
            "tokens": int(batch["attention_mask"].sum()),
            "matmul_share": round(matmul / total, 3),
            "attention_share": round(attention / total, 3),
            "other_share": round(1 - (matmul + attention) / total, 3),
            "matmul_tflops": round(flops / matmul / 1e6, 3),
        })  # fmt: skip
    return min(profiles, key=lambda p: p["seconds"])


def non_embedding_parameters(model) -> int:
    embeddings = model.get_input_embeddings().weight.numel()
    return (
        sum(p.numel() for name, p in model.language_model.named_parameters() if "lora_" not in name)
        - embeddings
    )


TITLE = "Speed and memory (SmolLM2-135M-Instruct, `gate`, paper template)"
SETUP_KEYS = ("lora_dropout", "compile_layers", "attn_implementation")


def render(out: dict) -> list[str]:
    """The markdown table of one CPU kind's `out` (as written to speed.json)."""
    samples, training = out["peak_tflops_samples"], out["training_setups"]
    batch, tokens_per_step = out["settings"]["batch"], out["train_tokens_per_step"]
    return [
        "| metric | value | goal |",
        "|---|---|---|",
        f"| {out['dtype']} matmul peak: the fastest seen, of {samples['count']} samples of a 3072² matmul (best "
        f"{samples['max']}, median {samples['median']}, min {samples['min']}) and the decoder layer's own shapes "
        f"(best {samples['fastest_layer_shape']}) | {out['peak_tflops']} TFLOP/s | |",
        *(
            f"| LoRA training, {name} ({', '.join(f'{k}={t[k]}' for k in SETUP_KEYS if k in t)}; batch "
            f"{batch}, {tokens_per_step:.0f} tokens/step) | {t['tokens_per_s']} tokens/s "
            f"({t['seconds_per_step']:.2f} s/step median, mean {t['mean_seconds_per_step']:.2f}; first step "
            f"{t['first_step_seconds']} s), MFU {t['mfu']:.3f} | |"
            for name, t in training.items()
        ),
        f"| MFU of the compiled setup (4N per token; 6N convention in brackets) | {out['mfu']:.3f} "
        f"({out['mfu_6n']:.3f}) | >= 0.40 |",
        f"| MFU ceiling: a decoder layer's own matmul shapes ({tokens_per_step:.0f} rows, fwd + bwd) over the "
        f"peak, i.e. the MFU if nothing else took time | {out['mfu_ceiling']:.3f} | |",
        *(
            f"| where a {name} step goes (fastest of 3 profiled steps, {t['step_profile']['tokens']} tokens, "
            f"{t['step_profile']['seconds']} s): linear layers' matmuls {t['step_profile']['matmul_share']:.0%} at "
            f"{t['step_profile']['matmul_tflops']} TFLOP/s, attention kernels "
            f"{t['step_profile']['attention_share']:.0%}, other {t['step_profile']['other_share']:.0%} | | |"
            for name, t in training.items()
        ),
        f"| MFU bound at the matmul speed reached inside compiled training (the MFU if nothing but the linear layers' "
        f"matmuls took time) | {out['mfu_bound_at_training_matmul_speed']:.3f} | |",
        f"| MFU bound with PyTorch's CPU attention (the compiled setup's profiled step if only its matmul and "
        f"attention kernels took time) | {out['mfu_bound_matmuls_and_attention']:.3f} | |",
        f"| peak RSS of training (compiled setup, model load included) | {out['peak_rss_mb']} MB | |",
        f"| fusion overhead, gate / plain LLM, fwd+bwd 8 x 256, from the parts (whole steps: fastest rounds "
        f"{out['fusion_overhead_whole_steps']['best']:.3f}, median of per-round ratios "
        f"{out['fusion_overhead_whole_steps']['median_per_round']:.3f}) | {out['fusion_overhead']:.3f} | <= 1.05 |",
        f"| test-set scoring, prefix cache (`score_rows`) | {out['score_prompts_per_s']} prompts/s | |",
        f"| test-set scoring, full prompts | {out['full_prompt_score_prompts_per_s']} prompts/s | |",
    ]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--score_rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=DTYPE_NAMES,
        help="weights and peak dtype; auto: bf16 where native, else fp32",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = resolve_dtype(args.dtype)
    splits = load_movielens_1m(args.data_dir)
    titles = item_titles(splits)
    num_users, num_items = id_counts(splits)

    # 1. training throughput and peak memory (first, so the RSS peak is training's)
    rows = splits["train"].shuffle(seed=0).select(range(args.batch * args.steps))

    def trained(setup: dict, max_steps: int, callbacks=()):
        """A `CCFTrainer` of `setup` after `max_steps` steps, and the real tokens of each step's batch."""
        model, processor = build(dtype, num_users, num_items, titles, setup.get("attn_implementation"))
        training_args = CCFTrainingArguments(
            output_dir="outputs/speed", stage="lora", per_device_train_batch_size=args.batch, max_steps=max_steps,
            learning_rate=2e-3, report_to="none", use_cpu=True, save_strategy="no", logging_strategy="no",
            disable_tqdm=True, train_sampling_strategy="group_by_length", seed=0,
            **{k: v for k, v in setup.items() if k != "attn_implementation"},
        )  # fmt: skip
        collator, step_tokens = CCFDataCollator(processor.tokenizer.pad_token_id), []

        def collate(features):
            batch = collator(features)
            step_tokens.append(int(batch["attention_mask"].sum()))
            return batch

        trainer = CCFTrainer(model=add_lora(model, training_args), args=training_args,
                             train_dataset=processor.process_dataset(rows), data_collator=collate,
                             callbacks=list(callbacks))  # fmt: skip
        trainer.train()
        return trainer, step_tokens

    probe, training, peak_rss_mb = PeakProbe(dtype), {}, None
    for name, setup in TRAINING_SETUPS.items():
        timer = StepTimer(probe)
        trainer, step_tokens = trained(setup, args.steps, [timer])
        if len(step_tokens) != len(timer.times):
            raise RuntimeError(f"{len(step_tokens)} batches collated for {len(timer.times)} timed steps")
        n_params = non_embedding_parameters(trainer.model.get_base_model())
        tokens_per_step = statistics.mean(step_tokens)
        steady = range(args.warmup, len(timer.times))
        training[name] = {
            **setup,
            "tokens_per_s": round(statistics.median(step_tokens[i] / timer.times[i] for i in steady), 1),
            "seconds_per_step": round(statistics.median(timer.times[i] for i in steady), 3),
            "mean_seconds_per_step": round(statistics.mean(timer.times[i] for i in steady), 3),
            "first_step_seconds": round(timer.times[0], 1),
            "step_seconds": [round(t, 2) for t in timer.times],
            "step_tokens": step_tokens,
            "step_peak_tflops": [round(p, 3) for p in timer.peaks],
        }  # fmt: skip
        print(f"training ({name}): {training[name]}", flush=True)
        del trainer
        if peak_rss_mb is None:  # the first setup's (the process's memory does not shrink back after it)
            peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # compiled kernels profiled by name (in the profiled runs only), which needs the layers compiled again
    torch._inductor.config.cpp.enable_kernel_profile = True
    torch._dynamo.reset()
    for name, setup in TRAINING_SETUPS.items():  # after the RSS peak: the profiler's records take memory
        trainer, _ = trained(setup, args.warmup)
        training[name]["step_profile"] = profile_step(trainer)
        del trainer
    model, _ = build(dtype, num_users, num_items, titles)
    # the layer's matmul shapes, best of several rounds like the peak (interleaving does not cancel the drift: the
    # 3072² probe slows down more than these smaller matmuls do)
    layer_tflops, layer_fastest = [], []
    for _ in range(args.repeats):
        aggregate, fastest = layer_matmul_tflops(model, round(tokens_per_step), dtype)
        layer_tflops.append(aggregate)
        layer_fastest.append(fastest)
        probe()
    del model
    peak = max(probe.samples + layer_fastest)  # the fastest matmul in `dtype` seen in the run
    for setup in training.values():
        setup["mfu"] = round(setup["tokens_per_s"] * 4 * n_params / (peak * 1e12), 4)
    fast = training["compiled"]
    profile = fast["step_profile"]
    matmul_bound = profile["matmul_tflops"] / peak
    kernel_seconds = profile["seconds"] * (profile["matmul_share"] + profile["attention_share"])
    attention_bound = profile["tokens"] * 4 * n_params / kernel_seconds / (peak * 1e12)
    print(f"peak {peak:.2f} TFLOP/s; samples {statistics.median(probe.samples):.2f} median", flush=True)

    # 2. fusion overhead, in the chosen dtype, 8 x 256 tokens
    steps = compared_steps(DEFAULT_LLM, dtype, 8, 256, num_users, num_items)
    fusion = measure(steps, args.repeats)
    del steps
    print(f"fusion overhead {fusion['gate_vs_llm']}", flush=True)

    # 3. scoring throughput on test rows
    model, processor = build(dtype, num_users, num_items, titles)
    test = splits["test"].select(range(min(args.score_rows, len(splits["test"]))))
    users, items, histories = (
        np.array(test["user_id"]),
        np.array(test["item_id"]),
        test.data.column("history"),
    )
    start = time.perf_counter()
    score_rows(model, processor, users, histories, items, batch_size=64, strategy="prefix_cache")
    cached_s = time.perf_counter() - start
    start = time.perf_counter()
    score_rows(model, processor, users, histories, items, batch_size=64, strategy="full")
    full_s = time.perf_counter() - start

    out = {
        "provenance": provenance(dtype),
        "dtype": dtype_name(dtype),
        "peak_tflops": round(peak, 3),
        "peak_tflops_samples": {
            "min": round(min(probe.samples), 3),
            "median": round(statistics.median(probe.samples), 3),
            "max": round(max(probe.samples), 3),
            "count": len(probe.samples),
            "fastest_layer_shape": round(max(layer_fastest), 3),
        },
        "train_tokens_per_s": fast["tokens_per_s"],
        "train_seconds_per_step": fast["seconds_per_step"],
        "train_tokens_per_step": round(tokens_per_step, 1),
        "non_embedding_parameters": n_params,
        "mfu": fast["mfu"],
        "mfu_6n": round(fast["tokens_per_s"] * 6 * n_params / (peak * 1e12), 4),
        "mfu_ceiling": round(max(layer_tflops) / peak, 4),
        "mfu_bound_at_training_matmul_speed": round(matmul_bound, 4),
        "mfu_bound_matmuls_and_attention": round(attention_bound, 4),
        "training_setups": training,
        "peak_rss_mb": round(peak_rss_mb, 1),
        "fusion_overhead": fusion["gate_vs_llm"]["from_parts"],
        "fusion_overhead_whole_steps": {k: v for k, v in fusion["gate_vs_llm"].items() if k != "from_parts"},
        "fusion_overhead_times_s": {k: [round(t, 4) for t in v] for k, v in fusion["times"].items()},
        "score_prompts_per_s": round(len(items) / cached_s, 1),
        "full_prompt_score_prompts_per_s": round(len(items) / full_s, 1),
        "settings": {
            "batch": args.batch,
            "steps": args.steps,
            "warmup_steps_excluded": args.warmup,
            "step_time": "median of the steps after the warmup ones",
            "stage": "lora (r=8, q_proj/v_proj); train_tokens_per_s and mfu: the `compiled` setup",
            "template": "PAPER_TEMPLATE",
            "history_size": 10,
            "score_rows": len(items),
        },  # fmt: skip
    }
    lines = save_results("speed", out, render, TITLE)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
