"""What the demo would need: validation AUC of `text` and `gate` against training rows, beside the CF model's.

    python benchmarks/demo_curves.py [CONFIG] [--train_rows 4000] [--eval_steps 50] [--dtype auto]
    python benchmarks/demo_curves.py --standardize_cf --fusion_learning_rates --output_dir outputs/demo_curves_std \
        --results_name demo_curves_standardize_cf    # the same with ALG's inputs standardized (as on ML-1M)

Runs `examples/run_ctr.py CONFIG` (default the README's demo) in a fresh process with more training rows per stage
than the demo spends (`--train_rows`; the demo's log has 8,400) and an evaluation every `--eval_steps` optimizer
steps on all validation rows, the rows the CF model's validation AUC is computed on. Then reads each stage's
`stage_log.json` (`learning_curves.stage_evaluations`) and records in `benchmarks/results/demo_curves.{json,md,png}`
(this CPU kind's entry): the curves, the CF line, the rows at which `gate` first reaches `text` and the CF model,
and the final test AUC of every mode. The demo itself is unchanged: this measures what a longer budget buys.
`--standardize_cf` passes `--standardize_cf true` (the ML-1M configs' setting); `--results_name` names the results
files (default `demo_curves`).
"""

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from learning_curves import hanley_mcneil_se, stage_evaluations
from report import RESULTS, checkout_env, provenance, save_results

from ccf_llm.precision import device_precision, resolve_dtype

TITLE = "The demo with a longer budget: validation AUC against training rows (synthetic log, SmolLM2-135M)"


def collect(output_dir: Path, modes: list[str], rows_per_step: int) -> tuple[dict, dict]:
    """(mode -> points over both stages, training rows counted from the start of stage 1; mode -> stage -> its
    record: seconds, validation AUC at its start and end, whether the trainer rolled it back)."""
    curves, stages = {}, {}
    for mode in modes:
        offset, points = 0, []
        for folder in sorted((output_dir / mode).glob("stage_*")):
            found = stage_evaluations(folder)
            if not found:
                continue
            record = json.loads((folder / "stage_log.json").read_text())
            stages.setdefault(mode, {})[folder.name] = {
                k: record.get(k) for k in ("seconds", "start_eval_auc", "end_eval_auc", "rolled_back")
            }
            evals = list(
                {e["step"]: e for e in found[0]}.values()
            )  # the end-of-stage evaluation repeats the last
            stage = folder.name.split("_", 2)[2]
            points += [
                {**e, "stage": stage, "training_rows": offset + e["step"] * rows_per_step} for e in evals
            ]
            offset = points[-1]["training_rows"]
        curves[mode] = points
    return curves, stages


def test_comparison(
    output_dir: Path, modes: list[str], cf_folder: Path, eval_rows: int | None = None, seed: int = 0
) -> dict:
    """Test AUC with 95% intervals (bootstrap over users) of the CF model and every mode, `gate` paired against
    `text` and the CF model, on all test rows and on the warm and item-cold rows of `run_ctr.py`'s table
    (`ccf_llm.data.warm_cold_masks` with `cold="item"`: items absent from train). The CF model scores the whole
    test split, the modes `run_ctr.py`'s `--eval_rows` of it, drawn with `--seed` + 1 (`seeded_indices`)."""
    import numpy as np
    import pandas as pd

    from ccf_llm.data import seeded_indices, warm_cold_masks
    from ccf_llm.metrics import user_bootstrap
    from ccf_llm.synthetic import make_demo_log

    cf = pd.read_parquet(cf_folder / "scores_test.parquet")
    frames = {"cf": cf.iloc[seeded_indices(len(cf), eval_rows, seed + 1)].reset_index(drop=True)}
    frames |= {mode: pd.read_parquet(output_dir / mode / "scores_test.parquet") for mode in modes}
    keys = frames["cf"][["user_id", "item_id", "label"]].to_numpy()
    for name, frame in frames.items():
        if not (frame[["user_id", "item_id", "label"]].to_numpy() == keys).all():
            raise ValueError(f"{name}'s test scores are not over the CF model's test rows")
    warm, cold = warm_cold_masks(keys[:, 0], keys[:, 1], make_demo_log()["train"], cold="item")
    pairs = [(a, b) for a, b in (("gate", "text"), ("gate", "cf")) if a in frames and b in frames]
    out = {}
    for subset, rows in (("all", np.ones(len(keys), bool)), ("warm", warm), ("item-cold", cold)):
        boot = user_bootstrap({name: f["score"].to_numpy()[rows] for name, f in frames.items()}, keys[rows, 2],
                              keys[rows, 0], pairs=pairs)  # fmt: skip
        out[subset] = {"rows": int(rows.sum()), "models": boot["models"], "pairs": boot["pairs"]}
    return out


def true_probability_auc() -> float:
    """
    The AUC of the demo log's true click probabilities (`make_demo_log`'s defaults): the best any model can reach on
    rows of users and items whose genre and cluster it knows. Exact: over the four match cases (genre, cluster),
    each with probability 1 / (num_genres or num_clusters) of matching, P(score of a click > score of a non-click)
    plus half the ties.
    """
    import inspect
    import itertools

    import numpy as np

    from ccf_llm.synthetic import make_demo_log

    d = {k: v.default for k, v in inspect.signature(make_demo_log).parameters.items()}
    cases = [
        ((1 / d["num_genres"]) if g else 1 - 1 / d["num_genres"])
        * ((1 / d["num_clusters"]) if c else 1 - 1 / d["num_clusters"])
        for g, c in itertools.product((0, 1), repeat=2)
    ]
    probs = [
        1 / (1 + np.exp(-(d["base"] + d["genre_weight"] * g + d["cluster_weight"] * c)))
        for g, c in itertools.product((0, 1), repeat=2)
    ]
    pos = np.array([w * p for w, p in zip(cases, probs, strict=True)])
    neg = np.array([w * (1 - p) for w, p in zip(cases, probs, strict=True)])
    pos, neg = pos / pos.sum(), neg / neg.sum()
    wins = sum(pos[i] * neg[j] * (1.0 if probs[i] > probs[j] else 0.5 if i == j else 0.0)
               for i in range(4) for j in range(4))  # fmt: skip
    return float(wins)


def first_at_or_above(points: list[dict], level: float) -> dict | None:
    return next((p for p in points if p["eval_auc"] >= level), None)


def render(entry: dict) -> list[str]:
    pos, neg = entry["class_counts"]
    half = lambda auc: 1.96 * hanley_mcneil_se(auc, pos, neg)  # noqa: E731
    cf = entry["cf"]
    lines = [
        f"It ran `{entry['run_ctr_command']}`: {entry['train_rows']} training rows per stage ({entry['rows_per_step']} per step), "
        f"validation AUC on all {pos + neg} validation rows every {entry['eval_steps']} steps; 95% half-widths "
        f"from Hanley & McNeil's standard error; one seed; {entry['wall_seconds'] / 60:.1f} min wall. The README's "
        f"demo spends {entry['demo_train_rows']} rows per stage. `gate`'s stage 2 runs at the config's fusion learning "
        f"rate ({entry['fusion_learning_rate']:g}) and, from the same stage-1 adapter, at the other rates named. "
        f"`standardize_cf`: {entry.get('standardize_cf', False)}. Curves: "
        f"[{entry.get('results_name', 'demo_curves')}.png]({entry.get('results_name', 'demo_curves')}.png).",
        "",
        f"CF model ({cf['backbone']}) validation AUC **{cf['eval_auc']:.4f}** ± {half(cf['eval_auc']):.3f}, "
        f"test AUC {cf['test_auc']:.4f}.",
        "",
        "| mode | training rows (stage) | validation AUC |",
        "|---|---|---|",
    ]
    for mode, points in entry["curves"].items():
        lines += [
            f"| `{mode}` | {p['training_rows']} ({p['stage']}) | {p['eval_auc']:.4f} ± {half(p['eval_auc']):.3f} |"
            for p in points
        ]
    lines += ["", "Test AUC at the end, 95% intervals from 1000 bootstrap resamples of users; warm rows: user and item "
              "with more than 3 train rows; item-cold rows: items absent from train (the CF model never trained their "
              "embeddings), as in `run_ctr.py`'s table:", "",
              "| rows | " + " | ".join(f"`{m}`" for m in entry["test"]["all"]["models"]) + " | " +
              " | ".join(f"`{p}` [95% CI], p" for p in entry["test"]["all"]["pairs"]) + " |",
              "|---|" + "---|" * (len(entry["test"]["all"]["models"]) + len(entry["test"]["all"]["pairs"]))]  # fmt: skip
    for subset, found in entry["test"].items():
        cells = [
            f"{m['auc']:.3f} [{m['auc_ci'][0]:.3f}, {m['auc_ci'][1]:.3f}]" for m in found["models"].values()
        ]
        cells += [f"{p['auc_diff']:+.3f} [{p['auc_diff_ci'][0]:+.3f}, {p['auc_diff_ci'][1]:+.3f}], p={p['auc_p']:.3f}"
                  for p in found["pairs"].values()]  # fmt: skip
        lines.append(f"| {subset} ({found['rows']}) | " + " | ".join(cells) + " |")
    lines += ["", f"The log's true click probabilities reach AUC {entry['true_probability_auc']:.4f} (the best any model "
              "can do on rows whose genre and cluster it knows: `true_probability_auc`)."]  # fmt: skip
    lines += ["", "Where `gate` first reaches:"]
    lines += [
        f"- {name}: " + (f"at {found} training rows" if isinstance(found, int) else found)
        for name, found in entry["gate_reaches"].items()
    ]
    lines += ["", "| mode | stage | seconds (evaluations included) | validation AUC at start → end | rolled back |",
              "|---|---|---|---|---|"]  # fmt: skip
    for mode, stages in entry["stages"].items():
        lines += [
            f"| `{mode}` | {stage} | {r['seconds']:.0f} | {r['start_eval_auc']:.4f} → {r['end_eval_auc']:.4f} | "
            f"{'**yes**: the stage ended below its start, its weights were restored' if r['rolled_back'] else 'no'} |"
            for stage, r in stages.items()
        ]
    return lines


def plot(entry: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pos, neg = entry["class_counts"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, points in entry["curves"].items():
        xs = [p["training_rows"] / 1000 for p in points]
        ys = [p["eval_auc"] for p in points]
        errs = [1.96 * hanley_mcneil_se(y, pos, neg) for y in ys]
        label = f"`{mode}`" + (f", fusion lr {entry['fusion_learning_rate']:g}" if mode == "gate" else "")
        ax.errorbar(xs, ys, yerr=errs, marker="o", ms=3, capsize=2, label=label)
    ax.axhline(
        entry["cf"]["eval_auc"], color="black", ls="--", lw=1, label=f"CF alone ({entry['cf']['backbone']})"
    )
    ax.axvline(
        entry["demo_train_rows"] / 1000, color="grey", ls=":", lw=1, label="the demo's budget (stage 1)"
    )
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set(xlabel="training rows, stages in sequence (thousands)", ylabel="validation AUC",
           title="Demo log: validation AUC against training rows"
                 + (", standardize_cf" if entry.get("standardize_cf") else ""))  # fmt: skip
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def variant_rates(asked: list[float] | None, config: dict) -> list[float]:
    """The fusion learning rates whose stage 2 runs beside the config's: those `asked`, by default 1e-3 and 1e-4
    less the config's own (its run trains that one)."""
    return [r for r in (0.001, 0.0001) if r != config.get("fusion_learning_rate")] if asked is None else asked


def unrecorded_wall(output_dir: Path) -> float:
    """The wall seconds of a `run_ctr.py` run this script did not time: from its first file (`run_ctr.json`, written
    before anything trains) to its last (`all_results.json`, written after scoring); its variants are not counted."""
    first, last = (Path(output_dir) / name for name in ("run_ctr.json", "all_results.json"))
    return last.stat().st_mtime - first.stat().st_mtime


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default="examples/configs/demo.json")
    parser.add_argument("--train_rows", type=int, default=4000)
    parser.add_argument("--eval_steps", type=int, default=50)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/demo_curves"))
    parser.add_argument("--report_only", action="store_true", help="tabulate a finished run, train nothing")
    parser.add_argument("--standardize_cf", action="store_true", help="run_ctr.py --standardize_cf true")
    parser.add_argument(
        "--results_name", default="demo_curves", help="benchmarks/results/<name>.{json,md,png}"
    )
    parser.add_argument(
        "--fusion_learning_rates", type=float, nargs="*", default=None,
        help="also run gate's stage 2 from the same stage-1 adapter at these fusion learning rates "
        "(into OUTPUT_DIR_fusion_lr<rate>; default 1e-3 and 1e-4, less the config's own, which the run trains)",
    )  # fmt: skip
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    rows_per_step = config["per_device_train_batch_size"] * config.get("gradient_accumulation_steps", 1)
    overrides = ["--train_rows_per_stage", str(args.train_rows), "--eval_strategy", "steps",
                 "--eval_steps", str(args.eval_steps), "--early_stopping_rows", "1000000", "--eval_rows", "1000000",
                 "--overwrite_output_dir", "true"] + (["--dtype", args.dtype] if args.dtype != "auto" else [])  # fmt: skip
    overrides += ["--standardize_cf", "true"] if args.standardize_cf else []
    base = ["python", "examples/run_ctr.py", args.config, *overrides]
    command = [*base, "--output_dir", str(args.output_dir)]
    rates = variant_rates(args.fusion_learning_rates, config)
    variants = {rate: Path(f"{args.output_dir}_fusion_lr{rate:g}") for rate in rates}
    path = RESULTS / f"{args.results_name}.json"
    stored = json.loads(path.read_text())["by_cpu_kind"] if path.is_file() else {}
    stored = stored.get(device_precision().kind)
    # the recorded run's command, date and wall time; for a run this script did not record (stopped after it, in
    # its variants), the time from run_ctr.py's first file to its last
    if args.report_only and stored is not None:
        wall, command, recorded = (
            stored["wall_seconds"],
            stored["run_ctr_command"].split(),
            stored["provenance"],
        )
    elif args.report_only:
        wall, recorded = unrecorded_wall(args.output_dir), provenance(resolve_dtype(args.dtype))
    else:
        start = time.perf_counter()
        subprocess.run([sys.executable, *command[1:]], check=True, env=checkout_env())
        for rate, folder in variants.items():  # stage 2 only, from the main run's CF model and gate stage 1
            subprocess.run([sys.executable, *base[1:], "--output_dir", str(folder), "--fusion_modes", "gate",
                            "--cf_checkpoints", str(next(args.output_dir.glob("cf_*"))), "--fusion_learning_rate",
                            str(rate), "--shared_stage1", str(args.output_dir / "gate" / "stage_1_lora" / "final")],
                           check=True, env=checkout_env())  # fmt: skip
        wall = time.perf_counter() - start
        recorded = provenance(resolve_dtype(args.dtype))
    summary = json.loads((args.output_dir / "all_results.json").read_text())
    cf = json.loads(next(args.output_dir.glob("cf_*/all_results.json")).read_text())
    curves, stages = collect(args.output_dir, list(summary["by_mode"]), rows_per_step)
    for rate, folder in variants.items():
        name = f"gate, fusion lr {rate:g}"
        variant, variant_stages = collect(folder, ["gate"], rows_per_step)
        curves[name] = [{**p, "training_rows": p["training_rows"] + args.train_rows} for p in variant["gate"]]
        stages[name] = variant_stages["gate"]
    from ccf_llm.synthetic import make_demo_log

    labels = make_demo_log()["validation"]["label"]  # run_ctr.py builds the demo log with its defaults
    if not {"text", "gate"} <= set(curves):
        raise ValueError(
            f"{args.config} must train both `text` and `gate` (fusion_modes), not {sorted(curves)}"
        )
    text_best = max(p["eval_auc"] for p in curves["text"])

    def reached(level: float) -> int | str:
        found = first_at_or_above(curves["gate"], level)
        return found["training_rows"] if found else "not reached"

    entry = {
        "provenance": recorded,
        "run_ctr_command": " ".join(command),
        "train_rows": args.train_rows,
        "demo_train_rows": config["train_rows_per_stage"],
        "rows_per_step": rows_per_step,
        "eval_steps": args.eval_steps,
        "fusion_learning_rate": config.get("fusion_learning_rate"),
        "standardize_cf": args.standardize_cf,
        "results_name": args.results_name,
        "wall_seconds": round(wall, 1),
        "class_counts": [int(sum(labels)), len(labels) - int(sum(labels))],
        "cf": {k: cf[k] for k in ("backbone", "eval_auc", "test_auc", "test_uauc")},
        "true_probability_auc": round(true_probability_auc(), 4),
        "curves": curves,
        "test": test_comparison(
            args.output_dir, list(summary["by_mode"]), next(args.output_dir.glob("cf_*"))
        ),
        "stages": stages,
        "final": {
            mode: {k: r[k] for k in ("eval_auc", "test_auc", "test_uauc")}
            for mode, r in summary["by_mode"].items()
        },
        "gate_reaches": {
            f"`text`'s best ({text_best:.4f})": reached(text_best),
            f"the CF model ({cf['eval_auc']:.4f})": reached(cf["eval_auc"]),
        },
    }
    plot(entry, RESULTS / f"{args.results_name}.png")
    print("\n".join(save_results(args.results_name, entry, render, TITLE)))


if __name__ == "__main__":
    main()
