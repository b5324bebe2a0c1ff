"""Learning curves on ML-1M: validation AUC against training rows, per row and stage of the full reproduction.

    python benchmarks/learning_curves.py [--output_dir outputs/reproduce_full] [--data_dir ../shared/data/ml-1m]

Trains nothing: it reads the evaluations that `benchmarks/reproduce.py --budget full` makes while it trains (every
`eval_steps` optimizer steps, on the same `early_stopping_rows` seeded validation rows; the test set is never read
here), from each stage's `stage_log.json` (`eval_log`) or, for a stage still training or written before that log
existed, from its newest `checkpoint-*/trainer_state.json`. Training rows = steps x batch x gradient accumulation
(from the budget's config). Run it at any time: rows and stages not started yet are listed as such.

Writes this CPU kind's entry (`--cpu_kind KIND`: the kind that trained the rows, for rows restored from
`benchmarks/results/reproduce_full_rows/KIND/` on another machine) of `benchmarks/results/learning_curves.json` and
`.md` (`report.save_results`) and
`learning_curves.png` (one panel per stage: LoRA, then fusion). Intervals: Hanley & McNeil's (1982) normal
approximation of an AUC's standard error from the subsample's positive and negative counts (`--data_dir`); it
treats rows as independent, so it is narrower than the user-level bootstrap of the final tables.
"""

import argparse
import json
import math
from pathlib import Path

from report import RESULTS, provenance, save_results
from reproduce import BUDGETS, LLM_ROWS

TITLE = "Learning curves on ML-1M: validation AUC against training rows (full reproduction, SmolLM2-135M)"
MILESTONES = (4_000, 16_000, 34_000)  # training rows at which the table reads each curve (34k: one epoch)


def hanley_mcneil_se(auc: float, positives: int, negatives: int) -> float:
    """Standard error of an AUC from the class counts (Hanley & McNeil, 1982, Radiology 143: eq. 2)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    variance = auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    return math.sqrt(max(variance, 0.0) / (positives * negatives))


def stage_evaluations(folder: Path) -> tuple[list[dict], str] | None:
    """
    `(evaluations, state)` of one stage folder, state `finished` or `unfinished` (still training, or stopped); None
    when it has none yet.
    """
    log = folder / "stage_log.json"
    record = json.loads(log.read_text()) if log.is_file() else {}
    start = [{"step": 0, "eval_auc": record["start_eval_auc"]}] if "start_eval_auc" in record else []
    if "eval_log" in record:
        return start + record["eval_log"], "finished"
    checkpoints = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        return None
    history = json.loads((checkpoints[-1] / "trainer_state.json").read_text())["log_history"]
    evals = [
        {k: r[k] for k in ("step", "eval_auc", "eval_uauc") if k in r} for r in history if "eval_auc" in r
    ]
    return start + evals, "finished" if record else "unfinished"


def collect(output_dir: Path, rows_per_step: int) -> dict:
    """Per LLM row of the reproduction and per stage folder: its evaluations with the training rows they follow."""
    curves = {}
    for row, (mode, *_rest) in LLM_ROWS.items():
        for folder in sorted((output_dir / row / mode).glob("stage_*")):
            found = stage_evaluations(folder)
            if found:
                evals, state = found
                points = [{**e, "training_rows": e["step"] * rows_per_step} for e in evals]
                curves.setdefault(row, {})[folder.name] = {"state": state, "points": points}
    return curves


def finished_without_stages(output_dir: Path, curves: dict) -> list[str]:
    """
    LLM rows that finished (their `all_results.json` is written) without training a stage of their own: rows that
    score a stage shared from another row (`--shared_stage1`, e.g. the stage-1-only ablation), so no curve of theirs.
    """
    return [
        row
        for row, (mode, *_rest) in LLM_ROWS.items()
        if row not in curves and (output_dir / row / mode / "all_results.json").is_file()
    ]


def trained_on(found: dict, kind: str | None) -> dict:
    """`found` (this machine's provenance) filed under `kind`, the CPU kind that trained the rows, saying so."""
    if kind is None or kind == found["cpu_kind"]:
        return found
    note = f"rows trained on {kind}, tabulated on {found['cpu_kind']}"
    return {**found, "cpu_kind": kind, "inferred": note}


def class_counts(data_dir: str, config: dict) -> tuple[int, int] | None:
    """Positives and negatives of the seeded validation subsample the evaluations score (run_ctr.py's seed + 2)."""
    if not Path(data_dir).is_dir():
        return None
    from ccf_llm.data import load_movielens_1m, seeded_subsample

    validation = load_movielens_1m(data_dir)["validation"]
    labels = seeded_subsample(validation, config.get("early_stopping_rows", 2000), config.get("seed", 0) + 2)[
        "label"
    ]
    return int(sum(labels)), len(labels) - int(sum(labels))


def at_milestones(points: list[dict]) -> dict:
    """The first evaluation at or after each milestone (training rows), and the best one."""
    out = {str(m): next((p for p in points if p["training_rows"] >= m), None) for m in MILESTONES}
    out["best"] = max(points, key=lambda p: p["eval_auc"])
    return out


def render(entry: dict) -> list[str]:
    counts = entry["class_counts"]
    se = (lambda auc: hanley_mcneil_se(auc, *counts)) if counts else None

    def cell(point):
        if point is None:
            return "—"
        half = f" ± {1.96 * se(point['eval_auc']):.3f}" if se else ""
        return f"{point['eval_auc']:.3f}{half} ({point['training_rows'] / 1000:.1f}k)"

    lines = [
        f"Validation AUC on the {entry['eval_rows']} seeded validation rows the full budget evaluates every "
        f"{entry['eval_steps']} steps ({entry['rows_per_step']} training rows per step), read from "
        f"`{entry['output_dir']}`; 95% half-widths from Hanley & McNeil's standard error"
        + (
            f" ({counts[0]} positives, {counts[1]} negatives)"
            if counts
            else " (class counts unknown: no data)"
        )
        + "; one seed. In brackets: the training rows at that evaluation. Curves: "
        "[learning_curves.png](learning_curves.png).",
        "",
        "| row | stage | state | " + " | ".join(f"≥ {m // 1000}k rows" for m in MILESTONES) + " | best |",
        "|---|---|---|" + "---|" * (len(MILESTONES) + 1),
    ]
    for row, stages in entry["curves"].items():
        for stage, curve in stages.items():
            read = at_milestones(curve["points"])
            lines.append(
                f"| {row} | {stage} | {curve['state']} | "
                + " | ".join(cell(read[str(m)]) for m in MILESTONES)
                + f" | {cell(read['best'])} |"
            )
    shared = entry.get("finished_without_own_stages", [])
    missing = [row for row in LLM_ROWS if row not in entry["curves"] and row not in shared]
    if shared:
        lines += [
            "",
            f"Finished without a stage of their own (they score another row's shared stage): {', '.join(shared)}.",
        ]
    return lines + ["", f"Not started yet: {', '.join(missing) or 'none'}."]


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({stage.split("_", 2)[2] for stages in curves.values() for stage in stages}) or ["lora"]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        for row, stages in curves.items():
            for stage, curve in stages.items():
                if stage.split("_", 2)[2] == panel:
                    xs = [p["training_rows"] / 1000 for p in curve["points"]]
                    ax.plot(xs, [p["eval_auc"] for p in curve["points"]], marker="o", ms=3, label=row)
        ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        ax.set(title=f"stage: {panel}", xlabel="training rows (thousands)", ylabel="validation AUC")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output_dir", type=Path, default=Path("outputs/reproduce_full"))
    parser.add_argument(
        "--config", type=Path, default=BUDGETS["full"][0], help="the budget's run_ctr.py config"
    )
    parser.add_argument(
        "--data_dir", default="../shared/data/ml-1m", help="for the class counts of the intervals"
    )
    parser.add_argument(
        "--results_name",
        default="learning_curves",
        help="name of the results files in benchmarks/results/, e.g. for a sensitivity run's folder",
    )
    parser.add_argument(
        "--cpu_kind",
        help="the CPU kind that trained the rows, when it is not this machine's: rows restored from another kind's "
        "archive (`benchmarks/archive.py`) are filed under the kind that trained them",
    )
    args = parser.parse_args()
    config = json.loads(args.config.read_text())
    rows_per_step = config["per_device_train_batch_size"] * config.get("gradient_accumulation_steps", 1)
    curves = collect(args.output_dir, rows_per_step)
    entry = {
        "provenance": trained_on(provenance("n/a (reads finished evaluations)"), args.cpu_kind),
        "output_dir": str(args.output_dir),
        "eval_rows": config.get("early_stopping_rows", 2000),
        "eval_steps": config["eval_steps"],
        "rows_per_step": rows_per_step,
        "class_counts": class_counts(args.data_dir, config),
        "curves": curves,
        "finished_without_own_stages": finished_without_stages(args.output_dir, curves),
    }
    plot(curves, RESULTS / f"{args.results_name}.png")
    print("\n".join(save_results(args.results_name, entry, render, TITLE)))


if __name__ == "__main__":
    main()
