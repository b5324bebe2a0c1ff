"""Matmul speed of this CPU in fp32 and bf16, side by side: the figures behind `--dtype auto`'s choice.

    python benchmarks/matmul_peak.py [--samples 30] [--threads 2]

Interleaves `--samples` rounds of each dtype (so both see the same moments of this shared VM) on three shapes: a 3072²
matmul (`speed.PeakProbe`, the peak every MFU in `speed.md` is against) and the largest matmul of SmolLM2-135M's
training step (3,322 tokens x 576 @ 576 x 1,536, the MLP's up projection at `speed.py`'s tokens per step), and a
512² matmul. Where bf16 is not native (`ccf_llm.precision.device_precision`: AVX2-only CPUs, where it runs over 100x
slower, 116x on the 512² matmul in `matmul_peak.md`, so a 3072² bf16 matmul would take minutes) bf16 is timed on the
512² matmul only. Each sample is the best of 3 timed calls after an untimed one (`speed.matmul_tflops`). Writes this
CPU kind's entry of `benchmarks/results/matmul_peak.{json,md}` with every sample, best, median and min per dtype and
shape, and the bf16/fp32 ratio of the medians. Takes about a minute on two cores; run it with nothing else
computing.
"""

import argparse
import statistics

import torch
from report import provenance, save_results
from speed import matmul_tflops

from ccf_llm.precision import device_precision

SHAPES = {
    "3072x3072 @ 3072x3072": ((3072, 3072), (3072, 3072)),
    "3322x576 @ 576x1536": ((3322, 576), (576, 1536)),
    "512x512 @ 512x512": ((512, 512), (512, 512)),
}
SMALL = "512x512 @ 512x512"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def render(entry: dict) -> list[str]:
    lines = [
        f"{entry['samples']} interleaved samples per dtype and shape, each the best of 3 timed calls; TFLOP/s.",
        "",
        "| shape | fp32 best | fp32 median | bf16 best | bf16 median | bf16 / fp32 (medians) |",
        "|---|---|---|---|---|---|",
    ]
    for shape, r in entry["shapes"].items():
        cells = [
            f"{r[name][stat]:.3f}" if name in r else "not timed"
            for name in DTYPES
            for stat in ("best", "median")
        ]
        ratio = f"{r['bf16_over_fp32']:.3g}x" if "bf16_over_fp32" in r else ""
        lines.append(f"| {shape} | {' | '.join(cells)} | {ratio} |")
    if not entry["native_bf16"]:
        lines += ["", "bf16 is not native here: it was timed on the 512² matmul only."]
    return lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--samples", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = device_precision("cpu").native_bf16
    shapes = {}
    for shape, (a_shape, b_shape) in SHAPES.items():
        timed = {name: d for name, d in DTYPES.items() if native or shape == SMALL or d == torch.float32}
        operands = {
            name: (torch.randn(a_shape, dtype=d), torch.randn(b_shape, dtype=d)) for name, d in timed.items()
        }
        samples = {name: [] for name in timed}
        for _ in range(args.samples):
            for name, (a, b) in operands.items():
                samples[name].append(round(matmul_tflops(a, b), 4))
        shapes[shape] = {
            name: {"best": max(s), "median": statistics.median(s), "min": min(s), "samples": s}
            for name, s in samples.items()
        }
        if "bfloat16" in samples:
            shapes[shape]["bf16_over_fp32"] = statistics.median(samples["bfloat16"]) / statistics.median(
                samples["float32"]
            )
    entry = {
        "provenance": provenance("float32, bfloat16"),
        "samples": args.samples,
        "native_bf16": native,
        "shapes": shapes,
    }
    print("\n".join(save_results("matmul_peak", entry, render, "Matmul speed in fp32 and bf16 on this CPU")))


if __name__ == "__main__":
    main()
