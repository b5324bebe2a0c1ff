"""The reproduction's main comparisons over several seeds of the LLM rows: each seed's test AUC, and the paired
differences averaged over seeds.

    python benchmarks/reproduce_seeds.py --seeds 0 1 [--budget full] [--data_dir ../shared/data/ml-1m]

Seed `s` of a row is `benchmarks/reproduce.py --budget BUDGET --seed s` (the config's own seed: the budget's run,
`outputs/<name>`; another seed: `outputs/<name>_seed<s>`, the same CF models). Each seed's finished rows are first
restored from their committed archives (`benchmarks/results/<name>[_seed<s>]_rows/<CPU kind>/`), so this runs on
a fresh clone of a machine of that CPU kind; nothing is trained.

The comparisons are `reproduce.comparisons` (gate and inject against their CF model, `gate` against `inject`, both
against `text`) over the rows finished in every seed, on one bootstrap over test users
(`ccf_llm.metrics.user_bootstrap`): each side is the mean test AUC of its seeds on each resample. The interval holds
the test users' sampling noise, for these trained models; the spread between seeds (LoRA and ALG/GATE initialization,
data order, early-stopping rows) shows in the per-seed columns and is not in it. Beside it, the Student-t interval of
the mean of the seeds' own differences (`between_seeds`, seeds - 1 degrees of freedom) holds that spread and not the
users' noise: with a handful of seeds it is wide, and a lead that one seed carries shows there.

Beside each CF row, its item-only reference (`<cf> (item only)`: the CF model scoring every row with the mean
training user, `cf_references.py`, which the README reads the rows against: CoLLM's CF rows give users absent from
train the zero vector) is compared with the `gate` and `inject` rows on it; it needs the CF models in
`outputs/<name>/<cf>`. Writes `benchmarks/results/<name>_seeds.{json,md,png}`.
"""

import argparse
import json
from pathlib import Path

import reproduce

TITLE = "ML-1M reproduction (CoLLM split), SmolLM2-135M-Instruct: the main comparisons over seeds"
ITEM_ONLY = "{} (item only)"


def collect(budget: str, seeds: list[int], data_dir: str) -> dict:
    """
    Every seed's finished rows' test scores (`<row>@<seed>`; CF rows once, from the budget's run), restored from the
    archives where the output folders lack them. CF rows are not archived: an LLM row whose CF model has no scores
    here is an error, not a silently missing comparison.
    """
    import archive

    from ccf_llm.precision import device_precision

    config, name = reproduce.BUDGETS[budget]
    splits = archive.movielens_splits(data_dir)
    kind = device_precision().kind
    scores = {}
    for seed in seeds:
        run = reproduce.seed_run(name, config, seed)
        archive.restore(archive.archive_folder(run.results_name, kind), run.output_dir, splits)
        for row in reproduce.ROWS:
            if (frame := reproduce.row_scores(row, run)) is not None:
                scores[row if row in reproduce.CF_ARGS else f"{row}@{seed}"] = frame
    llm = {key.split("@")[0] for key in scores if "@" in key}
    if not llm:
        raise FileNotFoundError(
            f"no finished LLM rows of seeds {seeds} in outputs/ or their archives ({kind})"
        )
    if missing := sorted({cf for row in llm for cf in reproduce.LLM_ROWS[row][1] if cf not in scores}):
        raise FileNotFoundError(
            f"the CF models {missing} have no test scores in outputs/{name}/ (CF rows are not archived): train them "
            f"first, `python benchmarks/reproduce.py --budget {budget} --only {' '.join(missing)}`"
        )
    return reproduce.aligned(scores)


def item_only_references(budget: str, frames: dict, data_dir: str) -> dict:
    """`<cf> (item only)` -> test scores (as `frames`' are) for every CF row in `frames`, from the CF model of the
    budget's run (`cf_references.reference_scores`)."""
    import cf_references
    from transformers import AutoModel

    from ccf_llm.data import load_movielens_1m

    config, name = reproduce.BUDGETS[budget]
    folder = reproduce.seed_run(name, config, None).output_dir
    splits = load_movielens_1m(data_dir)
    test = splits["test"].select_columns(["user_id", "item_id"]).to_pandas()
    found = {}
    for cf in (row for row in reproduce.CF_ARGS if row in frames):
        cf_references.check_test_order(frames[cf], test, cf)
        scores = cf_references.split_references(AutoModel.from_pretrained(folder / cf), splits)["item only"]
        found[ITEM_ONLY.format(cf)] = frames[cf].assign(score=scores)
    return found


def seed_table(frames: dict, seeds: list[int]) -> dict:
    """Per-(row, seed) AUC intervals and the seed-averaged paired comparisons of the rows finished in every seed;
    `gate` and `inject` rows are also compared with their CF row's item-only reference where `frames` holds it."""
    from ccf_llm.metrics import user_bootstrap

    llm = [row for row in reproduce.LLM_ROWS if all(f"{row}@{s}" in frames for s in seeds)]
    cf = [row for row in reproduce.CF_ARGS if row in frames]
    base, pairs = reproduce.comparisons(cf + llm)
    pairs += [(row, ITEM_ONLY.format(c)) for row, c in base.items()
              if row.startswith(("gate_", "inject_")) and ITEM_ONLY.format(c) in frames]  # fmt: skip

    def side(row: str, seed: int | None = None) -> str | tuple[str, ...]:
        """A row's models: a CF model or reference itself, one seed's run, or (`seed` None) all seeds' runs."""
        if row in frames:
            return row
        return f"{row}@{seed}" if seed is not None else tuple(f"{row}@{s}" for s in seeds)

    compared = [(side(a), side(b)) for a, b in pairs]
    compared += [(side(a, s), side(b, s)) for a, b in pairs for s in seeds]  # each seed's own difference
    first = next(iter(frames.values()))
    boot = user_bootstrap({name: f["score"].to_numpy() for name, f in frames.items()}, first["label"].to_numpy(),
                          first["user_id"].to_numpy(), pairs=compared, seed=0)  # fmt: skip
    found = list(boot["pairs"].values())
    named = {f"{a} - {b}": {**found[n], "per_seed": [found[len(pairs) * (1 + k) + n] for k in range(len(seeds))]}
             for n, (a, b) in enumerate(pairs)}  # fmt: skip
    return {"seeds": seeds, "rows_in_every_seed": llm, "models": boot["models"], "paired": named,
            "n_resamples": boot["n_resamples"]}  # fmt: skip


def render(out: dict) -> list[str]:
    seeds = out["seeds"]
    lines = [f"Seeds {', '.join(map(str, seeds))} of the LLM rows (the CF models are the same in every seed). Test "
             f"AUC [95% interval, bootstrap over test users, {out['n_resamples']} resamples]; the paired differences "
             "average each side's seeds on every resample: their intervals hold the test users' noise, not the "
             "spread between seeds (the columns).", "",
             "| row | " + " | ".join(f"seed {s}" for s in seeds) + " | mean |", "|---|" + "---|" * (len(seeds) + 1)]  # fmt: skip
    models = out["models"]
    references = [ITEM_ONLY.format(cf) for cf in reproduce.CF_ARGS]
    for row in [*reproduce.CF_ARGS, *references, *reproduce.LLM_ROWS]:
        if row in models:
            label = row if row in references else f"{row} (CF)"
            lines.append(f"| {label} | " + " | ".join(f"{models[row]['auc']:.4f}" for _ in seeds)
                         + f" | {models[row]['auc']:.4f} |")  # fmt: skip
            continue
        found = [models.get(f"{row}@{s}") for s in seeds]
        if not any(found):
            continue
        cells = [f"{m['auc']:.4f}{reproduce.ci(m['auc_ci'])}" if m else "not run" for m in found]
        mean = f"{sum(m['auc'] for m in found) / len(found):.4f}" if all(found) else ""
        lines.append(f"| {row} | " + " | ".join(cells) + f" | {mean} |")
    if out["paired"]:
        lines += ["", f"Paired on the same test users, each side the mean over seeds {', '.join(map(str, seeds))} "
                  "(rows finished in every seed), and each seed's own difference:", "",
                  "| a − b | test AUC diff [95% CI] | p | per seed: AUC diff (p) | between seeds: t 95% CI | p | "
                  "test UAUC diff [95% CI] | p |",
                  "|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for name, d in out["paired"].items():
            each = ", ".join(f"{e['auc_diff']:+.4f} ({e['auc_p']:.3f})" for e in d["per_seed"])
            between = d.get("between_seeds")  # absent with one seed
            spread = (
                f"{reproduce.signed(between['auc_diff_ci'])} | {between['auc_p']:.3f}" if between else " | "
            )
            lines.append(f"| {name} | {d['auc_diff']:+.4f}{reproduce.signed(d['auc_diff_ci'])} | {d['auc_p']:.3f} | "
                         f"{each} | {spread} | {d['uauc_diff']:+.4f}{reproduce.signed(d['uauc_diff_ci'])} | "
                         f"{d['uauc_p']:.3f} |")  # fmt: skip
    return lines


def plot(out: dict, path: Path) -> None:
    """The seed-averaged paired differences of test AUC with their 95% intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paired = out["paired"]
    if not paired:
        return
    figure, axis = plt.subplots(figsize=(8, 0.4 * len(paired) + 1.2))
    for position, d in enumerate(reversed(paired.values())):
        low, high = d["auc_diff_ci"]
        axis.errorbar(d["auc_diff"], position, xerr=[[d["auc_diff"] - low], [high - d["auc_diff"]]], fmt="o",
                      color="tab:blue" if low > 0 else "tab:grey", capsize=3)  # fmt: skip
    axis.set_yticks(range(len(paired)), list(reversed(paired)))
    axis.axvline(0.0, color="k", lw=0.8, ls=":")
    axis.set_xlabel(f"test AUC difference, mean over seeds {', '.join(map(str, out['seeds']))}, 95% interval")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--budget", choices=reproduce.BUDGETS, default="full")
    parser.add_argument("--data_dir", default="../shared/data/ml-1m")
    args = parser.parse_args()
    from report import RESULTS, provenance, save_results

    from ccf_llm.precision import resolve_dtype

    config_path, name = reproduce.BUDGETS[args.budget]
    seeds = list(dict.fromkeys(args.seeds))  # a seed given twice is one run
    frames = collect(args.budget, seeds, args.data_dir)
    frames.update(item_only_references(args.budget, frames, args.data_dir))
    out = {"provenance": provenance(resolve_dtype(json.loads(config_path.read_text()).get("dtype", "auto"))),
           **seed_table(frames, seeds)}  # fmt: skip
    print("\n".join(save_results(f"{name}_seeds", out, render, TITLE)))
    plot(out, RESULTS / f"{name}_seeds.png")


if __name__ == "__main__":
    main()
