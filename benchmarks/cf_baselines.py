"""The paper's CF rows (Table 3, ML-1M) reproduced with `examples/pretrain_cf.py`, as JSON + markdown.

    python benchmarks/cf_baselines.py --data_dir PATH/TO/ml-1m [--runs_dir outputs] [--backbones mf lightgcn sasrec]

For each backbone, reads `<runs_dir>/cf_<backbone>/all_results.json` when it exists, else trains it (CoLLM's
settings, 1 thread, with the reproduction's stopping rule `reproduce.CF_ARGS`: CoLLM's patience 100, except SASRec
at patience 10 and at most 50 epochs) into that folder. Writes this CPU kind's entry of
`benchmarks/results/cf_baselines.{json,md}` (`report.save_results`: the other kinds' figures stay) with the run's
`provenance` (the CF models run in fp32), test AUC/UAUC, the paper's and CoLLM's logged figures, the differences and
the wall time to the best epoch; `trained_in_this_run` tells a backbone trained here from one whose
`all_results.json` was read.
"""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from report import checkout_env, provenance, save_results
from reproduce import CF_ARGS

TITLE = "CF baselines on the CoLLM ML-1M split (paper Table 3)"
PAPER = {  # Table 3 test AUC; CoLLM's logs (../shared/data/README.md) for UAUC and validation AUC
    "mf": {"test_auc": 0.6482, "test_uauc": 0.6361, "eval_auc": 0.6760, "best_epoch": 465},
    "lightgcn": {"test_auc": 0.5959, "test_uauc": None, "eval_auc": None, "best_epoch": None},
    "sasrec": {"test_auc": 0.7078, "test_uauc": 0.6738, "eval_auc": 0.6902, "best_epoch": 194},
}


STOPPING_NOTE = (
    f"`{' '.join(CF_ARGS['sasrec'])}`, as in `benchmarks/reproduce.py` (`CF_ARGS`): CoLLM's patience 100 would run "
    "~300 epochs, longer than a session"
)


def fmt(value) -> str:
    """A table cell: `–` for a missing figure, 4 decimals for a float."""
    return "–" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))


def render(out: dict) -> list[str]:
    """The markdown of one CPU kind's `out` (as written to cf_baselines.json): the table, commands and notes."""
    rows = out["results"]
    lines = [
        f"Each backbone trains with {out['threads_per_run']} thread (`OMP_NUM_THREADS`). Test figures are those of "
        "the best-validation-AUC epoch. Paper = Table 3 test AUC; CoLLM = its released training logs.",
        "",
        "| backbone | valid AUC (CoLLM) | test AUC | paper test AUC | diff | test UAUC (CoLLM) | best epoch (CoLLM) | s to best |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {fmt(r['eval_auc'])} ({fmt(r['collm_eval_auc'])}) | {fmt(r['test_auc'])} | "
            f"{fmt(r['paper_test_auc'])} | {r['test_auc_diff']:+.4f} | {fmt(r['test_uauc'])} ({fmt(r['collm_test_uauc'])}) | "
            f"{r['best_epoch']} ({fmt(r['collm_best_epoch'])}) | {r['seconds_to_best_epoch']} |"
        )
    lines += ["", "Commands: " + "; ".join(f"`{r['command']}`" for r in rows.values())]
    return lines + [f"\n{name}: {r['note']}" for name, r in rows.items() if r.get("note")]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default=os.environ.get("CCF_LLM_DATA"))
    parser.add_argument("--runs_dir", default="outputs")
    parser.add_argument("--backbones", nargs="+", default=["mf", "lightgcn", "sasrec"])
    args = parser.parse_args()
    rows = {}
    for backbone in args.backbones:
        folder = Path(args.runs_dir) / f"cf_{backbone}"
        results_file = folder / "all_results.json"
        trained = not results_file.is_file()
        if trained:
            command = [sys.executable, "examples/pretrain_cf.py", "--backbone", backbone, "--data_dir", args.data_dir,
                       "--output_dir", str(folder), *CF_ARGS[backbone]]  # fmt: skip
            subprocess.run(command, check=True, env=checkout_env(OMP_NUM_THREADS="1"))
        got = json.loads(results_file.read_text())
        paper = PAPER[backbone]
        rows[backbone] = {
            **{
                k: got[k]
                for k in (
                    "eval_auc",
                    "eval_uauc",
                    "test_auc",
                    "test_uauc",
                    "best_epoch",
                    "seconds_to_best_epoch",
                    "epochs_run",
                    "cold_users",
                    "cold_items",
                )
            },  # fmt: skip
            "paper_test_auc": paper["test_auc"],
            "collm_test_uauc": paper["test_uauc"],
            "collm_eval_auc": paper["eval_auc"],
            "collm_best_epoch": paper["best_epoch"],
            "test_auc_diff": round(got["test_auc"] - paper["test_auc"], 4),
            "command": f"python examples/pretrain_cf.py --backbone {backbone} --data_dir DATA --output_dir {folder} "
            + " ".join(CF_ARGS[backbone]),
            "note": got.get("note") or (STOPPING_NOTE if backbone == "sasrec" else None),
            "trained_in_this_run": trained,
        }
    out = {
        "provenance": provenance("float32"),
        "threads_per_run": 1,
        "results": rows,
    }
    print("\n".join(save_results("cf_baselines", out, render, TITLE)))


if __name__ == "__main__":
    main()
