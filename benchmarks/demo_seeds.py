"""How robust is the demo's table? The README's demo over several seeds and both dtypes.

    python benchmarks/demo_seeds.py [CONFIG] [--seeds 0 1 2] [--dtypes auto float32] [--report_only]

For every dtype and seed, runs `examples/run_ctr.py CONFIG --seed S [--dtype D]` (default the README's demo) in a
fresh process into `OUTPUT_DIR/<dtype>_seed<S>`; a run whose `all_results.json` exists is kept, so a rerun resumes,
unless a run there, finished or not, ran another config (its `run_ctr.json`): then the script stops before training
anything and names the settings that changed.
The seed draws the CF model's initialization, the training rows, their order, the LoRA/ALG/GATE initialization and
the seeded validation/test subsamples. Each run's CF model, `text` and `gate` are compared on that run's test rows
(`demo_curves.test_comparison`: 95% intervals from a bootstrap over users, paired `gate - text` and `gate - cf`, on
all, warm and item-cold rows). Records `benchmarks/results/demo_seeds.{json,md,png}` (this CPU kind's entry): every
run, and per comparison how many runs have their interval above 0, below 0, or across it.
`auto` and the dtype it resolves to are one dtype: on an AVX2-only CPU (`auto` = float32) only fp32 runs.

`--fusion_learning_rate X` asks what the demo gives with stage 2 at learning rate X, `--stage1_only` what `gate`'s
stage 1 alone gives (no stage 2: `--schedule lora`). Each run starts from the config's own run of its dtype and seed
(`OUTPUT_DIR/<dtype>_seed<S>`, run first where missing), whose CF model, `text` run and `gate` stage 1 are bitwise
what the changed config trains too (training repeats bit for bit since 2026-12-06, and the change reaches stage 2
only), copies them into `OUTPUT_DIR/<dtype>_seed<S>_<variant>` and runs `gate` there (`run_ctr.py ... --fusion_modes
gate --resume_from_checkpoint true`: stage 1 is loaded, stage 2 trains or, with `--stage1_only`, is skipped); the table
is `benchmarks/results/demo_seeds_<variant>.{json,md,png}`, its wall minutes those of what ran after stage 1.
`--gate_init_alpha A` changes stage 1 too (α starts at A, so stage 1 trains LoRA on titles fused with item CF): its
runs copy the CF model and `text` only and train both of `gate`'s stages; their wall minutes are those two stages.
It combines with `--fusion_learning_rate X` (`OUTPUT_DIR/<dtype>_seed<S>_gate_alpha_<A>_fusion_lr_<X>`).
A variant whose values the config already sets (`--gate_init_alpha 1 --fusion_learning_rate 0.001` since the demo's
config took them on 2026-12-06; compared with the config's own keys, not `run_ctr.py`'s defaults) trains nothing twice:
its runs are the config's own runs, checked like any other to have run this config (also with `--report_only`), and
become this CPU kind's entry of the variant's table.
"""

import argparse
import itertools
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from demo import changed_settings, settings
from demo_curves import test_comparison
from report import RESULTS, checkout_env, dtype_name, provenance, save_results

from ccf_llm.metrics import seeds_interval
from ccf_llm.precision import device_precision, resolve_dtype

TITLE = "The README's demo over seeds and dtypes: is `gate` above `text`, and where does it stand against CF?"
MODES = ("text", "gate")  # the demo's modes (a variant's run copies `text` from the config's run)
SUBSETS = ("all", "warm", "item-cold")
PAIRS = ("gate - text", "gate - cf")


def verdict(ci: list[float]) -> str:
    """Where a 95% interval of a difference lies: `"above 0"`, `"below 0"` or `"across 0"`."""
    return "above 0" if ci[0] > 0 else "below 0" if ci[1] < 0 else "across 0"


def summarize(runs: dict) -> dict:
    """
    Per subset and pair: the differences of every run, their mean and range, the count of each verdict, and per dtype
    with two runs or more the spread between its seeds (`between_seeds`: the t-interval and p of the mean over its
    runs, `ccf_llm.metrics.seeds_interval`; each seed draws its own test rows, so the runs are independent), and for
    each two such dtypes the difference of their means (`between_dtypes`, "a - b" in name order: Welch's t-interval
    and p, whether the dtype moves the difference beyond the spread between seeds).
    """
    out = {}
    for subset in SUBSETS:
        for pair in PAIRS:
            found = [r["test"][subset]["pairs"][pair] for r in runs.values()]
            diffs = [p["auc_diff"] for p in found]
            counts = {
                v: sum(verdict(p["auc_diff_ci"]) == v for p in found)
                for v in ("above 0", "below 0", "across 0")
            }
            by_dtype = {}
            for run, diff in zip(runs.values(), diffs, strict=True):
                by_dtype.setdefault(run["dtype"], []).append(diff)
            seeds = {dtype: dict(zip(("ci", "p"), seeds_interval(values), strict=True))
                     for dtype, values in by_dtype.items() if len(values) > 1}  # fmt: skip
            dtypes = {}
            for a, b in itertools.combinations(sorted(seeds), 2):
                ci, p = seeds_interval(by_dtype[a], other=by_dtype[b])
                mean = sum(by_dtype[a]) / len(by_dtype[a]) - sum(by_dtype[b]) / len(by_dtype[b])
                dtypes[f"{a} - {b}"] = {"mean": mean, "ci": ci, "p": p}
            out[f"{subset}: {pair}"] = {"runs": len(found), "mean": sum(diffs) / len(diffs), "min": min(diffs),
                                        "max": max(diffs), **counts, "between_seeds": seeds,
                                        "between_dtypes": dtypes}  # fmt: skip
    return out


def seeds_cell(summary: dict) -> str:
    """Each dtype's t 95% interval of the mean over its seeds and p, then each difference between two dtypes' means
    with Welch's interval and p, or — where no dtype has two runs."""
    found = summary.get("between_seeds") or {}
    cells = [f"{dtype} [{s['ci'][0]:+.3f}, {s['ci'][1]:+.3f}], p {s['p']:.2f}" for dtype, s in found.items()]
    cells += [f"{name}: {d['mean']:+.3f} [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}], p {d['p']:.2f}"
              for name, d in (summary.get("between_dtypes") or {}).items()]  # fmt: skip
    return "; ".join(cells) or "—"


def cell(model: dict) -> str:
    return f"{model['auc']:.3f} [{model['auc_ci'][0]:.3f}, {model['auc_ci'][1]:.3f}]"


def diff_cell(pair: dict) -> str:
    lo, hi = pair["auc_diff_ci"]
    return f"{pair['auc_diff']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def valid_cell(found: dict | None) -> str:
    """The validation AUC of `text` and `gate` (what a setting is chosen on), or — for runs recorded without it."""
    return "—" if not found else f"{found['text']:.3f}, {found['gate']:.3f}"


def variant_text(found: dict) -> str:
    """What a variant's runs copy from the config's runs and what they train, for its table."""
    if found.get("is_the_config"):
        return (
            f"{found['title']}: the config's own settings, so each run is the config's run of its seed (`run_ctr.py "
            "CONFIG --seed S`) and wall min counts all of it (CF model, `text`, both `gate` stages, scoring)."
        )
    if found.get("keeps_stage1", True):  # entries before --gate_init_alpha changed stage 2 or less
        copied, ran = (
            "its CF model, `text` run and `gate` stage 1, bitwise what this setting trains",
            "stage 1 (stage 2",
        )
    else:
        copied, ran = "its CF model and `text` run; `gate` trains both stages", "them (both `gate` stages"
    return (
        f"{found['title']}: each run copies the config's run of its seed ({copied}) and runs `gate` from there (`"
        + " ".join(found["arguments"])
        + f"`); `text` and CF are the config's runs, and wall min counts what ran after {ran}, scoring)."
    )


def render(entry: dict) -> list[str]:
    lines = [
        f"Each run: `{entry['run_ctr_command']} --seed S [--dtype D]`, {entry['train_rows']} training rows per stage. "
        "Test AUC with 95% intervals from 1000 bootstrap resamples of the run's test users; differences paired on "
        "the same resamples. Warm: user and item with more than 3 train rows; item-cold: items absent from train "
        "(the CF model scores them all alike). The seed also draws the validation/test subsample, so runs are "
        f"scored on different test rows. Figure: [{entry['figure']}]({entry['figure']}).",
        *([] if entry.get("variant") is None else ["", variant_text(entry["variant"])]),
        "",
        "| dtype | seed | rows | CF | `text` | `gate` | `gate - text` | `gate - cf` | warm `gate - cf` | item-cold "
        "`gate - cf` | valid AUC `text`, `gate` | wall min |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in entry["runs"].values():
        test = run["test"]
        models, pairs = test["all"]["models"], test["all"]["pairs"]
        lines.append(
            f"| {run['dtype']} | {run['seed']} | {test['all']['rows']} | {cell(models['cf'])} | {cell(models['text'])} | "
            f"{cell(models['gate'])} | {diff_cell(pairs['gate - text'])} | {diff_cell(pairs['gate - cf'])} | "
            f"{diff_cell(test['warm']['pairs']['gate - cf'])} | {diff_cell(test['item-cold']['pairs']['gate - cf'])} | "
            f"{valid_cell(run.get('valid_auc'))} | {run['wall_seconds'] / 60:.1f} |"
        )
    lines += ["", "Across runs (test AUC differences; how many runs have the 95% interval above 0, below 0, across 0; "
              "between seeds: per dtype, the Student-t 95% interval of the mean over its seeds and its p, df = seeds "
              "- 1, which treats the seeds as the sample; then, for two dtypes with two runs or more each, the "
              "difference of their means with Welch's 95% interval and p: does the dtype move it beyond the spread "
              "between seeds):",
              "",
              "| rows: comparison | runs | mean | range | above 0 | below 0 | across 0 | between seeds |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    # from the runs, so that entries recorded before a column existed get it too
    for name, s in summarize(entry["runs"]).items():
        lines.append(
            f"| {name} | {s['runs']} | {s['mean']:+.3f} | [{s['min']:+.3f}, {s['max']:+.3f}] | {s['above 0']} | "
            f"{s['below 0']} | {s['across 0']} | {seeds_cell(s)} |"
        )
    return lines


def plot(entry: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = list(entry["runs"].values())
    labels = [f"{r['dtype']}\nseed {r['seed']}" for r in runs]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for offset, model in zip((-0.2, 0.0, 0.2), ("cf", "text", "gate"), strict=True):
        found = [r["test"]["all"]["models"][model] for r in runs]
        ys = [m["auc"] for m in found]
        errs = [[y - m["auc_ci"][0] for y, m in zip(ys, found, strict=True)],
                [m["auc_ci"][1] - y for y, m in zip(ys, found, strict=True)]]  # fmt: skip
        axes[0].errorbar(
            [i + offset for i in range(len(runs))], ys, yerr=errs, fmt="o", capsize=3, label=model
        )
    axes[0].set(ylabel="test AUC (all rows)", title="Test AUC per run, 95% intervals")
    for offset, (subset, pair) in zip((-0.2, 0.0, 0.2), (("all", "gate - text"), ("all", "gate - cf"),
                                                          ("item-cold", "gate - cf")), strict=True):  # fmt: skip
        found = [r["test"][subset]["pairs"][pair] for r in runs]
        ys = [p["auc_diff"] for p in found]
        errs = [[y - p["auc_diff_ci"][0] for y, p in zip(ys, found, strict=True)],
                [p["auc_diff_ci"][1] - y for y, p in zip(ys, found, strict=True)]]  # fmt: skip
        axes[1].errorbar([i + offset for i in range(len(runs))], ys, yerr=errs, fmt="o", capsize=3,
                         label=f"{pair} ({subset} rows)")  # fmt: skip
    axes[1].axhline(0.0, color="black", lw=0.8)
    axes[1].set(ylabel="test AUC difference", title="Paired differences, 95% intervals")
    for ax in axes:
        ax.set_xticks(range(len(runs)), labels, fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def variant(
    fusion_learning_rate: float | None, stage1_only: bool, gate_init_alpha: float | None = None
) -> dict | None:
    """
    The change to the config's `gate` runs, or None for the config itself: its `name` (folders and results), its
    `title`, the `run_ctr.py` `arguments` that make it (after the config's run's own) and whether it keeps the config
    run's `gate` stage 1 (`keeps_stage1`; a change to α's start reaches stage 1, so `gate` trains from scratch). α's
    start and stage 2's learning rate combine; stage 1 alone takes neither.
    """
    resume = ["--fusion_modes", "gate", "--resume_from_checkpoint", "true"]
    if stage1_only:
        if fusion_learning_rate is not None or gate_init_alpha is not None:
            raise ValueError(
                "--stage1_only scores the config's stage 1: it takes no fusion learning rate or α start"
            )
        return {"name": "stage1_only", "title": "`gate`'s stage 1 alone (no stage 2)",
                "arguments": ["--schedule", "lora", *resume], "keeps_stage1": True, "settings": {}}  # fmt: skip
    names, titles, arguments, settings = [], [], [], {}  # settings: as run_ctr.py gets them
    if gate_init_alpha is not None:
        alpha = f"{gate_init_alpha:g}"
        settings["gate_init_alpha"] = float(alpha)
        names.append(f"gate_alpha_{alpha}")
        titles.append(f"`gate` with α starting at {alpha} (stage 1 reads item CF through the untrained ALG)")
        arguments += ["--gate_init_alpha", alpha]
    if fusion_learning_rate is not None:
        rate = f"{fusion_learning_rate:g}"
        settings["fusion_learning_rate"] = float(rate)
        names.append(f"fusion_lr_{rate}")
        titles.append(f"{'s' if titles else 'S'}tage 2 at fusion learning rate {rate}")
        arguments += ["--fusion_learning_rate", rate]
    if not names:
        return None
    return {"name": "_".join(names), "title": "; ".join(titles), "arguments": [*arguments, *resume],
            "keeps_stage1": gate_init_alpha is None, "settings": settings}  # fmt: skip


def is_the_config(found: dict, config: dict) -> bool:
    """
    Whether the variant `found` asks for what `config` already sets (e.g. `--gate_init_alpha 1` once the demo's config
    starts α at 1; a key the config leaves to `run_ctr.py`'s default does not count): its runs are then the config's
    own runs, trained once, not a `gate` trained again from them. Stage 1 alone is never the config.
    """
    settings = found["settings"]
    return bool(settings) and all(config.get(key) == value for key, value in settings.items())


def run_arguments(seed: int, dtype: str, output_dir: Path) -> list[str]:
    """`run_ctr.py`'s arguments beside the config for one run."""
    found = ["--seed", str(seed), "--output_dir", str(output_dir), "--overwrite_output_dir", "true"]
    return found + (["--dtype", dtype] if dtype != "auto" else [])


def timed_run(command: list[str], folder: Path) -> None:
    """Run `command` (a `run_ctr.py` run into `folder`) and keep its wall seconds beside it, `<folder>.wall_seconds`."""
    start = time.perf_counter()
    subprocess.run(command, check=True, env=checkout_env())
    folder.with_name(folder.name + ".wall_seconds").write_text(f"{time.perf_counter() - start:.1f}\n")


def check_same_config(folder: Path, config_path: str, config: dict) -> None:
    """
    Refuse a run in `folder`, finished or started, that did not train `config` (the contents of `config_path`; the
    note it prints aside) as it is now: its `run_ctr.json` keeps the config it ran, or, written before 2026-12-06,
    none. Nothing to check where `folder` holds neither `run_ctr.json` nor `all_results.json`.
    """
    record = folder / "run_ctr.json"
    if not record.is_file() and not (folder / "all_results.json").is_file():
        return
    ran = json.loads(record.read_text()).get("config") if record.is_file() else None
    if ran is None:
        problem = (
            "its run_ctr.json does not keep the config it ran (written before run_ctr.py kept it, or missing)"
        )
    else:
        problem = "".join(changed_settings({"config": settings(ran)}, config_path, config)).strip()
    if problem:
        raise SystemExit(
            f"{folder} holds a run of this script, but {problem} Pass a fresh --output_dir (or move the folder away)."
        )


def start_from(own: Path, folder: Path, command: list[str], keeps_stage1: bool = True) -> None:
    """
    Seed `folder` with what the config's run `own` trained before stage 2 (`run_ctr.json`, the CF model, the `text`
    run and, with `keeps_stage1`, `gate`'s stage 1), running `command` (the config's run) first where `own` has not
    finished.
    """
    if not (own / "all_results.json").is_file():
        timed_run(command, own)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(own / "run_ctr.json", folder / "run_ctr.json")
    parts = [*(p.name for p in own.glob("cf_*")), "text"] + (["gate/stage_1_lora"] if keeps_stage1 else [])
    for part in parts:
        shutil.copytree(own / part, folder / part, dirs_exist_ok=True)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("config", nargs="?", default="examples/configs/demo.json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dtypes", nargs="+", default=["auto", "float32"])
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/demo_seeds"))
    parser.add_argument("--report_only", action="store_true", help="tabulate finished runs, train nothing")
    changes = parser.add_mutually_exclusive_group()
    changes.add_argument(
        "--fusion_learning_rate", type=float, default=None,
        help="gate's stage 2 at this learning rate, from each seed's run of the config (its stage 1 and text run)",
    )  # fmt: skip
    changes.add_argument(
        "--stage1_only", action="store_true", help="gate's stage 1 alone, from the config's runs"
    )
    parser.add_argument(
        "--gate_init_alpha", type=float, default=None,
        help="gate with α starting at this value (both stages train; CF model and text from the config's runs); "
        "combines with --fusion_learning_rate",
    )  # fmt: skip
    args = parser.parse_args()
    config = json.loads(Path(args.config).read_text())
    base = ["python", "examples/run_ctr.py", args.config]
    dtypes = {}  # resolved name -> the argument: auto and the dtype it resolves to are one
    for dtype in args.dtypes:
        dtypes.setdefault(dtype_name(resolve_dtype(dtype)), dtype)
    found = variant(args.fusion_learning_rate, args.stage1_only, args.gate_init_alpha)
    suffix = "" if found is None else f"_{found['name']}"
    reuse = found is not None and is_the_config(found, config)  # the config's runs are the variant's
    if reuse:
        found = {**found, "arguments": [], "is_the_config": True}
    # what the runs reuse or resume must have run this config: checked before any of them trains, and where the
    # config's runs stand for a variant, before they are tabulated as it (an older config's runs would be mislabelled)
    if not args.report_only or reuse:
        for name in dtypes:
            for seed in args.seeds:
                own = args.output_dir / f"{name}_seed{seed}"
                for folder in [own] if reuse else dict.fromkeys([own, own.with_name(own.name + suffix)]):
                    check_same_config(folder, args.config, config)
    runs = {}
    for name, dtype in dtypes.items():
        for seed in args.seeds:
            own = args.output_dir / f"{name}_seed{seed}"  # the config's run
            folder = own if reuse else own.with_name(own.name + suffix)
            extra = run_arguments(seed, dtype, folder)
            extra += [] if found is None else found["arguments"]
            timing = folder.with_name(folder.name + ".wall_seconds")
            if not (folder / "all_results.json").is_file():
                if args.report_only:
                    continue
                if found is not None and not reuse:
                    start_from(own, folder, [sys.executable, *base[1:], *run_arguments(seed, dtype, own)],
                               found["keeps_stage1"])  # fmt: skip
                timed_run([sys.executable, *base[1:], *extra], folder)
            runs[f"{name}_seed{seed}"] = {
                "dtype": name, "seed": seed, "command": " ".join([*base, *extra]),
                "wall_seconds": float(timing.read_text()) if timing.is_file() else float("nan"),
                "valid_auc": {mode: json.loads((folder / mode / "all_results.json").read_text())["eval_auc"]
                              for mode in MODES},
                "test": test_comparison(folder, list(MODES), next(folder.glob("cf_*")), config.get("eval_rows"), seed),
            }  # fmt: skip
    if not runs:
        raise SystemExit(f"no finished run under {args.output_dir}")
    kind = device_precision().kind
    recorded = provenance(", ".join(dtypes))
    results_name = "demo_seeds" + suffix
    stored = RESULTS / f"{results_name}.json"
    if args.report_only and stored.is_file():  # the runs' command and date, not this tabulation's
        recorded = json.loads(stored.read_text())["by_cpu_kind"].get(kind, {}).get("provenance", recorded)
    entry = {
        "provenance": recorded,
        "run_ctr_command": " ".join(base),
        "train_rows": config["train_rows_per_stage"],
        "variant": found,
        "runs": runs,
        "summary": summarize(runs),
    }
    entry["figure"] = f"{results_name}_{kind.lower()}.png"  # one figure per CPU kind
    plot(entry, RESULTS / entry["figure"])
    title = TITLE if found is None else f"{TITLE} {found['title']}"
    print("\n".join(save_results(results_name, entry, render, title)))


if __name__ == "__main__":
    main()
